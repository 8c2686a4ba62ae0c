//! What `PRAGMA secure_delete=ON` costs on tenant writes (issue 15; see docs/BENCHMARKS.md).
//!
//! `secure_delete_bench [DOCS=2000] [ROUNDS=6]`: two tenant databases made by warren's own
//! `create_storage` (its schema and pragmas), one run with `secure_delete` OFF and one ON, rounds
//! interleaved OFF/ON in one process. Each round writes DOCS documents (4 KiB of content, 4 chunks with
//! a 384-float embedding each, as the server stores them), then replaces every other one (delete +
//! insert, what an update does) and deletes every fourth, one transaction per document, as the
//! server's writer does. Prints documents written per second and the delete share per mode, and the
//! ratio. SQLite only: the Tantivy and embedding work of a real write is the same in both modes, so
//! this is the upper bound of the slowdown a whole write sees.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rusqlite::{params, Connection};

fn text(rng: &mut impl Rng, bytes: usize) -> String {
    const WORDS: &[&str] = &["kettle", "order", "garden", "invoice", "shipping", "teapot", "refund", "customer", "support", "ticket"];
    let mut s = String::with_capacity(bytes + 16);
    while s.len() < bytes {
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        s.push(' ');
    }
    s
}

fn put(c: &mut Connection, rng: &mut impl Rng, path: &str) -> rusqlite::Result<()> {
    let tx = c.transaction()?;
    if let Ok(seq) = tx.query_row("SELECT seq FROM documents WHERE path = ?1", [path], |r| r.get::<_, i64>(0)) {
        tx.execute("DELETE FROM chunk_embeddings WHERE doc_seq = ?1", [seq])?;
        tx.execute("DELETE FROM chunks WHERE doc_seq = ?1", [seq])?;
        tx.execute("DELETE FROM documents WHERE seq = ?1", [seq])?;
    }
    let content = text(rng, 4096);
    tx.execute(
        "INSERT INTO documents(id, path, content, content_sha256, tokens, chunk_count, created_at, updated_at)
         VALUES (?1, ?1, ?2, 'x', 1000, 4, 'now', 'now')",
        params![path, content],
    )?;
    let seq = tx.last_insert_rowid();
    let vector: Vec<u8> = (0..384 * 4).map(|_| rng.random()).collect();
    for ord in 0..4 {
        tx.execute(
            "INSERT INTO chunks(doc_seq, ord, start_byte, end_byte, text, model_tokens, llm_tokens) VALUES (?1, ?2, 0, 1024, ?3, 250, 250)",
            params![seq, ord as i64, &content[ord * 1024..(ord + 1) * 1024]],
        )?;
        tx.execute(
            "INSERT INTO chunk_embeddings(chunk_id, doc_seq, dim, vector) VALUES (?1, ?2, 384, ?3)",
            params![tx.last_insert_rowid(), seq, vector],
        )?;
    }
    tx.commit()
}

fn delete(c: &mut Connection, path: &str) -> rusqlite::Result<()> {
    let tx = c.transaction()?;
    let seq: i64 = tx.query_row("SELECT seq FROM documents WHERE path = ?1", [path], |r| r.get(0))?;
    tx.execute("DELETE FROM chunk_embeddings WHERE doc_seq = ?1", [seq])?;
    tx.execute("DELETE FROM chunks WHERE doc_seq = ?1", [seq])?;
    tx.execute("DELETE FROM documents WHERE seq = ?1", [seq])?;
    tx.commit()
}

/// One round: (documents written per second over inserts + replacements, seconds spent deleting).
fn round(c: &mut Connection, round: usize, docs: usize) -> rusqlite::Result<(f64, f64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(round as u64);
    let t0 = Instant::now();
    for d in 0..docs {
        put(c, &mut rng, &format!("r{round}/d{d}"))?;
    }
    for d in (0..docs).step_by(2) {
        put(c, &mut rng, &format!("r{round}/d{d}"))?;
    }
    let written = docs + docs / 2;
    let writes = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for d in (1..docs).step_by(4) {
        delete(c, &format!("r{round}/d{d}"))?;
    }
    Ok((written as f64 / writes, t1.elapsed().as_secs_f64()))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let docs: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let rounds: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(6);
    let dir = tempfile::tempdir()?;
    let mut conns = Vec::new();
    for (mode, on) in [("off", false), ("on", true)] {
        let d = dir.path().join(mode);
        warren::tenant::create_storage(&d, mode)?;
        let c = Connection::open(d.join(warren::tenant::DB_FILE))?;
        c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")?;
        c.pragma_update(None, "secure_delete", on)?;
        let set: i64 = c.pragma_query_value(None, "secure_delete", |r| r.get(0))?;
        anyhow::ensure!(set == on as i64, "secure_delete did not take");
        conns.push((mode, c, Vec::new(), 0.0f64));
    }
    println!("secure_delete_bench: {docs} documents per round (4 KiB, 4 chunks + embeddings), {rounds} rounds per mode, interleaved, alternating which goes first");
    for r in 0..rounds {
        // Alternate which mode goes first, so neither always meets the warmer cache.
        let order: Vec<usize> = if r % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for i in order {
            let (mode, c, rates, del) = &mut conns[i];
            let (rate, d) = round(c, r, docs)?;
            println!("round {r} secure_delete={mode}: {rate:.0} documents written/s, deletes {:.2} s", d);
            rates.push(rate);
            *del += d;
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (off, on) = (median(&conns[0].2), median(&conns[1].2));
    println!("== median documents written/s: secure_delete=off {off:.0}, on {on:.0} ({:+.1}%)", (on / off - 1.0) * 100.0);
    println!("== total delete time: off {:.2} s, on {:.2} s", conns[0].3, conns[1].3);
    Ok(())
}
