//! The daemon's metrics: counters, gauges and fixed-bucket histograms on
//! atomics, and their Prometheus text exposition (format 0.0.4).
//!
//! One [`Metrics`] per running service (tests run many services in one
//! process, each with its own counts). Every series is a named field, so an
//! event site cannot misspell a label value; the label values appear only in
//! [`Metrics::render`]. What each metric means: `daemon/OPERATIONS.md`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the latency histograms: from a small C-STORE
/// (milliseconds) to an enhancement on CPU (minutes).
pub const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// Upper bounds of the hallucination-score histogram: [0, 1] in steps of 0.05,
/// fine enough to see where the hold threshold cuts.
pub const SCORE_BUCKETS: &[f64] =
    &[0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0];

/// A histogram with fixed upper bounds; observations above the last bound
/// land only in `+Inf`.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket (not cumulative) counts; the last one is above every bound.
    buckets: Box<[AtomicU64]>,
    /// The f64 sum, as bits (there is no atomic f64).
    sum_bits: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bucket bounds ascend");
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0),
        }
    }

    /// A latency histogram ([`SECONDS_BUCKETS`]).
    pub fn seconds() -> Histogram {
        Histogram::new(SECONDS_BUCKETS)
    }

    /// Records one value (NaN is ignored: it has no bucket).
    pub fn observe(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        let index = self.bounds.iter().position(|&bound| value <= bound).unwrap_or(self.bounds.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + value).to_bits()));
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// The number of observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The sum of the observations.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum_bits.load(Ordering::Relaxed))
    }
}

/// Associations by how they ended their negotiation.
#[derive(Debug, Default)]
pub struct AssociationCounts {
    /// Negotiated and served.
    pub accepted: Counter,
    /// Refused: AE title or peer not allowed, or over `max-associations`.
    pub rejected: Counter,
    /// Negotiation failed or timed out (not a refusal by us).
    pub failed: Counter,
}

/// Received C-STOREs by outcome.
#[derive(Debug, Default)]
pub struct ReceivedCounts {
    /// Spooled and registered; answered Success.
    pub stored: Counter,
    /// Already stored; this copy discarded, answered Success.
    pub duplicate: Counter,
    /// Answered a failure status (nothing kept).
    pub failed: Counter,
    /// The association ended mid-transfer (nothing kept, no answer).
    pub abandoned: Counter,
}

/// Latency of each pipeline stage.
#[derive(Debug)]
pub struct StageSeconds {
    /// One C-STORE: request to response.
    pub receive: Histogram,
    /// The exposure gate of one image (with decoding when there are no exposure tags).
    pub triage: Histogram,
    /// LED and the hallucination check of one flagged image.
    pub enhancement: Histogram,
    /// Derived instance (and doubt map) built and written durably.
    pub derive: Histogram,
    /// One C-STORE to a destination: request to response.
    pub delivery: Histogram,
}

/// Model time of one enhancement, by part.
#[derive(Debug)]
pub struct EnhancementSeconds {
    /// The first-stage estimate.
    pub estimate: Histogram,
    /// The diffusion refinement.
    pub refinement: Histogram,
    /// The hallucination check.
    pub score: Histogram,
}

/// Instances through the worker, by outcome.
#[derive(Debug, Default)]
pub struct ProcessedCounts {
    /// The gate did not flag it (or it is not applicable).
    pub passed: Counter,
    /// Enhanced and queued for delivery.
    pub enhanced: Counter,
    /// Enhanced, but held for review (score above the threshold).
    pub held: Counter,
    /// Flagged but could not be enhanced.
    pub failed: Counter,
}

/// Ends of job attempts.
#[derive(Debug, Default)]
pub struct JobCounts {
    /// The study was processed.
    pub done: Counter,
    /// Failed; queued again after the retry delay.
    pub retry: Counter,
    /// Failed for good: dead letter.
    pub dead: Counter,
    /// The lease was lost to another worker before the outcome was recorded.
    pub lease_lost: Counter,
    /// Handed back to the queue at the drain timeout of a shutdown.
    pub handed_back: Counter,
}

