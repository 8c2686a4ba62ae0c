//! The recommendation model: training (pure functions of the tenant's data) and scoring.
//!
//! * **Interactions.** Each (customer or session, product) pair gets `x = min(1, Σ weight · decay)`:
//!   a purchase weighs 1 (more for quantity > 1: `1 + ln q`), a cart 0.5, a wishlist 0.3, a view
//!   0.15, any other event type 0.1; `decay = 0.5^(age / half_life)` with the age measured from the
//!   tenant's newest interaction (so an old import is not all decayed to nothing).
//! * **Collaborative part** ([`super::train`]). Up to `ease_max_items` products with interactions: **EASE**
//!   (Steck 2019), `B = I − P·diag(P)⁻¹` with `P = (XᵀX + λI)⁻¹`, the closed-form optimum of a
//!   ridge-regressed item-item model with a zero diagonal. It has one hyper-parameter, no
//!   sampling, no epochs, and on sparse implicit data it beats matrix factorisation (see
//!   docs/BENCHMARKS.md). XᵀX is accumulated sparsely (X is >99 % zeros), the inverse is done
//!   by candle matmuls ([`super::linalg`]). Above that size a dense n × n inverse costs too much
//!   time and memory, so EASE covers only the `ease_max_items` most popular products and
//!   **item-item cosine with shrinkage** `s_ij = Σ_u x_ui x_uj / (‖x_i‖‖x_j‖ + shrink)` the rest
//!   (accumulated from each user's `knn_max_history` strongest items, so its cost is bounded by
//!   `users × knn_max_history²`), rescaled to EASE's range; each training compares that blend with
//!   kNN alone on the tenant's own leave-last-out split and keeps the better.
//!   Either way each item keeps its `neighbors` strongest weights (a sparse row), which is all
//!   inference needs: a customer's scores are `Σ_i x_ui · B[i, :]`.
//! * **Content part.** MiniLM embeddings of "name. categories. description" (when the model is
//!   loaded), as an n × 384 candle tensor; similarity is one matmul. Without the model, the Jaccard
//!   overlap of name/category/tag words stands in (status reports `content: "keywords"`).
//! * **Popularity.** Σ_u x_ui, i.e. decayed popularity: the fallback for customers without history.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use super::train::{active_products, content_neighbors, evaluate, train, train_collab, user_matrix};

/// Tunables of one training run (from `[recs]` in the config).
#[derive(Debug, Clone)]
pub struct TrainParams {
    pub ease_max_items: usize,
    pub ease_lambda: f32,
    pub neighbors: usize,
    pub half_life_secs: f64,
    pub recency_half_life_steps: f64,
    pub recency_floor: f32,
    pub knn_shrinkage: f32,
    pub knn_max_history: usize,
    pub eval_users: usize,
    /// Above `ease_max_items`: plain item-kNN instead of EASE-head + kNN (chosen per tenant by the evaluation).
    pub knn_only: bool,
    /// Content neighbours precomputed per product, and the largest catalog for which they are.
    pub content_neighbors: usize,
    pub content_neighbors_max_products: usize,
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            ease_max_items: 3000,
            ease_lambda: 200.0,
            neighbors: 100,
            half_life_secs: 180.0 * 86400.0,
            recency_half_life_steps: 3.0,
            recency_floor: 0.1,
            knn_shrinkage: 10.0,
            knn_max_history: 100,
            eval_users: 200,
            knn_only: false,
            content_neighbors: 50,
            content_neighbors_max_products: 20_000,
        }
    }
}

/// One product as training sees it.
#[derive(Debug, Clone)]
pub struct ProductRow {
    pub id: String,
    /// Name, category and tag words (lower case) for the keyword fallback of the content part.
    pub words: Vec<String>,
    pub embedding: Option<Vec<f32>>,
}

/// One interaction: an order line or an event.
#[derive(Debug, Clone)]
pub struct Interaction {
    pub user: String,
    pub product: String,
    pub weight: f32,
    /// Unix seconds.
    pub at: i64,
    pub purchase: bool,
}

