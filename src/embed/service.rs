//! [`EmbedService`]: an async front end that queues embedding requests for one dedicated
//! worker thread which batches them across callers.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use tokenizers::Tokenizer;
use tokio::sync::oneshot;

use super::Embedder;

/// Configuration of an [`EmbedService`].
#[derive(Clone, Debug)]
pub struct EmbedConfig {
    /// Directory with `model.safetensors`, `tokenizer.json` and `config.json`.
    pub model_dir: PathBuf,
    /// Maximum number of texts queued or being embedded; beyond it callers get
    /// [`EmbedError::Overloaded`].
    pub queue_capacity: usize,
    /// Maximum number of texts the worker gathers from several requests into one batch.
    /// (A single larger request is still embedded in one go.)
    pub max_batch: usize,
    /// Threads the worker uses for one batch; 0 = the available parallelism.
    pub threads: usize,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        EmbedConfig { model_dir: PathBuf::from("models/all-MiniLM-L6-v2"), queue_capacity: 4096, max_batch: 32, threads: 0 }
    }
}

/// Why [`EmbedService::embed`] gave no embeddings.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model is not loaded (absent or broken files), or the service was shut down.
    #[error("embedding model unavailable")]
    Unavailable,
    /// Accepting the request would exceed the queue capacity; retry after about this long.
    #[error("embedding queue full")]
    Overloaded { retry_after_secs: u64 },
    /// The request cannot be served (e.g. larger than the whole queue) or the model failed.
    #[error("embedding failed: {0}")]
    Failed(String),
}

/// Counters since the service started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmbedStats {
    /// Texts embedded.
    pub texts: u64,
    /// Model tokens embedded, including `[CLS]`/`[SEP]`, after truncation.
    pub tokens: u64,
    /// Batches run by the worker.
    pub batches: u64,
}

type Reply = Result<Vec<Vec<f32>>, EmbedError>;

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Reply>,
}

struct Shared {
    queue: Mutex<VecDeque<Job>>,
    wake: Condvar,
    stopped: AtomicBool,
    /// Texts admitted and not yet answered (queued or in the running batch).
    pending: AtomicUsize,
    capacity: usize,
    max_batch: usize,
    texts: AtomicU64,
    tokens: AtomicU64,
    batches: AtomicU64,
    /// Recent throughput in texts per second (`f64` bits), for `retry_after_secs`.
    rate: AtomicU64,
}

impl Shared {
    /// Marks the service stopped and answers every queued request with `Unavailable`.
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let drained: Vec<Job> = self.queue.lock().drain(..).collect();
        self.wake.notify_all();
        for job in drained {
            self.pending.fetch_sub(job.texts.len(), Ordering::SeqCst);
            let _ = job.reply.send(Err(EmbedError::Unavailable));
        }
    }
}

/// Owned by the `EmbedService` clones (not by the worker): dropping the last clone stops the
/// worker.
struct Handle {
    shared: Arc<Shared>,
    tokenizer: Arc<Tokenizer>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

/// Async embedding service; cheap to clone (an `Arc` inside).
///
/// Requests go into a bounded queue (counted in texts) served by one dedicated OS thread that
/// takes as many queued requests as fit in `max_batch` texts, embeds them together (the
/// [`Embedder`] sorts by length and packs sequences without padding) and answers each caller
/// through a oneshot channel. CPU-heavy work therefore never runs on the async runtime.
#[derive(Clone)]
pub struct EmbedService {
    inner: Option<Arc<Handle>>,
}

impl std::fmt::Debug for EmbedService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedService").field("available", &self.is_available()).field("queue_len", &self.queue_len()).finish()
    }
}

