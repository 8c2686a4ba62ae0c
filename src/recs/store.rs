//! Commerce data in the tenant's SQLite file (tenant migration v3): products, customers, orders,
//! events, unknown product references and the trained model. SQLite is the source of truth; the
//! in-memory model is derived from it and persisted beside it (`rec_model`), so it survives restarts
//! and is covered by backups. Every write bumps `rec_state.data_version` in the same transaction.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;

use super::input::{EventInput, OrderInput, ProductInput};
use super::model::{event_weight, purchase_weight, words_of, Interaction, ModelInfo, ProductRow, TrainData};
use crate::error::Error;

fn now() -> String {
    crate::clock::ts(chrono::Utc::now())
}

fn bump(c: &Connection) -> rusqlite::Result<()> {
    c.execute("UPDATE rec_state SET value = value + 1 WHERE key = 'data_version'", [])?;
    Ok(())
}

pub fn data_version(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row("SELECT value FROM rec_state WHERE key = 'data_version'", [], |r| r.get(0))
}

/// Outcome of one batch item.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ItemResult {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `created`, `updated`, `duplicate` or `error`.
    #[schema(value_type = String)]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_products: Option<Vec<String>>,
    /// `{code, message}` when the item failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
}

impl ItemResult {
    pub fn ok(index: usize, id: String, status: &'static str) -> ItemResult {
        ItemResult { index, id: Some(id), status, unknown_products: None, error: None }
    }
    pub fn err(index: usize, id: Option<String>, message: impl Into<String>) -> ItemResult {
        ItemResult {
            index,
            id,
            status: "error",
            unknown_products: None,
            error: Some(serde_json::json!({"code": "validation_failed", "message": message.into()})),
        }
    }
}

/// How many of `ids` are not products yet, and how many products there are.
pub fn new_product_count(c: &Connection, ids: &[String]) -> Result<(u64, u64), Error> {
    let total: i64 = c.query_row("SELECT COUNT(*) FROM products", [], |r| r.get(0))?;
    let mut stmt = c.prepare_cached("SELECT 1 FROM products WHERE id = ?1")?;
    let mut seen = std::collections::HashSet::new();
    let mut new = 0u64;
    for id in ids {
        if seen.insert(id.as_str()) && !stmt.exists([id])? {
            new += 1;
        }
    }
    Ok((new, total.max(0) as u64))
}

