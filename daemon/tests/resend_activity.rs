//! A resend is activity: the daemon (the real binary) is killed with SIGKILL
//! while a study of 20 instances arrives, restarted, and the sender resends
//! all 20 slowly (each 300 ms after the last, well under the 4 s quiet
//! period; the whole resend longer than it). The duplicates refresh the
//! study's last activity, so the study becomes exactly one job with all 20
//! instances, not a job with the first ones and late instances after it.

mod common;

use std::time::Duration;

use common::*;
use dicom_dictionary_std::tags;

const STUDY: &str = "2.25.5150";
const INSTANCES: usize = 20;

/// The small CR as instance `n` of the study, as a data set.
fn instance(n: usize) -> (String, Vec<u8>) {
    let mut obj = dicom_object::open_file(fixture("CR1_6154.dcm")).unwrap();
    let uid = format!("{STUDY}.{n}");
    obj.put(dicom_core::DataElement::new(tags::SOP_INSTANCE_UID, dicom_core::VR::UI, uid.as_str()));
    obj.put(dicom_core::DataElement::new(tags::STUDY_INSTANCE_UID, dicom_core::VR::UI, STUDY));
    (uid, data_set_bytes(&obj))
}

/// Sends every instance on one association, `gap` apart; the statuses it got
/// before the association failed (the daemon killed).
fn send_all(addr: std::net::SocketAddr, gap: Duration) -> Vec<u16> {
    let mut scu = RawScu::connect(addr, CR, EXPLICIT_LE);
    let mut statuses = Vec::new();
    for n in 0..INSTANCES {
        let (uid, bytes) = instance(n);
        let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scu.store(CR, &uid, &bytes, None)));
        match sent {
            Ok(Some(status)) => statuses.push(status),
            _ => break,
        }
        std::thread::sleep(gap);
    }
    let _ = scu.association.release();
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_resend_after_sigkill_makes_one_job_with_every_instance() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut config = test_config(&db, spool.path());
    config.tracker.quiet_period_secs = 4.0;
    config.database.max_connections = 4;
    let config = write_daemon_config(config, work.path());
    let log = work.path().join("daemon.log");
    let mut daemon = spawn_daemon(&config, &log);
    let addr = daemon.answering().await;
    let pool = db.pool().await;

    // The first send, killed once half the study has arrived.
    let first = tokio::task::spawn_blocking(move || send_all(addr, Duration::from_millis(50)));
    wait_until(Duration::from_secs(60), "half the study", || {
        let pool = pool.clone();
        async move { count(&pool, "SELECT count(*) FROM instance").await >= (INSTANCES / 2) as i64 }
    })
    .await;
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let acknowledged = first.await.unwrap().len();
    assert!(acknowledged < INSTANCES, "the kill landed after the whole send");

    let mut daemon = spawn_daemon(&config, &log);
    let addr = daemon.answering().await;
    let resend = tokio::task::spawn_blocking(move || send_all(addr, Duration::from_millis(300))).await.unwrap();
    assert_eq!(resend, vec![0x0000; INSTANCES]);

    wait_until(Duration::from_secs(30), "the study's job", || {
        let pool = pool.clone();
        async move { count(&pool, "SELECT count(*) FROM job").await >= 1 }
    })
    .await;
    assert_eq!(count(&pool, &format!("SELECT count(*) FROM job WHERE study_instance_uid = '{STUDY}'")).await, 1);
    let enqueued: String =
        sqlx::query_scalar("SELECT detail FROM audit_event WHERE event = 'study-enqueued' AND study_instance_uid = $1")
            .bind(STUDY)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(enqueued, format!("{INSTANCES} instances"));
    assert_eq!(count(&pool, "SELECT count(*) FROM instance").await, INSTANCES as i64);
    assert_eq!(count(&pool, "SELECT count(*) FROM audit_event WHERE detail LIKE '%already enqueued%'").await, 0);
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    pool.close().await;
}
