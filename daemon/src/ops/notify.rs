//! systemd's service notification protocol (`sd_notify(3)`), for
//! `Type=notify` units: READY once the port is open and the model loaded,
//! STATUS lines, WATCHDOG pings while the runtime is alive, STOPPING on
//! shutdown. One datagram per message to `$NOTIFY_SOCKET`; nothing is sent
//! when the variable is unset (not started by systemd).

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where notifications go, from the environment systemd gave us.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: Option<PathBuf>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (honouring
    /// `$WATCHDOG_PID`: the watchdog is ours only when it names this process).
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()).map(PathBuf::from);
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// Whether systemd listens.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to ping the watchdog (half its timeout), when one is set.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }

    /// Sends one notification, e.g. `READY=1\nSTATUS=listening`. A failure is
    /// logged, never fatal: the service works without its supervisor's news.
    pub fn notify(&self, message: &str) {
        let Some(socket) = &self.socket else {
            return;
        };
        let result = UnixDatagram::unbound().and_then(|datagram| {
            let text = socket.to_string_lossy();
            if let Some(name) = text.strip_prefix('@') {
                // Abstract namespace socket.
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                datagram.send_to_addr(message.as_bytes(), &address)
            } else {
                datagram.send_to(message.as_bytes(), socket)
            }
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not notify systemd");
        }
    }

    /// READY=1 with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}\nMAINPID={}", std::process::id()));
    }

    /// RELOADING=1 with a status line: systemd shows the unit as reloading
    /// until the next [`Self::ready`].
    pub fn reloading(&self, status: &str) {
        self.notify(&format!("RELOADING=1\nSTATUS={status}"));
    }

    /// STOPPING=1 with a status line.
    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={status}"));
    }

    /// Pings the watchdog every [`Self::watchdog_interval`] until dropped (a
    /// hung runtime stops pinging and systemd restarts the service).
    pub async fn run_watchdog(self) {
        let Some(interval) = self.watchdog_interval() else {
            return;
        };
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            self.notify("WATCHDOG=1");
        }
    }
}
