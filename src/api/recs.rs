//! Recommendations over HTTP: the REST door of [`crate::services::recs`] (commerce data,
//! training control and status, and the recommendation calls).

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::extract::Authorized;
use super::{ApiJson, ApiPath, ApiQuery};
use crate::config::Config;
use crate::error::Error;
use crate::recs::store::{self, ItemResult};
use crate::recs::{self as domain, Rec};
use crate::services::op;
use crate::services::recs::{self, Answer, BatchAnswer, BatchResponse, CartRequest, RecQuery, RecsResponse};
use crate::state::AppState;

/// The recommendation API's part of the OpenAPI document (listed in [`super::openapi::MODULES`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        products,
        get_product,
        delete_product,
        related,
        similar,
        woo_products,
        woo_orders,
        woo_totals,
        customers,
        delete_customer,
        orders,
        events,
        recommend,
        status,
        attribution,
        train,
        trending,
        cart
    ),
    components(schemas(
        recs::TotalsRequest,
        recs::SyncProgress,
        store::ItemResult,
        store::Product,
        Rec,
        domain::Reason,
        BatchResponse,
        BatchAnswer,
        RecsResponse,
        recs::CustomerReceipt,
        recs::Attribution,
        store::Erased
    ))
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

pub fn routes(config: &Config) -> Router<AppState> {
    let body = DefaultBodyLimit::max(config.recs.max_body_bytes);
    Router::new()
        .route("/products", post(products).layer(body))
        .route("/products/{id}", get(get_product).delete(delete_product))
        .route("/products/{id}/related", get(related))
        .route("/products/{id}/similar", get(similar))
        .route("/integrations/woocommerce/products", post(woo_products).layer(body))
        .route("/integrations/woocommerce/orders", post(woo_orders).layer(body))
        .route("/integrations/woocommerce/totals", axum::routing::put(woo_totals))
        .route("/customers", post(customers).layer(body))
        .route("/customers/{id}", axum::routing::delete(delete_customer))
        .route("/orders", post(orders).layer(body))
        .route("/events", post(events).layer(body))
        .route("/recommendations", get(recommend))
        .route("/recommendations/status", get(status))
        .route("/recommendations/attribution", get(attribution))
        .route("/recommendations/train", post(train))
        .route("/recommendations/trending", get(trending))
        .route("/recommendations/cart", post(cart))
}

/// 201 for one created object, 200 for one updated object or a list.
fn answer(a: Answer) -> Response {
    match a {
        Answer::One { result, created } => {
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            (status, Json(result)).into_response()
        }
        Answer::Many(b) => Json(b).into_response(),
    }
}

/// Adds or updates products (up to `recs.max_batch`; one bad item does not sink the batch).
#[utoipa::path(post, path = "/api/v1/products", tag = "commerce", request_body = ProductsBody,
    responses((status = 201, description = "One object created", body = ItemResult), (status = 200, description = "Per-item results (list body), or one object updated", body = BatchAnswer)))]
async fn products(ctx: Authorized<op::ProductsUpsert>, ApiJson(body): ApiJson<Value>) -> Result<Response, Error> {
    Ok(answer(recs::products(&ctx, body).await?))
}

/// Adds or updates products from WooCommerce REST API product payloads.
#[utoipa::path(post, path = "/api/v1/integrations/woocommerce/products", tag = "commerce", request_body = ProductsBody,
    responses((status = 201, description = "One object created", body = ItemResult), (status = 200, description = "Per-item results (list body), or one object updated", body = BatchAnswer)))]
async fn woo_products(ctx: Authorized<op::ProductsUpsert>, ApiJson(body): ApiJson<Value>) -> Result<Response, Error> {
    Ok(answer(recs::woo_products(&ctx, body).await?))
}

/// One product.
#[utoipa::path(get, path = "/api/v1/products/{id}", tag = "commerce", params(("id" = String, Path, description = "Product id")),
    responses((status = 200, description = "The product", body = store::Product)))]
async fn get_product(ctx: Authorized<op::ProductGet>, ApiPath(id): ApiPath<String>) -> Result<Json<store::Product>, Error> {
    Ok(Json(recs::get_product(&ctx, id).await?))
}

