//! Recommendations: commerce data, a per-tenant model trained in the background, and serving.
//!
//! # Threading model
//! * [`Recs`] is a tenant-handle extension (dropped when the handle closes). It holds the current
//!   model in an `ArcSwapOption`: a request loads the `Arc` once and scores against it, so a model
//!   being swapped in never blocks or disturbs a request in flight.
//! * Data writes call [`Recs::changed`], which bumps an in-memory generation and makes sure one
//!   worker task runs for the tenant. The worker waits for `debounce_ms` of quiet (at most
//!   `max_delay_secs` after the first change of a burst), or for `POST /recommendations/train`,
//!   then trains: it embeds products that lack an embedding through the shared embedding queue,
//!   reads a snapshot of the data on a reader connection, computes the model on a blocking thread
//!   behind a process-wide semaphore (`max_concurrent_trainings`), writes it to `rec_model` and
//!   swaps it in. Between turns it holds only a `Weak` to the extension (once the handle closes the
//!   worker ends); during the database steps it holds a lease like a request does.
//! * On open the extension loads the persisted model; if the data changed since it was trained (or
//!   there is none), a training is scheduled at once.

pub mod input;
pub mod linalg;
pub mod model;
mod serve;
pub mod store;
mod train;

pub use serve::{cart, recommend, related, similar, trending, Filter};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use rusqlite::Connection;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};

use crate::config::RecsConfig;
use crate::error::Error;
use crate::tenant::{Lease, TenantCap, TenantHandle};
use model::{Model, ModelInfo, ProductRow, TrainParams};

/// What a training worker needs: the settings, the shared embedder, and a worker capability for
/// its tenant (handed over by the service that noticed the change).
#[derive(Clone)]
pub struct Trainer {
    pub config: Arc<crate::config::Config>,
    pub embed: crate::embed::EmbedService,
    pub cap: TenantCap,
    /// Where the training's CPU time is recorded (the tenant's `cpu_train_us` cost).
    pub meter: crate::metering::Meter,
}

/// Why a product is recommended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    BoughtTogether,
    Similar,
    Personal,
    Trending,
}

/// One recommended product.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Rec {
    pub product_id: String,
    pub score: f32,
    pub reason: Reason,
}

impl RecsConfig {
    pub fn params(&self) -> TrainParams {
        TrainParams {
            ease_max_items: self.ease_max_items,
            ease_lambda: self.ease_lambda,
            neighbors: self.neighbors.max(1),
            half_life_secs: self.half_life_days * 86400.0,
            recency_half_life_steps: self.recency_half_life_steps,
            recency_floor: self.recency_floor,
            knn_shrinkage: self.knn_shrinkage,
            knn_max_history: self.knn_max_history.max(2),
            eval_users: self.eval_users,
            knn_only: false,
            content_neighbors: self.content_neighbors,
            content_neighbors_max_products: self.content_neighbors_max_products,
        }
    }
}

/// The per-tenant recommendation state (a tenant-handle extension).
pub struct Recs {
    model: ArcSwapOption<Model>,
    /// Data changes seen (in memory) and the generation the last finished training started from.
    generation: AtomicU64,
    trained_generation: AtomicU64,
    worker: AtomicBool,
    training: AtomicBool,
    forced: AtomicBool,
    wake: Notify,
    /// First change of the pending burst, and the latest change.
    burst: Mutex<(Option<Instant>, Instant)>,
    last_error: Mutex<Option<String>>,
}

fn training_permits(cfg: &RecsConfig) -> Arc<Semaphore> {
    static SEM: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SEM.get_or_init(|| Arc::new(Semaphore::new(cfg.max_concurrent_trainings.max(1)))).clone()
}

/// Rebuilds the in-memory model from its persisted form and the products table.
fn load_persisted(c: &Connection) -> Result<Option<Model>, Error> {
    let Some((info, bytes)) = store::load_model(c)? else { return Ok(None) };
    let (items, collab) = Model::from_bytes(&bytes).map_err(Error::internal)?;
    let mut by_id: HashMap<String, ProductRow> = store::load_products(c)?.into_iter().map(|p| (p.id.clone(), p)).collect();
    // Products deleted since training keep their row (without content); serving skips them.
    let rows: Vec<ProductRow> =
        items.iter().map(|id| by_id.remove(id).unwrap_or(ProductRow { id: id.clone(), words: Vec::new(), embedding: None })).collect();
    Ok(Some(Model::assemble(info, &rows, collab).map_err(Error::internal)?))
}

