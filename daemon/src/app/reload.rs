//! Hot reload: a changed configuration file or model bundle is validated and
//! swapped into the running service without dropping associations or jobs.
//!
//! - [`Live`](crate::live::Live) holds a value that is swapped whole (`RwLock<Arc<T>>`): readers
//!   take an `Arc` snapshot and keep it as long as they need it, so an image
//!   in progress finishes on the model it started with.
//! - [`Reloader::reload`] loads and validates the file, keeps the running
//!   value of every key that needs a restart (logging "X changed: takes effect
//!   at the next restart"), loads a new [`Enhancer`] off the async runtime when
//!   the bundle or its inference settings changed, builds a new [`Mailer`]
//!   when `[mail]` changed, and only when all of that worked swaps everything
//!   at once. A refused reload changes nothing; either way it is logged,
//!   recorded in the audit trail ([`audit::CONFIG_RELOAD`]) and, when refused
//!   and mail is on, mailed.
//! - [`watch`] watches the configuration file's folder (editors replace files
//!   by rename) and the bundle folder with `notify`, and reloads once per
//!   burst of changes (500 ms debounce). `SIGHUP` (`systemctl reload`) calls
//!   [`Reloader::reload`] directly (see `main.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::Watcher as _;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::alerts::mail::Mailer;
use crate::alerts::Alerting;
use crate::audit;
use crate::config::{Config, DeliveryConfig, IngestConfig};
use crate::live::Live;
use crate::ops::metrics::{BundleInfo, Metrics};
use crate::pipeline::enhance::Enhancer;
use crate::pipeline::worker::WorkerContext;

/// How long the watcher waits for a burst of file events to end.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// The parts of a running service a reload swaps.
#[derive(Debug, Clone)]
pub struct Handles {
    /// `[ingest]` as the associations read it (the allow-lists are live).
    pub ingest: Arc<Live<IngestConfig>>,
    /// `[delivery]` as the sender reads it at every pass.
    pub delivery: Arc<Live<DeliveryConfig>>,
    /// `[mail]` and `[alerts]` as the alert loop reads them at every pass.
    pub alerting: Arc<Live<Alerting>>,
    /// What workers take at every job (model, `[pipeline]`, `[exposure]`,
    /// destinations); `None` when this process runs no workers.
    pub workers: Option<Arc<Live<WorkerContext>>>,
    /// Where the bundle info metric lives.
    pub metrics: Arc<Metrics>,
    /// For the audit trail.
    pub db: PgPool,
}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The configuration file changed.
    ConfigFile,
    /// A file in the model bundle folder changed.
    Bundle,
    /// `SIGHUP` (`systemctl reload cxr-led`): everything is reloaded, the bundle included.
    Signal,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::ConfigFile => "configuration file changed",
            Trigger::Bundle => "model bundle changed",
            Trigger::Signal => "SIGHUP",
        })
    }
}

/// What a successful reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Keys now in force with a new value.
    pub changed: Vec<String>,
    /// Keys changed in the file that keep their running value until the next restart.
    pub restart_needed: Vec<String>,
    /// The sha256 of the bundle loaded by this reload, if one was.
    pub bundle_sha256: Option<String>,
}

/// Keys (or whole sections) that only a restart applies: listeners, folders,
/// the database, the number of workers.
pub const RESTART_KEYS: &[&str] = &[
    "ingest.ae-title",
    "ingest.listen",
    "ingest.max-pdu-length",
    "ingest.max-associations",
    "ingest.read-timeout-secs",
    "ingest.idle-timeout-secs",
    "ingest.spool-dir",
    "ingest.tls",
    "tracker",
    "database",
    "pipeline.enabled",
    "pipeline.workers",
    "pipeline.output-dir",
    "pipeline.drain-timeout-secs",
    "http",
];

/// `[pipeline]` keys that need a new [`Enhancer`].
const INFERENCE_KEYS: &[&str] = &[
    "pipeline.bundle",
    "pipeline.device",
    "pipeline.precision",
    "pipeline.t0",
    "pipeline.steps",
    "pipeline.hold-threshold",
];

/// Validates and swaps configurations for one running service.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    handles: Handles,
    /// The configuration in force (restart-only keys as at start). The lock
    /// also makes reloads take turns.
    current: tokio::sync::Mutex<Config>,
    /// The bundle folder in force, for the watcher.
    bundle_dir: Mutex<PathBuf>,
}

