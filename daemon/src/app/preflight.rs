//! Start-up's and `check-config`'s look at what the configuration points at,
//! after its values passed: every TLS file is read and parsed as rustls will
//! use it (certificate chains, the key that goes with the certificate, CA
//! bundles) and every destination's server name is checked. A reload runs it
//! too, so a bad file is refused with its key before anything uses it.
//!
//! It lives here, not in [`crate::config`], so the configuration stays plain
//! data that every layer can read without pulling in TLS.

use std::path::Path;

use crate::config::{self, Config, Problems};
use crate::tls;

/// Records a problem for each TLS file or server name that will not work.
pub fn check(config: &Config, problems: &mut Problems) {
    if let Some(listener) = &config.ingest.tls {
        tls::check_listener(listener, "ingest.tls", problems);
    }
    for (i, destination) in config.delivery.destinations.iter().enumerate() {
        if let Some(settings) = &destination.tls {
            let prefix = format!("delivery.destinations[{i}].tls");
            tls::check_destination(settings, destination.host(), &prefix, problems);
        }
    }
}

/// Reads a configuration file and checks its values and what they point at.
pub fn load(path: &Path) -> Result<Config, config::Error> {
    Config::load_checked(path, check)
}

/// [`load`] of TOML text.
pub fn from_toml(text: &str) -> Result<Config, config::Error> {
    Config::from_toml_checked(text, check)
}
