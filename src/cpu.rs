//! A bounded, fair queue for CPU work on request paths (search and context assembly), the way
//! embedding has one: at most `workers` run at once, at most `capacity` wait, and the next caller is
//! refused with 503 `overloaded` and `Retry-After` instead of queueing without bound. When callers
//! wait, a freed worker goes to the tenants in turn (weighted round-robin by plan), not first come
//! first served, so one tenant's burst of queries cannot hold every other tenant's behind it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::error::{Code, Error};

#[derive(Clone)]
pub struct CpuQueue {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    capacity: usize,
    name: &'static str,
}

/// One tenant's waiters.
struct Flow {
    waiters: VecDeque<oneshot::Sender<Slot>>,
    weight: usize,
    /// Grants left in this flow's current turn.
    turn: usize,
}

#[derive(Default)]
struct State {
    free: usize,
    /// Waiters queued (including ones whose caller has gone but that were not popped yet).
    waiting: usize,
    flows: HashMap<Arc<str>, Flow>,
    ring: VecDeque<Arc<str>>,
}

impl State {
    /// Forgets waiters whose caller has gone.
    fn purge(&mut self) {
        let mut gone = 0;
        for f in self.flows.values_mut() {
            let before = f.waiters.len();
            f.waiters.retain(|w| !w.is_closed());
            gone += before - f.waiters.len();
        }
        self.waiting -= gone;
        self.flows.retain(|_, f| !f.waiters.is_empty());
        let flows = &self.flows;
        self.ring.retain(|k| flows.contains_key(k));
    }

    /// The next live waiter in weighted round-robin order.
    fn next(&mut self) -> Option<oneshot::Sender<Slot>> {
        while let Some(key) = self.ring.front().cloned() {
            let Some(flow) = self.flows.get_mut(&key) else {
                self.ring.pop_front();
                continue;
            };
            let Some(w) = flow.waiters.pop_front() else {
                self.flows.remove(&key);
                self.ring.pop_front();
                continue;
            };
            self.waiting -= 1;
            if flow.waiters.is_empty() {
                self.flows.remove(&key);
                self.ring.pop_front();
            } else {
                flow.turn -= 1;
                if flow.turn == 0 {
                    flow.turn = flow.weight;
                    self.ring.rotate_left(1);
                }
            }
            if !w.is_closed() {
                return Some(w);
            }
        }
        None
    }
}

/// A slot of the queue: holds one worker until dropped, then hands it to the next waiter.
pub struct Slot {
    inner: Option<Arc<Inner>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.release();
        }
    }
}

impl Inner {
    fn release(self: &Arc<Self>) {
        let mut st = self.state.lock();
        while let Some(w) = st.next() {
            match w.send(Slot { inner: Some(Arc::clone(self)) }) {
                Ok(()) => return,
                // The caller went away between the check and the send: the slot goes to the next.
                Err(mut slot) => slot.inner = None,
            }
        }
        st.free += 1;
    }
}

impl CpuQueue {
    /// `workers` 0 means one per core.
    pub fn new(name: &'static str, workers: usize, capacity: usize) -> CpuQueue {
        let workers = if workers == 0 { std::thread::available_parallelism().map_or(2, |n| n.get()) } else { workers };
        let state = State { free: workers, ..State::default() };
        CpuQueue { inner: Arc::new(Inner { state: Mutex::new(state), capacity, name }) }
    }

