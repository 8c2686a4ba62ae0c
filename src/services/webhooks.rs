//! WooCommerce webhooks: a store pushes its products, orders and customers as they change.
//!
//! `POST /webhooks/woocommerce` on the tenant's host (or `/webhooks/woocommerce/{tenant}` on the apex)
//! takes WooCommerce's deliveries as WooCommerce sends them:
//! - the ping sent when a webhook is saved (form-encoded `webhook_id=N`, unsigned) answers 200 and
//!   applies nothing;
//! - every other delivery must carry `X-WC-Webhook-Signature`, base64 of the HMAC-SHA256 of the raw
//!   body keyed with the tenant's webhook secret (set with
//!   `PUT /admin/v1/tenants/{slug}/integrations/woocommerce`); otherwise 401
//!   `webhook_signature_invalid` and nothing changes;
//! - `product.*`, `order.*` and `customer.*` topics apply through the same services as the REST
//!   calls (scope, cost, plan feature and limits included); other topics are acknowledged and ignored;
//! - a delivery id seen before (`X-WC-Webhook-Delivery-ID`, or the hash of topic and body when a proxy
//!   dropped it) answers `duplicate` and changes nothing.

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::audit::Operator;
use super::context::TenantCtx;
use super::ops::Op;
use super::recs::{self, Answer};
use crate::auth::RequestIdentity;
use crate::control::Change;
use crate::error::{Code, Error};
use crate::recs::input;
use crate::recs::store;
use crate::state::AppState;

/// The integration's name in the control plane.
pub const WOOCOMMERCE: &str = "woocommerce";

/// What a WooCommerce delivery carries besides its body.
#[derive(Debug, Default, Clone, Copy)]
pub struct WooDelivery<'a> {
    /// `X-WC-Webhook-Topic`, like `order.updated`.
    pub topic: Option<&'a str>,
    /// `X-WC-Webhook-Signature`.
    pub signature: Option<&'a str>,
    /// `X-WC-Webhook-Delivery-ID`.
    pub delivery_id: Option<&'a str>,
    /// Whether the body is form-encoded (the ping).
    pub form: bool,
}

/// What a delivery did.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct WebhookAnswer {
    /// `pong` (the ping), `applied`, `duplicate` (delivered before) or `ignored` (a topic warren does not use).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The item's outcome (`created`, `updated`, `duplicate`, `deleted`, `absent`), when one was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl WebhookAnswer {
    fn bare(status: &'static str, topic: Option<&str>) -> WebhookAnswer {
        WebhookAnswer { status, topic: topic.map(str::to_string), result: None, id: None }
    }
}

#[derive(Deserialize)]
struct WooSettings {
    webhook_secret: String,
}

/// The tenant a delivery is for: named by the host, by the path, or both (then they must agree).
async fn tenant_of(state: &AppState, id: &RequestIdentity<'_>, slug: Option<&str>) -> Result<std::sync::Arc<crate::control::Tenant>, Error> {
    let by_host = state.auth.tenant_of_host(id, &state.config).await?;
    let by_path = match slug {
        Some(s) => Some(state.auth.tenant_by_slug(s).await?.ok_or_else(|| Error::not_found(Code::TenantNotFound, "no such tenant"))?),
        None => None,
    };
    match (by_host, by_path) {
        (Some(h), Some(p)) if h.id != p.id => Err(Error::forbidden(Code::TenantMismatch, "the host and the path name different tenants")),
        (Some(t), _) | (None, Some(t)) => Ok(t),
        (None, None) => Err(Error::not_found(
            Code::TenantNotFound,
            "name the tenant by its host (<slug>.<base_domain>, its custom domain) or the path /webhooks/woocommerce/<slug>",
        )),
    }
}