#[derive(Debug, Default)]
pub struct TrainData {
    pub products: Vec<ProductRow>,
    pub interactions: Vec<Interaction>,
}

/// Weight of an event type; orders count as `purchase`.
pub fn event_weight(kind: &str) -> f32 {
    match kind {
        "purchase" | "order" => 1.0,
        "cart" | "add_to_cart" => 0.5,
        "wishlist" => 0.3,
        "view" | "click" => 0.15,
        _ => 0.1,
    }
}

/// Weight of an order line of `quantity`.
pub fn purchase_weight(quantity: i64) -> f32 {
    1.0 + (quantity.max(1) as f32).ln()
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Counts {
    pub products: usize,
    pub products_with_interactions: usize,
    pub products_embedded: usize,
    pub users: usize,
    pub interactions: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    /// Leave-last-out: each sampled customer's last purchase is held out and predicted.
    pub protocol: String,
    pub users: usize,
    pub hr_at_10: f64,
    pub ndcg_at_10: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    pub version: u64,
    pub trained_at: String,
    pub data_version: i64,
    /// `ease`, `item_knn` or `popularity` (no interactions yet).
    pub method: String,
    /// `minilm` or `keywords`.
    pub content: String,
    pub training_ms: u64,
    pub counts: Counts,
    pub evaluation: Option<Evaluation>,
}

/// Content vectors or, without the embedding model, word sets.
pub struct Content {
    /// n × DIM, zero rows for products without an embedding.
    pub(super) emb: Option<Tensor>,
    pub(super) has_emb: Vec<bool>,
    words: Vec<Vec<u64>>,
}

pub struct Model {
    pub info: ModelInfo,
    pub items: Vec<String>,
    pub index: HashMap<String, u32>,
    offsets: Vec<u32>,
    nbr: Vec<u32>,
    w: Vec<f32>,
    pub popularity: Vec<f32>,
    /// Items by popularity, descending (only those with any).
    pub by_popularity: Vec<u32>,
    pub content: Content,
    /// Precomputed content neighbours (see [`Collab::similar`]).
    pub similar: Option<Sparse>,
}

/// The collaborative part of a trained model (what is persisted).
pub struct Collab {
    pub method: &'static str,
    pub offsets: Vec<u32>,
    pub nbr: Vec<u32>,
    pub w: Vec<f32>,
    pub popularity: Vec<f32>,
    pub users: usize,
    pub active: usize,
    /// Precomputed content neighbours (`content_neighbors` per product), when there are embeddings
    /// and at most `content_neighbors_max_products` products.
    pub similar: Option<Sparse>,
}

/// Sparse rows: row `i` is `idx[offsets[i]..offsets[i + 1]]` with weights `w[..]`, strongest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sparse {
    pub offsets: Vec<u32>,
    pub idx: Vec<u32>,
    pub w: Vec<f32>,
}

impl Sparse {
    pub fn from_rows(rows: Vec<Vec<(u32, f32)>>) -> Sparse {
        let mut s = Sparse { offsets: vec![0], idx: Vec::new(), w: Vec::new() };
        for r in rows {
            for (j, x) in r {
                s.idx.push(j);
                s.w.push(x);
            }
            s.offsets.push(s.idx.len() as u32);
        }
        s
    }

