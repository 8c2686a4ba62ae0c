//! Validation of commerce input, one item at a time (a bad item never fails its batch), and the
//! WooCommerce adapters (its REST/webhook product and order JSON, accepted as-is).

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value};

pub const MAX_ID: usize = 128;
const MAX_NAME: usize = 500;
const MAX_DESCRIPTION: usize = 20_000;
const MAX_LIST: usize = 100;
const MAX_LINES: usize = 1000;

#[derive(Debug, Clone)]
pub struct ProductInput {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub categories: Vec<String>,
    pub tags: Vec<String>,
    pub price: Option<f64>,
    pub currency: Option<String>,
    pub in_stock: bool,
    pub attributes: Value,
}

#[derive(Debug, Clone)]
pub struct OrderLine {
    pub product_id: String,
    pub quantity: i64,
    pub price: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct OrderInput {
    pub id: String,
    pub customer_id: String,
    /// Unix seconds.
    pub created_at: i64,
    pub lines: Vec<OrderLine>,
    /// The order's status (WooCommerce's lifecycle; default `completed`). Only `processing` and
    /// `completed` orders count as purchases.
    pub status: String,
    /// When the order last changed (unix seconds): an order seen before is applied again only when this
    /// is newer than what is stored.
    pub modified_at: Option<i64>,
}

/// Order statuses that count as a purchase; any other (`cancelled`, `refunded`, `failed`, `pending`,
/// `on-hold`, ...) does not, so re-sending an order with one retracts it.
pub const PURCHASED: [&str; 2] = ["processing", "completed"];

#[derive(Debug, Clone)]
pub struct EventInput {
    pub customer_id: Option<String>,
    pub session_id: Option<String>,
    pub product_id: String,
    pub kind: String,
    pub at: i64,
}

type R<T> = Result<T, String>;

/// An id: a non-empty string (or an integer, as WooCommerce sends) of at most 128 characters.
pub fn id_of(v: Option<&Value>, field: &str) -> R<String> {
    let s = match v {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        // `12.0` from clients that send every number as a float.
        Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f.fract() == 0.0 && f.abs() < 1e15) => (n.as_f64().unwrap_or(0.0) as i64).to_string(),
        Some(Value::Null) | None => return Err(format!("{field} is required")),
        _ => return Err(format!("{field} must be a string or an integer")),
    };
    if s.is_empty() || s.chars().count() > MAX_ID || s.chars().any(char::is_control) {
        return Err(format!("{field} must be 1-{MAX_ID} printable characters"));
    }
    Ok(s)
}

fn opt_string(o: &Map<String, Value>, field: &str, max: usize) -> R<Option<String>> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(format!("{field} is longer than {max} characters")),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

fn string_list(o: &Map<String, Value>, field: &str) -> R<Vec<String>> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) if a.len() <= MAX_LIST => a
            .iter()
            .map(|x| match x {
                Value::String(s) if !s.trim().is_empty() && s.len() <= 200 => Ok(s.trim().to_string()),
                _ => Err(format!("{field} must hold non-empty strings of at most 200 bytes")),
            })
            .collect(),
        Some(_) => Err(format!("{field} must be a list of at most {MAX_LIST} strings")),
    }
}

fn number(v: Option<&Value>, field: &str) -> R<Option<f64>> {
    let x = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64(),
        // Stores (WooCommerce among them) send prices as strings.
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    match x {
        Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
        _ => Err(format!("{field} must be a non-negative number")),
    }
}

/// A time: RFC 3339, `YYYY-MM-DD[T| ]HH:MM:SS[.f]` (UTC), `YYYY-MM-DD` (midnight UTC), or unix
/// seconds (a number or a string of digits; numbers above 10¹¹ are taken as milliseconds).
/// Absent means now.
pub fn time_of(v: Option<&Value>, field: &str) -> R<i64> {
    let err = || format!("{field} must be an RFC 3339 time, YYYY-MM-DD[ HH:MM:SS] or unix seconds");
    let from_number = |t: f64| -> R<i64> {
        let t = if t > 1e11 { t / 1000.0 } else { t };
        if t.is_finite() && (0.0..=253_402_300_799.0).contains(&t) {
            Ok(t as i64)
        } else {
            Err(err())
        }
    };
    match v {
        None | Some(Value::Null) => Ok(Utc::now().timestamp()),
        Some(Value::Number(n)) => from_number(n.as_f64().ok_or_else(err)?),
        Some(Value::String(s)) => {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                return from_number(s.parse::<f64>().map_err(|_| err())?);
            }
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Ok(t.timestamp());
            }
            for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
                if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
                    return Ok(t.and_utc().timestamp());
                }
            }
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc().timestamp())
                .ok_or_else(err)
        }
        Some(_) => Err(err()),
    }
}

