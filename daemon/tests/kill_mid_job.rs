//! Kills at the other moments: the daemon (the real binary) is killed with
//! SIGKILL while it enhances an image, and while it delivers the result to a
//! PACS that has stored it but whose answer has not arrived yet. After a restart the job, or
//! the delivery, is taken over once its lease has run out, and the PACS ends
//! with exactly one derived instance for the source (a re-sent identical SOP
//! Instance UID counts once, as a PACS treats it).

mod common;

use std::path::Path;
use std::time::Duration;

use common::pipeline::{dx_copy, pipeline_config, wait_for_counts, PACS_AE};
use common::storescp::{received, sop_instance_uids, StoreScp};
use common::*;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Files the worker left half-written in the derived folder (`.NAME.part`).
fn partial_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_else(|_| Vec::new())
        .into_iter()
        .filter(|name: &String| name.ends_with(".part"))
        .collect()
}

/// A TCP proxy on a free port in front of the PACS on `target`: requests go
/// straight through, and each P-DATA PDU the PACS answers with (a C-STORE
/// response) is held back `delay`, as from a PACS that stores an instance
/// and is slow to say so.
async fn slow_answering_proxy(target: u16, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut client_read, &mut server_write).await });
                loop {
                    // A PDU: type, reserved, length (u32 big-endian), body.
                    let mut header = [0u8; 6];
                    if server_read.read_exact(&mut header).await.is_err() {
                        break;
                    }
                    let mut body = vec![0u8; u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize];
                    if server_read.read_exact(&mut body).await.is_err() {
                        break;
                    }
                    if header[0] == 0x04 {
                        tokio::time::sleep(delay).await;
                    }
                    if client_write.write_all(&header).await.is_err() || client_write.write_all(&body).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

async fn derived_uid(pool: &PgPool, source: &str) -> String {
    sqlx::query_scalar("SELECT derived_sop_instance_uid FROM enhancement WHERE source_sop_instance_uid = $1")
        .bind(source)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn events(pool: &PgPool, event: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT coalesce(detail, '') FROM audit_event WHERE event = $1 ORDER BY seq")
        .bind(event)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_an_enhancement_is_taken_over_after_the_lease_and_sent_once() {
    let db = TestDb::create().await;
    let work = tempfile::tempdir().unwrap();
    let pacs_port = free_port();
    let pacs_dir = work.path().join("pacs");
    let _pacs = StoreScp::start_in(PACS_AE, pacs_port, &pacs_dir, &["-uf", "--fork"]);
    let mut config = pipeline_config(&db, &work.path().join("spool"), pacs_port);
    // Many refinement steps make the enhancement last seconds, so that the
    // kill lands inside it; a short lease makes the takeover quick.
    config.pipeline.t0 = 500;
    config.pipeline.steps = 50;
    config.pipeline.lease_secs = 10;
    let derived_dir = config.pipeline.output_dir.clone();
    let config = write_daemon_config(config, work.path());
    let log = work.path().join("daemon.log");
    let mut daemon = spawn_daemon(&config, &log);
    let addr = daemon.answering().await;
    let pool = db.pool().await;

    let (file, source, study) = dx_copy(work.path(), "killed", "-7.0");
    let sent = storescu(addr, "MODALITY", &[], &[file]).await;
    assert!(sent.status.success(), "{}", text(&sent));

    wait_for_counts(&pool, 60, "the job running", &[("SELECT count(*) FROM job WHERE state = 'running'", 1)]).await;
    // Past the claim and the decoding, into the inference.
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.kill_and_reap();
    assert_eq!(count(&pool, "SELECT count(*) FROM enhancement").await, 0, "the kill landed after the enhancement");
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM job WHERE state = 'running' AND attempts = 1").await, 1);

    let mut daemon = spawn_daemon(&config, &log);
    daemon.answering().await;
    wait_for_counts(
        &pool,
        300,
        "the job taken over, done and its result sent",
        &[
            ("SELECT count(*) FROM job WHERE state = 'done' AND attempts = 2", 1),
            ("SELECT count(*) FROM outbox WHERE state = 'sent'", 1),
        ],
    )
    .await;
    daemon.kill_and_reap();

    let taken_over = events(&pool, "job-taken-over").await;
    assert_eq!(taken_over.len(), 1, "{taken_over:?}");
    assert!(
        taken_over[0].contains("expired during attempt 1") && taken_over[0].contains("attempt 2"),
        "{taken_over:?}"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM enhancement").await, 1);
    assert_eq!(
        count(&pool, &format!("SELECT count(*) FROM exposure_decision WHERE study_instance_uid = '{study}'")).await,
        1
    );
    let files = received(&pacs_dir);
    assert_eq!(sop_instance_uids(&files), vec![derived_uid(&pool, &source).await], "{files:?}");
    assert!(partial_files(&derived_dir).is_empty(), "{:?}", partial_files(&derived_dir));
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_delivery_sends_the_same_instance_again_and_the_pacs_keeps_one() {
    let db = TestDb::create().await;
    let work = tempfile::tempdir().unwrap();
    let pacs_port = free_port();
    let pacs_dir = work.path().join("pacs");
    // The PACS notes each file it stores; its answers reach the daemon 4 s
    // late (through a proxy): the window in which the daemon is killed.
    let receptions = work.path().join("receptions.log");
    let on_reception = format!("echo #f >> {}", receptions.display());
    let _pacs = StoreScp::start_in(PACS_AE, pacs_port, &pacs_dir, &["-uf", "--fork", "-xcr", &on_reception]);
    let proxy_port = slow_answering_proxy(pacs_port, Duration::from_secs(4)).await;
    let mut config = pipeline_config(&db, &work.path().join("spool"), proxy_port);
    config.delivery.connect_timeout_secs = 2;
    config.delivery.response_timeout_secs = 6;
    let config = write_daemon_config(config, work.path());
    let log = work.path().join("daemon.log");
    let mut daemon = spawn_daemon(&config, &log);
    let addr = daemon.answering().await;
    let pool = db.pool().await;

    let (file, source, _study) = dx_copy(work.path(), "delivering", "-7.0");
    let sent = storescu(addr, "MODALITY", &[], &[file]).await;
    assert!(sent.status.success(), "{}", text(&sent));

    let pacs = pacs_dir.clone();
    wait_until(Duration::from_secs(120), "the PACS to store the derived instance", || {
        let pacs = pacs.clone();
        async move { !received(&pacs).is_empty() }
    })
    .await;
    daemon.kill_and_reap();
    // Stored by the PACS, its answer never seen: the row is still to send.
    let outbox: Vec<(String, i32)> =
        sqlx::query_as("SELECT state, attempts FROM outbox").fetch_all(&pool).await.unwrap();
    assert_eq!(outbox, vec![("pending".to_string(), 0)], "the kill landed after the PACS answered");
    assert_eq!(count(&pool, "SELECT count(*) FROM audit_event WHERE event = 'instance-sent'").await, 0);

    // The restarted daemon sends it again once the delivery lease has run out.
    let mut daemon = spawn_daemon(&config, &log);
    daemon.answering().await;
    let start = std::time::Instant::now();
    while count(&pool, "SELECT count(*) FROM outbox WHERE state = 'sent'").await != 1 {
        if start.elapsed() > Duration::from_secs(150) {
            let outbox: Vec<(String, i32, Option<String>)> =
                sqlx::query_as("SELECT state, attempts, last_error FROM outbox").fetch_all(&pool).await.unwrap();
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("the delivery was not taken over: {outbox:?}\n{}", &log[log.len().saturating_sub(6000)..]);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    daemon.kill_and_reap();

    let stored = std::fs::read_to_string(&receptions).unwrap();
    assert_eq!(stored.lines().count(), 2, "the PACS received the instance twice: {stored}");
    let files = received(&pacs_dir);
    let uids = sop_instance_uids(&files);
    assert_eq!(uids, vec![derived_uid(&pool, &source).await], "one instance at the PACS: {files:?}");
    assert_eq!(count(&pool, "SELECT count(*) FROM enhancement").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM job WHERE state = 'done' AND attempts = 1").await, 1);
    assert_eq!(events(&pool, "instance-sent").await.len(), 1);
    pool.close().await;
}
