//! The daemon's TOML configuration: every section is kebab-case, rejects
//! unknown keys and has documented defaults (see `config/cxr-ledd.toml`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    /// The DICOM SCP (`[ingest]`).
    pub ingest: IngestConfig,
    /// Study assembly (`[tracker]`).
    pub tracker: TrackerConfig,
    /// PostgreSQL (`[database]`).
    pub database: DatabaseConfig,
    /// The exposure gate (`[exposure]`).
    pub exposure: ExposureConfig,
    /// Workers, model and queue (`[pipeline]`).
    pub pipeline: PipelineConfig,
    /// Sending derived instances to the PACS (`[delivery]`).
    pub delivery: DeliveryConfig,
    /// Alert mail transport (`[mail]`).
    pub mail: MailConfig,
    /// What raises an alert (`[alerts]`).
    pub alerts: AlertsConfig,
    /// Health and metrics over HTTP (`[http]`).
    pub http: HttpConfig,
}

/// The C-STORE / C-ECHO service class provider.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Our AE title; associations calling another title are rejected.
    pub ae_title: String,
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Calling AE titles allowed to associate. Empty means any calling AE title.
    pub allowed_calling_ae_titles: Vec<String>,
    /// Peer IP addresses allowed to associate. Empty means any address.
    pub allowed_peer_addresses: Vec<IpAddr>,
    /// Maximum PDU length we accept (bytes).
    pub max_pdu_length: u32,
    /// Maximum number of concurrent associations; more are rejected as transient.
    pub max_associations: usize,
    /// Largest data set we accept, in MiB (decompressed, for a deflated
    /// one): a larger one is answered A700 and nothing is kept.
    pub max_instance_size_mib: u64,
    /// Seconds to wait for the rest of a message once it has started.
    pub read_timeout_secs: u64,
    /// Seconds an association may stay idle between messages before we abort it.
    pub idle_timeout_secs: u64,
    /// Spool folder: received instances live here (`tmp/` holds files being received).
    pub spool_dir: PathBuf,
    /// A second listener speaking DICOM TLS (`[ingest.tls]`); absent = none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<IngestTlsConfig>,
}

/// The DICOM TLS listener (PS3.15 Annex B.1, Basic TLS Secure Transport):
/// TLS 1.2 or 1.3, our certificate, and optionally a client-certificate check.
/// It serves the same AE title, allow-lists and limits as the plain listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct IngestTlsConfig {
    /// Address and port of the TLS listener (2762 is the registered DICOM TLS port).
    #[serde(default = "default_tls_listen")]
    pub listen: SocketAddr,
    /// PEM file with our certificate, then any intermediates.
    pub certificate: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1),
    /// readable by the service user only.
    pub private_key: PathBuf,
    /// PEM file with the CA certificates that sign our peers' client
    /// certificates. Set: a peer without a certificate issued by one of them
    /// is refused during the handshake. Absent: no client certificate is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

fn default_tls_listen() -> SocketAddr {
    "0.0.0.0:2762".parse().expect("valid default address")
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            ae_title: "CXRLED".into(),
            listen: "0.0.0.0:11112".parse().expect("valid default address"),
            allowed_calling_ae_titles: Vec::new(),
            allowed_peer_addresses: Vec::new(),
            max_pdu_length: 65536,
            max_associations: 32,
            max_instance_size_mib: 512,
            read_timeout_secs: 30,
            idle_timeout_secs: 120,
            spool_dir: PathBuf::from("/var/lib/cxr-led/spool"),
            tls: None,
        }
    }
}

impl IngestConfig {
    /// [`Self::read_timeout_secs`] as a duration.
    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout_secs.max(1))
    }

    /// [`Self::idle_timeout_secs`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }

    /// [`Self::max_instance_size_mib`] in bytes.
    pub fn max_instance_bytes(&self) -> u64 {
        self.max_instance_size_mib.saturating_mul(1 << 20)
    }
}

/// Study assembly: when a study counts as complete.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// A study is complete this many seconds after its last instance arrived.
    pub quiet_period_secs: f64,
    /// How often the tracker looks for complete studies (milliseconds).
    pub poll_interval_ms: u64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig { quiet_period_secs: 60.0, poll_interval_ms: 1000 }
    }
}

/// PostgreSQL connection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Connection URL; the `DATABASE_URL` environment variable overrides it when this is empty.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// A development or test set-up: the service may run as the schema owner
    /// or a superuser, which could rewrite the audit (start-up refuses that
    /// otherwise), and then applies the migrations itself.
    pub development: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig { url: String::new(), max_connections: 16, development: false }
    }
}

