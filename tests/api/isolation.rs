//! The isolation matrix (issue 12): every operation of the OpenAPI document and every MCP tool, called
//! with every kind of credential an attacker tenant holds and every host form, aimed at the victim
//! tenant's ids. Generated from the live spec and tool list, so a new route or tool is covered without
//! anyone adding it here. Oracle: no answer carries the victim's secret marker, nothing of the victim
//! changes, and admin routes refuse every tenant credential.

use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::ai::{mcp_post, open_session};
use crate::helpers::*;

const MARK: &str = "zqvictimsecret7731";
const JWT_SECRET: &str = "an-isolation-test-secret-0123456789";

/// The victim's ids: what an attacker would aim at.
struct Ids {
    doc: String,
    product: String,
    customer: String,
    job: String,
    key: String,
    tenant: String,
}

impl Ids {
    fn all(&self) -> Vec<&str> {
        vec![&self.doc, &self.product, &self.customer, &self.job, &self.key, &self.tenant, "victim"]
    }

    /// A value for a field or parameter called `name` that points at the victim where it can.
    fn string_for(&self, name: &str) -> Value {
        let n = name.to_ascii_lowercase();
        let s = match n.as_str() {
            "path" | "path_prefix" | "prefix" => "attack.md",
            "query" | "q" => "victim secret zq",
            "content" | "text" => "attacker text",
            "slug" | "tenant" => "victim",
            _ if n.contains("product") => &self.product,
            _ if n.contains("customer") || n.contains("user") => &self.customer,
            _ if n.contains("job") => &self.job,
            _ if n.contains("key") => &self.key,
            _ if n.contains("tenant") => &self.tenant,
            _ if n.contains("id") || n.contains("document") => &self.doc,
            _ if n.ends_with("_at") || n.contains("time") || n.contains("date") => "2026-01-01T00:00:00Z",
            _ => "x",
        };
        Value::String(s.to_string())
    }
}

fn resolve<'a>(doc: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, &doc["components"]["schemas"][r.rsplit('/').next().unwrap_or_default()]),
        None => s,
    }
}

/// A value shaped by a JSON schema (OpenAPI or an MCP tool's input schema), aimed at the victim.
fn example(doc: &Value, s: &Value, name: &str, ids: &Ids, depth: usize) -> Value {
    let s = resolve(doc, s);
    if depth > 6 {
        return Value::Null;
    }
    if let Some(parts) = s["allOf"].as_array() {
        let mut m = Map::new();
        for p in parts {
            if let Value::Object(o) = example(doc, p, name, ids, depth + 1) {
                m.extend(o);
            }
        }
        return Value::Object(m);
    }
    for k in ["oneOf", "anyOf"] {
        if let Some(v) = s[k].as_array().and_then(|a| a.iter().find(|v| resolve(doc, v)["type"] != "null")) {
            return example(doc, v, name, ids, depth + 1);
        }
    }
    if let Some(first) = s["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    let ty = match &s["type"] {
        Value::String(t) => t.clone(),
        Value::Array(a) => a.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("string").to_string(),
        _ if s.get("properties").is_some() => "object".into(),
        _ => "string".into(),
    };
    match ty.as_str() {
        "object" => {
            let mut m = Map::new();
            let required: Vec<&str> = s["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            if let Some(props) = s["properties"].as_object() {
                // The required fields, and every optional one that names something (an id to aim at).
                for (k, sub) in props.iter().filter(|(k, _)| required.contains(&k.as_str()) || k.ends_with("id") || k.ends_with("ids")) {
                    m.insert(k.clone(), example(doc, sub, k, ids, depth + 1));
                }
            }
            Value::Object(m)
        }
        "array" => json!([example(doc, &s["items"], name, ids, depth + 1)]),
        "integer" if name.contains("tokens") => json!(2000),
        "integer" => json!(1),
        "number" => json!(1.0),
        "boolean" => json!(false),
        _ => ids.string_for(name),
    }
}