impl Recs {
    fn open(h: &TenantHandle) -> Result<Recs, Error> {
        let (model, version) = h.with_reader(|c| {
            let version = store::data_version(c)?;
            let model = match load_persisted(c) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(tenant = %h.id(), error = %e, "stored recommendation model unreadable; retraining");
                    None
                }
            };
            Ok((model, version))
        })?;
        let stale = match &model {
            Some(m) => m.info.data_version < version,
            None => version > 0,
        };
        Ok(Recs {
            model: ArcSwapOption::new(model.map(Arc::new)),
            generation: AtomicU64::new(stale as u64),
            trained_generation: AtomicU64::new(0),
            worker: AtomicBool::new(false),
            training: AtomicBool::new(false),
            forced: AtomicBool::new(false),
            wake: Notify::new(),
            burst: Mutex::new((stale.then(Instant::now), Instant::now())),
            last_error: Mutex::new(None),
        })
    }

    /// The tenant's recommendation state, loading the stored model on first use of an open handle
    /// (and scheduling a training if it is stale).
    pub async fn of(trainer: &Trainer, lease: &Lease) -> Result<Arc<Recs>, Error> {
        let recs = lease.blocking(|h| h.extension(|| Recs::open(h))).await?;
        if recs.pending() {
            recs.ensure_worker(trainer);
        }
        Ok(recs)
    }

    pub fn model(&self) -> Option<Arc<Model>> {
        self.model.load_full()
    }

    fn pending(&self) -> bool {
        self.generation.load(Ordering::SeqCst) != self.trained_generation.load(Ordering::SeqCst) || self.forced.load(Ordering::SeqCst)
    }

    /// Notes a data change: a training follows after the debounce.
    pub fn changed(self: &Arc<Self>, trainer: &Trainer) {
        {
            let mut b = self.burst.lock();
            let now = Instant::now();
            b.0.get_or_insert(now);
            b.1 = now;
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.ensure_worker(trainer);
    }

    /// Asks for a training now (no debounce).
    pub fn train_now(self: &Arc<Self>, trainer: &Trainer) {
        self.forced.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        self.ensure_worker(trainer);
    }

    fn ensure_worker(self: &Arc<Self>, trainer: &Trainer) {
        if !self.worker.swap(true, Ordering::SeqCst) {
            tokio::spawn(worker(trainer.clone(), Arc::downgrade(self)));
        }
    }

    /// `GET /recommendations/status` minus the data counts.
    pub fn status(&self) -> serde_json::Value {
        let m = self.model();
        let info = m.as_ref().map(|m| &m.info);
        serde_json::json!({
            "model_version": info.map(|i| i.version).unwrap_or(0),
            "trained_at": info.map(|i| i.trained_at.clone()),
            // True from the moment a training is due (data changed, or one was asked for) until the
            // new model is in, so polling for `training == false` after writes or a train call
            // never sees the old model as final.
            "training": self.training.load(Ordering::SeqCst) || self.pending(),
            "pending_changes": self.pending(),
            "training_ms": info.map(|i| i.training_ms),
            "method": info.map(|i| i.method.clone()),
            "content": info.map(|i| i.content.clone()),
            "trained_on": info.map(|i| &i.counts),
            "evaluation": info.and_then(|i| i.evaluation.as_ref()),
            "last_error": self.last_error.lock().clone(),
        })
    }
}

async fn worker(t: Trainer, weak: Weak<Recs>) {
    let cfg = t.config.recs.clone();
    let tenant_id = t.cap.id().to_string();
    loop {
        let Some(r) = weak.upgrade() else { return };
        if !r.pending() {
            r.worker.store(false, Ordering::SeqCst);
            // A change that raced with the check above re-claims the worker.
            if r.pending() && !r.worker.swap(true, Ordering::SeqCst) {
                continue;
            }
            return;
        }
        if !r.forced.load(Ordering::SeqCst) {
            let due = {
                let b = r.burst.lock();
                let quiet = b.1 + Duration::from_millis(cfg.debounce_ms);
                b.0.map_or(quiet, |first| quiet.min(first + Duration::from_secs(cfg.max_delay_secs)))
            };
            if Instant::now() < due {
                // Holding the Arc for at most the debounce keeps a closed handle's state alive
                // only that long; the next turn of the loop sees it gone.
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    _ = r.wake.notified() => {}
                }
                continue;
            }
        }
        r.forced.store(false, Ordering::SeqCst);
        r.burst.lock().0 = None;
        let generation = r.generation.load(Ordering::SeqCst);
        r.training.store(true, Ordering::SeqCst);
        let result = train_once(&t, &r).await;
        r.training.store(false, Ordering::SeqCst);
        match result {
            Ok(more) => {
                *r.last_error.lock() = None;
                if more {
                    // Products still await embeddings: go round again.
                    r.generation.fetch_add(1, Ordering::SeqCst);
                }
            }
            Err(e) => {
                tracing::warn!(tenant = %tenant_id, error = %e, "recommendation training failed");
                *r.last_error.lock() = Some(e.to_string());
            }
        }
        r.trained_generation.store(generation, Ordering::SeqCst);
    }
}

