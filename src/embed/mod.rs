//! Local sentence embeddings with all-MiniLM-L6-v2 (384 dimensions), computed on the CPU.
//!
//! # Pieces
//! - [`Embedder`]: the tokenizer and the encoder. [`Embedder::embed`] is synchronous and
//!   CPU-bound; results are L2-normalised mean-pooled vectors that match sentence-transformers
//!   (cosine ≥ 0.9999, see `tests/embed_parity.rs`).
//! - [`EmbedService`]: what the server uses. A cheap-to-clone async handle in front of one
//!   dedicated worker thread.
//!
//! # Threading model
//! - `EmbedService::embed_for` (async) cuts its texts into slices of `max_batch` and queues at most two
//!   at a time in one of two lanes (interactive, bulk), each bounded in texts (queued plus in
//!   progress) and per caller key. A first slice that does not fit returns
//!   [`EmbedError::Overloaded`] at once; later slices wait for room. Each slice awaits a
//!   `tokio::sync::oneshot` reply. Nothing heavy ever runs on the async runtime.
//! - Each lane has one OS thread (`warren-embed-interactive`, `warren-embed-bulk`; not tokio or rayon
//!   threads), sharing one [`Embedder`]. The bulk thread runs at a higher nice value, so the OS
//!   prefers queries. A thread sleeps on its lane's condition variable, wakes for a job and takes the
//!   next batch of up to `max_batch` texts by deficit round-robin over caller keys (tenants), weighted
//!   by their plan. Batching is opportunistic: there is no linger delay, so an idle service answers a
//!   single query immediately and a busy one forms larger batches by itself.
//! - Inside a batch, sequences are sorted by length and packed into work units of similar
//!   token counts without padding; the worker plus `threads − 1` scoped helper threads
//!   (spawned per batch, `std::thread::scope`, inheriting the worker's priority) each take whole
//!   units. Matrix products run single-threaded inside a unit, so threads never synchronise within a
//!   forward pass and no global thread pool (rayon) is involved.
//! - `shutdown` (or dropping the last clone) stops the workers; queued requests get
//!   [`EmbedError::Unavailable`].
//!
//! # Model files
//! `scripts/fetch-model.sh` installs `model.safetensors`, `tokenizer.json`, `config.json` into
//! `models/all-MiniLM-L6-v2` (or `$WARREN_MODEL_DIR`). Without them [`EmbedService::start`]
//! logs a warning and returns an unavailable service.

mod half;
mod kernels;
mod model;
mod service;

pub use model::Embedder;
pub use service::{Caller, EmbedConfig, EmbedError, EmbedService, EmbedStats, Lane};

/// The arithmetic of the model's dense layers (`embed.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp16 where the CPU runs it, else fp32, without a warning (the default).
    #[default]
    Auto,
    /// IEEE single precision everywhere (the reference path).
    Fp32,
    /// Dense layers in half precision with AVX512-FP16 (fp32 partial sums every 256 terms); falls
    /// back to fp32 with a warning on a CPU without it.
    Fp16,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
        }
    }

    /// Whether this CPU runs the fp16 path.
    pub fn fp16_supported() -> bool {
        half::supported()
    }
}

/// Embedding dimension.
pub const DIM: usize = 384;
/// Model window in tokens, including `[CLS]` and `[SEP]`; longer inputs are truncated.
pub const MAX_TOKENS: usize = 256;

// `Embedder` and `EmbedService` are shared across threads by design.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Embedder>();
    assert_send_sync::<EmbedService>();
};
