//! An association aborted (A-ABORT) or cut (TCP closed) in the middle of a
//! data set leaves no file and no row behind, only a failure audit event.

mod common;

use common::*;
use dicom_dictionary_std::tags;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_transfers_leave_nothing_behind() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let running = start(test_config(&db, spool.path())).await;
    let addr = running.local_addr;

    let big = dicom_object::open_file(fixture("RG1_UNCR.dcm")).unwrap();
    let uid = big.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0').to_string();
    let bytes = data_set_bytes(&big);
    assert!(bytes.len() > 1_000_000);

    let (b, u) = (bytes.clone(), uid.clone());
    tokio::task::spawn_blocking(move || {
        let mut scu = RawScu::connect(addr, CR, EXPLICIT_LE);
        assert_eq!(scu.store(CR, &u, &b, Some(40)), None);
        scu.association.abort().unwrap();
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || {
        let mut scu = RawScu::connect(addr, CR, EXPLICIT_LE);
        assert_eq!(scu.store(CR, &uid, &bytes, Some(60)), None);
        let _ = scu.association.inner_stream().shutdown(std::net::Shutdown::Both);
    })
    .await
    .unwrap();

    let pool = db.pool().await;
    wait_until(std::time::Duration::from_secs(30), "two mid-transfer failures", || {
        let pool = pool.clone();
        async move {
            count(&pool, "SELECT count(*) FROM audit_event WHERE outcome = 'failure' AND detail LIKE '%mid-transfer%'")
                .await
                == 2
        }
    })
    .await;
    assert_eq!(count(&pool, "SELECT count(*) FROM instance").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM study").await, 0);
    assert!(spool_files(spool.path()).is_empty());
    assert_eq!(temp_files(spool.path()), 0);
    running.stop().await;
    pool.close().await;
}
