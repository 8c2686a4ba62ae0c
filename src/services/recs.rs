//! Recommendations: commerce data (products, customers, orders, events, WooCommerce adapters),
//! training control and status, and the recommendation calls.
//!
//! Every call needs the `recommendations` feature (403 `feature_not_in_plan`). Batches cost one
//! rate-limit cell per item beyond the first (`[costs] bulk_document`) and answer per item;
//! recommendation calls are metered as `recommendation` usage events. SQLite and scoring run on
//! blocking threads; the model is an `Arc` loaded once per call, so a training swapping in a new
//! one never disturbs a call in flight.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::context::TenantCtx;
use super::ops::Op;
use crate::error::{Code, Error};
use crate::metering::Kind;
use crate::recs::store::{self, ItemResult};
use crate::recs::{self, input, Filter, Rec, Recs, Trainer};

pub(crate) const FEATURE: &str = "recommendations";

/// What a batch write answers: one result for a one-object body (`created` tells 201 from 200),
/// the list form otherwise.
pub enum Answer {
    One { result: ItemResult, created: bool },
    Many(BatchResponse),
}

/// Answer of a batch write: per-item results in request order.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct BatchResponse {
    pub results: Vec<ItemResult>,
    pub succeeded: usize,
    pub failed: usize,
    /// Product ids referenced by orders or events that are not in the catalog (yet).
    pub unknown_products: Vec<String>,
}

/// A batch write answers one result for a one-object body, the list form otherwise.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // documents the 200 answer
pub enum BatchAnswer {
    One(ItemResult),
    Many(BatchResponse),
}

/// Answer of every recommendation call.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RecsResponse {
    pub results: Vec<Rec>,
}

/// Items of a batch body, charged one rate-limit cell each beyond the first; `single` when the body
/// was one object (answered as one result rather than a list).
fn batch(ctx: &TenantCtx, op: Op, body: Value, key: &str) -> Result<(Vec<Value>, bool), Error> {
    ctx.authorize(op)?;
    ctx.require_feature(FEATURE)?;
    let single = body.is_object() && !body.as_object().is_some_and(|o| o.contains_key(key));
    let items = input::items_of(body, key).map_err(Error::validation)?;
    let max = ctx.state().config.recs.max_batch;
    if items.is_empty() || items.len() > max {
        return Err(Error::validation(format!("{key} must hold 1 to {max} items")));
    }
    ctx.charge(ctx.entitlements().costs().bulk_document.saturating_mul(items.len() as u32 - 1))?;
    Ok((items, single))
}

/// Validates every item; the valid ones go on with their index, the others become error results.
fn validate<T>(items: Vec<Value>, parse: impl Fn(&Value) -> Result<T, String>) -> (Vec<(usize, T)>, Vec<ItemResult>) {
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for (i, v) in items.iter().enumerate() {
        match parse(v) {
            Ok(t) => ok.push((i, t)),
            Err(m) => bad.push(ItemResult::err(i, v.get("id").and_then(|x| input::id_of(Some(x), "id").ok()), m)),
        }
    }
    (ok, bad)
}

/// `{results, succeeded, failed}` in request order, or for a one-object body its one result.
fn answer(mut results: Vec<ItemResult>, single: bool) -> Result<Answer, Error> {
    results.sort_by_key(|r| r.index);
    if single {
        let r = results.pop().expect("one item");
        if let Some(e) = r.error {
            return Err(Error::validation(e["message"].as_str().unwrap_or("invalid item").to_string()));
        }
        let created = r.status == "created";
        return Ok(Answer::One { result: r, created });
    }
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    let mut unknown: Vec<String> = results.iter().flat_map(|r| r.unknown_products.iter().flatten().cloned()).collect();
    unknown.sort();
    unknown.dedup();
    Ok(Answer::Many(BatchResponse { succeeded: results.len() - failed, failed, unknown_products: unknown, results }))
}

/// The training worker's view of this tenant.
fn trainer(ctx: &TenantCtx) -> Trainer {
    let s = ctx.state();
    Trainer { config: s.config.clone(), embed: s.embed.clone(), cap: ctx.cap().for_worker("recs-trainer"), meter: s.meter.clone() }
}

