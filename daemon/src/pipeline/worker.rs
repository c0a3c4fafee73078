//! The worker: claims a study job, and for each of its instances runs the
//! exposure gate and, for a flagged one, decode -> enhance -> check ->
//! derive, then commits the decision, the enhancement, the outbox rows and
//! the audit events in one transaction.
//!
//! Re-running is safe at every point: an instance that already has a
//! decision is skipped, derived UIDs and files are a function of (source
//! UID, bundle, parameters), and the `enhancement` row is unique per source,
//! so a worker that lost its lease cannot queue a second delivery.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cxr_led_dicom::derive::{self, Provenance};
use cxr_led_dicom::pixels::{self, DisplayImage};
use dicom_object::{open_file, DefaultDicomObject};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{Config, DeliveryConfig, ExposureConfig, PipelineConfig};
use crate::live::Live;
use crate::ops::metrics::{JobOutcome, Metrics, ModelPart, ProcessOutcome, Stage};
use crate::pipeline::enhance::{EnhancedImage, Enhancer};
use crate::pipeline::queue::{self, ClaimedJob, FailOutcome};
use crate::pipeline::triage::{self, Decision};
use crate::spool::Spool;
use crate::supervise::panic_message;
use crate::{audit, delivery};

/// Everything a worker needs, shared by the workers of one process.
#[derive(Clone)]
pub struct WorkerContext {
    /// The database.
    pub db: PgPool,
    /// The loaded model (a reload swaps the whole context, see [`run`]).
    pub enhancer: Arc<Enhancer>,
    /// The spool the sources live in.
    pub spool: Arc<Spool>,
    /// Pipeline settings.
    pub pipeline: PipelineConfig,
    /// Exposure gate thresholds.
    pub exposure: ExposureConfig,
    /// Where derived instances go.
    pub delivery: DeliveryConfig,
    /// Whether to add the doubt map to the derived series.
    pub doubt_map_instance: bool,
    /// Where stage latencies, scores and outcomes are counted.
    pub metrics: Arc<Metrics>,
}

impl WorkerContext {
    /// A context from the configuration and a loaded model.
    pub fn new(
        config: &Config,
        db: PgPool,
        spool: Arc<Spool>,
        enhancer: Arc<Enhancer>,
        metrics: Arc<Metrics>,
    ) -> WorkerContext {
        WorkerContext {
            db,
            enhancer,
            spool,
            pipeline: config.pipeline.clone(),
            exposure: config.exposure.clone(),
            delivery: config.delivery.clone(),
            doubt_map_instance: config.pipeline.doubt_map_instance,
            metrics,
        }
    }
}

/// An error that decides whether the job is retried.
#[derive(Debug)]
pub struct JobError {
    /// What went wrong, for the audit and the log.
    pub error: anyhow::Error,
    /// Retrying cannot help (dead letter at once).
    pub permanent: bool,
}

impl<E: Into<anyhow::Error>> From<E> for JobError {
    fn from(error: E) -> Self {
        JobError { error: error.into(), permanent: false }
    }
}

/// What happened to one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceOutcome {
    /// Decided in an earlier attempt.
    AlreadyDecided,
    /// Not flagged (or not applicable).
    Passed,
    /// Enhanced and queued for delivery.
    Enhanced,
    /// Enhanced but held for review.
    Held,
    /// Flagged but the image cannot be enhanced (reason audited).
    Failed,
    /// Another worker recorded this instance first.
    Raced,
}