/// Upserts products in one transaction. A product whose name, description or categories change
/// loses its embedding (the trainer re-embeds it).
pub fn upsert_products(c: &mut Connection, items: Vec<(usize, ProductInput)>) -> Result<Vec<ItemResult>, Error> {
    let tx = c.transaction()?;
    let mut out = Vec::with_capacity(items.len());
    {
        let mut old = tx.prepare_cached("SELECT name, description, categories FROM products WHERE id = ?1")?;
        let mut ins = tx.prepare_cached(
            "INSERT INTO products(id, name, description, categories, tags, price, currency, in_stock, attributes, embedding, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, ?10, ?10)
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, description = excluded.description, categories = excluded.categories,
               tags = excluded.tags, price = excluded.price, currency = excluded.currency, in_stock = excluded.in_stock,
               attributes = excluded.attributes, updated_at = excluded.updated_at,
               embedding = CASE WHEN ?11 THEN NULL ELSE products.embedding END",
        )?;
        let ts = now();
        for (index, p) in items {
            let cats = serde_json::to_string(&p.categories).expect("json");
            let prev: Option<(String, Option<String>, String)> = old.query_row([&p.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?;
            let text_changed = prev.as_ref().is_none_or(|(n, d, cs)| *n != p.name || *d != p.description || *cs != cats);
            ins.execute(params![
                p.id,
                p.name,
                p.description,
                cats,
                serde_json::to_string(&p.tags).expect("json"),
                p.price,
                p.currency,
                p.in_stock,
                p.attributes.to_string(),
                ts,
                text_changed,
            ])?;
            out.push(ItemResult::ok(index, p.id, if prev.is_some() { "updated" } else { "created" }));
        }
        // Order lines or events that named these products before they existed are now resolved.
        let mut resolve = tx.prepare_cached("DELETE FROM unknown_products WHERE product_id = ?1")?;
        for r in &out {
            resolve.execute([r.id.as_deref().unwrap_or_default()])?;
        }
    }
    bump(&tx)?;
    tx.commit()?;
    Ok(out)
}

/// A stored product (`GET /api/v1/products/{id}`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    #[schema(value_type = Vec<String>)]
    pub categories: Value,
    #[schema(value_type = Vec<String>)]
    pub tags: Value,
    pub price: Option<f64>,
    pub currency: Option<String>,
    pub in_stock: bool,
    #[schema(value_type = Object)]
    pub attributes: Value,
    pub embedded: bool,
    pub created_at: String,
    pub updated_at: String,
}

pub fn get_product(c: &Connection, id: &str) -> Result<Option<Product>, Error> {
    let json = |s: String| serde_json::from_str(&s).unwrap_or(Value::Null);
    Ok(c.query_row(
        "SELECT id, name, description, categories, tags, price, currency, in_stock, attributes, embedding IS NOT NULL, created_at, updated_at
         FROM products WHERE id = ?1",
        [id],
        |r| {
            Ok(Product {
                id: r.get(0)?,
                name: r.get(1)?,
                description: r.get(2)?,
                categories: json(r.get(3)?),
                tags: json(r.get(4)?),
                price: r.get(5)?,
                currency: r.get(6)?,
                in_stock: r.get(7)?,
                attributes: json(r.get(8)?),
                embedded: r.get(9)?,
                created_at: r.get(10)?,
                updated_at: r.get(11)?,
            })
        },
    )
    .optional()?)
}

/// Deletes a product (its order lines and events stay: history is history, they are skipped in training).
pub fn delete_product(c: &mut Connection, id: &str) -> Result<bool, Error> {
    let tx = c.transaction()?;
    let n = tx.execute("DELETE FROM products WHERE id = ?1", [id])?;
    if n > 0 {
        bump(&tx)?;
    }
    tx.commit()?;
    Ok(n > 0)
}

/// Deletes a customer (their orders stay, as a guest's would).
pub fn delete_customer(c: &mut Connection, id: &str) -> Result<bool, Error> {
    Ok(c.execute("DELETE FROM customers WHERE id = ?1", [id])? > 0)
}

/// What erasing one end customer removed, per table (the receipt of `DELETE /customers/{id}?erase=true`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Erased {
    pub customers: u64,
    pub orders: u64,
    pub order_lines: u64,
    pub events: u64,
    /// `unknown_products` entries that pointed at the erased orders and events.
    pub unknown_product_refs: u64,
}

impl Erased {
    /// Whether the training data changed: training reads orders and events, not profiles.
    pub fn changes_training(&self) -> bool {
        self.orders + self.events > 0
    }
}

/// Erases a customer: the profile, every order of theirs with its lines, every event that names
/// them, and the unknown-product notes those orders and events left, in one transaction. The
/// training data changes, so the model is retrained (the caller schedules it). With `secure_delete`
/// on (tenant databases always run with it) the freed bytes are overwritten with zeros.
pub fn erase_customer(c: &mut Connection, id: &str) -> Result<Erased, Error> {
    let tx = c.transaction()?;
    let unknown_orders =
        tx.execute("DELETE FROM unknown_products WHERE source = 'order' AND ref IN (SELECT id FROM orders WHERE customer_id = ?1)", [id])?;
    let unknown_events = tx.execute(
        "DELETE FROM unknown_products WHERE source = 'event' AND ref IN (SELECT CAST(id AS TEXT) FROM events WHERE customer_id = ?1)",
        [id],
    )?;
    let order_lines = tx.execute("DELETE FROM order_lines WHERE order_id IN (SELECT id FROM orders WHERE customer_id = ?1)", [id])?;
    let orders = tx.execute("DELETE FROM orders WHERE customer_id = ?1", [id])?;
    let events = tx.execute("DELETE FROM events WHERE customer_id = ?1", [id])?;
    let customers = tx.execute("DELETE FROM customers WHERE id = ?1", [id])?;
    let erased = Erased {
        customers: customers as u64,
        orders: orders as u64,
        order_lines: order_lines as u64,
        events: events as u64,
        unknown_product_refs: (unknown_orders + unknown_events) as u64,
    };
    if erased.changes_training() {
        bump(&tx)?;
    }
    tx.commit()?;
    Ok(erased)
}

