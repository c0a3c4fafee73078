//! Bounded polling: every wait has a limit and names what it waited for, so
//! a test that hangs fails with a sentence instead of a CI timeout.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(100);

/// Polls `condition` until it holds; panics after `limit` naming `what`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(start.elapsed() < limit, "timed out after {:.0} s waiting for {what}", limit.as_secs_f64());
        tokio::time::sleep(POLL).await;
    }
}

/// Blocking [`wait_until`] for synchronous code: polls until `condition` is
/// true, returns its error, or gives up after `limit` with an error naming `what`.
pub fn wait_until_blocking(
    limit: Duration,
    what: &str,
    mut condition: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if condition()? {
            return Ok(());
        }
        if start.elapsed() > limit {
            anyhow::bail!("gave up after {:.0} s waiting for {what}", limit.as_secs_f64());
        }
        std::thread::sleep(POLL);
    }
}
