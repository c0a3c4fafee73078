//! The service's own database role cannot rewrite the audit: as a login role
//! granted `cxr_led_service`, DISABLE TRIGGER, ALTER, TRUNCATE, UPDATE and DROP
//! TRIGGER on `audit_event` are refused, GRANT gives it nothing, while INSERT works; the
//! service runs as that role (it checks, not applies, the migrations) and
//! stores an instance; start-up refuses the owner without `[database]
//! development = true`, and refuses the service role while a migration is
//! missing, naming `cxr-ledd migrate`.

mod common;

use common::*;
use cxr_led_daemon::app::service;
use cxr_led_daemon::audit::{self, Event};
use cxr_led_daemon::db;
use dicom_dictionary_std::tags;
use sqlx::{Connection, Executor, PgConnection};

/// `url` with another user name.
fn as_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}@{host}")
}

/// The error of a start-up that had to be refused.
fn refusal(started: anyhow::Result<service::Running>) -> anyhow::Error {
    match started {
        Ok(_) => panic!("the service started"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_role_cannot_rewrite_the_audit_and_runs_the_service() {
    let test_db = TestDb::create().await;
    let owner = db::connect(&test_db.url, 2).await.expect("migrate as the owner");
    let login = format!("cxrled_svc_{}", test_db.name.trim_start_matches("cxrled_test_"));
    owner.execute(format!("CREATE ROLE {login} LOGIN IN ROLE cxr_led_service").as_str()).await.unwrap();
    let service_url = as_user(&test_db.url, &login);

    let mut conn = PgConnection::connect(&service_url).await.expect("connect as the service role");
    for sql in [
        "ALTER TABLE audit_event DISABLE TRIGGER audit_event_no_update",
        "ALTER TABLE audit_event ADD COLUMN note text",
        "TRUNCATE audit_event",
        "UPDATE audit_event SET detail = 'nothing happened'",
        "DROP TRIGGER audit_event_no_update ON audit_event",
    ] {
        let refused = conn.execute(sql).await.expect_err(sql);
        assert!(
            refused.to_string().contains("must be owner") || refused.to_string().contains("permission denied"),
            "{sql}: {refused}"
        );
    }
    // GRANT without grant option grants nothing (PostgreSQL warns, or refuses).
    let _ = conn.execute("GRANT UPDATE, DELETE, TRUNCATE ON audit_event TO PUBLIC").await;
    let _ = conn.execute(format!("GRANT UPDATE ON audit_event TO {login}").as_str()).await;
    let granted: bool = sqlx::query_scalar(
        "SELECT has_table_privilege('public', 'audit_event', 'UPDATE') \
         OR has_table_privilege(current_user, 'audit_event', 'UPDATE') \
         OR has_table_privilege(current_user, 'audit_event', 'TRUNCATE')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(!granted, "the service role granted itself a way to change the audit");
    audit::record(&mut conn, &Event { event: audit::ASSOCIATION, outcome: "success", ..Default::default() })
        .await
        .expect("the service role appends audit events");
    conn.close().await.unwrap();

    // The service, as that role, without development mode: runs and stores.
    let spool = tempfile::tempdir().unwrap();
    let mut config = test_config(&test_db, spool.path());
    config.database.url = service_url.clone();
    config.database.development = false;
    let running = service::start(config.clone()).await.expect("the service starts as cxr_led_service");
    let status = tokio::task::spawn_blocking({
        let addr = running.local_addr;
        move || {
            let obj = dicom_object::open_file(fixture("CR1_6154.dcm")).unwrap();
            let uid = obj.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0').to_string();
            let mut scu = RawScu::connect(addr, CR, EXPLICIT_LE);
            let status = scu.store(CR, &uid, &data_set_bytes(&obj), None).unwrap();
            scu.association.release().unwrap();
            status
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 0x0000);
    running.stop().await;
    assert_eq!(count(&owner, "SELECT count(*) FROM instance").await, 1);

    // The owner, without development mode: refused, saying why and what to do.
    let mut as_owner = config.clone();
    as_owner.database.url = test_db.url.clone();
    let refused = refusal(service::start(as_owner).await).to_string();
    assert!(refused.contains("could therefore disable the audit table's triggers"), "{refused}");
    assert!(refused.contains("[database] development = true"), "{refused}");

    // A migration missing: the service role refuses to start and names the fix.
    let last = db::MIGRATOR.iter().last().unwrap().version;
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1").bind(last).execute(&owner).await.unwrap();
    let refused = format!("{:#}", refusal(service::start(config).await));
    assert!(
        refused.contains(&format!("lacks migration(s) {last}")) && refused.contains("cxr-ledd migrate"),
        "{refused}"
    );

    owner.close().await;
    drop(test_db);
    let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
    admin.execute(format!("DROP ROLE IF EXISTS {login}").as_str()).await.unwrap();
}
