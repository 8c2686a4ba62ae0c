//! Recommendations over HTTP: commerce ingest, idempotent orders, per-item validation, gating and
//! limits, training, cold start, filters, model swap under load and persistence across restarts.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

/// Short debounce so trainings follow writes quickly in tests.
fn quick(c: &mut warren::config::Config) {
    c.recs.debounce_ms = 100;
    c.recs.max_delay_secs = 2;
}

async fn post(app: &TestApp, key: &str, path: &str, body: Value) -> Value {
    let r = send(app.api(Method::POST, path, key).json(&body)).await;
    assert!(r.status().is_success(), "POST {path}: {}", r.status());
    json_of(r).await
}

async fn get(app: &TestApp, key: &str, path: &str) -> Value {
    let r = send(app.api(Method::GET, path, key)).await;
    assert_eq!(r.status(), 200, "GET {path}");
    json_of(r).await
}

fn ids(v: &Value) -> Vec<String> {
    v["results"].as_array().expect("results").iter().map(|r| r["product_id"].as_str().unwrap().to_string()).collect()
}

fn reasons(v: &Value) -> Vec<String> {
    v["results"].as_array().expect("results").iter().map(|r| r["reason"].as_str().unwrap().to_string()).collect()
}

/// Waits until a model of at least `version` is in and nothing is pending.
async fn trained(app: &TestApp, key: &str, version: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = get(app, key, "/recommendations/status").await;
        if s["model_version"].as_u64().unwrap_or(0) >= version && s["training"] == false && s["pending_changes"] == false {
            return s;
        }
        assert!(Instant::now() < deadline, "no model v{version} in time: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two product families; customers buy within one family. `a*` are kitchen, `b*` are garden.
async fn seed_store(app: &TestApp, key: &str) {
    let mut products = Vec::new();
    for k in 1..=5 {
        products.push(json!({"id": format!("a{k}"), "name": format!("Kitchen knife model {k}"), "categories": ["Kitchen"], "price": 10 + k}));
        products.push(json!({"id": format!("b{k}"), "name": format!("Garden hose type {k}"), "categories": ["Garden"], "price": 20 + k}));
    }
    post(app, key, "/products", json!({"products": products})).await;
    let mut orders = Vec::new();
    for u in 0..24 {
        let fam = if u % 2 == 0 { "a" } else { "b" };
        // Each customer buys three of the five products of their family, at increasing times.
        for (n, k) in [(u % 5) + 1, ((u + 1) % 5) + 1, ((u + 2) % 5) + 1].into_iter().enumerate() {
            orders.push(json!({"id": format!("o{u}-{n}"), "customer_id": format!("c{u}"),
                "created_at": 1_700_000_000 + u * 1000 + n as i64 * 10, "lines": [{"product_id": format!("{fam}{k}")}]}));
        }
    }
    let v = post(app, key, "/orders", json!({"orders": orders})).await;
    assert_eq!(v["failed"], 0, "{v}");
}

#[tokio::test]
async fn ingest_validates_each_item_and_orders_are_idempotent() {
    let app = spawn_with(quick).await;
    let t = app.create_tenant("shop", "starter").await;
    let v = post(
        &app,
        &t.key,
        "/products",
        json!({"products": [
            {"id": "p1", "name": "Blue mug", "categories": ["Kitchen"], "price": 9.5, "currency": "eur", "attributes": {"color": "blue"}},
            {"id": "p2"},
            {"id": 3, "name": "Red mug", "price": "-2"},
            "not an object",
            {"id": 4, "name": "Green mug", "in_stock": false}
        ]}),
    )
    .await;
    let st: Vec<&str> = v["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(st, ["created", "error", "error", "error", "created"], "{v}");
    assert_eq!((v["succeeded"].as_u64(), v["failed"].as_u64()), (Some(2), Some(3)));
    assert!(v["results"][1]["error"]["message"].as_str().unwrap().contains("name"), "{v}");
    assert!(v["results"][2]["error"]["message"].as_str().unwrap().contains("price"), "{v}");
    // Upsert again: updated; GET shows it; DELETE removes it.
    let v = post(&app, &t.key, "/products", json!({"products": [{"id": "p1", "name": "Blue mug XL", "categories": ["Kitchen"]}]})).await;
    assert_eq!(v["results"][0]["status"], "updated");
    let p = get(&app, &t.key, "/products/p1").await;
    assert_eq!((p["name"].as_str(), p["currency"].as_str(), p["in_stock"].as_bool()), (Some("Blue mug XL"), None, Some(true)));
    assert_eq!(get(&app, &t.key, "/products/4").await["in_stock"], false);

    // Orders: idempotent on the id; unknown products recorded and reported.
    let order = json!({"id": "o1", "customer_id": "c1", "created_at": "2025-01-02T03:04:05Z",
        "lines": [{"product_id": "p1", "quantity": 2, "price": 9.5}, {"product_id": "ghost"}]});
    let r = send(app.api(Method::POST, "/orders", &t.key).json(&order)).await;
    assert_eq!(r.status(), 201);
    let v = json_of(r).await;
    assert_eq!((v["status"].as_str(), v["unknown_products"].clone()), (Some("created"), json!(["ghost"])));
    let r = send(app.api(Method::POST, "/orders", &t.key).json(&order)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["status"], "duplicate");
    // A bad order in a batch fails alone.
    let v = post(
        &app,
        &t.key,
        "/orders",
        json!({"orders": [order.clone(), {"id": "o2", "customer_id": "c1", "lines": []},
        {"id": "o3", "customer_id": "c2", "lines": [{"product_id": "4"}]}]}),
    )
    .await;
    let st: Vec<&str> = v["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(st, ["duplicate", "error", "created"], "{v}");
    expect_error(
        send(app.api(Method::POST, "/orders", &t.key).json(&json!({"id": "o9", "customer_id": "c", "lines": "x"}))).await,
        400,
        "validation_failed",
    )
    .await;

    // Customers and events.
    let v = post(&app, &t.key, "/customers", json!({"customers": [{"id": "c1", "segment": "vip"}, {"name": "no id"}]})).await;
    assert_eq!((v["succeeded"].as_u64(), v["failed"].as_u64()), (Some(1), Some(1)));
    let v = post(
        &app,
        &t.key,
        "/events",
        json!({"events": [
            {"customer_id": "c1", "product_id": "p1", "type": "view", "at": 1_735_000_000},
            {"session_id": "s1", "product_id": "p1", "type": "cart"},
            {"product_id": "p1", "type": "view"},
            {"customer_id": "c1", "product_id": "p1", "type": "Bad Type"}
        ]}),
    )
    .await;
    assert_eq!((v["succeeded"].as_u64(), v["failed"].as_u64()), (Some(2), Some(2)), "{v}");

    // The status reports data counts and the unknown product; once it exists it is resolved.
    let s = trained(&app, &t.key, 1).await;
    assert_eq!((s["data"]["orders"].as_u64(), s["data"]["products"].as_u64(), s["data"]["events"].as_u64()), (Some(2), Some(2), Some(2)), "{s}");
    assert_eq!(s["unknown_products"], json!(["ghost"]));
    post(&app, &t.key, "/products", json!({"products": [{"id": "ghost", "name": "Ghost mug"}]})).await;
    assert_eq!(get(&app, &t.key, "/recommendations/status").await["unknown_products"], json!([]));

    assert_eq!(send(app.api(Method::DELETE, "/products/p1", &t.key)).await.status(), 204);
    expect_error(send(app.api(Method::GET, "/products/p1", &t.key)).await, 404, "product_not_found").await;
    expect_error(send(app.api(Method::DELETE, "/products/p1", &t.key)).await, 404, "product_not_found").await;
    app.stop().await;
}

#[tokio::test]
async fn woocommerce_payloads_are_accepted_as_is() {
    let app = spawn_with(quick).await;
    let t = app.create_tenant("woo", "starter").await;
    let product = json!({"id": 799, "name": "Ship Your Idea", "type": "variable", "status": "publish",
        "description": "<p>Pellentesque habitant morbi tristique.</p>", "short_description": "<p>Short</p>",
        "price": "21.99", "regular_price": "", "stock_status": "outofstock",
        "categories": [{"id": 9, "name": "Clothing", "slug": "clothing"}, {"id": 14, "name": "T-shirts", "slug": "t-shirts"}],
        "tags": [{"id": 3, "name": "cotton"}], "images": [], "attributes": [{"id": 6, "name": "Color", "position": 0, "visible": false, "variation": true, "options": ["Black", "Green"]}]});
    let r = send(app.api(Method::POST, "/integrations/woocommerce/products", &t.key).json(&product)).await;
    assert_eq!(r.status(), 201);
    let p = get(&app, &t.key, "/products/799").await;
    assert_eq!((p["price"].as_f64(), p["in_stock"].as_bool()), (Some(21.99), Some(false)));
    assert_eq!(p["categories"], json!(["Clothing", "T-shirts"]));
    assert_eq!(p["attributes"]["Color"], json!(["Black", "Green"]));
    assert!(!p["description"].as_str().unwrap().contains('<'));
    let order = json!({"id": 727, "parent_id": 0, "status": "processing", "currency": "USD", "customer_id": 0,
        "date_created": "2017-03-22T16:28:02", "date_created_gmt": "2017-03-22T19:28:02",
        "billing": {"first_name": "John", "email": "john.doe@example.com"},
        "line_items": [{"id": 315, "name": "Woo Single #1", "product_id": 799, "variation_id": 0, "quantity": 2, "subtotal": "6.00", "price": 3},
                       {"id": 316, "name": "Gone", "product_id": 93, "variation_id": 0, "quantity": 1, "price": 5}]});
    let r = send(app.api(Method::POST, "/integrations/woocommerce/orders", &t.key).json(&json!([order]))).await;
    let v = json_of(r).await;
    assert_eq!((v["results"][0]["status"].as_str(), v["unknown_products"].clone()), (Some("created"), json!(["93"])), "{v}");
    // The billing address is not stored anywhere: guest orders get a synthetic customer.
    let s = trained(&app, &t.key, 1).await;
    assert_eq!(s["data"]["customers"], 0);
    app.stop().await;
}

/// WooCommerce's order lifecycle: only processing and completed orders are purchases; an update with a
/// newer `date_modified` applies (a refund retracts the purchase), a redelivery changes nothing.
#[tokio::test]
async fn woocommerce_refunds_and_cancellations_retract_purchases() {
    let app = spawn_with(quick).await;
    let t = app.create_tenant("woo-life", "starter").await;
    post(&app, &t.key, "/products", json!({"products": [{"id": "p1", "name": "Kettle"}, {"id": "p2", "name": "Teapot"}]})).await;
    let now = chrono::Utc::now();
    let at = |mins: i64| (now - chrono::Duration::minutes(mins)).format("%Y-%m-%dT%H:%M:%S").to_string();
    let order = |id: u64, status: &str, modified: &str, product: &str, qty: u64| {
        json!({"id": id, "status": status, "customer_id": 5, "date_created_gmt": at(60), "date_modified_gmt": modified,
               "line_items": [{"product_id": product, "quantity": qty, "price": 10}]})
    };
    let first = at(50);
    let v = post(
        &app,
        &t.key,
        "/integrations/woocommerce/orders",
        json!([order(100, "processing", &first, "p1", 3), order(101, "completed", &first, "p2", 1)]),
    )
    .await;
    assert_eq!(v["results"][0]["status"], "created", "{v}");
    let active = window_activity;
    assert_eq!(active(&get(&app, &t.key, "/recommendations/trending?window=1d").await), vec!["p1".to_string(), "p2".to_string()]);
    // The same delivery again: nothing changes.
    let v = post(&app, &t.key, "/integrations/woocommerce/orders", json!([order(100, "processing", &first, "p1", 3)])).await;
    assert_eq!(v["results"][0]["status"], "duplicate", "{v}");
    // Refunded later: the update applies and the three kettles no longer count.
    let v = post(&app, &t.key, "/integrations/woocommerce/orders", json!([order(100, "refunded", &at(10), "p1", 3)])).await;
    assert_eq!(v["results"][0]["status"], "updated", "{v}");
    let trending = active(&get(&app, &t.key, "/recommendations/trending?window=1d").await);
    assert_eq!(trending, vec!["p2".to_string()], "a refunded order is not a purchase");
    // The same once a model is trained on the data (its popularity fills below the window's activity).
    let r = send(app.api(Method::POST, "/recommendations/train", &t.key)).await;
    assert_eq!(r.status(), 202);
    trained(&app, &t.key, 1).await;
    assert_eq!(active(&get(&app, &t.key, "/recommendations/trending?window=1d").await), vec!["p2".to_string()]);
    // An older modification than the stored one is ignored (deliveries can arrive out of order).
    let v = post(&app, &t.key, "/integrations/woocommerce/orders", json!([order(100, "processing", &at(30), "p1", 3)])).await;
    assert_eq!(v["results"][0]["status"], "duplicate", "{v}");
    assert_eq!(active(&get(&app, &t.key, "/recommendations/trending?window=1d").await), vec!["p2".to_string()]);
    // A cancelled order never counts; generic orders default to completed.
    post(&app, &t.key, "/integrations/woocommerce/orders", json!([order(102, "cancelled", &first, "p1", 9)])).await;
    post(
        &app,
        &t.key,
        "/orders",
        json!({"orders": [{"id": "g1", "customer_id": "c9", "created_at": at(5), "lines": [{"product_id": "p1", "quantity": 1}]}]}),
    )
    .await;
    let v = get(&app, &t.key, "/recommendations/trending?window=1d").await;
    assert_eq!(active(&v), vec!["p1".to_string(), "p2".to_string()], "only g1 counts for p1 (tie broken by id): {v}");
    app.stop().await;
}

#[tokio::test]
async fn free_tier_is_refused_and_the_products_limit_holds() {
    let app = spawn_with(quick).await;
    let free = app.create_tenant("freebie", "free").await;
    for (m, path) in [
        (Method::GET, "/recommendations"),
        (Method::POST, "/products"),
        (Method::GET, "/recommendations/status"),
        (Method::GET, "/products/x/similar"),
    ] {
        let r = send(app.api(m, path, &free.key).json(&json!({"products": [{"id": "a", "name": "b"}]}))).await;
        let v = expect_error(r, 403, "feature_not_in_plan").await;
        assert_eq!(v["error"]["feature"], "recommendations");
    }
    let t = app.create_tenant("small", "starter").await;
    let r = send(app.admin(Method::PUT, "/tenants/small/overrides").json(&json!({"products": 3}))).await;
    assert!(r.status().is_success());
    post(&app, &t.key, "/products", json!({"products": [{"id": "1", "name": "one"}, {"id": "2", "name": "two"}]})).await;
    let r = send(app.api(Method::POST, "/products", &t.key).json(&json!({"products": [{"id": "3", "name": "three"}, {"id": "4", "name": "four"}]})))
        .await;
    let v = expect_error(r, 403, "plan_limit_reached").await;
    assert_eq!((v["error"]["limit"].as_str(), v["error"]["limit_value"].as_u64()), (Some("products"), Some(3)));
    // Updates of existing products and one more new product still pass.
    post(&app, &t.key, "/products", json!({"products": [{"id": "1", "name": "uno"}, {"id": "3", "name": "three"}]})).await;
    assert_eq!(get(&app, &t.key, "/recommendations/status").await["data"]["products"], 3);
    // Recommendation calls are metered.
    get(&app, &t.key, "/recommendations?customer_id=nobody").await;
    get(&app, &t.key, "/recommendations/trending").await;
    let u = get(&app, &t.key, "/usage").await;
    assert_eq!(u["usage"]["recommendation"]["calls"], 2, "{u}");
    app.stop().await;
}

#[tokio::test]
async fn recommendations_follow_purchases_with_filters_and_cold_start() {
    let app = spawn_with(quick).await;
    let t = app.create_tenant("garden", "starter").await;
    // Before any data: empty but valid answers.
    assert_eq!(get(&app, &t.key, "/recommendations?customer_id=c0").await["results"], json!([]));
    seed_store(&app, &t.key).await;
    let s = trained(&app, &t.key, 1).await;
    assert_eq!(s["method"], "ease", "{s}");
    assert_eq!(s["trained_on"]["users"], 24);
    assert!(s["evaluation"]["hr_at_10"].as_f64().is_some(), "evaluation figures missing: {s}");

    // c0 bought from the kitchen family: personal results are the other kitchen products, purchases excluded.
    let bought: Vec<String> = ["a1", "a2", "a3"].map(String::from).to_vec();
    let v = get(&app, &t.key, "/recommendations?customer_id=c0&limit=2").await;
    assert_eq!(ids(&v).len(), 2, "{v}");
    assert!(ids(&v).iter().all(|id| id.starts_with('a') && !bought.contains(id)), "{v}");
    assert!(reasons(&v).iter().all(|r| r == "personal"), "{v}");
    let v = get(&app, &t.key, "/recommendations?customer_id=c0&limit=10").await;
    assert!(ids(&v).iter().all(|id| !bought.contains(id)), "purchased products must be excluded: {v}");
    let v = get(&app, &t.key, "/recommendations?customer_id=c0&limit=10&exclude_purchased=false").await;
    assert!(ids(&v).iter().any(|id| bought.contains(id)), "with exclude_purchased=false purchases may return: {v}");
    // Category filter.
    let v = get(&app, &t.key, "/recommendations?customer_id=c0&limit=10&category=garden").await;
    assert!(!ids(&v).is_empty() && ids(&v).iter().all(|id| id.starts_with('b')), "{v}");

    // Stock: a4/a5 out of stock disappear unless in_stock_only=false.
    post(
        &app,
        &t.key,
        "/products",
        json!({"products": [
        {"id": "a4", "name": "Kitchen knife model 4", "categories": ["Kitchen"], "in_stock": false},
        {"id": "a5", "name": "Kitchen knife model 5", "categories": ["Kitchen"], "in_stock": false}]}),
    )
    .await;
    let v = get(&app, &t.key, "/recommendations?customer_id=c0&limit=10").await;
    assert!(!ids(&v).contains(&"a4".into()) && !ids(&v).contains(&"a5".into()), "{v}");
    let v = get(&app, &t.key, "/recommendations?customer_id=c0&limit=2&in_stock_only=false").await;
    let mut got = ids(&v);
    got.sort();
    assert_eq!(got, ["a4", "a5"], "{v}");

    // Related and cart: bought together within the family.
    let v = get(&app, &t.key, "/products/b1/related?limit=3&in_stock_only=false").await;
    assert!(ids(&v).iter().all(|id| id.starts_with('b') && id != "b1"), "{v}");
    assert_eq!(reasons(&v)[0], "bought_together", "{v}");
    let r = send(app.api(Method::POST, "/recommendations/cart", &t.key).json(&json!({"product_ids": ["b1", "b2"], "limit": 3}))).await;
    let v = json_of(r).await;
    assert!(ids(&v).iter().all(|id| id.starts_with('b') && id != "b1" && id != "b2"), "{v}");
    assert!(reasons(&v).iter().all(|r| r == "bought_together"), "{v}");
    expect_error(send(app.api(Method::GET, "/products/nope/related", &t.key)).await, 404, "product_not_found").await;
    expect_error(send(app.api(Method::GET, "/recommendations?limit=0", &t.key)).await, 400, "validation_failed").await;

    // Cold start: an unknown customer gets trending; a new product gets similar ones from day one.
    let v = get(&app, &t.key, "/recommendations?customer_id=stranger&limit=3").await;
    assert_eq!(ids(&v).len(), 3);
    assert!(reasons(&v).iter().all(|r| r == "trending"), "{v}");
    post(&app, &t.key, "/products", json!({"products": [{"id": "new", "name": "Garden hose deluxe", "categories": ["Garden"]}]})).await;
    let v = get(&app, &t.key, "/products/new/similar?limit=3").await;
    assert!(!ids(&v).is_empty() && ids(&v).iter().all(|id| id.starts_with('b')), "{v}");
    assert!(reasons(&v).iter().all(|r| r == "similar"));
    // Trending over a window with no recent activity falls back to the decayed popularity.
    let v = get(&app, &t.key, "/recommendations/trending?window=7d&limit=4").await;
    assert_eq!(ids(&v).len(), 4, "{v}");
    expect_error(send(app.api(Method::GET, "/recommendations/trending?window=7y", &t.key)).await, 400, "validation_failed").await;
    app.stop().await;
}

#[tokio::test]
async fn retraining_under_load_fails_no_request_and_the_model_survives_restart() {
    let (app, _) = spawn_state(None, quick).await;
    let t = app.create_tenant("busy", "pro").await;
    seed_store(&app, &t.key).await;
    trained(&app, &t.key, 1).await;
    // Readers call the endpoints while trainings are forced and swapped in.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut readers = Vec::new();
    // Three readers, each pausing 2 ms between calls: load enough to overlap every swap, without
    // starving the tests that run beside this one on a 2-core CI machine.
    for w in 0..3 {
        let (client, addr, key, stop, count) = (app.client.clone(), app.addr.clone(), t.key.clone(), stop.clone(), count.clone());
        readers.push(tokio::spawn(async move {
            let paths = ["/recommendations?customer_id=c1", "/products/a1/related", "/products/b2/similar", "/recommendations/trending"];
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = client.get(format!("{addr}/api/v1{}", paths[(n as usize + w) % 4])).bearer_auth(&key).send().await.expect("send");
                assert_eq!(r.status(), 200, "request failed during a model swap");
                let v: Value = r.json().await.unwrap();
                assert!(!v["results"].as_array().unwrap().is_empty(), "{v}");
                n += 1;
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        }));
    }
    // The readers are under way before the first swap.
    while count.load(std::sync::atomic::Ordering::SeqCst) < 15 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before_swaps = count.load(std::sync::atomic::Ordering::SeqCst);
    for round in 2..=4u64 {
        post(&app, &t.key, "/orders", json!({"id": format!("extra{round}"), "customer_id": "c1", "lines": [{"product_id": "b3"}]})).await;
        let r = send(app.api(Method::POST, "/recommendations/train", &t.key)).await;
        assert_eq!(r.status(), 202);
        trained(&app, &t.key, round).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for r in readers {
        total += r.await.expect("reader");
    }
    assert!(total > before_swaps, "no request overlapped the swaps");
    let before = get(&app, &t.key, "/recommendations?customer_id=c2&limit=5").await;
    let status = get(&app, &t.key, "/recommendations/status").await;

    // Restart on the same data dir: the stored model serves at once, no retraining needed.
    let TestApp { dir, shutdown, task, .. } = app;
    shutdown.cancel();
    task.expect("task").await.expect("join").expect("clean stop");
    let (app, _) = spawn_state(Some(dir), |c| {
        quick(c);
        c.recs.debounce_ms = 60_000;
        c.recs.max_delay_secs = 600;
    })
    .await;
    let s = get(&app, &t.key, "/recommendations/status").await;
    assert_eq!((s["model_version"].clone(), s["trained_at"].clone()), (status["model_version"].clone(), status["trained_at"].clone()), "{s}");
    assert_eq!((s["training"].as_bool(), s["pending_changes"].as_bool()), (Some(false), Some(false)), "{s}");
    let after = get(&app, &t.key, "/recommendations?customer_id=c2&limit=5").await;
    assert_eq!(ids(&after), ids(&before));
    assert!(reasons(&after).contains(&"personal".to_string()), "{after}");
    app.stop().await;
}

#[tokio::test]
async fn similar_products_use_the_embedding_model_when_loaded() {
    let dir = std::env::var("WARREN_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2"));
    assert!(dir.join("model.safetensors").exists(), "model missing in {}: run scripts/fetch-model.sh", dir.display());
    let app = spawn_with(|c| {
        quick(c);
        c.model_dir = dir;
    })
    .await;
    let t = app.create_tenant("semantic", "starter").await;
    // No two products share a word: only the embeddings can tell the shoes from the cakes.
    post(
        &app,
        &t.key,
        "/products",
        json!({"products": [
            {"id": "shoe", "name": "Trail running shoes"},
            {"id": "sneaker", "name": "Jogging sneakers for men"},
            {"id": "cake", "name": "Chocolate birthday cake"},
            {"id": "muffin", "name": "Blueberry muffins, six pack"},
            {"id": "drill", "name": "Cordless power drill"}
        ]}),
    )
    .await;
    let s = trained(&app, &t.key, 1).await;
    assert_eq!((s["content"].as_str(), s["data"]["products_embedded"].as_u64()), (Some("minilm"), Some(5)), "{s}");
    assert_eq!(ids(&get(&app, &t.key, "/products/shoe/similar?limit=1").await), ["sneaker"]);
    assert_eq!(ids(&get(&app, &t.key, "/products/cake/similar?limit=1").await), ["muffin"]);
    app.stop().await;
}

#[tokio::test]
async fn orders_alone_drive_recommendations_until_a_catalog_exists() {
    let app = spawn_with(quick).await;
    let t = app.create_tenant("nocat", "starter").await;
    let mut orders = Vec::new();
    for u in 0..12 {
        let fam = if u % 2 == 0 { "a" } else { "b" };
        for (n, k) in [(u % 3) + 1, ((u + 1) % 3) + 1].into_iter().enumerate() {
            orders.push(json!({"id": format!("o{u}-{n}"), "customer_id": format!("c{u}"), "created_at": 1_700_000_000 + u * 100 + n as i64,
                "lines": [{"product_id": format!("{fam}{k}")}]}));
        }
    }
    let v = post(&app, &t.key, "/orders", json!({"orders": orders})).await;
    assert_eq!(v["unknown_products"], json!(["a1", "a2", "a3", "b1", "b2", "b3"]), "{v}");
    trained(&app, &t.key, 1).await;
    // c0 bought a1 and a2: the one product left in their family comes first, known by its id only.
    let v = get(&app, &t.key, "/recommendations?customer_id=c0&limit=1").await;
    assert_eq!((ids(&v), reasons(&v)), (vec!["a3".to_string()], vec!["personal".to_string()]), "{v}");
    // The 2023 orders are outside any window: the decayed popularity fills in, with the order-only ids.
    assert_eq!(ids(&get(&app, &t.key, "/recommendations/trending?window=1d&limit=10").await).len(), 6);
    // Once a catalog exists, only its products are recommended.
    post(&app, &t.key, "/products", json!({"products": [{"id": "b1", "name": "Bee one"}]})).await;
    let v = get(&app, &t.key, "/recommendations?customer_id=c0&limit=5").await;
    assert_eq!(ids(&v), ["b1"], "{v}");
    app.stop().await;
}
