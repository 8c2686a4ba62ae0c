//! Tenant export and import time for a tenant of about MB megabytes (issue 15; see docs/BENCHMARKS.md).
//!
//! `export_bench [MB=100] [ROUNDS=3]`: makes a tenant with warren's own `create_tenant` in a temporary
//! data dir, fills its database to MB megabytes with documents as the server stores them (4 KiB of
//! content, 4 chunks with a 384-float embedding each), and then, in every round, side by side:
//! - **warren export**: `Operator::export_tenant` + `Export::write_to` a file (the snapshot, the JSON
//!   Lines of every table, checksums, tar + zstd -3), what `warren tenant export` does;
//! - **warren import** of that archive under a new slug (verify, install, rebuild the search index);
//! - **peer**: the same database with stock tools, `sqlite3 .backup` then `tar` piped to `zstd -3`,
//!   which makes a snapshot archive with no JSON Lines, no checksums and no verification.
//!
//! Prints seconds per step and archive sizes per round, and the medians.

use std::process::Command;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rusqlite::{params, Connection};
use warren::auth::AdminProof;
use warren::config::Config;
use warren::services::tenants::CreateTenant;
use warren::services::{Actor, Operator};

fn text(rng: &mut impl Rng, bytes: usize) -> String {
    const WORDS: &[&str] = &["kettle", "order", "garden", "invoice", "shipping", "teapot", "refund", "customer", "support", "ticket"];
    let mut s = String::with_capacity(bytes + 16);
    while s.len() < bytes {
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        s.push(' ');
    }
    s
}

fn fill(db: &std::path::Path, mb: u64) -> anyhow::Result<usize> {
    let c = Connection::open(db)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let mut n = 0;
    while std::fs::metadata(db)?.len() + std::fs::metadata(format!("{}-wal", db.display())).map(|m| m.len()).unwrap_or(0) < mb << 20 {
        c.execute_batch("BEGIN")?;
        for _ in 0..200 {
            let content = text(&mut rng, 4096);
            let path = format!("docs/d{n:06}.md");
            c.execute(
                "INSERT INTO documents(id, path, content, content_sha256, tokens, chunk_count, created_at, updated_at)
                 VALUES (?1, ?1, ?2, 'x', 1000, 4, '2026-12-01T00:00:00Z', '2026-12-01T00:00:00Z')",
                params![path, content],
            )?;
            let seq = c.last_insert_rowid();
            for ord in 0..4 {
                let vector: Vec<u8> = (0..384 * 4).map(|_| rng.random()).collect();
                c.execute(
                    "INSERT INTO chunks(doc_seq, ord, start_byte, end_byte, text, model_tokens, llm_tokens) VALUES (?1, ?2, 0, 1024, ?3, 250, 250)",
                    params![seq, ord as i64, &content[ord * 1024..(ord + 1) * 1024]],
                )?;
                c.execute(
                    "INSERT INTO chunk_embeddings(chunk_id, doc_seq, dim, vector) VALUES (?1, ?2, 384, ?3)",
                    params![c.last_insert_rowid(), seq, vector],
                )?;
            }
            n += 1;
        }
        c.execute_batch("COMMIT")?;
    }
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    Ok(n)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mb: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let rounds: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut config = Config::for_tests(&data);
    config.model_dir = data.join("no-model");
    let ops = Operator::offline(&config, Actor::Cli).await?;
    let proof = AdminProof::local_operator();
    let created = ops
        .create_tenant(CreateTenant {
            slug: "big".into(),
            name: "Big".into(),
            email: "ops@big.test".into(),
            tier: warren::control::Tier::Pro,
            status: None,
            trial_days: None,
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = data.join(&created.tenant.id).join("tenant.db");
    let docs = fill(&db, mb)?;
    let db_bytes = std::fs::metadata(&db)?.len();
    println!("tenant: {docs} documents, tenant.db {:.1} MiB", db_bytes as f64 / 1048576.0);
    println!("round  warren_export_s  archive_MiB  warren_import_s  peer_backup+tar+zstd_s  peer_archive_MiB");
    let (mut ex, mut im, mut peer) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let out = dir.path().join(format!("big-{r}.warren.tar.zst"));
        let t0 = Instant::now();
        let export = ops.export_tenant(&proof, "big").await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let f = std::io::BufWriter::new(std::fs::File::create(&out)?);
        let f = export.write_to(f, &mut |_| {}).map_err(|e| anyhow::anyhow!("{e}"))?;
        f.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?.sync_all()?;
        drop(export);
        let e = t0.elapsed().as_secs_f64();
        let size = std::fs::metadata(&out)?.len();

        let t1 = Instant::now();
        let imported = ops.import_tenant(&proof, &out, Some(format!("copy-{r}"))).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let i = t1.elapsed().as_secs_f64();
        assert_eq!(imported.counts.get("documents").copied(), Some(docs as u64));

        let snap = dir.path().join(format!("peer-{r}.db"));
        let peer_out = dir.path().join(format!("peer-{r}.tar.zst"));
        let t2 = Instant::now();
        let ok = Command::new("sqlite3").arg(&db).arg(format!(".backup '{}'", snap.display())).status()?.success();
        anyhow::ensure!(ok, "sqlite3 .backup failed");
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C '{}' -cf - '{}' | zstd -3 -q -o '{}'",
                dir.path().display(),
                snap.file_name().unwrap().to_string_lossy(),
                peer_out.display()
            ))
            .status()?
            .success();
        anyhow::ensure!(ok, "tar | zstd failed");
        let p = t2.elapsed().as_secs_f64();
        let peer_size = std::fs::metadata(&peer_out)?.len();
        println!("{r:5}  {e:15.2}  {:11.1}  {i:15.2}  {p:22.2}  {:16.1}", size as f64 / 1048576.0, peer_size as f64 / 1048576.0);
        for f in [out, snap, peer_out] {
            let _ = std::fs::remove_file(f);
        }
        ex.push(e);
        im.push(i);
        peer.push(p);
    }
    println!(
        "median: warren export {:.2} s ({:.0} MiB/s of tenant.db), warren import {:.2} s, peer {:.2} s",
        median(ex.clone()),
        db_bytes as f64 / 1048576.0 / median(ex),
        median(im),
        median(peer)
    );
    Ok(())
}
