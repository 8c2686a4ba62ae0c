//! The tenant database schema, owned by the storage layer: one migration per version, applied in
//! order and counted by `PRAGMA user_version`.

/// v1: tenant metadata (the id this file belongs to, guarding against misplaced files).
pub const META: &str = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);";

/// Idempotent DDL for the tenant database (register it as a tenant migration).
///
/// - `documents.seq` is the compact integer key used by the index and the vector cache; `id` (a
///   ULID) is the public id and is kept when a document is replaced through its path.
/// - `chunks.id` is `AUTOINCREMENT`, so a chunk id is never reused: a stale index entry can only
///   point at a missing row (and is then dropped), never at someone else's text.
/// - `chunk_embeddings.vector` is `dim` little-endian f32s, L2-normalised.
/// - `search_state` holds a generation number bumped by every write; the Tantivy index stores the
///   generation it reflects in its commit payload, so a stale index is detected on open.
pub const DOCUMENTS: &str = r#"
CREATE TABLE IF NOT EXISTS documents (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    path         TEXT NOT NULL UNIQUE,
    title        TEXT,
    content      TEXT NOT NULL,
    metadata     TEXT NOT NULL DEFAULT '{}',
    content_sha256 TEXT NOT NULL,
    tokens       INTEGER NOT NULL,
    chunk_count  INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_seq      INTEGER NOT NULL,
    ord          INTEGER NOT NULL,
    start_byte   INTEGER NOT NULL,
    end_byte     INTEGER NOT NULL,
    heading_path TEXT NOT NULL DEFAULT '[]',
    prefix       TEXT NOT NULL DEFAULT '',
    text         TEXT NOT NULL,
    model_tokens INTEGER NOT NULL,
    llm_tokens   INTEGER NOT NULL,
    UNIQUE (doc_seq, ord)
);
CREATE TABLE IF NOT EXISTS chunk_embeddings (
    chunk_id     INTEGER PRIMARY KEY,
    doc_seq      INTEGER NOT NULL,
    dim          INTEGER NOT NULL,
    vector       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunk_embeddings_doc ON chunk_embeddings (doc_seq);
CREATE TABLE IF NOT EXISTS search_state (
    key          TEXT PRIMARY KEY,
    value        INTEGER NOT NULL
);
INSERT OR IGNORE INTO search_state (key, value) VALUES ('generation', 0);
"#;

/// Tenant migration v3.
pub const COMMERCE: &str = r#"
CREATE TABLE IF NOT EXISTS products (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT,
    categories  TEXT NOT NULL DEFAULT '[]',
    tags        TEXT NOT NULL DEFAULT '[]',
    price       REAL,
    currency    TEXT,
    in_stock    INTEGER NOT NULL DEFAULT 1,
    attributes  TEXT NOT NULL DEFAULT '{}',
    embedding   BLOB,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS customers (
    id         TEXT PRIMARY KEY,
    data       TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    id               TEXT PRIMARY KEY,
    customer_id      TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    received_at      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_customer ON orders(customer_id);
CREATE INDEX IF NOT EXISTS orders_created ON orders(created_at);
CREATE TABLE IF NOT EXISTS order_lines (
    order_id   TEXT NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    line       INTEGER NOT NULL,
    product_id TEXT NOT NULL,
    quantity   INTEGER NOT NULL,
    price      REAL,
    PRIMARY KEY (order_id, line)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS order_lines_product ON order_lines(product_id);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY,
    customer_id TEXT,
    session_id  TEXT,
    product_id  TEXT NOT NULL,
    type        TEXT NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_customer ON events(customer_id) WHERE customer_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_at ON events(at);
CREATE TABLE IF NOT EXISTS unknown_products (
    product_id TEXT NOT NULL,
    source     TEXT NOT NULL,
    ref        TEXT NOT NULL,
    at         TEXT NOT NULL,
    PRIMARY KEY (product_id, source, ref)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rec_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO rec_state(key, value) VALUES ('data_version', 0);
CREATE TABLE IF NOT EXISTS rec_model (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    info    TEXT NOT NULL,
    data    BLOB NOT NULL
);
"#;

/// v4: an order's WooCommerce status and last modification, so a refund or a cancellation retracts
/// the purchase and a later update applies instead of answering `duplicate`.
pub const ORDER_STATUS: &str = "
ALTER TABLE orders ADD COLUMN status TEXT NOT NULL DEFAULT 'completed';
ALTER TABLE orders ADD COLUMN modified_at INTEGER;
";

/// v5: WooCommerce webhook deliveries already applied (a redelivery changes nothing), pruned after
/// `recs.webhook_dedup_days`; the store's own totals from a sync-totals call live in `rec_state`.
pub const WEBHOOKS: &str = "
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    delivery_id TEXT PRIMARY KEY,
    topic       TEXT NOT NULL,
    received_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS webhook_deliveries_at ON webhook_deliveries(received_at);
";

/// Document writes too large to finish within a request, run in the background (`services::jobs`).
/// `input` holds the request until the job has finished, then is cleared.
pub const JOBS: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    input       TEXT,
    documents   INTEGER NOT NULL,
    chunks      INTEGER NOT NULL,
    result      TEXT,
    error       TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, updated_at);
";

/// Every migration, in order.
pub const MIGRATIONS: &[&str] = &[META, DOCUMENTS, COMMERCE, ORDER_STATUS, WEBHOOKS, JOBS];