/// Delivery attempts (one per outbox row and attempt), by outcome.
#[derive(Debug, Default)]
pub struct DeliveryCounts {
    /// The destination stored it (Success or Warning).
    pub sent: Counter,
    /// Refused or not answered; another attempt is scheduled.
    pub retry: Counter,
    /// Refused or not answered on the last allowed attempt: given up.
    pub failed: Counter,
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
    pub associations: AssociationCounts,
    /// `cxr_led_associations_active`.
    pub associations_active: Gauge,
    /// `cxr_led_instances_received_total{outcome}`.
    pub instances_received: ReceivedCounts,
    /// `cxr_led_stage_seconds{stage}`.
    pub stage_seconds: StageSeconds,
    /// `cxr_led_enhancement_seconds{part}`.
    pub enhancement_seconds: EnhancementSeconds,
    /// `cxr_led_hallucination_score`.
    pub hallucination_score: Histogram,
    /// `cxr_led_instances_processed_total{outcome}`.
    pub instances_processed: ProcessedCounts,
    /// `cxr_led_job_attempts_total{outcome}`.
    pub job_attempts: JobCounts,
    /// `cxr_led_delivery_attempts_total{outcome}`.
    pub delivery_attempts: DeliveryCounts,
    /// `cxr_led_bundle_info{...}`, set once the bundle is loaded and again
    /// when a reload swaps it (see [`Metrics::set_bundle`]).
    bundle: RwLock<Option<BundleInfo>>,
    /// Unix time the registry was made (the service started).
    start_time_seconds: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Sets (or, after a reload, replaces) the loaded bundle's info.
    pub fn set_bundle(&self, info: BundleInfo) {
        *self.bundle.write().unwrap_or_else(|p| p.into_inner()) = Some(info);
    }

