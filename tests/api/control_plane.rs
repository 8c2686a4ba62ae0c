//! One control-plane test suite, run against both implementations: the embedded SQLite `control.db`
//! and PostgreSQL (a real server, started here). Both must answer every operation alike.

use chrono::{Duration, Utc};
use serde_json::json;
use warren::control::tenants::{NewTenant, TenantPatch};
use warren::control::{
    AuditRecord, Change, ControlPlane, DashboardSession, NewKey, Outcome, Scope, Slug, Status, StripeEffect, StripeEvent, Tier, UsageBatch, UsageRow,
};

use super::pg::Postgres;

fn new_tenant(slug: &str, status: Status) -> NewTenant {
    NewTenant {
        slug: Slug::parse(slug).expect("slug"),
        name: slug.to_string(),
        email: format!("ops@{slug}.test"),
        tier: Tier::Starter,
        status,
        trial_ends_at: (status == Status::Trial).then(|| Utc::now() - Duration::hours(1)),
    }
}

fn key(name: &str) -> NewKey {
    NewKey { name: name.into(), scopes: vec![Scope::Read, Scope::Write], expires_at: None }
}

fn audit(action: &'static str, tenant: Option<&str>) -> AuditRecord {
    AuditRecord { at: Utc::now(), actor: "admin".into(), tenant_id: tenant.map(str::to_string), action, detail: json!({}) }
}

async fn create(cp: &ControlPlane, slug: &str, status: Status) -> (String, String, String) {
    let id = warren::control::tenants::new_id();
    let change = Change::CreateTenant { id: id.clone(), new: new_tenant(slug, status), key: key("first") };
    match cp.apply(change, audit("tenant.created", Some(&id))).await.expect("create tenant") {
        Outcome::Created { tenant, key, plaintext } => {
            assert_eq!(tenant.id, id);
            (id, key.id, plaintext.expose().to_string())
        }
        other => panic!("unexpected outcome {other:?}"),
    }
}

fn code_of(e: warren::error::Error) -> String {
    e.code().as_str().to_string()
}

