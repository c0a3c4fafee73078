//! The audit trail on a real PostgreSQL: one hash chain from concurrent
//! writers, UPDATE/DELETE/TRUNCATE refused by the database, tampering and
//! removal found by `verify_chain` (and by `cxr-ledd audit verify`), the
//! auditor role, and the views.

mod common;
mod pipeline_rows;

use std::process::Command;

use common::TestDb;
use cxr_led_daemon::audit::{self, Check, Event};
use cxr_led_daemon::db;
use pipeline_rows::{insert_decision, insert_enhancement, insert_outbox, insert_source};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool, Row};

async fn migrated() -> (TestDb, PgPool) {
    let test_db = TestDb::create().await;
    let pool = db::connect(&test_db.url, 8).await.expect("connect and migrate");
    (test_db, pool)
}

/// `n` events with figures in `data`, a non-ASCII detail and NULLs.
async fn record_events(db: &PgPool, n: usize, study: &str) {
    for i in 0..n {
        let data = json!({"i": i, "di": -7.25, "components": {"spread": 0.125, "consistency": 0.5}});
        let detail = format!("event {i}: Δ ok");
        audit::record(
            db,
            &Event {
                event: audit::INSTANCE_RECEIVED,
                outcome: "success",
                peer_address: Some("127.0.0.1:40000"),
                calling_ae_title: Some("STORESCU"),
                study_instance_uid: Some(study),
                detail: Some(&detail),
                data: Some(&data),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
}

/// Runs `sql` with the table's guard triggers disabled, as a superuser could.
async fn behind_the_triggers(db: &PgPool, sql: &str) {
    let mut conn = db.acquire().await.unwrap();
    conn.execute("ALTER TABLE audit_event DISABLE TRIGGER audit_event_no_update").await.unwrap();
    conn.execute(sql).await.unwrap();
    conn.execute("ALTER TABLE audit_event ENABLE TRIGGER audit_event_no_update").await.unwrap();
}

#[tokio::test]
async fn concurrent_writers_form_one_chain() {
    let (_guard, db) = migrated().await;
    let mut tasks = Vec::new();
    for task in 0..8 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let study = format!("1.2.3.{task}");
                let data = json!({"task": task, "i": i, "score": 0.1 * i as f64});
                let detail = format!("task {task} event {i}");
                let event = Event {
                    event: audit::STUDY_ENQUEUED,
                    outcome: "success",
                    study_instance_uid: Some(&study),
                    detail: Some(&detail),
                    data: Some(&data),
                    ..Default::default()
                };
                if i % 10 == 9 {
                    // Some writers hold the chain lock across a second statement.
                    let mut tx = db.begin().await.unwrap();
                    audit::record(&mut *tx, &event).await.unwrap();
                    sqlx::query("SELECT pg_sleep(0.002)").execute(&mut *tx).await.unwrap();
                    tx.commit().await.unwrap();
                } else {
                    audit::record(&db, &event).await.unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let report = audit::verify_chain(&db).await.unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.rows, 400);
    let head = report.head.clone().unwrap();
    assert_eq!(head.seq, 400);
    let row = sqlx::query("SELECT count(*), min(seq), max(seq), count(DISTINCT seq) FROM audit_event")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(
        (row.get::<i64, _>(0), row.get::<i64, _>(1), row.get::<i64, _>(2), row.get::<i64, _>(3)),
        (400, 1, 400, 400)
    );
    // The database's own hash function agrees with the Rust one on every row.
    let mismatches =
        common::count(&db, "SELECT count(*) FROM audit_event a WHERE audit_event_hash(a) <> row_hash").await;
    assert_eq!(mismatches, 0);
    let head_hash: String = sqlx::query("SELECT row_hash FROM audit_chain_head").fetch_one(&db).await.unwrap().get(0);
    assert_eq!(head_hash, head.row_hash);
    println!("{report}");
}

#[tokio::test]
async fn update_delete_truncate_are_refused() {
    let (_guard, db) = migrated().await;
    record_events(&db, 3, "1.2.3").await;
    for (sql, op) in [
        ("UPDATE audit_event SET detail = 'x' WHERE seq = 2", "UPDATE"),
        ("DELETE FROM audit_event WHERE seq = 2", "DELETE"),
        ("TRUNCATE audit_event", "TRUNCATE"),
    ] {
        let err = sqlx::query(sql).execute(&db).await.unwrap_err();
        let db_err = err.as_database_error().expect("a database error");
        assert_eq!(db_err.message(), format!("audit_event is append-only: {op} refused"));
        assert_eq!(db_err.code().as_deref(), Some("42501"), "insufficient_privilege");
    }
    // Chain columns given by a writer are ignored: the trigger sets them.
    sqlx::query(
        "INSERT INTO audit_event (event, outcome, seq, prev_hash, row_hash) VALUES ('forged', 'success', 99, 'x', 'y')",
    )
    .execute(&db)
    .await
    .unwrap();
    let row = sqlx::query("SELECT seq, prev_hash <> 'x', row_hash <> 'y' FROM audit_event WHERE event = 'forged'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!((row.get::<i64, _>(0), row.get::<bool, _>(1), row.get::<bool, _>(2)), (4, true, true));
    // Nothing but INSERT and SELECT is granted on the table, to anyone.
    for privilege in ["UPDATE", "DELETE", "TRUNCATE"] {
        let granted: bool = sqlx::query("SELECT has_table_privilege('cxr_led_auditor', 'audit_event', $1)")
            .bind(privilege)
            .fetch_one(&db)
            .await
            .unwrap()
            .get(0);
        assert!(!granted, "{privilege} granted to the auditor");
    }
    let report = audit::verify_chain(&db).await.unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.rows, 4);
}

#[tokio::test]
async fn tampered_row_is_found_at_its_seq() {
    let (_guard, db) = migrated().await;
    record_events(&db, 10, "1.2.3").await;
    assert!(audit::verify_chain(&db).await.unwrap().is_intact());
    let stored: String =
        sqlx::query("SELECT row_hash FROM audit_event WHERE seq = 4").fetch_one(&db).await.unwrap().get(0);

    behind_the_triggers(&db, "UPDATE audit_event SET detail = 'nothing happened' WHERE seq = 4").await;
    let report = audit::verify_chain(&db).await.unwrap();
    let broken = report.broken.clone().expect("the change is found");
    assert_eq!((broken.seq, broken.check), (4, Check::RowHash), "{report}");
    assert_eq!(broken.found, stored);
    assert_ne!(broken.expected, stored);
    assert_eq!(report.rows, 3);
    assert_eq!(report.head.as_ref().unwrap().seq, 3);

    // Recomputing the changed row's hash moves the break to the next row's link.
    behind_the_triggers(&db, "UPDATE audit_event a SET row_hash = audit_event_hash(a) WHERE seq = 4").await;
    let broken = audit::verify_chain(&db).await.unwrap().broken.expect("still found");
    assert_eq!((broken.seq, broken.check), (5, Check::PrevLink));
    assert_eq!(broken.found, stored);

    // A change to data (jsonb) is found too.
    behind_the_triggers(&db, "UPDATE audit_event SET data = jsonb_set(data, '{di}', '-2.0') WHERE seq = 2").await;
    let broken = audit::verify_chain(&db).await.unwrap().broken.expect("found");
    assert_eq!((broken.seq, broken.check), (2, Check::RowHash));
}

#[tokio::test]
async fn deleted_row_is_found_as_a_gap() {
    let (_guard, db) = migrated().await;
    record_events(&db, 10, "1.2.3").await;
    behind_the_triggers(&db, "DELETE FROM audit_event WHERE seq = 6").await;
    let report = audit::verify_chain(&db).await.unwrap();
    let broken = report.broken.clone().expect("the gap is found");
    assert_eq!((broken.seq, broken.check), (7, Check::SeqGap), "{report}");
    assert_eq!((broken.expected.as_str(), broken.found.as_str()), ("6", "7"));
    assert_eq!(report.rows, 5);

    // Renumbering to hide the gap breaks the hashes instead.
    behind_the_triggers(&db, "UPDATE audit_event SET seq = seq - 1 WHERE seq > 6").await;
    let broken = audit::verify_chain(&db).await.unwrap().broken.expect("found");
    assert_eq!(broken.seq, 6);
    assert!(matches!(broken.check, Check::PrevLink | Check::RowHash), "{broken}");
}

#[tokio::test]
async fn rows_from_before_the_migration_are_chained() {
    let test_db = TestDb::create().await;
    let db = test_db.pool().await;
    let (before, after): (Vec<_>, Vec<_>) = db::MIGRATOR.iter().partition(|m| m.version < 20261125000004);
    for migration in before {
        sqlx::raw_sql(&migration.sql).execute(&db).await.unwrap();
    }
    // Written by the ingest before the chain existed, ids out of time order on purpose.
    sqlx::query(
        "INSERT INTO audit_event (id, at, event, outcome, detail) VALUES \
         (105, '2026-11-20T10:00:00Z', 'association', 'success', 'a'), \
         (102, '2026-11-20T10:00:01.5Z', 'instance-received', 'success', NULL), \
         (109, '2026-11-20T10:00:02Z', 'association', 'rejected', 'called AE title')",
    )
    .execute(&db)
    .await
    .unwrap();
    for migration in after {
        sqlx::raw_sql(&migration.sql).execute(&db).await.unwrap();
    }
    record_events(&db, 2, "1.2.3").await;
    let report = audit::verify_chain(&db).await.unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.rows, 5);
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM audit_event ORDER BY seq LIMIT 3").fetch_all(&db).await.unwrap();
    assert_eq!(ids, vec![102, 105, 109], "existing rows chained in id order");
}

#[tokio::test]
async fn auditor_reads_the_views_and_nothing_else() {
    let (_guard, db) = migrated().await;
    let source = insert_source(&db, 1).await;
    insert_decision(&db, &source).await;
    insert_enhancement(&db, &source, "2.25.1001", 0.2, false).await;
    record_events(&db, 2, &source.study).await;

    let auditor = PgPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET ROLE cxr_led_auditor").await?;
                Ok(())
            })
        })
        .connect(&_guard.url)
        .await
        .unwrap();
    let role: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&auditor).await.unwrap();
    assert_eq!(role, "cxr_led_auditor");
    for view in [
        "audit_event",
        "audit_derived_instance",
        "audit_received_instance",
        "audit_study_timeline",
        "audit_held_results",
        "audit_dead_jobs",
        "audit_undelivered",
        "audit_chain_head",
    ] {
        sqlx::query(&format!("SELECT * FROM {view}"))
            .fetch_all(&auditor)
            .await
            .unwrap_or_else(|e| panic!("auditor cannot read {view}: {e}"));
    }
    // The auditor can verify the chain itself.
    let report = audit::verify_chain(&auditor).await.unwrap();
    assert!(report.is_intact(), "{report}");
    for sql in [
        "INSERT INTO audit_event (event, outcome) VALUES ('forged', 'success')",
        "UPDATE audit_event SET detail = 'x'",
        "DELETE FROM audit_event",
        "SELECT * FROM enhancement",
        "SELECT * FROM instance",
        "SELECT * FROM alert",
        "INSERT INTO alert (kind, key, recipients, subject) VALUES ('held', 'x', 'y', 'z')",
    ] {
        let err = sqlx::query(sql).execute(&auditor).await.unwrap_err();
        let db_err = err.as_database_error().expect("a database error");
        assert_eq!(db_err.code().as_deref(), Some("42501"), "{sql}: {db_err}");
        assert!(db_err.message().starts_with("permission denied"), "{sql}: {db_err}");
    }
}