/// Runs one worker loop until `stop` is cancelled. The job in progress then
/// finishes, unless `abandon` is cancelled first (the drain timeout): then it
/// is handed back to the queue.
///
/// The context is taken afresh from `live` for every job (hot reload: a new
/// model or settings apply from the next job; the job in progress finishes
/// with the ones it started with).
pub async fn run(
    live: Arc<Live<WorkerContext>>,
    worker_id: String,
    stop: CancellationToken,
    abandon: CancellationToken,
) {
    loop {
        if stop.is_cancelled() {
            return;
        }
        let context = live.get();
        let poll = Duration::from_millis(context.pipeline.poll_interval_ms.max(10));
        match queue::claim(&context.db, &worker_id, context.pipeline.lease(), context.pipeline.max_attempts).await {
            Ok(Some(job)) => {
                // Every line about the job carries its study UID, job id and
                // attempt (a span entered with `enter()` would be lost across awaits).
                let span =
                    tracing::info_span!("job", study = %job.study_instance_uid, job = job.id, attempt = job.attempt);
                run_claimed(&context, &worker_id, job, abandon.clone()).instrument(span).await
            }
            Ok(None) => {
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = stop.cancelled() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "job queue: database error, retrying");
                tokio::time::sleep(poll).await;
            }
        }
    }
}

/// Processes one claimed job with a heartbeat renewing its lease, and
/// records the outcome.
async fn run_claimed(context: &Arc<WorkerContext>, worker_id: &str, job: ClaimedJob, abandon: CancellationToken) {
    let lease = context.pipeline.lease();
    let heartbeat = {
        let (db, job, worker) = (context.db.clone(), job.clone(), worker_id.to_string());
        tokio::spawn(
            async move {
                let mut ticker = tokio::time::interval(lease / 3);
                ticker.tick().await;
                loop {
                    ticker.tick().await;
                    match queue::heartbeat(&db, &job, &worker, lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!("lease lost: another worker took this job over");
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "lease heartbeat failed"),
                    }
                }
            }
            .in_current_span(),
        )
    };
    let result = tokio::select! {
        result = process_job(context, &job) => Some(result),
        _ = abandon.cancelled() => None,
    };
    heartbeat.abort();
    let jobs = &context.metrics.job_attempts;
    let Some(result) = result else {
        jobs.get_or_create(&JobOutcome::HandedBack).inc();
        // Dropping process_job rolled back the instance in progress (one
        // transaction each); instances already recorded stay decided.
        match queue::release(&context.db, &job, worker_id).await {
            Ok(()) => tracing::warn!("drain timeout: job handed back to the queue (lease released)"),
            Err(e) => tracing::error!(error = %e, "drain timeout: could not release the lease; it expires by itself"),
        }
        return;
    };
    match result {
        Ok(summary) => match queue::complete(&context.db, &job, worker_id, &summary).await {
            Ok(true) => {
                jobs.get_or_create(&JobOutcome::Done).inc();
                tracing::info!("study processed: {summary}")
            }
            Ok(false) => {
                jobs.get_or_create(&JobOutcome::LeaseLost).inc();
                tracing::warn!("study processed but the lease was lost; the other worker's result stands")
            }
            Err(e) => tracing::error!(error = %e, "could not mark the job done; it will be re-run (idempotent)"),
        },
        Err(JobError { error, permanent }) => {
            let message = format!("{error:#}");
            let delay = context.pipeline.retry_backoff().delay(job.attempt.max(0) as u32);
            match queue::fail(&context.db, &job, worker_id, &message, permanent, context.pipeline.max_attempts, delay)
                .await
            {
                Ok(FailOutcome::Retry(delay)) => {
                    jobs.get_or_create(&JobOutcome::Retry).inc();
                    tracing::warn!("job failed, retry in {delay:?}: {message}")
                }
                Ok(FailOutcome::Dead) => {
                    jobs.get_or_create(&JobOutcome::Dead).inc();
                    tracing::error!("job failed, dead letter: {message}")
                }
                Ok(FailOutcome::LeaseLost) => {
                    jobs.get_or_create(&JobOutcome::LeaseLost).inc();
                    tracing::warn!("job failed after its lease was lost: {message}")
                }
                Err(e) => tracing::error!(error = %e, "could not record the job failure: {message}"),
            }
        }
    }
}

