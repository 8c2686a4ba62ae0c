//! [`Embedder`]: tokenizer plus a packed (padding-free) BERT encoder for all-MiniLM-L6-v2.
//!
//! The weights are read with Candle's safetensors loader and kept as plain `f32` buffers laid
//! out for the forward pass (Q/K/V fused into one `384 × 1152` matrix, every weight stored
//! `in × out` row-major, the attention scale folded into the query projection).
//!
//! The forward pass works on *packed* sequences: the tokens of all sequences of a work unit are
//! concatenated into one `tokens × 384` matrix, so the dense layers (≈ 95 % of the FLOPs) are
//! single large matrix products without any padding, and attention is computed per sequence and
//! head on exactly that sequence's tokens, which needs no attention mask at all. This is
//! mathematically the same as the padded, masked computation of sentence-transformers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, ensure, Context as _};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::half::{self, Lhs, Out};
use super::kernels::{self, MatRef};
use super::Precision;
use super::{DIM, MAX_TOKENS};

/// Tokens per work unit (one packed forward pass) when a call has plenty of input.
const UNIT_TOKENS: usize = 2048;

#[derive(Debug, Deserialize)]
struct BertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
}

fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

struct Layer {
    /// `384 × 1152`: query (pre-scaled by 1/√head_dim) | key | value.
    w_qkv: Vec<f32>,
    b_qkv: Vec<f32>,
    /// `384 × 384`
    w_attn_out: Vec<f32>,
    b_attn_out: Vec<f32>,
    ln_attn_g: Vec<f32>,
    ln_attn_b: Vec<f32>,
    /// `384 × 1536`
    w_inter: Vec<f32>,
    b_inter: Vec<f32>,
    /// `1536 × 384`
    w_out: Vec<f32>,
    b_out: Vec<f32>,
    ln_out_g: Vec<f32>,
    ln_out_b: Vec<f32>,
}

/// A layer's dense weights in half precision, for the fp16 path.
struct HalfLayer {
    qkv: half::PackedB,
    attn_out: half::PackedB,
    inter: half::PackedB,
    out: half::PackedB,
}

struct Weights {
    /// Set when the fp16 path is on (`Embedder::with_precision`).
    half: Option<Vec<HalfLayer>>,
    hidden: usize,
    heads: usize,
    inter: usize,
    vocab: usize,
    max_pos: usize,
    eps: f32,
    word: Vec<f32>,
    pos: Vec<f32>,
    token_type: Vec<f32>,
    ln_emb_g: Vec<f32>,
    ln_emb_b: Vec<f32>,
    layers: Vec<Layer>,
}

/// A loaded sentence-embedding model: `Send + Sync`, share it behind an `Arc`.
///
/// [`Embedder::embed`] runs synchronously on the calling thread and on up to
/// [`Embedder::threads`] − 1 scoped helper threads; it is meant to be called from a dedicated
/// thread (see [`super::EmbedService`]), never directly on an async runtime.
pub struct Embedder {
    tokenizer: Arc<Tokenizer>,
    weights: Weights,
    threads: usize,
}

/// Per-thread scratch buffers, grown on demand.
#[derive(Default)]
struct Scratch {
    h: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    inter: Vec<f32>,
    scores: Vec<f32>,
    half: half::Scratch,
}