/// Deletes a product (its orders and events stay, and are skipped in training).
#[utoipa::path(delete, path = "/api/v1/products/{id}", tag = "commerce", params(("id" = String, Path, description = "Product id")),
    responses((status = 204, description = "Deleted")))]
async fn delete_product(ctx: Authorized<op::ProductDelete>, ApiPath(id): ApiPath<String>) -> Result<StatusCode, Error> {
    recs::delete_product(&ctx, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds or updates customers.
#[utoipa::path(post, path = "/api/v1/customers", tag = "commerce", request_body = CustomersBody,
    responses((status = 201, description = "One object created", body = ItemResult), (status = 200, description = "Per-item results (list body), or one object updated", body = BatchAnswer)))]
async fn customers(ctx: Authorized<op::CustomersUpsert>, ApiJson(body): ApiJson<Value>) -> Result<Response, Error> {
    Ok(answer(recs::customers(&ctx, body).await?))
}

/// Query of `DELETE /customers/{id}`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DeleteCustomerQuery {
    /// Erase everything that names the customer (profile, orders and their lines, events), not only the profile.
    #[serde(default)]
    erase: bool,
}

/// Deletes a customer's profile, or with `erase=true` erases the customer (a data-protection request):
/// the answer is a receipt with the rows removed per table and where copies may still be.
#[utoipa::path(delete, path = "/api/v1/customers/{id}", tag = "commerce", params(("id" = String, Path, description = "Customer id"), DeleteCustomerQuery),
    responses((status = 200, description = "Receipt", body = recs::CustomerReceipt)))]
async fn delete_customer(
    ctx: Authorized<op::CustomerDelete>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteCustomerQuery>,
) -> Result<Json<recs::CustomerReceipt>, Error> {
    Ok(Json(recs::delete_customer_by_id(&ctx, id, q.erase).await?))
}

/// Adds orders (an order id seen before is a `duplicate`).
#[utoipa::path(post, path = "/api/v1/orders", tag = "commerce", request_body = OrdersBody,
    responses((status = 201, description = "One object created", body = ItemResult), (status = 200, description = "Per-item results (list body), or one object updated", body = BatchAnswer)))]
async fn orders(ctx: Authorized<op::OrdersInsert>, ApiJson(body): ApiJson<Value>) -> Result<Response, Error> {
    Ok(answer(recs::orders(&ctx, body).await?))
}

/// Adds orders from WooCommerce REST API order payloads.
#[utoipa::path(post, path = "/api/v1/integrations/woocommerce/orders", tag = "commerce", request_body = OrdersBody,
    responses((status = 201, description = "One object created", body = ItemResult), (status = 200, description = "Per-item results (list body), or one object updated", body = BatchAnswer)))]
async fn woo_orders(ctx: Authorized<op::OrdersInsert>, ApiJson(body): ApiJson<Value>) -> Result<Response, Error> {
    Ok(answer(recs::woo_orders(&ctx, body).await?))
}

/// Records the store's own totals (products, orders, customers), so sync progress reads "45/100 products".
/// Answers the progress; `GET /recommendations/status` shows it too, under `sync`.
#[utoipa::path(put, path = "/api/v1/integrations/woocommerce/totals", tag = "commerce", request_body = recs::TotalsRequest,
    responses((status = 200, description = "Per kind: synced, total, percent", body = recs::SyncProgress)))]
async fn woo_totals(ctx: Authorized<op::SyncTotals>, ApiJson(req): ApiJson<recs::TotalsRequest>) -> Result<Json<recs::SyncProgress>, Error> {
    Ok(Json(recs::set_totals(&ctx, req).await?))
}

/// Adds behaviour events (views, carts, purchases, ...).
#[utoipa::path(post, path = "/api/v1/events", tag = "commerce", request_body = EventsBody,
    responses((status = 201, description = "One object created", body = ItemResult), (status = 200, description = "Per-item results (list body), or one object updated", body = BatchAnswer)))]
async fn events(ctx: Authorized<op::EventsInsert>, ApiJson(body): ApiJson<Value>) -> Result<Response, Error> {
    Ok(answer(recs::events(&ctx, body).await?))
}

