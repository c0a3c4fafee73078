//! A stage that dies stops the service instead of leaving it half alive: a
//! fault injected into the tracker (`CXR_LED_TEST_FAULT`, honoured by test
//! builds only) makes `/readyz` fail naming the stage, and the real binary
//! drains and exits non-zero so that systemd restarts it.

mod common;

use std::time::Duration;

use common::http::request;
use common::*;

const FAULT: &str = "fault injected into the tracker stage (CXR_LED_TEST_FAULT)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_tracker_fails_readiness_with_its_name() {
    // This test binary is its own process: the variable reaches no other test.
    std::env::set_var("CXR_LED_TEST_FAULT", "tracker");
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let running = start(test_config(&db, spool.path())).await;
    let http = running.http_addr.expect("[http] is on by default");

    let death = tokio::time::timeout(Duration::from_secs(30), running.stage_died()).await.expect("the tracker dies");
    assert_eq!(death, format!("tracker panicked: {FAULT}"));
    let readyz = request(http, "GET", "/readyz").await;
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    assert!(readyz.body.contains(&format!("stage: tracker panicked: {FAULT}")), "{}", readyz.body);
    // The other stages still drain cleanly.
    tokio::time::timeout(Duration::from_secs(30), running.stop()).await.expect("the service stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_non_zero_when_a_stage_dies() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let config = write_daemon_config(test_config(&db, spool.path()), work.path());
    let log = work.path().join("daemon.log");
    let mut daemon = spawn_daemon_with(&config, &log, &[("CXR_LED_TEST_FAULT", "tracker")]);
    let mut status = None;
    wait_until(Duration::from_secs(60), "cxr-ledd to exit", || {
        status = daemon.try_wait().unwrap();
        std::future::ready(status.is_some())
    })
    .await;
    let status = status.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("stage tracker panicked: {FAULT}")), "{text}");
}
