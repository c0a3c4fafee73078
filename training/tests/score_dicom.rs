//! `cxr-led-train score` on a DICOM pair gives the daemon's number: the
//! daemon enhances and scores the DI -7 fixture and writes its derived
//! instance; the CLI reads the source and that derived file back through the
//! daemon's decoding and must print the same score.

mod common;

use std::path::Path;

use cxr_led_daemon::config::PipelineConfig;
use cxr_led_daemon::pipeline::enhance::Enhancer;
use cxr_led_dicom::derive::{self, Provenance};
use cxr_led_dicom::pixels;
use cxr_led_models::Bundle;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root")
}

#[test]
fn the_cli_and_the_daemon_give_the_same_score_for_the_same_pair() {
    let source_path = workspace().join("daemon/tests/fixtures/dx_image.dcm");
    let bundle_dir = workspace().join("models/bundles/tiny");
    let bundle = Bundle::load(&bundle_dir).unwrap();
    let config = PipelineConfig { device: "cpu".into(), ..PipelineConfig::default() };
    let enhancer = Enhancer::from_bundle(&bundle, tch::Device::Cpu, &config).unwrap();

    // The daemon's path: decode, enhance, score as delivered, derive.
    let source = dicom_object::open_file(&source_path).unwrap();
    let image = pixels::decode_display(&source).unwrap();
    let uid = "1.2.826.0.1.3680043.10.1137.1";
    let enhanced =
        enhancer.enhance(uid, &image.pixels, image.rows, image.columns, |e| pixels::as_delivered(&image, e)).unwrap();
    let provenance = Provenance {
        derived_sop_instance_uid: derive::uid_from_parts(&[b"test", uid.as_bytes()]),
        derived_series_instance_uid: derive::uid_from_parts(&[b"series", uid.as_bytes()]),
        model_name: enhancer.bundle_name.clone(),
        model_version: enhancer.bundle_version.clone(),
        bundle_sha256: enhancer.bundle_sha256.clone(),
        t0: enhancer.params.t0,
        steps: enhancer.params.steps,
        precision: "f32".into(),
        device: enhancer.device.clone(),
        score: enhanced.verdict.score,
        score_components: enhanced.verdict.components.clone(),
        hold_threshold: enhanced.verdict.hold_threshold,
        software_version: "test".into(),
        created: chrono::Utc::now(),
    };
    let derived = derive::derive_instance(&source, pixels::to_stored(&image, &enhanced.pixels), &provenance).unwrap();
    let work = tempfile::tempdir().unwrap();
    let derived_path = work.path().join("derived.dcm");
    derive::write_durably(&derived, &derived_path).unwrap();

    // The CLI on the same pair of files.
    let (stdout, _) = common::train(&[
        "score",
        "--input",
        source_path.to_str().unwrap(),
        "--output",
        derived_path.to_str().unwrap(),
        "--bundle",
        bundle_dir.to_str().unwrap(),
    ]);
    let printed: serde_json::Value = serde_json::from_str(stdout.trim()).expect("score prints JSON");
    let cli_score = printed["score"].as_f64().unwrap();
    assert!(
        (cli_score - enhanced.verdict.score).abs() <= 1e-12,
        "CLI {cli_score} vs daemon {} ({printed})",
        enhanced.verdict.score
    );
    for (name, value) in &enhanced.verdict.components {
        let cli = printed["components"][name].as_f64().unwrap_or(f64::NAN);
        assert!((cli - value).abs() <= 1e-12, "component {name}: CLI {cli} vs daemon {value}");
    }
    assert_eq!(printed["held"].as_bool(), Some(enhanced.verdict.score > enhancer.verifier.hold_threshold));
}
