//! The recommendation model: training (pure functions of the tenant's data) and scoring.
//!
//! * **Interactions.** Each (customer or session, product) pair gets `x = min(1, Σ weight · decay)`:
//!   a purchase weighs 1 (more for quantity > 1: `1 + ln q`), a cart 0.5, a wishlist 0.3, a view
//!   0.15, any other event type 0.1; `decay = 0.5^(age / half_life)` with the age measured from the
//!   tenant's newest interaction (so an old import is not all decayed to nothing).
//! * **Collaborative part.** Up to `ease_max_items` products with interactions: **EASE**
//!   (Steck 2019), `B = I − P·diag(P)⁻¹` with `P = (XᵀX + λI)⁻¹`, the closed-form optimum of a
//!   ridge-regressed item-item model with a zero diagonal. It has one hyper-parameter, no
//!   sampling, no epochs, and on sparse implicit data it beats matrix factorisation (see
//!   docs/BENCHMARKS.md). XᵀX is accumulated sparsely (X is >99 % zeros), the inverse is done
//!   by candle matmuls ([`super::linalg`]). Above that size the dense n × n inverse costs too much
//!   time and memory, so the model is **item-item cosine with shrinkage**
//!   `s_ij = Σ_u x_ui x_uj / (‖x_i‖‖x_j‖ + shrink)`, accumulated from each user's `knn_max_history`
//!   most recent items, so its cost is bounded by `users × knn_max_history²`.
//!   Either way each item keeps its `neighbors` strongest weights (a sparse row), which is all
//!   inference needs: a customer's scores are `Σ_i x_ui · B[i, :]`.
//! * **Content part.** MiniLM embeddings of "name. categories. description" (when the model is
//!   loaded), as an n × 384 candle tensor; similarity is one matmul. Without the model, the Jaccard
//!   overlap of name/category/tag words stands in (status reports `content: "keywords"`).
//! * **Popularity.** Σ_u x_ui, i.e. decayed popularity: the fallback for customers without history.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::linalg;

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
    emb: Option<Tensor>,
    has_emb: Vec<bool>,
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

/// The `k` most similar products of every product with an embedding (cosine), computed in blocks of
/// rows with candle matmuls: n² × 384 multiply-adds, so only for catalogs up to a configured size.
pub fn content_neighbors(products: &[ProductRow], k: usize) -> anyhow::Result<Option<Sparse>> {
    let content = Content::build(products)?;
    let Some(emb) = &content.emb else { return Ok(None) };
    let n = products.len();
    let et = emb.t()?.contiguous()?;
    let mut rows: Vec<Vec<(u32, f32)>> = Vec::with_capacity(n);
    const BLOCK: usize = 256;
    let mut start = 0;
    while start < n {
        let len = BLOCK.min(n - start);
        let sims: Vec<f32> = emb.narrow(0, start, len)?.matmul(&et)?.flatten_all()?.to_vec1()?;
        for r in 0..len {
            let i = start + r;
            if !content.has_emb[i] {
                rows.push(Vec::new());
                continue;
            }
            rows.push(top_positive(&sims[r * n..(r + 1) * n], i, k));
        }
        start += len;
    }
    Ok(Some(Sparse::from_rows(rows)))
}

/// `x_ui` per user from raw interactions (see the module docs). Users in first-seen order.
pub fn user_matrix(data: &TrainData, index: &HashMap<String, u32>, half_life_secs: f64) -> Vec<Vec<(u32, f32)>> {
    let t_max = data.interactions.iter().map(|i| i.at).max().unwrap_or(0);
    let mut users: HashMap<&str, usize> = HashMap::new();
    let mut rows: Vec<HashMap<u32, f32>> = Vec::new();
    for it in &data.interactions {
        let Some(&item) = index.get(&it.product) else { continue };
        let u = *users.entry(it.user.as_str()).or_insert_with(|| {
            rows.push(HashMap::new());
            rows.len() - 1
        });
        let age = (t_max - it.at).max(0) as f64;
        let decay = 0.5f64.powf(age / half_life_secs.max(1.0)) as f32;
        *rows[u].entry(item).or_insert(0.0) += it.weight * decay;
    }
    rows.into_iter()
        .map(|r| {
            let mut v: Vec<(u32, f32)> = r.into_iter().map(|(i, x)| (i, x.min(1.0))).collect();
            v.sort_unstable_by_key(|p| p.0);
            v
        })
        .collect()
}

