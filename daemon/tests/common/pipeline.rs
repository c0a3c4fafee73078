//! The pipeline tests' set-up: a configuration with the tiny bundle on CPU
//! and one PACS, under-exposed DX studies, and waiting for rows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cxr_led_daemon::config::{Config, DestinationConfig};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::open_file;
use sqlx::PgPool;

/// The AE title of the test PACS.
pub const PACS_AE: &str = "TESTPACS";

/// Waits (at most `limit_secs`) until every query counts its expected rows.
pub async fn wait_for_counts(pool: &PgPool, limit_secs: u64, what: &str, counts: &[(&str, i64)]) {
    super::wait_until(Duration::from_secs(limit_secs), what, || async move {
        for &(sql, expected) in counts {
            if super::count(pool, sql).await != expected {
                return false;
            }
        }
        true
    })
    .await;
}

/// A pipeline configuration: tiny bundle on CPU, fast tracker and retries,
/// the PACS at `pacs_port` as the one destination.
pub fn pipeline_config(db: &super::TestDb, spool: &Path, pacs_port: u16) -> Config {
    let mut config = super::test_config(db, spool);
    config.tracker.quiet_period_secs = 0.5;
    config.pipeline.enabled = true;
    config.pipeline.bundle = super::tiny_bundle();
    config.pipeline.device = "cpu".into();
    config.pipeline.poll_interval_ms = 50;
    config.pipeline.retry_initial_secs = 1;
    // The tiny bundle has random weights: hold nothing unless a test says so.
    config.pipeline.hold_threshold = 1.0;
    config.delivery.calling_ae_title = "CXRLED".into();
    config.delivery.destinations = vec![DestinationConfig {
        name: "pacs".into(),
        ae_title: PACS_AE.into(),
        address: format!("127.0.0.1:{pacs_port}"),
        tls: None,
    }];
    config.delivery.retry_initial_secs = 1;
    config.delivery.retry_max_secs = 1;
    config.delivery.poll_interval_ms = 100;
    config
}

/// A copy of dx_image.dcm (DI -7) in its own study, with the given DI.
pub fn dx_copy(dir: &Path, name: &str, deviation_index: &str) -> (PathBuf, String, String) {
    let study =
        format!("2.25.{}{}", std::process::id(), name.bytes().map(|b| (b % 10).to_string()).collect::<String>());
    let (path, sop) = super::make_copies(&super::fixture("dx_image.dcm"), dir, 1, &study, name).remove(0);
    let mut object = open_file(&path).unwrap();
    object.put(DataElement::new(tags::DEVIATION_INDEX, VR::DS, PrimitiveValue::from(deviation_index)));
    object.put(DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, PrimitiveValue::from(format!("{study}.1"))));
    object.write_to_file(&path).unwrap();
    (path, sop, study)
}
