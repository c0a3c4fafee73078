//! `register_instance`, the one call that registers a received instance
//! (migration `20261206000007`): it writes the instance row, its study's
//! upsert and its audit event together or not at all. A second registration
//! of the same SOP Instance UID (another daemon on the same database was
//! first) is refused with unique_violation on `instance_pkey` and leaves no
//! trace, not even an empty study row; an instance of an enqueued study
//! re-opens it and is audited as late.

mod common;

use common::*;
use cxr_led_daemon::db;
use sqlx::PgPool;

/// Calls `register_instance` as `store.rs` does; returns `late`.
async fn register(pool: &PgPool, sop: &str, study: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT register_instance($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)")
        .bind(sop)
        .bind("1.2.840.10008.5.1.4.1.1.1")
        .bind(study)
        .bind(format!("{study}.1"))
        .bind("1.2.840.10008.1.2.1")
        .bind(format!("{sop}.dcm"))
        .bind(1234_i64)
        .bind("MODALITY")
        .bind("CXRLED")
        .bind("127.0.0.1:4242")
        .bind("stored 1234 bytes")
        .bind("stored 1234 bytes; late")
        .fetch_one(pool)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_atomically_refuses_a_second_copy_and_reopens_an_enqueued_study() {
    let test_db = TestDb::create().await;
    let pool = db::connect(&test_db.url, 2).await.expect("migrate");

    assert!(!register(&pool, "1.2.3.1", "1.2.3").await.unwrap(), "a new study is not late");
    assert!(!register(&pool, "1.2.3.2", "1.2.3").await.unwrap());
    assert_eq!(count(&pool, "SELECT instance_count::bigint FROM study WHERE study_instance_uid = '1.2.3'").await, 2);
    assert_eq!(count(&pool, "SELECT count(*) FROM audit_event WHERE event = 'instance-received'").await, 2);

    // The same UID again, claiming another study: refused as a whole.
    let refused = register(&pool, "1.2.3.1", "1.2.9").await.expect_err("a second copy is refused");
    let database_error = refused.as_database_error().expect("refused by the database");
    assert_eq!(database_error.code().as_deref(), Some("23505"));
    assert_eq!(database_error.constraint(), Some("instance_pkey"));
    assert_eq!(count(&pool, "SELECT count(*) FROM study WHERE study_instance_uid = '1.2.9'").await, 0);
    assert_eq!(count(&pool, "SELECT instance_count::bigint FROM study WHERE study_instance_uid = '1.2.3'").await, 2);
    assert_eq!(count(&pool, "SELECT count(*) FROM audit_event").await, 2);

    // Enqueued, then one more instance: late, the study re-opened.
    sqlx::query("UPDATE study SET enqueued_at = now() WHERE study_instance_uid = '1.2.3'")
        .execute(&pool)
        .await
        .unwrap();
    assert!(register(&pool, "1.2.3.3", "1.2.3").await.unwrap(), "an instance of an enqueued study is late");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM study WHERE study_instance_uid = '1.2.3' AND enqueued_at IS NULL").await,
        1
    );
    let detail: String = sqlx::query_scalar("SELECT detail FROM audit_event WHERE sop_instance_uid = '1.2.3.3'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(detail, "stored 1234 bytes; late");
    assert_eq!(count(&pool, "SELECT instance_count::bigint FROM study WHERE study_instance_uid = '1.2.3'").await, 3);

    let report = cxr_led_daemon::audit::verify_chain(&pool).await.unwrap();
    assert!(report.broken.is_none(), "{report:?}");
    pool.close().await;
}