/// Receives one WooCommerce delivery (see the module docs).
pub async fn woocommerce(
    state: &AppState,
    id: RequestIdentity<'_>,
    slug: Option<&str>,
    d: WooDelivery<'_>,
    body: &[u8],
) -> Result<WebhookAnswer, Error> {
    let tenant = tenant_of(state, &id, slug).await?;
    crate::auth::ensure_active(&tenant)?;
    if d.topic.is_none() && d.form && body.starts_with(b"webhook_id=") {
        return Ok(WebhookAnswer::bare("pong", None));
    }
    let settings = state.control.integration(&tenant.id, WOOCOMMERCE).await?;
    let secret = settings.and_then(|s| serde_json::from_str::<WooSettings>(&s).ok()).map(|s| s.webhook_secret).ok_or_else(|| {
        Error::unauthenticated(
            Code::WebhookSignatureInvalid,
            format!("no WooCommerce webhook secret is set for this tenant: PUT /admin/v1/tenants/{}/integrations/woocommerce", tenant.slug),
        )
    })?;
    let proof = crate::auth::verify_woocommerce(&secret, body, d.signature)?;
    let topic = d.topic.ok_or_else(|| Error::validation("X-WC-Webhook-Topic is missing"))?;
    let ctx = TenantCtx::for_webhook(state, tenant, &proof, WOOCOMMERCE);
    let Some((resource, event)) = topic.split_once('.') else {
        return Err(Error::validation(format!("X-WC-Webhook-Topic {topic:?} is not resource.event")));
    };
    let op = match (resource, event) {
        ("product", "deleted") => Op::ProductDelete,
        ("product", _) => Op::ProductsUpsert,
        ("order", _) => Op::OrdersInsert,
        ("customer", _) => Op::CustomersUpsert,
        _ => return Ok(WebhookAnswer::bare("ignored", Some(topic))),
    };
    let payload: Value = serde_json::from_slice(body).map_err(|e| Error::bad_request(Code::InvalidJson, format!("the delivery is not JSON: {e}")))?;
    let key = match d.delivery_id.map(str::trim).filter(|s| !s.is_empty()) {
        Some(k) => k.chars().take(200).collect::<String>(),
        None => format!("sha256:{:x}", Sha256::new().chain_update(topic.as_bytes()).chain_update(b"\n").chain_update(body).finalize()),
    };
    ctx.begin(op)?;
    let lease = ctx.storage().await?;
    let k = key.clone();
    if lease.blocking(move |h| h.with_reader(|c| store::delivery_seen(c, &k))).await? {
        return Ok(WebhookAnswer::bare("duplicate", Some(topic)));
    }
    let item_id = || input::id_of(payload.get("id"), "id").map_err(Error::validation);
    let (result, item) = match (resource, event) {
        ("product", "deleted") => {
            let pid = item_id()?;
            match recs::delete_product(&ctx, pid.clone()).await {
                Ok(()) => ("deleted".to_string(), pid),
                Err(e) if e.code() == Code::ProductNotFound => ("absent".to_string(), pid),
                Err(e) => return Err(e),
            }
        }
        ("order", "deleted") => {
            let oid = item_id()?;
            let done = recs::retract_order(&ctx, oid.clone()).await?;
            (if done { "deleted" } else { "absent" }.to_string(), oid)
        }
        ("customer", "deleted") => {
            let cid = item_id()?;
            let done = recs::delete_customer(&ctx, cid.clone()).await?;
            (if done { "deleted" } else { "absent" }.to_string(), cid)
        }
        ("product", _) => one(recs::woo_products(&ctx, payload).await?),
        ("order", _) => one(recs::woo_orders(&ctx, payload).await?),
        _ => one(recs::customers(&ctx, input::woo_customer(&payload).map_err(Error::validation)?).await?),
    };
    let now = state.plans.clock.now().timestamp();
    let prune = now - i64::from(state.config.recs.webhook_dedup_days) * 86400;
    let t = topic.to_string();
    lease.blocking(move |h| h.with_writer(|c| store::record_delivery(c, &key, &t, now, prune))).await?;
    Ok(WebhookAnswer { status: "applied", topic: Some(topic.to_string()), result: Some(result), id: Some(item) })
}

fn one(a: Answer) -> (String, String) {
    match a {
        Answer::One { result, .. } => (result.status.to_string(), result.id.unwrap_or_default()),
        Answer::Many(b) => (if b.failed == 0 { "applied" } else { "partial" }.to_string(), String::new()),
    }
}

/// `PUT /admin/v1/tenants/{slug}/integrations/woocommerce` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WooSettingsRequest {
    /// The secret entered in WooCommerce's webhook settings (1 to 512 characters).
    pub webhook_secret: String,
}

/// What setting the integration answers (the secret itself is never echoed).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct WooSettingsAnswer {
    pub integration: &'static str,
    pub webhook_secret_set: bool,
    /// The delivery URL to enter in WooCommerce (`public_url` + `/webhooks/woocommerce/<slug>`).
    pub delivery_url: String,
    /// The topics warren applies.
    pub topics: Vec<&'static str>,
}

/// The WooCommerce topics warren applies.
pub const WOO_TOPICS: [&str; 12] = [
    "product.created",
    "product.updated",
    "product.deleted",
    "product.restored",
    "order.created",
    "order.updated",
    "order.deleted",
    "order.restored",
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "customer.restored",
];

impl Operator {
    /// Sets a tenant's WooCommerce webhook secret (audited; the secret is not in the audit detail).
    pub async fn set_woocommerce(&self, slug: &str, req: WooSettingsRequest) -> Result<WooSettingsAnswer, Error> {
        let n = req.webhook_secret.chars().count();
        if n == 0 || n > 512 || req.webhook_secret.trim() != req.webhook_secret {
            return Err(Error::validation("webhook_secret must be 1 to 512 characters, without leading or trailing spaces"));
        }
        let t = self.tenant(slug).await?;
        let config = json!({"webhook_secret": req.webhook_secret}).to_string();
        self.apply(
            Some(&t.id),
            "integration.set",
            json!({"integration": WOOCOMMERCE}),
            Change::SetIntegration { tenant_id: t.id.clone(), kind: WOOCOMMERCE, config },
        )
        .await?;
        Ok(WooSettingsAnswer {
            integration: WOOCOMMERCE,
            webhook_secret_set: true,
            delivery_url: format!("{}/webhooks/woocommerce/{}", self.public_url(), t.slug),
            topics: WOO_TOPICS.to_vec(),
        })
    }

    /// Whether a tenant has a WooCommerce webhook secret.
    pub async fn woocommerce_configured(&self, tenant_id: &str) -> Result<bool, Error> {
        Ok(self.control.integration(tenant_id, WOOCOMMERCE).await?.is_some())
    }
}
