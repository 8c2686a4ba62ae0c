//! Parity of `warren::embed` with sentence-transformers, and the service's queueing contract.
//!
//! Needs the model files: run `scripts/fetch-model.sh` first (or set `WARREN_MODEL_DIR`). A
//! missing model is a test failure, not a skip.
//!
//! The `#[ignore]`d `throughput` test is the Rust half of `benches/embed/run.sh`.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use warren::embed::{EmbedConfig, EmbedError, EmbedService, Embedder, Precision, DIM, MAX_TOKENS};

fn model_dir() -> PathBuf {
    let dir = std::env::var_os("WARREN_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2"));
    assert!(dir.join("model.safetensors").is_file(), "model files missing in {}: run scripts/fetch-model.sh first", dir.display());
    dir
}

fn embedder() -> &'static Embedder {
    static E: OnceLock<Embedder> = OnceLock::new();
    E.get_or_init(|| Embedder::load(&model_dir()).expect("loading the model"))
}

fn fixture(name: &str) -> Vec<serde_json::Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embeddings").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().map(|l| serde_json::from_str(l).expect("fixture line is JSON")).collect()
}

struct Case {
    text: String,
    embedding: Vec<f32>,
}

fn reference() -> Vec<Case> {
    let cases: Vec<Case> = fixture("reference.jsonl")
        .into_iter()
        .map(|v| Case {
            text: v["text"].as_str().expect("text").to_owned(),
            embedding: v["embedding"].as_array().expect("embedding").iter().map(|x| x.as_f64().expect("float") as f32).collect(),
        })
        .collect();
    assert_eq!(cases.len(), 64, "reference.jsonl should hold 64 texts");
    cases
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn tokenizer_matches_reference_ids() {
    let e = embedder();
    for v in fixture("reference_tokens.jsonl") {
        let text = v["text"].as_str().expect("text");
        let want: Vec<u32> = v["input_ids"].as_array().expect("input_ids").iter().map(|x| x.as_u64().expect("id") as u32).collect();
        let got = e.tokenizer().encode(text, true).expect("encode");
        assert_eq!(got.get_ids(), want.as_slice(), "token ids of {text:?}");
        assert!(got.len() <= MAX_TOKENS);
        assert_eq!(e.tokens(text), want.len());
    }
}

#[test]
fn embeddings_match_sentence_transformers() {
    let e = embedder();
    let cases = reference();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let got = e.embed(&texts).expect("embed");
    assert_eq!(got.len(), cases.len());

    let mut min_cos = f64::INFINITY;
    let mut max_abs = 0f32;
    let mut failures = Vec::new();
    for (c, g) in cases.iter().zip(&got) {
        assert_eq!(g.len(), DIM);
        let norm = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not normalised: {norm}");
        let cos = cosine(g, &c.embedding);
        let diff = g.iter().zip(&c.embedding).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        min_cos = min_cos.min(cos);
        max_abs = max_abs.max(diff);
        if cos.is_nan() || cos < 0.9999 {
            failures.push(format!("{:?}: cosine {cos:.6}", c.text.chars().take(40).collect::<String>()));
        }
    }
    println!("parity over {} texts: min cosine {min_cos:.7}, max |diff| {max_abs:.2e}", cases.len());
    assert!(failures.is_empty(), "cosine < 0.9999 for: {failures:#?}");
    assert!(max_abs <= 1e-4, "max abs difference {max_abs} > 1e-4");
}

/// The fp16 path (`embed.precision = "fp16"`) on a CPU with AVX512-FP16: every reference text
/// within cosine 0.9999 of sentence-transformers (measured: 0.99999), and batch composition still
/// irrelevant. On a CPU without it, the path falls back to fp32, which must then match as above.
#[test]
fn fp16_embeddings_match_sentence_transformers_or_fall_back_to_fp32() {
    let e = Embedder::load(&model_dir()).expect("load").with_precision(Precision::Fp16);
    let want = if Precision::fp16_supported() { Precision::Fp16 } else { Precision::Fp32 };
    assert_eq!(e.precision(), want, "the path in use");
    let auto = Embedder::load(&model_dir()).expect("load").with_precision(Precision::Auto);
    assert_eq!(auto.precision(), want, "`auto` takes fp16 exactly where the CPU runs it");
    let cases = reference();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let got = e.embed(&texts).expect("embed");
    let cos: Vec<f64> = got.iter().zip(&cases).map(|(g, c)| cosine(g, &c.embedding)).collect();
    let min_cos = cos.iter().copied().fold(f64::INFINITY, f64::min);
    println!("{} parity over {} texts: min cosine {min_cos:.7}", e.precision().as_str(), cases.len());
    assert!(min_cos >= 0.9999, "min cosine {min_cos}");
    for (i, t) in texts.iter().enumerate().step_by(7) {
        let single = e.embed(&[t]).expect("embed one");
        assert!(cosine(&single[0], &got[i]) > 0.99999, "{t:?} alone vs in a batch");
    }
    // Not the fp32 result by another name: half-precision rounding shows in the last digits.
    if want == Precision::Fp16 {
        let fp32 = embedder().embed(&texts).expect("embed fp32");
        let max_abs = got.iter().flatten().zip(fp32.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max_abs > 1e-6, "the fp16 path gave exactly the fp32 result");
    }
}

#[test]
fn batch_composition_does_not_change_results() {
    let e = embedder();
    let cases = reference();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let batch = e.embed(&texts).expect("embed");
    for (i, t) in texts.iter().enumerate().step_by(5) {
        let single = e.embed(&[t]).expect("embed one");
        let cos = cosine(&single[0], &batch[i]);
        assert!(cos > 0.99999, "{t:?} alone vs in a batch: cosine {cos}");
    }
    assert!(e.embed(&[]).expect("empty batch").is_empty());
}

#[test]
fn arbitrary_text_never_panics() {
    let e = embedder();
    let long = "x".repeat(100_000);
    let nasty = ["\0", "\u{FFFD}\u{FFFF}", "\u{202E}rtl", &long, "[SEP][SEP][SEP]", "\r\n\t\u{0b}"];
    let got = e.embed(&nasty).expect("embed");
    assert!(got.iter().all(|v| v.len() == DIM && v.iter().all(|x| x.is_finite())));
}

fn service(capacity: usize, max_batch: usize, threads: usize) -> EmbedService {
    let svc = EmbedService::start(&EmbedConfig { model_dir: model_dir(), queue_capacity: capacity, max_batch, threads, ..EmbedConfig::default() });
    assert!(svc.is_available(), "service should load the model");
    svc
}

#[tokio::test]
async fn service_matches_embedder_and_batches_callers() {
    let svc = service(4096, 32, 0);
    let cases = reference();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    // The service runs the default path (`auto`: fp16 on a CPU with AVX512-FP16), so the direct
    // embedder does too: this test is about batching callers, not about precision.
    let direct = Embedder::load(&model_dir()).expect("load").with_precision(Precision::Auto).embed(&texts).expect("embed");
    // Many concurrent callers with 1–3 texts each.
    let mut calls = Vec::new();
    for chunk in texts.chunks(3) {
        let svc = svc.clone();
        let owned: Vec<String> = chunk.iter().map(|s| s.to_string()).collect();
        calls.push(tokio::spawn(async move { svc.embed(owned).await }));
    }
    let mut got = Vec::new();
    for c in calls {
        got.extend(c.await.expect("task").expect("embed"));
    }
    for (g, d) in got.iter().zip(&direct) {
        assert!(cosine(g, d) > 0.99999);
    }
    let stats = svc.stats();
    assert_eq!(stats.texts, 64);
    assert!(stats.tokens >= 64 * 2);
    assert_eq!(svc.queue_len(), 0);
    assert!(svc.tokenizer().is_some());
    assert!(svc.embed(Vec::new()).await.expect("empty").is_empty());
    svc.shutdown();
    assert!(!svc.is_available());
    assert!(matches!(svc.embed(vec!["after".into()]).await, Err(EmbedError::Unavailable)));
}

#[tokio::test]
async fn service_reports_overload_when_queue_is_full() {
    let svc = service(8, 8, 1);
    // Eight maximal-length texts take the whole capacity while they are being embedded.
    let heavy: Vec<String> = (0..8).map(|i| format!("token{i} ").repeat(300)).collect();
    let (first, second) = tokio::join!(svc.embed(heavy), svc.embed(vec!["one more".into()]));
    assert_eq!(first.expect("the admitted request succeeds").len(), 8);
    match second {
        Err(EmbedError::Overloaded { retry_after_secs }) => assert!(retry_after_secs >= 1),
        other => panic!("expected Overloaded, got {other:?}"),
    }
    // Capacity is released once answered.
    assert_eq!(svc.queue_len(), 0);
    assert_eq!(svc.embed(vec!["one more".into()]).await.expect("fits now").len(), 1);
    // A request larger than the whole queue is served in slices of max_batch.
    let many: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(svc.embed(many).await.expect("sliced").len(), 20);
    assert_eq!(svc.queue_len(), 0);
}

#[tokio::test]
async fn service_is_unavailable_without_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("model.safetensors"), b"not a model").expect("write");
    for model_dir in [dir.path().join("absent"), dir.path().to_path_buf()] {
        let svc = EmbedService::start(&EmbedConfig { model_dir, ..EmbedConfig::default() });
        assert!(!svc.is_available());
        assert!(svc.tokenizer().is_none());
        assert!(matches!(svc.embed(vec!["hello".into()]).await, Err(EmbedError::Unavailable)));
    }
    let svc = EmbedService::disabled();
    assert!(matches!(svc.embed(vec!["hello".into()]).await, Err(EmbedError::Unavailable)));
}

