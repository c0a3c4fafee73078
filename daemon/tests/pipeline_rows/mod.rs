//! Rows of the pipeline tables (study, instance, job, exposure_decision,
//! enhancement, outbox) inserted with plain SQL, as the worker and sender
//! write them, for the audit view and alert tests.
#![allow(dead_code, missing_docs)]

use sqlx::{PgPool, Row};

pub const CR: &str = "1.2.840.10008.5.1.4.1.1.1";
pub const DX: &str = "1.2.840.10008.5.1.4.1.1.1.1";

/// A received source instance of its own study, with the study's job.
#[derive(Debug, Clone)]
pub struct Source {
    pub study: String,
    pub sop: String,
    pub job_id: i64,
}

/// A study with one received DX instance (sent by `PACS1` from 10.1.2.3) and its job.
pub async fn insert_source(db: &PgPool, n: u32) -> Source {
    let study = format!("1.2.826.0.1.3680043.10.1137.{n}");
    let sop = format!("{study}.1.1");
    sqlx::query("INSERT INTO study (study_instance_uid, instance_count) VALUES ($1, 1)")
        .bind(&study)
        .execute(db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO instance (sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid, \
         transfer_syntax_uid, spool_file, size_bytes, calling_ae_title, peer_address, received_at) \
         VALUES ($1, $2, $3, $4, '1.2.840.10008.1.2.1', $5, 7654321, 'PACS1', '10.1.2.3:40512', \
         '2026-11-25T09:00:00.123456Z')",
    )
    .bind(&sop)
    .bind(DX)
    .bind(&study)
    .bind(format!("{study}.1"))
    .bind(format!("{sop}.dcm"))
    .execute(db)
    .await
    .unwrap();
    let job_id: i64 =
        sqlx::query("INSERT INTO job (study_instance_uid, state, attempts) VALUES ($1, 'done', 1) RETURNING id")
            .bind(&study)
            .fetch_one(db)
            .await
            .unwrap()
            .get(0);
    Source { study, sop, job_id }
}

/// The exposure gate flagged the source: DI -7.2 from its tags against threshold -3.
pub async fn insert_decision(db: &PgPool, source: &Source) {
    sqlx::query(
        "INSERT INTO exposure_decision (sop_instance_uid, study_instance_uid, job_id, flagged, rule, \
         deviation_index, exposure_index, target_exposure_index, threshold, detail, decided_at) \
         VALUES ($1, $2, $3, true, 'deviation-index', -7.2, 95.0, 500.0, -3.0, \
         '{\"source\": \"tags\"}', '2026-11-25T09:01:00Z')",
    )
    .bind(&source.sop)
    .bind(&source.study)
    .bind(source.job_id)
    .execute(db)
    .await
    .unwrap();
}

/// The enhancement of `source` into `derived`, with the given score and hold decision.
pub async fn insert_enhancement(db: &PgPool, source: &Source, derived: &str, score: f64, held: bool) {
    sqlx::query(
        "INSERT INTO enhancement (derived_sop_instance_uid, derived_series_instance_uid, source_sop_instance_uid, \
         study_instance_uid, job_id, bundle_name, bundle_version, bundle_sha256, params, seed, device, score, \
         score_components, hold_threshold, held, timings, derived_file, pixel_sha256, created_at) \
         VALUES ($1, $2, $3, $4, $5, 'led-cxr', '1.0.0', $6, '{\"t0\": 200, \"steps\": 10}', '9f2c4e01', 'cpu', $7, \
         '{\"consistency\": 0.41, \"spread\": 0.12}', 0.5, $8, '{\"enhance_ms\": 812, \"decode_ms\": 35}', \
         $9, $10, '2026-11-25T09:02:00Z')",
    )
    .bind(derived)
    .bind(format!("{derived}.0"))
    .bind(&source.sop)
    .bind(&source.study)
    .bind(source.job_id)
    .bind("ab".repeat(32))
    .bind(score)
    .bind(held)
    .bind(format!("/var/lib/cxr-led/derived/{derived}.dcm"))
    .bind("cd".repeat(32))
    .execute(db)
    .await
    .unwrap();
}

/// An outbox row for `derived` to `destination`, created `age_secs` ago.
pub async fn insert_outbox(db: &PgPool, derived: &str, study: &str, destination: &str, state: &str, age_secs: i64) {
    let sent = state == "sent";
    sqlx::query(
        "INSERT INTO outbox (sop_instance_uid, sop_class_uid, study_instance_uid, destination, file, state, \
         attempts, last_status, last_error, created_at, sent_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() - make_interval(secs => $10), \
         CASE WHEN $11 THEN now() - make_interval(secs => $10) + interval '2 seconds' END)",
    )
    .bind(derived)
    .bind(DX)
    .bind(study)
    .bind(destination)
    .bind(format!("/var/lib/cxr-led/derived/{derived}.dcm"))
    .bind(state)
    .bind(if sent { 1 } else { 4 })
    .bind(if sent { Some(0i32) } else { None })
    .bind(if sent { None } else { Some("connection refused (os error 111)") })
    .bind(age_secs as f64)
    .bind(sent)
    .execute(db)
    .await
    .unwrap();
}
