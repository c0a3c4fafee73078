//! Running under systemd: the real `cxr-ledd` binary tells a notify socket
//! READY, pings the watchdog and says STOPPING on SIGTERM, then exits 0; the
//! shipped unit passes `systemd-analyze verify`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn receive_until(socket: &UnixDatagram, wanted: &str, limit: Duration) -> Vec<String> {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while started.elapsed() < limit {
        if let Ok(n) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..n]).to_string();
            let done = message.lines().any(|line| line == wanted);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
    panic!("no {wanted} within {limit:?}; got {seen:?}");
}

#[tokio::test]
async fn the_daemon_notifies_ready_watchdog_and_stopping() {
    let db = common::TestDb::create().await;
    let work = tempfile::tempdir().unwrap();
    let socket_path = work.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let config = work.path().join("cxr-ledd.toml");
    std::fs::write(
        &config,
        format!(
            "[ingest]\nlisten = \"127.0.0.1:0\"\nspool-dir = \"{}\"\n[database]\nurl = \"{}\"\ndevelopment = true\n[pipeline]\nenabled = false\n[http]\nlisten = \"127.0.0.1:0\"\n",
            work.path().join("spool").display(),
            db.url
        ),
    )
    .unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_cxr-ledd"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "300000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = receive_until(&socket, "READY=1", Duration::from_secs(60));
    assert!(ready.last().unwrap().contains("STATUS=listening on 127.0.0.1:"), "{ready:?}");
    receive_until(&socket, "WATCHDOG=1", Duration::from_secs(5));
    // systemctl reload (ExecReload=kill -HUP): RELOADING=1, then READY=1 again.
    let hup = Command::new("kill").args(["-HUP", &daemon.id().to_string()]).status().unwrap();
    assert!(hup.success());
    receive_until(&socket, "RELOADING=1", Duration::from_secs(10));
    let ready = receive_until(&socket, "READY=1", Duration::from_secs(30));
    assert!(ready.last().unwrap().contains("; reloaded"), "{ready:?}");
    assert!(daemon.try_wait().unwrap().is_none(), "SIGHUP does not stop the daemon");
    let kill = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status().unwrap();
    assert!(kill.success());
    receive_until(&socket, "STOPPING=1", Duration::from_secs(10));
    let status = daemon.wait().unwrap();
    assert!(status.success(), "cxr-ledd exited with {status}");
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        panic!("systemd-analyze missing: apt-get install systemd");
    }
    let unit =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/cxr-led.service")).unwrap();
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = unit.replace("/usr/bin/cxr-ledd", env!("CARGO_BIN_EXE_cxr-ledd"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cxr-led.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    assert!(output.status.success(), "{}", common::text(&output));
    let security = Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(&path).output().unwrap();
    let text = common::text(&security);
    let score: f64 = text
        .lines()
        .find_map(|line| line.split("Overall exposure level for cxr-led.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(score <= 2.5, "systemd-analyze security exposure {score} (keep it low):\n{text}");
}
