//! [`EmbedService`]: an async front end that queues embedding requests for two dedicated worker
//! threads (an interactive lane and a bulk lane) which batch them across callers and serve tenants
//! fairly: deficit round-robin, weighted by the caller's plan, in `max_batch` slices.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use parking_lot::{Condvar, Mutex};
use tokenizers::Tokenizer;
use tokio::sync::{oneshot, Notify};

use super::Embedder;

/// Configuration of an [`EmbedService`].
#[derive(Clone, Debug)]
pub struct EmbedConfig {
    /// Directory with `model.safetensors`, `tokenizer.json` and `config.json`.
    pub model_dir: PathBuf,
    /// Maximum number of texts queued or being embedded in each lane; beyond it a new request gets
    /// [`EmbedError::Overloaded`].
    pub queue_capacity: usize,
    /// Texts per forward pass, and the slice a larger request is cut into.
    pub max_batch: usize,
    /// Threads the worker uses for one batch; 0 = the available parallelism.
    pub threads: usize,
    /// Arithmetic of the dense layers (fp16 falls back to fp32 on a CPU without AVX512-FP16).
    pub precision: super::Precision,
    /// Most texts one caller key (a tenant) may have queued or being embedded per lane; 0 = a quarter
    /// of `queue_capacity`. Never less than `max_batch`.
    pub tenant_max_pending: usize,
    /// Nice value of the bulk lane's threads (0–19; 0 = same priority as everything else), so the
    /// OS runs queries first when both lanes have work.
    pub bulk_nice: i32,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        EmbedConfig {
            model_dir: PathBuf::from("models/all-MiniLM-L6-v2"),
            queue_capacity: 4096,
            max_batch: 32,
            threads: 0,
            precision: super::Precision::Auto,
            tenant_max_pending: 0,
            bulk_nice: 10,
        }
    }
}

/// Why [`EmbedService::embed`] gave no embeddings.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model is not loaded (absent or broken files), or the service was shut down.
    #[error("embedding model unavailable")]
    Unavailable,
    /// Accepting the request would exceed the lane's capacity or the caller's share of it; retry
    /// after about this long.
    #[error("embedding queue full")]
    Overloaded { retry_after_secs: u64 },
    /// The model failed.
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
    /// Batches run by the workers.
    pub batches: u64,
}

/// Which worker serves a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Queries and small writes: someone is waiting for the answer.
    Interactive,
    /// Large documents, bulk uploads, background embedding: served by a lower-priority thread.
    Bulk,
}

impl Lane {
    /// Texts up to which a write counts as interactive.
    pub const INTERACTIVE_TEXTS: usize = 8;

    /// The lane for a write of `texts` texts.
    pub fn for_write(texts: usize) -> Lane {
        if texts <= Lane::INTERACTIVE_TEXTS {
            Lane::Interactive
        } else {
            Lane::Bulk
        }
    }

    fn index(self) -> usize {
        match self {
            Lane::Interactive => 0,
            Lane::Bulk => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Lane::Interactive => "interactive",
            Lane::Bulk => "bulk",
        }
    }
}

/// Who asks: the fairness key (a tenant id), its weight (from its plan) and the lane.
#[derive(Clone, Debug)]
pub struct Caller {
    key: Arc<str>,
    weight: usize,
    lane: Lane,
}

impl Caller {
    /// `weight` ≥ 1: a flow of weight 4 gets four times the texts of a flow of weight 1 per round.
    pub fn new(key: impl Into<Arc<str>>, weight: u32, lane: Lane) -> Caller {
        Caller { key: key.into(), weight: weight.max(1) as usize, lane }
    }

    /// A caller without a tenant (tools, tests): one shared flow of weight 1.
    pub fn anonymous(lane: Lane) -> Caller {
        Caller::new("", 1, lane)
    }

    pub fn with_lane(&self, lane: Lane) -> Caller {
        Caller { lane, ..self.clone() }
    }

    pub fn lane(&self) -> Lane {
        self.lane
    }
}

type Reply = Result<Vec<Vec<f32>>, EmbedError>;