/// The exposure gate's thresholds (see `triage`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ExposureConfig {
    /// Flag an image whose Deviation Index is below this. AAPM TG-116's
    /// action levels: below -1 "consult", below -3 "repeat" (half the
    /// target dose); the default flags what TG-116 would repeat.
    pub flag_below_deviation_index: f64,
    /// Without exposure tags: flag an image whose display noise sigma
    /// (intensity in [0, 1]) is above this.
    pub flag_above_noise_sigma: f64,
    /// Body Part Examined values the model is for; an image with another
    /// value is not applicable (an image without the tag is examined).
    pub body_parts: Vec<String>,
}

impl Default for ExposureConfig {
    fn default() -> Self {
        ExposureConfig {
            flag_below_deviation_index: -3.0,
            flag_above_noise_sigma: 0.03,
            body_parts: vec!["CHEST".into(), "THORAX".into(), "LUNG".into()],
        }
    }
}

/// The enhancement workers: the model bundle, inference settings and the job queue.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Whether this process runs workers (ingest-only hosts set false).
    pub enabled: bool,
    /// The model bundle folder (holds bundle.toml).
    pub bundle: PathBuf,
    /// Inference device: auto, cpu, cuda or cuda:N.
    pub device: String,
    /// Precision: f32, bf16 (CPU with AVX-512 BF16 or AMX, or CUDA) or f16 (CUDA only).
    pub precision: cxr_led_models::Precision,
    /// Refinement start timestep; 0 = the bundle's default.
    pub t0: usize,
    /// DDIM steps; 0 = the bundle's default.
    pub steps: usize,
    /// Hold a result whose hallucination score is above this; a negative
    /// value means the bundle's calibrated threshold.
    pub hold_threshold: f64,
    /// Concurrent jobs in this process (each runs one image at a time).
    pub workers: usize,
    /// Seconds a claimed job stays leased without a heartbeat; a job whose
    /// worker died is claimable again after this.
    pub lease_secs: u64,
    /// Attempts before a job goes to the dead-letter state.
    pub max_attempts: i32,
    /// First retry delay in seconds; doubles per attempt.
    pub retry_initial_secs: u64,
    /// Longest retry delay in seconds.
    pub retry_max_secs: u64,
    /// How often an idle worker looks for jobs, in milliseconds.
    pub poll_interval_ms: u64,
    /// Folder of the derived instances (written before they are queued for delivery).
    pub output_dir: PathBuf,
    /// Also send the hallucination check's doubt map as a Secondary Capture
    /// instance in the derived series, so a radiologist sees where the
    /// enhancement may be inventing detail.
    pub doubt_map_instance: bool,
    /// Seconds a shutdown (SIGTERM) waits for the images in progress; after
    /// that their jobs are handed back to the queue (lease released) and the
    /// next start redoes them. Keep it below systemd's TimeoutStopSec.
    pub drain_timeout_secs: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            enabled: true,
            bundle: PathBuf::from("/usr/share/cxr-led/bundles/default"),
            device: "auto".into(),
            precision: cxr_led_models::Precision::F32,
            t0: 0,
            steps: 0,
            hold_threshold: -1.0,
            workers: 1,
            lease_secs: 300,
            max_attempts: 5,
            retry_initial_secs: 30,
            retry_max_secs: 3600,
            poll_interval_ms: 1000,
            output_dir: PathBuf::from("/var/lib/cxr-led/derived"),
            doubt_map_instance: false,
            drain_timeout_secs: 60,
        }
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MailTls {
    /// Plain SMTP (a relay on localhost or a trusted network only).
    None,
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
}

/// The SMTP server alert mails go through. The password is never in this
/// file: it comes from `$CREDENTIALS_DIRECTORY/smtp-password` (systemd
/// `LoadCredential=smtp-password:...`) or `$CXR_LED_SMTP_PASSWORD`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct MailConfig {
    /// Send alert mails at all.
    pub enabled: bool,
    /// SMTP server host name (also the name its TLS certificate must carry).
    pub smtp_host: String,
    /// SMTP server port.
    pub smtp_port: u16,
    /// `none`, `starttls` or `tls`.
    pub tls: MailTls,
    /// SMTP user name; empty means no authentication.
    pub username: String,
    /// Sender address, e.g. `cxr-led <cxr-led@hospital.example>`.
    pub from: String,
    /// Recipient addresses.
    pub to: Vec<String>,
    /// Seconds to wait for the SMTP server before a send counts as failed.
    pub timeout_secs: u64,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            enabled: false,
            smtp_host: "localhost".into(),
            smtp_port: 587,
            tls: MailTls::Starttls,
            username: String::new(),
            from: "cxr-led <cxr-led@localhost>".into(),
            to: Vec::new(),
            timeout_secs: 30,
        }
    }
}