async fn changed(ctx: &TenantCtx, lease: &crate::tenant::Lease) -> Result<(), Error> {
    Recs::of(&trainer(ctx), lease).await?.changed(&trainer(ctx));
    Ok(())
}

async fn upsert_products(ctx: &TenantCtx, items: Vec<Value>, single: bool) -> Result<Answer, Error> {
    let (ok, mut results) = validate(items, input::product);
    if !ok.is_empty() {
        let ent = ctx.entitlements();
        let limit = ent.products_limit();
        let upgrade = ent.upgrade_url(crate::plans::TIERS.into_iter().find(|t| *t > ent.tier), "products");
        let lease = ctx.storage().await?;
        let written = lease
            .blocking(move |h| {
                h.with_writer(|c| {
                    if let Some(limit) = limit {
                        let ids: Vec<String> = ok.iter().map(|(_, p)| p.id.clone()).collect();
                        let (new, total) = store::new_product_count(c, &ids)?;
                        if new > 0 && total + new > limit {
                            let mut d = serde_json::Map::new();
                            d.insert("limit".into(), "products".into());
                            d.insert("limit_value".into(), limit.into());
                            d.insert("used".into(), total.into());
                            d.insert("upgrade_url".into(), upgrade.into());
                            return Err(Error::forbidden_with(
                                Code::PlanLimitReached,
                                format!("this write would pass the plan's products limit of {limit} ({total} stored, {new} new)"),
                                d,
                            ));
                        }
                    }
                    store::upsert_products(c, ok)
                })
            })
            .await?;
        results.extend(written);
        changed(ctx, &lease).await?;
    }
    answer(results, single)
}

/// Adds or updates products (up to `recs.max_batch`; one bad item does not sink the batch).
pub async fn products(ctx: &TenantCtx, body: Value) -> Result<Answer, Error> {
    let (items, single) = batch(ctx, Op::ProductsUpsert, body, "products")?;
    upsert_products(ctx, items, single).await
}

/// Adds or updates products from WooCommerce REST API product payloads.
pub async fn woo_products(ctx: &TenantCtx, body: Value) -> Result<Answer, Error> {
    let (items, single) = batch(ctx, Op::ProductsUpsert, body, "products")?;
    // Map each payload; one that cannot be mapped is kept as is and fails validation as an item.
    let items = items.into_iter().map(|v| input::woo_product(&v).unwrap_or(v)).collect();
    upsert_products(ctx, items, single).await
}

/// One product.
pub async fn get_product(ctx: &TenantCtx, id: String) -> Result<store::Product, Error> {
    ctx.authorize(Op::ProductGet)?;
    ctx.require_feature(FEATURE)?;
    let lease = ctx.storage().await?;
    lease
        .blocking(move |h| h.with_reader(|c| store::get_product(c, &id)))
        .await?
        .ok_or_else(|| Error::not_found(Code::ProductNotFound, "no such product"))
}

/// Deletes a product (its orders and events stay, and are skipped in training).
pub async fn delete_product(ctx: &TenantCtx, id: String) -> Result<(), Error> {
    ctx.authorize(Op::ProductDelete)?;
    ctx.require_feature(FEATURE)?;
    let lease = ctx.storage().await?;
    if !lease.blocking(move |h| h.with_writer(|c| store::delete_product(c, &id))).await? {
        return Err(Error::not_found(Code::ProductNotFound, "no such product"));
    }
    changed(ctx, &lease).await?;
    Ok(())
}

/// Deletes a customer (WooCommerce `customer.deleted`); their orders stay. Whether one was deleted.
pub async fn delete_customer(ctx: &TenantCtx, id: String) -> Result<bool, Error> {
    ctx.authorize(Op::CustomersUpsert)?;
    ctx.require_feature(FEATURE)?;
    let lease = ctx.storage().await?;
    lease.blocking(move |h| h.with_writer(|c| store::delete_customer(c, &id))).await
}

