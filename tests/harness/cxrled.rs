//! cxr-ledd as a separate process, as systemd runs it: a configuration file
//! written for the run, its log (JSON lines) captured to a file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Context};
use cxr_led_test_kit::ports::{reported_address, DICOM_LISTENING, HTTP_LISTENING};

/// cxr-led's AE title in the harness.
pub const CXRLED_AE: &str = "CXRLED";

/// What a harness run of cxr-ledd is configured with.
#[derive(Debug, Clone)]
pub struct CxrLedSettings {
    /// PostgreSQL URL of its own database.
    pub database_url: String,
    /// The model bundle folder.
    pub bundle: PathBuf,
    /// The DICOM port to listen on (127.0.0.1); 0: the one the system gives
    /// the first run (kept for restarts, so that the PACS can keep sending).
    pub dicom_port: u16,
    /// The health and metrics port (127.0.0.1); 0: a new one each run.
    pub http_port: u16,
    /// Where the PACS (Orthanc) takes C-STOREs: AE title and port on 127.0.0.1.
    pub pacs_ae_title: String,
    /// The PACS's DICOM port.
    pub pacs_port: u16,
    /// Seconds of quiet before a study counts as complete.
    pub quiet_period_secs: f64,
    /// Hold threshold; negative means the bundle's calibrated one.
    pub hold_threshold: f64,
    /// Enhancement workers.
    pub workers: usize,
    /// Inference device (auto, cpu, cuda).
    pub device: String,
    /// Seconds a SIGTERM waits for the image in progress.
    pub drain_timeout_secs: u64,
    /// Refinement start timestep and DDIM steps; 0 = the bundle's.
    pub t0: u32,
    /// DDIM steps; 0 = the bundle's.
    pub steps: u32,
    /// Also write (and send) the doubt map as a Secondary Capture.
    pub doubt_map_instance: bool,
}

/// A running cxr-ledd (killed on drop).
#[derive(Debug)]
pub struct CxrLed {
    /// The folder with its configuration, spool, derived files and log.
    pub dir: PathBuf,
    /// The DICOM port it listens on (as it reported).
    pub dicom_port: u16,
    /// Its health and metrics port (as it reported).
    pub http_port: u16,
    settings: CxrLedSettings,
    child: Option<Child>,
}

/// The cxr-ledd binary: `$CXR_LEDD`, else next to the running executable
/// (cargo puts test executables in `target/<profile>/deps/`, binaries in
/// `target/<profile>/`).
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("CXR_LEDD") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("cxr-ledd");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cxr-ledd not found next to {}: build it first (cargo build -p cxr-led-daemon, same profile) or set CXR_LEDD",
        exe.display()
    )
}

impl CxrLed {
    /// Writes the configuration and starts `cxr-ledd run`; returns once it accepts associations.
    pub fn start(dir: &Path, settings: &CxrLedSettings) -> anyhow::Result<CxrLed> {
        let dir = &std::path::absolute(dir)?;
        std::fs::create_dir_all(dir)?;
        let mut cxrled = CxrLed {
            dir: dir.to_path_buf(),
            dicom_port: settings.dicom_port,
            http_port: settings.http_port,
            settings: settings.clone(),
            child: None,
        };
        cxrled.launch()?;
        Ok(cxrled)
    }

    /// Starts it (again, after [`Self::stop`]) with the same configuration,
    /// on the DICOM port of the first run; learns its ports from its log.
    pub fn launch(&mut self) -> anyhow::Result<()> {
        let settings = CxrLedSettings { dicom_port: self.dicom_port, ..self.settings.clone() };
        std::fs::write(self.dir.join("cxr-ledd.toml"), config_text(&self.dir, &settings))?;
        let log = self.log_path();
        let log_start = std::fs::metadata(&log).map_or(0, |m| m.len());
        let mut dicom = None;
        let child = crate::spawn_until_ready(
            Command::new(binary()?)
                .args(["run", "--config"])
                .arg(self.dir.join("cxr-ledd.toml"))
                .env("RUST_LOG", "info"),
            &log,
            // The model loads before the port opens, so this also waits for the bundle.
            Duration::from_secs(120),
            "cxr-ledd",
            || {
                dicom = dicom.or_else(|| reported_address(&log, log_start, DICOM_LISTENING));
                dicom.is_some_and(|address| std::net::TcpStream::connect(address).is_ok())
            },
        )
        .with_context(|| format!("its log:\n{}", self.log()))?;
        self.child = Some(child);
        self.dicom_port = dicom.map_or(0, |address| address.port());
        self.http_port = reported_address(&log, log_start, HTTP_LISTENING).map_or(0, |address| address.port());
        Ok(())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops it with SIGTERM (a graceful drain) and waits.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            crate::terminate(&mut child, Duration::from_secs(90))?;
        }
        Ok(())
    }

    /// The log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("cxr-ledd.log")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for CxrLed {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The configuration file: defaults from `config/cxr-ledd.toml` except what
/// a loopback run needs (ports, folders, short quiet period and retries).
fn config_text(dir: &Path, s: &CxrLedSettings) -> String {
    let path = |name: &str| toml_string(&dir.join(name).display().to_string());
    format!(
        r#"# Written by the cxr-led end-to-end harness.
[ingest]
ae-title = "{ae}"
listen = "127.0.0.1:{port}"
spool-dir = {spool}

[tracker]
quiet-period-secs = {quiet}
poll-interval-ms = 250

[database]
url = {url}
max-connections = 8
# The harness connects as the local server's superuser.
development = true

[pipeline]
bundle = {bundle}
device = "{device}"
t0 = {t0}
steps = {steps}
hold-threshold = {hold}
workers = {workers}
poll-interval-ms = 250
retry-initial-secs = 2
retry-max-secs = 10
output-dir = {derived}
drain-timeout-secs = {drain}
doubt-map-instance = {doubt}

[http]
listen = "127.0.0.1:{http_port}"

[delivery]
calling-ae-title = "{ae}"
destinations = [{{ name = "pacs", ae-title = "{pacs_ae}", address = "127.0.0.1:{pacs_port}" }}]
retry-initial-secs = 1
retry-max-secs = 4
poll-interval-ms = 250
connect-timeout-secs = 5
"#,
        ae = CXRLED_AE,
        port = s.dicom_port,
        http_port = s.http_port,
        spool = path("spool"),
        quiet = s.quiet_period_secs,
        url = toml_string(&s.database_url),
        bundle = toml_string(&s.bundle.display().to_string()),
        device = s.device,
        t0 = s.t0,
        steps = s.steps,
        hold = s.hold_threshold,
        workers = s.workers,
        derived = path("derived"),
        drain = s.drain_timeout_secs,
        doubt = s.doubt_map_instance,
        pacs_ae = s.pacs_ae_title,
        pacs_port = s.pacs_port,
    )
}

/// A TOML basic string (JSON's escaping is valid TOML).
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}
