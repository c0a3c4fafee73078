//! Delivery of derived instances to a PACS: dcmtk `storescp` (and, where a
//! real failure status or duplicate detection is needed, cxr-ledd's own SCP)
//! as the destination, real PostgreSQL for the outbox and the audit trail.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::storescp::StoreScp;
use common::*;
use cxr_led_daemon::config::{DeliveryConfig, DestinationConfig, DestinationTlsConfig};
use cxr_led_daemon::ops::metrics::Metrics;
use cxr_led_daemon::{db, delivery};
use cxr_led_dicom::derive::{self, StoredPixels};
use dicom_dictionary_std::tags;
use dicom_object::open_file;
use dicom_pixeldata::PixelDecoder;
use sqlx::PgPool;

/// A derived instance of a fixture, written where the worker would put it.
struct DerivedFile {
    path: PathBuf,
    sop_instance_uid: String,
    sop_class_uid: String,
    study_instance_uid: String,
}

fn derived_file(dir: &Path, fixture_name: &str, tag: &str) -> DerivedFile {
    let source = open_file(fixture(fixture_name)).unwrap();
    let decoded = source.decode_pixel_data().unwrap();
    let max = (1u32 << decoded.bits_stored()) - 1;
    let pixels = if decoded.bits_allocated() == 8 {
        StoredPixels::U8(decoded.data().iter().map(|&v| (max - (u32::from(v) & max)) as u8).collect())
    } else {
        StoredPixels::U16(decoded.data_ow().iter().map(|&v| (max - (u32::from(v) & max)) as u16).collect())
    };
    let source_uid = source.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().to_string();
    let provenance = tiny_provenance(
        derive::uid_from_parts(&[b"instance", tag.as_bytes(), source_uid.as_bytes()]),
        derive::uid_from_parts(&[b"series", tag.as_bytes(), source_uid.as_bytes()]),
    );
    let object = derive::derive_instance(&source, pixels, &provenance).unwrap();
    let path = dir.join(format!("{tag}.dcm"));
    derive::write_durably(&object, &path).unwrap();
    let text = |t| object.element(t).unwrap().to_str().unwrap().trim_end_matches('\0').to_string();
    DerivedFile {
        path,
        sop_instance_uid: provenance.derived_sop_instance_uid.clone(),
        sop_class_uid: text(tags::SOP_CLASS_UID),
        study_instance_uid: text(tags::STUDY_INSTANCE_UID),
    }
}

fn delivery_config(destinations: Vec<DestinationConfig>) -> DeliveryConfig {
    DeliveryConfig {
        destinations,
        retry_initial_secs: 1,
        retry_max_secs: 2,
        connect_timeout_secs: 3,
        response_timeout_secs: 20,
        poll_interval_ms: 50,
        ..Default::default()
    }
}

fn destination(name: &str, ae: &str, port: u16) -> DestinationConfig {
    DestinationConfig { name: name.into(), ae_title: ae.into(), address: format!("127.0.0.1:{port}"), tls: None }
}