/// Answer of `DELETE /customers/{id}`: what was removed, and where copies can still be.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CustomerReceipt {
    pub customer_id: String,
    /// `erased` (`?erase=true`: everything that names the customer) or `deleted` (the profile only).
    pub mode: &'static str,
    /// Rows removed per table.
    pub removed: store::Erased,
    /// After an erasure: `true` when the WAL was checkpointed into the zeroed database and truncated
    /// now, `false` when a long read kept it from completing (the next checkpoint does), `null` when
    /// backups are on (the shipper checkpoints as soon as the erasure has shipped).
    pub wal_checkpointed: Option<bool>,
    /// A retraining without the customer's data is scheduled (`recs.debounce_ms`).
    pub retrain_scheduled: bool,
    /// With backups on: replica objects taken before now may hold the erased data until this time
    /// (the next snapshot, `backup.snapshot_interval_secs`, plus the restore window,
    /// `backup.retention_secs`); `null` without backups.
    pub backups_may_hold_until: Option<String>,
}

/// Deletes a customer's profile, or with `erase` erases the customer: the profile, their orders and
/// order lines, their events and the notes those left, in one transaction, with the freed bytes
/// zeroed (`secure_delete`) and the WAL checkpointed so no file of the tenant keeps a copy. Either
/// way the answer is a receipt; an erasure is audited (`customer.erased`, with the counts and
/// without the customer's id or data). Erasing a customer that has nothing left answers zeros.
pub async fn delete_customer_by_id(ctx: &TenantCtx, id: String, erase: bool) -> Result<CustomerReceipt, Error> {
    ctx.authorize(Op::CustomerDelete)?;
    ctx.require_feature(FEATURE)?;
    let id = input::id_of(Some(&Value::String(id)), "id").map_err(Error::validation)?;
    let lease = ctx.storage().await?;
    let cid = id.clone();
    let (removed, wal_checkpointed) = lease
        .blocking(move |h| {
            if !erase {
                let n = h.with_writer(|c| store::delete_customer(c, &cid))?;
                return Ok((store::Erased { customers: n as u64, ..Default::default() }, None));
            }
            let removed = h.with_writer(|c| store::erase_customer(c, &cid))?;
            Ok((removed, h.after_customer_erasure()?))
        })
        .await?;
    let retrain_scheduled = removed.changes_training();
    if retrain_scheduled {
        changed(ctx, &lease).await?;
    }
    let state = ctx.state();
    let now = state.plans.clock.now();
    let backups_may_hold_until = match (&state.backup, erase) {
        (Some(b), true) => {
            let s = b.settings();
            let grace = s.erasure_grace_secs.min(i64::MAX as u64 / 1000);
            // When the grace has passed, the replica is synced (reopened if need be), which deletes
            // every object older than the erasure's snapshot.
            let (b, id) = (b.clone(), ctx.id().to_string());
            let wait = std::time::Duration::from_secs(grace) + std::time::Duration::from_millis(s.sync_interval_ms);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                b.catch_up_tenant(&id);
            });
            let until = grace as i64 + (s.sync_interval_ms / 1000) as i64 + 1;
            Some((now + chrono::Duration::seconds(until)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        }
        _ => None,
    };
    if erase {
        let (tid, actor) = (ctx.id().to_string(), super::Actor::Tenant(ctx.id().to_string()).as_string());
        let detail = json!({"removed": removed, "backups_may_hold_until": backups_may_hold_until});
        state.control.audit(crate::control::AuditRecord { at: now, actor, tenant_id: Some(tid), action: "customer.erased", detail }).await?;
    }
    Ok(CustomerReceipt {
        customer_id: id,
        mode: if erase { "erased" } else { "deleted" },
        removed,
        wal_checkpointed,
        retrain_scheduled,
        backups_may_hold_until,
    })
}

