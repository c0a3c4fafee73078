//! `cxr-ledd reproduce <derived SOP Instance UID>`: re-runs a recorded
//! enhancement from the spooled source with the recorded bundle, parameters
//! and seed, and reports whether the pixels match what was sent.
//!
//! The same bundle, parameters, precision and device kind give the same
//! bits on CPU; on a GPU, kernels may differ between card models, so a
//! mismatch there is reported with its size rather than as tampering.

use std::path::Path;

use anyhow::{bail, Context};
use cxr_led_dicom::derive::StoredPixels;
use cxr_led_dicom::pixels;
use dicom_dictionary_std::tags;
use serde::Serialize;
use sqlx::PgPool;

use crate::audit;
use crate::config::PipelineConfig;
use crate::pipeline::enhance::Enhancer;
use crate::pipeline::worker;
use crate::pipeline::worker::sha256_hex;
use crate::spool::Spool;

/// What a reproduction found.
#[derive(Debug, Clone, Serialize)]
pub struct Reproduction {
    /// The derived instance checked.
    pub derived_sop_instance_uid: String,
    /// Its source.
    pub source_sop_instance_uid: String,
    /// The recorded bundle sha256 (the loaded bundle must match it).
    pub bundle_sha256: String,
    /// sha256 of the recorded stored pixels.
    pub recorded_pixel_sha256: String,
    /// sha256 of the pixels computed now.
    pub reproduced_pixel_sha256: String,
    /// Whether the derived file on disk still holds the recorded pixels.
    pub file_matches_record: Option<bool>,
    /// Pixels that differ between the recorded file and the re-run.
    pub differing_pixels: usize,
    /// Largest stored-value difference.
    pub max_difference: i64,
    /// The score computed now.
    pub score: f64,
    /// The score recorded.
    pub recorded_score: f64,
    /// True when the re-run's pixels are bit-identical to the record.
    pub matches: bool,
}

/// Re-runs the enhancement of `derived_sop_instance_uid`.
pub async fn reproduce(
    db: &PgPool,
    spool_dir: &Path,
    pipeline: &PipelineConfig,
    derived_sop_instance_uid: &str,
) -> anyhow::Result<Reproduction> {
    let row = sqlx::query!(
        "SELECT e.source_sop_instance_uid, e.bundle_sha256, e.params, e.pixel_sha256, e.derived_file, e.score, \
         i.spool_file, i.study_instance_uid FROM enhancement e \
         JOIN instance i ON i.sop_instance_uid = e.source_sop_instance_uid WHERE e.derived_sop_instance_uid = $1",
        derived_sop_instance_uid,
    )
    .fetch_optional(db)
    .await?
    .with_context(|| format!("no enhancement recorded for derived SOP Instance UID {derived_sop_instance_uid}"))?;
    let (source_uid, bundle_sha256, params) = (row.source_sop_instance_uid, row.bundle_sha256, row.params);
    let (recorded_pixel_sha256, derived_file, recorded_score) = (row.pixel_sha256, row.derived_file, row.score);
    let (spool_file, study) = (row.spool_file, row.study_instance_uid);

    let params: cxr_led_models::EnhanceParams =
        serde_json::from_value(params).context("recorded parameters do not parse")?;
    let mut pipeline = pipeline.clone();
    pipeline.t0 = params.t0;
    pipeline.steps = params.steps;
    pipeline.precision = params.precision;
    let enhancer = tokio::task::block_in_place(|| Enhancer::load(&pipeline)).context("loading the bundle")?;
    if enhancer.bundle_sha256 != bundle_sha256 {
        bail!(
            "the configured bundle {} has sha256 {}, but {derived_sop_instance_uid} was made with {bundle_sha256}: \
             point [pipeline] bundle at that bundle to reproduce it",
            pipeline.bundle.display(),
            enhancer.bundle_sha256
        );
    }
    let source_path = Spool::open(spool_dir)?.path_of(&spool_file);
    let source = worker::open(&source_path)?;
    let image = pixels::decode_display(&source)?;
    let enhanced = tokio::task::block_in_place(|| {
        enhancer.enhance(&source_uid, &image.pixels, image.rows, image.columns, |enhanced| {
            pixels::as_delivered(&image, enhanced)
        })
    })?;
    let stored = pixels::to_stored(&image, &enhanced.pixels);
    let reproduced_pixel_sha256 = sha256_hex(&pixels::stored_bytes(&stored));

    // Compare with the file that was sent, pixel by pixel.
    let (file_matches_record, differing_pixels, max_difference) = match worker::open(Path::new(&derived_file)) {
        Ok(derived) => {
            let reproduced = pixels::stored_bytes(&stored);
            let mut bytes = derived.element(tags::PIXEL_DATA)?.to_bytes()?.to_vec();
            // An odd-length 8-bit image carries one padding byte.
            bytes.truncate(reproduced.len());
            let on_disk = sha256_hex(&bytes);
            let (count, max) = compare(&stored, &bytes, &reproduced);
            (Some(on_disk == recorded_pixel_sha256), count, max)
        }
        Err(_) => (None, 0, 0),
    };
    let matches = reproduced_pixel_sha256 == recorded_pixel_sha256;
    let detail = format!(
        "reproduce {derived_sop_instance_uid}: {}",
        if matches { "pixels match".to_string() } else { format!("{differing_pixels} pixels differ") }
    );
    audit::record(
        db,
        &audit::Event {
            event: audit::REPRODUCED,
            outcome: if matches { "success" } else { "mismatch" },
            sop_instance_uid: Some(&source_uid),
            study_instance_uid: Some(&study),
            detail: Some(&detail),
            ..Default::default()
        },
    )
    .await?;
    Ok(Reproduction {
        derived_sop_instance_uid: derived_sop_instance_uid.to_string(),
        source_sop_instance_uid: source_uid,
        bundle_sha256,
        recorded_pixel_sha256,
        reproduced_pixel_sha256,
        file_matches_record,
        differing_pixels,
        max_difference,
        score: enhanced.verdict.score,
        recorded_score,
        matches,
    })
}

/// Pixels that differ between the file's bytes and the re-run, and the
/// largest difference in stored units.
fn compare(stored: &StoredPixels, file_bytes: &[u8], reproduced: &[u8]) -> (usize, i64) {
    match stored {
        StoredPixels::U8(_) => {
            let diffs = file_bytes.iter().zip(reproduced).map(|(a, b)| (i64::from(*a) - i64::from(*b)).abs());
            diffs.fold((0, 0), |(n, m), d| (n + usize::from(d != 0), m.max(d)))
        }
        StoredPixels::U16(_) => {
            let words =
                |b: &[u8]| b.chunks_exact(2).map(|c| i64::from(u16::from_le_bytes([c[0], c[1]]))).collect::<Vec<_>>();
            let (a, b) = (words(file_bytes), words(reproduced));
            a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold((0, 0), |(n, m), d| (n + usize::from(d != 0), m.max(d)))
        }
    }
}
