//! Recommendations over HTTP: commerce data (products, customers, orders, events, WooCommerce
//! adapters), training control and status, and the recommendation endpoints.
//!
//! Every route needs the `recommendations` feature (403 `feature_not_in_plan`). Batches cost one
//! rate-limit cell per item (`[costs] bulk_document`) and answer per item; recommendation calls are
//! metered as `recommendation` usage events. SQLite and scoring run on blocking threads; the model
//! is an `Arc` loaded once per request, so a training swapping in a new one never disturbs it.

use std::collections::HashSet;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiJson, ApiPath, ApiQuery};
use crate::auth::TenantCtx;
use crate::config::Config;
use crate::error::Error;
use crate::metering::Kind;
use crate::recs::store::{self, ItemResult};
use crate::recs::{self, input, Filter, Rec, Recs};
use crate::state::AppState;

const FEATURE: &str = "recommendations";

/// The recommendation API's part of the OpenAPI document (listed in [`super::openapi::MODULES`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(products, get_product, delete_product, related, similar, woo_products, woo_orders, customers, orders, events, recommend, status, train, trending, cart),
    components(schemas(store::ItemResult, store::Product, Rec, recs::Reason, BatchResponse, BatchAnswer, RecsResponse))
)]
pub struct RecsApi;

/// `{products: [...]}` (a list, or one product object on its own). Each product: `id` (string or
/// integer), `name`, optional `description`, `categories`, `tags`, `price`, `currency`, `in_stock`, `attributes`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the body; items stay raw JSON so each gets its own error
struct ProductsBody {
    #[schema(value_type = Vec<Object>, min_items = 1, max_items = 1000)]
    products: Vec<Value>,
}

/// `{customers: [...]}` (or one customer object): `id` and any other attributes (at most 16 KiB).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct CustomersBody {
    #[schema(value_type = Vec<Object>, min_items = 1, max_items = 1000)]
    customers: Vec<Value>,
}

/// `{orders: [...]}` (or one order object): `id`, `customer_id`, `created_at`, `lines` [{product_id, quantity, price}].
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct OrdersBody {
    #[schema(value_type = Vec<Object>, min_items = 1, max_items = 1000)]
    orders: Vec<Value>,
}

/// `{events: [...]}` (or one event object): `customer_id` or `session_id`, `product_id`, `type` (view, cart, ...), `at`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct EventsBody {
    #[schema(value_type = Vec<Object>, min_items = 1, max_items = 1000)]
    events: Vec<Value>,
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

pub fn routes(config: &Config) -> Router<AppState> {
    let body = DefaultBodyLimit::max(config.recs.max_body_bytes);
    Router::new()
        .route("/products", post(products).layer(body))
        .route("/products/{id}", get(get_product).delete(delete_product))
        .route("/products/{id}/related", get(related))
        .route("/products/{id}/similar", get(similar))
        .route("/integrations/woocommerce/products", post(woo_products).layer(body))
        .route("/integrations/woocommerce/orders", post(woo_orders).layer(body))
        .route("/customers", post(customers).layer(body))
        .route("/orders", post(orders).layer(body))
        .route("/events", post(events).layer(body))
        .route("/recommendations", get(recommend))
        .route("/recommendations/status", get(status))
        .route("/recommendations/train", post(train))
        .route("/recommendations/trending", get(trending))
        .route("/recommendations/cart", post(cart))
}

/// Items of a batch body, charged one rate-limit cell each beyond the first; `single` when the body
/// was one object (answered as one result rather than a list).
fn batch(ctx: &TenantCtx, state: &AppState, body: Value, key: &str) -> Result<(Vec<Value>, bool), Error> {
    ctx.require_feature(FEATURE)?;
    let single = body.is_object() && !body.as_object().is_some_and(|o| o.contains_key(key));
    let items = input::items_of(body, key).map_err(Error::validation)?;
    let max = state.config.recs.max_batch;
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
fn answer(mut results: Vec<ItemResult>, single: bool) -> Result<Response, Error> {
    results.sort_by_key(|r| r.index);
    if single {
        let r = results.pop().expect("one item");
        if let Some(e) = r.error {
            return Err(Error::validation(e["message"].as_str().unwrap_or("invalid item").to_string()));
        }
        let status = if r.status == "created" { StatusCode::CREATED } else { StatusCode::OK };
        return Ok((status, Json(serde_json::to_value(r).map_err(Error::internal)?)).into_response());
    }
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    let mut unknown: Vec<String> = results.iter().flat_map(|r| r.unknown_products.iter().flatten().cloned()).collect();
    unknown.sort();
    unknown.dedup();
    Ok(Json(BatchResponse { succeeded: results.len() - failed, failed, unknown_products: unknown, results }).into_response())
}

async fn changed(ctx: &TenantCtx, state: &AppState, lease: &crate::tenant::Lease) -> Result<(), Error> {
    Recs::of(state, lease).await?.changed(state, &ctx.tenant().id);
    Ok(())
}

async fn upsert_products(ctx: TenantCtx, state: AppState, items: Vec<Value>, single: bool) -> Result<Response, Error> {
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
                                "plan_limit_reached",
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
        changed(&ctx, &state, &lease).await?;
    }
    answer(results, single)
}

