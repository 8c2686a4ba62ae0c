//! `TestApp`: the real server on 127.0.0.1:0 with a fresh temp data dir, driven over HTTP.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use warren::config::Config;

pub const ADMIN: &str = "test-admin-token-0123456789";

/// Taken by the tests that start several servers and peers at once (the cluster tests, the crash
/// test), so that no two of them load the machine together.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct TestApp {
    pub addr: String,
    pub port: u16,
    pub client: Client,
    pub dir: tempfile::TempDir,
    pub shutdown: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub struct Tenant {
    pub id: String,
    pub key: String,
    pub key_id: String,
}

/// The model the test command fetched (scripts/fetch-model.sh); tests needing it fail without it.
pub fn model_dir() -> std::path::PathBuf {
    std::env::var("WARREN_MODEL_DIR").map(Into::into).unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2"))
}

/// A config for tests: loopback port 0, a known admin token, no embedding model unless asked.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::for_tests(dir);
    c.admin_token = Some(ADMIN.into());
    c.model_dir = dir.join("no-model");
    c
}

pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_state(None, tweak).await.0
}

/// Like `spawn_with`, also returning the app state (its clock and plans) and optionally reusing a data dir.
pub async fn spawn_state(dir: Option<tempfile::TempDir>, tweak: impl FnOnce(&mut Config)) -> (TestApp, warren::state::AppState) {
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().expect("tempdir"));
    let mut config = test_config(dir.path());
    tweak(&mut config);
    let app = warren::App::build(config).await.expect("build app");
    let state = app.state().clone();
    let port = app.port();
    let shutdown = app.shutdown_token();
    let task = tokio::spawn(app.run_until_stopped());
    let test = TestApp {
        addr: format!("http://127.0.0.1:{port}"),
        port,
        client: Client::builder().timeout(Duration::from_secs(60)).build().expect("client"),
        dir,
        shutdown,
        task: Some(task),
    };
    (test, state)
}

impl TestApp {
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{}", self.addr, path))
    }

    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.req(method, &format!("/admin/v1{path}")).bearer_auth(ADMIN)
    }

    pub fn api(&self, method: Method, path: &str, key: &str) -> RequestBuilder {
        self.req(method, &format!("/api/v1{path}")).bearer_auth(key)
    }

    pub async fn create_tenant(&self, slug: &str, tier: &str) -> Tenant {
        let r = self
            .admin(Method::POST, "/tenants")
            .json(&json!({"slug": slug, "name": format!("{slug} Inc"), "email": format!("ops@{slug}.test"), "tier": tier}))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::CREATED, "create {slug}");
        let v: Value = r.json().await.expect("json");
        Tenant {
            id: v["tenant"]["id"].as_str().expect("id").into(),
            key: v["api_key"].as_str().expect("key").into(),
            key_id: v["key"]["id"].as_str().expect("key id").into(),
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.expect("join").expect("server stopped cleanly");
        }
    }
}

