//! Start-up and shutdown of the service: connect and migrate the database,
//! recover the spool, serve health and metrics, load the model, listen, and
//! run every stage (ingest, tracker, workers, delivery, alerts, audit head)
//! as one [`Supervisor`]ed set under one shutdown token.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::alerts::{self, mail};
use crate::app::reload::{self, Reloader};
use crate::config::Config;
use crate::ingest::{self, Shared};
use crate::live::Live;
use crate::ops::health::Readiness;
use crate::ops::http;
use crate::ops::metrics::{BundleInfo, Metrics};
use crate::pipeline::enhance::Enhancer;
use crate::pipeline::{tracker, worker};
use crate::spool::Spool;
use crate::supervise::Supervisor;
use crate::{audit, db, delivery};

/// What start-up recovery found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Leftover temporary files removed (data sets that never got Success).
    pub temp_removed: usize,
    /// Spooled files without an instance row removed (a crash between rename
    /// and commit, before Success was answered).
    pub orphans_removed: usize,
    /// Instance rows whose spool file is missing (should never happen).
    pub rows_without_file: usize,
}

/// Makes the spool and the database agree: deletes temporary files and
/// spooled files without a row. A file without a row never got Success (the
/// row commits before the answer), so the sender still owns that instance and
/// will send it again.
pub async fn recover(spool: &Spool, db: &PgPool) -> anyhow::Result<Recovery> {
    let mut recovery =
        Recovery { temp_removed: spool.clean_temp().context("cleaning spool tmp/")?, ..Default::default() };
    let known: HashSet<String> =
        sqlx::query_scalar!("SELECT spool_file FROM instance").fetch_all(db).await?.into_iter().collect();
    let files = spool.list().context("listing the spool")?;
    for name in &files {
        if !known.contains(name) {
            spool.remove(name).await.with_context(|| format!("removing orphan {name}"))?;
            recovery.orphans_removed += 1;
        }
    }
    let present: HashSet<&String> = files.iter().collect();
    recovery.rows_without_file = known.iter().filter(|k| !present.contains(k)).count();
    if recovery != Recovery::default() {
        let detail = format!(
            "removed {} temporary files and {} spooled files without a row; {} rows without a file",
            recovery.temp_removed, recovery.orphans_removed, recovery.rows_without_file
        );
        tracing::warn!("spool recovery: {detail}");
        audit::record(
            db,
            &audit::Event {
                event: audit::SPOOL_RECOVERY,
                outcome: if recovery.rows_without_file == 0 { "success" } else { "failure" },
                detail: Some(&detail),
                ..Default::default()
            },
        )
        .await?;
    }
    Ok(recovery)
}

/// A running ingest service.
#[derive(Debug)]
pub struct Running {
    /// The address the SCP listens on (useful with port 0).
    pub local_addr: SocketAddr,
    /// The address of the DICOM TLS listener (`None` without `[ingest.tls]`).
    pub tls_addr: Option<SocketAddr>,
    /// The database pool.
    pub db: PgPool,
    /// What start-up recovery did.
    pub recovery: Recovery,
    /// The address of the health and metrics endpoints (`None` when `[http]` is off).
    pub http_addr: Option<SocketAddr>,
    /// This service's metrics.
    pub metrics: Arc<Metrics>,
    /// What a reload swaps (see [`Running::watch_config`]).
    pub handles: reload::Handles,
    /// The configuration the service started with.
    config: Config,
    watch: Option<reload::Watch>,
    http: Option<http::Server>,
    supervisor: Supervisor,
    server: JoinHandle<()>,
    tracker: JoinHandle<()>,
    delivery: JoinHandle<()>,
    alerts: JoinHandle<()>,
    audit_head: JoinHandle<()>,
    abandon_jobs: CancellationToken,
    drain_timeout: Duration,
    workers: Vec<JoinHandle<()>>,
}

