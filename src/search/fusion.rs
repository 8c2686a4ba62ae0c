//! Fusion of the keyword and semantic rankings.
//!
//! Two methods, chosen per request (`hybrid: {method, k | alpha}`):
//! - **RRF** (reciprocal rank fusion): `Σ 1 / (k + rank)` over the lists an item appears in.
//!   Scale-free and robust; `k` damps the head of each list.
//! - **Weighted**: each list's scores are normalised, then `alpha · semantic + (1 − alpha) · keyword`;
//!   an item missing from a list gets that list's floor. Normalisation is
//!   - `absolute`: on a fixed 0–1 scale, the same for every query: the semantic part is the cosine
//!     (clamped to `[0, 1]`), the keyword part the saturated BM25 score `bm25 / (bm25 + keyword_half)`
//!     (a BM25 score of `keyword_half` maps to 0.5); the fused score is then itself on 0–1;
//!   - `z_score` or `min_max`: relative to the query's candidates (the fused number is only a rank;
//!     the score shown is still the absolute blend).
//!
//! Whatever ranks, every answer reports the 0–1 parts ([`semantic_part`], [`keyword_part`]) and the
//! raw scores they came from.
//!
//! The defaults ([`DEFAULT_METHOD`], [`DEFAULT_ALPHA`], [`DEFAULT_RRF_K`], [`DEFAULT_NORM`]) were
//! chosen on SciFact (see `docs/BENCHMARKS.md`, "Search quality and latency").

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FusionMethod {
    Rrf,
    Weighted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    MinMax,
    ZScore,
    Absolute,
}

pub const DEFAULT_METHOD: FusionMethod = FusionMethod::Weighted;
pub const DEFAULT_ALPHA: f32 = 0.5;
pub const DEFAULT_RRF_K: f32 = 60.0;
pub const DEFAULT_NORM: Normalization = Normalization::Absolute;
/// The BM25 score that maps to 0.5 on the keyword part's 0–1 scale.
pub const DEFAULT_KEYWORD_HALF: f32 = 20.0;

/// The semantic part on 0–1: the cosine, clamped.
pub fn semantic_part(cosine: f32) -> f32 {
    if cosine.is_nan() {
        0.0
    } else {
        cosine.clamp(0.0, 1.0)
    }
}

/// The keyword part on 0–1: BM25 saturated at `half` (a score of `half` is 0.5).
pub fn keyword_part(bm25: f32, half: f32) -> f32 {
    if bm25.is_nan() || bm25 <= 0.0 {
        0.0
    } else {
        bm25 / (bm25 + half)
    }
}

/// Resolved fusion parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fusion {
    pub method: FusionMethod,
    pub alpha: f32,
    pub k: f32,
    pub norm: Normalization,
    pub keyword_half: f32,
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion { method: DEFAULT_METHOD, alpha: DEFAULT_ALPHA, k: DEFAULT_RRF_K, norm: DEFAULT_NORM, keyword_half: DEFAULT_KEYWORD_HALF }
    }
}

impl Fusion {
    /// The 0–1 score reported for a result with these parts (`None`: not in that retriever's list).
    /// Weighted: `alpha · semantic + (1 − alpha) · keyword`, a missing part counting 0.
    pub fn display(&self, keyword: Option<f32>, semantic: Option<f32>) -> f32 {
        let k = keyword.map(|s| keyword_part(s, self.keyword_half)).unwrap_or(0.0);
        let s = semantic.map(semantic_part).unwrap_or(0.0);
        self.alpha * s + (1.0 - self.alpha) * k
    }
}

