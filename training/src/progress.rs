//! What every long command shares: a progress line with rate and ETA on
//! stderr, a metrics CSV, and a stop flag raised by Ctrl-C (SIGINT) or SIGTERM that the
//! training loop polls between steps, so a stop always ends with a checkpoint.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Set when SIGINT or SIGTERM arrived; the loop checkpoints and returns.
#[derive(Debug, Clone)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Registers the flag for SIGINT and SIGTERM (a second Ctrl-C still stops
    /// the flag, not the process: the checkpoint is on its way).
    pub fn install() -> anyhow::Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, Arc::clone(&flag))?;
        }
        Ok(Self(flag))
    }

    /// Whether a stop was asked for.
    pub fn raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A progress line: `label step/total rate/s ETA ...`, redrawn at most twice a second.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: usize,
    start_step: usize,
    started: Instant,
    last_draw: Option<Instant>,
    unit: &'static str,
}

impl Progress {
    /// A progress line for `total` steps of which `start_step` are already done (resume).
    pub fn new(label: &str, start_step: usize, total: usize, unit: &'static str) -> Self {
        Self { label: label.into(), total, start_step, started: Instant::now(), last_draw: None, unit }
    }

    /// Steps per second since this progress line started.
    pub fn rate(&self, step: usize) -> f64 {
        step.saturating_sub(self.start_step) as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// Redraws the line for `step` with a free-form `detail` (losses, accuracy).
    pub fn update(&mut self, step: usize, detail: &str) {
        let now = Instant::now();
        let last = step >= self.total;
        if !last && self.last_draw.is_some_and(|t| now - t < Duration::from_millis(500)) {
            return;
        }
        self.last_draw = Some(now);
        let rate = self.rate(step);
        let remaining = self.total.saturating_sub(step) as f64 / rate.max(1e-9);
        let eta = if rate > 0.0 { format_duration(remaining) } else { "?".into() };
        let width = 24;
        let filled = (step * width / self.total.max(1)).min(width);
        eprint!(
            "\r{} [{}{}] {step}/{} {rate:.2} {}/s ETA {eta} {detail}\x1b[K",
            self.label,
            "#".repeat(filled),
            ".".repeat(width - filled),
            self.total,
            self.unit
        );
        if last {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    }

    /// Ends the line (before other output, or on an early stop).
    pub fn finish(&self) {
        eprintln!();
    }
}

/// Appends one row to a metrics CSV, writing `header` first when the file is
/// new (a resumed run appends to the same file).
pub fn append_csv(path: &std::path::Path, header: &str, row: &str) -> anyhow::Result<()> {
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder)?;
    }
    let new = !path.exists();
    if !new {
        widen_csv(path, header)?;
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    if new {
        writeln!(file, "{header}")?;
    }
    writeln!(file, "{row}")?;
    Ok(())
}

/// Rewrites a CSV written by an earlier version with fewer columns (its
/// header a prefix of `header`) under `header`, its rows' new fields empty,
/// so that a resumed run's file keeps one header.
fn widen_csv(path: &std::path::Path, header: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let Some(old) = text.lines().next() else { return Ok(()) };
    if old == header {
        return Ok(());
    }
    anyhow::ensure!(
        header.starts_with(&format!("{old},")),
        "{} has the columns {old:?}, not {header:?}: move it aside to start a new one",
        path.display()
    );
    let padding = ",".repeat(header.matches(',').count() - old.matches(',').count());
    let mut widened = format!("{header}\n");
    for row in text.lines().skip(1) {
        widened.push_str(&format!("{row}{padding}\n"));
    }
    let temporary = path.with_extension("csv.widening");
    std::fs::write(&temporary, widened)?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

/// `1h02m`, `3m05s`, `12s`.
pub fn format_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, _) => format!("{h}h{min:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(12.4), "12s");
        assert_eq!(format_duration(185.0), "3m05s");
        assert_eq!(format_duration(3720.0), "1h02m");
    }

    #[test]
    fn a_resumed_csv_gains_the_new_column_under_one_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.csv");
        append_csv(&path, "step,psnr", "500,25.1").unwrap();
        append_csv(&path, "step,psnr,clean_psnr", "1000,25.3,40.2").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "step,psnr,clean_psnr\n500,25.1,\n1000,25.3,40.2\n");
        let error = append_csv(&path, "step,loss", "1500,0.1").unwrap_err().to_string();
        assert!(error.contains("move it aside"), "{error}");
    }
}