/// Connects, migrates, recovers, binds and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let url = config.database_url().context("no database url: set [database] url or DATABASE_URL")?;
    let mailer = if config.mail.enabled {
        Some(mail::Mailer::from_config(&config.mail)?)
    } else {
        tracing::warn!("[mail] enabled = false: held results, dead jobs and unreachable PACS raise no alert mail");
        None
    };
    let db = db::pool(&url, config.database.max_connections).await.context("connecting to PostgreSQL")?;
    let role = db::role(&db).await.context("reading the database role")?;
    if role.can_rewrite_audit() {
        if !config.database.development {
            anyhow::bail!(
                "connected to PostgreSQL as {}, which {} and could therefore disable the audit table's triggers \
                 and rewrite it. Run the service as a login role granted cxr_led_service, with the migrations \
                 applied by the owner (`cxr-ledd migrate`); systemd/README.md, \"Database roles\", says how. For a \
                 development or test set-up, set [database] development = true.",
                role.name,
                if role.superuser { "is a superuser" } else { "owns the audit table" }
            );
        }
        tracing::warn!(role = %role.name, "[database] development = true: running as a role that could rewrite the audit");
    }
    db::prepare(&db, &role).await?;
    let spool = Spool::open(&config.ingest.spool_dir)
        .with_context(|| format!("opening spool {}", config.ingest.spool_dir.display()))?;
    let recovery = recover(&spool, &db).await?;
    let metrics = Arc::new(Metrics::new());
    let supervisor = Supervisor::new();
    let readiness =
        Arc::new(Readiness::new(db.clone(), &config.ingest.spool_dir, config.pipeline.enabled, supervisor.clone()));
    // Up before the model loads: /healthz answers during a long load and
    // /readyz says what is missing. A failed start-up drops (aborts) it.
    let http = if config.http.enabled {
        let endpoints =
            Arc::new(http::Endpoints { metrics: metrics.clone(), readiness: readiness.clone(), db: db.clone() });
        let server = http::Server::start(config.http.listen, endpoints, &supervisor)
            .await
            .with_context(|| format!("[http] listening on {}", config.http.listen))?;
        Some(server)
    } else {
        None
    };
    // The model loads before we listen: a bad bundle stops start-up instead
    // of accepting studies nobody will process.
    let enhancer = if config.pipeline.enabled {
        std::fs::create_dir_all(&config.pipeline.output_dir)
            .with_context(|| format!("creating output-dir {}", config.pipeline.output_dir.display()))?;
        let pipeline = config.pipeline.clone();
        let enhancer = tokio::task::spawn_blocking(move || Enhancer::load(&pipeline))
            .await?
            .with_context(|| format!("loading the model bundle {}", config.pipeline.bundle.display()))?;
        tracing::info!(
            bundle = %enhancer.bundle_name, version = %enhancer.bundle_version, sha256 = %enhancer.bundle_sha256,
            device = %enhancer.device, t0 = enhancer.params.t0, steps = enhancer.params.steps,
            hold_threshold = enhancer.verifier.hold_threshold, "model loaded"
        );
        metrics.set_bundle(BundleInfo {
            name: enhancer.bundle_name.clone(),
            version: enhancer.bundle_version.clone(),
            sha256: enhancer.bundle_sha256.clone(),
            device: enhancer.device.clone(),
        });
        readiness.set_bundle_loaded();
        Some(enhancer)
    } else {
        None
    };
    let listener = TcpListener::bind(config.ingest.listen)
        .await
        .with_context(|| format!("listening on {}", config.ingest.listen))?;
    let local_addr = listener.local_addr()?;
    let tls = match &config.ingest.tls {
        Some(tls) => {
            let server_config =
                crate::tls::server_config(tls).map_err(|e| anyhow::anyhow!("{}", e.at("ingest.tls")))?;
            let listener = TcpListener::bind(tls.listen)
                .await
                .with_context(|| format!("listening for DICOM TLS on {} (ingest.tls.listen)", tls.listen))?;
            Some(ingest::TlsListener { listener, config: server_config })
        }
        None => None,
    };
    let tls_addr = tls.as_ref().map(|tls| tls.listener.local_addr()).transpose()?;
    if config.ingest.allowed_calling_ae_titles.is_empty() {
        tracing::warn!("allowed-calling-ae-titles is empty: any calling AE title may store");
    }
    let spool = Arc::new(spool);
    let shared = Arc::new(Shared::new(config.ingest.clone(), spool.clone(), db.clone(), metrics.clone()));
    let live_ingest = shared.live.clone();
    let shutdown = supervisor.shutdown().clone();
    let server = supervisor.spawn(
        "ingest",
        ingest::serve(listener, tls, shared, shutdown.clone().cancelled_owned(), Duration::from_secs(10)),
    );
    let tracker = supervisor.spawn(
        "tracker",
        tracker::run(
            db.clone(),
            Duration::from_secs_f64(config.tracker.quiet_period_secs),
            Duration::from_millis(config.tracker.poll_interval_ms.max(10)),
        ),
    );
    if config.delivery.destinations.is_empty() {
        tracing::warn!("[delivery] destinations is empty: derived instances are not sent anywhere");
    }
    let live_delivery = Arc::new(Live::new(config.delivery.clone()));
    let delivery = supervisor.spawn(
        "delivery",
        delivery::run(db.clone(), live_delivery.clone(), metrics.clone(), shutdown.clone().cancelled_owned()),
    );
    tracing::info!(address = %local_addr, ae_title = %config.ingest.ae_title, "DICOM ingest listening");
    if let Some(address) = tls_addr {
        let client_check = if config.ingest.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
            "client certificates required"
        } else {
            "no client certificate asked for"
        };
        tracing::info!(address = %address, ae_title = %config.ingest.ae_title, "DICOM TLS ingest listening; {client_check}");
    }
    let alerting = Arc::new(Live::new(alerts::Alerting { mailer, config: config.alerts.clone() }));
    let alerts = supervisor.spawn("alerts", alerts::run(db.clone(), alerting.clone()));
    let audit_head = supervisor.spawn("audit-head", audit::log_head_every(db.clone(), AUDIT_HEAD_INTERVAL));
    let abandon_jobs = CancellationToken::new();
    let live_workers = enhancer.map(|enhancer| {
        Arc::new(Live::new(worker::WorkerContext::new(&config, db.clone(), spool, Arc::new(enhancer), metrics.clone())))
    });
    let workers = match &live_workers {
        Some(context) => {
            let host = hostname();
            (0..config.pipeline.workers)
                .map(|index| {
                    let worker_id = format!("{host}:{}:{index}", std::process::id());
                    supervisor.spawn(
                        format!("worker-{index}"),
                        worker::run(Arc::clone(context), worker_id, shutdown.clone(), abandon_jobs.clone()),
                    )
                })
                .collect()
        }
        None => Vec::new(),
    };
    let handles = reload::Handles {
        ingest: live_ingest,
        delivery: live_delivery,
        alerting,
        workers: live_workers,
        metrics: metrics.clone(),
        db: db.clone(),
    };
    Ok(Running {
        local_addr,
        tls_addr,
        db,
        recovery,
        http_addr: http.as_ref().map(http::Server::local_addr),
        metrics,
        handles,
        drain_timeout: config.pipeline.drain_timeout(),
        config,
        watch: None,
        http,
        supervisor,
        server,
        tracker,
        delivery,
        alerts,
        audit_head,
        abandon_jobs,
        workers,
    })
}

