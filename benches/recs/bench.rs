//! Recommendation benchmarks on synthetic stores (see benches/recs/run.sh and docs/BENCHMARKS.md).
//!
//! `recs_bench train N`: builds a synthetic catalog of N products and its interactions in memory and
//! runs the server's whole training step once (`warren::recs::build_model`: evaluation + model),
//! printing wall time and peak RSS (this process, `getrusage`).
//!
//! `recs_bench latency URL ADMIN_TOKEN N`: creates a tenant on a running server, loads N products and
//! synthetic orders over HTTP, trains, then times `GET /api/v1/recommendations` for random customers
//! at concurrency 1 and 8 (plus `related` and `cart` at concurrency 8).
//!
//! Synthetic data: 50 product families; each customer has a favourite family; 70 % of their picks are
//! Zipf(1.0)-distributed within it, 30 % Zipf over the whole catalog; 4-16 interactions per customer
//! over 180 days. Customers: 5 × N for N ≤ 10,000, else N.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use warren::recs::model::{Interaction, ProductRow, TrainData};

fn zipf(rng: &mut impl Rng, n: usize) -> usize {
    // Inverse-CDF sampling of Zipf(1.0) by the continuous approximation.
    let u: f64 = rng.random();
    let x = ((n as f64 + 1.0).ln() * u).exp() - 1.0;
    (x as usize).min(n - 1)
}

/// (product ids with family, interactions (customer, product index, time))
fn synth(n: usize, seed: u64) -> (Vec<(String, usize)>, Vec<(String, usize, i64)>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let families = 50;
    let products: Vec<(String, usize)> = (0..n).map(|i| (format!("p{i}"), i % families)).collect();
    let per_family: Vec<Vec<usize>> = (0..families).map(|f| (0..n).filter(|i| i % families == f).collect()).collect();
    let customers = if n <= 10_000 { 5 * n } else { n };
    let mut inter = Vec::new();
    let t0 = 1_700_000_000i64;
    for c in 0..customers {
        let fav = rng.random_range(0..families);
        let k = rng.random_range(4..=16);
        for _ in 0..k {
            let item = if rng.random_bool(0.7) {
                let fam = &per_family[fav];
                fam[zipf(&mut rng, fam.len())]
            } else {
                zipf(&mut rng, n)
            };
            inter.push((format!("c{c}"), item, t0 + rng.random_range(0..180 * 86400)));
        }
    }
    (products, inter)
}

fn peak_rss_mib() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_maxrss as f64 / 1024.0
}

fn train(n: usize) {
    let (products, inter) = synth(n, 42);
    let data = TrainData {
        products: products
            .iter()
            .map(|(id, fam)| ProductRow { id: id.clone(), words: vec![format!("family{fam}"), "product".into()], embedding: None })
            .collect(),
        interactions: inter
            .iter()
            .map(|(c, i, t)| Interaction { user: c.clone(), product: products[*i].0.clone(), weight: 1.0, at: *t, purchase: true })
            .collect(),
    };
    let before = peak_rss_mib();
    let params = warren::config::RecsConfig::default().params();
    let started = Instant::now();
    let model = warren::recs::build_model(&data, &params, 1, 0).expect("train");
    let secs = started.elapsed().as_secs_f64();
    let i = &model.info;
    println!(
        "| {n} | {} | {} | {} | {} | {:.2} s | {:.0} MiB | {:.0} MiB | {:.3} |",
        i.counts.users,
        i.counts.interactions,
        i.counts.products_with_interactions,
        i.method,
        secs,
        before,
        peak_rss_mib(),
        i.evaluation.as_ref().map_or(f64::NAN, |e| e.hr_at_10),
    );
}

async fn call(client: &reqwest::Client, method: reqwest::Method, url: String, key: &str, body: Option<Value>) -> Value {
    let mut rb = client.request(method, url).bearer_auth(key);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("send");
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.expect("json")
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn latency(base: &str, admin: &str, n: usize) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");
    let slug = format!("lat{}", std::process::id());
    let t = call(
        &client,
        reqwest::Method::POST,
        format!("{base}/admin/v1/tenants"),
        admin,
        Some(json!({"slug": slug, "name": "bench", "email": "b@bench.test", "tier": "enterprise"})),
    )
    .await;
    let key = t["api_key"].as_str().expect("key").to_string();
    let (products, inter) = synth(n, 7);
    let started = Instant::now();
    for chunk in products.chunks(1000) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|(id, fam)| json!({"id": id, "name": format!("Product {id} of family {fam}"), "categories": [format!("family{fam}")]}))
            .collect();
        call(&client, reqwest::Method::POST, format!("{base}/api/v1/products"), &key, Some(json!({"products": items}))).await;
    }
    let orders: Vec<Value> = inter
        .iter()
        .enumerate()
        .map(|(k, (c, i, t))| json!({"id": format!("o{k}"), "customer_id": c, "created_at": t, "lines": [{"product_id": products[*i].0}]}))
        .collect();
    for chunk in orders.chunks(1000) {
        call(&client, reqwest::Method::POST, format!("{base}/api/v1/orders"), &key, Some(json!({"orders": chunk}))).await;
    }
    eprintln!("loaded {} products, {} orders in {:.1}s", products.len(), orders.len(), started.elapsed().as_secs_f64());
    call(&client, reqwest::Method::POST, format!("{base}/api/v1/recommendations/train"), &key, None).await;
    let status = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = call(&client, reqwest::Method::GET, format!("{base}/api/v1/recommendations/status"), &key, None).await;
        if s["training"] == false && s["pending_changes"] == false && s["model_version"].as_u64() > Some(0) {
            break s;
        }
    };
    eprintln!("model: {}", status);
    let customers = if n <= 10_000 { 5 * n } else { n };
    for (what, conc) in [("recommendations", 1), ("recommendations", 8), ("related", 8), ("cart", 8)] {
        let per = 2000 / conc;
        let mut tasks = Vec::new();
        for w in 0..conc {
            let (client, base, key) = (client.clone(), base.to_string(), key.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
                let mut lat = Vec::with_capacity(per);
                for k in 0..per + 20 {
                    let (m, url, body) = match what {
                        "recommendations" => (
                            reqwest::Method::GET,
                            format!("{base}/api/v1/recommendations?customer_id=c{}&limit=10", rng.random_range(0..customers)),
                            None,
                        ),
                        "related" => (reqwest::Method::GET, format!("{base}/api/v1/products/p{}/related?limit=10", rng.random_range(0..n)), None),
                        _ => (
                            reqwest::Method::POST,
                            format!("{base}/api/v1/recommendations/cart"),
                            Some(json!({"product_ids": [format!("p{}", rng.random_range(0..n)), format!("p{}", rng.random_range(0..n))]})),
                        ),
                    };
                    let t = Instant::now();
                    let v = call(&client, m, url, &key, body).await;
                    assert!(v["results"].is_array());
                    if k >= 20 {
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                lat
            }));
        }
        let wall = Instant::now();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        let rps = all.len() as f64 / wall.elapsed().as_secs_f64();
        println!("| {what} | {conc} | {} | {:.2} ms | {:.2} ms | {:.0} |", all.len(), pct(&mut all, 0.5), pct(&mut all, 0.99), rps);
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("train") => train(args[2].parse().expect("N")),
        Some("latency") => latency(&args[2], &args[3], args[4].parse().expect("N")).await,
        _ => eprintln!("usage: recs_bench train N | latency URL ADMIN_TOKEN N"),
    }
}
