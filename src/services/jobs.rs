//! Jobs: a document write or bulk upload with more chunks than `docs.job_threshold_chunks` is charged
//! and checked in the request, stored as a row of the tenant's `jobs` table (with its input), noted in
//! the control plane, and answered 202 with the job. A background task then runs the same write on the
//! bulk embedding lane, at most `docs.job_workers` at once over all tenants, and records the outcome
//! that the synchronous call would have answered. A server that stops mid-job resumes it on start.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use super::context::TenantCtx;
use super::documents::{self, Run, Written};
use super::ops::Op;
use crate::docs::jobs::{self as store, Job};
use crate::docs::DocumentInput;
use crate::error::{Code, Error};
use crate::state::AppState;

pub const KIND_DOCUMENT: &str = "document";
pub const KIND_BULK: &str = "bulk";
const WORKER: &str = "document-jobs";

/// Whether a write of `chunks` chunks runs as a job.
pub(super) fn should_queue(ctx: &TenantCtx, chunks: usize) -> bool {
    let threshold = ctx.state().config.docs.job_threshold_chunks;
    threshold > 0 && chunks > threshold
}

fn now(ctx: &TenantCtx) -> String {
    crate::clock::ts(ctx.state().plans.clock.now())
}

/// Stores a job for `input` and starts it. 503 `overloaded` when the tenant already has
/// `docs.max_jobs_per_tenant` jobs queued or running.
pub(super) async fn enqueue(ctx: &TenantCtx, kind: &'static str, input: Value, documents: usize, chunks: usize) -> Result<Job, Error> {
    let cfg = &ctx.state().config.docs;
    let (max, retention) = (cfg.max_jobs_per_tenant, i64::from(cfg.job_retention_days));
    let id = format!("job_{}", ulid::Ulid::new());
    let now_t = ctx.state().plans.clock.now();
    let (now, prune) = (crate::clock::ts(now_t), crate::clock::ts(now_t - chrono::Duration::days(retention)));
    let lease = ctx.storage().await?;
    let job_id = id.clone();
    let job = lease
        .blocking(move |h| {
            h.with_writer(|c| {
                if store::active(c)? >= max {
                    return Err(Error::unavailable(
                        Code::Overloaded,
                        format!(
                            "this tenant already has {max} document jobs queued or running (docs.max_jobs_per_tenant); retry once one has finished"
                        ),
                        5,
                    ));
                }
                Ok(store::insert(c, &job_id, kind, &input, documents as u64, chunks as u64, &now, &prune)?)
            })
        })
        .await?;
    drop(lease);
    ctx.state().control.set_job_pending(ctx.id(), &id, true, now_t).await?;
    metrics::counter!("warren_jobs_accepted_total", "kind" => kind).increment(1);
    spawn(ctx.for_worker(WORKER), id);
    Ok(job)
}

/// Runs a job in the background once a slot is free.
fn spawn(ctx: TenantCtx, id: String) {
    tokio::spawn(async move {
        let slots = Arc::clone(&ctx.state().jobs.slots);
        let Ok(_slot) = slots.acquire_owned().await else { return };
        if let Err(e) = run(&ctx, &id).await {
            tracing::warn!(tenant = ctx.id(), job = %id, error = %e, "document job could not be run; it stays pending");
        }
    });
}

async fn run(ctx: &TenantCtx, id: &str) -> Result<(), Error> {
    let lease = ctx.storage().await?;
    let (job_id, started) = (id.to_string(), now(ctx));
    let Some((kind, input)) = lease.blocking(move |h| h.with_writer(|c| Ok(store::start(c, &job_id, &started)?))).await? else {
        // Finished already (or gone): nothing left to resume.
        return ctx.state().control.set_job_pending(ctx.id(), id, false, ctx.state().plans.clock.now()).await;
    };
    drop(lease);
    let progress = Arc::new(AtomicUsize::new(0));
    ctx.state().jobs.progress.lock().insert(id.to_string(), Arc::clone(&progress));
    let outcome = execute(ctx, &kind, input, &progress).await;
    ctx.state().jobs.progress.lock().remove(id);
    let recorded = match &outcome {
        Ok(v) => Ok(v.clone()),
        Err(e) => {
            if e.code().status() >= 500 {
                tracing::error!(tenant = ctx.id(), job = %id, error = %e, "document job failed");
            }
            Err(json!({"code": e.code(), "message": e.public_message()}))
        }
    };
    metrics::counter!("warren_jobs_finished_total", "outcome" => if recorded.is_ok() { "succeeded" } else { "failed" }).increment(1);
    let lease = ctx.storage().await?;
    let (job_id, finished) = (id.to_string(), now(ctx));
    lease.blocking(move |h| h.with_writer(|c| Ok(store::finish(c, &job_id, recorded.as_ref(), &finished)?))).await?;
    ctx.state().control.set_job_pending(ctx.id(), id, false, ctx.state().plans.clock.now()).await
}