/// Products embedded per queue request, and per training pass.
const EMBED_CHUNK: usize = 128;
const EMBED_PER_PASS: usize = 8192;

/// Embeds products that lack an embedding; true if some are left for another pass.
async fn embed_missing(t: &Trainer, lease: &Lease) -> Result<bool, Error> {
    if !t.embed.is_available() {
        return Ok(false);
    }
    let mut done = 0;
    while done < EMBED_PER_PASS {
        let todo = lease.blocking(|h| h.with_reader(|c| store::missing_embeddings(c, EMBED_CHUNK))).await?;
        if todo.is_empty() {
            return Ok(false);
        }
        done += todo.len();
        let texts: Vec<String> = todo.iter().map(|t| t.1.clone()).collect();
        let caller = crate::embed::Caller::new(t.cap.id(), 1, crate::embed::Lane::Bulk);
        match t.embed.embed_for(&caller, texts).await {
            Ok(vectors) => {
                let items: Vec<(String, String, Vec<f32>)> = todo.into_iter().zip(vectors).map(|((id, text), v)| (id, text, v)).collect();
                lease.blocking(move |h| h.with_writer(|c| store::set_embeddings(c, items))).await?;
            }
            Err(crate::embed::EmbedError::Overloaded { .. }) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "embedding products failed; content similarity uses keywords for them");
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// One training: embed, snapshot, train (blocking, behind the global permit), persist, swap.
async fn train_once(t: &Trainer, r: &Arc<Recs>) -> Result<bool, Error> {
    let lease = t.cap.lease().await?;
    let more = embed_missing(t, &lease).await?;
    let (data, data_version) = lease.blocking(|h| h.with_reader(store::load_train_data)).await?;
    drop(lease);
    let permits = training_permits(&t.config.recs);
    let _permit = permits.acquire_owned().await.map_err(Error::internal)?;
    let params = t.config.recs.params();
    let version = r.model().map_or(0, |m| m.info.version) + 1;
    let span = tracing::Span::current();
    let (model, cpu_us) = tokio::task::spawn_blocking(move || {
        let _g = span.enter();
        crate::cpu::cpu_micros(|| build_model(&data, &params, version, data_version))
    })
    .await?;
    t.meter.record_n(t.cap.id(), crate::metering::Kind::CpuTrain, cpu_us, 0);
    let model = model.map_err(Error::internal)?;
    let bytes = model.to_bytes();
    let info = model.info.clone();
    let lease = t.cap.lease().await?;
    lease.blocking(move |h| h.with_writer(|c| store::save_model(c, &info, &bytes))).await?;
    r.model.store(Some(Arc::new(model)));
    metrics::counter!("warren_recs_trainings_total").increment(1);
    Ok(more)
}

/// The whole training step (blocking, CPU-bound): the leave-last-out evaluation and the model.
/// Public for the benchmarks (`benches/recs/bench.rs`).
pub fn build_model(data: &model::TrainData, params: &TrainParams, version: u64, data_version: i64) -> anyhow::Result<Model> {
    let started = Instant::now();
    let mut params = params.clone();
    let mut evaluation = model::evaluate(data, &params)?;
    if model::active_products(data) > params.ease_max_items {
        // Large catalog: EASE over the head plus kNN, or kNN alone, whichever the tenant's own
        // leave-last-out evaluation prefers (by HR@10, then NDCG@10).
        let knn = TrainParams { knn_only: true, ..params.clone() };
        let alt = model::evaluate(data, &knn)?;
        let key = |e: &Option<model::Evaluation>| e.as_ref().map(|e| (e.hr_at_10, e.ndcg_at_10));
        if key(&alt) > key(&evaluation) {
            params = knn;
            evaluation = alt;
        }
    }
    let (mut collab, interactions) = model::train(data, &params)?;
    if params.content_neighbors > 0 && data.products.len() <= params.content_neighbors_max_products {
        collab.similar = model::content_neighbors(&data.products, params.content_neighbors)?;
    }
    let embedded = data.products.iter().filter(|p| p.embedding.as_ref().is_some_and(|e| e.len() == crate::embed::DIM)).count();
    let info = ModelInfo {
        version,
        trained_at: crate::clock::ts(chrono::Utc::now()),
        data_version,
        method: collab.method.into(),
        content: if embedded > 0 { "minilm".into() } else { "keywords".into() },
        training_ms: 0,
        counts: model::Counts {
            products: data.products.len(),
            products_with_interactions: collab.active,
            products_embedded: embedded,
            users: collab.users,
            interactions,
        },
        evaluation,
    };
    let mut model = Model::assemble(info, &data.products, collab)?;
    model.info.training_ms = started.elapsed().as_millis() as u64;
    Ok(model)
}
