//! Graceful drain of the real process: SIGTERM while an image is being
//! enhanced stops cxr-ledd within its drain timeout, hands the job back to
//! the queue with its lease released, and the next start finishes it and
//! delivers the result once.

use std::time::{Duration, Instant};

use cxr_led_e2e::studies;
use cxr_led_e2e::wait::wait_until;
use cxr_led_e2e::{LoopOptions, PacsLoop};
use sqlx::Row;

#[test]
fn sigterm_with_a_job_in_flight_hands_it_back_and_the_next_start_finishes_it() {
    let work = tempfile::tempdir().unwrap();
    let mut options = LoopOptions::for_tests(work.path(), &format!("cxrled_e2e_drain_{}", std::process::id()));
    options.drain_timeout_secs = 1;
    let mut pacs = PacsLoop::start(&options).unwrap();
    // The full-size chest CR: long enough on CPU to be caught in flight.
    let sample = studies::sample(&work.path().join("samples"), "RG1_UNCR.dcm", "chest", "drain", -4.0).unwrap();
    pacs.orthanc.upload(&sample.path).unwrap();
    wait_until(Duration::from_secs(120), "the job to be claimed", || {
        Ok(pacs.db.count("SELECT count(*) FROM job WHERE state = 'running'")? == 1)
    })
    .unwrap();

    let start = Instant::now();
    pacs.cxrled.stop().unwrap();
    let stopped_after = start.elapsed();
    // Drain timeout 1 s, plus at most 10 s each for associations and a
    // delivery pass; far below the unit's TimeoutStopSec of 120 s.
    assert!(stopped_after < Duration::from_secs(60), "stopped after {stopped_after:?}");
    let job = pacs.db.rows("SELECT state, lease_owner, attempts FROM job").unwrap();
    assert_eq!(job[0].get::<String, _>("state"), "queued");
    assert_eq!(job[0].get::<Option<String>, _>("lease_owner"), None);
    assert_eq!(job[0].get::<i32, _>("attempts"), 0, "a handed-back job does not use up an attempt");
    assert_eq!(pacs.db.count("SELECT count(*) FROM enhancement").unwrap(), 0);
    assert!(pacs.cxrled.log().contains("handed back"), "{}", pacs.cxrled.log());

    pacs.cxrled.launch().unwrap();
    pacs.wait_for_derived(&[&sample], Instant::now(), Duration::from_secs(600)).unwrap();
    wait_until(Duration::from_secs(30), "the job done and its result sent", || {
        Ok(pacs.db.count("SELECT count(*) FROM job WHERE state = 'done'")? == 1
            && pacs.db.count("SELECT count(*) FROM outbox WHERE state = 'sent'")? == 1)
    })
    .unwrap();
    assert_eq!(pacs.db.count("SELECT count(*) FROM enhancement").unwrap(), 1);
}