/// Adds or updates products (up to `recs.max_batch`; one bad item does not sink the batch).
#[utoipa::path(post, path = "/api/v1/products", tag = "commerce", request_body = ProductsBody,
    responses((status = 201, description = "One object created", body = ItemResult), (status = 200, description = "Per-item results (list body), or one object updated", body = BatchAnswer)))]
async fn products(ctx: TenantCtx, State(state): State<AppState>, ApiJson(body): ApiJson<Value>) -> Result<Response, Error> {
    let (items, single) = batch(&ctx, &state, body, "products")?;
    upsert_products(ctx, state, items, single).await
}

/// Adds or updates products from WooCommerce REST API product payloads.
#[utoipa::path(post, path = "/api/v1/integrations/woocommerce/products", tag = "commerce", request_body = ProductsBody,
    responses((status = 201, description = "One object created", body = ItemResult), (status = 200, description = "Per-item results (list body), or one object updated", body = BatchAnswer)))]
async fn woo_products(ctx: TenantCtx, State(state): State<AppState>, ApiJson(body): ApiJson<Value>) -> Result<Response, Error> {
    let (items, single) = batch(&ctx, &state, body, "products")?;
    // Map each payload; one that cannot be mapped is kept as is and fails validation as an item.
    let items = items.into_iter().map(|v| input::woo_product(&v).unwrap_or(v)).collect();
    upsert_products(ctx, state, items, single).await
}

/// One product.
#[utoipa::path(get, path = "/api/v1/products/{id}", tag = "commerce", params(("id" = String, Path, description = "Product id")),
    responses((status = 200, description = "The product", body = store::Product)))]
async fn get_product(ctx: TenantCtx, ApiPath(id): ApiPath<String>) -> Result<Json<store::Product>, Error> {
    ctx.require_feature(FEATURE)?;
    let lease = ctx.storage().await?;
    lease
        .blocking(move |h| h.with_reader(|c| store::get_product(c, &id)))
        .await?
        .map(Json)
        .ok_or_else(|| Error::not_found("product_not_found", "no such product"))
}

/// Deletes a product (its orders and events stay, and are skipped in training).
#[utoipa::path(delete, path = "/api/v1/products/{id}", tag = "commerce", params(("id" = String, Path, description = "Product id")),
    responses((status = 204, description = "Deleted")))]
async fn delete_product(ctx: TenantCtx, State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<StatusCode, Error> {
    ctx.require_feature(FEATURE)?;
    let lease = ctx.storage().await?;
    if !lease.blocking(move |h| h.with_writer(|c| store::delete_product(c, &id))).await? {
        return Err(Error::not_found("product_not_found", "no such product"));
    }
    changed(&ctx, &state, &lease).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds or updates customers.
#[utoipa::path(post, path = "/api/v1/customers", tag = "commerce", request_body = CustomersBody,
    responses((status = 201, description = "One object created", body = ItemResult), (status = 200, description = "Per-item results (list body), or one object updated", body = BatchAnswer)))]
async fn customers(ctx: TenantCtx, State(state): State<AppState>, ApiJson(body): ApiJson<Value>) -> Result<Response, Error> {
    let (items, single) = batch(&ctx, &state, body, "customers")?;
    let (ok, mut results) = validate(items, input::customer);
    if !ok.is_empty() {
        let rows = ok.into_iter().map(|(i, (id, data))| (i, id, data)).collect();
        let lease = ctx.storage().await?;
        results.extend(lease.blocking(move |h| h.with_writer(|c| store::upsert_customers(c, rows))).await?);
    }
    answer(results, single)
}

async fn insert_orders(ctx: TenantCtx, state: AppState, items: Vec<Value>, single: bool) -> Result<Response, Error> {
    let (ok, mut results) = validate(items, input::order);
    if !ok.is_empty() {
        let lease = ctx.storage().await?;
        let written = lease.blocking(move |h| h.with_writer(|c| store::insert_orders(c, ok))).await?;
        let any_new = written.iter().any(|r| r.status == "created");
        results.extend(written);
        if any_new {
            changed(&ctx, &state, &lease).await?;
        }
    }
    answer(results, single)
}

/// Adds orders (an order id seen before is a `duplicate`).
#[utoipa::path(post, path = "/api/v1/orders", tag = "commerce", request_body = OrdersBody,
    responses((status = 201, description = "One object created", body = ItemResult), (status = 200, description = "Per-item results (list body), or one object updated", body = BatchAnswer)))]