/// One source instance of a study.
struct SourceRow {
    sop_instance_uid: String,
    spool_file: String,
    decided: bool,
}

/// Decides (and if flagged, enhances) every instance of the job's study.
pub async fn process_job(context: &Arc<WorkerContext>, job: &ClaimedJob) -> Result<String, JobError> {
    let sources = sqlx::query_as!(
        SourceRow,
        r#"SELECT i.sop_instance_uid, i.spool_file, (d.sop_instance_uid IS NOT NULL) AS "decided!"
           FROM instance i LEFT JOIN exposure_decision d USING (sop_instance_uid)
           WHERE i.study_instance_uid = $1 ORDER BY i.received_at, i.sop_instance_uid"#,
        job.study_instance_uid,
    )
    .fetch_all(&context.db)
    .await?;
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    let processed = &context.metrics.instances_processed;
    for source in &sources {
        let outcome = if source.decided {
            InstanceOutcome::AlreadyDecided
        } else {
            process_instance(context, job, source).await?
        };
        let counted = match outcome {
            InstanceOutcome::Passed => Some(ProcessOutcome::Passed),
            InstanceOutcome::Enhanced => Some(ProcessOutcome::Enhanced),
            InstanceOutcome::Held => Some(ProcessOutcome::Held),
            InstanceOutcome::Failed => Some(ProcessOutcome::Failed),
            // Counted when (and by whom) it was decided.
            InstanceOutcome::AlreadyDecided | InstanceOutcome::Raced => None,
        };
        if let Some(counted) = counted {
            processed.get_or_create(&counted).inc();
        }
        let name = match outcome {
            InstanceOutcome::AlreadyDecided => "already decided",
            InstanceOutcome::Passed => "passed",
            InstanceOutcome::Enhanced => "enhanced",
            InstanceOutcome::Held => "held",
            InstanceOutcome::Failed => "failed",
            InstanceOutcome::Raced => "recorded by another worker",
        };
        *counts.entry(name).or_default() += 1;
    }
    let summary = counts.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ");
    Ok(if summary.is_empty() { "no instances".into() } else { summary })
}

/// The result of the blocking part of one instance (gate, model, derive).
enum Processed {
    /// Gate said no.
    Passed(Decision),
    /// Flagged, but the image cannot be enhanced.
    Unprocessable(Decision, String),
    /// Flagged and enhanced; files written.
    Enhanced(Box<Derived>),
}

/// A written derived instance and what the database records about it.
struct Derived {
    decision: Decision,
    sop_class_uid: String,
    derived_sop_instance_uid: String,
    derived_series_instance_uid: String,
    file: PathBuf,
    doubt_map: Option<(String, PathBuf)>,
    enhanced: EnhancedImage,
    pixel_sha256: String,
    seconds: f64,
}

