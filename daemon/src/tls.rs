//! DICOM TLS (PS3.15 Annex B.1, Basic TLS Secure Transport): rustls
//! configurations for the TLS listener and for destinations, built from PEM
//! files named in the configuration.
//!
//! - TLS 1.2 and 1.3 only, with rustls' safe defaults (the BCP 195 suites
//!   that PS3.15 profiles ask for); the crypto provider is *ring*, named
//!   explicitly so that no other crate's provider choice can change it.
//! - The listener asks for a client certificate only when `client-ca` is set,
//!   and then refuses a peer without one issued by those CAs.
//! - A destination's certificate must chain to its `ca` file and carry its
//!   server name (the host of `address` unless `server-name` says otherwise).
//!
//! Every failure names the configuration key it concerns, so check-config,
//! start-up and reload all say which file is wrong and why.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;

use crate::config::{DestinationTlsConfig, IngestTlsConfig, Problems};

/// A TLS set-up error: the key (relative to the TLS table) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// `certificate`, `private-key`, `client-ca`, `ca` or `server-name`.
    pub key: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl TlsError {
    fn new(key: &'static str, message: impl Into<String>) -> TlsError {
        TlsError { key, message: message.into() }
    }

    /// The message with the full key path, e.g. `ingest.tls.certificate: ...`.
    pub fn at(&self, prefix: &str) -> String {
        format!("{prefix}.{}: {}", self.key, self.message)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file, in order (ours first, then intermediates).
fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let unreadable = |e: rustls::pki_types::pem::Error| {
        TlsError::new(
            key,
            format!(
                "reading {}: {e}; name a PEM file of CERTIFICATE blocks readable by the service user",
                path.display()
            ),
        )
    };
    let certificates =
        CertificateDer::pem_file_iter(path).map_err(unreadable)?.collect::<Result<Vec<_>, _>>().map_err(unreadable)?;
    if certificates.is_empty() {
        return Err(TlsError::new(
            key,
            format!("{} holds no PEM CERTIFICATE block (\"-----BEGIN CERTIFICATE-----\")", path.display()),
        ));
    }
    Ok(certificates)
}

fn private_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        TlsError::new(
            key,
            format!(
                "reading {}: {e}; name an unencrypted PEM private key (PKCS#8 \"PRIVATE KEY\", PKCS#1 \"RSA PRIVATE \
                 KEY\" or SEC1 \"EC PRIVATE KEY\") readable by the service user only",
                path.display()
            ),
        )
    })
}

fn trust_anchors(key: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(key, path)? {
        roots
            .add(certificate)
            .map_err(|e| TlsError::new(key, format!("{}: a certificate is not usable as a CA: {e}", path.display())))?;
    }
    Ok(roots)
}

/// The rustls configuration of the TLS listener.
pub fn server_config(tls: &IngestTlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates("certificate", &tls.certificate)?;
    let key = private_key("private-key", &tls.private_key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("listen", format!("no TLS protocol version available: {e}")))?;
    let builder = match &tls.client_ca {
        Some(path) => {
            let roots = trust_anchors("client-ca", path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::new("client-ca", format!("{}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError::new(
            "private-key",
            format!("{} does not go with {}: {e}", tls.private_key.display(), tls.certificate.display()),
        )
    })?;
    Ok(Arc::new(config))
}

/// The server name a destination's certificate must carry.
pub fn server_name(tls: &DestinationTlsConfig, host: &str) -> Result<ServerName<'static>, TlsError> {
    let name = tls.server_name.as_deref().unwrap_or(host);
    ServerName::try_from(name.to_string()).map_err(|e| {
        TlsError::new(
            "server-name",
            format!("{name:?} is not a DNS name or IP address ({e}); write the name in the PACS certificate"),
        )
    })
}

/// The rustls configuration for associations with one destination.
pub fn client_config(tls: &DestinationTlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = trust_anchors("ca", &tls.ca)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("ca", format!("no TLS protocol version available: {e}")))?
        .with_root_certificates(roots);
    let config = match (&tls.certificate, &tls.private_key) {
        (Some(certificate), Some(key_path)) => {
            let chain = certificates("certificate", certificate)?;
            let key = private_key("private-key", key_path)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                TlsError::new(
                    "private-key",
                    format!("{} does not go with {}: {e}", key_path.display(), certificate.display()),
                )
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(TlsError::new("private-key", "is missing: a client certificate needs its private key"))
        }
        (None, Some(_)) => {
            return Err(TlsError::new("certificate", "is missing: a private key needs its client certificate"))
        }
    };
    Ok(Arc::new(config))
}

/// Records a problem for each thing wrong with the TLS listener's files.
pub fn check_listener(tls: &IngestTlsConfig, prefix: &str, problems: &mut Problems) {
    if let Err(e) = server_config(tls) {
        problems.push(format!("{prefix}.{}", e.key), e.message);
    }
}

/// Records a problem for each thing wrong with a destination's TLS settings.
pub fn check_destination(tls: &DestinationTlsConfig, host: &str, prefix: &str, problems: &mut Problems) {
    if let Err(e) = server_name(tls, host) {
        problems.push(format!("{prefix}.{}", e.key), e.message);
    }
    if let Err(e) = client_config(tls) {
        problems.push(format!("{prefix}.{}", e.key), e.message);
    }
}

/// The TCP socket under a DICOM connection, plain or TLS, for socket options.
pub trait TcpSocket {
    /// The socket.
    fn tcp(&self) -> &TcpStream;
}

impl TcpSocket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl TcpSocket for dicom_ul::association::server::AsyncTlsStream {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl TcpSocket for dicom_ul::association::client::AsyncTlsStream {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}
