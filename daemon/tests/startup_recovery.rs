//! Start-up recovery: leftover temporary files and spooled files without a
//! row (a crash after the rename, before the commit, so before Success) are
//! removed; registered instances stay.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_are_removed_and_registered_files_kept() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let running = start(test_config(&db, spool.path())).await;
    let out = storescu(running.local_addr, "PACS", &[], &[fixture("CR1_6154.dcm")]).await;
    assert!(out.status.success(), "{}", text(&out));
    running.stop().await;
    let kept = spool_files(spool.path());
    assert_eq!(kept.len(), 1);

    std::fs::write(spool.path().join("tmp").join("123-456-0.part"), b"half a data set").unwrap();
    let orphan = format!("{}.dcm", "ab".repeat(32));
    std::fs::write(spool.path().join(&orphan), b"renamed but never committed").unwrap();

    let running = start(test_config(&db, spool.path())).await;
    assert_eq!(running.recovery.temp_removed, 1);
    assert_eq!(running.recovery.orphans_removed, 1);
    assert_eq!(running.recovery.rows_without_file, 0);
    assert_eq!(spool_files(spool.path()), kept);
    assert_eq!(temp_files(spool.path()), 0);
    let pool = db.pool().await;
    assert_eq!(count(&pool, "SELECT count(*) FROM audit_event WHERE event = 'spool-recovery'").await, 1);
    running.stop().await;
    pool.close().await;
}