/// Asserts the status and the stable error code of a JSON error response; returns the body.
pub async fn expect_error(r: Response, status: u16, code: &str) -> Value {
    let got = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(got, status, "status for expected {code}; body: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("error body is not JSON: {text}"));
    assert_eq!(v["error"]["code"], code, "body: {v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "message missing: {v}");
    v
}

/// The `warren` binary as a child process with its own data dir (for signals and kill -9).
pub struct ServerProcess {
    pub child: Child,
    pub addr: String,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl ServerProcess {
    /// Starts the real binary on port 0 and reads the address it bound from `<data dir>/warren.addr`
    /// (never a port that was probed free and might be taken again before the server binds it).
    pub async fn start(data_dir: &Path, envs: &[(&str, String)]) -> ServerProcess {
        let addr_file = data_dir.join("warren.addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
        cmd.arg("serve")
            .env("WARREN_LISTEN", "127.0.0.1:0")
            .env("WARREN_DATA_DIR", data_dir)
            .env("WARREN_ADMIN_TOKEN", ADMIN)
            .env("WARREN_MODEL_DIR", data_dir.join("no-model"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn warren");
        let client = Client::new();
        for _ in 0..400 {
            if let Some(status) = child.try_wait().expect("wait") {
                panic!("warren exited at start-up: {status}");
            }
            if let Ok(bound) = std::fs::read_to_string(&addr_file) {
                let addr = format!("http://{}", bound.trim());
                if client.get(format!("{addr}/health")).send().await.is_ok() {
                    return ServerProcess { child, addr };
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("warren did not start (no {} or no answer)", addr_file.display());
    }

    /// Creates a tenant through the admin API; returns the 201 body (`tenant`, `api_key`, ...).
    pub async fn create_tenant(&self, slug: &str, tier: &str) -> Value {
        let r = Client::new()
            .post(format!("{}/admin/v1/tenants", self.addr))
            .bearer_auth(ADMIN)
            .json(&json!({"slug": slug, "name": slug, "email": format!("ops@{slug}.test"), "tier": tier}))
            .send()
            .await
            .expect("create tenant");
        assert_eq!(r.status(), StatusCode::CREATED, "create {slug}");
        r.json().await.expect("json")
    }

    /// Creates a tenant through the admin API; returns its id and API key.
    pub async fn create_tenant_key(&self, slug: &str, tier: &str) -> (String, String) {
        id_and_key(&self.create_tenant(slug, tier).await)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.pid() as i32, libc::SIGTERM);
        }
        self.child.wait().expect("wait")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn send(rb: RequestBuilder) -> Response {
    rb.send().await.expect("request failed")
}

pub async fn json_of(r: Response) -> Value {
    let status = r.status();
    let text = r.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
}

#[allow(dead_code)]
pub fn method(m: &str) -> Method {
    Method::from_bytes(m.as_bytes()).expect("method")
}

/// The test virtualenv's python (scripts/test-venv.sh creates it on first use, installing
/// tests/python/requirements.txt). Panics with the script's output if the install fails: a test that
/// needs a real peer installs it, it never skips.
pub fn test_python() -> std::path::PathBuf {
    static PY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PY.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(root.join("scripts/test-venv.sh")).output().expect("run scripts/test-venv.sh");
        assert!(out.status.success(), "scripts/test-venv.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));
        std::path::PathBuf::from(String::from_utf8(out.stdout).expect("utf8").trim())
    })
    .clone()
}

pub fn python_script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(name)
}

/// Runs a tests/python script with the test venv; panics with its output unless it exits 0.
pub async fn run_python(script: &str, args: Vec<String>) -> String {
    let py = test_python();
    let script = python_script(script);
    let out = tokio::task::spawn_blocking(move || Command::new(py).arg(&script).args(&args).output().expect("run python")).await.expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}", out.status);
    stdout
}

/// Orders of 12 customers, each buying two products of one family (`a1`..`a4` for even customers,
/// `b1`..`b4` for odd ones): enough co-purchases for a trained model to tell the families apart.
pub fn two_family_orders() -> Vec<Value> {
    let mut orders = Vec::new();
    for u in 0..12i64 {
        let fam = if u % 2 == 0 { "a" } else { "b" };
        for (n, k) in [(u % 4) + 1, ((u + 1) % 4) + 1].into_iter().enumerate() {
            orders.push(json!({"id": format!("o{u}-{n}"), "customer_id": format!("c{u}"),
                "created_at": 1_700_000_000 + u * 1000 + n as i64 * 10, "lines": [{"product_id": format!("{fam}{k}")}]}));
        }
    }
    orders
}

/// The products of a trending answer that had activity in its window. Trending ranks window
/// activity first (normalised to the top, 1.0) and fills below it (at most 0.01) from the model's
/// popularity; only the activity part shows what counts as a purchase.
pub fn window_activity(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["score"].as_f64().unwrap() > 0.05)
        .map(|r| r["product_id"].as_str().unwrap().to_string())
        .collect()
}

/// Polls a job until it has finished (the work is real, so this waits for it, not for a clock).
pub async fn job_finished(app: &TestApp, key: &str, location: &str, secs: u64) -> Value {
    let path = location.strip_prefix("/api/v1").expect("a job location under /api/v1");
    for _ in 0..secs * 10 {
        let v = json_of(send(app.api(Method::GET, path, key)).await).await;
        match v["status"].as_str() {
            Some("queued" | "running") => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => return v,
        }
    }
    panic!("job {location} did not finish in {secs} s");
}

/// Every file and directory under `root` (directories that cannot be read, or do not exist yet, are skipped).
pub fn walk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// The tenant id and API key of a tenant-creation answer.
pub fn id_and_key(created: &Value) -> (String, String) {
    (created["tenant"]["id"].as_str().expect("tenant id").to_string(), created["api_key"].as_str().expect("api key").to_string())
}
