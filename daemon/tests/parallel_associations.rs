//! Eight storescu processes store at once; every instance lands once. With
//! the association limit reached, a further association is rejected as
//! transient (local limit exceeded).

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_parallel_storescu() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let running = start(test_config(&db, spool.path())).await;
    let addr = running.local_addr;
    let work = tempfile::tempdir().unwrap();
    let copies = make_copies(&fixture("CR1_6154.dcm"), work.path(), 48, "2.25.4242", "par");

    let mut senders = Vec::new();
    for (i, chunk) in copies.chunks(6).enumerate() {
        let files: Vec<_> = chunk.iter().map(|(p, _)| p.clone()).collect();
        senders.push(tokio::spawn(async move { storescu(addr, &format!("SENDER{i}"), &[], &files).await }));
    }
    for sender in senders {
        let out = sender.await.unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(text(&out).matches("Received Store Response (Success)").count(), 6, "{}", text(&out));
    }
    let pool = db.pool().await;
    assert_eq!(count(&pool, "SELECT count(*) FROM instance").await, 48);
    assert_eq!(
        count(&pool, "SELECT instance_count::bigint FROM study WHERE study_instance_uid = '2.25.4242'").await,
        48
    );
    assert_eq!(count(&pool, "SELECT count(DISTINCT calling_ae_title) FROM instance").await, 8);
    assert_eq!(spool_files(spool.path()).len(), 48);
    assert_eq!(temp_files(spool.path()), 0);
    running.stop().await;
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn association_limit_rejects_transiently() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let mut config = test_config(&db, spool.path());
    config.ingest.max_associations = 1;
    let running = start(config).await;
    let addr = running.local_addr;
    let holder = tokio::task::spawn_blocking(move || RawScu::connect(addr, CR, EXPLICIT_LE)).await.unwrap();
    let mut args: Vec<String> = ["-aet", "PACS", "-aec", AE].iter().map(|s| s.to_string()).collect();
    args.extend([addr.ip().to_string(), addr.port().to_string()]);
    let out = dcmtk("echoscu", args.clone()).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("Local Limit Exceeded"), "{}", text(&out));
    tokio::task::spawn_blocking(move || holder.association.release().unwrap()).await.unwrap();
    let pool = db.pool().await;
    wait_until(std::time::Duration::from_secs(20), "a free association slot", || {
        let args = args.clone();
        async move { dcmtk("echoscu", args).await.status.success() }
    })
    .await;
    assert_eq!(count(&pool, "SELECT count(*) FROM audit_event WHERE detail LIKE '%local limit exceeded%'").await, 1);
    running.stop().await;
    pool.close().await;
}
