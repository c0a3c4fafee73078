//! What every long command shares: progress with rate and ETA on stderr (a
//! bar on a terminal, plain lines in a log), a metrics CSV of serde rows, and a stop flag raised by Ctrl-C (SIGINT) or SIGTERM that the
//! training loop polls between steps, so a stop always ends with a checkpoint.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

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

/// Progress of a long loop: on a terminal an indicatif bar (`label [###...]
/// step/total rate/s ETA detail`); in a log file or the journal plain lines
/// (`label [step/total] rate/s ETA detail`), one every [`LOG_EVERY`] and one
/// at the end, so no `\r` or escape codes end up in files.
pub struct Progress {
    /// The bar's look; `None` when stderr is not a terminal (plain lines).
    style: Option<ProgressStyle>,
    /// The bar drawn now; a [`Progress::finish`] ends it and the next update starts another.
    bar: Option<ProgressBar>,
    label: String,
    total: usize,
    start_step: usize,
    started: Instant,
    last_line: Instant,
    unit: &'static str,
}

/// How often a plain progress line is written when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(30);

impl Progress {
    /// Progress of `total` steps of which `start_step` are already done (resume).
    pub fn new(label: &str, start_step: usize, total: usize, unit: &'static str) -> Self {
        let style = std::io::stderr().is_terminal().then(|| {
            let template = format!("{{prefix}} [{{bar:24}}] {{pos}}/{{len}} {{per_sec:.2}} {unit} ETA {{eta}} {{msg}}");
            ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar())
        });
        let now = Instant::now();
        Self { style, bar: None, label: label.into(), total, start_step, started: now, last_line: now, unit }
    }

    /// Steps per second since this progress started.
    pub fn rate(&self, step: usize) -> f64 {
        step.saturating_sub(self.start_step) as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// Shows `step` with a free-form `detail` (losses, accuracy).
    pub fn update(&mut self, step: usize, detail: &str) {
        if let Some(style) = &self.style {
            let bar = self.bar.get_or_insert_with(|| {
                ProgressBar::new(self.total as u64)
                    .with_style(style.clone())
                    .with_prefix(self.label.clone())
                    .with_position(step as u64)
            });
            bar.set_position(step as u64);
            bar.set_message(detail.to_string());
            if step >= self.total {
                bar.finish();
            }
            return;
        }
        let last = step >= self.total;
        if !last && self.last_line.elapsed() < LOG_EVERY {
            return;
        }
        self.last_line = Instant::now();
        let rate = self.rate(step);
        let eta = if rate > 0.0 { format_duration(self.total.saturating_sub(step) as f64 / rate) } else { "?".into() };
        eprintln!("{} [{step}/{}] {rate:.2} {}/s ETA {eta} {detail}", self.label, self.total, self.unit);
    }

    /// Ends the bar where it stands, so that other lines can follow (a
    /// checkpoint's, an early stop's); the next update starts a new bar.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

/// Appends one row to a metrics CSV, its header the row type's field names
/// (written first when the file is new; a resumed run appends to the same
/// file, widened first when an earlier version wrote fewer columns).
pub fn append_csv<R: Serialize>(path: &Path, row: &R) -> anyhow::Result<()> {
    let mut record = csv::Writer::from_writer(Vec::new());
    record.serialize(row)?;
    let text = String::from_utf8(record.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?;
    let (header, line) = text.trim_end().split_once('\n').unwrap_or((text.trim_end(), ""));
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
    writeln!(file, "{line}")?;
    Ok(())
}

/// Rewrites a CSV written by an earlier version with fewer columns (its
/// header a prefix of `header`) under `header`, its rows' new fields empty,
/// so that a resumed run's file keeps one header.
fn widen_csv(path: &Path, header: &str) -> anyhow::Result<()> {
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
        #[derive(Serialize)]
        struct Before {
            step: usize,
            psnr: f64,
        }
        #[derive(Serialize)]
        struct After {
            step: usize,
            psnr: f64,
            clean_psnr: f64,
        }
        #[derive(Serialize)]
        struct Other {
            step: usize,
            loss: f64,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.csv");
        append_csv(&path, &Before { step: 500, psnr: 25.1 }).unwrap();
        append_csv(&path, &After { step: 1000, psnr: 25.3, clean_psnr: 40.2 }).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "step,psnr,clean_psnr\n500,25.1,\n1000,25.3,40.2\n");
        let error = append_csv(&path, &Other { step: 1500, loss: 0.1 }).unwrap_err().to_string();
        assert!(error.contains("move it aside"), "{error}");
    }
}