/// Delivery of derived instances: the C-STORE SCU and its retry policy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// The calling AE title of our associations.
    pub calling_ae_title: String,
    /// Where every derived instance goes (one outbox row per destination).
    pub destinations: Vec<DestinationConfig>,
    /// Delay before the first retry (seconds); doubles with every failed attempt.
    pub retry_initial_secs: u64,
    /// Longest delay between retries (seconds).
    pub retry_max_secs: u64,
    /// Attempts after which a delivery is marked `failed`; 0 retries forever.
    pub max_attempts: u32,
    /// Seconds to wait for the TCP connection and the association answer.
    pub connect_timeout_secs: u64,
    /// Seconds to wait for the C-STORE response once an instance is sent.
    pub response_timeout_secs: u64,
    /// How often the sender looks for due deliveries (milliseconds).
    pub poll_interval_ms: u64,
    /// Largest PDU we accept from the peer (bytes).
    pub max_pdu_length: u32,
    /// Deliveries claimed per pass.
    pub batch_size: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            calling_ae_title: "CXRLED".into(),
            destinations: Vec::new(),
            retry_initial_secs: 10,
            retry_max_secs: 600,
            max_attempts: 0,
            connect_timeout_secs: 10,
            response_timeout_secs: 60,
            poll_interval_ms: 1000,
            max_pdu_length: 65536,
            batch_size: 16,
        }
    }
}

impl PipelineConfig {
    /// The lease as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs.max(1))
    }

    /// [`Self::drain_timeout_secs`] as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }

    /// When a failed job is tried again (no jitter: one job per study).
    pub fn retry_backoff(&self) -> Backoff {
        Backoff { initial_secs: self.retry_initial_secs, max_secs: self.retry_max_secs }
    }
}

impl DeliveryConfig {
    /// When a failed delivery is tried again (with jitter by outbox row).
    pub fn retry_backoff(&self) -> Backoff {
        Backoff { initial_secs: self.retry_initial_secs, max_secs: self.retry_max_secs }
    }

    /// [`Self::connect_timeout_secs`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.max(1))
    }

    /// [`Self::response_timeout_secs`] as a duration.
    pub fn response_timeout(&self) -> Duration {
        Duration::from_secs(self.response_timeout_secs.max(1))
    }

    /// How long a claimed delivery stays invisible to other senders: long
    /// enough to connect, send and wait for the answer, so a second daemon
    /// does not send the same row at the same time; if this one dies the row
    /// becomes due again after it.
    pub fn lease(&self) -> Duration {
        self.connect_timeout() * 2 + self.response_timeout() * 2 + Duration::from_secs(30)
    }
}

/// One PACS (or other storage SCP) that receives derived instances.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DestinationConfig {
    /// Our name for it: the outbox and the audit trail refer to it by this name.
    pub name: String,
    /// Its AE title (the called AE title).
    pub ae_title: String,
    /// `host:port`.
    pub address: String,
    /// Send over DICOM TLS instead of plain TCP (`tls = { ca = "..." }`); absent = plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<DestinationTlsConfig>,
}

/// DICOM TLS towards one destination. The files are read at every
/// association, so a renewed certificate is used without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DestinationTlsConfig {
    /// PEM file with the CA certificates we trust for the destination's certificate.
    pub ca: PathBuf,
    /// The name its certificate must carry (DNS name or IP address); default:
    /// the host part of `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM file with our client certificate (then intermediates), for a
    /// destination that checks client certificates; needs `private-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<PathBuf>,
    /// PEM file with the client certificate's private key; needs `certificate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PathBuf>,
}

impl DestinationConfig {
    /// The host part of `address` (brackets of an IPv6 literal removed).
    pub fn host(&self) -> &str {
        let host = self.address.rsplit_once(':').map_or(self.address.as_str(), |(host, _)| host);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// An AE title problem, or None: 1 to 16 printable ASCII characters, no backslash.
fn ae_title_problem(ae: &str) -> Option<String> {
    let bad = ae.trim().is_empty()
        || ae.len() > 16
        || !ae.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        || ae.contains('\\');
    bad.then(|| format!("{ae:?} must be 1 to 16 printable ASCII characters, no backslash"))
}

/// When alerts are raised.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// A destination counts as unreachable once a derived instance has waited
    /// this many seconds in the outbox and nothing reached it meanwhile.
    pub pacs_unreachable_after_secs: u64,
    /// How often the database is searched for new alerts (milliseconds).
    pub poll_interval_ms: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig { pacs_unreachable_after_secs: 900, poll_interval_ms: 10_000 }
    }
}

