//! The whole pipeline on CPU with the tiny bundle, real PostgreSQL and dcmtk's
//! `storescp` as the PACS: an under-exposed study comes back as a valid
//! derived instance, a well-exposed one does not; an instance that arrives
//! after its study was processed gets a job of its own and comes back in the
//! same derived series; a PACS that is down for a while gets every result
//! exactly once; two daemons share one queue; the
//! recorded enhancement reproduces bit for bit.

mod common;
mod smtp_sink;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cxr_led_daemon::app::reproduce;
use cxr_led_daemon::audit;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::open_file;
use sqlx::{PgPool, Row};

use common::pipeline::{dx_copy, pipeline_config, wait_for_counts, PACS_AE};
use common::storescp::{received, sop_instance_uids, StoreScp};

/// What most tests start from: their database, a work folder, and the PACS
/// listening on `pacs_port`, storing into `pacs_dir`.
struct Setup {
    db: common::TestDb,
    work: tempfile::TempDir,
    pacs_port: u16,
    pacs_dir: PathBuf,
    _pacs: StoreScp,
}

impl Setup {
    async fn start() -> Setup {
        let db = common::TestDb::create().await;
        let work = tempfile::tempdir().unwrap();
        let pacs_port = common::free_port();
        let pacs_dir = work.path().join("pacs");
        let pacs = StoreScp::start_in(PACS_AE, pacs_port, &pacs_dir, &["-uf", "--fork"]);
        Setup { db, work, pacs_port, pacs_dir, _pacs: pacs }
    }
}