/// Fuses two rankings of `(key, score)` (each best first). Returns `(key, fused)`, best first,
/// ties broken by key for determinism.
pub fn fuse(keyword: &[(i64, f32)], semantic: &[(i64, f32)], f: &Fusion) -> Vec<(i64, f32)> {
    let mut acc: HashMap<i64, f32> = HashMap::with_capacity(keyword.len() + semantic.len());
    match f.method {
        FusionMethod::Rrf => {
            for list in [keyword, semantic] {
                for (rank, (key, _)) in list.iter().enumerate() {
                    *acc.entry(*key).or_default() += 1.0 / (f.k + rank as f32 + 1.0);
                }
            }
        }
        FusionMethod::Weighted if f.norm == Normalization::Absolute => {
            let kw: HashMap<i64, f32> = keyword.iter().map(|(k, s)| (*k, *s)).collect();
            let sem: HashMap<i64, f32> = semantic.iter().map(|(k, s)| (*k, *s)).collect();
            for (key, _) in keyword.iter().chain(semantic) {
                acc.entry(*key).or_insert_with(|| f.display(kw.get(key).copied(), sem.get(key).copied()));
            }
        }
        FusionMethod::Weighted => {
            let kw = normalise(keyword, f.norm);
            let sem = normalise(semantic, f.norm);
            let (kw_floor, sem_floor) = (floor(&kw), floor(&sem));
            for (key, _) in keyword.iter().chain(semantic) {
                acc.entry(*key).or_insert(0.0);
            }
            for (key, v) in acc.iter_mut() {
                let k = kw.get(key).copied().unwrap_or(kw_floor);
                let s = sem.get(key).copied().unwrap_or(sem_floor);
                *v = f.alpha * s + (1.0 - f.alpha) * k;
            }
        }
    }
    let mut out: Vec<(i64, f32)> = acc.into_iter().collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

fn floor(m: &HashMap<i64, f32>) -> f32 {
    m.values().copied().fold(f32::INFINITY, f32::min).clamp(-10.0, 0.0)
}

fn normalise(list: &[(i64, f32)], norm: Normalization) -> HashMap<i64, f32> {
    let n = list.len() as f32;
    if list.is_empty() {
        return HashMap::new();
    }
    match norm {
        Normalization::Absolute => list.iter().map(|(k, s)| (*k, *s)).collect(),
        Normalization::MinMax => {
            let (lo, hi) = list.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), (_, s)| (l.min(*s), h.max(*s)));
            let span = hi - lo;
            list.iter().map(|(k, s)| (*k, if span > 0.0 { (s - lo) / span } else { 1.0 })).collect()
        }
        Normalization::ZScore => {
            let mean = list.iter().map(|(_, s)| s).sum::<f32>() / n;
            let var = list.iter().map(|(_, s)| (s - mean) * (s - mean)).sum::<f32>() / n;
            let sd = var.sqrt();
            // Shift so the list's minimum maps to 0: a missing item gets the floor.
            let z: Vec<f32> = list.iter().map(|(_, s)| if sd > 0.0 { (s - mean) / sd } else { 0.0 }).collect();
            let lo = z.iter().copied().fold(f32::INFINITY, f32::min);
            list.iter().zip(z).map(|((k, _), z)| (*k, z - lo)).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrf_and_weighted() {
        let kw = [(1, 10.0), (2, 5.0), (3, 1.0)];
        let sem = [(3, 0.9), (1, 0.8), (4, 0.1)];
        let r = fuse(&kw, &sem, &Fusion { method: FusionMethod::Rrf, k: 60.0, ..Default::default() });
        assert_eq!(r[0].0, 1);
        assert_eq!(r.len(), 4);
        let only_sem = fuse(&kw, &sem, &Fusion { method: FusionMethod::Weighted, alpha: 1.0, norm: Normalization::MinMax, ..Default::default() });
        assert_eq!(only_sem[0].0, 3);
        let only_kw = fuse(&kw, &sem, &Fusion { method: FusionMethod::Weighted, alpha: 0.0, norm: Normalization::ZScore, ..Default::default() });
        assert_eq!(only_kw[0].0, 1);
        assert!(fuse(&[], &[], &Fusion::default()).is_empty());
        let nan = fuse(&[(1, f32::NAN)], &[], &Fusion::default());
        assert_eq!(nan.len(), 1);
    }

    #[test]
    fn the_shown_score_is_on_a_fixed_scale() {
        let f = Fusion::default();
        // One hit alone is not 0 (z-score of a single item is), and the same parts give the same
        // score whatever else the query found.
        let alone = f.display(Some(20.0), Some(0.6));
        assert!((alone - (0.5 * 0.6 + 0.5 * 0.5)).abs() < 1e-6, "{alone}");
        let abs = Fusion { norm: Normalization::Absolute, ..Default::default() };
        let one = fuse(&[(1, 10.0)], &[(1, 0.6)], &abs);
        let many = fuse(&[(1, 10.0), (2, 30.0), (3, 1.0)], &[(1, 0.6), (2, 0.2)], &abs);
        assert_eq!(one[0].1, many.iter().find(|(k, _)| *k == 1).unwrap().1);
        assert!(many.iter().all(|(_, s)| (0.0..=1.0).contains(s)));
        // A missing part counts 0; parts are clamped; BM25 saturates below 1.
        assert_eq!(f.display(None, None), 0.0);
        assert_eq!(semantic_part(-0.3), 0.0);
        assert!(keyword_part(1e6, 10.0) < 1.0 && keyword_part(10.0, 10.0) == 0.5);
    }
}