/// Every operation of the control-plane interface, with the answers both implementations must give.
async fn conformance(cp: ControlPlane) {
    let v0 = cp.version().await.expect("version");
    assert!(cp.ping().await.expect("ping"));

    // Tenants: create, find by id and slug, a taken slug, listing with a filter and keyset pages.
    let (a, a_key, a_plain) = create(&cp, "alpha", Status::Active).await;
    let (b, _, _) = create(&cp, "beta", Status::Trial).await;
    let (c, _, _) = create(&cp, "gamma", Status::Active).await;
    assert_ne!(cp.version().await.expect("version"), v0, "a change moves the version");
    assert_eq!(cp.tenant_by_slug("alpha").await.unwrap().expect("by slug").id, a);
    assert_eq!(cp.tenant_by_id(&b).await.unwrap().expect("by id").slug, "beta");
    assert!(cp.tenant_by_id("nope").await.unwrap().is_none());
    let dup = Change::CreateTenant { id: warren::control::tenants::new_id(), new: new_tenant("alpha", Status::Active), key: key("k") };
    assert_eq!(code_of(cp.apply(dup, audit("tenant.created", None)).await.expect_err("taken")), "slug_taken");
    let (page, total) = cp.list_tenants(None, None, 2).await.unwrap();
    assert_eq!((page.iter().map(|t| t.slug.as_str()).collect::<Vec<_>>(), total), (vec!["alpha", "beta"], 3));
    let (page, _) = cp.list_tenants(None, Some("beta".into()), 10).await.unwrap();
    assert_eq!(page.iter().map(|t| t.slug.as_str()).collect::<Vec<_>>(), vec!["gamma"]);
    let (page, _) = cp.list_tenants(Some("GAM".into()), None, 10).await.unwrap();
    assert_eq!(page.len(), 1, "the filter is case-insensitive");
    let (page, _) = cp.list_tenants(Some("%".into()), None, 10).await.unwrap();
    assert!(page.is_empty(), "a % in the filter is a literal");

    // Updates and custom domains: one tenant per domain.
    let patch = TenantPatch { custom_domain: Some(Some("Shop.Example.com".into())), tier: Some(Tier::Pro), ..Default::default() };
    match cp.apply(Change::UpdateTenant { id: a.clone(), patch }, audit("tenant.updated", Some(&a))).await.unwrap() {
        Outcome::Tenant(t) => assert_eq!((t.custom_domain.as_deref(), t.tier), (Some("shop.example.com"), Tier::Pro)),
        other => panic!("{other:?}"),
    }
    assert_eq!(cp.tenant_by_domain("shop.example.com").await.unwrap().expect("by domain").id, a);
    let clash = TenantPatch { custom_domain: Some(Some("shop.example.com".into())), ..Default::default() };
    assert_eq!(
        code_of(cp.apply(Change::UpdateTenant { id: c.clone(), patch: clash }, audit("tenant.updated", None)).await.unwrap_err()),
        "domain_taken"
    );
    let missing = Change::UpdateTenant { id: "nope".into(), patch: TenantPatch::default() };
    assert_eq!(code_of(cp.apply(missing, audit("tenant.updated", None)).await.unwrap_err()), "tenant_not_found");

    // Keys: lookup by prefix, a second key, rotation with overlap, revocation, last use.
    let prefix = warren::control::keys::lookup_prefix(&a_plain).expect("prefix").to_string();
    let found = cp.key_by_prefix(&prefix).await.unwrap().expect("key by prefix");
    assert_eq!(found.id, a_key);
    assert!(warren::control::keys::verify(&a_plain, &found.hash));
    let second = match cp.apply(Change::CreateKey { tenant_id: a.clone(), new: key("second") }, audit("key.created", Some(&a))).await.unwrap() {
        Outcome::Key { key, .. } => key,
        other => panic!("{other:?}"),
    };
    let rotated = cp
        .apply(Change::RotateKey { tenant_id: a.clone(), key_id: a_key.clone(), overlap: Duration::hours(1) }, audit("key.rotated", Some(&a)))
        .await
        .unwrap();
    let Outcome::Key { key: new_key, old_valid_until: Some(until), .. } = rotated else { panic!("rotation") };
    let keys = cp.list_keys(&a).await.unwrap();
    assert_eq!(keys.len(), 3);
    let old = keys.iter().find(|k| k.id == a_key).expect("old key");
    assert_eq!((old.replaced_by.as_deref(), old.expires_at.map(|e| e.timestamp())), (Some(new_key.id.as_str()), Some(until.timestamp())));
    match cp.apply(Change::RevokeKey { tenant_id: a.clone(), key_id: second.id.clone() }, audit("key.revoked", Some(&a))).await.unwrap() {
        Outcome::RevokedKey(k) => assert!(k.revoked_at.is_some()),
        other => panic!("{other:?}"),
    }
    let wrong = Change::RevokeKey { tenant_id: b.clone(), key_id: second.id.clone() };
    assert_eq!(code_of(cp.apply(wrong, audit("key.revoked", None)).await.unwrap_err()), "key_not_found", "a key of another tenant");
    let used = Utc::now();
    cp.touch_keys(vec![(new_key.id.clone(), used)]).await.unwrap();
    let touched = cp.list_keys(&a).await.unwrap().into_iter().find(|k| k.id == new_key.id).unwrap();
    assert_eq!(touched.last_used_at.map(|t| t.timestamp()), Some(used.timestamp()));

    // Overrides and key limits.
    cp.apply(Change::PutOverrides { tenant_id: a.clone(), overrides: Some(r#"{"rate_per_sec":7}"#.into()) }, audit("tenant.overrides", Some(&a)))
        .await
        .unwrap();
    cp.apply(Change::SetKeyLimit { tenant_id: a.clone(), key_id: new_key.id.clone(), limit: Some((3, 9)) }, audit("key.limit", Some(&a)))
        .await
        .unwrap();
    let limits = cp.limits().await.unwrap();
    assert_eq!(limits.overrides, vec![(a.clone(), r#"{"rate_per_sec":7}"#.to_string())]);
    assert_eq!(limits.key_limits, vec![(new_key.id.clone(), 3, 9)]);
    assert_eq!(cp.overrides_json(&a).await.unwrap().as_deref(), Some(r#"{"rate_per_sec":7}"#));
    let foreign = Change::SetKeyLimit { tenant_id: b.clone(), key_id: new_key.id.clone(), limit: None };
    assert_eq!(code_of(cp.apply(foreign, audit("key.limit", None)).await.unwrap_err()), "key_not_found");

    // Stripe: an event id is applied once.
    let ev = StripeEvent {
        id: "evt_1".into(),
        kind: "customer.subscription.updated".into(),
        tenant_ref: Some("beta".into()),
        customer: Some("cus_1".into()),
        effect: StripeEffect::SetTier { tier: Tier::Pro, subscription_status: "active".into() },
    };
    let first = cp.stripe_event(ev.clone(), Utc::now()).await.unwrap();
    assert_eq!((first["outcome"].as_str(), first["tenant_id"].as_str()), (Some("tier:pro"), Some(b.as_str())));
    assert_eq!(cp.stripe_event(ev, Utc::now()).await.unwrap()["duplicate"], json!(true));
    let beta = cp.tenant_by_id(&b).await.unwrap().unwrap();
    assert_eq!((beta.tier, beta.status, beta.stripe_customer_id.as_deref()), (Tier::Pro, Status::Active, Some("cus_1")), "the trial converted");

    // Trials: expiry is decided and written once.
    let (d, _, _) = create(&cp, "delta", Status::Trial).await;
    let now = Utc::now();
    assert_eq!(cp.expired_trials(now).await.unwrap(), vec![d.clone()]);
    assert!(cp.expire_trial(&d, now).await.unwrap());
    assert!(!cp.expire_trial(&d, now).await.unwrap(), "the second time changes nothing");
    assert!(cp.expired_trials(now).await.unwrap().is_empty());

    // Usage: a batch is stored once however often it is sent; sums by tenant, day and key.
    let at = warren::control::ts(Utc::now());
    let row = |t: &str, k: Option<&str>, kind: &'static str, n: i64, tok: i64| UsageRow {
        tenant_id: t.into(),
        key_id: k.map(str::to_string),
        kind,
        count: n,
        tokens: tok,
        at: at.clone(),
    };
    let mark = cp.usage_mark().await.unwrap();
    let batch = UsageBatch { id: "node-a-1".into(), rows: vec![row(&a, Some(&new_key.id), "search", 5, 0), row(&a, None, "assemble", 1, 40)] };
    cp.flush_usage(batch.clone()).await.unwrap();
    cp.flush_usage(batch).await.unwrap(); // a retry whose first answer was lost
    cp.flush_usage(UsageBatch { id: "node-b-1".into(), rows: vec![row(&c, None, "search", 2, 0)] }).await.unwrap();
    let month = warren::clock::period_of(Utc::now());
    let (from, to) = (warren::control::ts(month.1), warren::control::ts(month.2));
    let mut totals = cp.usage_totals(None, from.clone(), to.clone(), None).await.unwrap();
    totals.sort();
    let mut want = vec![(a.clone(), "assemble".to_string(), 1, 40), (a.clone(), "search".to_string(), 5, 0), (c.clone(), "search".to_string(), 2, 0)];
    want.sort();
    assert_eq!(totals, want);
    assert_eq!(cp.usage_totals(Some(c.clone()), from.clone(), to.clone(), None).await.unwrap().len(), 1);
    assert!(cp.usage_totals(None, from, to, Some(mark)).await.unwrap().is_empty(), "nothing was stored before the mark");
    let by_key = cp.usage_by_key(&a, Utc::now() - Duration::days(1)).await.unwrap();
    assert_eq!(by_key, vec![(None, "assemble".to_string(), 1, 40), (Some(new_key.id.clone()), "search".to_string(), 5, 0)]);
    let by_day = cp.usage_by_day(&a, Utc::now() - Duration::days(1)).await.unwrap();
    assert_eq!(by_day.iter().map(|r| r.2).sum::<u64>(), 6);
    assert_eq!(by_day[0].0, at[..10]);

    // Audit events, their history, and the lifecycle they add up to.
    cp.audit(AuditRecord { at: Utc::now(), actor: "system".into(), tenant_id: Some(a.clone()), action: "tenant.exported", detail: json!({"n": 1}) })
        .await
        .unwrap();
    let events = cp.audit_events(Some(a.clone()), 100).await.unwrap();
    assert_eq!(events[0].action, "tenant.exported", "newest first");
    assert_eq!(events[0].detail, json!({"n": 1}));
    assert!(events.iter().any(|e| e.action == "key.created" && e.detail["key_id"] == json!(second.id)));
    let history = cp.tenant_history(&a).await.unwrap();
    assert_eq!((history.usage.len(), history.audit.first().map(|e| e.action.as_str())), (2, Some("tenant.created")));
    let life = cp.lifecycle(warren::control::ts(Utc::now() - Duration::days(1)), warren::control::ts(Utc::now() + Duration::days(1))).await.unwrap();
    assert_eq!((life.trials_converted, life.trials_expired, life.churned), (1, 1, 0));

    // Jobs, dashboard links and sessions.
    cp.set_job_pending(&c, "job1", true, Utc::now()).await.unwrap();
    cp.set_job_pending(&c, "job1", true, Utc::now()).await.unwrap();
    assert_eq!(cp.pending_jobs().await.unwrap(), vec![(c.clone(), "job1".to_string())]);
    cp.set_job_pending(&c, "job1", false, Utc::now()).await.unwrap();
    assert!(cp.pending_jobs().await.unwrap().is_empty());
    let token = vec![7u8; 32];
    cp.apply(
        Change::MintDashboardLink { tenant_id: c.clone(), token_hash: token.clone(), expires_at: Utc::now() + Duration::minutes(5) },
        audit("link", None),
    )
    .await
    .unwrap();
    assert_eq!(cp.consume_dashboard_link(token.clone(), Utc::now()).await.unwrap().as_deref(), Some(c.as_str()));
    assert_eq!(cp.consume_dashboard_link(token, Utc::now()).await.unwrap(), None, "a link works once");
    let session = DashboardSession {
        token_hash: vec![9u8; 32],
        tenant_id: Some(c.clone()),
        scopes: vec![Scope::Admin],
        csrf: "csrf".into(),
        via: "link".into(),
        created_at: Utc::now(),
        expires_at: Utc::now() + Duration::hours(1),
    };
    cp.insert_session(session, Utc::now()).await.unwrap();
    let s = cp.session(vec![9u8; 32], Utc::now()).await.unwrap().expect("session");
    assert_eq!((s.tenant_id.as_deref(), s.scopes.clone(), s.csrf.as_str()), (Some(c.as_str()), vec![Scope::Admin], "csrf"));
    assert!(cp.session(vec![9u8; 32], Utc::now() + Duration::hours(2)).await.unwrap().is_none(), "expired");
    cp.delete_session(vec![9u8; 32]).await.unwrap();
    assert!(cp.session(vec![9u8; 32], Utc::now()).await.unwrap().is_none());

    // Integrations and settings.
    cp.apply(Change::SetIntegration { tenant_id: c.clone(), kind: "woocommerce", config: "{\"x\":1}".into() }, audit("i", None)).await.unwrap();
    assert_eq!(cp.integration(&c, "woocommerce").await.unwrap().as_deref(), Some("{\"x\":1}"));
    assert_eq!(cp.setting("admin_token_sha256").await.unwrap(), None);
    cp.set_setting("admin_token_sha256", "abc".into()).await.unwrap();
    assert_eq!(cp.setting("admin_token_sha256").await.unwrap().as_deref(), Some("abc"));

    // Deletion: keys cascade, the replica's deletion is scheduled, the id is known as deleted.
    let due = Utc::now() - Duration::seconds(1);
    let del = cp.apply(Change::DeleteTenant { id: c.clone(), replica_due: Some(due) }, audit("tenant.deleted", Some(&c))).await.unwrap();
    assert!(matches!(del, Outcome::Done(true)));
    assert!(matches!(
        cp.apply(Change::DeleteTenant { id: c.clone(), replica_due: None }, audit("tenant.deleted", None)).await.unwrap(),
        Outcome::Done(false)
    ));
    assert!(cp.list_keys(&c).await.unwrap().is_empty());
    assert_eq!(cp.due_replica_deletions(Utc::now()).await.unwrap(), vec![c.clone()]);
    cp.apply(Change::ReplicaDeleted { tenant_id: c.clone() }, audit("r", None)).await.unwrap();
    assert!(cp.due_replica_deletions(Utc::now()).await.unwrap().is_empty());
    assert_eq!(cp.deleted_among(vec![a.clone(), c.clone(), "zzz".into()]).await.unwrap(), vec![c.clone()]);
    let owners = cp.event_owners().await.unwrap();
    assert!(owners.contains(&Some(c.clone())) && owners.contains(&Some(a.clone())));

    // Retention: at most `batch` events per table and transaction.
    let later = Utc::now() + Duration::days(1);
    let (u, au) = cp.prune_events(Some(a.clone()), later, later, 1).await.unwrap();
    assert_eq!((u, au), (1, 1));
    let (u, _) = cp.prune_events(Some(a.clone()), later, later, 100).await.unwrap();
    assert_eq!(u, 1);
    assert!(cp.tenant_history(&a).await.unwrap().usage.is_empty());
}

#[tokio::test]
async fn the_embedded_control_plane_passes_the_control_plane_suite() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::open(dir.path()).unwrap();
    assert_eq!(cp.kind(), "sqlite");
    conformance(cp).await;
}

#[tokio::test]
async fn the_postgres_control_plane_passes_the_control_plane_suite() {
    let pg = Postgres::start().await;
    let url = pg.database("conformance").await;
    let settings = warren::config::ControlConfig::default();
    let cp: ControlPlane = warren::control::pg::PgControl::connect(&url, &settings).await.expect("connect").into();
    assert_eq!(cp.kind(), "postgres");
    // A second node migrating the same database concurrently changes nothing.
    let again = warren::control::pg::PgControl::connect(&url, &settings).await.expect("second node");
    drop(again);
    conformance(cp).await;
}