async fn job_states(db: &PgPool) -> Vec<(String, String, i32)> {
    sqlx::query("SELECT study_instance_uid, state, attempts FROM job ORDER BY study_instance_uid")
        .fetch_all(db)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn send(addr: SocketAddr, files: &[PathBuf]) {
    let output = common::storescu(addr, "MODALITY", &[], files).await;
    assert!(output.status.success(), "storescu failed: {}", common::text(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_under_exposed_image_comes_back_derived_and_a_well_exposed_one_does_not() {
    let Setup { db, work, pacs_port, pacs_dir, _pacs } = Setup::start().await;
    let config = pipeline_config(&db, &work.path().join("spool"), pacs_port);
    let daemon = common::start(config.clone()).await;

    let (low, low_sop, low_study) = dx_copy(work.path(), "low", "-7.0");
    let (fine, _fine_sop, fine_study) = dx_copy(work.path(), "fine", "0.2");
    send(daemon.local_addr, &[low, fine]).await;

    let pool = db.pool().await;
    wait_for_counts(
        &pool,
        120,
        "both jobs done and the result sent",
        &[
            ("SELECT count(*) FROM job WHERE state = 'done'", 2),
            ("SELECT count(*) FROM outbox WHERE state = 'sent'", 1),
        ],
    )
    .await;

    // Exactly one instance reached the PACS: the derived one, in the source's study.
    let files = received(&pacs_dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let derived = open_file(&files[0]).unwrap();
    let text = |tag| derived.element(tag).unwrap().to_str().unwrap().trim_end_matches('\0').trim().to_string();
    assert_eq!(text(tags::STUDY_INSTANCE_UID), low_study);
    assert_ne!(text(tags::SERIES_INSTANCE_UID), format!("{low_study}.1"));
    assert!(text(tags::IMAGE_TYPE).starts_with("DERIVED\\SECONDARY"), "{}", text(tags::IMAGE_TYPE));
    let source = open_file(common::fixture("dx_image.dcm")).unwrap();
    for tag in [tags::ROWS, tags::COLUMNS] {
        assert_eq!(
            derived.element(tag).unwrap().to_int::<u32>().unwrap(),
            source.element(tag).unwrap().to_int::<u32>().unwrap()
        );
    }
    let derived_uid = text(tags::SOP_INSTANCE_UID);
    let row = sqlx::query(
        "SELECT source_sop_instance_uid, held, score, bundle_sha256 FROM enhancement WHERE derived_sop_instance_uid = $1",
    )
    .bind(&derived_uid)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>(0), low_sop);
    assert!(!row.get::<bool, _>(1));
    let score: f64 = row.get(2);
    assert!((0.0..=1.0).contains(&score), "score {score}");

    // The decision of each image, with its rule and numbers.
    let decisions = sqlx::query(
        "SELECT study_instance_uid, flagged, rule, deviation_index FROM exposure_decision ORDER BY study_instance_uid",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for decision in &decisions {
        let study: String = decision.get(0);
        let flagged: bool = decision.get(1);
        assert_eq!(decision.get::<String, _>(2), "deviation-index");
        assert_eq!(flagged, study == low_study, "study {study}");
        if study == fine_study {
            assert_eq!(decision.get::<Option<f64>, _>(3), Some(0.2));
        }
    }
    assert_eq!(common::count(&pool, "SELECT count(*) FROM enhancement").await, 1);
    let events: Vec<String> =
        sqlx::query_scalar("SELECT event || ':' || outcome FROM audit_event WHERE study_instance_uid = $1 ORDER BY id")
            .bind(&low_study)
            .fetch_all(&pool)
            .await
            .unwrap();
    for expected in [
        "instance-received:success",
        "study-enqueued:success",
        "exposure-decision:flagged",
        "instance-enhanced:success",
        "study-processed:success",
    ] {
        assert!(events.iter().any(|e| e == expected), "{expected} missing from {events:?}");
    }

    // The auditor's one query: source, decision, bundle, score, delivery.
    let view = sqlx::query(
        "SELECT source_sop_instance_uid, exposure_rule, deviation_index, exposure_flagged, bundle_sha256, score, \
         held, deliveries FROM audit_derived_instance WHERE derived_sop_instance_uid = $1",
    )
    .bind(&derived_uid)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(view.get::<String, _>("source_sop_instance_uid"), low_sop);
    assert_eq!(view.get::<String, _>("exposure_rule"), "deviation-index");
    assert_eq!(view.get::<Option<f64>, _>("deviation_index"), Some(-7.0));
    assert!(view.get::<bool, _>("exposure_flagged"));
    assert_eq!(view.get::<String, _>("bundle_sha256"), row.get::<String, _>(3));
    let deliveries: serde_json::Value = view.get("deliveries");
    assert_eq!(deliveries[0]["state"], "sent", "{deliveries}");
    assert_eq!(deliveries[0]["destination"], "pacs", "{deliveries}");
    // And the chain over every event of this run verifies.
    let chain = audit::verify_chain(&pool).await.unwrap();
    assert!(chain.is_intact(), "{chain:?}");
    assert!(chain.rows >= 10, "{chain:?}");

    // dciodvfy, the DICOM IOD validator, finds no error in what the PACS got.
    let output = Command::new("dciodvfy").arg(&files[0]).output().expect("dciodvfy runs (dicom3tools installed?)");
    let report = common::text(&output);
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error")).collect();
    assert!(errors.is_empty(), "dciodvfy errors:\n{report}");

    // The recorded enhancement reproduces bit for bit from the spool.
    let reproduction =
        reproduce::reproduce(&pool, &config.ingest.spool_dir, &config.pipeline, &derived_uid).await.unwrap();
    assert!(reproduction.matches, "{reproduction:?}");
    assert_eq!(reproduction.file_matches_record, Some(true));
    assert_eq!(reproduction.differing_pixels, 0);
    assert_eq!(reproduction.score, reproduction.recorded_score);

    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_after_its_study_was_processed_gets_its_own_job_and_comes_back() {
    let Setup { db, work, pacs_port, pacs_dir, _pacs } = Setup::start().await;
    let daemon = common::start(pipeline_config(&db, &work.path().join("spool"), pacs_port)).await;
    let pool = db.pool().await;

    let (early, _early_sop, study) = dx_copy(work.path(), "early", "-7.0");
    send(daemon.local_addr, std::slice::from_ref(&early)).await;
    let first =
        [("SELECT count(*) FROM job WHERE state = 'done'", 1), ("SELECT count(*) FROM outbox WHERE state = 'sent'", 1)];
    wait_for_counts(&pool, 120, "the study processed and its result sent", &first).await;

    // One more under-exposed image of the same study and series, long after.
    let mut object = open_file(&early).unwrap();
    let late_sop = format!("{study}.99");
    object.put(DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(late_sop.as_str())));
    object.update_meta(|m| m.media_storage_sop_instance_uid = late_sop.clone());
    let late = work.path().join("late.dcm");
    object.write_to_file(&late).unwrap();
    send(daemon.local_addr, &[late]).await;
    let second =
        [("SELECT count(*) FROM job WHERE state = 'done'", 2), ("SELECT count(*) FROM outbox WHERE state = 'sent'", 2)];
    wait_for_counts(&pool, 120, "the late instance processed and its result sent", &second).await;

    // Both derived instances reached the PACS, in one derived series of the study.
    let files = received(&pacs_dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let uid = |path: &Path, tag| {
        open_file(path).unwrap().element(tag).unwrap().to_str().unwrap().trim_end_matches('\0').trim().to_string()
    };
    assert_eq!(uid(&files[0], tags::STUDY_INSTANCE_UID), study);
    assert_eq!(uid(&files[1], tags::STUDY_INSTANCE_UID), study);
    assert_eq!(uid(&files[0], tags::SERIES_INSTANCE_UID), uid(&files[1], tags::SERIES_INSTANCE_UID));
    // Two jobs, the second decided only the late instance.
    let jobs: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, state FROM job WHERE study_instance_uid = $1 ORDER BY id")
            .bind(&study)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let late_job: i64 = sqlx::query_scalar("SELECT job_id FROM exposure_decision WHERE sop_instance_uid = $1")
        .bind(&late_sop)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(late_job, jobs[1].0);
    assert_eq!(common::count(&pool, "SELECT count(*) FROM exposure_decision").await, 2);
    let late_job_enhanced: i64 = sqlx::query_scalar("SELECT count(*) FROM enhancement WHERE job_id = $1")
        .bind(late_job)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(late_job_enhanced, 1);
    // Audited as late, and the second enqueue says why.
    let received_detail: String = sqlx::query_scalar(
        "SELECT detail FROM audit_event WHERE event = 'instance-received' AND outcome = 'success' AND sop_instance_uid = $1",
    )
    .bind(&late_sop)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(received_detail.contains("late: its study was already enqueued"), "{received_detail}");
    let enqueued: Vec<String> = sqlx::query_scalar(
        "SELECT detail FROM audit_event WHERE event = 'study-enqueued' AND study_instance_uid = $1 ORDER BY id",
    )
    .bind(&study)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(enqueued, ["1 instances", "1 late instances after 1 earlier job(s); 2 instances in the study"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pacs_down_for_a_while_gets_every_result_exactly_once() {
    let db = common::TestDb::create().await;
    let work = tempfile::tempdir().unwrap();
    let pacs_port = common::free_port();
    let pacs_dir = work.path().join("pacs");
    let daemon = common::start(pipeline_config(&db, &work.path().join("spool"), pacs_port)).await;
    let files: Vec<PathBuf> = (0..3).map(|i| dx_copy(work.path(), &format!("down{i}"), "-8.0").0).collect();
    send(daemon.local_addr, &files).await;

    let pool = db.pool().await;
    // Enhanced, and tried at least twice against the dead PACS.
    wait_for_counts(
        &pool,
        120,
        "failed delivery attempts",
        &[("SELECT count(*) FROM outbox WHERE state = 'pending' AND attempts >= 2", 3)],
    )
    .await;
    assert!(received(&pacs_dir).is_empty());

    let _pacs = StoreScp::start_in(PACS_AE, pacs_port, &pacs_dir, &["-uf", "--fork"]);
    wait_for_counts(
        &pool,
        60,
        "delivery after the PACS came back",
        &[("SELECT count(*) FROM outbox WHERE state = 'sent'", 3)],
    )
    .await;
    // More delivery passes change nothing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let files = received(&pacs_dir);
    assert_eq!(files.len(), 3, "{files:?}");
    let mut uids = sop_instance_uids(&files);
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), 3, "each derived instance once");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_daemons_share_one_queue_and_process_each_study_once() {
    let Setup { db, work, pacs_port, pacs_dir, _pacs } = Setup::start().await;
    // Two daemons on one database and one (shared) spool, as two hosts on shared storage would be.
    let spool = work.path().join("spool");
    let first = common::start(pipeline_config(&db, &spool, pacs_port)).await;
    let second = common::start(pipeline_config(&db, &spool, pacs_port)).await;
    let studies = 6;
    let files: Vec<PathBuf> = (0..studies).map(|i| dx_copy(work.path(), &format!("share{i}"), "-9.0").0).collect();
    send(first.local_addr, &files[..studies / 2]).await;
    send(second.local_addr, &files[studies / 2..]).await;

    let pool = db.pool().await;
    wait_for_counts(
        &pool,
        180,
        "every study processed and sent",
        &[
            ("SELECT count(*) FROM job WHERE state = 'done'", studies as i64),
            ("SELECT count(*) FROM outbox WHERE state = 'sent'", studies as i64),
        ],
    )
    .await;
    for (study, state, attempts) in job_states(&pool).await {
        assert_eq!((state.as_str(), attempts), ("done", 1), "study {study} was claimed once");
    }
    assert_eq!(common::count(&pool, "SELECT count(*) FROM enhancement").await, studies as i64);
    assert_eq!(common::count(&pool, "SELECT count(*) FROM exposure_decision").await, studies as i64);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(received(&pacs_dir).len(), studies);
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_result_is_not_sent_and_mails_an_alert() {
    let Setup { db, work, pacs_port, pacs_dir, _pacs } = Setup::start().await;
    let sink = smtp_sink::SmtpSink::start(common::free_port());
    let mut config = pipeline_config(&db, &work.path().join("spool"), pacs_port);
    // Everything scoring above 0 is held.
    config.pipeline.hold_threshold = 0.0;
    config.mail = smtp_sink::mail_config(sink.port);
    config.alerts.poll_interval_ms = 100;
    let daemon = common::start(config).await;
    let (file, sop, _) = dx_copy(work.path(), "held", "-7.0");
    send(daemon.local_addr, &[file]).await;

    let pool = db.pool().await;
    wait_for_counts(
        &pool,
        120,
        "the held result and its alert",
        &[("SELECT count(*) FROM enhancement WHERE held", 1), ("SELECT count(*) FROM alert", 1)],
    )
    .await;
    let derived: String =
        sqlx::query_scalar("SELECT derived_sop_instance_uid FROM enhancement WHERE source_sop_instance_uid = $1")
            .bind(&sop)
            .fetch_one(&pool)
            .await
            .unwrap();
    let messages = smtp_sink::wait_for_messages(&sink, 1);
    assert_eq!(messages.len(), 1);
    assert!(messages[0].contains(&derived), "the mail names the derived instance:\n{}", messages[0]);
    // Held means never queued, never sent.
    assert_eq!(common::count(&pool, "SELECT count(*) FROM outbox").await, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(received(&pacs_dir).is_empty());
    let events: Vec<String> =
        sqlx::query_scalar("SELECT event FROM audit_event ORDER BY seq").fetch_all(&pool).await.unwrap();
    assert!(events.contains(&"result-held".to_string()) && events.contains(&"alert-sent".to_string()), "{events:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_doubt_map_goes_to_the_pacs_as_a_secondary_capture_when_configured() {
    let Setup { db, work, pacs_port, pacs_dir, _pacs } = Setup::start().await;
    let mut config = pipeline_config(&db, &work.path().join("spool"), pacs_port);
    config.pipeline.doubt_map_instance = true;
    let daemon = common::start(config).await;
    let (file, _, study) = dx_copy(work.path(), "doubt", "-7.0");
    send(daemon.local_addr, &[file]).await;
    let pool = db.pool().await;
    wait_for_counts(
        &pool,
        120,
        "the derived instance and its doubt map sent",
        &[("SELECT count(*) FROM outbox WHERE state = 'sent'", 2)],
    )
    .await;
    let files = received(&pacs_dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let classes: Vec<String> = files
        .iter()
        .map(|f| {
            let object = open_file(f).unwrap();
            assert_eq!(
                object.element(tags::STUDY_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0'),
                study
            );
            object.meta().media_storage_sop_class_uid().trim_end_matches('\0').to_string()
        })
        .collect();
    assert!(classes.contains(&cxr_led_dicom::derive::SECONDARY_CAPTURE.to_string()), "{classes:?}");
    assert!(classes.contains(&cxr_led_dicom::derive::DX_FOR_PRESENTATION.to_string()), "{classes:?}");
    for file in &files {
        let output = Command::new("dciodvfy").arg(file).output().expect("dciodvfy runs");
        let report = common::text(&output);
        assert!(!report.lines().any(|l| l.starts_with("Error")), "dciodvfy errors in {}:\n{report}", file.display());
    }
    daemon.stop().await;
}
