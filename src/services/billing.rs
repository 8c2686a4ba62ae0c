//! Billing: Stripe webhook events (tier changes, suspensions), trial expiry, and the monthly bill.
//!
//! The `Stripe-Signature` header is checked the way Stripe documents it: `t=<unix time>` and one or
//! more `v1=<hex>` signatures, each an HMAC-SHA256 of `"<t>.<raw body>"` keyed with the endpoint
//! secret (`WARREN_STRIPE_WEBHOOK_SECRET`); any matching `v1` is accepted, compared in constant time,
//! and `t` must lie within `billing.stripe_tolerance_secs` of now. A bad or stale signature is a 400
//! and nothing is applied. Each event id is recorded in `stripe_events` in the same transaction as its
//! effect, so a replayed event changes nothing.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::control::{StripeEffect, StripeEvent, Tier};
use crate::error::{Code, Error};
use crate::state::AppState;

pub use crate::billing::{bill, Bill, UsageRow, USAGE_CSV_HEADER};

/// Applies one Stripe webhook delivery: verifies the signature over the raw body, then applies the
/// event and records its id in one transaction (a replay changes nothing).
pub async fn stripe_event(state: &AppState, signature: Option<&str>, body: &[u8]) -> Result<Value, Error> {
    let Some(secret) = state.config.stripe_webhook_secret.clone() else {
        return Err(Error::not_found(Code::NotFound, "Stripe webhooks are not configured on this server"));
    };
    let header = signature.ok_or_else(|| bad_signature("missing Stripe-Signature"))?;
    let now = state.plans.clock.now();
    verify_signature(header, body, secret.expose(), now.timestamp(), state.config.billing.stripe_tolerance_secs)?;
    let event: Value = serde_json::from_slice(body).map_err(|e| Error::bad_request(Code::InvalidJson, format!("malformed event: {e}")))?;
    let id = event["id"].as_str().filter(|s| !s.is_empty()).ok_or_else(|| Error::validation("event id missing"))?.to_string();
    let kind = event["type"].as_str().unwrap_or("").to_string();
    let object = event["data"]["object"].clone();
    let effect = effect_of(&kind, &object, &state.plans.plans(), state.config.billing.suspend_on_payment_failure);
    let customer = object["customer"].as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let event = StripeEvent { id, kind, tenant_ref: metadata(&object, "tenant_id").map(str::to_string), customer, effect };
    let outcome = state.control.stripe_event(event, now).await?;
    state.auth.invalidate();
    Ok(outcome)
}

/// Writes a trial's expiry once (tier free + audit event) in the background.
pub(crate) fn expire_trial_in_background(state: &AppState, tenant_id: &str) {
    if !state.plans.claim_expiry(tenant_id) {
        return;
    }
    let (s, id) = (state.clone(), tenant_id.to_string());
    tokio::spawn(async move {
        let now = s.plans.clock.now();
        match s.control.expire_trial(&id, now).await {
            Ok(_) => s.auth.invalidate(),
            Err(e) => tracing::warn!(tenant = %id, error = %e, "recording trial expiry failed"),
        }
        s.plans.release_expiry(&id);
    });
}

/// Ends trials past `trial_ends_at` that no request has touched (tier free + audit event).
pub async fn sweep_trials(s: &AppState) {
    let now = s.plans.clock.now();
    let ids = match s.control.expired_trials(now).await {
        Ok(ids) => ids,
        Err(e) => return tracing::warn!(error = %e, "trial sweep failed"),
    };
    let mut changed = false;
    for id in ids {
        match s.control.expire_trial(&id, now).await {
            Ok(c) => changed |= c,
            Err(e) => tracing::warn!(error = %e, "ending a trial failed"),
        }
    }
    if changed {
        s.auth.invalidate();
    }
}

fn bad_signature(msg: &str) -> Error {
    Error::bad_request(Code::InvalidSignature, msg.to_string())
}