impl Running {
    /// Reloads from `path` from now on: returns the [`Reloader`] (call
    /// [`Reloader::reload`] on `SIGHUP`) and watches the file and the bundle
    /// folder for changes. When the watch cannot be set up (e.g. inotify
    /// limits) that is logged and only explicit reloads work.
    pub fn watch_config(&mut self, path: &std::path::Path) -> Arc<Reloader> {
        let reloader = Arc::new(Reloader::new(path, self.config.clone(), self.handles.clone()));
        match reload::watch(reloader.clone()) {
            Ok(watch) => self.watch = Some(watch),
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                file = %path.display(),
                "cannot watch the configuration for changes; reload with SIGHUP (systemctl reload cxr-led)"
            ),
        }
        reloader
    }

    /// Resolves when a stage died (with its name and why): the caller then
    /// [`Running::stop`]s and exits non-zero so that systemd restarts the service.
    pub fn stage_died(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        self.supervisor.first_death()
    }

    /// Drains: stops accepting, lets running associations finish (bounded),
    /// stops the tracker, lets a delivery pass in progress finish (bounded; a
    /// delivery cut short is sent again once its lease runs out), gives the
    /// images in progress `drain-timeout-secs` from now before handing their
    /// jobs back to the queue, then stops the health and metrics endpoints.
    pub async fn stop(self) {
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        if let Some(watch) = self.watch {
            watch.stop();
        }
        self.supervisor.shutdown().cancel();
        let _ = self.server.await;
        self.tracker.abort();
        let _ = self.tracker.await;
        let mut delivery = self.delivery;
        if tokio::time::timeout(Duration::from_secs(10), &mut delivery).await.is_err() {
            delivery.abort();
            let _ = delivery.await;
        }
        self.alerts.abort();
        let _ = self.alerts.await;
        self.audit_head.abort();
        let _ = self.audit_head.await;
        // A worker finishes the image it is on, or past the deadline hands
        // its job back; either way nothing waits for a lease to expire.
        for mut worker in self.workers {
            if tokio::time::timeout_at(deadline, &mut worker).await.is_err() {
                self.abandon_jobs.cancel();
                let _ = worker.await;
            }
        }
        // Last: health and metrics stay visible while the rest drains.
        if let Some(http) = self.http {
            http.stop().await;
        }
        // After the workers: their last events are in the head.
        audit::log_head(&self.db, "at shutdown").await;
        self.db.close().await;
    }
}

/// How often the audit chain head goes to the journal (and once at start-up
/// and at shutdown), for a copy kept outside the database.
pub const AUDIT_HEAD_INTERVAL: Duration = Duration::from_secs(600);

/// This host's name, for worker ids in leases (which host holds a job).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