async fn execute(ctx: &TenantCtx, kind: &str, input: Value, progress: &AtomicUsize) -> Result<Value, Error> {
    match kind {
        KIND_DOCUMENT => {
            let input: DocumentInput = serde_json::from_value(input).map_err(|e| Error::internal(anyhow::anyhow!("stored job input: {e}")))?;
            outcome(documents::write_as(ctx, input, Run::Job(progress)).await?)
        }
        KIND_BULK => {
            let Value::Array(items) = input else { return Err(Error::internal(anyhow::anyhow!("stored bulk job input is not an array"))) };
            outcome(documents::bulk_as(ctx, items, Run::Job(progress)).await?)
        }
        other => Err(Error::internal(anyhow::anyhow!("unknown job kind {other:?}"))),
    }
}

/// What a job records: the answer the synchronous call would have given. (A job never queues
/// another: `Run::Job` skips the threshold.)
fn outcome<T: serde::Serialize>(w: Written<T>) -> Result<Value, Error> {
    match w {
        Written::Done(r) => serde_json::to_value(r).map_err(Error::internal),
        Written::Queued(_) => Err(Error::internal(anyhow::anyhow!("a job queued another job"))),
    }
}

/// One of this tenant's jobs, with live progress while it runs.
pub async fn get(ctx: &TenantCtx, id: String) -> Result<Job, Error> {
    ctx.authorize(Op::JobGet)?;
    let lease = ctx.storage().await?;
    let key = id.clone();
    let job = lease.blocking(move |h| h.with_reader(|c| Ok(store::get(c, &key)?))).await?;
    let mut job = job.ok_or_else(|| Error::not_found(Code::JobNotFound, format!("no job {id:?}")))?;
    live(ctx.state(), &mut job);
    Ok(job)
}

/// This tenant's most recent jobs (at most 100), newest first.
pub async fn list(ctx: &TenantCtx) -> Result<Vec<Job>, Error> {
    ctx.authorize(Op::JobList)?;
    let lease = ctx.storage().await?;
    let mut jobs = lease.blocking(|h| h.with_reader(|c| Ok(store::recent(c, 100)?))).await?;
    for j in &mut jobs {
        live(ctx.state(), j);
    }
    Ok(jobs)
}

fn live(state: &AppState, job: &mut Job) {
    if let Some(p) = state.jobs.progress.lock().get(&job.id) {
        job.chunks_embedded = (p.load(Ordering::Relaxed) as u64).min(job.chunks);
    }
}

/// Resumes every job the control plane lists as pending (after a restart), each under a worker
/// capability for its tenant. Jobs of tenants that are gone are forgotten.
pub async fn resume_pending(state: &AppState) -> Result<usize, Error> {
    let pending = state.control.pending_jobs().await?;
    let mut resumed = 0;
    for (tenant_id, job_id) in pending {
        match state.control.tenant_by_id(&tenant_id).await? {
            Some(t) if crate::auth::ensure_active(&t).is_ok() => {
                spawn(TenantCtx::resumed(state, Arc::new(t), WORKER), job_id);
                resumed += 1;
            }
            _ => state.control.set_job_pending(&tenant_id, &job_id, false, state.plans.clock.now()).await?,
        }
    }
    if resumed > 0 {
        tracing::info!(jobs = resumed, "resuming document jobs interrupted by the last stop");
    }
    Ok(resumed)
}