fn table(config: &Config) -> Result<toml::Table, String> {
    match toml::Value::try_from(config).map_err(|e| format!("serialising the configuration: {e}"))? {
        toml::Value::Table(table) => Ok(table),
        _ => Err("the configuration is not a table".into()),
    }
}

fn lookup<'t>(table: &'t toml::Table, key: &str) -> Option<&'t toml::Value> {
    match key.split_once('.') {
        Some((section, field)) => table.get(section)?.as_table()?.get(field),
        None => table.get(key),
    }
}

fn replace(table: &mut toml::Table, key: &str, value: Option<toml::Value>) {
    let (container, name) = match key.split_once('.') {
        Some((section, field)) => match table.get_mut(section).and_then(toml::Value::as_table_mut) {
            Some(inner) => (inner, field),
            None => return,
        },
        None => (table, key),
    };
    match value {
        Some(value) => {
            container.insert(name.to_string(), value);
        }
        None => {
            container.remove(name);
        }
    }
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (key, value) in table {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            toml::Value::Table(inner) => flatten(&path, inner, out),
            other => {
                out.insert(path, other.clone());
            }
        }
    }
}

/// The keys whose values differ between two configurations.
pub fn changed_keys(old: &Config, new: &Config) -> Result<Vec<String>, String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &table(old)?, &mut a);
    flatten("", &table(new)?, &mut b);
    let keys: std::collections::BTreeSet<&String> =
        a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).collect();
    Ok(keys.into_iter().cloned().collect())
}

/// The configuration to put in force: `new`, except that every
/// [`RESTART_KEYS`] entry keeps its value from `running`. Also returns the
/// restart-only keys that changed (as leaf key paths).
pub fn merge(running: &Config, new: &Config) -> Result<(Config, Vec<String>), String> {
    let old_table = table(running)?;
    let mut merged = table(new)?;
    for key in RESTART_KEYS {
        replace(&mut merged, key, lookup(&old_table, key).cloned());
    }
    let effective: Config =
        toml::Value::Table(merged).try_into().map_err(|e| format!("merging the configuration: {e}"))?;
    let restart_needed = changed_keys(&effective, new)?;
    Ok((effective, restart_needed))
}

impl Reloader {
    /// A reloader for the service started with `config` from `path`.
    pub fn new(path: &Path, config: Config, handles: Handles) -> Reloader {
        Reloader {
            path: path.to_path_buf(),
            handles,
            bundle_dir: Mutex::new(config.pipeline.bundle.clone()),
            current: tokio::sync::Mutex::new(config),
        }
    }

    /// The configuration file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration in force.
    pub async fn current(&self) -> Config {
        self.current.lock().await.clone()
    }