async fn process_instance(
    context: &Arc<WorkerContext>,
    job: &ClaimedJob,
    source: &SourceRow,
) -> Result<InstanceOutcome, JobError> {
    let path = context.spool.path_of(&source.spool_file);
    let processing = {
        let context = Arc::clone(context);
        let uid = source.sop_instance_uid.clone();
        // Decoding, inference and encoding are CPU/GPU-bound: off the async
        // runtime. A panic in there (libtorch out of memory, a codec) fails
        // this attempt with its reason and the job is retried; the worker lives on.
        tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| process_blocking(&context, &uid, &path)))
                .unwrap_or_else(|panic| {
                    Err(JobError {
                        error: anyhow::anyhow!("processing panicked: {}", panic_message(panic.as_ref())),
                        permanent: false,
                    })
                })
        })
    };
    let processed = processing.await.context("processing task failed")??;
    let sop = source.sop_instance_uid.as_str();
    let study = job.study_instance_uid.as_str();
    let mut tx = context.db.begin().await?;
    let decision: &Decision = match &processed {
        Processed::Passed(decision) => decision,
        Processed::Unprocessable(decision, _) => decision,
        Processed::Enhanced(derived) => &derived.decision,
    };
    let inserted = sqlx::query!(
        "INSERT INTO exposure_decision (sop_instance_uid, study_instance_uid, job_id, flagged, rule, \
         deviation_index, exposure_index, target_exposure_index, threshold, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
        sop,
        study,
        job.id,
        decision.flagged,
        decision.rule.as_str(),
        decision.deviation_index,
        decision.exposure_index,
        decision.target_exposure_index,
        decision.threshold,
        json!({ "reason": decision.reason, "noise_sigma": decision.noise_sigma }),
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tx.rollback().await?;
        return Ok(InstanceOutcome::Raced);
    }
    tracing::info!(sop = %sop, flagged = decision.flagged, rule = decision.rule.as_str(), "exposure decision");
    let decision_data = serde_json::to_value(decision)?;
    audit::record(
        &mut *tx,
        &audit::Event {
            event: audit::EXPOSURE_DECISION,
            outcome: if decision.flagged { "flagged" } else { "passed" },
            sop_instance_uid: Some(sop),
            study_instance_uid: Some(study),
            detail: Some(&format!("{}: {}", decision.rule.as_str(), decision.reason)),
            data: Some(&decision_data),
            ..Default::default()
        },
    )
    .await?;
    let outcome = match processed {
        Processed::Passed(_) => InstanceOutcome::Passed,
        Processed::Unprocessable(_, reason) => {
            audit::record(
                &mut *tx,
                &audit::Event {
                    event: audit::INSTANCE_FAILED,
                    outcome: "failure",
                    sop_instance_uid: Some(sop),
                    study_instance_uid: Some(study),
                    detail: Some(&reason),
                    ..Default::default()
                },
            )
            .await?;
            tracing::warn!(sop = %sop, "flagged but not enhanced: {reason}");
            InstanceOutcome::Failed
        }
        Processed::Enhanced(derived) => record_enhancement(context, &mut tx, job, sop, &derived).await?,
    };
    tx.commit().await?;
    Ok(outcome)
}