/// Where each caller's share of the embedding CPU time is reported: `(caller key, microseconds)`.
pub type CpuSink = Arc<dyn Fn(&str, u64) + Send + Sync>;

struct Job {
    key: Arc<str>,
    texts: Vec<String>,
    reply: oneshot::Sender<Reply>,
}

/// One caller key's queue in a lane.
struct Flow {
    jobs: VecDeque<Job>,
    weight: usize,
    /// Texts this flow may still take in its current turn.
    deficit: usize,
    /// Whether this turn's quantum was added.
    credited: bool,
}

/// Deficit round-robin over caller keys: each turn a flow may take `quantum × weight` texts, and a
/// batch is filled from successive flows up to its budget.
#[derive(Default)]
struct Fair {
    flows: HashMap<Arc<str>, Flow>,
    ring: VecDeque<Arc<str>>,
}

impl Fair {
    fn push(&mut self, job: Job, weight: usize) {
        match self.flows.get_mut(&job.key) {
            Some(flow) => {
                flow.weight = weight;
                flow.jobs.push_back(job);
            }
            None => {
                self.ring.push_back(Arc::clone(&job.key));
                let key = Arc::clone(&job.key);
                self.flows.insert(key, Flow { jobs: VecDeque::from([job]), weight, deficit: 0, credited: false });
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    fn drain(&mut self) -> Vec<Job> {
        self.ring.clear();
        self.flows.drain().flat_map(|(_, f)| f.jobs).collect()
    }

    /// The next batch of at most `budget` texts (at least one job if any is queued). Jobs whose
    /// caller has gone are moved to `dropped` instead.
    fn take(&mut self, budget: usize, quantum: usize, dropped: &mut Vec<Job>) -> Vec<Job> {
        let mut out = Vec::new();
        let mut used = 0;
        while let Some(key) = self.ring.front().cloned() {
            let Some(flow) = self.flows.get_mut(&key) else {
                self.ring.pop_front();
                continue;
            };
            while let Some(job) = flow.jobs.pop_front() {
                if job.reply.is_closed() {
                    dropped.push(job);
                } else {
                    flow.jobs.push_front(job);
                    break;
                }
            }
            let Some(len) = flow.jobs.front().map(|j| j.texts.len()) else {
                self.flows.remove(&key);
                self.ring.pop_front();
                continue;
            };
            if !flow.credited {
                flow.deficit += quantum * flow.weight;
                flow.credited = true;
            }
            if len <= flow.deficit {
                if !out.is_empty() && used + len > budget {
                    break;
                }
                flow.deficit -= len;
                used += len;
                out.extend(flow.jobs.pop_front());
                if used >= budget {
                    break;
                }
            } else {
                flow.credited = false;
                self.ring.rotate_left(1);
            }
        }
        out
    }
}

/// Queues and admission counters, under one lock.
#[derive(Default)]
struct Queues {
    lanes: [Fair; 2],
    /// Texts admitted and not yet answered, per lane.
    pending: [usize; 2],
    /// The same per lane and caller key.
    by_key: [HashMap<Arc<str>, usize>; 2],
}

impl Queues {
    fn release(&mut self, lane: Lane, key: &Arc<str>, n: usize) {
        let i = lane.index();
        self.pending[i] = self.pending[i].saturating_sub(n);
        if let Some(p) = self.by_key[i].get_mut(key) {
            *p = p.saturating_sub(n);
            if *p == 0 {
                self.by_key[i].remove(key);
            }
        }
    }
}

struct Shared {
    queues: Mutex<Queues>,
    wake: [Condvar; 2],
    /// Notified whenever room is released, for slices that wait for it.
    room: Notify,
    stopped: AtomicBool,
    capacity: usize,
    tenant_max: usize,
    max_batch: usize,
    texts: AtomicU64,
    tokens: AtomicU64,
    batches: AtomicU64,
    /// Recent throughput in texts per second (`f64` bits), for `retry_after_secs`.
    rate: AtomicU64,
    /// Where each tenant's share of a batch's CPU time is reported (set once by the server).
    costs: std::sync::OnceLock<CpuSink>,
}

impl Shared {
    /// Marks the service stopped and answers every queued request with `Unavailable`.
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let mut drained = Vec::new();
        {
            let mut q = self.queues.lock();
            for lane in [Lane::Interactive, Lane::Bulk] {
                for job in q.lanes[lane.index()].drain() {
                    q.release(lane, &job.key, job.texts.len());
                    drained.push(job);
                }
            }
        }
        for w in &self.wake {
            w.notify_all();
        }
        self.room.notify_waiters();
        for job in drained {
            let _ = job.reply.send(Err(EmbedError::Unavailable));
        }
    }

    fn retry_after(&self, pending: usize) -> u64 {
        let rate = f64::from_bits(self.rate.load(Ordering::Relaxed)).max(1.0);
        ((pending as f64 / rate).ceil() as u64).clamp(1, 60)
    }

    /// Answers the jobs of one batch and releases their room.
    fn answer(&self, lane: Lane, jobs: Vec<(Job, Reply)>) {
        {
            let mut q = self.queues.lock();
            for (job, _) in &jobs {
                q.release(lane, &job.key, job.texts.len());
            }
        }
        self.room.notify_waiters();
        for (job, reply) in jobs {
            let _ = job.reply.send(reply);
        }
    }
}

/// Owned by the `EmbedService` clones (not by the workers): dropping the last clone stops them.
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
/// Requests are cut into slices of at most `max_batch` texts and queued in one of two lanes, each
/// bounded (counted in texts, queued plus in progress) and served by its own OS thread:
/// - the interactive lane (queries, small writes) at normal priority;
/// - the bulk lane (large documents, bulk uploads, background work) at `bulk_nice`, so that when
///   both have work the OS runs the query first, and bulk still gets every idle cycle.
///
/// Within a lane, tenants are served by deficit round-robin weighted by their plan: a batch of up
/// to `max_batch` texts is filled from successive tenants' queues, so one tenant's thousand-chunk
/// document never holds another tenant's request back by more than one batch. A slice whose caller
/// has gone is skipped, and a dropped request queues no further slices. CPU-heavy work never runs
/// on the async runtime.
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
    /// Loads the model and starts the worker threads. Never panics and never fails: if the model is
    /// absent or broken, logs a warning and returns an unavailable service.
    pub fn start(cfg: &EmbedConfig) -> EmbedService {
        let loaded = catch_unwind(|| Embedder::load(&cfg.model_dir));
        let embedder = match loaded {
            Ok(Ok(e)) => {
                let e = e.with_threads(cfg.threads).with_precision(cfg.precision);
                tracing::info!(precision = e.precision().as_str(), threads = e.threads(), "embedding model loaded");
                Arc::new(e)
            }
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
        let capacity = cfg.queue_capacity.max(1);
        let max_batch = cfg.max_batch.clamp(1, capacity);
        let tenant_max = if cfg.tenant_max_pending == 0 { capacity / 4 } else { cfg.tenant_max_pending };
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            wake: [Condvar::new(), Condvar::new()],
            room: Notify::new(),
            stopped: AtomicBool::new(false),
            capacity,
            tenant_max: tenant_max.clamp(max_batch, capacity),
            max_batch,
            texts: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            rate: AtomicU64::new(100f64.to_bits()),
            costs: std::sync::OnceLock::new(),
        });
        let tokenizer = embedder.tokenizer_arc();
        for lane in [Lane::Interactive, Lane::Bulk] {
            let (e, s) = (Arc::clone(&embedder), Arc::clone(&shared));
            let nice = if lane == Lane::Bulk { cfg.bulk_nice.clamp(0, 19) } else { 0 };
            let spawned = std::thread::Builder::new().name(format!("warren-embed-{}", lane.name())).spawn(move || {
                lower_priority(nice);
                worker(&e, &s, lane)
            });
            if let Err(err) = spawned {
                tracing::warn!(error = %err, "cannot start an embedding thread; embeddings are disabled");
                shared.stop();
                return EmbedService::disabled();
            }
        }
        tracing::info!(model_dir = %cfg.model_dir.display(), "embedding service started");
        EmbedService { inner: Some(Arc::new(Handle { shared, tokenizer })) }
    }

