//! Forwarding a request to the node that owns its tenant: same method, path, query, headers and
//! body; the answer (status, headers, streamed body) goes back unchanged.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName};
use axum::response::{IntoResponse, Response};

use super::{Cluster, HOPS_HEADER};
use crate::error::{Code, Error};

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1), and those the
/// forwarding rewrites.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "transfer-encoding" | "upgrade" | "host" | "content-length"
    ) || name.as_str() == HOPS_HEADER
}

/// Why a forward failed.
pub enum Failed {
    /// No connection could be made: the owner is gone (the caller may take the tenant over).
    Unreachable(Error),
    /// The owner was reached but did not answer in time, or the request could not be read.
    Other(Error),
}

impl Cluster {
    /// Sends `req` to `base` (a node URL) as hop `hops`, within `cluster.forward_timeout_ms`.
    pub async fn forward(&self, base: &str, req: Request, hops: u32, max_body: usize) -> Result<Response, Failed> {
        let started = std::time::Instant::now();
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, max_body).await.map_err(|_| Failed::Other(Error::too_large()))?;
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let mut rb = self.client().request(parts.method.clone(), url).body(bytes);
        for (k, v) in parts.headers.iter().filter(|(k, _)| !hop_by_hop(k)) {
            rb = rb.header(k, v);
        }
        rb = rb.header(HOPS_HEADER, hops.to_string()).header("x-warren-forwarded-by", self.id());
        let answer = rb.send().await.map_err(|e| {
            metrics::counter!("warren_cluster_forward_failures_total").increment(1);
            let err = Error::unavailable(Code::OwnerUnavailable, "the node that owns this tenant did not answer; retry shortly", 1);
            if e.is_connect() {
                Failed::Unreachable(err)
            } else {
                tracing::warn!(error = %e, "forwarding to the owner failed");
                Failed::Other(err)
            }
        })?;
        metrics::counter!("warren_cluster_forwarded_total").increment(1);
        metrics::histogram!("warren_cluster_forward_seconds").record(started.elapsed().as_secs_f64());
        let mut out = Response::builder().status(answer.status().as_u16());
        for (k, v) in answer.headers().iter().filter(|(k, _)| !hop_by_hop(k) && *k != header::CONTENT_LENGTH) {
            out = out.header(k.as_str(), v.as_bytes());
        }
        Ok(out
            .body(Body::from_stream(answer.bytes_stream()))
            .unwrap_or_else(|e| Error::internal(anyhow::anyhow!("building a forwarded answer: {e}")).into_response()))
    }
}
