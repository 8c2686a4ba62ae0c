//! A bounded queue for CPU work on request paths (search and context assembly), the way embedding
//! has one: at most `workers` run at once, at most `capacity` wait, and the next caller is refused
//! with 503 `overloaded` and `Retry-After` instead of queueing without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Code, Error};

#[derive(Clone)]
pub struct CpuQueue {
    inner: Arc<Inner>,
}

struct Inner {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    capacity: usize,
    name: &'static str,
}

/// A slot of the queue: holds one worker until dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl CpuQueue {
    /// `workers` 0 means one per core.
    pub fn new(name: &'static str, workers: usize, capacity: usize) -> CpuQueue {
        let workers = if workers == 0 { std::thread::available_parallelism().map_or(2, |n| n.get()) } else { workers };
        CpuQueue { inner: Arc::new(Inner { permits: Arc::new(Semaphore::new(workers)), waiting: AtomicUsize::new(0), capacity, name }) }
    }

    /// Waits for a worker, or fails at once with 503 `overloaded` when `capacity` callers already wait.
    pub async fn admit(&self) -> Result<Slot, Error> {
        if let Ok(p) = self.inner.permits.clone().try_acquire_owned() {
            return Ok(Slot { _permit: p });
        }
        let before = self.inner.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.inner.waiting);
        if before >= self.inner.capacity {
            metrics::counter!("warren_cpu_queue_refused_total", "queue" => self.inner.name).increment(1);
            return Err(Error::unavailable(Code::Overloaded, format!("the {} queue is full; retry after Retry-After", self.inner.name), 1));
        }
        let p = self.inner.permits.clone().acquire_owned().await.map_err(Error::internal)?;
        Ok(Slot { _permit: p })
    }

    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::SeqCst)
    }
}

/// Counts a caller as waiting until it is admitted, refused or gone (its future dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_beyond_capacity_and_frees_on_drop() {
        let q = CpuQueue::new("search", 1, 1);
        let first = q.admit().await.expect("a worker is free");
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.admit().await.map(|_| ()) });
        while q.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let refused = q.admit().await.err().expect("the queue is full");
        assert_eq!(refused.code(), Code::Overloaded);
        assert_eq!(refused.retry_after_secs(), Some(1));
        drop(first);
        waiter.await.expect("joined").expect("admitted once the worker is free");
        assert_eq!(q.waiting(), 0);
        assert!(q.admit().await.is_ok());
    }
}
