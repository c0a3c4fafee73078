//! The daemon's metrics: typed prometheus-client families, and their
//! OpenMetrics text exposition ([`Metrics::encode`]).
//!
//! One [`Metrics`] per running service (tests run many services in one
//! process, each with its own counts). Every label is an enum ([`AssociationOutcome`],
//! [`Stage`], ...), so an event site cannot misspell a label value, and every
//! value is exported from the start (0 until counted). What each metric
//! means: `daemon/OPERATIONS.md`.

use std::sync::atomic::AtomicU64;
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{text, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the latency histograms: from a small C-STORE
/// (milliseconds) to an enhancement on CPU (minutes).
pub const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// Upper bounds of the hallucination-score histogram: [0, 1] in steps of 0.05,
/// fine enough to see where the hold threshold cuts.
pub const SCORE_BUCKETS: &[f64] =
    &[0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0];

/// An enum that is a one-label set: `$label="<value of the variant>"`, with
/// every variant in `ALL`.
macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident, $label:literal { $($(#[$doc:meta])* $variant:ident = $value:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$doc])* $variant,)+
        }

        impl $name {
            /// Every value (each is exported from the start).
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $value,)+
                }
            }
        }

        impl EncodeLabelSet for $name {
            fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
                EncodeLabelSet::encode(&[($label, self.as_str())], encoder)
            }
        }
    };
}

label_enum! {
    /// How an association's negotiation ended.
    AssociationOutcome, "outcome" {
        /// Negotiated and served.
        Accepted = "accepted",
        /// Refused: AE title or peer not allowed, or over `max-associations`.
        Rejected = "rejected",
        /// Negotiation failed or timed out (not a refusal by us).
        Failed = "failed",
    }
}

label_enum! {
    /// What became of a received C-STORE.
    ReceiveOutcome, "outcome" {
        /// Spooled and registered; answered Success.
        Stored = "stored",
        /// Already stored; this copy discarded, answered Success.
        Duplicate = "duplicate",
        /// Answered a failure status (nothing kept).
        Failed = "failed",
        /// The association ended mid-transfer (nothing kept, no answer).
        Abandoned = "abandoned",
    }
}

label_enum! {
    /// A pipeline stage, for its latency.
    Stage, "stage" {
        /// One C-STORE: request to response.
        Receive = "receive",
        /// The exposure gate of one image (with decoding when there are no exposure tags).
        Triage = "triage",
        /// LED and the hallucination check of one flagged image.
        Enhancement = "enhancement",
        /// Derived instance (and doubt map) built and written durably.
        Derive = "derive",
        /// One C-STORE to a destination: request to response.
        Delivery = "delivery",
    }
}

label_enum! {
    /// A part of one enhancement's model time.
    ModelPart, "part" {
        /// The first-stage estimate.
        Estimate = "estimate",
        /// The diffusion refinement.
        Refinement = "refinement",
        /// The hallucination check.
        Score = "score",
    }
}

label_enum! {
    /// What a worker decided for an instance.
    ProcessOutcome, "outcome" {
        /// The gate did not flag it (or it is not applicable).
        Passed = "passed",
        /// Enhanced and queued for delivery.
        Enhanced = "enhanced",
        /// Enhanced, but held for review (score above the threshold).
        Held = "held",
        /// Flagged but could not be enhanced.
        Failed = "failed",
    }
}

label_enum! {
    /// How a job attempt ended.
    JobOutcome, "outcome" {
        /// The study was processed.
        Done = "done",
        /// Failed; queued again after the retry delay.
        Retry = "retry",
        /// Failed for good: dead letter.
        Dead = "dead",
        /// The lease was lost to another worker before the outcome was recorded.
        LeaseLost = "lease_lost",
        /// Handed back to the queue at the drain timeout of a shutdown.
        HandedBack = "handed_back",
    }
}

label_enum! {
    /// How a delivery attempt (one outbox row, one attempt) ended.
    DeliveryOutcome, "outcome" {
        /// The destination stored it (Success or Warning).
        Sent = "sent",
        /// Refused or not answered; another attempt is scheduled.
        Retry = "retry",
        /// Refused or not answered on the last allowed attempt: given up.
        Failed = "failed",
    }
}

