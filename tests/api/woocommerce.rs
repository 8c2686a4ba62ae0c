//! WooCommerce webhooks as WooCommerce delivers them: the fixtures in `tests/fixtures/woocommerce`
//! are the REST API v3 resources it sends, signed the way it signs (base64 HMAC-SHA256 of the raw
//! body with the webhook's secret, computed here independently of warren's code).

use base64::Engine;
use hmac::Mac;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

pub(crate) const SECRET: &str = "wc-secret with spaces & symbols!";

pub(crate) fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/woocommerce").join(name);
    serde_json::from_slice(&std::fs::read(&path).expect("fixture")).expect("fixture json")
}

pub(crate) fn sign(body: &[u8], secret: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// One delivery: topic, body, signature (None: unsigned) and delivery id.
async fn deliver(app: &TestApp, path: &str, topic: &str, body: &Value, signature: Option<String>, delivery: &str) -> reqwest::Response {
    let raw = serde_json::to_vec_pretty(body).unwrap();
    let (resource, event) = topic.split_once('.').unwrap();
    let mut rb = app
        .req(Method::POST, path)
        .header("content-type", "application/json")
        .header("user-agent", "WooCommerce/8.9.1 Hookshot (WordPress/6.5.3)")
        .header("x-wc-webhook-source", "https://shop.example.com/")
        .header("x-wc-webhook-topic", topic)
        .header("x-wc-webhook-resource", resource)
        .header("x-wc-webhook-event", event)
        .header("x-wc-webhook-id", "12")
        .header("x-wc-webhook-delivery-id", delivery);
    if let Some(s) = signature {
        rb = rb.header("x-wc-webhook-signature", s);
    }
    send(rb.body(raw)).await
}

async fn signed(app: &TestApp, topic: &str, body: &Value, delivery: &str) -> Value {
    let sig = sign(&serde_json::to_vec_pretty(body).unwrap(), SECRET);
    let r = deliver(app, "/webhooks/woocommerce/shop", topic, body, Some(sig), delivery).await;
    assert_eq!(r.status(), 200, "{topic}");
    json_of(r).await
}

async fn get(app: &TestApp, key: &str, path: &str) -> (u16, Value) {
    let r = send(app.api(Method::GET, path, key)).await;
    (r.status().as_u16(), json_of(r).await)
}

/// The products with purchases in the last day (trending's activity part, above the model's fill).
async fn bought_today(app: &TestApp, key: &str) -> Vec<String> {
    let (s, v) = get(app, key, "/recommendations/trending?window=1d&in_stock_only=false").await;
    assert_eq!(s, 200, "{v}");
    window_activity(&v)
}

fn grep_dir(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    for e in walk(dir) {
        if std::fs::read(&e).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
            hits.push(e);
        }
    }
    hits
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn woocommerce_webhooks_apply_once_and_only_when_signed() {
    let app = spawn_with(|c| {
        c.recs.debounce_ms = 100;
        c.recs.max_delay_secs = 2;
    })
    .await;
    let t = app.create_tenant("shop", "starter").await;
    let product = fixture("product.json");

    // WooCommerce pings the delivery URL when the webhook is saved: form-encoded and unsigned.
    let r =
        send(app.req(Method::POST, "/webhooks/woocommerce/shop").header("content-type", "application/x-www-form-urlencoded").body("webhook_id=12"))
            .await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["status"], "pong");

    // No secret set yet: a delivery cannot be verified and changes nothing.
    let r = deliver(&app, "/webhooks/woocommerce/shop", "product.created", &product, Some(sign(b"x", SECRET)), "d-0").await;
    let e = expect_error(r, 401, "webhook_signature_invalid").await;
    assert!(e["error"]["message"].as_str().unwrap().contains("/integrations/woocommerce"), "{e}");

    let r = send(app.admin(Method::PUT, "/tenants/shop/integrations/woocommerce").json(&json!({"webhook_secret": SECRET}))).await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert!(v["delivery_url"].as_str().unwrap().ends_with("/webhooks/woocommerce/shop"), "{v}");
    assert!(!v.to_string().contains(SECRET), "the secret is never echoed");
    let r = send(app.admin(Method::PUT, "/tenants/shop/integrations/woocommerce").json(&json!({"webhook_secret": ""}))).await;
    expect_error(r, 400, "validation_failed").await;
    let audit = json_of(send(app.admin(Method::GET, "/tenants/shop/audit")).await).await;
    assert!(audit.to_string().contains("integration.set") && !audit.to_string().contains(SECRET), "{audit}");

    // Signed with another secret, or not signed: 401, nothing stored.
    let r = deliver(
        &app,
        "/webhooks/woocommerce/shop",
        "product.created",
        &product,
        Some(sign(&serde_json::to_vec_pretty(&product).unwrap(), "other")),
        "d-1",
    )
    .await;
    expect_error(r, 401, "webhook_signature_invalid").await;
    let r = deliver(&app, "/webhooks/woocommerce/shop", "product.created", &product, None, "d-2").await;
    expect_error(r, 401, "webhook_signature_invalid").await;
    // A body changed after signing is refused too.
    let sig = sign(&serde_json::to_vec_pretty(&product).unwrap(), SECRET);
    let mut tampered = product.clone();
    tampered["price"] = json!("0.01");
    let r = deliver(&app, "/webhooks/woocommerce/shop", "product.created", &tampered, Some(sig), "d-3").await;
    expect_error(r, 401, "webhook_signature_invalid").await;
    assert_eq!(get(&app, &t.key, "/products/794").await.0, 404);

    // Signed: applied.
    let v = signed(&app, "product.created", &product, "d-10").await;
    assert_eq!((v["status"].as_str(), v["result"].as_str(), v["id"].as_str()), (Some("applied"), Some("created"), Some("794")), "{v}");
    let (_, p) = get(&app, &t.key, "/products/794").await;
    assert_eq!((p["name"].as_str(), p["price"].as_f64(), p["in_stock"].as_bool()), (Some("Premium Quality"), Some(21.99), Some(true)), "{p}");

    // The host form reaches the same tenant (a deployment with a subdomain per tenant).
    let mut renamed = product.clone();
    renamed["name"] = json!("Premium Quality Tee");
    let body = serde_json::to_vec(&renamed).unwrap();
    let r = send(
        app.req(Method::POST, "/webhooks/woocommerce")
            .header("host", "shop.localhost")
            .header("content-type", "application/json")
            .header("x-wc-webhook-topic", "product.updated")
            .header("x-wc-webhook-delivery-id", "d-11")
            .header("x-wc-webhook-signature", sign(&body, SECRET))
            .body(body),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(get(&app, &t.key, "/products/794").await.1["name"], "Premium Quality Tee");

    // An order in processing is a purchase; the customer keeps no name, email or address.
    let now = chrono::Utc::now();
    let at = |mins: i64| (now - chrono::Duration::minutes(mins)).format("%Y-%m-%dT%H:%M:%S").to_string();
    let mut order = fixture("order.json");
    order["date_created_gmt"] = json!(at(60));
    order["date_modified_gmt"] = json!(at(50));
    let v = signed(&app, "order.created", &order, "d-20").await;
    assert_eq!(v["result"], "created", "{v}");
    let v = signed(&app, "customer.created", &fixture("customer.json"), "d-21").await;
    assert_eq!(v["result"], "created", "{v}");
    assert!(bought_today(&app, &t.key).await.contains(&"794".to_string()));

    // A redelivery (same delivery id) changes nothing, even when its body differs.
    let mut refunded = order.clone();
    refunded["status"] = json!("refunded");
    refunded["date_modified_gmt"] = json!(at(10));
    let v = signed(&app, "order.updated", &refunded, "d-20").await;
    assert_eq!(v["status"], "duplicate", "{v}");
    assert!(bought_today(&app, &t.key).await.contains(&"794".to_string()));

    // The refund, delivered: the purchase is retracted. Delivered again: nothing changes.
    let v = signed(&app, "order.updated", &refunded, "d-22").await;
    assert_eq!((v["status"].as_str(), v["result"].as_str()), (Some("applied"), Some("updated")), "{v}");
    assert!(bought_today(&app, &t.key).await.is_empty(), "a refunded order is not a purchase");
    let v = signed(&app, "order.updated", &refunded, "d-22").await;
    assert_eq!(v["status"], "duplicate");

    // Stock changes and deletes apply.
    let mut out = renamed.clone();
    out["stock_status"] = json!("outofstock");
    out["manage_stock"] = json!(true);
    out["stock_quantity"] = json!(0);
    signed(&app, "product.updated", &out, "d-30").await;
    assert_eq!(get(&app, &t.key, "/products/794").await.1["in_stock"], false);
    let usage = get(&app, &t.key, "/usage").await.1;
    assert_eq!(usage["usage"]["products"], 1, "{usage}");
    let limit = usage["limits"]["products"].as_f64().expect("starter has a products limit");
    assert_eq!(usage["percent_used"]["products"].as_f64(), Some((1000.0 / limit).round() / 10.0), "{usage}");
    let v = signed(&app, "product.deleted", &json!({"id": 794}), "d-31").await;
    assert_eq!(v["result"], "deleted", "{v}");
    assert_eq!(get(&app, &t.key, "/products/794").await.0, 404);
    let v = signed(&app, "product.deleted", &json!({"id": 794}), "d-32").await;
    assert_eq!(v["result"], "absent");
    assert_eq!(get(&app, &t.key, "/usage").await.1["usage"]["products"], 0);

    // Topics warren does not use are acknowledged (WooCommerce disables a webhook that keeps failing).
    let v = signed(&app, "coupon.created", &json!({"id": 1, "code": "10off"}), "d-40").await;
    assert_eq!(v["status"], "ignored");
    // A signed delivery that is not JSON is a clear 400.
    let r = send(
        app.req(Method::POST, "/webhooks/woocommerce/shop")
            .header("x-wc-webhook-topic", "product.updated")
            .header("x-wc-webhook-signature", sign(b"{not json", SECRET))
            .body("{not json"),
    )
    .await;
    expect_error(r, 400, "invalid_json").await;
    // Another tenant's host and this tenant's path disagree.
    app.create_tenant("other", "starter").await;
    let r = send(
        app.req(Method::POST, "/webhooks/woocommerce/shop")
            .header("host", "other.localhost")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("webhook_id=1"),
    )
    .await;
    expect_error(r, 403, "tenant_mismatch").await;
    let r = send(app.req(Method::POST, "/webhooks/woocommerce/nobody").body("webhook_id=1")).await;
    expect_error(r, 404, "tenant_not_found").await;

    // Sync totals: the onboarding progress knows the store's own count.
    signed(&app, "product.created", &product, "d-50").await;
    let r = send(app.api(Method::PUT, "/integrations/woocommerce/totals", &t.key).json(&json!({"products": 100, "orders": 40}))).await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(
        (v["products"]["synced"].as_u64(), v["products"]["total"].as_u64(), v["products"]["percent"].as_f64()),
        (Some(1), Some(100), Some(1.0)),
        "{v}"
    );
    assert_eq!(v["customers"]["total"], Value::Null);
    let (_, s) = get(&app, &t.key, "/recommendations/status").await;
    assert_eq!(s["sync"]["orders"]["total"], 40, "{s}");
    let r = send(app.api(Method::PUT, "/integrations/woocommerce/totals", &t.key).json(&json!({"products": -1}))).await;
    assert!(r.status().is_client_error());

    // Nothing personal from the payloads reached the data dir (SQLite files, WAL, index).
    for needle in [&b"john.doe@example.com"[..], b"969 Market", b"(555) 555-5555"] {
        assert!(grep_dir(app.dir.path(), needle).is_empty(), "{:?} stored", String::from_utf8_lossy(needle));
    }
    app.stop().await;
}