/// Marks an order deleted in the store: it no longer counts as a purchase. A later update with a newer
/// `modified_at` (WooCommerce's `order.restored`) brings it back.
pub fn retract_order(c: &mut Connection, id: &str) -> Result<bool, Error> {
    let tx = c.transaction()?;
    let n = tx.execute("UPDATE orders SET status = 'deleted' WHERE id = ?1 AND status <> 'deleted'", [id])?;
    if n > 0 {
        bump(&tx)?;
    }
    tx.commit()?;
    Ok(n > 0)
}

/// Whether a webhook delivery was applied before.
pub fn delivery_seen(c: &Connection, delivery_id: &str) -> Result<bool, Error> {
    Ok(c.prepare_cached("SELECT 1 FROM webhook_deliveries WHERE delivery_id = ?1")?.exists([delivery_id])?)
}

/// Records an applied delivery, and forgets those received before `prune_before` (unix seconds).
pub fn record_delivery(c: &mut Connection, delivery_id: &str, topic: &str, at: i64, prune_before: i64) -> Result<(), Error> {
    let tx = c.transaction()?;
    tx.execute("INSERT OR IGNORE INTO webhook_deliveries(delivery_id, topic, received_at) VALUES (?1, ?2, ?3)", params![delivery_id, topic, at])?;
    tx.execute("DELETE FROM webhook_deliveries WHERE received_at < ?1", [prune_before])?;
    tx.commit()?;
    Ok(())
}

/// The kinds a sync-totals call may state.
pub const TOTAL_KINDS: [&str; 3] = ["products", "orders", "customers"];

