//! A peer address outside `allowed-peer-addresses` is rejected; an
//! association idle for longer than `idle-timeout-secs` is aborted by us.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_address_outside_the_allow_list_is_rejected() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let mut config = test_config(&db, spool.path());
    config.ingest.allowed_peer_addresses = vec!["192.0.2.7".parse().unwrap()];
    let running = start(config).await;
    let addr = running.local_addr;
    let args: Vec<String> = ["-aet", "PACS", "-aec", AE, &addr.ip().to_string(), &addr.port().to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = dcmtk("echoscu", args).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("Association Rejected"), "{}", text(&out));
    let pool = db.pool().await;
    // The rejection is audited after the peer has its answer: wait for the row.
    wait_for_count(
        &pool,
        "SELECT count(*) FROM audit_event WHERE outcome = 'rejected' AND detail LIKE '%allowed-peer-addresses%'",
        1,
    )
    .await;
    running.stop().await;
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_association_is_aborted() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let mut config = test_config(&db, spool.path());
    config.ingest.idle_timeout_secs = 1;
    let running = start(config).await;
    let addr = running.local_addr;
    let received = tokio::task::spawn_blocking(move || {
        let mut scu = RawScu::connect(addr, CR, EXPLICIT_LE);
        // We send nothing; the daemon gives up after its idle timeout.
        scu.association.receive()
    })
    .await
    .unwrap();
    assert!(
        matches!(received, Ok(dicom_ul::Pdu::AbortRQ { .. })) || received.is_err(),
        "expected an A-ABORT or a closed connection, got {received:?}"
    );
    running.stop().await;
}
