//! A small fault-injecting HTTP proxy in front of the S3 server (moto): it forwards every request
//! unchanged, or answers 500s, delays requests, hangs them, or swallows uploads, as the test says;
//! it can also hold uploads back and deliver them later (a network that delays a packet).
//! warren is pointed at the proxy through the `endpoint` of its backup URL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Answer every `one_in`-th request with a 500 (S3's `InternalError`), forward the rest.
    Fail500 { one_in: u64 },
    /// Forward after this delay.
    Slow(Duration),
    /// Never answer (the client's request timeout ends it).
    Hang,
    /// Read uploads (PUT) to the end and never answer them: a process killed now dies mid-upload.
    StallPuts,
    /// Never answer a GET of an object (what compaction reads); forward everything else.
    HangGets,
}

pub struct ProxyState {
    mode: Mutex<Mode>,
    upstream: String,
    client: reqwest::Client,
    pub requests: AtomicU64,
    pub injected: AtomicU64,
    pub stalled_puts: AtomicU64,
    /// LIST requests (ListObjectsV2) seen.
    pub lists: AtomicU64,
    /// Uploads whose path contains this are held until [`FaultProxy::release_held`].
    hold: Mutex<Option<String>>,
    held: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
    /// The upstream's status for each held upload once delivered.
    delivered: Mutex<Vec<u16>>,
}

pub struct FaultProxy {
    pub port: u16,
    pub state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream_port: u16) -> FaultProxy {
        let state = Arc::new(ProxyState {
            mode: Mutex::new(Mode::Pass),
            upstream: format!("http://127.0.0.1:{upstream_port}"),
            client: reqwest::Client::new(),
            requests: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            stalled_puts: AtomicU64::new(0),
            lists: AtomicU64::new(0),
            hold: Mutex::new(None),
            held: Mutex::new(Vec::new()),
            delivered: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new().fallback(forward).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy { port, state, task }
    }

    pub fn set(&self, mode: Mode) {
        *self.state.mode.lock() = mode;
    }

    /// From now on, holds every upload (PUT) whose path contains `part`, whatever the mode. A held
    /// upload is delivered by [`FaultProxy::release_held`] even if its client has gone away.
    pub fn hold_puts(&self, part: &str) {
        *self.state.hold.lock() = Some(part.to_string());
    }

    /// New uploads pass again; those already held stay held until [`FaultProxy::release_held`].
    pub fn stop_holding(&self) {
        *self.state.hold.lock() = None;
    }

    /// Uploads held and not yet released.
    pub fn held(&self) -> usize {
        self.state.held.lock().len()
    }

    /// Stops holding, delivers every held upload to the upstream, and returns the upstream's
    /// statuses for them once all are answered.
    pub async fn release_held(&self) -> Vec<u16> {
        self.stop_holding();
        let waiting: Vec<_> = std::mem::take(&mut *self.state.held.lock());
        let n = waiting.len();
        for tx in waiting {
            let _ = tx.send(());
        }
        for _ in 0..200 {
            if self.state.delivered.lock().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::mem::take(&mut *self.state.delivered.lock())
    }

    /// A backup URL for `prefix` in the bucket, through the proxy.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://bucket/{prefix}?endpoint=http://127.0.0.1:{}&region=us-east-1", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(s): State<Arc<ProxyState>>, req: Request) -> Response {
    let n = s.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let mode = *s.mode.lock();
    let (parts, body) = req.into_parts();
    if parts.method == http::Method::GET && parts.uri.query().is_some_and(|q| q.contains("list-type")) {
        s.lists.fetch_add(1, Ordering::SeqCst);
    }
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return status(400, "could not read the request body");
    };
    let hold = s.hold.lock().clone();
    if parts.method == http::Method::PUT && hold.is_some_and(|h| parts.uri.path().contains(&h)) {
        // Delivered from a task of its own, so it arrives even if the client has gone away.
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.held.lock().push(tx);
        let s2 = s.clone();
        let task = tokio::spawn(async move {
            let _ = rx.await;
            let r = upstream(&s2, &parts, body).await;
            s2.delivered.lock().push(r.status().as_u16());
            r
        });
        return task.await.unwrap_or_else(|_| status(502, "held upload lost"));
    }
    match mode {
        Mode::Pass => {}
        Mode::Fail500 { one_in } => {
            if n.is_multiple_of(one_in.max(1)) {
                s.injected.fetch_add(1, Ordering::SeqCst);
                return status(500, "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code><Message>injected</Message></Error>");
            }
        }
        Mode::Slow(d) => tokio::time::sleep(d).await,
        Mode::Hang => {
            s.injected.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(120)).await;
            return status(504, "hung");
        }
        Mode::StallPuts if parts.method == http::Method::PUT => {
            s.stalled_puts.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(120)).await;
            return status(504, "stalled");
        }
        Mode::StallPuts => {}
        Mode::HangGets if parts.method == http::Method::GET && parts.uri.path().ends_with(".ltx") => {
            s.injected.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(120)).await;
            return status(504, "hung");
        }
        Mode::HangGets => {}
    }
    upstream(&s, &parts, body).await
}

/// Forwards one request to the S3 server and returns its answer.
async fn upstream(s: &ProxyState, parts: &http::request::Parts, body: axum::body::Bytes) -> Response {
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut rb = s.client.request(parts.method.clone(), format!("{}{path}", s.upstream)).body(body);
    for (k, v) in parts.headers.iter() {
        if !matches!(k.as_str(), "host" | "content-length" | "connection" | "transfer-encoding") {
            rb = rb.header(k, v);
        }
    }
    match rb.send().await {
        Ok(r) => {
            let mut out = Response::builder().status(r.status().as_u16());
            for (k, v) in r.headers().iter() {
                if !matches!(k.as_str(), "content-length" | "connection" | "transfer-encoding") {
                    out = out.header(k, v);
                }
            }
            let bytes = r.bytes().await.unwrap_or_default();
            out.body(Body::from(bytes)).unwrap()
        }
        Err(e) => status(502, &format!("upstream: {e}")),
    }
}

fn status(code: u16, body: &str) -> Response {
    Response::builder().status(code).header("content-type", "application/xml").body(Body::from(body.to_string())).unwrap()
}