async fn enqueue(pool: &PgPool, file: &DerivedFile, destinations: &[DestinationConfig]) {
    let mut tx = pool.begin().await.unwrap();
    delivery::outbox::enqueue(
        &mut tx,
        &file.sop_instance_uid,
        &file.sop_class_uid,
        &file.study_instance_uid,
        &file.path,
        destinations,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

#[derive(Debug, sqlx::FromRow)]
struct OutboxRow {
    state: String,
    attempts: i32,
    last_error: Option<String>,
    last_status: Option<i32>,
    due_in_secs: f64,
    sent: bool,
}

async fn outbox(pool: &PgPool, destination: &str) -> OutboxRow {
    sqlx::query_as(
        "SELECT state, attempts, last_error, last_status, \
         EXTRACT(EPOCH FROM next_attempt_at - now())::float8 AS due_in_secs, sent_at IS NOT NULL AS sent \
         FROM outbox WHERE destination = $1",
    )
    .bind(destination)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Runs passes until the destination's row is no longer pending (or `limit` passes).
async fn deliver_until_settled(pool: &PgPool, config: &DeliveryConfig, destination: &str) -> OutboxRow {
    for _ in 0..100 {
        delivery::deliver_due(pool, config, &Metrics::default()).await.unwrap();
        let row = outbox(pool, destination).await;
        if row.state != "pending" {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("delivery to {destination} never settled: {:?}", outbox(pool, destination).await);
}

async fn audit_count(pool: &PgPool, event: &str, outcome: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_event WHERE event = $1 AND outcome = $2")
        .bind(event)
        .bind(outcome)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn migrated(db: &TestDb) -> PgPool {
    db::connect(&db.url, 4).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacs_down_then_up_gets_the_instance_once() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let work = tempfile::tempdir().unwrap();
    let file = derived_file(work.path(), "CR1_6154.dcm", "down-up");
    let port = free_port();
    let config = delivery_config(vec![destination("pacs", "PACS", port)]);
    enqueue(&pool, &file, &config.destinations).await;
    // Enqueueing again (a re-run after a crash) adds nothing.
    enqueue(&pool, &file, &config.destinations).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 1);

    // The PACS is down: a failure is recorded with a retry time, nothing is lost.
    assert_eq!(delivery::deliver_due(&pool, &config, &Metrics::default()).await.unwrap(), 1);
    let row = outbox(&pool, "pacs").await;
    assert_eq!((row.state.as_str(), row.attempts, row.sent), ("pending", 1, false), "{row:?}");
    let error = row.last_error.unwrap();
    assert!(error.contains("association with pacs (PACS at 127.0.0.1:"), "{error}");
    assert!(row.due_in_secs > 0.5 && row.due_in_secs < 1.2, "{}", row.due_in_secs);
    assert_eq!(audit_count(&pool, "delivery-failed", "failure").await, 1);
    // Not due yet: the next pass does nothing.
    assert_eq!(delivery::deliver_due(&pool, &config, &Metrics::default()).await.unwrap(), 0);

    // The PACS comes up: the next due pass sends it.
    let pacs = StoreScp::start("PACS", port, &[]);
    let row = deliver_until_settled(&pool, &config, "pacs").await;
    assert_eq!((row.state.as_str(), row.attempts, row.last_status, row.sent), ("sent", 2, Some(0), true), "{row:?}");
    assert!(row.last_error.is_none());
    assert_eq!(audit_count(&pool, "instance-sent", "success").await, 1);
    let detail: String =
        sqlx::query_scalar("SELECT detail FROM audit_event WHERE event = 'instance-sent' AND sop_instance_uid = $1")
            .bind(&file.sop_instance_uid)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        detail.contains("destination pacs") && detail.contains("status 0000") && detail.contains("attempt 2"),
        "{detail}"
    );

    // More passes send nothing more.
    for _ in 0..3 {
        assert_eq!(delivery::deliver_due(&pool, &config, &Metrics::default()).await.unwrap(), 0);
    }
    let files = pacs.files();
    assert_eq!(files.len(), 1, "{files:?}");
    let received = open_file(&files[0]).unwrap();
    let sent = open_file(&file.path).unwrap();
    let uid = received.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0').to_string();
    assert_eq!(uid, file.sop_instance_uid);
    assert_eq!(
        received.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap(),
        sent.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap()
    );
    assert_eq!(received.meta().transfer_syntax().trim_end_matches('\0'), EXPLICIT_LE);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_only_peer_gets_a_re_encoded_native_size_instance() {
    // The 1955 x 1841 16-bit CR (7 MB) to a storescp that accepts Implicit VR
    // only and takes PDUs of at most 16 KiB: re-encoded, split, intact.
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let work = tempfile::tempdir().unwrap();
    let file = derived_file(work.path(), "RG1_UNCR.dcm", "implicit");
    let port = free_port();
    let pacs = StoreScp::start("PACS", port, &["+xi", "-pdu", "16384"]);
    let config = delivery_config(vec![destination("implicit-pacs", "PACS", port)]);
    enqueue(&pool, &file, &config.destinations).await;
    let row = deliver_until_settled(&pool, &config, "implicit-pacs").await;
    assert_eq!((row.state.as_str(), row.attempts, row.last_status), ("sent", 1, Some(0)), "{row:?}");
    let files = pacs.files();
    assert_eq!(files.len(), 1, "{files:?}");
    let received = open_file(&files[0]).unwrap();
    assert_eq!(received.meta().transfer_syntax().trim_end_matches('\0'), "1.2.840.10008.1.2");
    let sent = open_file(&file.path).unwrap();
    for tag in [tags::SOP_INSTANCE_UID, tags::STUDY_INSTANCE_UID, tags::DERIVATION_DESCRIPTION] {
        assert_eq!(received.element(tag).unwrap().to_str().unwrap(), sent.element(tag).unwrap().to_str().unwrap());
    }
    assert_eq!(
        received.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap(),
        sent.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap()
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_destination_is_retried_and_gives_up_only_when_told() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let work = tempfile::tempdir().unwrap();
    let file = derived_file(work.path(), "CR1_6154.dcm", "refused");
    let port = free_port();
    // storescp --refuse rejects every association.
    let pacs = StoreScp::start("PACS", port, &["--refuse"]);
    let mut config = delivery_config(vec![destination("refusing", "PACS", port)]);
    config.max_attempts = 3;
    enqueue(&pool, &file, &config.destinations).await;

    assert_eq!(delivery::deliver_due(&pool, &config, &Metrics::default()).await.unwrap(), 1);
    let row = outbox(&pool, "refusing").await;
    assert_eq!((row.state.as_str(), row.attempts), ("pending", 1), "{row:?}");
    let error = row.last_error.unwrap();
    assert!(error.to_lowercase().contains("reject"), "{error}");

    // Retried with backoff until max-attempts, then marked failed (never silently).
    let row = deliver_until_settled(&pool, &config, "refusing").await;
    assert_eq!((row.state.as_str(), row.attempts), ("failed", 3), "{row:?}");
    assert_eq!(audit_count(&pool, "delivery-failed", "failure").await, 2);
    assert_eq!(audit_count(&pool, "delivery-failed", "gave-up").await, 1);
    let detail: String =
        sqlx::query_scalar("SELECT detail FROM audit_event WHERE outcome = 'gave-up'").fetch_one(&pool).await.unwrap();
    assert!(detail.contains("giving up after 3 attempts"), "{detail}");
    assert!(pacs.files().is_empty());
    // A failed row is never picked up again.
    assert_eq!(delivery::deliver_due(&pool, &config, &Metrics::default()).await.unwrap(), 0);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_status_is_recorded_and_a_resend_is_the_same_instance() {
    // cxr-ledd's own SCP as the PACS: it answers A700 while its database
    // refuses instances (a real DIMSE failure status), and recognises a
    // second copy of a SOP Instance UID as the instance it already has.
    let pacs_db = TestDb::create().await;
    let pacs_spool = tempfile::tempdir().unwrap();
    let pacs = start(test_config(&pacs_db, pacs_spool.path())).await;
    let pacs_pool = pacs_db.pool().await;
    sqlx::query("ALTER TABLE instance ADD CONSTRAINT refuse_all CHECK (size_bytes < 0) NOT VALID")
        .execute(&pacs_pool)
        .await
        .unwrap();

    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let work = tempfile::tempdir().unwrap();
    let file = derived_file(work.path(), "CR1_6154.dcm", "status");
    let config = delivery_config(vec![destination("ledpacs", AE, pacs.local_addr.port())]);
    enqueue(&pool, &file, &config.destinations).await;

    assert_eq!(delivery::deliver_due(&pool, &config, &Metrics::default()).await.unwrap(), 1);
    let row = outbox(&pool, "ledpacs").await;
    assert_eq!((row.state.as_str(), row.attempts, row.last_status), ("pending", 1, Some(0xA700)), "{row:?}");
    assert!(row.last_error.as_deref().unwrap().starts_with("refused with status A700"), "{row:?}");

    // The PACS recovers: the retry is stored.
    sqlx::query("ALTER TABLE instance DROP CONSTRAINT refuse_all").execute(&pacs_pool).await.unwrap();
    let row = deliver_until_settled(&pool, &config, "ledpacs").await;
    assert_eq!((row.state.as_str(), row.attempts, row.last_status), ("sent", 2, Some(0)), "{row:?}");
    let query = "SELECT count(*) FROM instance";
    assert_eq!(count(&pacs_pool, query).await, 1);

    // A crash between the send and the commit of 'sent' leaves the row pending:
    // simulated by resetting it. The next pass sends the same file again, and
    // since the SOP Instance UID is the same the PACS still has one instance.
    sqlx::query("UPDATE outbox SET state = 'pending', sent_at = NULL, next_attempt_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    let row = deliver_until_settled(&pool, &config, "ledpacs").await;
    assert_eq!((row.state.as_str(), row.last_status), ("sent", Some(0)), "{row:?}");
    assert_eq!(count(&pacs_pool, query).await, 1);
    let stored: String =
        sqlx::query_scalar("SELECT sop_instance_uid FROM instance").fetch_one(&pacs_pool).await.unwrap();
    assert_eq!(stored, file.sop_instance_uid);
    assert_eq!(
        count(
            &pacs_pool,
            "SELECT count(*) FROM audit_event WHERE event = 'instance-received' AND outcome = 'duplicate'"
        )
        .await,
        1
    );
    pacs.stop().await;
    pacs_pool.close().await;
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_the_sender() {
    // service::start spawns the sender: an enqueued row reaches storescp
    // without anyone calling deliver_due, and stop() ends the sender.
    let port = free_port();
    let pacs = StoreScp::start("PACS", port, &[]);
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let mut config = test_config(&db, spool.path());
    config.delivery = delivery_config(vec![destination("pacs", "PACS", port)]);
    let running = start(config.clone()).await;
    let work = tempfile::tempdir().unwrap();
    let file = derived_file(work.path(), "dx_image.dcm", "service");
    enqueue(&running.db, &file, &config.delivery.destinations).await;
    let pool = running.db.clone();
    wait_until(Duration::from_secs(30), "the sender to deliver", || {
        let pool = pool.clone();
        async move { count(&pool, "SELECT count(*) FROM outbox WHERE state = 'sent'").await == 1 }
    })
    .await;
    assert_eq!(pacs.files().len(), 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_senders_on_one_database_send_each_row_once() {
    // Two daemons sharing the database: their passes run at the same time,
    // the claim (FOR UPDATE SKIP LOCKED plus lease) hands each row to one.
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let pacs = StoreScp::start("PACS", port, &[]);
    let mut config = delivery_config(vec![destination("pacs", "PACS", port)]);
    config.batch_size = 2;
    let files: Vec<DerivedFile> =
        (0..6).map(|i| derived_file(work.path(), "CR1_6154.dcm", &format!("two-{i}"))).collect();
    for file in &files {
        enqueue(&pool, file, &config.destinations).await;
    }
    let (a, b) = tokio::join!(
        async {
            let mut n = 0;
            for _ in 0..6 {
                n += delivery::deliver_due(&pool, &config, &Metrics::default()).await.unwrap();
            }
            n
        },
        async {
            let mut n = 0;
            for _ in 0..6 {
                n += delivery::deliver_due(&pool, &config, &Metrics::default()).await.unwrap();
            }
            n
        }
    );
    assert_eq!(a + b, 6, "claimed {a} + {b}");
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox WHERE state = 'sent' AND attempts = 1").await, 6);
    assert_eq!(count(&pool, "SELECT count(*) FROM audit_event WHERE event = 'instance-sent'").await, 6);
    assert_eq!(pacs.files().len(), 6);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_pacs_that_checks_client_certificates_gets_the_instance_over_tls() {
    let pki = common::pki::Pki::new("cxr-led test CA");
    let pacs_certificate = pki.issue("pacs");
    let ours = pki.issue("cxrled");
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let work = tempfile::tempdir().unwrap();
    let file = derived_file(work.path(), "CR1_6154.dcm", "tls");
    let port = free_port();
    // storescp +tls asks for a client certificate and checks it against the CA (dcmtk's default).
    let mut scp_args = pacs_certificate.dcmtk_args();
    scp_args.extend(["+cf".into(), pki.ca().display().to_string()]);
    let pacs = StoreScp::start("PACS", port, &scp_args.iter().map(String::as_str).collect::<Vec<_>>());

    let tls = |ca: PathBuf, client: Option<&common::pki::Issued>| DestinationTlsConfig {
        ca,
        server_name: None,
        certificate: client.map(|c| c.certificate.clone()),
        private_key: client.map(|c| c.private_key.clone()),
    };
    let with_tls =
        |name: &str, tls: DestinationTlsConfig| DestinationConfig { tls: Some(tls), ..destination(name, "PACS", port) };
    let stranger = common::pki::Pki::new("someone else's CA");
    let config = delivery_config(vec![
        with_tls("pacs", tls(pki.ca(), Some(&ours))),
        with_tls("no-client-certificate", tls(pki.ca(), None)),
        with_tls("untrusted-pacs", tls(stranger.ca(), Some(&ours))),
        destination("plain", "PACS", port),
    ]);
    enqueue(&pool, &file, &config.destinations).await;

    let row = deliver_until_settled(&pool, &config, "pacs").await;
    assert_eq!((row.state.as_str(), row.last_status, row.sent), ("sent", Some(0), true), "{row:?}");
    let received = pacs.files();
    assert_eq!(received.len(), 1, "{received:?}");
    let stored = open_file(&received[0]).unwrap();
    assert_eq!(
        stored.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0'),
        file.sop_instance_uid
    );

    // The others failed, each saying why, and stay queued for a retry.
    for (destination, why) in [
        ("no-client-certificate", "over TLS failed"),
        ("untrusted-pacs", "UnknownIssuer"),
        ("plain", "association with plain"),
    ] {
        let row = outbox(&pool, destination).await;
        assert_eq!((row.state.as_str(), row.sent), ("pending", false), "{destination}: {row:?}");
        let error = row.last_error.unwrap_or_default();
        assert!(error.contains(why), "{destination}: {error}");
    }
    pool.close().await;
}