#[tokio::test]
async fn derived_instance_view_joins_the_whole_story() {
    let (_guard, db) = migrated().await;
    let source = insert_source(&db, 7).await;
    insert_decision(&db, &source).await;
    let derived = "2.25.271828182845904523536028747135266249";
    insert_enhancement(&db, &source, derived, 0.31, false).await;
    insert_outbox(&db, derived, &source.study, "PACS_MAIN", "sent", 60).await;
    insert_outbox(&db, derived, &source.study, "PACS_BACKUP", "pending", 30).await;
    audit::record(
        &db,
        &Event {
            event: audit::INSTANCE_RECEIVED,
            outcome: "success",
            sop_instance_uid: Some(&source.sop),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let row = sqlx::query(
        "SELECT source_sop_instance_uid, source_sop_class_uid, study_instance_uid, source_calling_ae_title, \
         source_peer_address, to_char(source_received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS received, \
         job_id, exposure_rule, deviation_index, exposure_index, target_exposure_index, exposure_threshold, \
         exposure_flagged, bundle_name, bundle_version, bundle_sha256, params->>'t0' AS t0, seed, device, score, \
         score_components->>'spread' AS spread, hold_threshold, held, (timings->>'enhance_ms')::int AS enhance_ms, \
         deliveries \
         FROM audit_derived_instance WHERE derived_sop_instance_uid = $1",
    )
    .bind(derived)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("source_sop_instance_uid"), source.sop);
    assert_eq!(row.get::<String, _>("source_sop_class_uid"), pipeline_rows::DX);
    assert_eq!(row.get::<String, _>("study_instance_uid"), source.study);
    assert_eq!(row.get::<String, _>("source_calling_ae_title"), "PACS1");
    assert_eq!(row.get::<String, _>("source_peer_address"), "10.1.2.3:40512");
    assert_eq!(row.get::<String, _>("received"), "2026-11-25 09:00:00.123456");
    assert_eq!(row.get::<i64, _>("job_id"), source.job_id);
    assert_eq!(row.get::<String, _>("exposure_rule"), "deviation-index");
    assert_eq!(row.get::<f64, _>("deviation_index"), -7.2);
    assert_eq!(row.get::<f64, _>("exposure_index"), 95.0);
    assert_eq!(row.get::<f64, _>("target_exposure_index"), 500.0);
    assert_eq!(row.get::<f64, _>("exposure_threshold"), -3.0);
    assert!(row.get::<bool, _>("exposure_flagged"));
    assert_eq!(row.get::<String, _>("bundle_name"), "led-cxr");
    assert_eq!(row.get::<String, _>("bundle_version"), "1.0.0");
    assert_eq!(row.get::<String, _>("bundle_sha256"), "ab".repeat(32));
    assert_eq!(row.get::<String, _>("t0"), "200");
    assert_eq!(row.get::<String, _>("seed"), "9f2c4e01");
    assert_eq!(row.get::<String, _>("device"), "cpu");
    assert_eq!(row.get::<f64, _>("score"), 0.31);
    assert_eq!(row.get::<String, _>("spread"), "0.12");
    assert_eq!(row.get::<f64, _>("hold_threshold"), 0.5);
    assert!(!row.get::<bool, _>("held"));
    assert_eq!(row.get::<i32, _>("enhance_ms"), 812);
    let deliveries: serde_json::Value = row.get("deliveries");
    let deliveries = deliveries.as_array().unwrap();
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[0]["destination"], "PACS_BACKUP");
    assert_eq!(deliveries[0]["state"], "pending");
    assert_eq!(deliveries[0]["attempts"], 4);
    assert!(deliveries[0]["sent_at"].is_null());
    assert_eq!(deliveries[1]["destination"], "PACS_MAIN");
    assert_eq!(deliveries[1]["state"], "sent");
    assert_eq!(deliveries[1]["last_status"], 0);
    assert!(deliveries[1]["sent_at"].is_string());

    // The timeline attributes an event that names only the instance to its study.
    let timeline: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, event FROM audit_study_timeline WHERE study_instance_uid = $1 ORDER BY seq")
            .bind(&source.study)
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(timeline, vec![(1, audit::INSTANCE_RECEIVED.to_string())]);
    let undelivered: Vec<(String, String)> =
        sqlx::query_as("SELECT sop_instance_uid, destination FROM audit_undelivered").fetch_all(&db).await.unwrap();
    assert_eq!(undelivered, vec![(derived.to_string(), "PACS_BACKUP".to_string())]);
    let received: (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT derived_sop_instance_uid, deliveries FROM audit_received_instance WHERE sop_instance_uid = $1",
    )
    .bind(&source.sop)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(received, (Some(derived.to_string()), Some("PACS_BACKUP:pending, PACS_MAIN:sent".to_string())));
}

