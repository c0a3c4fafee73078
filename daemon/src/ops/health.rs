//! Readiness: whether this process can do its work right now. The database
//! answers, the model bundle is loaded (when this process runs workers), the
//! spool takes new files and no stage has died. Each check is bounded in time, so a hung
//! database or disk makes `/readyz` say so instead of hanging with it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::PgPool;

use crate::supervise::Supervisor;

/// How long one check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Numbers probe files, so that concurrent checks never share a name.
static PROBES: AtomicU64 = AtomicU64::new(0);

/// What the readiness checks look at.
#[derive(Debug)]
pub struct Readiness {
    db: PgPool,
    spool_tmp: PathBuf,
    pipeline_enabled: bool,
    bundle_loaded: AtomicBool,
    stages: Supervisor,
}

impl Readiness {
    /// Checks `db`, the spool's `tmp/` under `spool_dir`, (when
    /// `pipeline_enabled`) that [`Self::set_bundle_loaded`] was called, and
    /// that none of the `stages` died.
    pub fn new(db: PgPool, spool_dir: &std::path::Path, pipeline_enabled: bool, stages: Supervisor) -> Readiness {
        Readiness {
            db,
            spool_tmp: spool_dir.join(crate::spool::TMP_DIR),
            pipeline_enabled,
            bundle_loaded: AtomicBool::new(false),
            stages,
        }
    }

    /// The model bundle is loaded and the workers can run.
    pub fn set_bundle_loaded(&self) {
        self.bundle_loaded.store(true, Ordering::Relaxed);
    }

    /// Runs every check; returns one line per failing check (empty: ready).
    pub async fn failures(&self) -> Vec<String> {
        let (database, spool) = tokio::join!(self.check_database(), self.check_spool());
        let mut failures = Vec::new();
        if let Err(why) = database {
            failures.push(format!("database: {why}"));
        }
        if self.pipeline_enabled && !self.bundle_loaded.load(Ordering::Relaxed) {
            failures.push("bundle: the model bundle is not loaded".to_string());
        }
        if let Err(why) = spool {
            failures.push(format!("spool: {why}"));
        }
        for death in self.stages.dead_stages() {
            failures.push(format!("stage: {death}"));
        }
        failures
    }

    async fn check_database(&self) -> Result<(), String> {
        let query = sqlx::query_scalar!("SELECT 1 AS one").fetch_one(&self.db);
        match tokio::time::timeout(CHECK_TIMEOUT, query).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("SELECT 1 failed: {e}")),
            Err(_) => Err(format!("SELECT 1 did not answer within {} s", CHECK_TIMEOUT.as_secs())),
        }
    }

    /// Creates, writes and removes a probe file where received data sets are
    /// written first. A probe left behind by a crash is removed with the
    /// other leftovers of `tmp/` at the next start.
    async fn check_spool(&self) -> Result<(), String> {
        let tmp = self.spool_tmp.clone();
        let probe = tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let n = PROBES.fetch_add(1, Ordering::Relaxed);
            let path = tmp.join(format!(".readyz-{}-{n}.probe", std::process::id()));
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .and_then(|mut file| file.write_all(b"probe"));
            let removed = std::fs::remove_file(&path);
            written.and(removed).map_err(|e| format!("cannot create a file in {}: {e}", tmp.display()))
        });
        match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(format!("probe task failed: {e}")),
            Err(_) => Err(format!("creating a probe file took more than {} s", CHECK_TIMEOUT.as_secs())),
        }
    }
}