impl EmbedService {
    /// Loads the model and starts the worker thread. Never panics and never fails: if the
    /// model is absent or broken, logs a warning and returns an unavailable service.
    pub fn start(cfg: &EmbedConfig) -> EmbedService {
        let loaded = catch_unwind(|| Embedder::load(&cfg.model_dir));
        let embedder = match loaded {
            Ok(Ok(e)) => e.with_threads(cfg.threads),
            Ok(Err(err)) => {
                tracing::warn!(model_dir = %cfg.model_dir.display(), error = %format!("{err:#}"),
                    "embedding model not loaded; embeddings are disabled");
                return EmbedService::disabled();
            }
            Err(_) => {
                tracing::warn!(model_dir = %cfg.model_dir.display(),
                    "embedding model loader panicked; embeddings are disabled");
                return EmbedService::disabled();
            }
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            stopped: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            capacity: cfg.queue_capacity.max(1),
            max_batch: cfg.max_batch.max(1),
            texts: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            rate: AtomicU64::new(100f64.to_bits()),
        });
        let tokenizer = embedder.tokenizer_arc();
        let worker_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new().name("warren-embed".into()).spawn(move || worker(embedder, worker_shared));
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "cannot start the embedding thread; embeddings are disabled");
            return EmbedService::disabled();
        }
        tracing::info!(model_dir = %cfg.model_dir.display(), "embedding service started");
        EmbedService { inner: Some(Arc::new(Handle { shared, tokenizer })) }
    }

    /// A service without a model: every [`EmbedService::embed`] returns `Unavailable`.
    pub fn disabled() -> EmbedService {
        EmbedService { inner: None }
    }

    /// Whether a model is loaded and the service has not been shut down.
    pub fn is_available(&self) -> bool {
        self.inner.as_ref().is_some_and(|h| !h.shared.stopped.load(Ordering::SeqCst))
    }

    /// The model's tokenizer (truncation 256, no padding), if a model is loaded.
    pub fn tokenizer(&self) -> Option<Arc<Tokenizer>> {
        self.inner.as_ref().map(|h| Arc::clone(&h.tokenizer))
    }

    /// Number of model tokens `text` becomes (with `[CLS]`/`[SEP]`, after truncation), if a
    /// model is loaded.
    pub fn tokens(&self, text: &str) -> Option<usize> {
        let h = self.inner.as_ref()?;
        Some(h.tokenizer.encode(text, true).map_or(2, |e| e.len()))
    }

    /// L2-normalised embeddings of `texts`, in order.
    ///
    /// Queued on a dedicated worker thread that batches requests across all callers (sorted by
    /// length within a batch). Returns `Overloaded` immediately when the bounded queue would
    /// exceed `queue_capacity` texts, and `Failed` for a request larger than the whole queue.
    /// An empty `texts` gives an empty result without queueing. If the returned future is
    /// dropped before the request runs, the request is skipped.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let Some(h) = self.inner.as_ref().filter(|_| self.is_available()) else {
            return Err(EmbedError::Unavailable);
        };
        let shared = &h.shared;
        let n = texts.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        if n > shared.capacity {
            return Err(EmbedError::Failed(format!("request of {n} texts exceeds the queue capacity of {}", shared.capacity)));
        }
        // Admission: reserve n slots or refuse.
        let admitted = shared.pending.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |cur| (cur + n <= shared.capacity).then_some(cur + n));
        if let Err(cur) = admitted {
            let rate = f64::from_bits(shared.rate.load(Ordering::Relaxed)).max(1.0);
            let retry_after_secs = ((cur as f64 / rate).ceil() as u64).clamp(1, 60);
            return Err(EmbedError::Overloaded { retry_after_secs });
        }
        let (reply, answer) = oneshot::channel();
        {
            let mut queue = shared.queue.lock();
            // Checked under the lock: `stop` drains under the same lock, so no job is stranded.
            if shared.stopped.load(Ordering::SeqCst) {
                drop(queue);
                shared.pending.fetch_sub(n, Ordering::SeqCst);
                return Err(EmbedError::Unavailable);
            }
            queue.push_back(Job { texts, reply });
        }
        shared.wake.notify_one();
        answer.await.unwrap_or(Err(EmbedError::Unavailable))
    }

    /// Embeds any number of texts as a sequence of queue requests of at most `4 × max_batch` texts
    /// (and never more than the queue holds), so a large document or bulk upload is not refused for
    /// its size, and other tenants' requests queue between its slices instead of behind all of it.
    /// Dropping the future stops it: slices not yet admitted are never queued.
    pub async fn embed_all(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let slice = match self.inner.as_ref() {
            Some(h) => (h.shared.max_batch * 4).min(h.shared.capacity).max(1),
            None => return Err(EmbedError::Unavailable),
        };
        if texts.len() <= slice {
            return self.embed(texts).await;
        }
        let mut out = Vec::with_capacity(texts.len());
        let mut rest = texts.into_iter().peekable();
        while rest.peek().is_some() {
            let part: Vec<String> = rest.by_ref().take(slice).collect();
            out.extend(self.embed(part).await?);
        }
        Ok(out)
    }

    /// Stops the worker; pending requests get `Unavailable`. The batch being computed, if any,
    /// still completes. Idempotent; affects every clone.
    pub fn shutdown(&self) {
        if let Some(h) = &self.inner {
            h.shared.stop();
        }
    }

    /// Texts admitted and not yet answered (queued or in the running batch).
    pub fn queue_len(&self) -> usize {
        self.inner.as_ref().map_or(0, |h| h.shared.pending.load(Ordering::SeqCst))
    }

    /// Counters since start (all zero for a disabled service).
    pub fn stats(&self) -> EmbedStats {
        self.inner.as_ref().map_or_else(EmbedStats::default, |h| EmbedStats {
            texts: h.shared.texts.load(Ordering::Relaxed),
            tokens: h.shared.tokens.load(Ordering::Relaxed),
            batches: h.shared.batches.load(Ordering::Relaxed),
        })
    }
}