/// The HTTP endpoints for operators and monitoring: `/healthz`, `/readyz`,
/// `/metrics` (see `daemon/OPERATIONS.md`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve the endpoints at all.
    pub enabled: bool,
    /// Address and port to listen on. Loopback by default: the endpoints
    /// have no authentication, so expose them deliberately or not at all.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { enabled: true, listen: "127.0.0.1:9412".parse().expect("valid default address") }
    }
}

/// One problem in a configuration: the key it concerns (a dotted path such as
/// `delivery.destinations[1].address`) and what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path.
    pub key: String,
    /// What is wrong, and what to write instead.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a configuration (never empty when returned as an error).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// Records a problem.
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { key: key.into(), message: message.into() });
    }

    /// Records a problem unless `ok`.
    fn check(&mut self, ok: bool, key: impl Into<String>, message: impl Into<String>) {
        if !ok {
            self.push(key, message);
        }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok when empty, else these problems.
    fn into_result(self) -> Result<(), Problems> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

/// One problem per line.
impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (syntax, unknown key, wrong
    /// type): serde stops at the first such error.
    #[error("parsing {path}: {}{source}", if key.is_empty() { String::new() } else { format!("at key {key}: ") })]
    Parse {
        /// The file.
        path: PathBuf,
        /// The key path where deserialization stopped (empty at the top level).
        key: String,
        /// Why, with the line and column.
        source: Box<toml::de::Error>,
    },
    /// Values that parse but are out of range, inconsistent, or secrets that
    /// do not belong in the file: every one found, one per line.
    #[error("invalid configuration {path}:\n{problems}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem.
        problems: Problems,
    },
}

impl Error {
    /// The validation problems (empty for read and parse errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            Error::Invalid { problems, .. } => &problems.0,
            _ => &[],
        }
    }
}

/// The SMTP password's credential file name under `$CREDENTIALS_DIRECTORY`
/// (systemd `LoadCredential=`).
pub const SMTP_PASSWORD_CREDENTIAL: &str = "smtp-password";
/// The environment variable read for the SMTP password when there is no credential file.
pub const SMTP_PASSWORD_ENV: &str = "CXR_LED_SMTP_PASSWORD";

/// Key names that mean someone is about to put a secret in the file.
const SECRET_KEY_WORDS: &[&str] = &["password", "passwd", "secret", "token", "api-key", "apikey"];

