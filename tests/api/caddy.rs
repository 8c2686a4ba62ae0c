//! A real Caddy (the repository's own Caddyfile) on loopback in front of warren: wildcard
//! subdomains route to the right tenants, cross-tenant keys are refused through it, and on-demand TLS
//! is granted only for names warren approves.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

pub(crate) struct Caddy(Child);

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `curl` over HTTPS to Caddy, resolving `host` to loopback. Returns (status, body) or None if TLS failed.
pub(crate) fn curl(host: &str, port: u16, path: &str, key: &str) -> Option<(u16, Value)> {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "20", "-w", "\n%{http_code}", "--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg(format!("https://{host}:{port}{path}"))
        .args(["-H", &format!("X-API-Key: {key}")])
        .output()
        .expect("curl must be installed");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    Some((code.trim().parse().expect("status"), serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// Runs the real Caddy with the repository's `caddyfile` (a path under the repository) and `envs`,
/// its state in `home`; answers it and its HTTPS port once it listens.
pub(crate) async fn start(caddyfile: &str, envs: &[(&str, String)], home: &std::path::Path) -> (Caddy, u16) {
    let (http_port, https_port) = (free_port(), free_port());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(caddyfile);
    let mut cmd = Command::new("caddy");
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("CADDY_HTTP_PORT", http_port.to_string())
        .env("CADDY_HTTPS_PORT", https_port.to_string())
        .env("CADDY_ADMIN", "off")
        .env("XDG_DATA_HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .env("HOME", home)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let caddy = Caddy(cmd.spawn().expect("caddy must be installed (scripts/test.sh installs it)"));
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", https_port)).is_ok() {
            return (caddy, https_port);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("caddy did not listen on {https_port}");
}

#[tokio::test]
async fn caddy_routes_subdomains_to_tenants() {
    let app = spawn_with(|c| c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let acme = app.create_tenant("acme", "free").await;
    let globex = app.create_tenant("globex", "free").await;
    let home = tempfile::tempdir().unwrap();
    let (_caddy, https_port) =
        start("Caddyfile", &[("WARREN_BASE_DOMAIN", "localhost".into()), ("WARREN_UPSTREAM", format!("127.0.0.1:{}", app.port))], home.path()).await;

    let (acme_key, globex_key) = (acme.key.clone(), globex.key.clone());
    let results = tokio::task::spawn_blocking(move || {
        (
            curl("acme.localhost", https_port, "/api/v1/tenant", &acme_key),
            curl("globex.localhost", https_port, "/api/v1/tenant", &globex_key),
            curl("acme.localhost", https_port, "/api/v1/tenant", &globex_key),
            curl("nosuch.localhost", https_port, "/api/v1/tenant", &acme_key),
        )
    })
    .await
    .unwrap();
    let (s, v) = results.0.expect("TLS to acme.localhost");
    assert_eq!((s, v["slug"].as_str()), (200, Some("acme")));
    let (s, v) = results.1.expect("TLS to globex.localhost");
    assert_eq!((s, v["slug"].as_str()), (200, Some("globex")));
    let (s, v) = results.2.expect("TLS to acme.localhost");
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("tenant_mismatch")), "cross-tenant key through Caddy");
    assert!(results.3.is_none(), "Caddy must not get a certificate for a name warren does not approve");
    // Warren saw the requests through Caddy: the direct path still works too.
    assert_eq!(send(app.api(Method::GET, "/tenant", &acme.key)).await.status(), 200);
    app.stop().await;
}