impl super::Operator {
    /// `warren customer erase`: the same erasure as `DELETE /customers/{id}?erase=true`, with no server
    /// running on the data dir (refused otherwise, naming the API call). The tenant's model is then
    /// stale, and the server's next open of the tenant schedules its retraining.
    pub async fn erase_customer_offline(&self, _proof: &crate::auth::AdminProof, slug: &str, id: String) -> Result<CustomerReceipt, Error> {
        self.refuse_while_server_runs(|dir, url| {
            format!("a warren server is running on {dir}; erase through it with the tenant's key:\n  curl -X DELETE -H \"Authorization: Bearer $TENANT_KEY\" {url}/api/v1/customers/{id}?erase=true")
        })?;
        let t = self.tenant(slug).await?;
        let id = input::id_of(Some(&Value::String(id)), "id").map_err(Error::validation)?;
        let dir = crate::tenant::tenant_dir(&self.config.data_dir, &t.id);
        let cid = id.clone();
        let (removed, busy) = tokio::task::spawn_blocking(move || -> Result<(store::Erased, bool), Error> {
            let mut c = crate::tenant::open_offline_writer(&dir).map_err(Error::Internal)?;
            let removed = store::erase_customer(&mut c, &cid)?;
            let busy: i64 = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
            Ok((removed, busy != 0))
        })
        .await??;
        let now = self.clock.now();
        if self.config.backup_url.is_some() {
            // The next server start ships a fresh snapshot (the marker queues the tenant); objects older
            // than it are deleted at the first sync after `erasure_grace_secs`.
            let (data, tid) = (self.config.data_dir.clone(), t.id.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let db = crate::tenant::tenant_dir(&data, &tid).join(crate::tenant::DB_FILE);
                crate::backup::request_erasure_snapshot(&db)?;
                std::fs::create_dir_all(data.join(crate::backup::PENDING_DIR))?;
                std::fs::File::create(data.join(crate::backup::PENDING_DIR).join(&tid))?;
                Ok(())
            })
            .await?
            .map_err(Error::Internal)?;
        }
        let backups_may_hold_until = self.config.backup_url.as_ref().map(|_| {
            let b = &self.config.backup;
            let secs = b.erasure_grace_secs.min(i64::MAX as u64 / 1000) as i64;
            (now + chrono::Duration::seconds(secs)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        });
        let detail = json!({"removed": removed, "backups_may_hold_until": backups_may_hold_until});
        let (tid, actor) = (t.id.clone(), self.actor.as_string());
        self.control.audit(crate::control::AuditRecord { at: now, actor, tenant_id: Some(tid), action: "customer.erased", detail }).await?;
        Ok(CustomerReceipt {
            customer_id: id,
            mode: "erased",
            retrain_scheduled: removed.changes_training(),
            removed,
            wal_checkpointed: Some(!busy),
            backups_may_hold_until,
        })
    }
}

/// Retracts an order (WooCommerce `order.deleted`): it no longer counts as a purchase. Whether it changed.
pub async fn retract_order(ctx: &TenantCtx, id: String) -> Result<bool, Error> {
    ctx.authorize(Op::OrdersInsert)?;
    ctx.require_feature(FEATURE)?;
    let lease = ctx.storage().await?;
    let done = lease.blocking(move |h| h.with_writer(|c| store::retract_order(c, &id))).await?;
    if done {
        changed(ctx, &lease).await?;
    }
    Ok(done)
}

/// `PUT /integrations/woocommerce/totals` body: the store's own totals (each optional).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotalsRequest {
    pub products: Option<u64>,
    pub orders: Option<u64>,
    pub customers: Option<u64>,
}

/// Per kind: how many are stored and the store's total, for onboarding progress ("45/100 products").
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SyncProgress {
    #[schema(value_type = Object)]
    pub products: Value,
    #[schema(value_type = Object)]
    pub orders: Value,
    #[schema(value_type = Object)]
    pub customers: Value,
}

fn progress(v: Value) -> SyncProgress {
    SyncProgress { products: v["products"].clone(), orders: v["orders"].clone(), customers: v["customers"].clone() }
}

/// Records the store's totals (a sync-totals call) and answers the sync progress.
pub async fn set_totals(ctx: &TenantCtx, req: TotalsRequest) -> Result<SyncProgress, Error> {
    ctx.authorize(Op::SyncTotals)?;
    ctx.require_feature(FEATURE)?;
    let max = 100_000_000;
    if [req.products, req.orders, req.customers].iter().flatten().any(|n| *n > max) {
        return Err(Error::validation(format!("a total must be at most {max}")));
    }
    let totals = [("products", req.products), ("orders", req.orders), ("customers", req.customers)];
    let lease = ctx.storage().await?;
    let v = lease
        .blocking(move |h| {
            h.with_writer(|c| {
                store::set_totals(c, &totals)?;
                store::sync_progress(c)
            })
        })
        .await?;
    Ok(progress(v))
}

/// Adds or updates customers.
pub async fn customers(ctx: &TenantCtx, body: Value) -> Result<Answer, Error> {
    let (items, single) = batch(ctx, Op::CustomersUpsert, body, "customers")?;
    let (ok, mut results) = validate(items, input::customer);
    if !ok.is_empty() {
        let rows = ok.into_iter().map(|(i, (id, data))| (i, id, data)).collect();
        let lease = ctx.storage().await?;
        results.extend(lease.blocking(move |h| h.with_writer(|c| store::upsert_customers(c, rows))).await?);
    }
    answer(results, single)
}