/// A quantity: a positive integer, also as `2.0` or `"2"`.
fn quantity_of(v: Option<&Value>, field: &str) -> R<i64> {
    let q = match v {
        None | Some(Value::Null) => return Ok(1),
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(_) => None,
    };
    q.filter(|q| (1..=1_000_000).contains(q)).ok_or_else(|| format!("{field} must be an integer from 1"))
}

fn object(v: &Value) -> R<&Map<String, Value>> {
    v.as_object().ok_or_else(|| "each item must be a JSON object".to_string())
}

pub fn product(v: &Value) -> R<ProductInput> {
    let o = object(v)?;
    let id = id_of(o.get("id"), "id")?;
    let name = match o.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= MAX_NAME => s.trim().to_string(),
        Some(Value::String(_)) | None | Some(Value::Null) => return Err(format!("name is required (1-{MAX_NAME} characters)")),
        Some(_) => return Err("name must be a string".into()),
    };
    let currency = opt_string(o, "currency", 3)?;
    if currency.as_ref().is_some_and(|c| c.len() != 3 || !c.chars().all(|x| x.is_ascii_alphabetic())) {
        return Err("currency must be a three-letter ISO 4217 code".into());
    }
    let in_stock = match o.get("in_stock") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("in_stock must be a boolean".into()),
    };
    let attributes = match o.get("attributes") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(a @ Value::Object(_)) if a.to_string().len() <= 16 * 1024 => a.clone(),
        Some(_) => return Err("attributes must be an object of at most 16 KiB".into()),
    };
    Ok(ProductInput {
        id,
        name,
        description: opt_string(o, "description", MAX_DESCRIPTION)?,
        categories: string_list(o, "categories")?,
        tags: string_list(o, "tags")?,
        price: number(o.get("price"), "price")?,
        currency: currency.map(|c| c.to_ascii_uppercase()),
        in_stock,
        attributes,
    })
}

pub fn customer(v: &Value) -> R<(String, Value)> {
    let o = object(v)?;
    let id = id_of(o.get("id"), "id")?;
    let data = Value::Object(o.iter().filter(|(k, _)| k.as_str() != "id").map(|(k, v)| (k.clone(), v.clone())).collect());
    if data.to_string().len() > 16 * 1024 {
        return Err("a customer must be at most 16 KiB of JSON".into());
    }
    Ok((id, data))
}

pub fn order(v: &Value) -> R<OrderInput> {
    let o = object(v)?;
    let id = id_of(o.get("id"), "id")?;
    let customer_id = id_of(o.get("customer_id"), "customer_id")?;
    let created_at = time_of(o.get("created_at"), "created_at")?;
    let lines = match o.get("lines") {
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_LINES => a,
        _ => return Err(format!("lines must be a list of 1 to {MAX_LINES} lines")),
    };
    let lines = lines
        .iter()
        .enumerate()
        .map(|(k, l)| {
            let l = l.as_object().ok_or_else(|| format!("lines[{k}] must be an object"))?;
            let quantity = quantity_of(l.get("quantity"), &format!("lines[{k}].quantity"))?;
            Ok(OrderLine {
                product_id: id_of(l.get("product_id"), &format!("lines[{k}].product_id"))?,
                quantity,
                price: number(l.get("price"), &format!("lines[{k}].price"))?,
            })
        })
        .collect::<R<Vec<_>>>()?;
    let status = match o.get("status") {
        None | Some(Value::Null) => "completed".to_string(),
        Some(Value::String(s)) if (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_') => {
            s.to_ascii_lowercase().trim_start_matches("wc-").to_string()
        }
        Some(_) => return Err("status must be a word like processing, completed, cancelled or refunded".into()),
    };
    let modified_at = match o.get("modified_at") {
        None | Some(Value::Null) => None,
        v => Some(time_of(v, "modified_at")?),
    };
    Ok(OrderInput { id, customer_id, created_at, lines, status, modified_at })
}

