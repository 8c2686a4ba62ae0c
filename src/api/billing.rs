//! Stripe's door: `POST /webhooks/stripe` hands the raw body and its `Stripe-Signature` to
//! [`crate::services::billing::stripe_event`], which verifies and applies it.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;

use crate::error::{Code, Error};
use crate::services::billing;
use crate::state::AppState;

pub use crate::services::billing::sign;

pub fn routes() -> Router<AppState> {
    Router::new().route("/webhooks/stripe", post(stripe_webhook))
}

async fn stripe_webhook(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Json<Value>, Error> {
    let signature = match headers.get("stripe-signature") {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| Error::bad_request(Code::InvalidSignature, "Stripe-Signature is not text"))?),
    };
    Ok(Json(billing::stripe_event(&state, signature, &body).await?))
}
