//! C-ECHO from dcmtk's echoscu is answered, and the association is audited.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoscu_gets_success() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let running = start(test_config(&db, spool.path())).await;
    let addr = running.local_addr;
    let out = dcmtk(
        "echoscu",
        vec![
            "-v".into(),
            "-aet".into(),
            "ECHOER".into(),
            "-aec".into(),
            AE.into(),
            addr.ip().to_string(),
            addr.port().to_string(),
        ],
    )
    .await;
    assert!(out.status.success(), "echoscu failed: {}", text(&out));
    assert!(text(&out).contains("Received Echo Response (Success)"), "{}", text(&out));
    let pool = db.pool().await;
    let accepted = count(
        &pool,
        "SELECT count(*) FROM audit_event WHERE event = 'association' AND outcome = 'accepted' AND calling_ae_title = 'ECHOER'",
    )
    .await;
    assert_eq!(accepted, 1);
    running.stop().await;
    pool.close().await;
}