impl Embedder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `model_dir`.
    pub fn load(model_dir: &Path) -> anyhow::Result<Embedder> {
        let tokenizer = load_tokenizer(&model_dir.join("tokenizer.json"))?;
        let cfg_path = model_dir.join("config.json");
        let cfg: BertConfig = serde_json::from_slice(&std::fs::read(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?)
            .with_context(|| format!("parsing {}", cfg_path.display()))?;
        let weights = Weights::load(&model_dir.join("model.safetensors"), &cfg)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Embedder { tokenizer: Arc::new(tokenizer), weights, threads })
    }

    /// Sets how many threads one [`Embedder::embed`] call may use (0 = available parallelism).
    pub fn with_threads(mut self, threads: usize) -> Embedder {
        self.threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
        self
    }

    /// Chooses the arithmetic of the dense layers. [`Precision::Fp16`] needs AVX512-FP16: on a CPU
    /// without it the model stays on fp32 and logs a warning; [`Precision::Auto`] takes fp16 where
    /// it runs and fp32 quietly elsewhere ([`Embedder::precision`] tells which is in use).
    pub fn with_precision(mut self, precision: Precision) -> Embedder {
        self.weights.half = None;
        let wanted = match precision {
            Precision::Auto => Precision::fp16_supported(),
            Precision::Fp16 => true,
            Precision::Fp32 => false,
        };
        if wanted {
            let (h, i) = (self.weights.hidden, self.weights.inter);
            let packed: Option<Vec<HalfLayer>> = self
                .weights
                .layers
                .iter()
                .map(|l| {
                    Some(HalfLayer {
                        qkv: half::PackedB::pack(&l.w_qkv, h, 3 * h)?,
                        attn_out: half::PackedB::pack(&l.w_attn_out, h, h)?,
                        inter: half::PackedB::pack(&l.w_inter, h, i)?,
                        out: half::PackedB::pack(&l.w_out, i, h)?,
                    })
                })
                .collect();
            if packed.is_none() && precision == Precision::Fp16 {
                tracing::warn!("embed.precision = \"fp16\" needs AVX512-FP16, which this CPU lacks; embedding in fp32");
            }
            self.weights.half = packed;
        }
        self
    }

    /// The arithmetic the dense layers use.
    pub fn precision(&self) -> Precision {
        if self.weights.half.is_some() {
            Precision::Fp16
        } else {
            Precision::Fp32
        }
    }

    /// Threads one [`Embedder::embed`] call uses.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The tokenizer: truncation to [`MAX_TOKENS`] (including `[CLS]`/`[SEP]`), no padding.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The tokenizer, shareable.
    pub fn tokenizer_arc(&self) -> Arc<Tokenizer> {
        Arc::clone(&self.tokenizer)
    }

    /// Number of model tokens `text` becomes, including `[CLS]`/`[SEP]`, after truncation
    /// (so at most [`MAX_TOKENS`]). Returns 2 for texts the tokenizer rejects.
    pub fn tokens(&self, text: &str) -> usize {
        self.tokenizer.encode(text, true).map_or(2, |e| e.len())
    }

    /// L2-normalised mean-pooled embeddings, one per text, same order. Empty strings allowed.
    pub fn embed(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        let ids = self.encode(texts)?;
        self.embed_ids(&ids)
    }

    /// Tokenizes `texts` into model input ids (with special tokens, truncated).
    pub(crate) fn encode(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<u32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| anyhow!("tokenization failed: {e}"))?;
        let w = &self.weights;
        encodings
            .into_iter()
            .map(|e| {
                let ids = e.get_ids();
                ensure!(!ids.is_empty() && ids.len() <= MAX_TOKENS.min(w.max_pos), "bad token count {}", ids.len());
                ensure!(ids.iter().all(|&i| (i as usize) < w.vocab), "token id outside the vocabulary");
                Ok(ids.to_vec())
            })
            .collect()
    }

    /// Embeds already-tokenized inputs (each non-empty, at most `MAX_TOKENS`, ids in vocabulary).
    pub(crate) fn embed_ids(&self, ids: &[Vec<u32>]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.embed_ids_cpu(ids).map(|(v, _)| v)
    }

    /// [`Self::embed_ids`], with the CPU time it used over every thread it ran on, in microseconds.
    pub(crate) fn embed_ids_cpu(&self, ids: &[Vec<u32>]) -> anyhow::Result<(Vec<Vec<f32>>, u64)> {
        let w = &self.weights;
        for s in ids {
            ensure!(!s.is_empty() && s.len() <= MAX_TOKENS.min(w.max_pos), "bad token count {}", s.len());
            ensure!(s.iter().all(|&i| (i as usize) < w.vocab), "token id outside the vocabulary");
        }
        if ids.is_empty() {
            return Ok((Vec::new(), 0));
        }
        // Longest first: similar lengths end up in the same unit and big units start early.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let units = plan_units(&order, ids, self.threads);

        let mut out = vec![Vec::new(); ids.len()];
        let next = AtomicUsize::new(0);
        let cpu_us = std::sync::atomic::AtomicU64::new(0);
        let work = || -> anyhow::Result<Vec<(usize, Vec<f32>)>> {
            let started = crate::cpu::thread_cpu_time();
            let mut scratch = Scratch::default();
            let mut done = Vec::new();
            loop {
                let u = next.fetch_add(1, Ordering::Relaxed);
                let Some(unit) = units.get(u) else { break };
                let seqs: Vec<&[u32]> = unit.iter().map(|&i| ids[i].as_slice()).collect();
                let pooled = self.weights.forward(&seqs, &mut scratch);
                done.extend(unit.iter().copied().zip(pooled));
            }
            cpu_us.fetch_add(crate::cpu::thread_cpu_time().saturating_sub(started).as_micros() as u64, Ordering::Relaxed);
            Ok(done)
        };
        let helpers = self.threads.min(units.len()).saturating_sub(1);
        let results: Vec<anyhow::Result<Vec<(usize, Vec<f32>)>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..helpers).map(|_| s.spawn(work)).collect();
            let mut results = vec![work()];
            for h in handles {
                results.push(h.join().unwrap_or_else(|_| Err(anyhow!("embedding thread panicked"))));
            }
            results
        });
        for r in results {
            for (i, v) in r? {
                out[i] = v;
            }
        }
        ensure!(out.iter().all(|v| v.len() == DIM), "internal error: missing embeddings");
        Ok((out, cpu_us.into_inner()))
    }
}