    /// The loaded bundle's info, once one is loaded.
    pub fn bundle(&self) -> Option<BundleInfo> {
        self.bundle.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A registry with everything at zero.
    pub fn new() -> Metrics {
        Metrics {
            associations: AssociationCounts::default(),
            associations_active: Gauge::default(),
            instances_received: ReceivedCounts::default(),
            stage_seconds: StageSeconds {
                receive: Histogram::seconds(),
                triage: Histogram::seconds(),
                enhancement: Histogram::seconds(),
                derive: Histogram::seconds(),
                delivery: Histogram::seconds(),
            },
            enhancement_seconds: EnhancementSeconds {
                estimate: Histogram::seconds(),
                refinement: Histogram::seconds(),
                score: Histogram::seconds(),
            },
            hallucination_score: Histogram::new(SCORE_BUCKETS),
            instances_processed: ProcessedCounts::default(),
            job_attempts: JobCounts::default(),
            delivery_attempts: DeliveryCounts::default(),
            bundle: RwLock::new(None),
            start_time_seconds: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64(),
        }
    }

    /// The Prometheus text exposition of every metric. `database` holds the
    /// counts read at scrape time, `None` when the database did not answer
    /// (then `cxr_led_database_up` is 0 and those families are left out).
    pub fn render(&self, database: Option<&DatabaseCounts>) -> String {
        let mut out = Exposition::default();
        out.gauge("cxr_led_start_time_seconds", "Unix time the service started.", &[(&[], self.start_time_seconds)]);
        let a = &self.associations;
        out.counter(
            "cxr_led_associations_total",
            "DICOM associations by outcome of their negotiation.",
            "outcome",
            &[("accepted", &a.accepted), ("rejected", &a.rejected), ("failed", &a.failed)],
        );
        out.gauge(
            "cxr_led_associations_active",
            "DICOM associations accepted and not yet ended.",
            &[(&[], self.associations_active.get() as f64)],
        );
        let r = &self.instances_received;
        out.counter(
            "cxr_led_instances_received_total",
            "C-STORE requests received, by outcome.",
            "outcome",
            &[("stored", &r.stored), ("duplicate", &r.duplicate), ("failed", &r.failed), ("abandoned", &r.abandoned)],
        );
        let s = &self.stage_seconds;
        out.histogram(
            "cxr_led_stage_seconds",
            "Seconds per pipeline stage and item (one instance, one image, one C-STORE).",
            "stage",
            &[
                ("receive", &s.receive),
                ("triage", &s.triage),
                ("enhancement", &s.enhancement),
                ("derive", &s.derive),
                ("delivery", &s.delivery),
            ],
        );
        let e = &self.enhancement_seconds;
        out.histogram(
            "cxr_led_enhancement_seconds",
            "Model seconds of one enhancement, by part.",
            "part",
            &[("estimate", &e.estimate), ("refinement", &e.refinement), ("score", &e.score)],
        );
        out.histogram(
            "cxr_led_hallucination_score",
            "Hallucination-check score of each enhanced image (0 = no doubt, 1 = most doubt).",
            "",
            &[("", &self.hallucination_score)],
        );
        let p = &self.instances_processed;
        out.counter(
            "cxr_led_instances_processed_total",
            "Instances decided by a worker, by outcome.",
            "outcome",
            &[("passed", &p.passed), ("enhanced", &p.enhanced), ("held", &p.held), ("failed", &p.failed)],
        );
        let j = &self.job_attempts;
        out.counter(
            "cxr_led_job_attempts_total",
            "Study job attempts of this process's workers, by how they ended.",
            "outcome",
            &[
                ("done", &j.done),
                ("retry", &j.retry),
                ("dead", &j.dead),
                ("lease_lost", &j.lease_lost),
                ("handed_back", &j.handed_back),
            ],
        );
        let d = &self.delivery_attempts;
        out.counter(
            "cxr_led_delivery_attempts_total",
            "Delivery attempts (outbox row and attempt), by outcome.",
            "outcome",
            &[("sent", &d.sent), ("retry", &d.retry), ("failed", &d.failed)],
        );
        if let Some(bundle) = self.bundle() {
            let labels: &[(&str, &str)] = &[
                ("bundle", &bundle.name),
                ("version", &bundle.version),
                ("sha256", &bundle.sha256),
                ("device", &bundle.device),
            ];
            out.gauge("cxr_led_bundle_info", "The loaded model bundle (value 1).", &[(labels, 1.0)]);
        }
        out.gauge(
            "cxr_led_database_up",
            "Whether the database answered this scrape's queries (1) or not (0).",
            &[(&[], if database.is_some() { 1.0 } else { 0.0 })],
        );
        if let Some(database) = database {
            out.state_gauge(
                "cxr_led_jobs",
                "Study jobs by state, read from the database.",
                JOB_STATES,
                &database.jobs_by_state,
            );
            out.state_gauge(
                "cxr_led_outbox",
                "Outbox rows (derived instance and destination) by state, read from the database.",
                OUTBOX_STATES,
                &database.outbox_by_state,
            );
        }
        out.text
    }
}

/// Writes families in the text format: HELP and TYPE, then the samples.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }

    fn counter(&mut self, name: &str, help: &str, label: &str, series: &[(&str, &Counter)]) {
        self.header(name, help, "counter");
        for (value, counter) in series {
            self.sample(name, &[(label, value)], counter.get() as f64);
        }
    }

    fn gauge(&mut self, name: &str, help: &str, series: &[(&[(&str, &str)], f64)]) {
        self.header(name, help, "gauge");
        for (labels, value) in series {
            self.sample(name, labels, *value);
        }
    }

    /// A gauge per state: every known state (0 when missing), then any
    /// state the database has that we do not know of.
    fn state_gauge(&mut self, name: &str, help: &str, known: &[&str], counts: &[(String, i64)]) {
        self.header(name, help, "gauge");
        let count_of = |state: &str| counts.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
        for state in known {
            self.sample(name, &[("state", state)], count_of(state) as f64);
        }
        for (state, n) in counts.iter().filter(|(s, _)| !known.contains(&s.as_str())) {
            self.sample(name, &[("state", state)], *n as f64);
        }
    }