fn cxr_ledd_verify(config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cxr-ledd"))
        .args(["audit", "verify", "--config"])
        .arg(config)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run cxr-ledd")
}

#[tokio::test]
async fn cli_verify_reports_intact_and_broken_chains() {
    let (guard, db) = migrated().await;
    record_events(&db, 25, "1.2.3").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cxr-ledd.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{}\"\n", guard.url)).unwrap();

    let output = tokio::task::spawn_blocking({
        let config = config.clone();
        move || cxr_ledd_verify(&config)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{}", common::text(&output));
    let head: String = sqlx::query_scalar("SELECT row_hash FROM audit_chain_head").fetch_one(&db).await.unwrap();
    assert!(stdout.contains("audit chain intact: 25 events, head seq 25"), "{stdout}");
    assert!(stdout.contains(&head), "the head hash is printed for anchoring: {stdout}");

    behind_the_triggers(&db, "UPDATE audit_event SET outcome = 'failure' WHERE seq = 17").await;
    let output = tokio::task::spawn_blocking(move || cxr_ledd_verify(&config)).await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(65), "{}", common::text(&output));
    assert!(stderr.contains("audit chain BROKEN at seq 17"), "{stderr}");
    assert!(stderr.contains("row_hash does not match"), "{stderr}");
    assert!(stderr.contains("16 events before it verified"), "{stderr}");
}