/// Keys that look like secrets, anywhere in the file (before the schema is
/// applied, so the message says where the secret belongs instead of
/// "unknown field").
fn secret_keys(table: &toml::Table, prefix: &str, problems: &mut Problems) {
    for (key, value) in table {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        let lower = key.to_ascii_lowercase();
        if SECRET_KEY_WORDS.iter().any(|word| lower.contains(word)) {
            let message = if prefix == "mail" || lower.contains("smtp") {
                format!(
                    "secrets never go in this file: remove it and hand the SMTP password over as the systemd credential \
                     {} (LoadCredential={}:/etc/cxr-led/smtp-password, read from $CREDENTIALS_DIRECTORY) or in ${}",
                    SMTP_PASSWORD_CREDENTIAL,
                    SMTP_PASSWORD_CREDENTIAL,
                    SMTP_PASSWORD_ENV
                )
            } else if prefix == "database" {
                "secrets never go in this file: remove it and put DATABASE_URL=postgres://user:PASSWORD@host/db in the \
                 root-only /etc/cxr-led/environment (EnvironmentFile=; used when [database] url is empty), or set \
                 PGPASSWORD there"
                    .to_string()
            } else {
                "secrets never go in this file: remove it (passwords come from systemd credentials or the root-only \
                 /etc/cxr-led/environment, see systemd/README.md)"
                    .to_string()
            };
            problems.push(path.clone(), message);
        }
        match value {
            toml::Value::Table(inner) => secret_keys(inner, &path, problems),
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let toml::Value::Table(inner) = item {
                        secret_keys(inner, &format!("{path}[{i}]"), problems);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Whether a URL carries a password (`scheme://user:password@host`).
fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.split_once(':').is_some_and(|(_, p)| !p.is_empty()))
        || url.split(['?', '&']).any(|part| part.to_ascii_lowercase().starts_with("password="))
}

/// Checks of what a configuration points at (files, names), run after the
/// value checks by [`Config::load_checked`]; `app::preflight` has the real one.
pub type Preflight = fn(&Config, &mut Problems);

impl Config {
    /// Parses a configuration from TOML text and validates its values.
    pub fn from_toml(text: &str) -> Result<Config, Error> {
        Self::parse(text, Path::new("<text>"), |_, _| {})
    }

    /// Reads a configuration file, validates its values and runs `preflight`
    /// on it; every problem of both is reported together. There is no
    /// loader without a preflight: a file is read to run on, so its TLS files
    /// are checked too (`app::preflight::load`).
    pub fn load_checked(path: &Path, preflight: Preflight) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
        Self::parse(&text, path, preflight)
    }

    /// [`Self::load_checked`] of TOML text.
    pub fn from_toml_checked(text: &str, preflight: Preflight) -> Result<Config, Error> {
        Self::parse(text, Path::new("<text>"), preflight)
    }

    /// Secret-looking keys first (they would otherwise be "unknown field"),
    /// then the schema (first error, with its key path and line), then every
    /// range and consistency problem and what `preflight` finds.
    fn parse(text: &str, path: &Path, preflight: Preflight) -> Result<Config, Error> {
        let mut problems = Problems::default();
        if let Ok(table) = text.parse::<toml::Table>() {
            secret_keys(&table, "", &mut problems);
        }
        if !problems.is_empty() {
            return Err(Error::Invalid { path: path.into(), problems });
        }
        let config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            let key = e.path().to_string();
            Error::Parse {
                path: path.into(),
                key: if key == "." { String::new() } else { key },
                source: Box::new(e.into_inner()),
            }
        })?;
        let mut problems = config.validate().err().unwrap_or_default();
        preflight(&config, &mut problems);
        problems.into_result().map_err(|problems| Error::Invalid { path: path.into(), problems })?;
        Ok(config)
    }

    /// Checks what serde cannot (ranges, consistency, secrets in values) and
    /// returns every problem found.
    pub fn validate(&self) -> Result<(), Problems> {
        let mut p = Problems::default();
        let ingest = &self.ingest;
        if let Some(problem) = ae_title_problem(&ingest.ae_title) {
            p.push("ingest.ae-title", problem);
        }
        for (i, ae) in ingest.allowed_calling_ae_titles.iter().enumerate() {
            if let Some(problem) = ae_title_problem(ae) {
                p.push(format!("ingest.allowed-calling-ae-titles[{i}]"), problem);
            }
        }
        p.check(
            (4096..=131_072).contains(&ingest.max_pdu_length),
            "ingest.max-pdu-length",
            format!("{} is out of range: write a value between 4096 and 131072 (default 65536)", ingest.max_pdu_length),
        );
        p.check(ingest.max_associations > 0, "ingest.max-associations", "must be at least 1 (default 32)");
        p.check(
            (1..=4096).contains(&ingest.max_instance_size_mib),
            "ingest.max-instance-size-mib",
            format!("{} is out of range: write a value between 1 and 4096 (default 512)", ingest.max_instance_size_mib),
        );
        p.check(
            !self.tracker.quiet_period_secs.is_nan() && self.tracker.quiet_period_secs >= 0.0,
            "tracker.quiet-period-secs",
            "must be zero or more seconds (default 60.0)",
        );
        p.check(self.database.max_connections > 0, "database.max-connections", "must be at least 1 (default 16)");
        p.check(
            !url_has_password(&self.database.url),
            "database.url",
            "contains a password; secrets never go in this file: leave url empty and put \
             DATABASE_URL=postgres://user:PASSWORD@host/db in the root-only /etc/cxr-led/environment \
             (EnvironmentFile=), or keep the URL without its password and set PGPASSWORD there",
        );
        p.check(
            self.exposure.flag_below_deviation_index.is_finite(),
            "exposure.flag-below-deviation-index",
            "must be a number such as -3.0",
        );
        let sigma = self.exposure.flag_above_noise_sigma;
        p.check(
            sigma > 0.0 && sigma < 1.0,
            "exposure.flag-above-noise-sigma",
            format!("{sigma} must be between 0 and 1 (exclusive; default 0.03)"),
        );
        if let Some(tls) = &ingest.tls {
            p.check(
                tls.listen != ingest.listen || tls.listen.port() == 0,
                "ingest.tls.listen",
                format!("{} is also ingest.listen: give the TLS listener its own port (2762 is usual)", tls.listen),
            );
        }
        self.validate_pipeline(&mut p);
        self.validate_delivery(&mut p);
        self.validate_http(&mut p);
        self.validate_mail(&mut p);
        p.into_result()
    }

    fn validate_pipeline(&self, p: &mut Problems) {
        let pipeline = &self.pipeline;
        p.check(pipeline.workers > 0, "pipeline.workers", "must be at least 1 (set pipeline.enabled = false for none)");
        p.check(pipeline.max_attempts >= 1, "pipeline.max-attempts", "must be at least 1 (default 5)");
        p.check(pipeline.lease_secs >= 10, "pipeline.lease-secs", "must be at least 10 (default 300)");
        p.check(pipeline.retry_initial_secs >= 1, "pipeline.retry-initial-secs", "must be at least 1 (default 30)");
        p.check(
            pipeline.retry_max_secs >= pipeline.retry_initial_secs,
            "pipeline.retry-max-secs",
            format!("must be at least retry-initial-secs ({})", pipeline.retry_initial_secs),
        );
        p.check(
            !pipeline.hold_threshold.is_nan() && pipeline.hold_threshold <= 1.0,
            "pipeline.hold-threshold",
            "must be in [0, 1], or negative (-1.0) for the bundle's calibrated value",
        );
        if pipeline.enabled {
            if let Err(e) = cxr_led_models::device::parse_device(&pipeline.device) {
                p.push("pipeline.device", format!("{e}: write auto, cpu, cuda or cuda:N"));
            }
            p.check(
                !pipeline.bundle.as_os_str().is_empty(),
                "pipeline.bundle",
                "is empty: name the model bundle folder (the one holding bundle.toml)",
            );
        }
    }

    /// Two listeners on one port cannot both bind; say which keys clash
    /// instead of failing at start-up with "address in use".
    fn validate_http(&self, p: &mut Problems) {
        let (http, dicom) = (self.http.listen, self.ingest.listen);
        let overlapping_ips = http.ip() == dicom.ip() || http.ip().is_unspecified() || dicom.ip().is_unspecified();
        p.check(
            !(self.http.enabled && http.port() != 0 && http.port() == dicom.port() && overlapping_ips),
            "http.listen",
            format!("{http} uses the same port as ingest.listen {dicom}; pick another port for [http] (default 9412)"),
        );
    }

    fn validate_delivery(&self, p: &mut Problems) {
        let d = &self.delivery;
        if let Some(problem) = ae_title_problem(&d.calling_ae_title) {
            p.push("delivery.calling-ae-title", problem);
        }
        let mut names = std::collections::HashSet::new();
        for (i, dest) in d.destinations.iter().enumerate() {
            let key = format!("delivery.destinations[{i}]");
            if dest.name.trim().is_empty() {
                p.push(format!("{key}.name"), "is empty: give the destination a name (used in the outbox and audit)");
            } else if !names.insert(dest.name.as_str()) {
                p.push(
                    format!("{key}.name"),
                    format!("{:?} is used twice: destination names must be unique", dest.name),
                );
            }
            if let Some(problem) = ae_title_problem(&dest.ae_title) {
                p.push(format!("{key}.ae-title"), problem);
            }
            let port_ok = dest
                .address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            p.check(
                port_ok,
                format!("{key}.address"),
                format!("{:?} must be host:port, e.g. pacs.example.org:104", dest.address),
            );
        }
        p.check(d.retry_initial_secs >= 1, "delivery.retry-initial-secs", "must be at least 1 (default 10)");
        p.check(
            d.retry_max_secs >= d.retry_initial_secs,
            "delivery.retry-max-secs",
            format!("must be at least retry-initial-secs ({})", d.retry_initial_secs),
        );
        p.check(
            (4096..=131_072).contains(&d.max_pdu_length),
            "delivery.max-pdu-length",
            format!("{} is out of range: write a value between 4096 and 131072 (default 65536)", d.max_pdu_length),
        );
        p.check(d.batch_size > 0, "delivery.batch-size", "must be at least 1 (default 16)");
    }

    fn validate_mail(&self, p: &mut Problems) {
        let mail = &self.mail;
        p.check(self.alerts.poll_interval_ms >= 100, "alerts.poll-interval-ms", "must be at least 100 (default 10000)");
        p.check(
            self.alerts.pacs_unreachable_after_secs > 0,
            "alerts.pacs-unreachable-after-secs",
            "must be at least 1 (default 900)",
        );
        if !mail.enabled {
            return;
        }
        p.check(
            !mail.smtp_host.trim().is_empty(),
            "mail.smtp-host",
            "is empty: name the SMTP server (or set mail.enabled = false)",
        );
        p.check(mail.smtp_port != 0, "mail.smtp-port", "must be 1 to 65535 (587 starttls, 465 tls, 25 none)");
        p.check(mail.timeout_secs > 0, "mail.timeout-secs", "must be at least 1 (default 30)");
        if let Err(e) = mail.from.parse::<lettre::message::Mailbox>() {
            p.push(
                "mail.from",
                format!("{:?} is not a mail address ({e}); write name@host or \"Name <name@host>\"", mail.from),
            );
        }
        p.check(!mail.to.is_empty(), "mail.to", "is empty: list at least one recipient (or set mail.enabled = false)");
        for (i, to) in mail.to.iter().enumerate() {
            if let Err(e) = to.parse::<lettre::message::Mailbox>() {
                p.push(
                    format!("mail.to[{i}]"),
                    format!("{to:?} is not a mail address ({e}); write name@host or \"Name <name@host>\""),
                );
            }
        }
    }

    /// A one-line summary for `check-config` (no secrets: none are in the file).
    pub fn summary(&self) -> String {
        let pipeline = if self.pipeline.enabled {
            format!(
                "{} worker(s), bundle {}, device {}",
                self.pipeline.workers,
                self.pipeline.bundle.display(),
                self.pipeline.device
            )
        } else {
            "off".into()
        };
        format!(
            "ingest {} on {}; pipeline {pipeline}; {} delivery destination(s); mail {}; http {}",
            self.ingest.ae_title,
            self.ingest.listen,
            self.delivery.destinations.len(),
            if self.mail.enabled { "on" } else { "off" },
            if self.http.enabled { self.http.listen.to_string() } else { "off".into() },
        )
    }

    /// The database URL: the configured one, else `$DATABASE_URL`.
    pub fn database_url(&self) -> Option<String> {
        if self.database.url.is_empty() {
            std::env::var("DATABASE_URL").ok()
        } else {
            Some(self.database.url.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.ingest.ae_title, "CXRLED");
        assert_eq!(config.ingest.max_associations, 32);
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = Config::from_toml("[ingest]\nae-titel = \"X\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn kebab_case_keys() {
        let config = Config::from_toml(
            "[ingest]\nae-title = \"LED\"\nallowed-calling-ae-titles = [\"PACS\"]\nmax-pdu-length = 16384\n\
             [tracker]\nquiet-period-secs = 2.5\n",
        )
        .unwrap();
        assert_eq!(config.ingest.allowed_calling_ae_titles, vec!["PACS".to_string()]);
        assert_eq!(config.tracker.quiet_period_secs, 2.5);
    }

    #[test]
    fn shipped_config_is_valid_and_states_the_delivery_defaults() {
        let shipped = Config::from_toml(include_str!("../../config/cxr-ledd.toml")).unwrap();
        let d = &shipped.delivery;
        let default = DeliveryConfig::default();
        assert_eq!(
            (d.retry_initial_secs, d.retry_max_secs, d.max_attempts, d.connect_timeout_secs),
            (default.retry_initial_secs, default.retry_max_secs, default.max_attempts, default.connect_timeout_secs)
        );
        assert_eq!(
            (d.response_timeout_secs, d.poll_interval_ms, d.max_pdu_length, d.batch_size),
            (default.response_timeout_secs, default.poll_interval_ms, default.max_pdu_length, default.batch_size)
        );
        assert_eq!(d.calling_ae_title, default.calling_ae_title);
        assert!(d.destinations.is_empty());
    }

    #[test]
    fn delivery_destinations() {
        let config = Config::from_toml(
            "[delivery]\ncalling-ae-title = \"LED\"\nretry-initial-secs = 5\n\
             destinations = [{ name = \"pacs\", ae-title = \"PACS\", address = \"pacs.example:104\" }]\n",
        )
        .unwrap();
        assert_eq!(config.delivery.destinations[0].ae_title, "PACS");
        assert_eq!(config.delivery.retry_initial_secs, 5);
        assert_eq!(config.delivery.retry_max_secs, 600);
        let err = Config::from_toml(
            "[delivery]\ndestinations = [{ name = \"p\", ae-title = \"P\", address = \"nohost\" }]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("host:port"), "{err}");
        let err = Config::from_toml(
            "[delivery]\ndestinations = [{ name = \"p\", ae-title = \"P\", address = \"h:1\" }, \
             { name = \"p\", ae-title = \"Q\", address = \"h:2\" }]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("unique"), "{err}");
        let err = Config::from_toml("[delivery]\nretry-initial-secs = 100\nretry-max-secs = 10\n").unwrap_err();
        assert!(err.to_string().contains("retry-max-secs"), "{err}");
    }

    #[test]
    fn mail_section() {
        let config = Config::from_toml(
            "[mail]\nenabled = true\nsmtp-host = \"mail.example\"\nsmtp-port = 465\ntls = \"tls\"\n\
             to = [\"Radiology IT <rad-it@hospital.example>\"]\n[alerts]\npacs-unreachable-after-secs = 60\n",
        )
        .unwrap();
        assert_eq!(config.mail.tls, MailTls::Tls);
        assert_eq!(config.alerts.pacs_unreachable_after_secs, 60);
        let err = Config::from_toml("[mail]\nenabled = true\n").unwrap_err();
        assert!(err.to_string().contains("mail.to: is empty"), "{err}");
        let err = Config::from_toml("[mail]\nenabled = true\nto = [\"not an address\"]\n").unwrap_err();
        assert!(err.to_string().contains("not a mail address"), "{err}");
        let err = Config::from_toml("[mail]\ntls = \"ssl\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
        let err = Config::from_toml("[mail]\npassword = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("mail.password: secrets never go in this file"), "{err}");
        assert!(err.to_string().contains("LoadCredential=smtp-password"), "{err}");
    }

    #[test]
    fn http_section() {
        let config = Config::from_toml("").unwrap();
        assert!(config.http.enabled);
        assert_eq!(config.http.listen, "127.0.0.1:9412".parse().unwrap());
        let shipped = Config::from_toml(include_str!("../../config/cxr-ledd.toml")).unwrap();
        assert_eq!((shipped.http.enabled, shipped.http.listen), (config.http.enabled, config.http.listen));
        let config = Config::from_toml("[http]\nenabled = false\nlisten = \"[::1]:9000\"\n").unwrap();
        assert!(!config.http.enabled);
        assert_eq!(config.http.listen.port(), 9000);
        let err = Config::from_toml("[http]\nlisten = \"0.0.0.0:11112\"\n").unwrap_err();
        assert!(err.to_string().contains("same port"), "{err}");
        // Off, the clash does not matter.
        Config::from_toml("[http]\nenabled = false\nlisten = \"0.0.0.0:11112\"\n").unwrap();
        let err = Config::from_toml("[http]\nport = 1\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn bad_ae_title_is_rejected() {
        assert!(Config::from_toml("[ingest]\nae-title = \"WAY-TOO-LONG-AE-TITLE\"\n").is_err());
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let err = Config::from_toml(
            "[pipeline]\nworkers = 0\nmax-attempts = 0\n[delivery]\nbatch-size = 0\n\
             destinations = [{ name = \"a\", ae-title = \"A\", address = \"h:1\" }, \
             { name = \"a\", ae-title = \"\", address = \"nohost\" }]\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "pipeline.workers",
                "pipeline.max-attempts",
                "delivery.destinations[1].name",
                "delivery.destinations[1].ae-title",
                "delivery.destinations[1].address",
                "delivery.batch-size",
            ],
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("pipeline.workers: must be at least 1 (set pipeline.enabled = false for none)"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 7, "{text}");
    }

    #[test]
    fn parse_errors_name_the_key_path_and_line() {
        let err = Config::from_toml("[ingest]\nae-title = \"X\"\nae-titel = \"X\"\n").unwrap_err().to_string();
        assert!(err.contains("at key ingest"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("unknown field `ae-titel`"), "{err}");
        let err = Config::from_toml(
            "[delivery]\ndestinations = [{ name = \"a\", ae-title = \"A\", address = \"h:1\", port = 1 }]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("delivery.destinations[0]"), "{err}");
        assert!(err.contains("unknown field `port`"), "{err}");
        let err = Config::from_toml("[pipeline]\nworkers = -1\n").unwrap_err().to_string();
        assert!(err.contains("pipeline.workers"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn secrets_are_refused() {
        let err = Config::from_toml("[database]\nurl = \"postgres://led:s3cret@db/led\"\n").unwrap_err();
        assert_eq!(err.problems()[0].key, "database.url");
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        Config::from_toml("[database]\nurl = \"postgres://led@db/led\"\n").unwrap();
        let err = Config::from_toml("[database]\npassword = \"x\"\n[mail]\nsmtp-password = \"y\"\n").unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["database.password", "mail.smtp-password"], "{err}");
    }
}