/// A histogram's constructor, as [`Family`] keeps it.
type NewHistogram = fn() -> Histogram;

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS.iter().copied())
}

/// A counter family with every value of `L` present at 0.
fn counters<L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug>(all: &[L]) -> Family<L, Counter> {
    let family = Family::default();
    for labels in all {
        let _ = family.get_or_create(labels);
    }
    family
}

/// A latency family with every value of `L` present (empty).
fn latencies<L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug>(
    all: &[L],
) -> Family<L, Histogram, NewHistogram> {
    let family = Family::new_with_constructor(seconds_histogram as NewHistogram);
    for labels in all {
        let _ = family.get_or_create(labels);
    }
    family
}

/// What the loaded bundle is, for an info metric.
#[derive(Debug, Clone)]
pub struct BundleInfo {
    /// Bundle name.
    pub name: String,
    /// Bundle version.
    pub version: String,
    /// Manifest sha256.
    pub sha256: String,
    /// Inference device in words.
    pub device: String,
}

/// Counts read from the database at scrape time.
#[derive(Debug, Clone, Default)]
pub struct DatabaseCounts {
    /// Jobs per state.
    pub jobs_by_state: Vec<(String, i64)>,
    /// Outbox rows per state.
    pub outbox_by_state: Vec<(String, i64)>,
}

/// The job states the schema allows; each is always exported (0 when absent).
pub const JOB_STATES: &[&str] = &["queued", "running", "done", "dead"];
/// The outbox states the schema allows.
pub const OUTBOX_STATES: &[&str] = &["pending", "sent", "failed"];

/// Every metric of one running service.
#[derive(Debug)]
pub struct Metrics {
    /// `cxr_led_associations_total{outcome}`.
    pub associations: Family<AssociationOutcome, Counter>,
    /// `cxr_led_associations_active`.
    pub associations_active: Gauge,
    /// `cxr_led_instances_received_total{outcome}`.
    pub instances_received: Family<ReceiveOutcome, Counter>,
    /// `cxr_led_stage_seconds{stage}`; observe through [`Metrics::observe_stage`].
    stage_seconds: Family<Stage, Histogram, NewHistogram>,
    /// `cxr_led_enhancement_seconds{part}`.
    pub enhancement_seconds: Family<ModelPart, Histogram, NewHistogram>,
    /// `cxr_led_hallucination_score`; observe through [`Metrics::observe_score`].
    hallucination_score: Histogram,
    /// `cxr_led_instances_processed_total{outcome}`.
    pub instances_processed: Family<ProcessOutcome, Counter>,
    /// `cxr_led_job_attempts_total{outcome}`.
    pub job_attempts: Family<JobOutcome, Counter>,
    /// `cxr_led_delivery_attempts_total{outcome}`.
    pub delivery_attempts: Family<DeliveryOutcome, Counter>,
    /// `cxr_led_bundle_info{...}`, set once the bundle is loaded and again
    /// when a reload swaps it (see [`Metrics::set_bundle`]).
    bundle: RwLock<Option<BundleInfo>>,
    /// The families above (shared handles: a clone shares its counts) and
    /// `cxr_led_start_time_seconds`, registered once with their names and help.
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with everything at zero.
    pub fn new() -> Metrics {
        let mut metrics = Metrics {
            associations: counters(AssociationOutcome::ALL),
            associations_active: Gauge::default(),
            instances_received: counters(ReceiveOutcome::ALL),
            stage_seconds: latencies(Stage::ALL),
            enhancement_seconds: latencies(ModelPart::ALL),
            hallucination_score: Histogram::new(SCORE_BUCKETS.iter().copied()),
            instances_processed: counters(ProcessOutcome::ALL),
            job_attempts: counters(JobOutcome::ALL),
            delivery_attempts: counters(DeliveryOutcome::ALL),
            bundle: RwLock::new(None),
            registry: Registry::default(),
        };
        let registry = &mut metrics.registry;
        let start_time_seconds: Gauge<f64, AtomicU64> = Gauge::default();
        start_time_seconds.set(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64());
        registry.register("cxr_led_start_time_seconds", "Unix time the service started", start_time_seconds);
        registry.register(
            "cxr_led_associations",
            "DICOM associations by outcome of their negotiation",
            metrics.associations.clone(),
        );
        registry.register(
            "cxr_led_associations_active",
            "DICOM associations accepted and not yet ended",
            metrics.associations_active.clone(),
        );
        registry.register(
            "cxr_led_instances_received",
            "C-STORE requests received, by outcome",
            metrics.instances_received.clone(),
        );
        registry.register(
            "cxr_led_stage_seconds",
            "Seconds per pipeline stage and item (one instance, one image, one C-STORE)",
            metrics.stage_seconds.clone(),
        );
        registry.register(
            "cxr_led_enhancement_seconds",
            "Model seconds of one enhancement, by part",
            metrics.enhancement_seconds.clone(),
        );
        registry.register(
            "cxr_led_hallucination_score",
            "Hallucination-check score of each enhanced image (0 = no doubt, 1 = most doubt)",
            metrics.hallucination_score.clone(),
        );
        registry.register(
            "cxr_led_instances_processed",
            "Instances decided by a worker, by outcome",
            metrics.instances_processed.clone(),
        );
        registry.register(
            "cxr_led_job_attempts",
            "Study job attempts of this process's workers, by how they ended",
            metrics.job_attempts.clone(),
        );
        registry.register(
            "cxr_led_delivery_attempts",
            "Delivery attempts (outbox row and attempt), by outcome",
            metrics.delivery_attempts.clone(),
        );
        metrics
    }