/// Rewrites row `seq`'s detail and re-hashes it and every row after it, as
/// the table's owner could: the chain then verifies on its own.
async fn rewrite_and_rehash(db: &PgPool, seq: i64) {
    behind_the_triggers(
        db,
        &format!(
            "DO $$ DECLARE s bigint; BEGIN \
             UPDATE audit_event SET detail = 'nothing happened' WHERE seq = {seq}; \
             FOR s IN SELECT seq FROM audit_event WHERE seq >= {seq} ORDER BY seq LOOP \
               UPDATE audit_event SET prev_hash = (SELECT row_hash FROM audit_event WHERE seq = s - 1) \
                 WHERE seq = s AND s > 1; \
               UPDATE audit_event a SET row_hash = audit_event_hash(a) WHERE seq = s; \
             END LOOP; END $$"
        ),
    )
    .await;
}

#[tokio::test]
async fn a_rewritten_and_rehashed_chain_is_caught_against_an_earlier_head() {
    let (_guard, db) = migrated().await;
    record_events(&db, 10, "1.2.3").await;
    let earlier = audit::current_head(&db).await.unwrap().expect("a head");
    assert_eq!(earlier.seq, 10);
    assert_eq!(earlier.to_string().parse::<audit::Anchor>().unwrap(), earlier);
    // The chain grows past the anchor: still consistent with it.
    record_events(&db, 5, "1.2.3").await;
    assert!(audit::verify_chain_against(&db, Some(&earlier)).await.unwrap().is_intact());

    rewrite_and_rehash(&db, 4).await;
    assert!(audit::verify_chain(&db).await.unwrap().is_intact(), "re-hashed, the chain verifies on its own");
    let report = audit::verify_chain_against(&db, Some(&earlier)).await.unwrap();
    let broken = report.broken.clone().expect("caught against the earlier head");
    assert_eq!((broken.seq, broken.check), (10, Check::AnchorMismatch), "{report}");
    assert_eq!(broken.expected, earlier.row_hash);

    // Rows cut from the end (and the rest re-hashed) are caught as missing.
    behind_the_triggers(&db, "DELETE FROM audit_event WHERE seq > 8").await;
    let broken = audit::verify_chain_against(&db, Some(&earlier)).await.unwrap().broken.expect("caught");
    assert_eq!((broken.seq, broken.check), (10, Check::AnchorMissing), "{broken}");

    let bad_heads =
        ["10".to_string(), "x:abc".into(), format!("0:{}", "a".repeat(64)), format!("3:{}", "g".repeat(64))];
    for bad in bad_heads {
        let error = bad.parse::<audit::Anchor>().unwrap_err();
        assert!(error.contains("write SEQ:HASH"), "{error}");
    }
}