/// Keeps the `k` largest positive entries of `row` (dense, length n), skipping `skip`.
fn top_positive(row: &[f32], skip: usize, k: usize) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = row.iter().enumerate().filter(|(j, w)| *j != skip && **w > 0.0).map(|(j, w)| (j as u32, *w)).collect();
    if v.len() > k {
        v.select_nth_unstable_by(k, |a, b| b.1.total_cmp(&a.1));
        v.truncate(k);
    }
    v.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// Trains the collaborative part over `n` items from user rows.
pub fn train_collab(users: &[Vec<(u32, f32)>], n: usize, p: &TrainParams) -> anyhow::Result<Collab> {
    let mut popularity = vec![0f32; n];
    let mut active_map = vec![u32::MAX; n];
    let mut active: Vec<u32> = Vec::new();
    for row in users {
        for &(i, x) in row {
            popularity[i as usize] += x;
            if active_map[i as usize] == u32::MAX {
                active_map[i as usize] = active.len() as u32;
                active.push(i);
            }
        }
    }
    let m = active.len();
    let mut rows: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
    let method = if m == 0 {
        "popularity"
    } else if m <= p.ease_max_items {
        for (i, r) in ease_rows(users, &active, n, p)? {
            rows[i as usize] = r;
        }
        "ease"
    } else {
        rows = knn_rows(users, n, p);
        if p.ease_max_items >= 2 && !p.knn_only {
            // EASE over the `ease_max_items` most popular products (where most of the demand is),
            // item-kNN for the rest. A head row keeps its EASE weights and takes kNN weights towards
            // tail products rescaled to the EASE row's range; tail rows are rescaled by the median
            // of those factors, so both kinds of weight compete on one scale.
            let mut head = active.clone();
            head.sort_by(|a, b| popularity[*b as usize].total_cmp(&popularity[*a as usize]).then(a.cmp(b)));
            head.truncate(p.ease_max_items);
            let in_head: std::collections::HashSet<u32> = head.iter().copied().collect();
            let mut factors = Vec::new();
            for (i, er) in ease_rows(users, &head, n, p)? {
                let knn = std::mem::take(&mut rows[i as usize]);
                let (emax, kmax) = (er.first().map_or(0.0, |x| x.1), knn.first().map_or(0.0, |x| x.1));
                let f = if kmax > 0.0 && emax > 0.0 { emax / kmax } else { 0.0 };
                if f > 0.0 {
                    factors.push(f);
                }
                let mut r = er;
                r.extend(knn.into_iter().filter(|(j, _)| !in_head.contains(j)).map(|(j, w)| (j, w * f)));
                r.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
                r.truncate(p.neighbors);
                rows[i as usize] = r;
            }
            factors.sort_by(f32::total_cmp);
            let f = factors.get(factors.len() / 2).copied().unwrap_or(1.0);
            for (i, r) in rows.iter_mut().enumerate() {
                if !in_head.contains(&(i as u32)) {
                    r.iter_mut().for_each(|x| x.1 *= f);
                }
            }
            "ease_head+item_knn"
        } else {
            "item_knn"
        }
    };
    let mut offsets = Vec::with_capacity(n + 1);
    let (mut nbr, mut w) = (Vec::new(), Vec::new());
    offsets.push(0u32);
    for r in rows {
        for (j, x) in r {
            nbr.push(j);
            w.push(x);
        }
        offsets.push(nbr.len() as u32);
    }
    Ok(Collab { method, offsets, nbr, w, popularity, users: users.len(), active: m, similar: None })
}