async fn orders(ctx: TenantCtx, State(state): State<AppState>, ApiJson(body): ApiJson<Value>) -> Result<Response, Error> {
    let (items, single) = batch(&ctx, &state, body, "orders")?;
    insert_orders(ctx, state, items, single).await
}

/// Adds orders from WooCommerce REST API order payloads.
#[utoipa::path(post, path = "/api/v1/integrations/woocommerce/orders", tag = "commerce", request_body = OrdersBody,
    responses((status = 201, description = "One object created", body = ItemResult), (status = 200, description = "Per-item results (list body), or one object updated", body = BatchAnswer)))]
async fn woo_orders(ctx: TenantCtx, State(state): State<AppState>, ApiJson(body): ApiJson<Value>) -> Result<Response, Error> {
    let (items, single) = batch(&ctx, &state, body, "orders")?;
    let items = items.into_iter().map(|v| input::woo_order(&v).unwrap_or(v)).collect();
    insert_orders(ctx, state, items, single).await
}

/// Adds behaviour events (views, carts, purchases, ...).
#[utoipa::path(post, path = "/api/v1/events", tag = "commerce", request_body = EventsBody,
    responses((status = 201, description = "One object created", body = ItemResult), (status = 200, description = "Per-item results (list body), or one object updated", body = BatchAnswer)))]
async fn events(ctx: TenantCtx, State(state): State<AppState>, ApiJson(body): ApiJson<Value>) -> Result<Response, Error> {
    let (items, single) = batch(&ctx, &state, body, "events")?;
    let (ok, mut results) = validate(items, input::event);
    if !ok.is_empty() {
        let lease = ctx.storage().await?;
        results.extend(lease.blocking(move |h| h.with_writer(|c| store::insert_events(c, ok))).await?);
        changed(&ctx, &state, &lease).await?;
    }
    answer(results, single)
}

/// The model (version, training time, method, evaluation), whether a training is due or running, and data counts.
#[utoipa::path(get, path = "/api/v1/recommendations/status", tag = "recommendations",
    responses((status = 200, description = "{model_version, trained_at, training, pending_changes, method, evaluation, data, unknown_products, ...}", body = Object)))]
async fn status(ctx: TenantCtx, State(state): State<AppState>) -> Result<Json<Value>, Error> {
    ctx.require_feature(FEATURE)?;
    let lease = ctx.storage().await?;
    let recs = Recs::of(&state, &lease).await?;
    let (counts, unknown) = lease.blocking(|h| h.with_reader(|c| Ok((store::counts(c)?, store::unknown_products(c, 20)?)))).await?;
    let mut v = recs.status();
    v["data"] = counts;
    v["unknown_products"] = json!(unknown);
    Ok(Json(v))
}

/// Starts a training now (no debounce); poll the status until `training` is false.
#[utoipa::path(post, path = "/api/v1/recommendations/train", tag = "recommendations",
    responses((status = 202, description = "Training scheduled: the status, with training true", body = Object)))]
async fn train(ctx: TenantCtx, State(state): State<AppState>) -> Result<Response, Error> {
    ctx.require_feature(FEATURE)?;
    let lease = ctx.storage().await?;
    let recs = Recs::of(&state, &lease).await?;
    recs.train_now(&state, &ctx.tenant().id);
    let mut v = recs.status();
    v["training"] = json!(true);
    Ok((StatusCode::ACCEPTED, Json(v)).into_response())
}

fn default_true() -> bool {
    true
}

/// Query of the recommendation calls (each uses the parameters that apply to it).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RecQuery {
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
    pub(crate) fn new(customer_id: Option<String>, limit: Option<usize>) -> RecQuery {
        RecQuery { customer_id, limit, exclude_purchased: true, in_stock_only: true, category: None, window: None }
    }
}