/// Splits `order` (indices sorted by decreasing length) into contiguous work units of roughly
/// equal token counts: at least one per thread when there is enough input, at most
/// [`UNIT_TOKENS`] tokens each (a single sequence always fits).
fn plan_units(order: &[usize], ids: &[Vec<u32>], threads: usize) -> Vec<Vec<usize>> {
    let total: usize = order.iter().map(|&i| ids[i].len()).sum();
    let threads = threads.max(1);
    let mut n_units = total.div_ceil(UNIT_TOKENS).max(threads).min(order.len());
    n_units = n_units.div_ceil(threads) * threads;
    let target = total.div_ceil(n_units.max(1)).max(1);
    let mut units = Vec::new();
    let mut cur = Vec::new();
    let mut cur_tokens = 0;
    for &i in order {
        cur.push(i);
        cur_tokens += ids[i].len();
        if cur_tokens >= target {
            units.push(std::mem::take(&mut cur));
            cur_tokens = 0;
        }
    }
    if !cur.is_empty() {
        units.push(cur);
    }
    units
}

fn load_tokenizer(path: &Path) -> anyhow::Result<Tokenizer> {
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| anyhow!("loading tokenizer {}: {e}", path.display()))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: MAX_TOKENS,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(|e| anyhow!("configuring truncation: {e}"))?;
    Ok(tokenizer)
}