    /// `label` empty: one unlabelled histogram.
    fn histogram(&mut self, name: &str, help: &str, label: &str, series: &[(&str, &Histogram)]) {
        self.header(name, help, "histogram");
        let bucket_name = format!("{name}_bucket");
        for (value, histogram) in series {
            let own: &[(&str, &str)] = if label.is_empty() { &[] } else { &[(label, value)] };
            // Cumulative counts from one read of each bucket, so +Inf equals _count.
            let counts: Vec<u64> = histogram.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
            let mut cumulative = 0;
            for (bound, count) in histogram.bounds.iter().zip(&counts) {
                cumulative += count;
                let le = format_value(*bound);
                self.sample(&bucket_name, &[own, &[("le", le.as_str())]].concat(), cumulative as f64);
            }
            cumulative += counts[histogram.bounds.len()];
            self.sample(&bucket_name, &[own, &[("le", "+Inf")]].concat(), cumulative as f64);
            self.sample(&format!("{name}_sum"), own, histogram.sum());
            self.sample(&format!("{name}_count"), own, cumulative as f64);
        }
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A sample value: integers without a fraction, infinities as `+Inf`/`-Inf`.
fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let histogram = Histogram::new(&[0.25, 1.0, 10.0]);
        // Binary fractions: the sum is exact.
        for value in [0.125, 0.25, 0.5, 4.0, 64.0, f64::NAN] {
            histogram.observe(value);
        }
        assert_eq!(histogram.count(), 5);
        assert_eq!(histogram.sum(), 68.875);
        let mut out = Exposition::default();
        out.histogram("h", "help", "", &[("", &histogram)]);
        assert_eq!(
            out.text,
            "# HELP h help\n# TYPE h histogram\nh_bucket{le=\"0.25\"} 2\nh_bucket{le=\"1\"} 3\n\
             h_bucket{le=\"10\"} 4\nh_bucket{le=\"+Inf\"} 5\nh_sum 68.875\nh_count 5\n"
        );
    }

    #[test]
    fn render_names_every_family_once_with_help_and_type() {
        let metrics = Metrics::new();
        metrics.associations.accepted.inc();
        metrics.instances_received.stored.inc();
        metrics.hallucination_score.observe(0.42);
        metrics.stage_seconds.receive.observe_duration(Duration::from_millis(3));
        let text = metrics.render(Some(&DatabaseCounts {
            jobs_by_state: vec![("queued".into(), 2), ("weird\"state".into(), 1)],
            outbox_by_state: vec![],
        }));
        assert!(text.contains("cxr_led_associations_total{outcome=\"accepted\"} 1\n"), "{text}");
        assert!(text.contains("cxr_led_instances_received_total{outcome=\"stored\"} 1\n"));
        assert!(text.contains("cxr_led_hallucination_score_bucket{le=\"0.45\"} 1\n"));
        assert!(text.contains("cxr_led_hallucination_score_bucket{le=\"0.4\"} 0\n"));
        assert!(text.contains("cxr_led_stage_seconds_count{stage=\"receive\"} 1\n"));
        assert!(text.contains("cxr_led_jobs{state=\"queued\"} 2\n"));
        assert!(text.contains("cxr_led_jobs{state=\"dead\"} 0\n"));
        assert!(text.contains("cxr_led_jobs{state=\"weird\\\"state\"} 1\n"));
        assert!(text.contains("cxr_led_outbox{state=\"pending\"} 0\n"));
        assert!(text.contains("cxr_led_database_up 1\n"));
        assert!(!text.contains("cxr_led_bundle_info"));
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(types.len(), helps);
        let mut names: Vec<&str> = types.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a family appears twice");

        let offline = metrics.render(None);
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
        let text = metrics.render(None);
        assert!(
            text.contains(
                "cxr_led_bundle_info{bundle=\"tiny\",version=\"1\\\\2\",sha256=\"ab\",device=\"cpu\\n\"} 1\n"
            ),
            "{text}"
        );
    }
}
