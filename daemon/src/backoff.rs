//! Capped exponential backoff, the one retry schedule of the service: a
//! failed job waits `initial * 2^(attempt-1)` seconds up to `max`, and so does
//! a failed delivery, plus a little jitter so rows that failed together do
//! not retry in lock-step.

use std::time::Duration;

/// `initial * 2^(attempt-1)` seconds, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Seconds before the first retry.
    pub initial_secs: u64,
    /// Seconds no retry waits longer than.
    pub max_secs: u64,
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based; 0 counts as 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        Duration::from_secs(self.delay_secs(attempt))
    }

    /// [`Self::delay`] plus up to 10% jitter drawn from `key` (a row id), capped
    /// at 110% of `max`: rows failing together spread out, and the same row
    /// and attempt always get the same delay.
    pub fn delay_with_jitter(&self, attempt: u32, key: i64) -> Duration {
        let jitter =
            ((key as u64).wrapping_mul(2_654_435_761).wrapping_add(u64::from(attempt)) % 1000) as f64 / 10_000.0;
        let secs = self.delay_secs(attempt) as f64 * (1.0 + jitter);
        Duration::from_secs_f64(secs.min(self.max_secs as f64 * 1.1))
    }

    fn delay_secs(&self, attempt: u32) -> u64 {
        let exponent = attempt.saturating_sub(1).min(30);
        self.initial_secs.saturating_mul(1u64 << exponent).min(self.max_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_initial_and_stops_at_max() {
        let backoff = Backoff { initial_secs: 10, max_secs: 600 };
        let secs = |attempt| backoff.delay(attempt).as_secs();
        assert_eq!([secs(0), secs(1), secs(2), secs(3), secs(6), secs(7), secs(1000)], [10, 10, 20, 40, 320, 600, 600]);
    }

    #[test]
    fn jitter_adds_at_most_a_tenth_and_depends_on_the_key() {
        let backoff = Backoff { initial_secs: 10, max_secs: 600 };
        for key in 0..100 {
            let secs = backoff.delay_with_jitter(3, key).as_secs_f64();
            assert!((40.0..44.0).contains(&secs), "{secs}");
        }
        assert_ne!(backoff.delay_with_jitter(3, 1), backoff.delay_with_jitter(3, 2));
        assert_eq!(backoff.delay_with_jitter(3, 1), backoff.delay_with_jitter(3, 1));
    }
}
