//! The daemon's TOML configuration: every section is kebab-case, rejects
//! unknown keys and has documented defaults (see `config/cxr-ledd.toml`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
    /// Seconds to wait for the rest of a message once it has started.
    pub read_timeout_secs: u64,
    /// Seconds an association may stay idle between messages before we abort it.
    pub idle_timeout_secs: u64,
    /// Spool folder: received instances live here (`tmp/` holds files being received).
    pub spool_dir: PathBuf,
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
            read_timeout_secs: 30,
            idle_timeout_secs: 120,
            spool_dir: PathBuf::from("/var/lib/cxr-led/spool"),
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
}

/// Study assembly: when a study counts as complete.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Connection URL; the `DATABASE_URL` environment variable overrides it when this is empty.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig { url: String::new(), max_connections: 16 }
    }
}

/// The exposure gate's thresholds (see `triage`).
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Whether this process runs workers (ingest-only hosts set false).
    pub enabled: bool,
    /// The model bundle folder (holds bundle.toml).
    pub bundle: PathBuf,
    /// Inference device: auto, cpu, cuda or cuda:N.
    pub device: String,
    /// Precision: f32, f16 or bf16 (the last two on CUDA only).
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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

    /// The delay before retry number `attempt` (1-based): exponential, capped.
    pub fn retry_delay(&self, attempt: i32) -> Duration {
        let exponent = attempt.saturating_sub(1).clamp(0, 20) as u32;
        let secs = self.retry_initial_secs.saturating_mul(1u64 << exponent).min(self.retry_max_secs);
        Duration::from_secs(secs)
    }
}

