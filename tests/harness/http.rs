//! A minimal blocking HTTP/1.1 client for Orthanc's REST API on loopback:
//! one request per connection (`Connection: close`), Content-Length or
//! chunked bodies. Enough for a test harness, and no HTTP stack to build.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
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

/// Sends one request to `127.0.0.1:port` and reads the whole response.
pub fn request(port: u16, method: &str, path: &str, body: &[u8]) -> anyhow::Result<Response> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line {status_line:?} from {method} {path}"))?;
    let mut content_length = None;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                .with_context(|| format!("bad chunk size {size_line:?}"))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = content_length {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else {
        reader.read_to_end(&mut body)?;
    }
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