    /// Records how long one item took in `stage`.
    pub fn observe_stage(&self, stage: Stage, took: Duration) {
        self.stage_seconds.get_or_create(&stage).observe(took.as_secs_f64());
    }

    /// Records one enhanced image's hallucination score (NaN has no bucket and is left out).
    pub fn observe_score(&self, score: f64) {
        if !score.is_nan() {
            self.hallucination_score.observe(score);
        }
    }

    /// Sets (or, after a reload, replaces) the loaded bundle's info.
    pub fn set_bundle(&self, info: BundleInfo) {
        *self.bundle.write().unwrap_or_else(|p| p.into_inner()) = Some(info);
    }

    /// The loaded bundle's info, once one is loaded.
    pub fn bundle(&self) -> Option<BundleInfo> {
        self.bundle.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The OpenMetrics text of every metric. `database` holds the counts read
    /// at scrape time, `None` when the database did not answer (then
    /// `cxr_led_database_up` is 0 and those families are left out).
    ///
    /// The long-lived families come from the registry made at start; what
    /// exists only sometimes (the bundle, the database counts) is registered
    /// per scrape, only when it exists.
    pub fn encode(&self, database: Option<&DatabaseCounts>) -> String {
        let mut scrape = Registry::default();
        if let Some(bundle) = self.bundle() {
            let labels = vec![
                ("bundle".to_string(), bundle.name),
                ("version".to_string(), bundle.version),
                ("sha256".to_string(), bundle.sha256),
                ("device".to_string(), bundle.device),
            ];
            scrape.register("cxr_led_bundle", "The loaded model bundle", Info::new(labels));
        }
        let database_up: Gauge = Gauge::default();
        database_up.set(i64::from(database.is_some()));
        scrape.register(
            "cxr_led_database_up",
            "Whether the database answered this scrape's queries (1) or not (0)",
            database_up,
        );
        if let Some(database) = database {
            scrape.register(
                "cxr_led_jobs",
                "Study jobs by state, read from the database",
                by_state(JOB_STATES, &database.jobs_by_state),
            );
            scrape.register(
                "cxr_led_outbox",
                "Outbox rows (derived instance and destination) by state, read from the database",
                by_state(OUTBOX_STATES, &database.outbox_by_state),
            );
        }
        let mut out = String::new();
        let encoded = text::encode_registry(&mut out, &self.registry)
            .and_then(|()| text::encode_registry(&mut out, &scrape))
            .and_then(|()| text::encode_eof(&mut out));
        encoded.expect("encoding into a String cannot fail");
        out
    }
}

/// A gauge per state: every known state (0 when missing), and any state
/// the database has that we do not know of.
fn by_state(known: &[&str], counts: &[(String, i64)]) -> Family<[(&'static str, String); 1], Gauge> {
    let family: Family<[(&'static str, String); 1], Gauge> = Family::default();
    for state in known {
        let _ = family.get_or_create(&[("state", state.to_string())]);
    }
    for (state, count) in counts {
        family.get_or_create(&[("state", state.clone())]).set(*count);
    }
    family
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let metrics = Metrics::new();
        // Binary fractions: the sum is exact; NaN is left out.
        for score in [0.125, 0.25, 0.5, 1.0, f64::NAN] {
            metrics.observe_score(score);
        }
        let text = metrics.encode(None);
        for line in [
            "cxr_led_hallucination_score_sum 1.875\n",
            "cxr_led_hallucination_score_count 4\n",
            "cxr_led_hallucination_score_bucket{le=\"0.1\"} 0\n",
            "cxr_led_hallucination_score_bucket{le=\"0.15\"} 1\n",
            "cxr_led_hallucination_score_bucket{le=\"0.25\"} 2\n",
            "cxr_led_hallucination_score_bucket{le=\"0.5\"} 3\n",
            "cxr_led_hallucination_score_bucket{le=\"1.0\"} 4\n",
            "cxr_led_hallucination_score_bucket{le=\"+Inf\"} 4\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }

    #[test]
    fn encode_names_every_family_once_with_help_and_type() {
        let metrics = Metrics::new();
        metrics.associations.get_or_create(&AssociationOutcome::Accepted).inc();
        metrics.instances_received.get_or_create(&ReceiveOutcome::Stored).inc();
        metrics.observe_score(0.42);
        metrics.observe_stage(Stage::Receive, Duration::from_millis(3));
        let text = metrics.encode(Some(&DatabaseCounts {
            jobs_by_state: vec![("queued".into(), 2), ("weird\"state".into(), 1)],
            outbox_by_state: vec![],
        }));
        assert!(text.contains("cxr_led_associations_total{outcome=\"accepted\"} 1\n"), "{text}");
        assert!(text.contains("cxr_led_associations_total{outcome=\"rejected\"} 0\n"));
        assert!(text.contains("cxr_led_instances_received_total{outcome=\"stored\"} 1\n"));
        assert!(text.contains("cxr_led_job_attempts_total{outcome=\"lease_lost\"} 0\n"));
        assert!(text.contains("cxr_led_hallucination_score_bucket{le=\"0.45\"} 1\n"));
        assert!(text.contains("cxr_led_hallucination_score_bucket{le=\"0.4\"} 0\n"));
        assert!(text.contains("cxr_led_stage_seconds_count{stage=\"receive\"} 1\n"));
        assert!(text.contains("cxr_led_stage_seconds_count{stage=\"delivery\"} 0\n"));
        assert!(text.contains("cxr_led_jobs{state=\"queued\"} 2\n"));
        assert!(text.contains("cxr_led_jobs{state=\"dead\"} 0\n"));
        assert!(text.contains("cxr_led_jobs{state=\"weird\\\"state\"} 1\n"));
        assert!(text.contains("cxr_led_outbox{state=\"pending\"} 0\n"));
        assert!(text.contains("cxr_led_database_up 1\n"));
        assert!(!text.contains("cxr_led_bundle"));
        assert!(text.ends_with("# EOF\n"));
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(types.len(), helps);
        let mut names: Vec<&str> = types.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a family appears twice");

        let offline = metrics.encode(None);
        assert!(offline.contains("cxr_led_database_up 0\n"));
        assert!(!offline.contains("cxr_led_jobs"));
    }

    #[test]
    fn bundle_info_labels_are_escaped() {
        let metrics = Metrics::new();
        metrics.set_bundle(BundleInfo {
            name: "tiny".into(),
            version: "1\\2".into(),
            sha256: "ab".into(),
            device: "cpu\n".into(),
        });
        let text = metrics.encode(None);
        assert!(text.contains("# TYPE cxr_led_bundle info\n"), "{text}");
        assert!(
            text.contains(
                "cxr_led_bundle_info{bundle=\"tiny\",version=\"1\\\\2\",sha256=\"ab\",device=\"cpu\\n\"} 1\n"
            ),
            "{text}"
        );
    }
}