    /// Waits for a worker (taking turns with other tenants by `weight`), or fails at once with 503
    /// `overloaded` when `capacity` callers already wait. Dropping the future gives up the place.
    pub async fn admit(&self, tenant: &str, weight: u32) -> Result<Slot, Error> {
        let rx = {
            let mut st = self.inner.state.lock();
            if st.free > 0 && st.waiting == 0 {
                st.free -= 1;
                return Ok(Slot { inner: Some(Arc::clone(&self.inner)) });
            }
            if st.waiting >= self.inner.capacity {
                st.purge();
            }
            if st.waiting >= self.inner.capacity {
                metrics::counter!("warren_cpu_queue_refused_total", "queue" => self.inner.name).increment(1);
                return Err(Error::unavailable(Code::Overloaded, format!("the {} queue is full; retry after Retry-After", self.inner.name), 1));
            }
            let (tx, rx) = oneshot::channel();
            let weight = weight.max(1) as usize;
            st.waiting += 1;
            match st.flows.get_mut(tenant) {
                Some(f) => {
                    f.weight = weight;
                    f.waiters.push_back(tx);
                }
                None => {
                    let key: Arc<str> = tenant.into();
                    st.ring.push_back(Arc::clone(&key));
                    st.flows.insert(key, Flow { waiters: VecDeque::from([tx]), weight, turn: weight });
                }
            }
            // A worker may have been freed while nobody waited; hand it out now.
            if st.free > 0 {
                st.free -= 1;
                drop(st);
                self.inner.release();
            }
            rx
        };
        rx.await.map_err(|_| Error::unavailable(Code::Overloaded, format!("the {} queue stopped", self.inner.name), 1))
    }

    /// Callers waiting for a worker.
    pub fn waiting(&self) -> usize {
        self.inner.state.lock().waiting
    }
}

/// CPU time the calling thread has used so far (`CLOCK_THREAD_CPUTIME_ID`): the difference around a
/// piece of work is what that work cost on this thread, whatever else the machine ran meanwhile.
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer to a local.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// Runs `f` and returns its result with the CPU time it used on this thread, in microseconds.
pub fn cpu_micros<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let start = thread_cpu_time();
    let out = f();
    (out, thread_cpu_time().saturating_sub(start).as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_beyond_capacity_and_frees_on_drop() {
        let q = CpuQueue::new("search", 1, 1);
        let first = q.admit("a", 1).await.expect("a worker is free");
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.admit("a", 1).await.map(|_| ()) });
        while q.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let refused = q.admit("b", 1).await.err().expect("the queue is full");
        assert_eq!(refused.code(), Code::Overloaded);
        assert_eq!(refused.retry_after_secs(), Some(1));
        drop(first);
        waiter.await.expect("joined").expect("admitted once the worker is free");
        assert_eq!(q.waiting(), 0);
        assert!(q.admit("a", 1).await.is_ok());
    }

    #[tokio::test]
    async fn a_freed_worker_goes_to_tenants_in_turn() {
        let q = CpuQueue::new("search", 1, 100);
        let held = q.admit("noisy", 1).await.expect("free");
        // The noisy tenant queues ten searches, then a quiet tenant queues one.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, who) in (0..10).map(|_| "noisy").chain(["quiet"]).enumerate() {
            let (qc, order) = (q.clone(), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let _slot = qc.admit(who, 1).await.expect("admitted");
                order.lock().push(who);
                tokio::task::yield_now().await;
            }));
            while q.waiting() <= i {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.expect("joined");
        }
        let order = order.lock().clone();
        let quiet_at = order.iter().position(|w| *w == "quiet").expect("served");
        assert!(quiet_at <= 1, "the quiet tenant waited behind {quiet_at} noisy searches: {order:?}");
        assert_eq!(order.len(), 11);
        assert_eq!(q.waiting(), 0);
    }

    #[tokio::test]
    async fn a_gone_waiter_does_not_keep_its_place_or_the_worker() {
        let q = CpuQueue::new("search", 1, 1);
        let held = q.admit("a", 1).await.expect("free");
        let q2 = q.clone();
        let gone = tokio::spawn(async move { q2.admit("a", 1).await.map(|_| ()) });
        while q.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        // Its place is purged when the queue looks full, and the worker is not handed to it.
        let q3 = q.clone();
        let next = tokio::spawn(async move { q3.admit("b", 1).await.map(|_| ()) });
        while q.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        drop(held);
        next.await.expect("joined").expect("admitted");
        assert!(q.admit("c", 1).await.is_ok(), "the worker came back");
    }
}