/// EASE over `items` (global indices): their rows, in global indices, strongest first.
fn ease_rows(users: &[Vec<(u32, f32)>], items: &[u32], n: usize, p: &TrainParams) -> anyhow::Result<Vec<(u32, Vec<(u32, f32)>)>> {
    let m = items.len();
    let mut local = vec![u32::MAX; n];
    for (k, &i) in items.iter().enumerate() {
        local[i as usize] = k as u32;
    }
    // Gram matrix, accumulated sparsely (X is mostly zeros).
    let mut g = vec![0f32; m * m];
    let mut loc: Vec<(usize, f32)> = Vec::new();
    for row in users {
        loc.clear();
        loc.extend(row.iter().filter(|(i, _)| local[*i as usize] != u32::MAX).map(|&(i, x)| (local[i as usize] as usize, x)));
        for &(a, xa) in &loc {
            let base = a * m;
            for &(b, xb) in &loc {
                g[base + b] += xa * xb;
            }
        }
    }
    for a in 0..m {
        g[a * m + a] += p.ease_lambda.max(1.0);
    }
    let pinv = linalg::spd_inverse(&linalg::square(g, m)?)?;
    let pm: Vec<f32> = pinv.flatten_all()?.to_vec1()?;
    drop(pinv);
    let diag: Vec<f32> = (0..m).map(|j| pm[j * m + j]).collect();
    let mut brow = vec![0f32; m];
    let mut out = Vec::with_capacity(m);
    for a in 0..m {
        for b in 0..m {
            brow[b] = -pm[a * m + b] / diag[b];
        }
        brow[a] = 0.0;
        out.push((items[a], top_positive(&brow, a, p.neighbors).into_iter().map(|(b, w)| (items[b as usize], w)).collect()));
    }
    Ok(out)
}

