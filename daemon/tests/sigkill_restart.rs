//! The daemon (the real binary) is killed with SIGKILL while storescu sends
//! 200 instances, then restarted: every instance that got Success is in the
//! spool and the database exactly once, nothing half-written is left, the
//! sender's retry completes the study, and the study is enqueued exactly once.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use cxr_led_daemon::spool::Spool;

/// Files storescu -v reported Success for.
fn acknowledged(log: &str) -> Vec<String> {
    let mut current = None;
    let mut acked = Vec::new();
    for line in log.lines() {
        if let Some(file) = line.strip_prefix("I: Sending file: ") {
            current = Some(file.trim().to_string());
        } else if line.contains("Received Store Response (Success)") {
            acked.extend(current.take());
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_200_instance_send_loses_nothing_acknowledged() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut config = test_config(&db, spool.path());
    config.tracker.quiet_period_secs = 2.0;
    config.database.max_connections = 4;
    let config = write_daemon_config(config, work.path());
    let daemon_log = work.path().join("daemon.log");
    let files_dir = work.path().join("files");
    std::fs::create_dir(&files_dir).unwrap();
    let copies = make_copies(&fixture("CR1_6154.dcm"), &files_dir, 200, "2.25.777", "kill");
    let uid_of: HashMap<String, String> = copies.iter().map(|(p, u)| (p.display().to_string(), u.clone())).collect();
    let files: Vec<String> = copies.iter().map(|(p, _)| p.display().to_string()).collect();

    let mut daemon = spawn_daemon(&config, &daemon_log);
    let addr = daemon.answering().await;
    let pool = db.pool().await;

    // storescu sending every file to the daemon at `port`.
    let storescu_args = |port: u16| {
        let mut args: Vec<String> =
            ["-v", "-aet", "PACS", "-aec", AE, "127.0.0.1", &port.to_string()].iter().map(|s| s.to_string()).collect();
        args.extend(files.iter().cloned());
        args
    };
    let sender = tokio::spawn(dcmtk("storescu", storescu_args(addr.port())));
    // Kill once a good part has been stored (or the send is over); polled
    // tightly so that the kill lands mid-send even on a fast machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !sender.is_finished() && count(&pool, "SELECT count(*) FROM instance").await < 40 {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for instances to arrive");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let first = sender.await.unwrap();
    let acked = acknowledged(&text(&first));
    eprintln!("storescu got Success for {} of 200 before SIGKILL", acked.len());
    assert!(!acked.is_empty());

    let mut daemon = spawn_daemon(&config, &daemon_log);
    let addr = daemon.answering().await;

    // Every acknowledged instance: one row, one file.
    for file in &acked {
        let uid = &uid_of[file];
        let rows = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM instance WHERE sop_instance_uid = $1")
            .bind(uid)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 1, "{uid}");
        assert!(spool.path().join(Spool::file_name(uid)).is_file(), "{uid}");
    }
    // Nothing half-written: no temporary files, files and rows agree.
    assert_eq!(temp_files(spool.path()), 0);
    let rows = count(&pool, "SELECT count(*) FROM instance").await;
    assert_eq!(spool_files(spool.path()).len() as i64, rows);

    // The sender retries everything: acknowledged ones are duplicates.
    let second = dcmtk("storescu", storescu_args(addr.port())).await;
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(acknowledged(&text(&second)).len(), 200);
    assert_eq!(count(&pool, "SELECT count(*) FROM instance").await, 200);
    assert_eq!(spool_files(spool.path()).len(), 200);

    wait_until(Duration::from_secs(60), "the study job", || {
        let pool = pool.clone();
        async move { count(&pool, "SELECT count(*) FROM job").await >= 1 }
    })
    .await;
    // Longer than a quiet period and many tracker polls later, still one job.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM job WHERE study_instance_uid = '2.25.777'").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM audit_event WHERE event = 'study-enqueued'").await, 1);

    daemon.kill().unwrap();
    daemon.wait().unwrap();
    pool.close().await;
}
