//! Background document jobs: a write over `docs.job_threshold_chunks` answers 202 with a job, the job
//! runs on the bulk embedding lane, reports progress and its result, is private to its tenant, and
//! resumes after a restart.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

/// A document of about `paragraphs` chunks.
fn long_text(topic: &str, paragraphs: usize) -> String {
    (0..paragraphs)
        .map(|i| format!("Section {i} on {topic}: ") + &format!("the {topic} of part {i} is described here in some detail. ").repeat(25) + "\n\n")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_writes_become_jobs_that_report_progress_and_results() {
    let dir = model_dir();
    assert!(dir.join("model.safetensors").exists(), "model missing in {}: run scripts/fetch-model.sh", dir.display());
    let app = spawn_with(|c| {
        c.model_dir = dir;
        c.docs.job_threshold_chunks = 8;
    })
    .await;
    let a = app.create_tenant("jobs-a", "pro").await;
    let b = app.create_tenant("jobs-b", "pro").await;

    // A small document is still written within the request.
    let r = send(app.api(Method::POST, "/documents", &a.key).json(&json!({"path": "small.md", "content": "a short note about gardening"}))).await;
    assert_eq!(r.status(), 201);

    // A large one is accepted as a job.
    let content = long_text("volcanic soil chemistry", 24);
    let r = send(app.api(Method::POST, "/documents", &a.key).json(&json!({"path": "big.md", "content": content}))).await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let accepted = json_of(r).await;
    let id = accepted["id"].as_str().expect("job id").to_string();
    assert!(id.starts_with("job_"), "{accepted}");
    assert_eq!(location, format!("/api/v1/jobs/{id}"));
    assert_eq!((accepted["kind"].as_str(), accepted["documents"].as_u64()), (Some("document"), Some(1)), "{accepted}");
    let chunks = accepted["chunks"].as_u64().expect("chunks");
    assert!(chunks > 8, "{accepted}");
    assert!(matches!(accepted["status"].as_str(), Some("queued" | "running")), "{accepted}");

    // Another tenant cannot see it, whatever it knows of the id.
    expect_error(send(app.api(Method::GET, &format!("/jobs/{id}"), &b.key)).await, 404, "job_not_found").await;
    expect_error(send(app.api(Method::GET, "/jobs/job_01HZZZZZZZZZZZZZZZZZZZZZZZ", &a.key)).await, 404, "job_not_found").await;

    let done = job_finished(&app, &a.key, &location, 120).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["chunks"].as_u64(), Some(chunks), "{done}");
    assert_eq!(done["result"]["created"], true, "{done}");
    assert_eq!(done["chunks_embedded"].as_u64(), Some(chunks), "{done}");
    let listed = json_of(send(app.api(Method::GET, "/jobs", &a.key)).await).await;
    assert_eq!(listed["jobs"][0]["id"], id.as_str(), "{listed}");
    assert_eq!(json_of(send(app.api(Method::GET, "/jobs", &b.key)).await).await["jobs"], json!([]));

    // The document is searchable semantically: its chunks were embedded by the job.
    let found =
        json_of(send(app.api(Method::POST, "/search", &a.key).json(&json!({"query": "chemistry of volcanic earth", "mode": "semantic"}))).await)
            .await;
    assert_eq!(found["results"][0]["path"], "big.md", "{found}");

    // A bulk upload over the threshold is a job too; its result is the per-item answer.
    let docs: Vec<Value> = (0..3).map(|i| json!({"path": format!("bulk{i}.md"), "content": long_text("tidal energy", 5)})).collect();
    let mut with_bad = docs.clone();
    with_bad.push(json!({"path": "", "content": "no path"}));
    let r = send(app.api(Method::POST, "/documents/bulk", &a.key).json(&json!({"documents": with_bad}))).await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let done = job_finished(&app, &a.key, &location, 120).await;
    assert_eq!(done["kind"], "bulk", "{done}");
    assert_eq!((done["result"]["succeeded"].as_u64(), done["result"]["failed"].as_u64()), (Some(3), Some(1)), "{done}");
    let listed = json_of(send(app.api(Method::GET, "/documents?path_prefix=bulk", &a.key)).await).await;
    assert_eq!(listed["documents"].as_array().map(Vec::len), Some(3), "{listed}");
    app.stop().await;
}

#[tokio::test]
async fn a_job_interrupted_by_a_stop_resumes_on_start() {
    let app = spawn_app().await;
    let t = app.create_tenant("resumer", "pro").await;
    app.shutdown.cancel();
    let mut app = app;
    if let Some(task) = app.task.take() {
        task.await.expect("join").expect("stopped cleanly");
    }
    let dir = std::mem::replace(&mut app.dir, tempfile::tempdir().unwrap());
    // What a server that stopped mid-job leaves behind: the job row with its input, and the control
    // plane's note that it is pending.
    let input = json!({"path": "resumed.md", "content": "written by a job after a restart"});
    let tenant = rusqlite::Connection::open(dir.path().join(&t.id).join("tenant.db")).unwrap();
    tenant
        .execute(
            "INSERT INTO jobs (id, kind, status, input, documents, chunks, created_at, updated_at) VALUES ('job_1', 'document', 'running', ?1, 1, 1, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
            [input.to_string()],
        )
        .unwrap();
    drop(tenant);
    let control = rusqlite::Connection::open(dir.path().join("control.db")).unwrap();
    control.execute("INSERT INTO pending_jobs (tenant_id, job_id, created_at) VALUES (?1, 'job_1', '2026-01-01T00:00:00Z')", [&t.id]).unwrap();
    drop(control);

    let (app, _) = spawn_state(Some(dir), |_| {}).await;
    let done = job_finished(&app, &t.key, "/api/v1/jobs/job_1", 120).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["path"], "resumed.md", "{done}");
    let listed = json_of(send(app.api(Method::GET, "/documents?path_prefix=resumed", &t.key)).await).await;
    assert_eq!(listed["documents"].as_array().map(Vec::len), Some(1), "{listed}");
    // Once finished (the job row first, then the control plane's note), it is no longer pending: the
    // next start has nothing to resume.
    let control = rusqlite::Connection::open(app.dir.path().join("control.db")).unwrap();
    let pending = || control.query_row("SELECT count(*) FROM pending_jobs", [], |r| r.get::<_, i64>(0)).unwrap();
    for _ in 0..100 {
        if pending() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pending(), 0, "the finished job is still noted as pending");
    app.stop().await;
}