/// Verifies a `Stripe-Signature` header against `payload` at `now` (unix seconds).
pub fn verify_signature(header: &str, payload: &[u8], secret: &str, now: i64, tolerance_secs: u64) -> Result<(), Error> {
    let mut t: Option<i64> = None;
    let mut sigs: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else { continue };
        match k {
            "t" => t = v.parse().ok(),
            "v1" => {
                if let Ok(b) = hex::decode(v) {
                    sigs.push(b);
                }
            }
            _ => {}
        }
    }
    let t = t.ok_or_else(|| bad_signature("Stripe-Signature has no timestamp"))?;
    if sigs.is_empty() {
        return Err(bad_signature("Stripe-Signature has no v1 signature"));
    }
    if now.abs_diff(t) > tolerance_secs {
        return Err(bad_signature("the Stripe-Signature timestamp is outside the tolerance window"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| bad_signature("unusable secret"))?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    if sigs.iter().any(|s| mac.clone().verify_slice(s).is_ok()) {
        Ok(())
    } else {
        Err(bad_signature("no v1 signature matches"))
    }
}

/// The header Stripe would send for `payload` at `t` (tests, tooling).
pub fn sign(payload: &[u8], secret: &str, t: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn metadata<'a>(o: &'a Value, key: &str) -> Option<&'a str> {
    o["metadata"][key]
        .as_str()
        .or_else(|| o["subscription_details"]["metadata"][key].as_str())
        .or_else(|| o["parent"]["subscription_details"]["metadata"][key].as_str())
        .filter(|s| !s.is_empty())
}

/// The tier a subscription stands for: `metadata.tier`, else a configured price id, else a price's
/// `lookup_key` or `metadata.tier`.
fn tier_of(o: &Value, plans: &crate::plans::Plans) -> Option<Tier> {
    if let Some(t) = metadata(o, "tier").and_then(Tier::parse) {
        return Some(t);
    }
    let items = o["items"]["data"].as_array().cloned().unwrap_or_default();
    let prices = items.iter().map(|it| &it["price"]).chain(std::iter::once(&o["plan"]));
    for p in prices {
        if let Some(t) = p["id"].as_str().and_then(|id| plans.tier_for_price(id)) {
            return Some(t);
        }
        if let Some(t) = p["lookup_key"].as_str().and_then(Tier::parse).or_else(|| p["metadata"]["tier"].as_str().and_then(Tier::parse)) {
            return Some(t);
        }
    }
    None
}

/// What an event asks for, from the event and the plans alone.
fn effect_of(kind: &str, o: &Value, plans: &crate::plans::Plans, suspend: bool) -> StripeEffect {
    let status = o["status"].as_str().unwrap_or("").to_string();
    match kind {
        "customer.subscription.deleted" => StripeEffect::SetTier { tier: Tier::Free, subscription_status: String::new() },
        "invoice.payment_failed" => StripeEffect::PaymentFailed { suspend },
        "customer.subscription.created" | "customer.subscription.updated" => {
            let tier = if matches!(status.as_str(), "canceled" | "incomplete_expired") { Some(Tier::Free) } else { tier_of(o, plans) };
            match tier {
                Some(tier) => StripeEffect::SetTier { tier, subscription_status: status },
                None => StripeEffect::UnknownPrice { subscription_status: status },
            }
        }
        _ => StripeEffect::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_stripes_scheme() {
        let body = br#"{"id":"evt_1"}"#;
        let h = sign(body, "whsec_test", 1_700_000_000);
        assert!(verify_signature(&h, body, "whsec_test", 1_700_000_100, 300).is_ok());
        assert!(verify_signature(&h, body, "whsec_other", 1_700_000_100, 300).is_err(), "wrong secret");
        assert!(verify_signature(&h, b"{}", "whsec_test", 1_700_000_100, 300).is_err(), "tampered body");
        assert!(verify_signature(&h, body, "whsec_test", 1_700_000_301, 300).is_err(), "stale");
        let several = format!("{},v1={}", h.replace("v1=", "v1=00"), &h[h.find("v1=").unwrap() + 3..]);
        assert!(verify_signature(&several, body, "whsec_test", 1_700_000_000, 300).is_ok(), "any v1 may match: {several}");
        assert!(verify_signature("t=1700000000", body, "whsec_test", 1_700_000_000, 300).is_err());
        assert!(verify_signature("garbage", body, "whsec_test", 1_700_000_000, 300).is_err());
    }
}
