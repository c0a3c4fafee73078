//! Bad data sets get a failure status while the association survives:
//! a truncated data set and garbage answer C000 (cannot understand), a data
//! set of another SOP class than announced answers A900, a C-STORE whose SOP
//! class is not its presentation context's answers 0122; then a good instance
//! on the same association is stored, and sent again it is a duplicate
//! (Success, stored once).

mod common;

use common::*;
use dicom_dictionary_std::tags;

const DX: &str = "1.2.840.10008.5.1.4.1.1.1.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_keep_the_association_and_leave_nothing() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let running = start(test_config(&db, spool.path())).await;
    let addr = running.local_addr;

    let cr = dicom_object::open_file(fixture("CR1_6154.dcm")).unwrap();
    let cr_uid = cr.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0').to_string();
    let good = data_set_bytes(&cr);
    let dx = dicom_object::open_file(fixture("dx_image.dcm")).unwrap();
    let dx_uid = dx.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0').to_string();
    let dx_bytes = data_set_bytes(&dx);

    let statuses = tokio::task::spawn_blocking(move || {
        let mut scu = RawScu::connect(addr, CR, EXPLICIT_LE);
        let truncated = scu.store(CR, &cr_uid, &good[..good.len() - 100], None).unwrap();
        let garbage =
            scu.store(CR, "1.2.3.4.5", &b"this is not a DICOM data set, it is prose. ".repeat(40), None).unwrap();
        let mismatch = scu.store(CR, &dx_uid, &dx_bytes, None).unwrap();
        let wrong_context = scu.store(DX, &dx_uid, &dx_bytes, None).unwrap();
        let stored = scu.store(CR, &cr_uid, &good, None).unwrap();
        let again = scu.store(CR, &cr_uid, &good, None).unwrap();
        scu.association.release().unwrap();
        [truncated, garbage, mismatch, wrong_context, stored, again]
    })
    .await
    .unwrap();
    assert_eq!(statuses, [0xC000, 0xC000, 0xA900, 0x0122, 0x0000, 0x0000]);

    let pool = db.pool().await;
    assert_eq!(count(&pool, "SELECT count(*) FROM instance").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM study").await, 1);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM audit_event WHERE event = 'instance-received' AND outcome = 'failure'")
            .await,
        4
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM audit_event WHERE outcome = 'duplicate'").await, 1);
    assert_eq!(spool_files(spool.path()).len(), 1);
    assert_eq!(temp_files(spool.path()), 0);
    running.stop().await;
    pool.close().await;
}