/// The worker loop: wait for jobs, take up to `max_batch` texts worth of them, embed, answer.
fn worker(embedder: Embedder, shared: Arc<Shared>) {
    loop {
        let mut jobs = Vec::new();
        {
            let mut queue = shared.queue.lock();
            while queue.is_empty() && !shared.stopped.load(Ordering::SeqCst) {
                shared.wake.wait(&mut queue);
            }
            if shared.stopped.load(Ordering::SeqCst) {
                break;
            }
            let mut count = 0;
            while let Some(job) = queue.front() {
                let len = job.texts.len();
                if !jobs.is_empty() && count + len > shared.max_batch {
                    break;
                }
                count += len;
                jobs.extend(queue.pop_front());
            }
        }
        // Skip requests whose caller went away.
        jobs.retain(|job: &Job| {
            let alive = !job.reply.is_closed();
            if !alive {
                shared.pending.fetch_sub(job.texts.len(), Ordering::SeqCst);
            }
            alive
        });
        if jobs.is_empty() {
            continue;
        }
        run_batch(&embedder, &shared, jobs);
    }
    tracing::debug!("embedding worker stopped");
}

fn run_batch(embedder: &Embedder, shared: &Shared, jobs: Vec<Job>) {
    let started = Instant::now();
    let texts: Vec<&str> = jobs.iter().flat_map(|j| j.texts.iter().map(String::as_str)).collect();
    let n = texts.len();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let ids = embedder.encode(&texts)?;
        let tokens: usize = ids.iter().map(Vec::len).sum();
        embedder.embed_ids(&ids).map(|v| (v, tokens))
    }));
    let result = match result {
        Ok(r) => r.map_err(|e| format!("{e:#}")),
        Err(_) => Err("embedding panicked".to_owned()),
    };
    match result {
        Ok((vectors, tokens)) => {
            shared.texts.fetch_add(n as u64, Ordering::Relaxed);
            shared.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
            shared.batches.fetch_add(1, Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64().max(1e-6);
            let old = f64::from_bits(shared.rate.load(Ordering::Relaxed));
            let rate = 0.8 * old + 0.2 * (n as f64 / secs);
            shared.rate.store(rate.to_bits(), Ordering::Relaxed);
            let mut vectors = vectors.into_iter();
            for job in jobs {
                let k = job.texts.len();
                let mine: Vec<Vec<f32>> = vectors.by_ref().take(k).collect();
                shared.pending.fetch_sub(k, Ordering::SeqCst);
                let _ = job.reply.send(Ok(mine));
            }
        }
        Err(msg) => {
            tracing::warn!(error = %msg, texts = n, "embedding batch failed");
            for job in jobs {
                shared.pending.fetch_sub(job.texts.len(), Ordering::SeqCst);
                let _ = job.reply.send(Err(EmbedError::Failed(msg.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn disabled_and_missing_model_are_unavailable() {
        let svc = EmbedService::disabled();
        assert!(!svc.is_available() && svc.tokenizer().is_none() && svc.queue_len() == 0);
        assert!(matches!(svc.embed(vec!["x".into()]).await, Err(EmbedError::Unavailable)));

        let cfg = EmbedConfig { model_dir: "/nonexistent/model".into(), ..EmbedConfig::default() };
        let svc = EmbedService::start(&cfg);
        assert!(!svc.is_available());
        assert!(matches!(svc.embed(vec!["x".into()]).await, Err(EmbedError::Unavailable)));
        svc.shutdown();
    }

    #[test]
    fn default_config() {
        let c = EmbedConfig::default();
        assert_eq!(c.model_dir, PathBuf::from("models/all-MiniLM-L6-v2"));
        assert_eq!((c.queue_capacity, c.max_batch, c.threads), (4096, 32, 0));
    }
}
