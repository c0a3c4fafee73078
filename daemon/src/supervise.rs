//! The service's long-running stages (ingest, tracker, workers, delivery,
//! alerts, ...) run as one supervised set under one shutdown token. A stage
//! that panics, or returns before shutdown was asked for, is dead: the log
//! says which and why, `/readyz` fails naming it, and [`Supervisor::first_death`]
//! resolves so that the binary drains and exits non-zero and systemd
//! restarts the service (`Restart=on-failure`), instead of the stage
//! stopping silently while the rest looks healthy.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use futures_util::FutureExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Spawns stages and keeps the names and reasons of those that died.
#[derive(Debug, Clone)]
pub struct Supervisor {
    shutdown: CancellationToken,
    /// Every death so far, in order; watched by [`Supervisor::first_death`].
    deaths: watch::Sender<Vec<String>>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    /// A supervisor with a fresh shutdown token: its stages stop normally once
    /// [`Supervisor::shutdown`] is cancelled.
    pub fn new() -> Supervisor {
        Supervisor { shutdown: CancellationToken::new(), deaths: watch::Sender::new(Vec::new()) }
    }

    /// The shutdown token every stage watches.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Runs `stage` as a task named `name`. A stage that ends while the
    /// shutdown token is cancelled ended normally; any other end is a death.
    pub fn spawn(&self, name: impl Into<String>, stage: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        let name = name.into();
        let stage = with_injected_fault(&name, Box::pin(stage));
        let supervisor = self.clone();
        tokio::spawn(async move {
            let ended = AssertUnwindSafe(stage).catch_unwind().await;
            let why = match ended {
                Ok(()) if supervisor.shutdown.is_cancelled() => return,
                Ok(()) => "returned before shutdown".to_string(),
                Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
            };
            tracing::error!(stage = %name, "stage {name} {why}; the service stops so that systemd restarts it");
            supervisor.deaths.send_modify(|deaths| deaths.push(format!("{name} {why}")));
        })
    }

    /// Every dead stage with its reason, e.g. `tracker panicked: ...`.
    pub fn dead_stages(&self) -> Vec<String> {
        self.deaths.borrow().clone()
    }

    /// Resolves with the first dead stage and its reason (never, if none dies).
    pub fn first_death(&self) -> impl Future<Output = String> + Send + 'static {
        let mut deaths = self.deaths.subscribe();
        async move {
            let first = deaths.wait_for(|deaths| !deaths.is_empty()).await.map(|deaths| deaths[0].clone());
            match first {
                Ok(death) => death,
                // Every sender gone: the supervisor is dropped, nothing can die any more.
                Err(_) => std::future::pending().await,
            }
        }
    }
}

/// The text of a panic payload (`panic!` with a message gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

type Stage = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Test builds (debug assertions) only: `CXR_LED_TEST_FAULT=<stage name>`
/// makes that stage panic half a second after it starts, so a test can watch
/// supervision work end to end. Release builds never read the variable.
fn with_injected_fault(name: &str, stage: Stage) -> Stage {
    if cfg!(debug_assertions) && std::env::var("CXR_LED_TEST_FAULT").is_ok_and(|target| target == name) {
        let name = name.to_string();
        return Box::pin(async move {
            tokio::select! {
                () = stage => {}
                () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {
                    panic!("fault injected into the {name} stage (CXR_LED_TEST_FAULT)")
                }
            }
        });
    }
    stage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_or_an_early_return_is_a_death_and_a_stop_is_not() {
        let supervisor = Supervisor::new();
        let first = supervisor.first_death();
        supervisor.spawn("panicky", async { panic!("out of memory") }).await.unwrap();
        assert_eq!(first.await, "panicky panicked: out of memory");
        supervisor.spawn("quitter", async {}).await.unwrap();
        assert_eq!(supervisor.dead_stages(), ["panicky panicked: out of memory", "quitter returned before shutdown"]);

        let token = supervisor.shutdown().clone();
        let waits = supervisor.spawn("waits", async move { token.cancelled().await });
        supervisor.shutdown().cancel();
        waits.await.unwrap();
        assert_eq!(supervisor.dead_stages().len(), 2, "a stage that ends at shutdown is not dead");
    }
}