impl RecQuery {
    fn limit(&self, state: &AppState) -> Result<usize, Error> {
        let max = state.config.recs.max_limit;
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
async fn serve<F>(ctx: &TenantCtx, state: &AppState, f: F) -> Result<RecsResponse, Error>
where
    F: FnOnce(&rusqlite::Connection, Option<&recs::model::Model>) -> Result<Vec<Rec>, Error> + Send + 'static,
{
    ctx.require_feature(FEATURE)?;
    let lease = ctx.storage().await?;
    let model = Recs::of(state, &lease).await?.model();
    let results = lease.blocking(move |h| h.with_reader(|c| f(c, model.as_deref()))).await?;
    state.meter.record(&ctx.tenant().id, Kind::Recommendation, 0);
    Ok(RecsResponse { results })
}

/// Recommendations for a customer, or popular products without one (REST `GET /recommendations`, MCP `recommend`).
pub(crate) async fn recommend_for(ctx: &TenantCtx, state: &AppState, q: RecQuery) -> Result<RecsResponse, Error> {
    let limit = q.limit(state)?;
    let params = state.config.recs.params();
    let customer = q.customer_id.clone().filter(|c| !c.is_empty());
    let (excl, f) = (q.exclude_purchased, q.filter());
    serve(ctx, state, move |c, m| recs::recommend(c, m, customer.as_deref(), excl, f, limit, &params)).await
}

/// Products bought together with (or like) one product (REST `GET /products/{id}/related`, MCP `recommend`).
pub(crate) async fn related_to(ctx: &TenantCtx, state: &AppState, id: String, q: RecQuery) -> Result<RecsResponse, Error> {
    let (limit, f) = (q.limit(state)?, q.filter());
    serve(ctx, state, move |c, m| recs::related(c, m, &id, f, limit)).await
}

/// Personalised recommendations for `customer_id`, or popular products without one.
#[utoipa::path(get, path = "/api/v1/recommendations", tag = "recommendations", params(RecQuery),
    responses((status = 200, description = "Best first", body = RecsResponse)))]
async fn recommend(ctx: TenantCtx, State(state): State<AppState>, ApiQuery(q): ApiQuery<RecQuery>) -> Result<Json<RecsResponse>, Error> {
    Ok(Json(recommend_for(&ctx, &state, q).await?))
}

/// Products often bought with this one (falling back to similar products).
#[utoipa::path(get, path = "/api/v1/products/{id}/related", tag = "recommendations", params(("id" = String, Path, description = "Product id"), RecQuery),
    responses((status = 200, description = "Best first", body = RecsResponse)))]
async fn related(ctx: TenantCtx, State(state): State<AppState>, ApiPath(id): ApiPath<String>, ApiQuery(q): ApiQuery<RecQuery>) -> Result<Json<RecsResponse>, Error> {
    Ok(Json(related_to(&ctx, &state, id, q).await?))
}

/// Products similar in content (name, description, categories) to this one.
#[utoipa::path(get, path = "/api/v1/products/{id}/similar", tag = "recommendations", params(("id" = String, Path, description = "Product id"), RecQuery),
    responses((status = 200, description = "Best first", body = RecsResponse)))]
async fn similar(ctx: TenantCtx, State(state): State<AppState>, ApiPath(id): ApiPath<String>, ApiQuery(q): ApiQuery<RecQuery>) -> Result<Json<RecsResponse>, Error> {
    let (limit, f) = (q.limit(&state)?, q.filter());
    Ok(Json(serve(&ctx, &state, move |c, m| recs::similar(c, m, &id, f, limit)).await?))
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
#[utoipa::path(get, path = "/api/v1/recommendations/trending", tag = "recommendations", params(RecQuery),
    responses((status = 200, description = "Best first", body = RecsResponse)))]
async fn trending(ctx: TenantCtx, State(state): State<AppState>, ApiQuery(q): ApiQuery<RecQuery>) -> Result<Json<RecsResponse>, Error> {
    let (limit, f) = (q.limit(&state)?, q.filter());
    let since = chrono::Utc::now().timestamp() - window_secs(q.window.as_deref())?;
    Ok(Json(serve(&ctx, &state, move |c, m| recs::trending(c, m, since, f, limit)).await?))
}

/// `POST /recommendations/cart` body.
#[derive(Deserialize, utoipa::ToSchema)]
struct CartRequest {
    /// The products in the cart (strings or integers).
    #[schema(value_type = Vec<String>, min_items = 1, max_items = 100)]
    product_ids: Vec<Value>,
    #[schema(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    #[serde(default = "default_true")]
    in_stock_only: bool,
    category: Option<String>,
}

/// Products that go with a cart's contents.
#[utoipa::path(post, path = "/api/v1/recommendations/cart", tag = "recommendations", request_body = CartRequest,
    responses((status = 200, description = "Best first", body = RecsResponse)))]
async fn cart(ctx: TenantCtx, State(state): State<AppState>, ApiJson(req): ApiJson<CartRequest>) -> Result<Json<RecsResponse>, Error> {
    if req.product_ids.is_empty() || req.product_ids.len() > 100 {
        return Err(Error::validation("product_ids must hold 1 to 100 ids"));
    }
    let ids = req.product_ids.iter().map(|v| input::id_of(Some(v), "product_ids[]")).collect::<Result<Vec<_>, _>>().map_err(Error::validation)?;
    let q = RecQuery { customer_id: None, limit: req.limit, exclude_purchased: false, in_stock_only: req.in_stock_only, category: req.category, window: None };
    let (limit, f) = (q.limit(&state)?, q.filter());
    Ok(Json(serve(&ctx, &state, move |c, m| recs::cart(c, m, &ids, f, limit)).await?))
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