/// Inserts the enhancement row, the outbox rows (unless held) and the audit event.
async fn record_enhancement(
    context: &WorkerContext,
    tx: &mut sqlx::PgConnection,
    job: &ClaimedJob,
    sop: &str,
    derived: &Derived,
) -> Result<InstanceOutcome, JobError> {
    let enhancer = &context.enhancer;
    let enhanced = &derived.enhanced;
    let components: serde_json::Map<String, serde_json::Value> =
        enhanced.verdict.components.iter().map(|(name, value)| (name.clone(), json!(value))).collect();
    let timings = json!({
        "estimate_s": enhanced.timings.estimate_s,
        "refinement_s": enhanced.timings.refinement_s,
        "score_s": enhanced.timings.score_s,
        "total_s": derived.seconds,
    });
    let derived_file = derived.file.to_string_lossy();
    let inserted = sqlx::query!(
        "INSERT INTO enhancement (derived_sop_instance_uid, derived_series_instance_uid, source_sop_instance_uid, \
         study_instance_uid, job_id, bundle_name, bundle_version, bundle_sha256, params, seed, device, score, \
         score_components, hold_threshold, held, timings, derived_file, pixel_sha256) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
         ON CONFLICT DO NOTHING",
        &derived.derived_sop_instance_uid,
        &derived.derived_series_instance_uid,
        sop,
        &job.study_instance_uid,
        job.id,
        &enhancer.bundle_name,
        &enhancer.bundle_version,
        &enhancer.bundle_sha256,
        serde_json::to_value(&enhancer.params)?,
        format!("{:016x}", enhanced.seed),
        &enhancer.device,
        enhanced.verdict.score,
        serde_json::Value::Object(components.clone()),
        enhanced.verdict.hold_threshold,
        derived.enhanced.verdict.held,
        &timings,
        derived_file.as_ref(),
        &derived.pixel_sha256,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(InstanceOutcome::Raced);
    }
    if !derived.enhanced.verdict.held {
        let destinations = &context.delivery.destinations;
        delivery::outbox::enqueue(
            &mut *tx,
            &derived.derived_sop_instance_uid,
            &derived.sop_class_uid,
            &job.study_instance_uid,
            &derived.file,
            destinations,
        )
        .await?;
        if let Some((uid, file)) = &derived.doubt_map {
            delivery::outbox::enqueue(
                &mut *tx,
                uid,
                derive::SECONDARY_CAPTURE,
                &job.study_instance_uid,
                file,
                destinations,
            )
            .await?;
        }
    }
    let data = json!({
        "derived_sop_instance_uid": derived.derived_sop_instance_uid,
        "score": enhanced.verdict.score,
        "components": components,
        "hold_threshold": enhanced.verdict.hold_threshold,
        "timings": timings,
    });
    let detail = format!(
        "derived {} score {:.3} (hold above {:.3}) in {:.1} s",
        derived.derived_sop_instance_uid, enhanced.verdict.score, enhanced.verdict.hold_threshold, derived.seconds
    );
    audit::record(
        &mut *tx,
        &audit::Event {
            event: if derived.enhanced.verdict.held { audit::RESULT_HELD } else { audit::INSTANCE_ENHANCED },
            outcome: if derived.enhanced.verdict.held { "held" } else { "success" },
            sop_instance_uid: Some(sop),
            study_instance_uid: Some(&job.study_instance_uid),
            detail: Some(&detail),
            data: Some(&data),
            ..Default::default()
        },
    )
    .await?;
    if derived.enhanced.verdict.held {
        tracing::warn!(sop = %sop, derived = %derived.derived_sop_instance_uid, score = enhanced.verdict.score, "result held for review");
    } else {
        tracing::info!(sop = %sop, derived = %derived.derived_sop_instance_uid, score = enhanced.verdict.score, "enhanced, queued for delivery");
    }
    Ok(if derived.enhanced.verdict.held { InstanceOutcome::Held } else { InstanceOutcome::Enhanced })
}