impl DeliveryConfig {
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DestinationConfig {
    /// Our name for it: the outbox and the audit trail refer to it by this name.
    pub name: String,
    /// Its AE title (the called AE title).
    pub ae_title: String,
    /// `host:port`.
    pub address: String,
}

fn check_ae_title(key: &str, ae: &str) -> Result<(), Error> {
    if ae.trim().is_empty()
        || ae.len() > 16
        || !ae.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        || ae.contains('\\')
    {
        return Err(Error::Invalid(format!("{key} {ae:?} must be 1 to 16 printable ASCII characters, no backslash")));
    }
    Ok(())
}

/// When alerts are raised.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
    /// The file is not valid TOML for this schema.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Parses a configuration from TOML text and validates it.
    pub fn from_toml(text: &str) -> Result<Config, Error> {
        let config: Config =
            toml::from_str(text).map_err(|source| Error::Parse { path: PathBuf::from("<text>"), source })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
        let config: Config = toml::from_str(&text).map_err(|source| Error::Parse { path: path.into(), source })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges that serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        let ae = &self.ingest.ae_title;
        if ae.is_empty() || ae.len() > 16 || !ae.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
            return Err(Error::Invalid(format!("ae-title {ae:?} must be 1 to 16 printable ASCII characters")));
        }
        self.validate_delivery()?;
        if !(4096..=131_072).contains(&self.ingest.max_pdu_length) {
            return Err(Error::Invalid("max-pdu-length must be between 4096 and 131072".into()));
        }
        if self.ingest.max_associations == 0 {
            return Err(Error::Invalid("max-associations must be at least 1".into()));
        }
        if self.tracker.quiet_period_secs.is_nan() || self.tracker.quiet_period_secs < 0.0 {
            return Err(Error::Invalid("quiet-period-secs must be zero or more".into()));
        }
        if !self.exposure.flag_below_deviation_index.is_finite() {
            return Err(Error::Invalid("exposure.flag-below-deviation-index must be a number such as -3.0".into()));
        }
        if !(self.exposure.flag_above_noise_sigma > 0.0 && self.exposure.flag_above_noise_sigma < 1.0) {
            return Err(Error::Invalid("exposure.flag-above-noise-sigma must be between 0 and 1".into()));
        }
        let pipeline = &self.pipeline;
        if pipeline.workers == 0 {
            return Err(Error::Invalid("pipeline.workers must be at least 1 (set enabled = false for none)".into()));
        }
        if pipeline.max_attempts < 1 {
            return Err(Error::Invalid("pipeline.max-attempts must be at least 1".into()));
        }
        if pipeline.lease_secs < 10 {
            return Err(Error::Invalid("pipeline.lease-secs must be at least 10".into()));
        }
        if pipeline.hold_threshold.is_nan() || pipeline.hold_threshold > 1.0 {
            return Err(Error::Invalid(
                "pipeline.hold-threshold must be in [0, 1], or negative for the bundle's calibrated value".into(),
            ));
        }
        if pipeline.enabled {
            cxr_led_models::device::parse_device(&pipeline.device)
                .map_err(|e| Error::Invalid(format!("pipeline.device: {e}")))?;
        }
        self.validate_http()?;
        self.validate_mail()
    }

    /// Two listeners on one port cannot both bind; say which keys clash
    /// instead of failing at start-up with "address in use".
    fn validate_http(&self) -> Result<(), Error> {
        let (http, dicom) = (self.http.listen, self.ingest.listen);
        let overlapping_ips = http.ip() == dicom.ip() || http.ip().is_unspecified() || dicom.ip().is_unspecified();
        if self.http.enabled && http.port() != 0 && http.port() == dicom.port() && overlapping_ips {
            return Err(Error::Invalid(format!(
                "[http] listen {http} and [ingest] listen {dicom} use the same port; pick another for [http]"
            )));
        }
        Ok(())
    }

    fn validate_delivery(&self) -> Result<(), Error> {
        let d = &self.delivery;
        check_ae_title("[delivery] calling-ae-title", &d.calling_ae_title)?;
        let mut names = std::collections::HashSet::new();
        for dest in &d.destinations {
            if dest.name.trim().is_empty() || !names.insert(dest.name.as_str()) {
                return Err(Error::Invalid(format!(
                    "[delivery] destination name {:?} must be non-empty and unique",
                    dest.name
                )));
            }
            check_ae_title(&format!("[delivery] destination {:?} ae-title", dest.name), &dest.ae_title)?;
            let port_ok = dest
                .address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return Err(Error::Invalid(format!(
                    "[delivery] destination {:?} address {:?} must be host:port",
                    dest.name, dest.address
                )));
            }
        }
        if d.retry_initial_secs == 0 || d.retry_max_secs < d.retry_initial_secs {
            return Err(Error::Invalid(
                "[delivery] retry-initial-secs must be at least 1 and retry-max-secs at least retry-initial-secs"
                    .into(),
            ));
        }
        if !(4096..=131_072).contains(&d.max_pdu_length) {
            return Err(Error::Invalid("[delivery] max-pdu-length must be between 4096 and 131072".into()));
        }
        if d.batch_size == 0 {
            return Err(Error::Invalid("[delivery] batch-size must be at least 1".into()));
        }
        Ok(())
    }

    fn validate_mail(&self) -> Result<(), Error> {
        let mail = &self.mail;
        if self.alerts.poll_interval_ms < 100 {
            return Err(Error::Invalid("[alerts] poll-interval-ms must be at least 100".into()));
        }
        if self.alerts.pacs_unreachable_after_secs == 0 {
            return Err(Error::Invalid("[alerts] pacs-unreachable-after-secs must be at least 1".into()));
        }
        if !mail.enabled {
            return Ok(());
        }
        if mail.smtp_host.trim().is_empty() {
            return Err(Error::Invalid(
                "[mail] smtp-host is empty: name the SMTP server (or set enabled = false)".into(),
            ));
        }
        if mail.smtp_port == 0 {
            return Err(Error::Invalid("[mail] smtp-port must be 1 to 65535 (587 starttls, 465 tls, 25 none)".into()));
        }
        if mail.timeout_secs == 0 {
            return Err(Error::Invalid("[mail] timeout-secs must be at least 1".into()));
        }
        mail.from.parse::<lettre::message::Mailbox>().map_err(|e| {
            Error::Invalid(format!(
                "[mail] from {:?} is not a mail address ({e}); write name@host or \"Name <name@host>\"",
                mail.from
            ))
        })?;
        if mail.to.is_empty() {
            return Err(Error::Invalid(
                "[mail] to is empty: list at least one recipient (or set enabled = false)".into(),
            ));
        }
        for to in &mail.to {
            to.parse::<lettre::message::Mailbox>().map_err(|e| {
                Error::Invalid(format!(
                    "[mail] to {to:?} is not a mail address ({e}); write name@host or \"Name <name@host>\""
                ))
            })?;
        }
        Ok(())
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
        assert!(err.to_string().contains("to is empty"), "{err}");
        let err = Config::from_toml("[mail]\nenabled = true\nto = [\"not an address\"]\n").unwrap_err();
        assert!(err.to_string().contains("not a mail address"), "{err}");
        let err = Config::from_toml("[mail]\ntls = \"ssl\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
        let err = Config::from_toml("[mail]\npassword = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
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
}
