//! End-to-end harness: a private Orthanc as the PACS (forwarding new stable
//! studies by a Lua rule), cxr-ledd as its own process with its own
//! database, and the sample studies. The Orthanc loop tests, the demo
//! (`cxr-led-demo`) and the end-to-end benchmark (`cxr-led-e2e-bench`) all
//! run through [`PacsLoop`].

pub mod cxrled;
pub mod database;
pub mod http;
pub mod orthanc;
pub mod preview;
pub mod studies;
pub mod wait;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use cxrled::{CxrLed, CxrLedSettings, CXRLED_AE};
use database::Database;
use orthanc::{CxrLedPeer, Orthanc, ORTHANC_AE};
use studies::Sample;

/// Sends SIGTERM, waits up to `limit` for the exit, then kills.
pub fn terminate(child: &mut Child, limit: Duration) -> anyhow::Result<()> {
    let pid = child.id().to_string();
    let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill()?;
    child.wait()?;
    anyhow::bail!("process {pid} did not exit within {:.0} s of SIGTERM and was killed", limit.as_secs_f64())
}

/// Spawns `command` with its output appended to `log` and waits (at most
/// `limit`) until `ready` says it serves; fails, killing it, if it exits
/// first or never gets ready.
pub fn spawn_until_ready(
    command: &mut std::process::Command,
    log: &Path,
    limit: Duration,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<Child> {
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let waited = wait::wait_until(limit, &format!("{what} to get ready"), || {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("{what} exited with {status}");
        }
        Ok(ready())
    });
    if let Err(error) = waited {
        let _ = child.kill();
        let _ = child.wait();
        return Err(error.context(format!("{what} did not start; see {}", log.display())));
    }
    Ok(child)
}

pub use cxr_led_test_kit::ports::free_port;

pub use cxr_led_test_kit::tiny_bundle;

/// How to set the loop up.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// Folder for everything of this run (Orthanc storage, cxr-led spool, logs).
    pub dir: PathBuf,
    /// Name of cxr-led's database (created fresh on the `DATABASE_URL` server).
    pub database: String,
    /// The model bundle.
    pub bundle: PathBuf,
    /// Hold threshold for cxr-led (negative: the bundle's).
    pub hold_threshold: f64,
    /// Orthanc's StableAge, seconds.
    pub stable_age_secs: u32,
    /// cxr-led's quiet period, seconds.
    pub quiet_period_secs: f64,
    /// Enhancement workers.
    pub workers: usize,
    /// Inference device.
    pub device: String,
    /// cxr-led's drain timeout, seconds.
    pub drain_timeout_secs: u64,
    /// Refinement start timestep; 0 = the bundle's.
    pub t0: u32,
    /// DDIM refinement steps; 0 = the bundle's.
    pub steps: u32,
    /// Fixed ports (Orthanc HTTP, Orthanc DICOM, cxr-led DICOM); free ones when None.
    pub ports: Option<(u16, u16, u16)>,
    /// Also send the hallucination check's doubt map in the derived series.
    pub doubt_map_instance: bool,
}

impl LoopOptions {
    /// Fast settings for tests: tiny bundle on CPU, short quiet periods.
    pub fn for_tests(dir: &Path, database: &str) -> LoopOptions {
        LoopOptions {
            dir: dir.to_path_buf(),
            database: database.to_string(),
            bundle: tiny_bundle(),
            // The tiny bundle's random output scores 1.0, which the calibrated
            // check holds; a threshold of 1.0 lets it through so the loop can be seen.
            hold_threshold: 1.0,
            stable_age_secs: 2,
            quiet_period_secs: 1.0,
            workers: 1,
            device: "cpu".into(),
            drain_timeout_secs: 60,
            // One refinement step instead of the tiny bundle's four: the
            // 1955x1841 chest CR takes ~2 min instead of ~7 on a 2-core CPU.
            t0: 200,
            steps: 1,
            ports: None,
            doubt_map_instance: false,
        }
    }
}

/// Orthanc and cxr-led wired to each other, with cxr-led's database.
pub struct PacsLoop {
    /// The PACS.
    pub orthanc: Orthanc,
    /// cxr-led.
    pub cxrled: CxrLed,
    /// cxr-led's database.
    pub db: Database,
}

impl PacsLoop {
    /// Creates the database and starts cxr-led, then Orthanc.
    pub fn start(options: &LoopOptions) -> anyhow::Result<PacsLoop> {
        // Orthanc cannot bind port 0 and say which it got; cxr-led can (0).
        let (orthanc_http, orthanc_dicom, cxrled_dicom) = match options.ports {
            Some(ports) => ports,
            None => (free_port(), free_port(), 0),
        };
        let db = Database::create(&options.database)?;
        let settings = CxrLedSettings {
            database_url: db.url.clone(),
            bundle: options.bundle.clone(),
            dicom_port: cxrled_dicom,
            http_port: 0,
            pacs_ae_title: ORTHANC_AE.into(),
            pacs_port: orthanc_dicom,
            quiet_period_secs: options.quiet_period_secs,
            hold_threshold: options.hold_threshold,
            workers: options.workers,
            device: options.device.clone(),
            drain_timeout_secs: options.drain_timeout_secs,
            t0: options.t0,
            steps: options.steps,
            doubt_map_instance: options.doubt_map_instance,
        };
        let cxrled = CxrLed::start(&options.dir.join("cxr-led"), &settings)?;
        let peer = CxrLedPeer { ae_title: CXRLED_AE.into(), port: cxrled.dicom_port };
        let orthanc =
            Orthanc::start(&options.dir.join("orthanc"), orthanc_http, orthanc_dicom, &peer, options.stable_age_secs)?;
        Ok(PacsLoop { orthanc, cxrled, db })
    }

    /// The derived series (cxr-led's) in the sample's study in Orthanc, if there.
    pub fn derived_series(&self, sample: &Sample) -> anyhow::Result<Option<Value>> {
        Ok(self
            .orthanc
            .series_of_study(&sample.study_uid)?
            .into_iter()
            .find(|series| series["MainDicomTags"]["SeriesDescription"] == cxr_led_dicom::derive::SERIES_DESCRIPTION))
    }

    /// Waits until every sample in `expected` has its derived series in
    /// Orthanc; returns the seconds each took from `since`.
    pub fn wait_for_derived(&self, expected: &[&Sample], since: Instant, limit: Duration) -> anyhow::Result<Vec<f64>> {
        let mut seconds = vec![None; expected.len()];
        wait::wait_until(limit, "the derived series in Orthanc", || {
            for (sample, done) in expected.iter().zip(seconds.iter_mut()) {
                if done.is_none() && self.derived_series(sample)?.is_some() {
                    *done = Some(since.elapsed().as_secs_f64());
                }
            }
            Ok(seconds.iter().all(Option::is_some))
        })
        .with_context(|| format!("cxr-led log tail:\n{}", tail(&self.cxrled.log(), 30)))?;
        Ok(seconds.into_iter().map(|s| s.unwrap_or_default()).collect())
    }
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Log lines that contain any of the sample's patient name (any component),
/// ID or birth date.
pub fn lines_with_patient_data(log: &str) -> Vec<String> {
    let mut needles: Vec<&str> = studies::PATIENT_NAME.split('^').collect();
    needles.extend([studies::PATIENT_ID, studies::PATIENT_BIRTH_DATE]);
    log.lines()
        .filter(|line| needles.iter().any(|needle| line.to_ascii_lowercase().contains(&needle.to_ascii_lowercase())))
        .map(str::to_string)
        .collect()
}
