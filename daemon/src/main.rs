//! `cxr-ledd`: the cxr-led service. `run` starts the DICOM ingest (SCP,
//! spool, study tracker, alerts); `check-bundle` verifies a model bundle,
//! `device` reports the inference device and `audit verify` checks the audit
//! trail's hash chain.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cxr_led_models::{device, Bundle, LedModel, Precision};

#[derive(Parser)]
#[command(name = "cxr-ledd", version, about = "cxr-led: LED enhancement of under-exposed chest X-rays")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify a model bundle (every sha256, every tensor) and load it on a device.
    CheckBundle {
        /// The bundle folder (holds bundle.toml).
        bundle: PathBuf,
        /// auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Report what libtorch sees: CUDA availability and device count.
    Device,
    /// Run the service until SIGINT or SIGTERM. SIGHUP, or a change to the
    /// configuration file or the model bundle, reloads what can be reloaded.
    Run {
        /// The TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Re-run the enhancement of a derived instance from the spooled source and
    /// report whether the pixels match what was sent (exit 0 when they do, 1 when not).
    Reproduce {
        /// The derived instance's SOP Instance UID.
        derived_sop_instance_uid: String,
        /// The TOML configuration file (database, spool, bundle).
        #[arg(long)]
        config: PathBuf,
    },
    /// Apply the schema migrations as the schema's owner (the service's own
    /// role, granted cxr_led_service, may not change the schema).
    Migrate {
        /// The TOML configuration file (for [database] url).
        #[arg(long)]
        config: PathBuf,
        /// Connect with this URL instead: the owner's, e.g. postgres://cxr_led_owner@db/cxr_led.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Parse and validate a configuration file: exit 0 with a one-line
    /// summary, or exit 78 (EX_CONFIG) listing every problem with its key.
    CheckConfig {
        /// The TOML configuration file.
        config: PathBuf,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the audit trail's hash chain; exit 0 and print the head hash
    /// (anchor it elsewhere) when intact, exit 65 and name the first broken row when not.
    Verify {
        /// The TOML configuration file (for [database] url).
        #[arg(long)]
        config: PathBuf,
        /// Connect with this URL instead (e.g. as a login role granted cxr_led_auditor).
        #[arg(long)]
        database_url: Option<String>,
        /// A head kept outside the database (SEQ:HASH, from the journal's
        /// "audit chain head" line or an earlier verify): the row at SEQ must
        /// still carry HASH, so a chain rewritten and re-hashed is caught.
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<cxr_led_daemon::audit::Anchor>,
    },
}

/// Exit status for a broken audit chain (EX_DATAERR).
const EXIT_CHAIN_BROKEN: i32 = 65;

/// Verifies the chain without migrating: an auditor's role may read, nothing more.
async fn audit_verify(
    url: &str,
    anchor: Option<&cxr_led_daemon::audit::Anchor>,
) -> anyhow::Result<cxr_led_daemon::audit::ChainReport> {
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await
        .context("connecting to PostgreSQL")?;
    let report = cxr_led_daemon::audit::verify_chain_against(&db, anchor).await.context("reading audit_event")?;
    db.close().await;
    Ok(report)
}

/// Exit status for a configuration error (EX_CONFIG).
const EXIT_CONFIG: i32 = 78;

fn load_config(path: &std::path::Path) -> cxr_led_daemon::config::Config {
    match cxr_led_daemon::app::preflight::load(path) {
        Ok(config) => config,
        Err(e) => {
            // Every validation problem on its own line, each naming its key.
            eprintln!("cxr-ledd: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    }
}

async fn run(config: cxr_led_daemon::config::Config, path: PathBuf) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let notifier = cxr_led_daemon::ops::notify::Notifier::from_env();
    let mut running = cxr_led_daemon::app::service::start(config).await?;
    let reloader = running.watch_config(&path);
    let status = format!("listening on {}", running.local_addr);
    notifier.ready(&status);
    let watchdog = tokio::spawn(notifier.clone().run_watchdog());
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let stage_died = running.stage_died();
    tokio::pin!(stage_died);
    let mut died = None;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            death = &mut stage_died => {
                died = Some(death);
                break;
            }
            _ = hangup.recv() => {
                notifier.reloading("reloading the configuration and the model bundle");
                let outcome = match reloader.reload(cxr_led_daemon::app::reload::Trigger::Signal).await {
                    Ok(_) => "reloaded".to_string(),
                    Err(e) => format!("reload refused ({}); running on the previous configuration", e.lines().next().unwrap_or("")),
                };
                notifier.ready(&format!("{status}; {outcome}"));
            }
        }
    }
    tracing::info!("shutting down");
    notifier.stopping("draining: finishing the current images and deliveries");
    running.stop().await;
    watchdog.abort();
    match died {
        // Non-zero, so that systemd (Restart=on-failure) starts a whole service again.
        Some(death) => anyhow::bail!("stage {death}; stopped the service"),
        None => Ok(()),
    }
}

/// Logs to stderr: human-readable on a terminal, JSON lines otherwise (the
/// journal, a file), one object per event with its span fields (study, job),
/// so IT can search by UID. `RUST_LOG` filters; default `info`.
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().with_current_span(true).with_span_list(false).init();
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::CheckBundle { bundle, device } => {
            let device = device::parse_device(&device)?;
            let loaded = Bundle::load(&bundle).with_context(|| format!("loading bundle {}", bundle.display()))?;
            LedModel::from_bundle(&loaded, device, Precision::F32)?;
            println!(
                "bundle {} {} ok: sha256 {} on {}",
                loaded.manifest.name,
                loaded.manifest.version,
                loaded.sha256,
                device::describe(device)
            );
        }
        Command::Device => {
            println!("cuda available: {}", tch::Cuda::is_available());
            println!("cuda devices: {}", tch::Cuda::device_count());
            println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
            println!("default device: {}", device::describe(tch::Device::cuda_if_available()));
        }
        Command::Run { config: path } => {
            let config = load_config(&path);
            init_logging();
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let result = runtime.block_on(run(config, path));
            // An image abandoned at the drain timeout may still be computing on
            // a blocking thread; its job is already handed back, so don't wait.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            result?;
        }
        Command::Reproduce { derived_sop_instance_uid, config } => {
            let config = load_config(&config);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let reproduction = runtime.block_on(async {
                let url = config.database_url().context("no database url: set [database] url or DATABASE_URL")?;
                let db = cxr_led_daemon::db::connect(&url, 2).await.context("connecting to PostgreSQL")?;
                cxr_led_daemon::app::reproduce::reproduce(
                    &db,
                    &config.ingest.spool_dir,
                    &config.pipeline,
                    &derived_sop_instance_uid,
                )
                .await
            })?;
            println!("{}", serde_json::to_string_pretty(&reproduction)?);
            if !reproduction.matches {
                std::process::exit(1);
            }
        }
        Command::Migrate { config, database_url } => {
            let config = load_config(&config);
            let url = database_url
                .or_else(|| config.database_url())
                .context("no database url: set [database] url, DATABASE_URL or --database-url")?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (role, applied) = runtime.block_on(async {
                let db = cxr_led_daemon::db::pool(&url, 2).await.context("connecting to PostgreSQL")?;
                cxr_led_daemon::db::migrate(&db).await?;
                let role = cxr_led_daemon::db::role(&db).await?;
                let applied: i64 =
                    sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM _sqlx_migrations WHERE success"#)
                        .fetch_one(&db)
                        .await?;
                db.close().await;
                anyhow::Ok((role, applied))
            })?;
            println!(
                "schema up to date as {} ({applied} migrations applied); run the service as a login role granted \
                 cxr_led_service",
                role.name
            );
        }
        Command::CheckConfig { config: path } => {
            let config = load_config(&path);
            println!("{}: ok: {}", path.display(), config.summary());
        }
        Command::Audit { command: AuditCommand::Verify { config, database_url, expect_head } } => {
            let config = load_config(&config);
            let url = database_url
                .or_else(|| config.database_url())
                .context("no database url: set [database] url, DATABASE_URL or --database-url")?;
            let report = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(audit_verify(&url, expect_head.as_ref()))?;
            if report.is_intact() {
                println!("{report}");
                if let Some(anchor) = &expect_head {
                    println!("the head kept elsewhere matches: seq {} has row_hash {}", anchor.seq, anchor.row_hash);
                }
            } else {
                eprintln!("cxr-ledd: {report}");
                std::process::exit(EXIT_CHAIN_BROKEN);
            }
        }
    }
    Ok(())
}
