//! A real SMTP sink for the mail tests: Debian's aiosmtpd writing a Maildir.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cxr_led_daemon::config::{MailConfig, MailTls};

/// aiosmtpd on 127.0.0.1:`port`, storing every message in a Maildir; killed on drop.
pub struct SmtpSink {
    pub port: u16,
    child: Child,
    maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpSink {
    pub fn start(port: u16) -> SmtpSink {
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("Maildir");
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aiosmtpd (apt-get install python3-aiosmtpd; .ci/env.sh cxr_led_test_services does)");
        let started = Instant::now();
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "aiosmtpd did not listen on {address}");
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpSink { port, child, maildir, _dir: dir }
    }

    /// The messages received so far, headers unfolded, oldest first.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(self.maildir.join("new"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| (e.metadata().unwrap().modified().unwrap(), e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files.iter().map(|(_, path)| decode(&std::fs::read_to_string(path).unwrap())).collect()
    }
}

/// A stored message as text: headers unfolded, a quoted-printable body decoded.
fn decode(raw: &str) -> String {
    let raw = raw.replace("\r\n", "\n");
    let (headers, body) = raw.split_once("\n\n").expect("headers and body");
    let headers = headers.replace("\n ", " ").replace("\n\t", " ");
    if !headers.to_ascii_lowercase().contains("content-transfer-encoding: quoted-printable") {
        return format!("{headers}\n\n{body}");
    }
    let body = body.replace("=\n", "");
    let mut bytes = Vec::with_capacity(body.len());
    let mut rest = body.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'=' && tail.len() >= 2 {
            let hex = std::str::from_utf8(&tail[..2]).unwrap();
            bytes.push(u8::from_str_radix(hex, 16).expect("quoted-printable escape"));
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    format!("{headers}\n\n{}", String::from_utf8(bytes).unwrap())
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn mail_config(port: u16) -> MailConfig {
    MailConfig {
        enabled: true,
        smtp_host: "127.0.0.1".into(),
        smtp_port: port,
        tls: MailTls::None,
        username: String::new(),
        from: "cxr-led <cxr-led@hospital.example>".into(),
        to: vec!["Radiology IT <rad-it@hospital.example>".into(), "pacs-admin@hospital.example".into()],
        timeout_secs: 10,
    }
}

/// Waits (bounded) until the sink holds `n` messages; a mail is accepted
/// before aiosmtpd's handler has written it.
pub fn wait_for_messages(sink: &SmtpSink, n: usize) -> Vec<String> {
    let started = Instant::now();
    loop {
        let messages = sink.messages();
        if messages.len() >= n || started.elapsed() > Duration::from_secs(10) {
            return messages;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