/// The model (version, training time, method, evaluation), whether a training is due or running, and data counts.
#[utoipa::path(get, path = "/api/v1/recommendations/status", tag = "recommendations",
    responses((status = 200, description = "The model, training state, data counts and sync progress", body = super::schemas::RecsStatus)))]
async fn status(ctx: Authorized<op::RecsStatus>) -> Result<Json<Value>, Error> {
    Ok(Json(recs::status(&ctx).await?))
}

/// `?days=` of [`attribution`].
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AttributionQuery {
    /// The period, in days up to today (1–365, default 30).
    #[param(minimum = 1, maximum = 365)]
    days: Option<u32>,
}

/// Clicks on recommendations (events of type `rec_click`) and the orders that followed them.
#[utoipa::path(get, path = "/api/v1/recommendations/attribution", tag = "recommendations", params(AttributionQuery),
    responses((status = 200, description = "Recommendations served, clicks, attributed orders and revenue", body = recs::Attribution)))]
async fn attribution(ctx: Authorized<op::RecsAttribution>, ApiQuery(q): ApiQuery<AttributionQuery>) -> Result<Json<recs::Attribution>, Error> {
    Ok(Json(recs::attribution(&ctx, q.days.unwrap_or(30)).await?))
}

/// Starts a training now (no debounce); poll the status until `training` is false.
#[utoipa::path(post, path = "/api/v1/recommendations/train", tag = "recommendations",
    responses((status = 202, description = "Training scheduled: the model's state, with training true", body = super::schemas::ModelStatus)))]
async fn train(ctx: Authorized<op::RecsTrain>) -> Result<Response, Error> {
    Ok((StatusCode::ACCEPTED, Json(recs::train(&ctx).await?)).into_response())
}

/// Personalised recommendations for `customer_id`, or popular products without one.
#[utoipa::path(get, path = "/api/v1/recommendations", tag = "recommendations", params(RecQuery),
    responses((status = 200, description = "Best first", body = RecsResponse)))]
async fn recommend(ctx: Authorized<op::Recommend>, ApiQuery(q): ApiQuery<RecQuery>) -> Result<Json<RecsResponse>, Error> {
    Ok(Json(recs::recommend_for(&ctx, q).await?))
}

/// Products often bought with this one (falling back to similar products).
#[utoipa::path(get, path = "/api/v1/products/{id}/related", tag = "recommendations", params(("id" = String, Path, description = "Product id"), RecQuery),
    responses((status = 200, description = "Best first", body = RecsResponse)))]
async fn related(ctx: Authorized<op::Recommend>, ApiPath(id): ApiPath<String>, ApiQuery(q): ApiQuery<RecQuery>) -> Result<Json<RecsResponse>, Error> {
    Ok(Json(recs::related_to(&ctx, id, q).await?))
}

/// Products similar in content (name, description, categories) to this one.
#[utoipa::path(get, path = "/api/v1/products/{id}/similar", tag = "recommendations", params(("id" = String, Path, description = "Product id"), RecQuery),
    responses((status = 200, description = "Best first", body = RecsResponse)))]
async fn similar(ctx: Authorized<op::Recommend>, ApiPath(id): ApiPath<String>, ApiQuery(q): ApiQuery<RecQuery>) -> Result<Json<RecsResponse>, Error> {
    Ok(Json(recs::similar(&ctx, id, q).await?))
}

/// The most bought products over `window`.
#[utoipa::path(get, path = "/api/v1/recommendations/trending", tag = "recommendations", params(RecQuery),
    responses((status = 200, description = "Best first", body = RecsResponse)))]
async fn trending(ctx: Authorized<op::Recommend>, ApiQuery(q): ApiQuery<RecQuery>) -> Result<Json<RecsResponse>, Error> {
    Ok(Json(recs::trending(&ctx, q).await?))
}

/// Products that go with a cart's contents.
#[utoipa::path(post, path = "/api/v1/recommendations/cart", tag = "recommendations", request_body = CartRequest,
    responses((status = 200, description = "Best first", body = RecsResponse)))]
async fn cart(ctx: Authorized<op::Recommend>, ApiJson(req): ApiJson<CartRequest>) -> Result<Json<RecsResponse>, Error> {
    Ok(Json(recs::cart(&ctx, req).await?))
}