impl Weights {
    fn load(path: &Path, cfg: &BertConfig) -> anyhow::Result<Weights> {
        ensure!(cfg.hidden_act == "gelu", "unsupported hidden_act {:?}", cfg.hidden_act);
        ensure!(cfg.hidden_size == DIM, "hidden_size {} != {DIM}", cfg.hidden_size);
        ensure!(cfg.num_attention_heads > 0 && cfg.hidden_size.is_multiple_of(cfg.num_attention_heads), "bad num_attention_heads");
        ensure!(cfg.max_position_embeddings >= 2 && cfg.type_vocab_size >= 1, "bad config");
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).with_context(|| format!("loading {}", path.display()))?;
        let mut t = Tensors(tensors);
        let prefix = if t.0.contains_key("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let head_dim = h / cfg.num_attention_heads;
        let scale = 1.0 / (head_dim as f32).sqrt();

        let e = format!("{prefix}embeddings.");
        let word = t.take(&format!("{e}word_embeddings.weight"), &[cfg.vocab_size, h])?;
        let pos = t.take(&format!("{e}position_embeddings.weight"), &[cfg.max_position_embeddings, h])?;
        let token_type = t.take(&format!("{e}token_type_embeddings.weight"), &[cfg.type_vocab_size, h])?;
        let ln_emb_g = t.take(&format!("{e}LayerNorm.weight"), &[h])?;
        let ln_emb_b = t.take(&format!("{e}LayerNorm.bias"), &[h])?;

        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("{prefix}encoder.layer.{l}.");
            let mut wq = transpose(&t.take(&format!("{p}attention.self.query.weight"), &[h, h])?, h, h);
            let mut bq = t.take(&format!("{p}attention.self.query.bias"), &[h])?;
            wq.iter_mut().chain(bq.iter_mut()).for_each(|v| *v *= scale);
            let wk = transpose(&t.take(&format!("{p}attention.self.key.weight"), &[h, h])?, h, h);
            let bk = t.take(&format!("{p}attention.self.key.bias"), &[h])?;
            let wv = transpose(&t.take(&format!("{p}attention.self.value.weight"), &[h, h])?, h, h);
            let bv = t.take(&format!("{p}attention.self.value.bias"), &[h])?;
            let mut w_qkv = Vec::with_capacity(h * 3 * h);
            for r in 0..h {
                for m in [&wq, &wk, &wv] {
                    w_qkv.extend_from_slice(&m[r * h..(r + 1) * h]);
                }
            }
            layers.push(Layer {
                w_qkv,
                b_qkv: [bq, bk, bv].concat(),
                w_attn_out: transpose(&t.take(&format!("{p}attention.output.dense.weight"), &[h, h])?, h, h),
                b_attn_out: t.take(&format!("{p}attention.output.dense.bias"), &[h])?,
                ln_attn_g: t.take(&format!("{p}attention.output.LayerNorm.weight"), &[h])?,
                ln_attn_b: t.take(&format!("{p}attention.output.LayerNorm.bias"), &[h])?,
                w_inter: transpose(&t.take(&format!("{p}intermediate.dense.weight"), &[i, h])?, i, h),
                b_inter: t.take(&format!("{p}intermediate.dense.bias"), &[i])?,
                w_out: transpose(&t.take(&format!("{p}output.dense.weight"), &[h, i])?, h, i),
                b_out: t.take(&format!("{p}output.dense.bias"), &[h])?,
                ln_out_g: t.take(&format!("{p}output.LayerNorm.weight"), &[h])?,
                ln_out_b: t.take(&format!("{p}output.LayerNorm.bias"), &[h])?,
            });
        }
        Ok(Weights {
            half: None,
            hidden: h,
            heads: cfg.num_attention_heads,
            inter: i,
            vocab: cfg.vocab_size,
            max_pos: cfg.max_position_embeddings,
            eps: cfg.layer_norm_eps as f32,
            word,
            pos,
            token_type,
            ln_emb_g,
            ln_emb_b,
            layers,
        })
    }

    /// Runs the encoder on packed sequences and returns one normalised mean-pooled vector each.
    /// Inputs are validated by the caller (non-empty, ≤ max positions, ids < vocab).
    fn forward(&self, seqs: &[&[u32]], s: &mut Scratch) -> Vec<Vec<f32>> {
        let (hd, inter) = (self.hidden, self.inter);
        let head_dim = hd / self.heads;
        let qkv_w = 3 * hd;
        let total: usize = seqs.iter().map(|q| q.len()).sum();
        let max_len = seqs.iter().map(|q| q.len()).max().unwrap_or(0);
        resize(&mut s.h, total * hd);
        resize(&mut s.qkv, total * qkv_w);
        resize(&mut s.ctx, total * hd);
        resize(&mut s.inter, total * inter);
        resize(&mut s.scores, max_len * max_len);

        // Embeddings: word + position + token type 0, then LayerNorm.
        let mut row = 0;
        for q in seqs {
            for (p, &id) in q.iter().enumerate() {
                let dst = &mut s.h[row * hd..(row + 1) * hd];
                let w = &self.word[id as usize * hd..][..hd];
                let ps = &self.pos[p * hd..][..hd];
                let ty = &self.token_type[..hd];
                for j in 0..hd {
                    dst[j] = w[j] + ps[j] + ty[j];
                }
                row += 1;
            }
        }
        kernels::layer_norm(&mut s.h[..total * hd], &self.ln_emb_g, &self.ln_emb_b, self.eps);

        for (li, l) in self.layers.iter().enumerate() {
            let hl = self.half.as_ref().map(|v| &v[li]);
            let h = &mut s.h[..total * hd];
            let qkv = &mut s.qkv[..total * qkv_w];
            let ctx = &mut s.ctx[..total * hd];
            let it = &mut s.inter[..total * inter];

            // Fused Q/K/V projection.
            linear(qkv, Lhs::Plain(h), total, (&l.w_qkv, hd, qkv_w), &l.b_qkv, Out::Set, hl.map(|x| &x.qkv), &mut s.half);

            // Attention per sequence and head, on that sequence's tokens only.
            let mut start = 0;
            for q in seqs {
                let n = q.len();
                let block = &qkv[start * qkv_w..(start + n) * qkv_w];
                let sc = &mut s.scores[..n * n];
                for head in 0..self.heads {
                    let off = head * head_dim;
                    let qm = MatRef { data: &block[off..], rows: n, cols: head_dim, row_stride: qkv_w, col_stride: 1 };
                    // Kᵀ as a head_dim × n view.
                    let kt = MatRef { data: &block[hd + off..], rows: head_dim, cols: n, row_stride: 1, col_stride: qkv_w };
                    kernels::matmul(sc, n, qm, kt, false);
                    kernels::softmax_rows(sc, n);
                    let vm = MatRef { data: &block[2 * hd + off..], rows: n, cols: head_dim, row_stride: qkv_w, col_stride: 1 };
                    let dst = &mut ctx[start * hd + off..];
                    kernels::matmul(dst, hd, MatRef::dense(sc, n, n), vm, false);
                }
                start += n;
            }

            // Output projection + bias + residual, then LayerNorm, all in `h`.
            linear(h, Lhs::Plain(ctx), total, (&l.w_attn_out, hd, hd), &l.b_attn_out, Out::Add, hl.map(|x| &x.attn_out), &mut s.half);
            kernels::layer_norm(h, &l.ln_attn_g, &l.ln_attn_b, self.eps);

            // Feed-forward, with GELU between its two products.
            linear(it, Lhs::Plain(h), total, (&l.w_inter, hd, inter), &l.b_inter, Out::Set, hl.map(|x| &x.inter), &mut s.half);
            linear(h, Lhs::Gelu(it), total, (&l.w_out, inter, hd), &l.b_out, Out::Add, hl.map(|x| &x.out), &mut s.half);
            kernels::layer_norm(h, &l.ln_out_g, &l.ln_out_b, self.eps);
        }

        // Mean pooling over each sequence's tokens (all attended), then L2 normalisation.
        let mut out = Vec::with_capacity(seqs.len());
        let mut start = 0;
        for q in seqs {
            let n = q.len();
            let mut v = vec![0.0f32; hd];
            for r in start..start + n {
                for (a, x) in v.iter_mut().zip(&s.h[r * hd..(r + 1) * hd]) {
                    *a += x;
                }
            }
            let inv_n = 1.0 / n as f32;
            v.iter_mut().for_each(|a| *a *= inv_n);
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|a| *a /= norm);
            out.push(v);
            start += n;
        }
        out
    }
}