async fn insert_orders(ctx: &TenantCtx, items: Vec<Value>, single: bool) -> Result<Answer, Error> {
    let (ok, mut results) = validate(items, input::order);
    if !ok.is_empty() {
        let lease = ctx.storage().await?;
        let written = lease.blocking(move |h| h.with_writer(|c| store::insert_orders(c, ok))).await?;
        let any_new = written.iter().any(|r| r.status == "created" || r.status == "updated");
        results.extend(written);
        if any_new {
            changed(ctx, &lease).await?;
        }
    }
    answer(results, single)
}

/// Adds orders (an order id seen before is a `duplicate` unless its `modified_at` is newer: then it is
/// `updated`, and a status other than processing or completed retracts the purchase).
pub async fn orders(ctx: &TenantCtx, body: Value) -> Result<Answer, Error> {
    let (items, single) = batch(ctx, Op::OrdersInsert, body, "orders")?;
    insert_orders(ctx, items, single).await
}

/// Adds orders from WooCommerce REST API order payloads.
pub async fn woo_orders(ctx: &TenantCtx, body: Value) -> Result<Answer, Error> {
    let (items, single) = batch(ctx, Op::OrdersInsert, body, "orders")?;
    let items = items.into_iter().map(|v| input::woo_order(&v).unwrap_or(v)).collect();
    insert_orders(ctx, items, single).await
}

/// Adds behaviour events (views, carts, purchases, ...).
pub async fn events(ctx: &TenantCtx, body: Value) -> Result<Answer, Error> {
    let (items, single) = batch(ctx, Op::EventsInsert, body, "events")?;
    let (ok, mut results) = validate(items, input::event);
    if !ok.is_empty() {
        let lease = ctx.storage().await?;
        results.extend(lease.blocking(move |h| h.with_writer(|c| store::insert_events(c, ok))).await?);
        changed(ctx, &lease).await?;
    }
    answer(results, single)
}

/// The model (version, training time, method, evaluation), whether a training is due or running, and data counts.
pub async fn status(ctx: &TenantCtx) -> Result<Value, Error> {
    ctx.authorize(Op::RecsStatus)?;
    ctx.require_feature(FEATURE)?;
    let lease = ctx.storage().await?;
    let recs = Recs::of(&trainer(ctx), &lease).await?;
    let (counts, unknown, sync) =
        lease.blocking(|h| h.with_reader(|c| Ok((store::counts(c)?, store::unknown_products(c, 20)?, store::sync_progress(c)?)))).await?;
    let mut v = recs.status();
    v["data"] = counts;
    v["sync"] = sync;
    v["unknown_products"] = json!(unknown);
    Ok(v)
}

/// What recommendations led to over the last `days` days.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Attribution {
    pub days: u32,
    /// The start of the period (UTC midnight, `days - 1` days ago).
    pub since: chrono::DateTime<chrono::Utc>,
    /// Recommendation requests served in the period (the `recommendation` usage events).
    pub recommendations_served: u64,
    /// Events of type `rec_click` in the period: a shopper clicked a recommended product.
    pub clicks: u64,
    /// Distinct customers among those clicks (clicks with only a `session_id` are not linked to orders).
    pub customers_clicked: u64,
    /// Clicks per recommendation request served (`null` when none was served).
    pub click_through_rate: Option<f64>,
    /// Purchases in the period with a line the same customer clicked as a recommendation at most
    /// `window_days` before.
    pub attributed_orders: u64,
    /// The sum of those lines' `quantity × price` (lines without a price count 0), in the store's currency.
    pub attributed_revenue: f64,
    /// `recs.attribution_window_days`.
    pub window_days: u32,
}

