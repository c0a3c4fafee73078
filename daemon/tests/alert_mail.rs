//! Alert mails through a real SMTP server (Debian's aiosmtpd, writing a
//! Maildir) from rows of a real PostgreSQL: each alert is mailed once, a
//! failed mail records nothing and is sent on the next pass.

mod common;
mod pipeline_rows;
mod smtp_sink;

use std::time::Duration;

use common::TestDb;
use cxr_led_daemon::alerts::mail::Mailer;
use cxr_led_daemon::alerts::{self, Alert};
use cxr_led_daemon::config::AlertsConfig;
use cxr_led_daemon::{audit, db};
use pipeline_rows::{insert_decision, insert_enhancement, insert_outbox, insert_source};
use smtp_sink::{mail_config, wait_for_messages, SmtpSink};
use sqlx::PgPool;

async fn migrated() -> (TestDb, PgPool) {
    let test_db = TestDb::create().await;
    let pool = db::connect(&test_db.url, 8).await.expect("connect and migrate");
    (test_db, pool)
}

async fn pass(db: &PgPool, mailer: &Mailer) -> Vec<Alert> {
    alerts::run_once(db, mailer, &AlertsConfig::default()).await.expect("alert pass")
}

async fn alert_rows(db: &PgPool, kind: &str) -> i64 {
    common::count(db, &format!("SELECT count(*) FROM alert WHERE kind = '{kind}'")).await
}

#[tokio::test]
async fn held_result_is_mailed_once() {
    let (_guard, db) = migrated().await;
    let sink = SmtpSink::start(common::free_port());
    let mailer = Mailer::from_config(&mail_config(sink.port)).unwrap();
    let held = insert_source(&db, 1).await;
    insert_decision(&db, &held).await;
    insert_enhancement(&db, &held, "2.25.900000000000000000000000000000000001", 0.83, true).await;
    let passed = insert_source(&db, 2).await;
    insert_enhancement(&db, &passed, "2.25.900000000000000000000000000000000002", 0.12, false).await;

    let sent = pass(&db, &mailer).await;
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].kind, sent[0].key.as_str()), (alerts::HELD, "2.25.900000000000000000000000000000000001"));
    let messages = wait_for_messages(&sink, 1);
    assert_eq!(messages.len(), 1);
    let mail = &messages[0];
    println!("{mail}");
    for expected in [
        "Subject: [cxr-led] Result held: hallucination-check score 0.8300 above 0.5000",
        "To: \"Radiology IT\" <rad-it@hospital.example>, pacs-admin@hospital.example",
        "Derived SOP Instance UID:  2.25.900000000000000000000000000000000001",
        &format!("Source SOP Instance UID:   {}", held.sop),
        &format!("Study Instance UID:        {}", held.study),
        "Score:                     0.8300 (hold threshold 0.5000)",
        "Score components:          {\"spread\": 0.12, \"consistency\": 0.41}",
        "Model bundle:              led-cxr 1.0.0",
        "SELECT * FROM audit_derived_instance WHERE derived_sop_instance_uid = \
         '2.25.900000000000000000000000000000000001';",
    ] {
        assert!(mail.contains(expected), "missing {expected:?} in\n{mail}");
    }
    assert!(!mail.contains("900000000000000000000000000000000002"), "the passed result is not alerted");

    // The second pass finds it sent: no new mail, one alert row, one audit event.
    assert!(pass(&db, &mailer).await.is_empty());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(alert_rows(&db, alerts::HELD).await, 1);
    let (detail, kind, sop): (String, String, String) = sqlx::query_as(
        "SELECT detail, data->>'kind', sop_instance_uid FROM audit_event WHERE event = $1 AND outcome = 'success'",
    )
    .bind(audit::ALERT_SENT)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((kind.as_str(), sop.as_str()), ("held", "2.25.900000000000000000000000000000000001"));
    assert!(detail.contains("rad-it@hospital.example"), "{detail}");
    let held_view: Option<String> =
        sqlx::query_scalar("SELECT alert_sent_at::text FROM audit_held_results").fetch_one(&db).await.unwrap();
    assert!(held_view.is_some());
    assert!(audit::verify_chain(&db).await.unwrap().is_intact());
}

#[tokio::test]
async fn dead_job_mails_its_reason() {
    let (_guard, db) = migrated().await;
    let sink = SmtpSink::start(common::free_port());
    let mailer = Mailer::from_config(&mail_config(sink.port)).unwrap();
    let source = insert_source(&db, 3).await;
    sqlx::query(
        "UPDATE job SET state = 'dead', attempts = 5, finished_at = now(), \
         last_error = 'decoding 1.2.826.0.1.3680043.10.1137.3.1.1: JPEG 2000 codestream truncated at byte 81920' \
         WHERE id = $1",
    )
    .bind(source.job_id)
    .execute(&db)
    .await
    .unwrap();

    let sent = pass(&db, &mailer).await;
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].kind, sent[0].key.clone()), (alerts::DEAD_JOB, source.job_id.to_string()));
    let messages = wait_for_messages(&sink, 1);
    assert_eq!(messages.len(), 1);
    let mail = &messages[0];
    for expected in [
        format!("Subject: [cxr-led] Job {} failed for good after 5 attempts (study {})", source.job_id, source.study),
        "Reason (last error): decoding 1.2.826.0.1.3680043.10.1137.3.1.1: JPEG 2000 codestream truncated at byte 81920"
            .to_string(),
        format!("Instances (1):\n  {}\n", source.sop),
        format!("SELECT * FROM audit_dead_jobs WHERE job_id = {};", source.job_id),
        format!("SELECT * FROM audit_study_timeline WHERE study_instance_uid = '{}' ORDER BY seq;", source.study),
    ] {
        assert!(mail.contains(&expected), "missing {expected:?} in\n{mail}");
    }
    assert!(pass(&db, &mailer).await.is_empty());
    assert_eq!(alert_rows(&db, alerts::DEAD_JOB).await, 1);
    let sent_at: Option<String> =
        sqlx::query_scalar("SELECT alert_sent_at::text FROM audit_dead_jobs").fetch_one(&db).await.unwrap();
    assert!(sent_at.is_some());
}

