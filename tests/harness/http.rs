//! Blocking HTTP for Orthanc's REST API and cxr-led's endpoints on loopback
//! (ureq, plain HTTP): whole answers, status checked by the caller.

use std::time::Duration;

use anyhow::{bail, Context};

/// A response: status code and body.
#[derive(Debug)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as UTF-8 text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("response is not JSON: {}", self.text()))
    }

    /// Fails unless the status is 2xx.
    pub fn ok(self) -> anyhow::Result<Response> {
        if !(200..300).contains(&self.status) {
            bail!("HTTP {}: {}", self.status, self.text());
        }
        Ok(self)
    }
}

/// Sends one request to `127.0.0.1:port` and reads the whole response
/// (any status: [`Response::ok`] decides what counts as success).
pub fn request(port: u16, method: &str, path: &str, body: &[u8]) -> anyhow::Result<Response> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // An enhancement on CPU or a large instance file can take a while.
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let url = format!("http://127.0.0.1:{port}{path}");
    let sent = match method {
        "GET" => agent.get(&url).call(),
        "POST" => agent.post(&url).send(body),
        other => bail!("the harness sends GET and POST, not {other}"),
    };
    let mut response = sent.with_context(|| format!("{method} {url}"))?;
    let status = response.status().as_u16();
    // Instance files exceed ureq's default 10 MB limit for a body read at once.
    let body = response
        .body_mut()
        .with_config()
        .read_to_vec()
        .with_context(|| format!("reading the answer to {method} {url}"))?;
    Ok(Response { status, body })
}

/// GET, failing on a non-2xx status.
pub fn get(port: u16, path: &str) -> anyhow::Result<Response> {
    request(port, "GET", path, &[])?.ok()
}

/// GET, parsed as JSON.
pub fn get_json(port: u16, path: &str) -> anyhow::Result<serde_json::Value> {
    get(port, path)?.json()
}

/// POST, failing on a non-2xx status.
pub fn post(port: u16, path: &str, body: &[u8]) -> anyhow::Result<Response> {
    request(port, "POST", path, body)?.ok()
}