/// Item-item cosine with shrinkage over each user's `knn_max_history` strongest items.
fn knn_rows(users: &[Vec<(u32, f32)>], n: usize, p: &TrainParams) -> Vec<Vec<(u32, f32)>> {
    let mut norms = vec![0f32; n];
    let mut co: Vec<HashMap<u32, f32>> = vec![HashMap::new(); n];
    for row in users {
        let mut r = row.clone();
        if r.len() > p.knn_max_history {
            r.select_nth_unstable_by(p.knn_max_history, |a, b| b.1.total_cmp(&a.1));
            r.truncate(p.knn_max_history);
        }
        for &(i, xi) in &r {
            norms[i as usize] += xi * xi;
            for &(j, xj) in &r {
                if i != j {
                    *co[i as usize].entry(j).or_insert(0.0) += xi * xj;
                }
            }
        }
    }
    let norms: Vec<f32> = norms.into_iter().map(f32::sqrt).collect();
    (0..n)
        .map(|i| {
            let c = std::mem::take(&mut co[i]);
            let mut v: Vec<(u32, f32)> = c.into_iter().map(|(j, s)| (j, s / (norms[i] * norms[j as usize] + p.knn_shrinkage))).collect();
            if v.len() > p.neighbors {
                v.select_nth_unstable_by(p.neighbors, |a, b| b.1.total_cmp(&a.1));
                v.truncate(p.neighbors);
            }
            v.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
            v
        })
        .collect()
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
/// Products of the catalog that have interactions.
pub fn active_products(data: &TrainData) -> usize {
    let catalog: std::collections::HashSet<&str> = data.products.iter().map(|p| p.id.as_str()).collect();
    data.interactions.iter().filter(|i| catalog.contains(i.product.as_str())).map(|i| i.product.as_str()).collect::<std::collections::HashSet<_>>().len()
}

pub fn train(data: &TrainData, p: &TrainParams) -> anyhow::Result<(Collab, usize)> {
    let index: HashMap<String, u32> = data.products.iter().enumerate().map(|(i, r)| (r.id.clone(), i as u32)).collect();
    let users = user_matrix(data, &index, p.half_life_secs);
    let interactions = users.iter().map(|u| u.len()).sum();
    Ok((train_collab(&users, data.products.len(), p)?, interactions))
}

/// Leave-last-out on up to `eval_users` customers with at least three purchased products: their last
/// purchase is removed, a model is trained on the rest, and the top 10 (purchased excluded) is scored.
pub fn evaluate(data: &TrainData, p: &TrainParams) -> anyhow::Result<Option<Evaluation>> {
    if p.eval_users == 0 {
        return Ok(None);
    }
    let index: HashMap<String, u32> = data.products.iter().enumerate().map(|(i, r)| (r.id.clone(), i as u32)).collect();
    // Last purchase (latest time, then latest position) per user, and the number of distinct purchases.
    let mut last: HashMap<&str, (i64, usize)> = HashMap::new();
    let mut bought: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
    for (k, it) in data.interactions.iter().enumerate() {
        if !it.purchase || !index.contains_key(&it.product) {
            continue;
        }
        bought.entry(&it.user).or_default().insert(&it.product);
        let e = last.entry(&it.user).or_insert((it.at, k));
        if (it.at, k) >= *e {
            *e = (it.at, k);
        }
    }
    let mut eligible: Vec<(&str, usize)> = last.iter().filter(|(u, _)| bought[*u].len() >= 3).map(|(u, (_, k))| (*u, *k)).collect();
    if eligible.len() < 10 {
        return Ok(None);
    }
    // A deterministic sample: sort by a hash of the user id.
    eligible.sort_by_key(|(u, _)| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        u.hash(&mut h);
        h.finish()
    });
    eligible.truncate(p.eval_users);
    let held: HashMap<&str, usize> = eligible.iter().copied().collect();
    let held_rows: std::collections::HashSet<usize> = eligible.iter().map(|(_, k)| *k).collect();
    let train_data = TrainData {
        products: Vec::new(),
        interactions: data
            .interactions
            .iter()
            .enumerate()
            .filter(|(k, it)| {
                // Drop the held-out line and anything of that user at or after it.
                if held_rows.contains(k) {
                    return false;
                }
                match held.get(it.user.as_str()) {
                    Some(&hk) => it.at < data.interactions[hk].at,
                    None => true,
                }
            })
            .map(|(_, it)| it.clone())
            .collect(),
    };
    let users = user_matrix(&train_data, &index, p.half_life_secs);
    let collab = train_collab(&users, data.products.len(), p)?;
    let info = ModelInfo {
        version: 0,
        trained_at: String::new(),
        data_version: 0,
        method: collab.method.into(),
        content: String::new(),
        training_ms: 0,
        counts: Counts::default(),
        evaluation: None,
    };
    let products: Vec<ProductRow> = data.products.iter().map(|r| ProductRow { id: r.id.clone(), words: Vec::new(), embedding: None }).collect();
    let model = Model::assemble(info, &products, collab)?;
    let mut per_user: HashMap<&str, Vec<(String, f32, i64)>> = HashMap::new();
    for it in &train_data.interactions {
        if held.contains_key(it.user.as_str()) {
            per_user.entry(&it.user).or_default().push((it.product.clone(), it.weight, it.at));
        }
    }
    let (mut hits, mut ndcg) = (0usize, 0f64);
    for (u, k) in &eligible {
        let rows = per_user.remove(u).unwrap_or_default();
        let purchased: std::collections::HashSet<u32> = train_data
            .interactions
            .iter()
            .filter(|it| it.user == *u && it.purchase)
            .filter_map(|it| index.get(&it.product).copied())
            .collect();
        let hist = user_history(&model.index, &rows, p);
        let mut top = ranked(&model.collab_scores(&hist), |i| purchased.contains(&i), 10);
        for &i in &model.by_popularity {
            if top.len() >= 10 {
                break;
            }
            if !purchased.contains(&i) && !top.iter().any(|t| t.0 == i) {
                top.push((i, 0.0));
            }
        }
        let target = index[&data.interactions[*k].product];
        if let Some(pos) = top.iter().position(|t| t.0 == target) {
            hits += 1;
            ndcg += 1.0 / ((pos + 2) as f64).log2();
        }
    }
    let n = eligible.len() as f64;
    Ok(Some(Evaluation { protocol: "leave-last-purchase-out".into(), users: eligible.len(), hr_at_10: hits as f64 / n, ndcg_at_10: ndcg / n }))
}

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