#[tokio::test]
async fn unreachable_pacs_is_one_alert_per_destination_and_outage() {
    let (_guard, db) = migrated().await;
    let sink = SmtpSink::start(common::free_port());
    let mailer = Mailer::from_config(&mail_config(sink.port)).unwrap();
    let study = insert_source(&db, 4).await.study;
    // PACS_A: three instances pending for an hour; PACS_B: one; PACS_C: one,
    // but only a minute old; PACS_D: one pending for an hour, but another
    // delivered two minutes ago (reachable, something else is wrong).
    for (i, destination, state, age) in [
        (1, "PACS_A", "pending", 3600),
        (2, "PACS_A", "pending", 3500),
        (3, "PACS_A", "pending", 3400),
        (4, "PACS_B", "pending", 3600),
        (5, "PACS_C", "pending", 60),
        (6, "PACS_D", "pending", 3600),
        (7, "PACS_D", "sent", 122),
    ] {
        insert_outbox(&db, &format!("2.25.77{i}"), &study, destination, state, age).await;
    }
    let mut sent = pass(&db, &mailer).await;
    sent.sort_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<&str> = sent.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(keys, vec!["PACS_A last-sent=never", "PACS_B last-sent=never"]);
    let messages = wait_for_messages(&sink, 2);
    assert_eq!(messages.len(), 2);
    let mail_a = messages.iter().find(|m| m.contains("unreachable: PACS_A")).expect("a mail for PACS_A");
    for expected in [
        "Subject: [cxr-led] PACS unreachable: PACS_A: 3 derived instances waiting since",
        "Waiting instances:        3",
        "Last successful delivery: never",
        "Last error:               connection refused (os error 111)",
        "  2.25.771\n  2.25.772\n  2.25.773\n",
        "SELECT * FROM audit_undelivered WHERE destination = 'PACS_A';",
    ] {
        assert!(mail_a.contains(expected), "missing {expected:?} in\n{mail_a}");
    }
    assert!(pass(&db, &mailer).await.is_empty(), "one alert per outage");
    assert_eq!(alert_rows(&db, alerts::PACS_UNREACHABLE).await, 2);

    // PACS_A came back (its rows went out 50 minutes ago) and went down again:
    // a new instance has waited 40 minutes. That is a new outage, a new alert.
    sqlx::query(
        "UPDATE outbox SET state = 'sent', sent_at = now() - interval '50 minutes' WHERE destination = 'PACS_A'",
    )
    .execute(&db)
    .await
    .unwrap();
    insert_outbox(&db, "2.25.778", &study, "PACS_A", "pending", 2400).await;
    let sent = pass(&db, &mailer).await;
    assert_eq!(sent.len(), 1);
    assert!(sent[0].key.starts_with("PACS_A last-sent=20"), "{}", sent[0].key);
    let messages = wait_for_messages(&sink, 3);
    assert_eq!(messages.len(), 3);
    assert!(messages.iter().any(|m| m.contains("Waiting instances:        1") && m.contains("2.25.778")));
    assert!(audit::verify_chain(&db).await.unwrap().is_intact());
}

#[tokio::test]
async fn smtp_down_records_nothing_and_the_next_pass_sends() {
    let (_guard, db) = migrated().await;
    let port = common::free_port();
    let mailer = Mailer::from_config(&mail_config(port)).unwrap();
    let source = insert_source(&db, 5).await;
    insert_enhancement(&db, &source, "2.25.55", 0.97, true).await;

    let err = alerts::run_once(&db, &mailer, &AlertsConfig::default()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("alert held 2.25.55 not sent (will retry next pass)"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert_eq!(alert_rows(&db, alerts::HELD).await, 0);
    let events = common::count(&db, "SELECT count(*) FROM audit_event WHERE event = 'alert-sent'").await;
    assert_eq!(events, 0);

    let sink = SmtpSink::start(port);
    let sent = pass(&db, &mailer).await;
    assert_eq!(sent.len(), 1);
    let messages = wait_for_messages(&sink, 1);
    assert_eq!(messages.len(), 1);
    assert!(messages[0].contains("Derived SOP Instance UID:  2.25.55"), "{}", messages[0]);
    assert_eq!(alert_rows(&db, alerts::HELD).await, 1);
}

#[tokio::test]
async fn the_service_runs_the_alert_loop() {
    let test_db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(common::free_port());
    let mut config = common::test_config(&test_db, spool.path());
    config.mail = mail_config(sink.port);
    config.alerts.poll_interval_ms = 200;
    let running = common::start(config).await;
    let source = insert_source(&running.db, 6).await;
    insert_enhancement(&running.db, &source, "2.25.66", 0.7, true).await;
    let messages = tokio::task::spawn_blocking(move || {
        let messages = wait_for_messages(&sink, 1);
        drop(sink);
        messages
    })
    .await
    .unwrap();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].contains("Derived SOP Instance UID:  2.25.66"), "{}", messages[0]);
    running.stop().await;
}
