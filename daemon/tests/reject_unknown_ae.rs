//! An association from a calling AE title outside the allow-list, or calling
//! another AE title than ours, is rejected with the matching reason and audited.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_calling_and_called_ae_titles_are_rejected() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let mut config = test_config(&db, spool.path());
    config.ingest.allowed_calling_ae_titles = vec!["PACS".into()];
    let running = start(config).await;
    let addr = running.local_addr;
    let file = fixture("CR1_6154.dcm");

    let out = storescu(addr, "INTRUDER", &[], std::slice::from_ref(&file)).await;
    assert!(!out.status.success(), "storescu should fail: {}", text(&out));
    assert!(text(&out).contains("Calling AE Title Not Recognized"), "{}", text(&out));

    let mut args: Vec<String> = ["-aet", "PACS", "-aec", "SOMEONE"].iter().map(|s| s.to_string()).collect();
    args.extend([addr.ip().to_string(), addr.port().to_string()]);
    let out = dcmtk("echoscu", args).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("Called AE Title Not Recognized"), "{}", text(&out));

    let ok = storescu(addr, "PACS", &[], &[file]).await;
    assert!(ok.status.success(), "{}", text(&ok));

    let pool = db.pool().await;
    // Rejections are audited after the peer has its answer: wait for the rows.
    wait_for_count(
        &pool,
        "SELECT count(*) FROM audit_event WHERE event = 'association' AND outcome = 'rejected' \
         AND calling_ae_title = 'INTRUDER' AND detail LIKE '%allowed-calling-ae-titles%'",
        1,
    )
    .await;
    wait_for_count(
        &pool,
        "SELECT count(*) FROM audit_event WHERE outcome = 'rejected' AND called_ae_title = 'SOMEONE'",
        1,
    )
    .await;
    assert_eq!(count(&pool, "SELECT count(*) FROM instance").await, 1);
    running.stop().await;
    pool.close().await;
}