#[tokio::test]
async fn cli_verify_checks_a_head_kept_elsewhere() {
    let (guard, db) = migrated().await;
    record_events(&db, 6, "1.2.3").await;
    let head = audit::current_head(&db).await.unwrap().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cxr-ledd.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{}\"\n", guard.url)).unwrap();
    let verify = |expect: String| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_cxr-ledd"))
                .args(["audit", "verify", "--config"])
                .arg(&config)
                .args(["--expect-head", &expect])
                .env_remove("DATABASE_URL")
                .output()
                .expect("run cxr-ledd")
        })
    };
    let output = verify(head.clone()).await.unwrap();
    assert!(output.status.success(), "{}", common::text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("the head kept elsewhere matches"),
        "{}",
        common::text(&output)
    );

    rewrite_and_rehash(&db, 2).await;
    let output = verify(head).await.unwrap();
    assert_eq!(output.status.code(), Some(65), "{}", common::text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(
        stderr.contains("audit chain BROKEN at seq 6") && stderr.contains("differs from the head kept elsewhere"),
        "{stderr}"
    );

    let output = verify("6-abc".into()).await.unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", common::text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("write SEQ:HASH"), "{}", common::text(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_journals_the_chain_head_at_start_and_at_shutdown() {
    let (guard, db) = migrated().await;
    let spool = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let config = common::write_daemon_config(common::test_config(&guard, spool.path()), work.path());
    let log = work.path().join("daemon.log");
    let mut daemon = common::spawn_daemon(&config, &log);
    daemon.answering().await;
    // The echo's association was audited; stop as systemd does.
    let stopped = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status().unwrap();
    assert!(stopped.success());
    assert!(daemon.wait().unwrap().success());
    let head = audit::current_head(&db).await.unwrap().expect("the echo's events");
    let journal = std::fs::read_to_string(&log).unwrap();
    assert!(journal.contains("audit chain head now:"), "{journal}");
    assert!(journal.contains(&format!("audit chain head at shutdown: {head}")), "{head} not in:\n{journal}");
}