    pub fn row(&self, i: u32) -> impl Iterator<Item = (u32, f32)> + '_ {
        let (a, b) = (self.offsets[i as usize] as usize, self.offsets[i as usize + 1] as usize);
        self.idx[a..b].iter().copied().zip(self.w[a..b].iter().copied())
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.idx.len() as u32).to_le_bytes());
        for x in &self.offsets {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for x in &self.idx {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for x in &self.w {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
}

fn word_hashes(words: &[String]) -> Vec<u64> {
    use std::hash::{Hash, Hasher};
    let mut v: Vec<u64> = words
        .iter()
        .map(|w| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            w.hash(&mut h);
            h.finish()
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Lower-case words of at least two characters.
pub fn words_of(texts: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for t in texts {
        for w in t.split(|c: char| !c.is_alphanumeric()) {
            if w.chars().count() >= 2 {
                out.push(w.to_lowercase());
            }
        }
    }
    out
}

impl Content {
    pub fn build(products: &[ProductRow]) -> candle_core::Result<Content> {
        let n = products.len();
        let has_emb: Vec<bool> = products.iter().map(|p| p.embedding.as_ref().is_some_and(|e| e.len() == crate::embed::DIM)).collect();
        let emb = if n > 0 && has_emb.iter().any(|h| *h) {
            let mut flat = vec![0f32; n * crate::embed::DIM];
            for (i, p) in products.iter().enumerate() {
                if has_emb[i] {
                    flat[i * crate::embed::DIM..(i + 1) * crate::embed::DIM].copy_from_slice(p.embedding.as_ref().expect("checked"));
                }
            }
            Some(Tensor::from_vec(flat, (n, crate::embed::DIM), &Device::Cpu)?)
        } else {
            None
        };
        Ok(Content { emb, has_emb, words: products.iter().map(|p| word_hashes(&p.words)).collect() })
    }

    pub fn embedded(&self) -> usize {
        self.has_emb.iter().filter(|h| **h).count()
    }

    pub fn uses_embeddings(&self) -> bool {
        self.emb.is_some()
    }

    pub fn has_vector(&self, i: usize) -> bool {
        self.has_emb.get(i).copied().unwrap_or(false)
    }

    /// The embedding of item `i`, if it has one.
    pub fn vector(&self, i: usize) -> Option<Vec<f32>> {
        if !self.has_emb.get(i).copied().unwrap_or(false) {
            return None;
        }
        self.emb.as_ref()?.get(i).ok()?.to_vec1().ok()
    }

    /// Cosine similarity of every item to `query` (unit vectors: a dot product). Zero for items
    /// without an embedding.
    pub fn by_vector(&self, query: &[f32]) -> Option<Vec<f32>> {
        let emb = self.emb.as_ref()?;
        let q = Tensor::from_slice(query, (query.len(), 1), &Device::Cpu).ok()?;
        emb.matmul(&q).ok()?.flatten_all().ok()?.to_vec1().ok()
    }

    /// Jaccard overlap of every item's words with `words`.
    pub fn by_words(&self, words: &[String]) -> Vec<f32> {
        let q = word_hashes(words);
        self.words
            .iter()
            .map(|w| {
                if q.is_empty() || w.is_empty() {
                    return 0.0;
                }
                let (mut a, mut b, mut inter) = (0, 0, 0);
                while a < q.len() && b < w.len() {
                    match q[a].cmp(&w[b]) {
                        std::cmp::Ordering::Less => a += 1,
                        std::cmp::Ordering::Greater => b += 1,
                        std::cmp::Ordering::Equal => {
                            inter += 1;
                            a += 1;
                            b += 1;
                        }
                    }
                }
                inter as f32 / (q.len() + w.len() - inter) as f32
            })
            .collect()
    }

    /// Similarity of every item to item `i` (embedding if it has one, else words).
    pub fn to_item(&self, i: usize) -> Vec<f32> {
        if let Some(v) = self.vector(i) {
            if let Some(s) = self.by_vector(&v) {
                return s;
            }
        }
        let q = &self.words[i];
        let n = self.words.len();
        // Reuse by_words on the hashed set.
        let mut out = vec![0f32; n];
        for (j, w) in self.words.iter().enumerate() {
            if q.is_empty() || w.is_empty() {
                continue;
            }
            let inter = w.iter().filter(|h| q.binary_search(h).is_ok()).count();
            out[j] = inter as f32 / (q.len() + w.len() - inter) as f32;
        }
        out
    }
}

impl Model {
    pub fn assemble(info: ModelInfo, products: &[ProductRow], collab: Collab) -> anyhow::Result<Model> {
        let items: Vec<String> = products.iter().map(|p| p.id.clone()).collect();
        anyhow::ensure!(collab.offsets.len() == items.len() + 1, "model rows do not match the products");
        let index = items.iter().enumerate().map(|(i, id)| (id.clone(), i as u32)).collect();
        let mut by_popularity: Vec<u32> = (0..items.len() as u32).filter(|&i| collab.popularity[i as usize] > 0.0).collect();
        by_popularity.sort_by(|a, b| collab.popularity[*b as usize].total_cmp(&collab.popularity[*a as usize]));
        Ok(Model {
            info,
            items,
            index,
            offsets: collab.offsets,
            nbr: collab.nbr,
            w: collab.w,
            popularity: collab.popularity,
            by_popularity,
            content: Content::build(products)?,
            similar: collab.similar,
        })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The collaborative neighbours of item `i`, strongest first.
    pub fn neighbors(&self, i: u32) -> impl Iterator<Item = (u32, f32)> + '_ {
        let (a, b) = (self.offsets[i as usize] as usize, self.offsets[i as usize + 1] as usize);
        self.nbr[a..b].iter().copied().zip(self.w[a..b].iter().copied())
    }

    /// `Σ_i x_i · B[i, :]` for a weighted item history.
    pub fn collab_scores(&self, hist: &[(u32, f32)]) -> Vec<f32> {
        let mut s = vec![0f32; self.items.len()];
        for &(i, x) in hist {
            for (j, w) in self.neighbors(i) {
                s[j as usize] += x * w;
            }
        }
        s
    }

    /// Serialises the collaborative part and the item list (content is rebuilt from the products table).
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&serde_json::json!({"items": self.items, "method": self.info.method})).expect("json");
        let mut out = Vec::with_capacity(16 + header.len() + 4 * (self.offsets.len() + 2 * self.nbr.len() + self.popularity.len()));
        out.extend_from_slice(b"WRM1");
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&(self.nbr.len() as u32).to_le_bytes());
        for x in &self.offsets {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for x in &self.nbr {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for x in &self.w {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for x in &self.popularity {
            out.extend_from_slice(&x.to_le_bytes());
        }
        if let Some(sim) = &self.similar {
            out.extend_from_slice(b"SIM1");
            sim.write(&mut out);
        }
        out
    }

    /// The inverse of [`Model::to_bytes`]: the item ids and the collaborative part.
    pub fn from_bytes(b: &[u8]) -> anyhow::Result<(Vec<String>, Collab)> {
        let mut pos = 0usize;
        let mut take = |len: usize| -> anyhow::Result<&[u8]> {
            anyhow::ensure!(pos + len <= b.len(), "truncated model");
            let s = &b[pos..pos + len];
            pos += len;
            Ok(s)
        };
        anyhow::ensure!(take(4)? == b"WRM1", "unknown model format");
        let u32_at = |s: &[u8]| u32::from_le_bytes(s.try_into().expect("4 bytes"));
        let hlen = u32_at(take(4)?) as usize;
        let header: serde_json::Value = serde_json::from_slice(take(hlen)?)?;
        let items: Vec<String> = serde_json::from_value(header["items"].clone())?;
        let method: &'static str = match header["method"].as_str() {
            Some("ease") => "ease",
            Some("item_knn") => "item_knn",
            Some("ease_head+item_knn") => "ease_head+item_knn",
            _ => "popularity",
        };
        let nnz = u32_at(take(4)?) as usize;
        let n = items.len();
        let read_u32 = |s: &[u8]| s.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4"))).collect::<Vec<u32>>();
        let read_f32 = |s: &[u8]| s.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect::<Vec<f32>>();
        let offsets = read_u32(take(4 * (n + 1))?);
        let nbr = read_u32(take(4 * nnz)?);
        let w = read_f32(take(4 * nnz)?);
        let popularity = read_f32(take(4 * n)?);
        anyhow::ensure!(offsets.last().copied() == Some(nnz as u32) && nbr.iter().all(|&j| (j as usize) < n), "corrupt model");
        let similar = if let Ok(tag) = take(4) {
            anyhow::ensure!(tag == b"SIM1", "unknown model section");
            let nnz = u32_at(take(4)?) as usize;
            let sim = Sparse { offsets: read_u32(take(4 * (n + 1))?), idx: read_u32(take(4 * nnz)?), w: read_f32(take(4 * nnz)?) };
            anyhow::ensure!(sim.offsets.last().copied() == Some(nnz as u32) && sim.idx.iter().all(|&j| (j as usize) < n), "corrupt model");
            Some(sim)
        } else {
            None
        };
        Ok((items, Collab { method, offsets, nbr, w, popularity, users: 0, active: 0, similar }))
    }
}

/// Ranks `scores` descending, skipping items for which `skip` is true and scores ≤ 0.
pub fn ranked(scores: &[f32], skip: impl Fn(u32) -> bool, max: usize) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = scores.iter().enumerate().filter(|(i, s)| **s > 0.0 && !skip(*i as u32)).map(|(i, s)| (i as u32, *s)).collect();
    if v.len() > max {
        v.select_nth_unstable_by(max, |a, b| b.1.total_cmp(&a.1));
        v.truncate(max);
    }
    v.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// A customer's history as model rows: `x_i = min(1, Σ weight · max(floor, 0.5^(step / half_life)))`,
/// where `step` counts the customer's distinct interaction times after this one (0 for the latest
/// order or event, 1 for the one before, ...). Counting steps rather than seconds makes "what they
/// did last" dominate whatever the store's pace, and lines of one order share a step; the floor keeps
/// long-term taste in play. On MovieLens-100k this lifts HR@10 from 0.146 to 0.194 (docs/BENCHMARKS.md).
pub fn user_history(model_index: &HashMap<String, u32>, rows: &[(String, f32, i64)], p: &TrainParams) -> Vec<(u32, f32)> {
    let mut times: Vec<i64> = rows.iter().map(|r| r.2).collect();
    times.sort_unstable_by(|a, b| b.cmp(a));
    times.dedup();
    let mut acc: HashMap<u32, f32> = HashMap::new();
    for (pid, w, at) in rows {
        if let Some(&i) = model_index.get(pid) {
            let step = times.binary_search_by(|t| at.cmp(t)).unwrap_or(0) as f64;
            let decay = 0.5f64.powf(step / p.recency_half_life_steps.max(0.01)).max(p.recency_floor as f64) as f32;
            *acc.entry(i).or_insert(0.0) += w * decay;
        }
    }
    let mut v: Vec<(u32, f32)> = acc.into_iter().map(|(i, x)| (i, x.min(1.0))).collect();
    v.sort_unstable_by_key(|p| p.0);
    v
}

/// Trains a full model (no evaluation) from `data`.
#[cfg(test)]
mod tests {
    use super::*;

    fn product(id: &str) -> ProductRow {
        ProductRow { id: id.into(), words: vec![id.into()], embedding: None }
    }

    fn buy(user: &str, product: &str, at: i64) -> Interaction {
        Interaction { user: user.into(), product: product.into(), weight: 1.0, at, purchase: true }
    }

    /// Two clusters of co-purchases: each item's neighbours come from its own cluster, with EASE and with kNN.
    #[test]
    fn neighbours_follow_co_purchases() {
        let products: Vec<ProductRow> = ["a1", "a2", "a3", "b1", "b2", "b3"].into_iter().map(product).collect();
        let mut interactions = Vec::new();
        for u in 0..30 {
            let cluster = if u % 2 == 0 { "a" } else { "b" };
            for k in 1..=3 {
                if (u + k) % 3 != 0 {
                    interactions.push(buy(&format!("u{u}"), &format!("{cluster}{k}"), 1000 + u as i64));
                }
            }
        }
        let data = TrainData { products, interactions };
        for (max, method) in [(10, "ease"), (3, "ease_head+item_knn"), (1, "item_knn")] {
            let p = TrainParams { ease_max_items: max, ease_lambda: 5.0, ..TrainParams::default() };
            let (collab, _) = train(&data, &p).unwrap();
            assert_eq!(collab.method, method);
            let info = ModelInfo {
                version: 1,
                trained_at: String::new(),
                data_version: 0,
                method: collab.method.into(),
                content: "keywords".into(),
                training_ms: 0,
                counts: Counts::default(),
                evaluation: None,
            };
            let m = Model::assemble(info, &data.products, collab).unwrap();
            for (i, id) in m.items.iter().enumerate() {
                let top: Vec<&str> = m.neighbors(i as u32).take(2).map(|(j, _)| m.items[j as usize].as_str()).collect();
                assert_eq!(top.len(), 2, "{id}: {top:?}");
                assert!(top.iter().all(|t| t.as_bytes()[0] == id.as_bytes()[0]), "{} ({}): {id} → {top:?}", m.info.method, max);
            }
            // Round trip through the persisted form.
            let (items, c2) = Model::from_bytes(&m.to_bytes()).unwrap();
            assert_eq!(items, m.items);
            assert_eq!(c2.w, m.w);
            assert_eq!(c2.popularity, m.popularity);
        }
    }

    #[test]
    fn content_neighbours_are_precomputed_and_persisted() {
        // Three products on two axes of the embedding space: 0 and 1 close, 2 orthogonal; 3 has none.
        let unit = |a: f32, b: f32| {
            let mut v = vec![0f32; crate::embed::DIM];
            let n = (a * a + b * b).sqrt();
            v[0] = a / n;
            v[1] = b / n;
            v
        };
        let mut products: Vec<ProductRow> = ["x", "y", "z", "w"].into_iter().map(product).collect();
        products[0].embedding = Some(unit(1.0, 0.1));
        products[1].embedding = Some(unit(1.0, 0.3));
        products[2].embedding = Some(unit(0.0, 1.0));
        let sim = content_neighbors(&products, 2).unwrap().expect("embeddings present");
        assert_eq!(sim.row(0).map(|x| x.0).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(sim.row(2).next().map(|x| x.0), Some(1));
        assert_eq!(sim.row(3).count(), 0);
        let data = TrainData { products: products.clone(), interactions: vec![buy("u", "x", 1), buy("u", "y", 2)] };
        let (mut collab, _) = train(&data, &TrainParams::default()).unwrap();
        collab.similar = Some(sim.clone());
        let info = ModelInfo {
            version: 1,
            trained_at: String::new(),
            data_version: 0,
            method: collab.method.into(),
            content: "minilm".into(),
            training_ms: 0,
            counts: Counts::default(),
            evaluation: None,
        };
        let m = Model::assemble(info, &products, collab).unwrap();
        let (_, back) = Model::from_bytes(&m.to_bytes()).unwrap();
        assert_eq!(back.similar, Some(sim));
    }

    #[test]
    fn ranked_skips_and_orders() {
        let r = ranked(&[0.1, 0.0, 0.9, 0.5, 0.7], |i| i == 4, 2);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn truncated_model_bytes_are_refused() {
        let data = TrainData { products: vec![product("a"), product("b")], interactions: vec![buy("u", "a", 1), buy("u", "b", 2)] };
        let (collab, _) = train(&data, &TrainParams::default()).unwrap();
        let info = ModelInfo {
            version: 1,
            trained_at: String::new(),
            data_version: 0,
            method: collab.method.into(),
            content: "keywords".into(),
            training_ms: 0,
            counts: Counts::default(),
            evaluation: None,
        };
        let b = Model::assemble(info, &data.products, collab).unwrap().to_bytes();
        assert!(Model::from_bytes(&b[..b.len() - 3]).is_err());
    }
}
