//! A small HTTP/1.1 client for the daemon's `/healthz`, `/readyz` and
//! `/metrics`: raw bytes out, the whole answer in (the server closes every
//! connection: reading to the end proves it, and every routed answer is
//! checked to say so).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends raw request bytes and reads the answer to the end (the server closes).
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the HTTP endpoint");
    stream.write_all(request).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut bytes))
        .await
        .expect("the answer arrives")
        .expect("read the answer");
    parse_answer(&bytes)
}

/// A well-formed request; its answer says `Connection: close`.
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let answer = exchange(addr, format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await;
    assert_eq!(answer.header("Connection"), Some("close"));
    answer
}

pub fn parse_answer(bytes: &[u8]) -> Answer {
    let text = String::from_utf8(bytes.to_vec()).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status = parts.next().unwrap().parse().unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(": ").unwrap_or_else(|| panic!("header line {line:?}"));
            (name.to_string(), value.to_string())
        })
        .collect();
    Answer { status, headers, body: body.to_string() }
}
