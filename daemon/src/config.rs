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
    /// Alert mail transport (`[mail]`).
    pub mail: MailConfig,
    /// What raises an alert (`[alerts]`).
    pub alerts: AlertsConfig,
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
        if !(4096..=131_072).contains(&self.ingest.max_pdu_length) {
            return Err(Error::Invalid("max-pdu-length must be between 4096 and 131072".into()));
        }
        if self.ingest.max_associations == 0 {
            return Err(Error::Invalid("max-associations must be at least 1".into()));
        }
        if self.tracker.quiet_period_secs.is_nan() || self.tracker.quiet_period_secs < 0.0 {
            return Err(Error::Invalid("quiet-period-secs must be zero or more".into()));
        }
        self.validate_mail()
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
    fn bad_ae_title_is_rejected() {
        assert!(Config::from_toml("[ingest]\nae-title = \"WAY-TOO-LONG-AE-TITLE\"\n").is_err());
    }
}
