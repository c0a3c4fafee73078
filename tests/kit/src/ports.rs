//! Finding a listener's port. The daemon binds port 0 in tests and reports
//! the address it got in its log ([`reported_address`]); only programs that
//! cannot listen on port 0 (dcmtk's storescp, aiosmtpd, Orthanc) are given a
//! [`free_port`], which another process could take before they bind it.

use std::net::SocketAddr;
use std::path::Path;

/// What `cxr-ledd` logs, with the bound `address`, once its DICOM listener is open.
pub const DICOM_LISTENING: &str = "DICOM ingest listening";
/// What `cxr-ledd` logs, with the bound `address`, once its HTTP listener is open.
pub const HTTP_LISTENING: &str = "HTTP health and metrics listening";

/// The address `cxr-ledd` reported for the event `message` (e.g.
/// [`DICOM_LISTENING`], [`HTTP_LISTENING`]) in its JSON log at
/// `log`, reading from byte `from` (where this run's output starts); `None`
/// until it has.
pub fn reported_address(log: &Path, from: u64, message: &str) -> Option<SocketAddr> {
    let text = std::fs::read(log).ok()?;
    let text = String::from_utf8_lossy(text.get(from as usize..)?);
    text.lines().filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok()).find_map(|event| {
        let fields = &event["fields"];
        (fields["message"] == message).then(|| fields["address"].as_str()?.parse().ok()).flatten()
    })
}

/// A loopback port nobody listens on right now (bound, read, released), for
/// programs that cannot bind port 0 and report it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port").local_addr().expect("its address").port()
}