/// Throughput on the sentences of `$WARREN_BENCH_SENTENCES` (one per line), all passed to one
/// `Embedder::embed` call, like `SentenceTransformer.encode(sentences, batch_size=32)`.
/// Run through `benches/embed/run.sh` (release build).
#[test]
#[ignore]
fn throughput() {
    let path = std::env::var("WARREN_BENCH_SENTENCES").expect("set WARREN_BENCH_SENTENCES");
    let text = std::fs::read_to_string(&path).expect("read sentences");
    let sentences: Vec<&str> = text.lines().collect();
    let threads: usize = std::env::var("WARREN_BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let precision = match std::env::var("WARREN_BENCH_PRECISION").as_deref() {
        Ok("fp16") => Precision::Fp16,
        _ => Precision::Fp32,
    };
    let e = Embedder::load(&model_dir()).expect("load").with_threads(threads).with_precision(precision);
    assert_eq!(e.precision(), precision, "fp16 asked for on a CPU without AVX512-FP16");
    let tokens: usize = sentences.iter().map(|s| e.tokens(s)).sum();
    let cases = reference();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let min_cos =
        e.embed(&texts).expect("embed the reference texts").iter().zip(&cases).map(|(g, c)| cosine(g, &c.embedding)).fold(f64::INFINITY, f64::min);
    e.embed(&sentences[..sentences.len().min(64)]).expect("warm-up");

    let runs: usize = std::env::var("WARREN_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let mut best = f64::INFINITY;
    let mut best_cpu = f64::INFINITY;
    for _ in 0..runs.max(1) {
        let (t, cpu) = (Instant::now(), process_cpu_seconds());
        let out = e.embed(&sentences).expect("embed");
        best = best.min(t.elapsed().as_secs_f64());
        best_cpu = best_cpu.min(process_cpu_seconds() - cpu);
        assert_eq!(out.len(), sentences.len());
    }
    let one = Instant::now();
    e.embed(&sentences[..1]).expect("embed one");
    let one_ms = one.elapsed().as_secs_f64() * 1e3;
    println!(
        "RESULT warren-{} sentences={} tokens={tokens} threads={} seconds={best:.3} sentences_per_s={:.1} tokens_per_s={:.0} one_sentence_ms={one_ms:.1} cpu_seconds={best_cpu:.2} sentences_per_cpu_s={:.1} min_cosine_vs_reference={min_cos:.6}",
        e.precision().as_str(),
        sentences.len(),
        e.threads(),
        sentences.len() as f64 / best,
        tokens as f64 / best,
        sentences.len() as f64 / best_cpu
    );
}

/// User + system CPU time of this process so far (all threads), from `/proc/self/stat`
/// (clock ticks of 1/100 s); a contention-robust complement to wall time. NaN if unavailable.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    let Some((_, rest)) = stat.rsplit_once(')') else { return f64::NAN };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (tick(11) + tick(12)) / 100.0
}