pub fn event(v: &Value) -> R<EventInput> {
    let o = object(v)?;
    let customer_id = o.get("customer_id").filter(|v| !v.is_null()).map(|v| id_of(Some(v), "customer_id")).transpose()?;
    let session_id = o.get("session_id").filter(|v| !v.is_null()).map(|v| id_of(Some(v), "session_id")).transpose()?;
    if customer_id.is_none() && session_id.is_none() {
        return Err("customer_id or session_id is required".into());
    }
    let kind = match o.get("type") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') => s.clone(),
        _ => return Err("type must be view, cart, purchase, wishlist or another lower-case word (a-z, _)".into()),
    };
    Ok(EventInput { customer_id, session_id, product_id: id_of(o.get("product_id"), "product_id")?, kind, at: time_of(o.get("at"), "at")? })
}

/// The items of a batch body: `{<key>: [...]}`, a bare list, or one object.
pub fn items_of(body: Value, key: &str) -> R<Vec<Value>> {
    match body {
        Value::Object(mut o) if o.contains_key(key) => match o.remove(key) {
            Some(Value::Array(a)) => Ok(a),
            _ => Err(format!("{key} must be a list")),
        },
        Value::Array(a) => Ok(a),
        v @ Value::Object(_) => Ok(vec![v]),
        _ => Err(format!("expected {{\"{key}\": [...]}}")),
    }
}

fn strip_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn names(v: Option<&Value>) -> Vec<Value> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|c| c.get("name").and_then(Value::as_str)).map(|s| Value::from(s.trim())).filter(|s| s != "").collect())
        .unwrap_or_default()
}

