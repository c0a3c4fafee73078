//! Bounded polling: every wait in the harness has a limit and says what it waited for.

use std::time::{Duration, Instant};

use anyhow::bail;

/// Polls `condition` every 100 ms until it is true, fails, or `limit` passes.
pub fn wait_until(
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
            bail!("gave up after {:.0} s waiting for {what}", limit.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
