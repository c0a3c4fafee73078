//! An instance of an SOP class we do not serve (MR) has its presentation
//! context rejected; the daemon stays up and stores nothing.

mod common;

use common::*;
use dicom_dictionary_std::tags;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mr_image_is_refused_at_negotiation() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let running = start(test_config(&db, spool.path())).await;
    let addr = running.local_addr;

    let work = tempfile::tempdir().unwrap();
    let mut mr = dicom_object::open_file(fixture("CR1_6154.dcm")).unwrap();
    mr.put_str(tags::SOP_CLASS_UID, dicom_core::VR::UI, "1.2.840.10008.5.1.4.1.1.4");
    mr.update_meta(|m| m.media_storage_sop_class_uid = "1.2.840.10008.5.1.4.1.1.4".into());
    let path = work.path().join("mr.dcm");
    mr.write_to_file(&path).unwrap();

    let out = storescu(addr, "PACS", &["-R"], &[path]).await;
    let log = text(&out);
    assert!(!out.status.success() || log.contains("No presentation context"), "{log}");
    assert!(!log.contains("Received Store Response (Success)"), "{log}");

    // Still serving.
    let ok = storescu(addr, "PACS", &[], &[fixture("CR1_6154.dcm")]).await;
    assert!(ok.status.success(), "{}", text(&ok));
    let pool = db.pool().await;
    assert_eq!(count(&pool, "SELECT count(*) FROM instance").await, 1);
    assert_eq!(spool_files(spool.path()).len(), 1);
    running.stop().await;
    pool.close().await;
}
