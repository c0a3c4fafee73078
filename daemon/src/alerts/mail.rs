//! Alert mail: an SMTP transport (lettre) built from `[mail]`. The password is
//! never in the configuration file: systemd hands it over as a credential
//! (`LoadCredential=smtp-password:/etc/cxr-led/smtp-password` puts it in
//! `$CREDENTIALS_DIRECTORY/smtp-password`), or `$CXR_LED_SMTP_PASSWORD` holds it.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{MailConfig, MailTls, SMTP_PASSWORD_CREDENTIAL, SMTP_PASSWORD_ENV};

/// A mail that could not be set up or sent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `username` is set but no password was handed over.
    #[error(
        "[mail] username is set but no SMTP password was found: put it in $CREDENTIALS_DIRECTORY/{SMTP_PASSWORD_CREDENTIAL} \
         (systemd LoadCredential={SMTP_PASSWORD_CREDENTIAL}:/path/to/file) or in ${SMTP_PASSWORD_ENV}"
    )]
    NoPassword,
    /// The credential file exists but could not be read.
    #[error("reading the SMTP password from {path}: {source}")]
    ReadPassword {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `from` or a `to` entry is not a mail address.
    #[error("[mail] {field} {value:?} is not a mail address: {source}")]
    Address {
        /// `from` or `to`.
        field: &'static str,
        /// The configured text.
        value: String,
        /// Why.
        source: lettre::address::AddressError,
    },
    /// The TLS set-up for the server failed.
    #[error("setting up TLS for SMTP server {host}: {source}")]
    Tls {
        /// The server.
        host: String,
        /// Why.
        source: lettre::transport::smtp::Error,
    },
    /// The message could not be built.
    #[error("building the mail: {0}")]
    Build(#[from] lettre::error::Error),
    /// The server did not take the message.
    #[error("sending mail through {server}: {source}")]
    Send {
        /// host:port.
        server: String,
        /// Why.
        source: lettre::transport::smtp::Error,
    },
}

/// Sends plain-text mails to the configured recipients.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    server: String,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("server", &self.server).field("to", &self.recipients()).finish()
    }
}

/// The SMTP password from `$CREDENTIALS_DIRECTORY/smtp-password`, else
/// `$CXR_LED_SMTP_PASSWORD`, else None. A trailing newline is dropped.
pub fn smtp_password() -> Result<Option<String>, Error> {
    find_password(std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from), std::env::var(SMTP_PASSWORD_ENV).ok())
}

fn find_password(credentials_dir: Option<PathBuf>, from_env: Option<String>) -> Result<Option<String>, Error> {
    if let Some(dir) = credentials_dir {
        let path = dir.join(SMTP_PASSWORD_CREDENTIAL);
        match std::fs::read_to_string(&path) {
            Ok(text) => return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::ReadPassword { path, source }),
        }
    }
    Ok(from_env)
}

impl Mailer {
    /// Builds the transport (no connection yet: each send connects).
    pub fn from_config(config: &MailConfig) -> Result<Mailer, Error> {
        let parse = |field: &'static str, value: &str| {
            value.parse::<Mailbox>().map_err(|source| Error::Address { field, value: value.to_string(), source })
        };
        let from = parse("from", &config.from)?;
        let to = config.to.iter().map(|t| parse("to", t)).collect::<Result<Vec<_>, _>>()?;
        let host = config.smtp_host.as_str();
        let tls_error = |source| Error::Tls { host: host.to_string(), source };
        let mut builder = match config.tls {
            MailTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            MailTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host).map_err(tls_error)?,
            MailTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(tls_error)?,
        }
        .port(config.smtp_port)
        .timeout(Some(Duration::from_secs(config.timeout_secs.max(1))));
        if !config.username.is_empty() {
            let password = smtp_password()?.ok_or(Error::NoPassword)?;
            builder = builder.credentials(Credentials::new(config.username.clone(), password));
        }
        Ok(Mailer {
            transport: builder.build(),
            server: format!("{}:{}", config.smtp_host, config.smtp_port),
            from,
            to,
        })
    }

    /// The recipients, comma-separated.
    pub fn recipients(&self) -> String {
        self.to.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", ")
    }

    /// Sends one plain-text mail to every recipient; Ok once the server accepted it.
    pub async fn send(&self, subject: &str, body: &str) -> Result<(), Error> {
        let mut message = Message::builder().from(self.from.clone()).subject(subject).header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            message = message.to(to.clone());
        }
        let message = message.body(body.to_string())?;
        self.transport.send(message).await.map_err(|source| Error::Send { server: self.server.clone(), source })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_from_credentials_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find_password(Some(dir.path().into()), Some("env".into())).unwrap().as_deref(), Some("env"));
        assert_eq!(find_password(None, None).unwrap(), None);
        std::fs::write(dir.path().join(SMTP_PASSWORD_CREDENTIAL), "s3cret pass\n").unwrap();
        assert_eq!(find_password(Some(dir.path().into()), Some("env".into())).unwrap().as_deref(), Some("s3cret pass"));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::create_dir(dir.path().join("sub").join(SMTP_PASSWORD_CREDENTIAL)).unwrap();
        let err = find_password(Some(dir.path().join("sub")), None).unwrap_err();
        assert!(err.to_string().contains("reading the SMTP password"), "{err}");
    }

    #[test]
    fn bad_addresses_are_named() {
        let config = MailConfig { from: "nobody".into(), ..MailConfig::default() };
        let err = Mailer::from_config(&config).unwrap_err().to_string();
        assert!(err.contains("from \"nobody\" is not a mail address"), "{err}");
    }
}