    fn bundle_dir(&self) -> PathBuf {
        self.bundle_dir.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads: validates the file (and the bundle when it or its inference
    /// settings changed, or on `SIGHUP`), then swaps everything at once; on
    /// any problem nothing changes. Logged, audited, and mailed when refused.
    pub async fn reload(&self, trigger: Trigger) -> Result<Report, String> {
        let mut current = self.current.lock().await;
        tracing::info!(trigger = %trigger, file = %self.path.display(), "reloading the configuration");
        match self.prepare(&current, trigger).await {
            Ok((effective, swap, report)) => {
                self.apply(&effective, swap);
                *self.bundle_dir.lock().unwrap_or_else(|p| p.into_inner()) = effective.pipeline.bundle.clone();
                *current = effective;
                drop(current);
                for key in &report.restart_needed {
                    tracing::warn!(key = %key, "{key} changed: takes effect at the next restart");
                }
                let mut detail = format!(
                    "{trigger}: {}: changed: {}",
                    self.path.display(),
                    if report.changed.is_empty() { "nothing".into() } else { report.changed.join(", ") }
                );
                if let Some(sha) = &report.bundle_sha256 {
                    detail.push_str(&format!("; bundle sha256 {sha}"));
                }
                if !report.restart_needed.is_empty() {
                    detail
                        .push_str(&format!("; takes effect at the next restart: {}", report.restart_needed.join(", ")));
                }
                tracing::info!(changed = ?report.changed, bundle_sha256 = ?report.bundle_sha256, "configuration reloaded");
                self.audit("success", &detail, trigger, &report).await;
                Ok(report)
            }
            Err(error) => {
                drop(current);
                let detail = format!(
                    "{trigger}: {}: refused, the running configuration stays in force: {error}",
                    self.path.display()
                );
                tracing::error!(trigger = %trigger, file = %self.path.display(), "reload refused: {error}");
                self.audit("failure", &detail, trigger, &Report::default()).await;
                if let Some(mailer) = self.handles.alerting.get().mailer.clone() {
                    let subject = "cxr-led: configuration reload refused".to_string();
                    let body = format!(
                        "{detail}\n\nFix the file (cxr-ledd check-config {} lists every problem); nothing changed \
                         in the running service.\n",
                        self.path.display()
                    );
                    tokio::spawn(async move {
                        if let Err(e) = mailer.send(&subject, &body).await {
                            tracing::warn!(error = %e, "mailing the refused reload failed");
                        }
                    });
                }
                Err(error)
            }
        }
    }

    async fn audit(&self, outcome: &str, detail: &str, trigger: Trigger, report: &Report) {
        let data = serde_json::json!({
            "trigger": trigger.to_string(),
            "file": self.path.display().to_string(),
            "changed": report.changed,
            "restart-needed": report.restart_needed,
            "bundle-sha256": report.bundle_sha256,
        });
        audit::record_or_log(
            &self.handles.db,
            &audit::Event {
                event: audit::CONFIG_RELOAD,
                outcome,
                detail: Some(detail),
                data: Some(&data),
                ..Default::default()
            },
        )
        .await;
    }

    /// Everything that can fail, before anything is swapped.
    async fn prepare(&self, current: &Config, trigger: Trigger) -> Result<(Config, Swap, Report), String> {
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || super::preflight::load(&path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let (effective, restart_needed) = merge(current, &loaded)?;
        let changed = changed_keys(current, &effective)?;
        let mut swap = Swap::default();
        let mut report = Report { changed, restart_needed, bundle_sha256: None };
        if let Some(workers) = &self.handles.workers {
            let inference_changed = report.changed.iter().any(|k| INFERENCE_KEYS.contains(&k.as_str()));
            if inference_changed || matches!(trigger, Trigger::Bundle | Trigger::Signal) {
                let pipeline = effective.pipeline.clone();
                let enhancer = tokio::task::spawn_blocking(move || Enhancer::load(&pipeline))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("pipeline.bundle: loading {}: {e}", effective.pipeline.bundle.display()))?;
                tracing::info!(
                    bundle = %enhancer.bundle_name, version = %enhancer.bundle_version,
                    sha256 = %enhancer.bundle_sha256, device = %enhancer.device, "model reloaded"
                );
                if enhancer.bundle_sha256 != workers.get().enhancer.bundle_sha256 {
                    report.changed.push("pipeline.bundle (contents)".into());
                }
                report.bundle_sha256 = Some(enhancer.bundle_sha256.clone());
                swap.enhancer = Some(Arc::new(enhancer));
            }
        }
        if report.changed.iter().any(|k| k.starts_with("mail.")) {
            let mailer = if effective.mail.enabled {
                Some(Mailer::from_config(&effective.mail).map_err(|e| format!("mail: {e}"))?)
            } else {
                None
            };
            swap.mailer = Some(mailer);
        }
        Ok((effective, swap, report))
    }

    /// Swaps everything in (cannot fail).
    fn apply(&self, effective: &Config, swap: Swap) {
        let h = &self.handles;
        h.ingest.set(effective.ingest.clone());
        h.delivery.set(effective.delivery.clone());
        let mailer = swap.mailer.unwrap_or_else(|| h.alerting.get().mailer.clone());
        h.alerting.set(Alerting { mailer, config: effective.alerts.clone() });
        if let Some(workers) = &h.workers {
            let old = workers.get();
            let enhancer = swap.enhancer.unwrap_or_else(|| old.enhancer.clone());
            h.metrics.set_bundle(BundleInfo {
                name: enhancer.bundle_name.clone(),
                version: enhancer.bundle_version.clone(),
                sha256: enhancer.bundle_sha256.clone(),
                device: enhancer.device.clone(),
            });
            workers.set(WorkerContext {
                enhancer,
                pipeline: effective.pipeline.clone(),
                exposure: effective.exposure.clone(),
                delivery: effective.delivery.clone(),
                doubt_map_instance: effective.pipeline.doubt_map_instance,
                ..(*old).clone()
            });
        }
    }
}

/// What [`Reloader::prepare`] built for [`Reloader::apply`].
#[derive(Default)]
struct Swap {
    enhancer: Option<Arc<Enhancer>>,
    /// `Some` when `[mail]` changed (the inner `None`: mail turned off).
    mailer: Option<Option<Mailer>>,
}

/// The file watcher; dropping it (or [`Watch::stop`]) stops watching.
#[derive(Debug)]
pub struct Watch {
    task: JoinHandle<()>,
}

impl Watch {
    /// Stops watching.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The folder to watch for a file: its parent (`.` for a bare name).
fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Watches the configuration file's folder and the bundle folder and calls
/// [`Reloader::reload`] once per burst of changes ([`DEBOUNCE`]).
pub fn watch(reloader: Arc<Reloader>) -> anyhow::Result<Watch> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Trigger>();
    let config_name = reloader.path.file_name().map(|n| n.to_os_string());
    let config_dir = folder_of(&reloader.path);
    let bundle_dir = Arc::new(Mutex::new(reloader.bundle_dir()));
    let watched_bundle = bundle_dir.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Our own reads (config, bundle weights) are access events.
        if event.kind.is_access() || event.kind.is_other() {
            return;
        }
        let bundle = watched_bundle.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for path in &event.paths {
            if path.parent() == Some(bundle.as_path()) {
                let _ = tx.send(Trigger::Bundle);
            } else if path.file_name().map(|n| n.to_os_string()) == config_name {
                let _ = tx.send(Trigger::ConfigFile);
            }
        }
    })?;
    watcher.watch(&config_dir, notify::RecursiveMode::NonRecursive)?;
    let mut watching_bundle = None;
    let bundle = reloader.bundle_dir();
    if reloader.handles.workers.is_some() {
        match watcher.watch(&bundle, notify::RecursiveMode::NonRecursive) {
            Ok(()) => watching_bundle = Some(bundle),
            Err(e) => tracing::warn!(error = %e, bundle = %bundle.display(), "cannot watch the bundle folder"),
        }
    }
    tracing::info!(config = %reloader.path.display(), "watching the configuration file and the bundle for changes");
    let task = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut trigger = first;
            // One save is several events (write, rename, chmod): wait for quiet.
            while let Ok(Some(next)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                if next == Trigger::Bundle {
                    trigger = Trigger::Bundle;
                }
            }
            let _ = reloader.reload(trigger).await;
            // The bundle folder may have moved with the configuration.
            let now = reloader.bundle_dir();
            if reloader.handles.workers.is_some() && watching_bundle.as_ref() != Some(&now) {
                if let Some(old) = watching_bundle.take() {
                    let _ = watcher.unwatch(&old);
                }
                *bundle_dir.lock().unwrap_or_else(|p| p.into_inner()) = now.clone();
                match watcher.watch(&now, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => watching_bundle = Some(now),
                    Err(e) => tracing::warn!(error = %e, bundle = %now.display(), "cannot watch the bundle folder"),
                }
            }
        }
    });
    Ok(Watch { task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_keys_keep_their_running_value_and_are_named() {
        let running = Config::default();
        let mut new = Config::default();
        new.ingest.listen = "127.0.0.1:104".parse().unwrap();
        new.ingest.allowed_calling_ae_titles = vec!["PACS".into()];
        new.pipeline.workers = 4;
        new.pipeline.steps = 7;
        new.http.enabled = false;
        new.database.url = "postgres://led@db/led".into();
        let (effective, restart) = merge(&running, &new).unwrap();
        assert_eq!(effective.ingest.listen, running.ingest.listen);
        assert_eq!(effective.ingest.allowed_calling_ae_titles, vec!["PACS".to_string()]);
        assert_eq!(effective.pipeline.workers, 1);
        assert_eq!(effective.pipeline.steps, 7);
        assert!(effective.http.enabled);
        assert!(effective.database.url.is_empty());
        assert_eq!(restart, ["database.url", "http.enabled", "ingest.listen", "pipeline.workers"]);
        assert_eq!(changed_keys(&running, &effective).unwrap(), ["ingest.allowed-calling-ae-titles", "pipeline.steps"]);
    }

    #[test]
    fn nothing_changed_is_nothing() {
        let config = Config::from_toml(include_str!("../../../config/cxr-ledd.toml")).unwrap();
        let (effective, restart) = merge(&config, &config).unwrap();
        assert!(restart.is_empty());
        assert!(changed_keys(&config, &effective).unwrap().is_empty());
    }

    #[test]
    fn live_snapshots_outlive_a_swap() {
        let live = Live::new(1);
        let before = live.get();
        live.set(2);
        assert_eq!((*before, *live.get()), (1, 2));
    }
}