/// A WooCommerce product (REST API v3 / webhook payload) as our product JSON.
pub fn woo_product(v: &Value) -> R<Value> {
    let o = object(v)?;
    let description = [o.get("short_description"), o.get("description")]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(strip_html)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let in_stock = match o.get("stock_status").and_then(Value::as_str) {
        Some("outofstock") => false,
        Some(_) => true,
        None => o.get("in_stock").and_then(Value::as_bool).unwrap_or(true),
    };
    let attributes: Map<String, Value> = o
        .get("attributes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| Some((x.get("name")?.as_str()?.to_string(), x.get("options").cloned().or_else(|| x.get("option").cloned())?)))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Map::new();
    out.insert("id".into(), o.get("id").cloned().unwrap_or(Value::Null));
    out.insert("name".into(), o.get("name").cloned().unwrap_or(Value::Null));
    if !description.is_empty() {
        out.insert("description".into(), Value::from(description.chars().take(MAX_DESCRIPTION).collect::<String>()));
    }
    out.insert("categories".into(), Value::Array(names(o.get("categories"))));
    out.insert("tags".into(), Value::Array(names(o.get("tags"))));
    let price = o.get("price").filter(|p| p.as_str() != Some("")).or_else(|| o.get("regular_price")).cloned().unwrap_or(Value::Null);
    out.insert("price".into(), price);
    out.insert("in_stock".into(), Value::Bool(in_stock));
    out.insert("attributes".into(), Value::Object(attributes));
    Ok(Value::Object(out))
}

/// A WooCommerce customer as our customer JSON. Only the id and a few non-personal attributes are
/// kept (role, paying customer, creation date): names, emails and addresses never reach warren's storage.
pub fn woo_customer(v: &Value) -> R<Value> {
    let o = object(v)?;
    let mut out = Map::new();
    out.insert("id".into(), o.get("id").cloned().unwrap_or(Value::Null));
    for k in ["role", "is_paying_customer", "date_created_gmt"] {
        if let Some(x) = o.get(k).filter(|x| !x.is_null()) {
            out.insert(k.into(), x.clone());
        }
    }
    Ok(Value::Object(out))
}

/// A WooCommerce order as our order JSON. Guest orders (`customer_id` 0) get the customer
/// `guest:<order id>`: they still teach "bought together", without storing the billing address.
pub fn woo_order(v: &Value) -> R<Value> {
    let o = object(v)?;
    let id = o.get("id").cloned().unwrap_or(Value::Null);
    let customer = match o.get("customer_id") {
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Value::from(format!("guest:{}", id_of(Some(&id), "id")?)),
        Some(Value::String(s)) if s.is_empty() || s == "0" => Value::from(format!("guest:{}", id_of(Some(&id), "id")?)),
        Some(c) => c.clone(),
        None => Value::Null,
    };
    let created = o.get("date_created_gmt").or_else(|| o.get("date_created")).cloned().unwrap_or(Value::Null);
    let lines: Vec<Value> = o
        .get("line_items")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|l| {
                    let qty = l.get("quantity").cloned().unwrap_or(Value::from(1));
                    serde_json::json!({"product_id": l.get("product_id").cloned().unwrap_or(Value::Null), "quantity": qty, "price": l.get("price").cloned().unwrap_or(Value::Null)})
                })
                .collect()
        })
        .unwrap_or_default();
    let modified = o.get("date_modified_gmt").or_else(|| o.get("date_modified")).cloned().unwrap_or(Value::Null);
    let status = o.get("status").cloned().unwrap_or(Value::Null);
    Ok(serde_json::json!({"id": id, "customer_id": customer, "created_at": created, "modified_at": modified, "status": status, "lines": lines}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn product_validation_names_the_field() {
        assert!(product(&json!({"id": 7, "name": "Mug"})).is_ok_and(|p| p.id == "7" && p.in_stock));
        assert!(product(&json!({"id": "", "name": "x"})).unwrap_err().contains("id"));
        assert!(product(&json!({"id": "a"})).unwrap_err().contains("name"));
        assert!(product(&json!({"id": "a", "name": "x", "price": -1})).unwrap_err().contains("price"));
        assert!(product(&json!({"id": "a", "name": "x", "categories": "mugs"})).unwrap_err().contains("categories"));
        assert!(product(&json!({"id": "a", "name": "x", "price": "12.50"})).is_ok_and(|p| p.price == Some(12.5)));
    }

    #[test]
    fn orders_and_times() {
        let o = order(&json!({"id": "o1", "customer_id": 5, "created_at": "2024-03-01T10:00:00Z", "lines": [{"product_id": "p", "quantity": 2}]}))
            .unwrap();
        assert_eq!((o.customer_id.as_str(), o.created_at, o.lines[0].quantity), ("5", 1709287200, 2));
        for t in [
            json!("2024-03-01T10:00:00"),
            json!("2024-03-01 10:00:00"),
            json!("2024-03-01T11:00:00+01:00"),
            json!(1709287200),
            json!("1709287200"),
            json!(1709287200000i64),
            json!(1709287200.0),
        ] {
            assert_eq!(time_of(Some(&t), "t").unwrap(), 1709287200, "{t}");
        }
        assert_eq!(time_of(Some(&json!("2024-03-01")), "t").unwrap(), 1709251200);
        assert!(time_of(Some(&json!("yesterday")), "t").is_err());
        let o =
            order(&json!({"id": 1, "customer_id": 2, "lines": [{"product_id": 3, "quantity": 2.0}, {"product_id": 4, "quantity": "3"}]})).unwrap();
        assert_eq!((o.lines[0].quantity, o.lines[1].quantity), (2, 3));
        assert_eq!(id_of(Some(&json!(42.0)), "id").unwrap(), "42");
        assert!(id_of(Some(&json!(4.5)), "id").is_err());
        assert!(order(&json!({"id": "o1", "customer_id": 5, "lines": []})).unwrap_err().contains("lines"));
        assert!(order(&json!({"id": "o1", "customer_id": 5, "lines": [{"product_id": "p", "quantity": 0}]})).unwrap_err().contains("quantity"));
        assert!(event(&json!({"product_id": "p", "type": "view"})).unwrap_err().contains("customer_id"));
    }

    #[test]
    fn woocommerce_payloads() {
        let p = woo_product(&json!({
            "id": 799, "name": "Ship Your Idea", "description": "<p>Pellentesque <b>habitant</b></p>",
            "price": "21.99", "stock_status": "outofstock",
            "categories": [{"id": 9, "name": "Clothing", "slug": "clothing"}], "tags": [],
            "attributes": [{"id": 6, "name": "Color", "options": ["Black", "Green"]}]
        }))
        .unwrap();
        let p = product(&p).unwrap();
        assert_eq!((p.id.as_str(), p.in_stock, p.price), ("799", false, Some(21.99)));
        assert_eq!(p.categories, vec!["Clothing"]);
        assert_eq!(p.description.as_deref(), Some("Pellentesque habitant"));
        let o = woo_order(&json!({"id": 727, "customer_id": 0, "date_created_gmt": "2017-03-22T16:28:08",
            "line_items": [{"product_id": 93, "quantity": 2, "price": 19.5}]}))
        .unwrap();
        let o = order(&o).unwrap();
        assert_eq!((o.customer_id.as_str(), o.lines[0].product_id.as_str()), ("guest:727", "93"));
    }
}