/// Every `(method, path)` of the spec with the victim's ids substituted (each id for each parameter),
/// required query parameters filled, and a body built from the request schema.
fn attempts(spec: &Value, ids: &Ids) -> Vec<(Method, String, Option<Value>)> {
    let mut out = Vec::new();
    let order = ["get", "post", "put", "patch", "delete"];
    for m in order {
        for (path, item) in spec["paths"].as_object().expect("paths") {
            let Some(op) = item.get(m) else { continue };
            let params: Vec<&Value> = op["parameters"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
            let mut query = Vec::new();
            for p in &params {
                let name = p["name"].as_str().unwrap_or_default();
                if p["in"] == "query" && (p["required"] == true || name.ends_with("id")) {
                    query.push(format!("{name}={}", ids.string_for(name).as_str().unwrap_or("x")));
                }
            }
            let body =
                op["requestBody"]["content"]["application/json"]["schema"].as_object().map(|s| example(spec, &Value::Object(s.clone()), "", ids, 0));
            // Substitute every path parameter with every victim id.
            let mut urls = vec![path.clone()];
            while let Some(u) = urls.iter().find(|u| u.contains('{')).cloned() {
                urls.retain(|x| x != &u);
                let (start, end) = (u.find('{').unwrap(), u.find('}').unwrap());
                for id in ids.all() {
                    urls.push(format!("{}{}{}", &u[..start], id, &u[end + 1..]));
                }
            }
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap();
            for u in urls {
                let u = if query.is_empty() { u } else { format!("{u}?{}", query.join("&")) };
                out.push((method.clone(), u, body.clone()));
            }
        }
    }
    out
}

fn jwt(tenant: &str, secret: &str) -> String {
    let claims = json!({"tenant": tenant, "exp": chrono::Utc::now().timestamp() + 600, "scopes": ["read", "write", "admin"]});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// The victim's state as its own key sees it.
async fn victim_state(app: &TestApp, key: &str, ids: &Ids) -> Vec<String> {
    let mut out = Vec::new();
    for path in ["/documents", &format!("/documents/{}", ids.doc), &format!("/products/{}", ids.product), &format!("/jobs/{}", ids.job), "/tenant"] {
        let r = send(app.api(Method::GET, path, key)).await;
        let status = r.status();
        let mut v: Value = r.json().await.unwrap_or(Value::Null);
        // Usage and rate-limit fields move with every call, and the trainer embeds products in the
        // background (`embedded`); the data must not move.
        for k in ["usage", "rate_limit", "updated_at", "embedded"] {
            if let Some(o) = v.as_object_mut() {
                o.remove(k);
            }
        }
        out.push(format!("{path} {status} {v}"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_credential_or_host_form_reaches_another_tenant() {
    let model = model_dir();
    assert!(model.join("model.safetensors").exists(), "model missing in {}: run scripts/fetch-model.sh", model.display());
    let app = spawn_with(|c| {
        c.model_dir = model;
        c.jwt.hs256_secret = Some(JWT_SECRET.into());
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.docs.job_threshold_chunks = 2;
    })
    .await;
    let victim = app.create_tenant("victim", "enterprise").await;
    let attacker = app.create_tenant("attacker", "enterprise").await;

    // The victim's data, each piece carrying the marker.
    let r = send(
        app.api(Method::POST, "/documents", &victim.key)
            .json(&json!({"path": "secret.md", "title": MARK, "content": format!("victim secret zq {MARK}"), "metadata": {"tag": MARK}})),
    )
    .await;
    assert_eq!(r.status(), 201);
    let doc = json_of(r).await["id"].as_str().unwrap().to_string();
    let r = send(
        app.api(Method::POST, "/products", &victim.key)
            .json(&json!({"products": [{"id": "p-victim", "name": format!("{MARK} lamp"), "categories": [MARK]}]})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = send(app.api(Method::POST, "/customers", &victim.key).json(&json!({"customers": [{"id": "c-victim", "segment": MARK}]}))).await;
    assert_eq!(r.status(), 200);
    let r = send(
        app.api(Method::POST, "/orders", &victim.key)
            .json(&json!({"orders": [{"id": "o-victim", "customer_id": "c-victim", "lines": [{"product_id": "p-victim"}]}]})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let long: String = (0..6).map(|i| format!("Part {i}: victim secret zq {MARK}. ").repeat(40) + "\n\n").collect();
    let r = send(app.api(Method::POST, "/documents", &victim.key).json(&json!({"path": "long.md", "content": long}))).await;
    assert_eq!(r.status(), 202, "the long document is a job");
    let job = json_of(r).await["id"].as_str().unwrap().to_string();
    let ids = Ids { doc, product: "p-victim".into(), customer: "c-victim".into(), job, key: victim.key_id.clone(), tenant: victim.id.clone() };
    // The job finishes before the matrix, so its result is part of the victim's state (up to 5
    // minutes on a loaded machine: the work is real).
    let done = job_finished(&app, &victim.key, &format!("/api/v1/jobs/{}", ids.job), 300).await;
    assert_eq!(done["status"], "succeeded", "the victim's job: {done}");
    let before = victim_state(&app, &victim.key, &ids).await;
    assert!(before.iter().any(|s| s.contains(MARK)), "the victim's own key sees its data: {before:?}");

    // The attacker's credentials.
    let r = send(app.admin(Method::POST, "/tenants/attacker/keys").json(&json!({"name": "ro", "scopes": ["read"]}))).await;
    let read_key = json_of(r).await["api_key"].as_str().unwrap().to_string();
    let creds: Vec<(&str, Option<String>)> = vec![
        ("attacker key", Some(attacker.key.clone())),
        ("attacker read key", Some(read_key)),
        ("attacker jwt", Some(jwt("attacker", JWT_SECRET))),
        ("jwt naming the victim, wrong secret", Some(jwt("victim", "not-the-secret-at-all-0123456789"))),
        ("jwt naming the victim's id, wrong secret", Some(jwt(&victim.id, "not-the-secret-at-all-0123456789"))),
        ("victim key prefix with a forged secret", Some(format!("{}XXXXXXXX", &victim.key[..victim.key.len().min(16)]))),
        ("none", None),
    ];
    let hosts: Vec<(&str, Option<(&str, String)>)> = vec![
        ("apex", None),
        ("victim subdomain", Some(("host", "victim.localhost".to_string()))),
        ("victim X-Tenant-Domain", Some(("x-tenant-domain", "victim.localhost".to_string()))),
        ("victim id as subdomain", Some(("host", format!("{}.localhost", victim.id)))),
    ];

    let spec = json_of(send(app.req(Method::GET, "/openapi.json")).await).await;
    let calls = attempts(&spec, &ids);
    assert!(calls.len() > 100, "the spec lists the routes: {}", calls.len());
    let (mut tried, mut leaks, mut admin_open, mut server_errors) = (0usize, Vec::new(), Vec::new(), Vec::new());
    for (method, path, body) in &calls {
        for (cname, cred) in &creds {
            for (hname, host) in &hosts {
                let mut rb = app.req(method.clone(), path);
                if let Some(c) = cred {
                    rb = rb.bearer_auth(c);
                }
                if let Some((h, v)) = host {
                    rb = rb.header(*h, v);
                }
                if let Some(b) = body {
                    rb = rb.json(b);
                }
                let r = send(rb).await;
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                tried += 1;
                let what = format!("{method} {path} [{cname}, {hname}] → {status}");
                if text.contains(MARK) {
                    leaks.push(format!("{what}: {text:.300}"));
                }
                if path.starts_with("/admin/") && status < 400 {
                    admin_open.push(what.clone());
                }
                if status >= 500 && status != 503 {
                    server_errors.push(format!("{what}: {text:.200}"));
                }
            }
        }
    }

    // MCP: every tool the attacker's key may list, called with arguments aimed at the victim.
    let sid = open_session(&app, &attacker.key).await;
    let (_, _, listed) = mcp_post(&app, &attacker.key, Some(&sid), json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}), &[]).await;
    let tools = listed["result"]["tools"].as_array().cloned().unwrap_or_default();
    assert!(tools.len() >= 4, "the attacker's key lists tools: {listed}");
    for (i, tool) in tools.iter().enumerate() {
        let args = example(&Value::Null, &tool["inputSchema"], "", &ids, 0);
        let msg = json!({"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call", "params": {"name": tool["name"], "arguments": args}});
        let (status, _, v) = mcp_post(&app, &attacker.key, Some(&sid), msg, &[]).await;
        tried += 1;
        if v.to_string().contains(MARK) {
            leaks.push(format!("MCP {} → {status}: {v:.300}", tool["name"]));
        }
        for uri in [format!("warren://documents/{}", ids.doc), "warren://documents/secret.md".to_string()] {
            let msg = json!({"jsonrpc": "2.0", "id": 100 + i, "method": "resources/read", "params": {"uri": uri}});
            let (_, _, v) = mcp_post(&app, &attacker.key, Some(&sid), msg, &[]).await;
            tried += 1;
            if v.to_string().contains(MARK) {
                leaks.push(format!("MCP resources/read {uri}: {v:.300}"));
            }
        }
    }
    // An MCP session opened on the victim's host with the attacker's key is refused.
    let (status, _, _) = mcp_post(&app, &attacker.key, None, crate::ai::init_msg(), &[("host", "victim.localhost")]).await;
    tried += 1;
    assert!(status == 403 || status == 404, "MCP on the victim's host with the attacker's key: {status}");

    eprintln!("isolation matrix: {tried} attempts, {} leaks", leaks.len());
    assert!(leaks.is_empty(), "{} of {tried} attempts leaked the victim's data:\n{}", leaks.len(), leaks.join("\n"));
    assert!(admin_open.is_empty(), "admin routes accepted tenant credentials:\n{}", admin_open.join("\n"));
    assert!(server_errors.is_empty(), "attempts answered 5xx:\n{}", server_errors.join("\n"));
    let after = victim_state(&app, &victim.key, &ids).await;
    let changed: Vec<(&String, &String)> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
    assert!(changed.is_empty(), "the matrix changed the victim's data (before, after): {changed:#?}");

    // Control: the same generated reads with the victim's own key do reach the marked data, so the
    // calls above were real requests that would have shown a leak.
    let mut reached = std::collections::BTreeSet::new();
    for (method, path, body) in calls.iter().filter(|(m, p, _)| *m == Method::GET || p.contains("search") || p.contains("assemble")) {
        if path.starts_with("/admin/") {
            continue;
        }
        let mut rb = app.req(method.clone(), path).bearer_auth(&victim.key);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        if send(rb).await.text().await.unwrap_or_default().contains(MARK) {
            reached.insert(path.split('?').next().unwrap_or_default().to_string());
        }
    }
    assert!(reached.len() >= 5, "the generated reads reach the victim's data with its own key only on {reached:?}");
    app.stop().await;
}