/// Recommendation clicks and the orders that followed them, over the last `days` days (1–365).
pub async fn attribution(ctx: &TenantCtx, days: u32) -> Result<Attribution, Error> {
    ctx.authorize(Op::RecsAttribution)?;
    ctx.require_feature(FEATURE)?;
    if !(1..=365).contains(&days) {
        return Err(Error::validation("days must be 1..=365"));
    }
    let state = ctx.state();
    let today = state.plans.clock.now().date_naive();
    let since = (today - chrono::Duration::days(i64::from(days) - 1)).and_hms_opt(0, 0, 0).map(|t| t.and_utc()).unwrap_or_default();
    let window_days = state.config.recs.attribution_window_days;
    let window = i64::from(window_days) * 86_400;
    let lease = ctx.storage().await?;
    let from = since.timestamp();
    let (clicks, customers_clicked, attributed_orders, attributed_revenue) =
        lease.blocking(move |h| h.with_reader(|c| store::attribution(c, from, window))).await?;
    state.meter.flush().await;
    let recommendations_served: u64 = state
        .control
        .usage_by_day(ctx.id(), since)
        .await?
        .into_iter()
        .filter(|(_, kind, _, _)| kind == crate::metering::Kind::Recommendation.as_str())
        .map(|(_, _, calls, _)| calls)
        .sum();
    Ok(Attribution {
        days,
        since,
        recommendations_served,
        clicks,
        customers_clicked,
        click_through_rate: (recommendations_served > 0).then(|| clicks as f64 / recommendations_served as f64),
        attributed_orders,
        attributed_revenue: (attributed_revenue * 100.0).round() / 100.0,
        window_days,
    })
}

/// Starts a training now (no debounce); poll the status until `training` is false.
pub async fn train(ctx: &TenantCtx) -> Result<Value, Error> {
    ctx.authorize(Op::RecsTrain)?;
    ctx.require_feature(FEATURE)?;
    let lease = ctx.storage().await?;
    let recs = Recs::of(&trainer(ctx), &lease).await?;
    recs.train_now(&trainer(ctx));
    let mut v = recs.status();
    v["training"] = json!(true);
    Ok(v)
}

fn default_true() -> bool {
    true
}

/// Query of the recommendation calls (each uses the parameters that apply to it).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecQuery {
    /// `GET /recommendations`: personalise for this customer (without: popular products).
    pub customer_id: Option<String>,
    /// How many results (1 to `recs.max_limit`, default 10).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
    /// `GET /recommendations`: leave out what the customer bought (default true).
    #[serde(default = "default_true")]
    #[param(default = true)]
    pub exclude_purchased: bool,
    /// Only products in stock (default true).
    #[serde(default = "default_true")]
    #[param(default = true)]
    pub in_stock_only: bool,
    /// Only products in this category (case-insensitive).
    pub category: Option<String>,
    /// `GET /recommendations/trending`: how far back, like 7d, 24h or 30m (at most 365d; default 7d).
    #[param(pattern = "^[0-9]+[dhm]$")]
    pub window: Option<String>,
}

impl RecQuery {
    /// Defaults for everything but the customer and the limit (MCP `recommend`).
    pub fn new(customer_id: Option<String>, limit: Option<usize>) -> RecQuery {
        RecQuery { customer_id, limit, exclude_purchased: true, in_stock_only: true, category: None, window: None }
    }
}

impl RecQuery {
    fn limit(&self, ctx: &TenantCtx) -> Result<usize, Error> {
        let max = ctx.state().config.recs.max_limit;
        match self.limit {
            None => Ok(10.min(max)),
            Some(l) if (1..=max).contains(&l) => Ok(l),
            Some(_) => Err(Error::validation(format!("limit must be 1 to {max}"))),
        }
    }
    fn filter(&self) -> Filter {
        Filter { in_stock_only: self.in_stock_only, category: self.category.clone().filter(|c| !c.is_empty()), exclude: HashSet::new() }
    }
}

/// Runs a scoring function on a reader connection with the current model; meters the call.
async fn serve<F>(ctx: &TenantCtx, f: F) -> Result<RecsResponse, Error>
where
    F: FnOnce(&rusqlite::Connection, Option<&recs::model::Model>) -> Result<Vec<Rec>, Error> + Send + 'static,
{
    ctx.authorize(Op::Recommend)?;
    ctx.require_feature(FEATURE)?;
    let lease = ctx.storage().await?;
    let model = Recs::of(&trainer(ctx), &lease).await?.model();
    let results = lease.blocking(move |h| h.with_reader(|c| f(c, model.as_deref()))).await?;
    ctx.meter(Kind::Recommendation, 1, 0);
    Ok(RecsResponse { results })
}

