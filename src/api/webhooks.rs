//! The webhook doors. Each hands the raw body and its signature header to one service, which
//! verifies and applies it:
//! - `POST /webhooks/stripe` ([`crate::services::billing::stripe_event`]);
//! - `POST /webhooks/woocommerce` on the tenant's host, or `/webhooks/woocommerce/{tenant}`
//!   ([`crate::services::webhooks::woocommerce`]).

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, State};
use axum::http::{header, HeaderMap, Uri};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;

use super::ApiPath;
use crate::auth::RequestIdentity;
use crate::config::Config;
use crate::error::{Code, Error};
use crate::services::billing;
use crate::services::webhooks::{self, WebhookAnswer, WooDelivery};
use crate::state::AppState;

pub use crate::services::billing::sign;

/// The webhooks' part of the OpenAPI document (listed in [`super::openapi::MODULES`]).
#[derive(utoipa::OpenApi)]
#[openapi(paths(stripe_webhook, woocommerce_on_host, woocommerce_for), components(schemas(WebhookAnswer)))]
pub struct WebhooksApi;

pub fn routes(config: &Config) -> Router<AppState> {
    let body = DefaultBodyLimit::max(config.recs.max_body_bytes);
    Router::new()
        .route("/webhooks/stripe", post(stripe_webhook))
        .route("/webhooks/woocommerce", post(woocommerce_on_host).layer(body))
        .route("/webhooks/woocommerce/{tenant}", post(woocommerce_for).layer(body))
}

/// The peer's address, when the server knows it (for trusted-proxy host headers).
struct Peer(Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)))
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str, code: Code) -> Result<Option<&'a str>, Error> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => Some(v.to_str().map_err(|_| Error::bad_request(code, format!("{name} is not text")))).transpose(),
    }
}

/// A Stripe event, verified by its `Stripe-Signature` and applied once (a replayed event id changes nothing).
#[utoipa::path(post, path = "/webhooks/stripe", tag = "billing", security(()), request_body(content = Object, description = "A Stripe event, as Stripe sends it"),
    responses((status = 200, description = "Received: what the event changed", body = super::schemas::StripeAnswer)))]
async fn stripe_webhook(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Json<Value>, Error> {
    let signature = header_text(&headers, "stripe-signature", Code::InvalidSignature)?;
    Ok(Json(billing::stripe_event(&state, signature, &body).await?))
}

async fn woocommerce(
    state: AppState,
    peer: Option<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    slug: Option<&str>,
    body: Bytes,
) -> Result<Json<WebhookAnswer>, Error> {
    let invalid = Code::InvalidHeader;
    let form = header_text(&headers, header::CONTENT_TYPE.as_str(), invalid)?.is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    let delivery = WooDelivery {
        topic: header_text(&headers, "x-wc-webhook-topic", invalid)?,
        signature: header_text(&headers, "x-wc-webhook-signature", Code::WebhookSignatureInvalid)?,
        delivery_id: header_text(&headers, "x-wc-webhook-delivery-id", invalid)?,
        form,
    };
    let id = RequestIdentity { headers: &headers, uri_host: uri.host(), peer: peer.map(|p| p.ip()) };
    Ok(Json(webhooks::woocommerce(&state, id, slug, delivery, &body).await?))
}

/// A WooCommerce delivery for the tenant the host names (subdomain or custom domain). The ping sent
/// when a webhook is saved answers 200 unsigned; every other delivery needs `X-WC-Webhook-Signature`.
#[utoipa::path(post, path = "/webhooks/woocommerce", tag = "commerce", security(()),
    params(
        ("X-WC-Webhook-Topic" = Option<String>, Header, description = "product.*, order.* or customer.* (other topics are acknowledged and ignored)"),
        ("X-WC-Webhook-Signature" = Option<String>, Header, description = "base64 HMAC-SHA256 of the raw body with the tenant's webhook secret"),
        ("X-WC-Webhook-Delivery-ID" = Option<String>, Header, description = "a delivery seen before changes nothing"),
    ),
    request_body(content = Object, description = "A WooCommerce REST API resource (product, order or customer) as the webhook sends it"),
    responses((status = 200, description = "What the delivery did", body = WebhookAnswer)))]
async fn woocommerce_on_host(
    State(state): State<AppState>,
    Peer(peer): Peer,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WebhookAnswer>, Error> {
    woocommerce(state, peer, uri, headers, None, body).await
}

/// A WooCommerce delivery for the tenant the path names (for deployments without a host per tenant).
#[utoipa::path(post, path = "/webhooks/woocommerce/{tenant}", tag = "commerce", security(()),
    params(
        ("tenant" = String, Path, description = "The tenant's slug"),
        ("X-WC-Webhook-Topic" = Option<String>, Header, description = "product.*, order.* or customer.*"),
        ("X-WC-Webhook-Signature" = Option<String>, Header, description = "base64 HMAC-SHA256 of the raw body with the tenant's webhook secret"),
        ("X-WC-Webhook-Delivery-ID" = Option<String>, Header, description = "a delivery seen before changes nothing"),
    ),
    request_body(content = Object, description = "A WooCommerce REST API resource as the webhook sends it"),
    responses((status = 200, description = "What the delivery did", body = WebhookAnswer)))]
async fn woocommerce_for(
    State(state): State<AppState>,
    Peer(peer): Peer,
    uri: Uri,
    headers: HeaderMap,
    ApiPath(tenant): ApiPath<String>,
    body: Bytes,
) -> Result<Json<WebhookAnswer>, Error> {
    woocommerce(state, peer, uri, headers, Some(&tenant), body).await
}