/// Gate, and for a flagged image: decode, enhance, derive and write.
fn process_blocking(context: &WorkerContext, sop_instance_uid: &str, path: &Path) -> Result<Processed, JobError> {
    let started = Instant::now();
    let object = match open_file(path) {
        Ok(object) => object,
        Err(e) => {
            // The spool holds only what parsed at ingest; unreadable now
            // means the disk lost it: not something a retry fixes.
            return Err(JobError {
                error: anyhow::anyhow!("spooled file {} unreadable: {e}", path.display()),
                permanent: true,
            });
        }
    };
    let mut image: Option<DisplayImage> = None;
    let triage_started = Instant::now();
    let decision = match triage::decide_from_tags(&object, &context.exposure) {
        Some(decision) => decision,
        None => match pixels::decode_display(&object) {
            Ok(decoded) => {
                let decision = triage::decide_from_image(&decoded, &context.exposure);
                image = Some(decoded);
                decision
            }
            Err(e) => {
                return Ok(Processed::Passed(Decision::not_applicable(format!(
                    "no exposure tags and the image cannot be examined: {e}"
                ))))
            }
        },
    };
    context.metrics.observe_stage(Stage::Triage, triage_started.elapsed());
    if !decision.flagged {
        return Ok(Processed::Passed(decision));
    }
    let image = match image.map(Ok).unwrap_or_else(|| pixels::decode_display(&object)) {
        Ok(image) => image,
        Err(e) => return Ok(Processed::Unprocessable(decision, e.to_string())),
    };
    let enhancer = &context.enhancer;
    let enhancement_started = Instant::now();
    let enhanced = enhancer.enhance(sop_instance_uid, &image.pixels, image.rows, image.columns, |enhanced| {
        pixels::as_delivered(&image, enhanced)
    })?;
    context.metrics.observe_stage(Stage::Enhancement, enhancement_started.elapsed());
    let model = &context.metrics.enhancement_seconds;
    model.get_or_create(&ModelPart::Estimate).observe(enhanced.timings.estimate_s);
    model.get_or_create(&ModelPart::Refinement).observe(enhanced.timings.refinement_s);
    model.get_or_create(&ModelPart::Score).observe(enhanced.timings.score_s);
    context.metrics.observe_score(enhanced.verdict.score);
    let derive_started = Instant::now();
    let stored = pixels::to_stored(&image, &enhanced.pixels);
    let params = serde_json::to_string(&enhancer.params)?;
    let derived_sop_instance_uid = derive::uid_from_parts(&[
        b"derived",
        sop_instance_uid.as_bytes(),
        enhancer.bundle_sha256.as_bytes(),
        params.as_bytes(),
    ]);
    let series_key = pixels::optional_str(&object, dicom_dictionary_std::tags::SERIES_INSTANCE_UID).unwrap_or_default();
    let derived_series_instance_uid = derive::uid_from_parts(&[
        b"series",
        series_key.as_bytes(),
        enhancer.bundle_sha256.as_bytes(),
        params.as_bytes(),
    ]);
    let provenance = Provenance {
        derived_sop_instance_uid: derived_sop_instance_uid.clone(),
        derived_series_instance_uid: derived_series_instance_uid.clone(),
        model_name: enhancer.bundle_name.clone(),
        model_version: enhancer.bundle_version.clone(),
        bundle_sha256: enhancer.bundle_sha256.clone(),
        t0: enhancer.params.t0,
        steps: enhancer.params.steps,
        precision: format!("{:?}", enhancer.precision()).to_lowercase(),
        device: enhancer.device.clone(),
        score: enhanced.verdict.score,
        score_components: enhanced.verdict.components.clone(),
        hold_threshold: enhanced.verdict.hold_threshold,
        software_version: env!("CARGO_PKG_VERSION").to_string(),
        created: chrono::Utc::now(),
    };
    let derived_object = match derive::derive_instance(&object, stored.clone(), &provenance) {
        Ok(o) => o,
        Err(e) => return Ok(Processed::Unprocessable(decision, format!("cannot build the derived instance: {e}"))),
    };
    let sop_class_uid = derived_object.meta().media_storage_sop_class_uid().trim_end_matches('\0').to_string();
    let file = context.pipeline.output_dir.join(Spool::file_name(&derived_sop_instance_uid));
    derive::write_durably(&derived_object, &file).context("writing the derived instance")?;
    let doubt_map = if context.doubt_map_instance {
        let uid = derive::uid_from_parts(&[b"doubt-map", derived_sop_instance_uid.as_bytes()]);
        let map_object = derive::doubt_map_instance(
            &object,
            &enhanced.verdict.doubt_map,
            image.rows,
            image.columns,
            &provenance,
            &uid,
        )
        .context("building the doubt-map instance")?;
        let map_file = context.pipeline.output_dir.join(Spool::file_name(&uid));
        derive::write_durably(&map_object, &map_file).context("writing the doubt-map instance")?;
        Some((uid, map_file))
    } else {
        None
    };
    let pixel_sha256 = sha256_hex(&pixels::stored_bytes(&stored));
    context.metrics.observe_stage(Stage::Derive, derive_started.elapsed());
    Ok(Processed::Enhanced(Box::new(Derived {
        decision,
        sop_class_uid,
        derived_sop_instance_uid,
        derived_series_instance_uid,
        file,
        doubt_map,
        enhanced,
        pixel_sha256,
        seconds: started.elapsed().as_secs_f64(),
    })))
}

/// Hex sha256 of bytes (the pixel hash recorded for `reproduce`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Opens a spooled or derived Part 10 file.
pub fn open(path: &Path) -> anyhow::Result<DefaultDicomObject> {
    open_file(path).with_context(|| format!("reading {}", path.display()))
}
