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
    fn bad_ae_title_is_rejected() {
        assert!(Config::from_toml("[ingest]\nae-title = \"WAY-TOO-LONG-AE-TITLE\"\n").is_err());
    }
}