/// Stores the store's own totals (from a sync-totals call); `None` leaves a total as it was.
pub fn set_totals(c: &mut Connection, totals: &[(&str, Option<u64>)]) -> Result<(), Error> {
    let tx = c.transaction()?;
    for (kind, n) in totals {
        if let Some(n) = n {
            tx.execute(
                "INSERT INTO rec_state(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![format!("total:{kind}"), *n as i64],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Sync progress: per kind, how many are stored and the total the store stated (if it did).
pub fn sync_progress(c: &Connection) -> Result<Value, Error> {
    let mut out = serde_json::Map::new();
    for kind in TOTAL_KINDS {
        let synced: i64 = c.query_row(&format!("SELECT COUNT(*) FROM {kind}"), [], |r| r.get(0))?;
        let total: Option<i64> = c.query_row("SELECT value FROM rec_state WHERE key = ?1", [format!("total:{kind}")], |r| r.get(0)).optional()?;
        let percent = total.map(|t| if t <= 0 { 100.0 } else { ((synced as f64 / t as f64) * 1000.0).round() / 10.0 });
        out.insert(kind.into(), serde_json::json!({"synced": synced, "total": total, "percent": percent}));
    }
    Ok(Value::Object(out))
}

/// How many products the tenant stores.
pub fn product_count(c: &Connection) -> Result<u64, Error> {
    let n: i64 = c.query_row("SELECT COUNT(*) FROM products", [], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

pub fn upsert_customers(c: &mut Connection, items: Vec<(usize, String, Value)>) -> Result<Vec<ItemResult>, Error> {
    let tx = c.transaction()?;
    let mut out = Vec::new();
    {
        let mut exists = tx.prepare_cached("SELECT 1 FROM customers WHERE id = ?1")?;
        let mut ins = tx.prepare_cached(
            "INSERT INTO customers(id, data, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT(id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
        )?;
        let ts = now();
        for (index, id, data) in items {
            let existed = exists.exists([&id])?;
            ins.execute(params![id, data.to_string(), ts])?;
            out.push(ItemResult::ok(index, id, if existed { "updated" } else { "created" }));
        }
    }
    tx.commit()?;
    Ok(out)
}

/// Inserts orders; an order id already stored is answered `duplicate` and left unchanged.
/// Lines naming products that do not exist (yet) are kept and reported in `unknown_products`.
/// The SQL condition for orders that count as purchases (see [`crate::recs::input::PURCHASED`]).
const COUNTED: &str = "o.status IN ('processing', 'completed')";

/// Adds orders. An order seen before answers `duplicate`, unless it carries a newer `modified_at` than
/// the stored one: then its status, customer, time and lines are replaced (`updated`), so a refund or a
/// cancellation retracts the purchase.
pub fn insert_orders(c: &mut Connection, items: Vec<(usize, OrderInput)>) -> Result<Vec<ItemResult>, Error> {
    let tx = c.transaction()?;
    let mut out = Vec::new();
    let mut wrote = false;
    {
        let mut stored = tx.prepare_cached("SELECT modified_at FROM orders WHERE id = ?1")?;
        let mut order = tx.prepare_cached(
            "INSERT INTO orders(id, customer_id, created_at, received_at, status, modified_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(id) DO UPDATE SET customer_id = excluded.customer_id, created_at = excluded.created_at,
               received_at = excluded.received_at, status = excluded.status, modified_at = excluded.modified_at",
        )?;
        let mut clear = tx.prepare_cached("DELETE FROM order_lines WHERE order_id = ?1")?;
        let mut line = tx.prepare_cached("INSERT INTO order_lines(order_id, line, product_id, quantity, price) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        let mut known = tx.prepare_cached("SELECT 1 FROM products WHERE id = ?1")?;
        let mut unknown = tx.prepare_cached("INSERT OR IGNORE INTO unknown_products(product_id, source, ref, at) VALUES (?1, 'order', ?2, ?3)")?;
        let ts = now();
        for (index, o) in items {
            let before: Option<Option<i64>> = stored.query_row([&o.id], |r| r.get(0)).optional()?;
            let status = match before {
                None => "created",
                Some(prev) if o.modified_at.is_some_and(|m| prev.is_none_or(|p| m > p)) => "updated",
                Some(_) => {
                    out.push(ItemResult::ok(index, o.id, "duplicate"));
                    continue;
                }
            };
            order.execute(params![o.id, o.customer_id, o.created_at, ts, o.status, o.modified_at])?;
            clear.execute([&o.id])?;
            let mut missing = Vec::new();
            for (k, l) in o.lines.iter().enumerate() {
                line.execute(params![o.id, k as i64, l.product_id, l.quantity, l.price])?;
                if !known.exists([&l.product_id])? {
                    unknown.execute(params![l.product_id, o.id, ts])?;
                    if !missing.contains(&l.product_id) {
                        missing.push(l.product_id.clone());
                    }
                }
            }
            wrote = true;
            let mut r = ItemResult::ok(index, o.id, status);
            r.unknown_products = Some(missing);
            out.push(r);
        }
    }
    if wrote {
        bump(&tx)?;
    }
    tx.commit()?;
    Ok(out)
}

pub fn insert_events(c: &mut Connection, items: Vec<(usize, EventInput)>) -> Result<Vec<ItemResult>, Error> {
    let tx = c.transaction()?;
    let mut out = Vec::new();
    {
        let mut ins = tx.prepare_cached("INSERT INTO events(customer_id, session_id, product_id, type, at) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        let mut known = tx.prepare_cached("SELECT 1 FROM products WHERE id = ?1")?;
        let mut unknown = tx.prepare_cached("INSERT OR IGNORE INTO unknown_products(product_id, source, ref, at) VALUES (?1, 'event', ?2, ?3)")?;
        let ts = now();
        for (index, e) in items {
            ins.execute(params![e.customer_id, e.session_id, e.product_id, e.kind, e.at])?;
            let id = tx.last_insert_rowid().to_string();
            let mut r = ItemResult::ok(index, id.clone(), "created");
            if !known.exists([&e.product_id])? {
                unknown.execute(params![e.product_id, id, ts])?;
                r.unknown_products = Some(vec![e.product_id]);
            }
            out.push(r);
        }
    }
    if !out.is_empty() {
        bump(&tx)?;
    }
    tx.commit()?;
    Ok(out)
}

/// The text a product is embedded from: "name. categories. description" (description cut to 1,000 chars).
fn embed_text(name: &str, categories: &str, description: Option<&str>) -> String {
    let cats: Vec<String> = serde_json::from_str(categories).unwrap_or_default();
    let desc: String = description.unwrap_or("").chars().take(1000).collect();
    format!("{name}. {}. {desc}", cats.join(", ")).trim().to_string()
}

/// Up to `limit` products without an embedding, with the text to embed.
pub fn missing_embeddings(c: &Connection, limit: usize) -> Result<Vec<(String, String)>, Error> {
    let mut stmt = c.prepare_cached("SELECT id, name, categories, description FROM products WHERE embedding IS NULL LIMIT ?1")?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok((r.get::<_, String>(0)?, embed_text(&r.get::<_, String>(1)?, &r.get::<_, String>(2)?, r.get::<_, Option<String>>(3)?.as_deref())))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Stores embeddings computed for the given texts (skipped if the product changed meanwhile).
pub fn set_embeddings(c: &mut Connection, items: Vec<(String, String, Vec<f32>)>) -> Result<(), Error> {
    let tx = c.transaction()?;
    {
        let mut cur = tx.prepare_cached("SELECT name, categories, description FROM products WHERE id = ?1")?;
        let mut set = tx.prepare_cached("UPDATE products SET embedding = ?2 WHERE id = ?1")?;
        for (id, text, v) in items {
            let now_text: Option<String> = cur
                .query_row([&id], |r| Ok(embed_text(&r.get::<_, String>(0)?, &r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?.as_deref())))
                .optional()?;
            if now_text.as_deref() == Some(text.as_str()) {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                set.execute(params![id, bytes])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

fn decode_embedding(b: Option<Vec<u8>>) -> Option<Vec<f32>> {
    let b = b?;
    (b.len() == crate::embed::DIM * 4).then(|| b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect())
}

/// One `SELECT id, name, categories, tags, embedding` row as the model sees it.
fn product_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ProductRow> {
    let (id, name, cats, tags): (String, String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
    let cats: Vec<String> = serde_json::from_str(&cats).unwrap_or_default();
    let tags: Vec<String> = serde_json::from_str(&tags).unwrap_or_default();
    let mut texts: Vec<&str> = vec![name.as_str()];
    texts.extend(cats.iter().map(String::as_str));
    texts.extend(tags.iter().map(String::as_str));
    Ok(ProductRow { words: words_of(&texts), embedding: decode_embedding(r.get(4)?), id })
}

/// Products as the model sees them, in a stable order.
pub fn load_products(c: &Connection) -> Result<Vec<ProductRow>, Error> {
    let mut stmt = c.prepare_cached("SELECT id, name, categories, tags, embedding FROM products ORDER BY id")?;
    let rows = stmt.query_map([], product_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Everything training needs, read in one snapshot; returns the data version it reflects.
pub fn load_train_data(c: &Connection) -> Result<(TrainData, i64), Error> {
    let tx = c.unchecked_transaction()?;
    let version = data_version(&tx)?;
    let mut products = load_products(&tx)?;
    if products.is_empty() {
        let mut stmt = tx.prepare("SELECT product_id FROM order_lines UNION SELECT product_id FROM events ORDER BY 1")?;
        let ids = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
        products = ids.into_iter().map(|id| ProductRow { id, words: Vec::new(), embedding: None }).collect();
    }
    let mut interactions = Vec::new();
    {
        let mut stmt = tx.prepare(&format!(
            "SELECT o.customer_id, l.product_id, l.quantity, o.created_at FROM order_lines l JOIN orders o ON o.id = l.order_id
                 WHERE {COUNTED} ORDER BY o.created_at, o.rowid, l.line"
        ))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            interactions.push(Interaction { user: r.get(0)?, product: r.get(1)?, weight: purchase_weight(r.get(2)?), at: r.get(3)?, purchase: true });
        }
        let mut stmt = tx.prepare("SELECT customer_id, session_id, product_id, type, at FROM events ORDER BY at, id")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let user = match (r.get::<_, Option<String>>(0)?, r.get::<_, Option<String>>(1)?) {
                (Some(c), _) => c,
                (None, Some(s)) => format!("\u{1}session:{s}"),
                (None, None) => continue,
            };
            let kind: String = r.get(3)?;
            interactions.push(Interaction { user, product: r.get(2)?, weight: event_weight(&kind), at: r.get(4)?, purchase: kind == "purchase" });
        }
    }
    tx.commit()?;
    Ok((TrainData { products, interactions }, version))
}

/// A customer's interactions `(product, weight, at)` and the products they purchased.
pub fn customer_history(c: &Connection, customer_id: &str) -> Result<(Vec<(String, f32, i64)>, Vec<String>), Error> {
    let mut rows = Vec::new();
    let mut purchased = Vec::new();
    let mut stmt = c.prepare_cached(&format!(
        "SELECT l.product_id, l.quantity, o.created_at FROM orders o JOIN order_lines l ON l.order_id = o.id WHERE o.customer_id = ?1 AND {COUNTED}"
    ))?;
    let mut q = stmt.query([customer_id])?;
    while let Some(r) = q.next()? {
        let pid: String = r.get(0)?;
        rows.push((pid.clone(), purchase_weight(r.get(1)?), r.get(2)?));
        purchased.push(pid);
    }
    let mut stmt = c.prepare_cached("SELECT product_id, type, at FROM events WHERE customer_id = ?1 ORDER BY at DESC LIMIT 1000")?;
    let mut q = stmt.query([customer_id])?;
    while let Some(r) = q.next()? {
        let (pid, kind): (String, String) = (r.get(0)?, r.get(1)?);
        if kind == "purchase" {
            purchased.push(pid.clone());
        }
        rows.push((pid, event_weight(&kind), r.get(2)?));
    }
    Ok((rows, purchased))
}

/// Stock and categories of the products among `ids` that exist.
///
/// A tenant that has sent orders or events but never a product runs *catalog-less*: products are
/// known by the ids its orders name (all in stock, no categories), so orders alone still drive
/// recommendations. The first product pushed ends that mode.
pub fn product_facts(c: &Connection, ids: &[&str]) -> Result<HashMap<String, (bool, Vec<String>)>, Error> {
    if catalog_less(c)? {
        return Ok(ids.iter().map(|id| (id.to_string(), (true, Vec::new()))).collect());
    }
    let mut out = HashMap::new();
    let mut stmt = c.prepare_cached("SELECT in_stock, categories FROM products WHERE id = ?1")?;
    for id in ids {
        if let Some((s, cats)) = stmt.query_row([id], |r| Ok((r.get::<_, bool>(0)?, r.get::<_, String>(1)?))).optional()? {
            out.insert(id.to_string(), (s, serde_json::from_str(&cats).unwrap_or_default()));
        }
    }
    Ok(out)
}

/// True when the tenant has no product at all (see [`product_facts`]).
pub fn catalog_less(c: &Connection) -> Result<bool, Error> {
    Ok(!c.prepare_cached("SELECT 1 FROM products LIMIT 1")?.exists([])?)
}

/// Products by activity since `since` (unix seconds): order lines count their quantity, events their weight.
pub fn trending(c: &Connection, since: i64, limit: usize) -> Result<Vec<(String, f32)>, Error> {
    let mut stmt = c.prepare_cached(
        "SELECT t.product_id, SUM(t.w) AS s FROM (
            SELECT l.product_id, CAST(l.quantity AS REAL) AS w FROM orders o JOIN order_lines l ON l.order_id = o.id
              WHERE o.created_at >= ?1 AND o.status IN ('processing', 'completed')
            UNION ALL
            SELECT product_id, CASE type WHEN 'purchase' THEN 1.0 WHEN 'cart' THEN 0.5 WHEN 'add_to_cart' THEN 0.5 WHEN 'wishlist' THEN 0.3
                                         WHEN 'view' THEN 0.15 WHEN 'click' THEN 0.15 ELSE 0.1 END FROM events WHERE at >= ?1
         ) t WHERE ?3 OR EXISTS (SELECT 1 FROM products p WHERE p.id = t.product_id)
         GROUP BY t.product_id ORDER BY s DESC, t.product_id LIMIT ?2",
    )?;
    let all = catalog_less(c)?;
    let rows = stmt.query_map(params![since, limit as i64, all], |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)? as f32)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn save_model(c: &mut Connection, info: &ModelInfo, data: &[u8]) -> Result<(), Error> {
    c.execute(
        "INSERT INTO rec_model(id, version, info, data) VALUES (1, ?1, ?2, ?3)
         ON CONFLICT(id) DO UPDATE SET version = excluded.version, info = excluded.info, data = excluded.data",
        params![info.version as i64, serde_json::to_string(info).map_err(Error::internal)?, data],
    )?;
    Ok(())
}

pub fn load_model(c: &Connection) -> Result<Option<(ModelInfo, Vec<u8>)>, Error> {
    let row: Option<(String, Vec<u8>)> =
        c.query_row("SELECT info, data FROM rec_model WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
    match row {
        None => Ok(None),
        Some((info, data)) => Ok(Some((serde_json::from_str(&info).map_err(Error::internal)?, data))),
    }
}

/// Data counts for the status endpoint.
pub fn counts(c: &Connection) -> Result<Value, Error> {
    let n = |sql: &str| -> Result<i64, Error> { Ok(c.query_row(sql, [], |r| r.get(0))?) };
    Ok(serde_json::json!({
        "products": n("SELECT COUNT(*) FROM products")?,
        "customers": n("SELECT COUNT(*) FROM customers")?,
        "orders": n("SELECT COUNT(*) FROM orders")?,
        "order_lines": n("SELECT COUNT(*) FROM order_lines")?,
        "events": n("SELECT COUNT(*) FROM events")?,
        "unknown_product_refs": n("SELECT COUNT(*) FROM unknown_products")?,
        "products_embedded": n("SELECT COUNT(*) FROM products WHERE embedding IS NOT NULL")?,
    }))
}

/// Recommendation clicks since `since` (unix seconds) and the orders they were followed by: events
/// of type `rec_click`, and purchases (`processing`, `completed`) made since `since` by a customer
/// who clicked one of the order's products at most `window` seconds before. Answers (clicks,
/// customers who clicked, attributed orders, revenue of the attributed lines).
pub fn attribution(c: &Connection, since: i64, window: i64) -> Result<(u64, u64, u64, f64), Error> {
    let (clicks, clickers): (i64, i64) =
        c.query_row("SELECT COUNT(*), COUNT(DISTINCT customer_id) FROM events WHERE type = 'rec_click' AND at >= ?1", [since], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (orders, revenue): (i64, f64) = c.query_row(
        "SELECT COUNT(DISTINCT o.id), COALESCE(SUM(l.quantity * COALESCE(l.price, 0)), 0)
         FROM orders o JOIN order_lines l ON l.order_id = o.id
         WHERE o.created_at >= ?1 AND o.status IN ('processing', 'completed')
           AND EXISTS (SELECT 1 FROM events e WHERE e.customer_id = o.customer_id AND e.type = 'rec_click'
                       AND e.product_id = l.product_id AND e.at <= o.created_at AND e.at >= o.created_at - ?2)",
        params![since, window],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok((clicks.max(0) as u64, clickers.max(0) as u64, orders.max(0) as u64, revenue))
}

/// The product ids named in order lines or events that are not (yet) products, most recent first.
pub fn unknown_products(c: &Connection, limit: usize) -> Result<Vec<String>, Error> {
    let mut stmt = c.prepare_cached("SELECT product_id FROM unknown_products GROUP BY product_id ORDER BY MAX(at) DESC LIMIT ?1")?;
    let rows = stmt.query_map([limit as i64], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One product as the model sees it.
pub fn load_products_by_id(c: &Connection, id: &str) -> Result<Option<ProductRow>, Error> {
    let mut stmt = c.prepare_cached("SELECT id, name, categories, tags, embedding FROM products WHERE id = ?1")?;
    let row = stmt.query_row([id], product_row).optional()?;
    Ok(row)
}
