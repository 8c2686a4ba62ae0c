//! The search API's request and response types, with their validation.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{DocsError, Fusion, FusionMethod, Normalization, Result, DEFAULT_LIMIT, MAX_LIMIT, MAX_QUERY_BYTES};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    #[default]
    Hybrid,
    Keyword,
    Semantic,
}

impl SearchMode {
    /// Whether the caller must embed the query first.
    pub fn needs_embedding(self) -> bool {
        self != SearchMode::Keyword
    }
}

/// `filter: {path_prefix?, metadata?: {key: value}}` — all conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Filter {
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Equality on scalar metadata values (numbers compare by value).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// Most metadata conditions in one filter (each is one SQL condition; SQLite bounds expression depth).
pub const MAX_FILTER_KEYS: usize = 64;

impl Filter {
    /// 400 for a filter warren cannot run: non-scalar values, or more than [`MAX_FILTER_KEYS`] keys.
    pub fn validate(&self) -> Result<()> {
        if let Some(m) = &self.metadata {
            if m.len() > MAX_FILTER_KEYS {
                return Err(DocsError::invalid("filter.metadata", format!("at most {MAX_FILTER_KEYS} keys")));
            }
            if m.values().any(|v| matches!(v, Value::Array(_) | Value::Object(_))) {
                return Err(DocsError::invalid("filter.metadata", "values must be scalars"));
            }
        }
        Ok(())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.path_prefix.as_deref().is_none_or(str::is_empty) && self.metadata.as_ref().is_none_or(Map::is_empty)
    }
}

/// `hybrid: {method, k | alpha, normalization?}`; unset fields take the documented defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HybridOptions {
    #[serde(default)]
    pub method: Option<FusionMethod>,
    /// RRF constant (> 0).
    #[serde(default)]
    pub k: Option<f32>,
    /// Weight of the semantic side in `[0, 1]`.
    #[serde(default)]
    pub alpha: Option<f32>,
    #[serde(default)]
    pub normalization: Option<Normalization>,
    /// `absolute` normalisation: the BM25 score that maps to 0.5 on the keyword part (> 0, default 20).
    #[serde(default)]
    pub keyword_half: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Document,
    Chunk,
}

fn default_limit() -> usize {
    DEFAULT_LIMIT
}

/// `POST /api/v1/search` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchRequest {
    /// Natural language or keywords (at most 4096 bytes).
    #[schema(pattern = r"\S", max_length = 1024)]
    pub query: String,
    #[serde(default = "default_limit")]
    #[schema(minimum = 1, maximum = 100, default = 10)]
    pub limit: usize,
    #[serde(default)]
    pub mode: SearchMode,
    #[serde(default)]
    pub filter: Option<Filter>,
    #[serde(default)]
    pub hybrid: Option<HybridOptions>,
    /// `"document"`: one result per document (its best chunk), scored by its best chunk.
    #[serde(default)]
    pub group_by: Option<GroupBy>,
    /// Return match highlights (byte ranges into `text`); default true.
    #[serde(default)]
    pub highlight: Option<bool>,
}

impl SearchRequest {
    /// A request with defaults.
    pub fn new(query: impl Into<String>, mode: SearchMode) -> Self {
        SearchRequest { query: query.into(), limit: DEFAULT_LIMIT, mode, filter: None, hybrid: None, group_by: None, highlight: None }
    }

    /// Checks the request; call before embedding the query.
    pub fn validate(&self) -> Result<()> {
        if self.query.trim().is_empty() {
            return Err(DocsError::invalid("query", "must not be empty"));
        }
        if self.query.len() > MAX_QUERY_BYTES {
            return Err(DocsError::invalid("query", format!("at most {MAX_QUERY_BYTES} bytes")));
        }
        if self.limit == 0 || self.limit > MAX_LIMIT {
            return Err(DocsError::invalid("limit", format!("must be between 1 and {MAX_LIMIT}")));
        }
        self.fusion().map(|_| ())?;
        self.filter.as_ref().map_or(Ok(()), Filter::validate)
    }

    /// Resolved fusion parameters.
    pub fn fusion(&self) -> Result<Fusion> {
        let mut f = Fusion::default();
        if let Some(h) = &self.hybrid {
            if let Some(m) = h.method {
                f.method = m;
            }
            if let Some(k) = h.k {
                if !(k.is_finite() && k > 0.0 && k <= 10_000.0) {
                    return Err(DocsError::invalid("hybrid.k", "must be in (0, 10000]"));
                }
                f.k = k;
            }
            if let Some(a) = h.alpha {
                if !(0.0..=1.0).contains(&a) {
                    return Err(DocsError::invalid("hybrid.alpha", "must be in [0, 1]"));
                }
                f.alpha = a;
            }
            if let Some(n) = h.normalization {
                f.norm = n;
            }
            if let Some(h) = h.keyword_half {
                if !(h.is_finite() && h > 0.0 && h <= 10_000.0) {
                    return Err(DocsError::invalid("hybrid.keyword_half", "must be in (0, 10000]"));
                }
                f.keyword_half = h;
            }
        }
        Ok(f)
    }
}

/// One ranked hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchResult {
    pub document_id: String,
    pub path: String,
    pub chunk_id: i64,
    pub text: String,
    /// Relevance on a fixed 0–1 scale, the same for every query: `alpha · semantic + (1 − alpha) · keyword`
    /// of the parts below (hybrid), or the one part of the mode (keyword, semantic).
    pub score: f32,
    /// The BM25 score this result had in the keyword ranking (absent: not among its candidates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword_score: Option<f32>,
    /// The cosine similarity of this result to the query (absent: not among the semantic candidates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_score: Option<f32>,
    /// Byte ranges `[start, end)` of keyword matches in `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Vec<u64>>>)]
    pub highlights: Option<Vec<[usize; 2]>>,
}

/// `POST /api/v1/search` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchResponse {
    pub results: Vec<SearchResult>,
    pub query_time_ms: f64,
}

/// Sizes of the derived state, for stats endpoints and tests.
#[derive(Debug, Clone, Serialize)]
pub struct SearchStats {
    pub indexed_chunks: u64,
    pub cached_vectors: Option<usize>,
}
