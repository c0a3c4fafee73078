//! When the database refuses the instance (here: a constraint added by the
//! test, or the table gone), the C-STORE answers A700 (out of resources), the
//! file already renamed into the spool is removed again, and the association
//! goes on; once the database is fine the same instance is stored.

mod common;

use common::*;
use dicom_dictionary_std::tags;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_failure_answers_a700_and_leaves_nothing() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let running = start(test_config(&db, spool.path())).await;
    let addr = running.local_addr;
    let pool = db.pool().await;

    let cr = dicom_object::open_file(fixture("CR1_6154.dcm")).unwrap();
    let uid = cr.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0').to_string();
    let bytes = data_set_bytes(&cr);

    let (scu_tx, scu_rx) = std::sync::mpsc::channel::<()>();
    let (status_tx, mut status_rx) = tokio::sync::mpsc::unbounded_channel::<u16>();
    let (b, u) = (bytes.clone(), uid.clone());
    let scu = std::thread::spawn(move || {
        let mut scu = RawScu::connect(addr, CR, EXPLICIT_LE);
        for _ in 0..3 {
            scu_rx.recv().unwrap();
            status_tx.send(scu.store(CR, &u, &b, None).unwrap()).unwrap();
        }
        scu.association.release().unwrap();
    });

    // The insert fails after the file was renamed into the spool.
    sqlx::query("ALTER TABLE instance ADD CONSTRAINT refuse_all CHECK (size_bytes < 0) NOT VALID")
        .execute(&pool)
        .await
        .unwrap();
    scu_tx.send(()).unwrap();
    assert_eq!(status_rx.recv().await, Some(0xA700));
    assert!(spool_files(spool.path()).is_empty());
    assert_eq!(temp_files(spool.path()), 0);

    // The duplicate check fails before anything is spooled.
    sqlx::query("ALTER TABLE instance DROP CONSTRAINT refuse_all").execute(&pool).await.unwrap();
    sqlx::query("ALTER TABLE instance RENAME TO instance_gone").execute(&pool).await.unwrap();
    scu_tx.send(()).unwrap();
    assert_eq!(status_rx.recv().await, Some(0xA700));
    assert!(spool_files(spool.path()).is_empty());
    assert_eq!(temp_files(spool.path()), 0);

    sqlx::query("ALTER TABLE instance_gone RENAME TO instance").execute(&pool).await.unwrap();
    scu_tx.send(()).unwrap();
    assert_eq!(status_rx.recv().await, Some(0x0000));
    scu.join().unwrap();

    assert_eq!(count(&pool, "SELECT count(*) FROM instance").await, 1);
    assert_eq!(spool_files(spool.path()).len(), 1);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM audit_event WHERE outcome = 'failure' AND detail LIKE 'status A700%'").await,
        2
    );
    running.stop().await;
    pool.close().await;
}
