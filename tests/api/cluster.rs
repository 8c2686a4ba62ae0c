//! Several warren nodes on one PostgreSQL control plane (issue 17, first part): tenants, keys and
//! usage are shared, and usage totals over all nodes equal the calls made, exactly.

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::Value;

use super::helpers::{ServerProcess, ADMIN};
use super::pg::Postgres;

async fn get(client: &Client, node: &ServerProcess, path: &str, key: &str) -> StatusCode {
    client.get(format!("{}{path}", node.addr)).bearer_auth(key).send().await.expect("request").status()
}

async fn slugs(client: &Client, node: &ServerProcess) -> Vec<String> {
    let v: Value = client.get(format!("{}/admin/v1/tenants", node.addr)).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    let mut s: Vec<String> = v["tenants"].as_array().expect("tenants").iter().map(|t| t["slug"].as_str().unwrap().to_string()).collect();
    s.sort();
    s
}

#[tokio::test]
async fn nodes_share_a_postgres_control_plane_and_count_usage_exactly() {
    let pg = Postgres::start().await;
    let url = pg.database("cluster").await;
    let env = [("WARREN_CONTROL_URL", url.clone()), ("WARREN_USAGE_FLUSH_INTERVAL_MS", "100".to_string())];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = ServerProcess::start(dir_a.path(), &env).await;
    let mut b = ServerProcess::start(dir_b.path(), &env).await;
    assert!(!dir_a.path().join("control.db").exists(), "with control.url set there is no control.db");
    let client = Client::new();

    // One set of tenants: created on either node, seen by both, slugs unique across them.
    let (_, key_a) = a.create_tenant_key("north", "starter").await;
    let created_b = b.create_tenant("south", "starter").await;
    let (_, key_b) = super::helpers::id_and_key(&created_b);
    assert_eq!(slugs(&client, &a).await, ["north", "south"]);
    assert_eq!(slugs(&client, &b).await, ["north", "south"]);
    let dup = client
        .post(format!("{}/admin/v1/tenants", b.addr))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"slug": "north", "name": "n", "email": "ops@n.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), StatusCode::CONFLICT, "a slug taken on another node");

    // Calls on both nodes, each to its own tenant.
    let (n_a, mut n_b) = (23u64, 17u64);
    for _ in 0..n_a {
        assert_eq!(get(&client, &a, "/api/v1/tenant", &key_a).await, StatusCode::OK);
    }
    for _ in 0..n_b {
        assert_eq!(get(&client, &b, "/api/v1/tenant", &key_b).await, StatusCode::OK);
    }

    // A key revoked through node A stops working on node B: B drops its credential cache when the
    // shared control plane's version moves.
    let key_id = created_b["key"]["id"].as_str().expect("key id").to_string();
    let r = client.delete(format!("{}/admin/v1/tenants/south/keys/{key_id}", a.addr)).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match get(&client, &b, "/api/v1/tenant", &key_b).await {
            StatusCode::OK => n_b += 1,
            StatusCode::UNAUTHORIZED => break,
            other => panic!("unexpected {other}"),
        }
        assert!(Instant::now() < deadline, "node B still accepts a key revoked through node A");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Node B stops (its last flush); node A's usage export then sums both nodes' calls exactly.
    assert!(b.terminate().success());
    let period = chrono::Utc::now().format("%Y-%m").to_string();
    let v: Value = client.get(format!("{}/admin/v1/usage?period={period}", a.addr)).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    let calls = |v: &Value, slug: &str| v["tenants"].as_array().unwrap().iter().find(|r| r["slug"] == slug).expect(slug)["api_calls"].as_u64();
    assert_eq!((calls(&v, "north"), calls(&v, "south")), (Some(n_a), Some(n_b)), "{v}");

    // And with every node stopped, the CLI reads the same totals from PostgreSQL.
    assert!(a.terminate().success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["usage", "export", "--period", &period, "--format", "json"])
        .env("WARREN_CONTROL_URL", &url)
        .env("WARREN_DATA_DIR", dir_a.path())
        .output()
        .expect("warren usage export");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((calls(&v, "north"), calls(&v, "south")), (Some(n_a), Some(n_b)), "{v}");
}

async fn cluster_view(client: &Client, node: &ServerProcess) -> Value {
    client.get(format!("{}/admin/v1/cluster", node.addr)).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap()
}

/// Polls `node`'s cluster view until `ok` holds (heartbeats are real time), at most 15 s.
async fn cluster_until(client: &Client, node: &ServerProcess, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = cluster_view(client, node).await;
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn live(v: &Value) -> Vec<String> {
    v["nodes"].as_array().unwrap().iter().filter(|n| n["live"] == true).map(|n| n["id"].as_str().unwrap().to_string()).collect()
}

fn preferred(v: &Value, id: &str) -> u64 {
    v["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).map_or(0, |n| n["preferred_tenants"].as_u64().unwrap())
}

/// Nodes named by WARREN_NODE_ID and WARREN_NODE_URL register and heartbeat in PostgreSQL; the
/// cluster view lists them with the tenants the rendezvous hash gives each, and a node killed with
/// `kill -9` stops being live (by PostgreSQL's clock) and is given no tenant.
#[tokio::test]
async fn nodes_register_heartbeat_and_share_the_tenants() {
    let pg = Postgres::start().await;
    let url = pg.database("members").await;
    let client = Client::new();
    let mut dirs = Vec::new();
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        let port = super::helpers::free_port();
        let dir = tempfile::tempdir().unwrap();
        let env = [
            ("WARREN_CONTROL_URL", url.clone()),
            ("WARREN_LISTEN", format!("127.0.0.1:{port}")),
            ("WARREN_NODE_URL", format!("http://127.0.0.1:{port}")),
            ("WARREN_NODE_ID", name.to_string()),
            ("WARREN_CLUSTER__HEARTBEAT_MS", "200".to_string()),
            ("WARREN_CLUSTER__NODE_TIMEOUT_MS", "1000".to_string()),
        ];
        nodes.push(ServerProcess::start(dir.path(), &env).await);
        dirs.push(dir);
    }
    for i in 0..60 {
        nodes[i % 3].create_tenant(&format!("shop{i:02}"), "free").await;
    }
    let v = cluster_until(&client, &nodes[1], "three live nodes", |v| live(v).len() == 3).await;
    assert_eq!((v["node"].as_str(), v["control_plane"].as_str(), v["tenants"].as_u64()), (Some("n2"), Some("postgres"), Some(60)));
    let counts: Vec<u64> = ["n1", "n2", "n3"].iter().map(|n| preferred(&v, n)).collect();
    assert_eq!(counts.iter().sum::<u64>(), 60, "{v}");
    assert!(counts.iter().all(|&c| c >= 8), "every node is preferred for some tenants: {counts:?}");

    // n3 dies: it stops being live and the others are preferred for all 60.
    nodes[2].kill9();
    let v = cluster_until(&client, &nodes[0], "n3 no longer live", |v| live(v) == ["n1", "n2"]).await;
    assert_eq!(preferred(&v, "n3"), 0);
    assert_eq!(preferred(&v, "n1") + preferred(&v, "n2"), 60, "{v}");
    // n1 and n2 keep the tenants they had: only n3's moved.
    assert!(preferred(&v, "n1") >= counts[0] && preferred(&v, "n2") >= counts[1], "{v}");
}