/// `dst (m × n, dense) = [dst +] bias + a (m × k) · w` for a dense layer, `w` being `(weights, k,
/// n)` and `out` saying whether `dst` is added to (a residual) or replaced: on the fp16 path when
/// the layer has its half-precision copy (which adds the bias inside the product), else in fp32.
#[allow(clippy::too_many_arguments)] // one call per layer kind, each argument a different part of it
fn linear(
    dst: &mut [f32],
    a: Lhs<'_>,
    m: usize,
    w: (&[f32], usize, usize),
    bias: &[f32],
    out: Out,
    fp16: Option<&half::PackedB>,
    s: &mut half::Scratch,
) {
    let (w, k, n) = w;
    match fp16 {
        Some(b) => half::matmul(dst, a, m, b, bias, out, s),
        None => {
            let a = match a {
                Lhs::Plain(a) => a,
                Lhs::Gelu(a) => {
                    kernels::gelu(&mut a[..m * k]);
                    &*a
                }
            };
            let dst = &mut dst[..m * n];
            match out {
                Out::Set => kernels::fill_rows(dst, bias),
                Out::Add => kernels::add_bias_rows(dst, bias),
            }
            kernels::matmul(dst, n, MatRef::dense(a, m, k), MatRef::dense(w, k, n), true)
        }
    }
}

fn resize(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// `rows × cols` row-major → `cols × rows` row-major.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}

struct Tensors(HashMap<String, Tensor>);

impl Tensors {
    /// Removes tensor `name`, checks its shape and returns it as `f32` values.
    fn take(&mut self, name: &str, shape: &[usize]) -> anyhow::Result<Vec<f32>> {
        let t = self.0.remove(name).ok_or_else(|| anyhow!("missing tensor {name}"))?;
        if t.dims() != shape {
            bail!("tensor {name} has shape {:?}, expected {shape:?}", t.dims());
        }
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }
}