/// Recommendations for a customer, or popular products without one (REST `GET /recommendations`, MCP `recommend`).
pub async fn recommend_for(ctx: &TenantCtx, q: RecQuery) -> Result<RecsResponse, Error> {
    let limit = q.limit(ctx)?;
    let params = ctx.state().config.recs.params();
    let customer = q.customer_id.clone().filter(|c| !c.is_empty());
    let (excl, f) = (q.exclude_purchased, q.filter());
    serve(ctx, move |c, m| recs::recommend(c, m, customer.as_deref(), excl, f, limit, &params)).await
}

/// Products bought together with (or like) one product (REST `GET /products/{id}/related`, MCP `recommend`).
pub async fn related_to(ctx: &TenantCtx, id: String, q: RecQuery) -> Result<RecsResponse, Error> {
    let (limit, f) = (q.limit(ctx)?, q.filter());
    serve(ctx, move |c, m| recs::related(c, m, &id, f, limit)).await
}

/// Products similar in content (name, description, categories) to this one.
pub async fn similar(ctx: &TenantCtx, id: String, q: RecQuery) -> Result<RecsResponse, Error> {
    let (limit, f) = (q.limit(ctx)?, q.filter());
    serve(ctx, move |c, m| recs::similar(c, m, &id, f, limit)).await
}

/// `7d`, `24h`, `30m` (at most 365 days); default 7 days.
fn window_secs(w: Option<&str>) -> Result<i64, Error> {
    let Some(w) = w.filter(|w| !w.is_empty()) else { return Ok(7 * 86400) };
    let bad = || Error::validation("window must be like 7d, 24h or 30m (at most 365d)");
    // The unit is the last character (which need not be ASCII: never split inside it).
    let unit = w.chars().next_back().ok_or_else(bad)?;
    let n: i64 = w[..w.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let scale = match unit {
        'd' => 86400,
        'h' => 3600,
        'm' => 60,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).filter(|s| (1..=365 * 86400).contains(s)).ok_or_else(bad)
}

/// The most bought products over `window`.
pub async fn trending(ctx: &TenantCtx, q: RecQuery) -> Result<RecsResponse, Error> {
    let (limit, f) = (q.limit(ctx)?, q.filter());
    let since = ctx.state().plans.clock.now().timestamp() - window_secs(q.window.as_deref())?;
    serve(ctx, move |c, m| recs::trending(c, m, since, f, limit)).await
}

/// `POST /recommendations/cart` body.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct CartRequest {
    /// The products in the cart (strings or integers).
    #[schema(value_type = Vec<String>, min_items = 1, max_items = 100)]
    pub product_ids: Vec<Value>,
    #[schema(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
    #[serde(default = "default_true")]
    pub in_stock_only: bool,
    pub category: Option<String>,
}

/// Products that go with a cart's contents.
pub async fn cart(ctx: &TenantCtx, req: CartRequest) -> Result<RecsResponse, Error> {
    if req.product_ids.is_empty() || req.product_ids.len() > 100 {
        return Err(Error::validation("product_ids must hold 1 to 100 ids"));
    }
    let ids = req.product_ids.iter().map(|v| input::id_of(Some(v), "product_ids[]")).collect::<Result<Vec<_>, _>>().map_err(Error::validation)?;
    let q = RecQuery {
        customer_id: None,
        limit: req.limit,
        exclude_purchased: false,
        in_stock_only: req.in_stock_only,
        category: req.category,
        window: None,
    };
    let (limit, f) = (q.limit(ctx)?, q.filter());
    serve(ctx, move |c, m| recs::cart(c, m, &ids, f, limit)).await
}

#[cfg(test)]
mod tests {
    use super::window_secs;

    #[test]
    fn windows_parse_and_bad_ones_are_400_not_panics() {
        assert_eq!(window_secs(None).unwrap(), 7 * 86400);
        assert_eq!(window_secs(Some("24h")).unwrap(), 86400);
        assert_eq!(window_secs(Some("30m")).unwrap(), 1800);
        // A multi-byte last character used to split inside it; a huge count used to overflow.
        for bad in ["é", "7é", "0d", "-1d", "366d", "9223372036854775807d", "d", "7"] {
            assert!(window_secs(Some(bad)).is_err(), "{bad}");
        }
    }
}