    /// Reports, per tenant, the CPU microseconds spent embedding its texts: each batch's CPU time over
    /// every thread it ran on, shared among the batch's callers by their tokens. Anonymous callers
    /// are not reported. Set once; later calls are ignored.
    pub fn set_cost_sink(&self, sink: CpuSink) {
        if let Some(h) = &self.inner {
            let _ = h.shared.costs.set(sink);
        }
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

    /// Texts per slice and per batch.
    pub fn max_batch(&self) -> usize {
        self.inner.as_ref().map_or(1, |h| h.shared.max_batch)
    }

    /// [`EmbedService::embed_for`] as an anonymous interactive caller.
    pub async fn embed(&self, texts: Vec<String>) -> Reply {
        self.embed_for(&Caller::anonymous(Lane::Interactive), texts).await
    }

    /// [`EmbedService::embed_for`] as an anonymous bulk caller.
    pub async fn embed_all(&self, texts: Vec<String>) -> Reply {
        self.embed_for(&Caller::anonymous(Lane::Bulk), texts).await
    }

    /// L2-normalised embeddings of `texts`, in order, whatever their number.
    ///
    /// The texts are cut into slices of `max_batch`, of which at most two are queued at a time. The
    /// first slice is refused at once with `Overloaded` when the lane is full or the caller already
    /// has `tenant_max_pending` texts in it; later slices of an admitted request wait for room
    /// instead, so admitted work completes. Dropping the future stops the request: its queued
    /// slices are skipped and no further slice is queued. An empty `texts` gives an empty result.
    pub async fn embed_for(&self, caller: &Caller, texts: Vec<String>) -> Reply {
        self.embed_counted(caller, texts, None).await
    }

    /// [`EmbedService::embed_for`], adding the texts of each finished slice to `progress`.
    pub async fn embed_counted(&self, caller: &Caller, texts: Vec<String>, progress: Option<&AtomicUsize>) -> Reply {
        let Some(h) = self.inner.as_ref().filter(|_| self.is_available()) else {
            return Err(EmbedError::Unavailable);
        };
        let slice = h.shared.max_batch;
        let count = |v: Vec<Vec<f32>>| {
            if let Some(p) = progress {
                p.fetch_add(v.len(), Ordering::Relaxed);
            }
            v
        };
        if texts.len() <= slice {
            return submit(&h.shared, caller, texts, false).await.map(count);
        }
        let mut parts = Vec::with_capacity(texts.len().div_ceil(slice));
        let mut rest = texts.into_iter().peekable();
        while rest.peek().is_some() {
            parts.push(rest.by_ref().take(slice).collect::<Vec<String>>());
        }
        let shared = &h.shared;
        let done: Vec<Vec<Vec<f32>>> = futures::stream::iter(
            parts.into_iter().enumerate().map(|(i, part)| futures::TryFutureExt::map_ok(submit(shared, caller, part, i > 0), count)),
        )
        .buffered(2)
        .try_collect()
        .await?;
        Ok(done.into_iter().flatten().collect())
    }

    /// Stops the workers; pending requests get `Unavailable`. A batch being computed still
    /// completes. Idempotent; affects every clone.
    pub fn shutdown(&self) {
        if let Some(h) = &self.inner {
            h.shared.stop();
        }
    }

    /// Texts admitted and not yet answered (queued or in a running batch), in both lanes.
    pub fn queue_len(&self) -> usize {
        self.inner.as_ref().map_or(0, |h| {
            let q = h.shared.queues.lock();
            q.pending[0] + q.pending[1]
        })
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

/// Queues one slice (at most `max_batch` texts) and awaits its answer. With `wait`, waits for room
/// instead of refusing.
async fn submit(shared: &Shared, caller: &Caller, texts: Vec<String>, wait: bool) -> Reply {
    let n = texts.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let lane = caller.lane.index();
    let mut texts = Some(texts);
    let answer = loop {
        // Registered before the check, so a release between the check and the wait is not missed.
        let room = shared.room.notified();
        {
            let mut q = shared.queues.lock();
            // Checked under the lock: `stop` drains under the same lock, so no job is stranded.
            if shared.stopped.load(Ordering::SeqCst) {
                return Err(EmbedError::Unavailable);
            }
            let mine = q.by_key[lane].get(&caller.key).copied().unwrap_or(0);
            let fits = q.pending[lane] + n <= shared.capacity && (mine == 0 || mine + n <= shared.tenant_max);
            if fits {
                q.pending[lane] += n;
                *q.by_key[lane].entry(Arc::clone(&caller.key)).or_insert(0) += n;
                let (reply, answer) = oneshot::channel();
                let job = Job { key: Arc::clone(&caller.key), texts: texts.take().unwrap_or_default(), reply };
                q.lanes[lane].push(job, caller.weight);
                break answer;
            }
            if !wait {
                metrics::counter!("warren_embed_refused_total", "lane" => caller.lane.name()).increment(1);
                return Err(EmbedError::Overloaded { retry_after_secs: shared.retry_after(q.pending[lane]) });
            }
        }
        room.await;
    };
    shared.wake[lane].notify_one();
    answer.await.unwrap_or(Err(EmbedError::Unavailable))
}

/// Lowers the calling thread's priority (Linux: nice is per thread and inherited by the threads it
/// spawns, so the batch's helper threads run at the same priority).
fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority only reads its arguments; raising one's own nice needs no privilege.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
        if rc != 0 {
            tracing::warn!(nice, error = %std::io::Error::last_os_error(), "cannot lower the bulk embedding thread's priority");
        }
    }
}

/// A lane's worker loop: wait for jobs, take the next fair batch, embed, answer.
fn worker(embedder: &Embedder, shared: &Shared, lane: Lane) {
    loop {
        let mut dropped = Vec::new();
        let jobs = {
            let mut q = shared.queues.lock();
            while q.lanes[lane.index()].is_empty() && !shared.stopped.load(Ordering::SeqCst) {
                shared.wake[lane.index()].wait(&mut q);
            }
            if shared.stopped.load(Ordering::SeqCst) {
                break;
            }
            q.lanes[lane.index()].take(shared.max_batch, shared.max_batch, &mut dropped)
        };
        if !dropped.is_empty() {
            // Their callers are gone: release the room without computing anything.
            shared.answer(lane, dropped.into_iter().map(|j| (j, Err(EmbedError::Unavailable))).collect());
        }
        if !jobs.is_empty() {
            run_batch(embedder, shared, lane, jobs);
        }
    }
    tracing::debug!(lane = lane.name(), "embedding worker stopped");
}

fn run_batch(embedder: &Embedder, shared: &Shared, lane: Lane, jobs: Vec<Job>) {
    let started = Instant::now();
    let texts: Vec<&str> = jobs.iter().flat_map(|j| j.texts.iter().map(String::as_str)).collect();
    let n = texts.len();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let (ids, encode_us) = crate::cpu::cpu_micros(|| embedder.encode(&texts));
        let ids = ids?;
        let tokens: usize = ids.iter().map(Vec::len).sum();
        let (vectors, embed_us) = embedder.embed_ids_cpu(&ids)?;
        // Each job's share of the batch's CPU time, by its tokens.
        let mut shares = Vec::with_capacity(jobs.len());
        let mut at = 0;
        for job in &jobs {
            let mine: usize = ids[at..at + job.texts.len()].iter().map(Vec::len).sum();
            at += job.texts.len();
            shares.push(((encode_us + embed_us) as u128 * mine as u128 / tokens.max(1) as u128) as u64);
        }
        anyhow::Ok((vectors, tokens, shares))
    }));
    let result = match result {
        Ok(r) => r.map_err(|e| format!("{e:#}")),
        Err(_) => Err("embedding panicked".to_owned()),
    };
    match result {
        Ok((vectors, tokens, shares)) => {
            if let Some(sink) = shared.costs.get() {
                for (job, cpu_us) in jobs.iter().zip(shares) {
                    if !job.key.is_empty() {
                        sink(&job.key[..], cpu_us);
                    }
                }
            }
            shared.texts.fetch_add(n as u64, Ordering::Relaxed);
            shared.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
            shared.batches.fetch_add(1, Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64().max(1e-6);
            let old = f64::from_bits(shared.rate.load(Ordering::Relaxed));
            let rate = 0.8 * old + 0.2 * (n as f64 / secs);
            shared.rate.store(rate.to_bits(), Ordering::Relaxed);
            let mut vectors = vectors.into_iter();
            let answered = jobs
                .into_iter()
                .map(|job| {
                    let mine: Vec<Vec<f32>> = vectors.by_ref().take(job.texts.len()).collect();
                    (job, Ok(mine))
                })
                .collect();
            shared.answer(lane, answered);
        }
        Err(msg) => {
            tracing::warn!(error = %msg, texts = n, "embedding batch failed");
            shared.answer(lane, jobs.into_iter().map(|j| (j, Err(EmbedError::Failed(msg.clone())))).collect());
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
        assert_eq!((c.queue_capacity, c.max_batch, c.threads, c.tenant_max_pending, c.bulk_nice), (4096, 32, 0, 0, 10));
    }

    /// A queued job of `n` texts for `key`; the receiver keeps it alive.
    fn job(key: &str, n: usize) -> (Job, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        (Job { key: key.into(), texts: vec![String::new(); n], reply }, rx)
    }

    #[test]
    fn round_robin_puts_a_late_tenant_into_the_next_batch() {
        let mut fair = Fair::default();
        let mut keep = Vec::new();
        // Tenant A queues a 1,000-chunk document as slices of 32; then B asks one query.
        for _ in 0..32 {
            let (j, rx) = job("a", 32);
            fair.push(j, 1);
            keep.push(rx);
        }
        let (j, rx) = job("b", 1);
        fair.push(j, 1);
        keep.push(rx);
        let mut dropped = Vec::new();
        let first = fair.take(32, 32, &mut dropped);
        assert_eq!(first.iter().map(|j| &*j.key).collect::<Vec<_>>(), ["a"]);
        let second = fair.take(32, 32, &mut dropped);
        assert_eq!(second.iter().map(|j| &*j.key).collect::<Vec<_>>(), ["b"], "B waits for one batch, not for A's document");
        assert!(dropped.is_empty());
    }

    #[test]
    fn weights_share_texts_in_proportion() {
        let mut fair = Fair::default();
        let mut keep = Vec::new();
        for _ in 0..400 {
            for (key, weight) in [("free", 1), ("pro", 4)] {
                let (j, rx) = job(key, 8);
                fair.push(j, weight);
                keep.push(rx);
            }
        }
        let mut served: HashMap<String, usize> = HashMap::new();
        let mut dropped = Vec::new();
        for _ in 0..100 {
            for j in fair.take(32, 32, &mut dropped) {
                *served.entry(j.key.to_string()).or_default() += j.texts.len();
            }
        }
        let (free, pro) = (served["free"], served["pro"]);
        assert_eq!(free + pro, 3200, "every batch is full");
        assert!((pro as f64 / free as f64 - 4.0).abs() < 0.2, "pro {pro} vs free {free}");
    }

    #[test]
    fn gone_callers_are_dropped_not_served() {
        let mut fair = Fair::default();
        let (j, rx) = job("a", 4);
        fair.push(j, 1);
        drop(rx);
        let (j, _rx) = job("b", 2);
        fair.push(j, 1);
        let mut dropped = Vec::new();
        let batch = fair.take(32, 32, &mut dropped);
        assert_eq!((batch.len(), &*batch[0].key, dropped.len()), (1, "b", 1));
        assert!(fair.is_empty() || fair.take(32, 32, &mut dropped).is_empty());
    }
}
