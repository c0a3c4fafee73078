//! `cxr-led-demo`: the README's main job. Starts a private Orthanc (the
//! PACS) and cxr-ledd on loopback, uploads the sample studies to Orthanc,
//! which forwards them to cxr-led; waits for the derived series to come back,
//! writes one PNG per enhanced study (input | enhanced | doubt map), prints
//! where to look and what the audit trail says, and keeps both
//! running until Ctrl-C. `.ci/demo` builds it and provides PostgreSQL.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use cxr_led_e2e::preview::{self, Panel};
use cxr_led_e2e::studies::{self, Sample};
use cxr_led_e2e::{tail, LoopOptions, PacsLoop};
use sqlx::Row;

#[derive(Parser)]
#[command(
    name = "cxr-led-demo",
    about = "Orthanc forwards under-exposed chest X-rays to cxr-led and gets the derived series back"
)]
struct Args {
    /// The model bundle (default: models/bundles/default when present, else models/bundles/tiny).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Folder for Orthanc's storage, cxr-led's spool and both logs (emptied first).
    #[arg(long, default_value = "out/demo-loop")]
    dir: PathBuf,
    /// Orthanc's HTTP port (Orthanc Explorer and REST API).
    #[arg(long, default_value_t = 8042)]
    orthanc_http_port: u16,
    /// Orthanc's DICOM port.
    #[arg(long, default_value_t = 4242)]
    orthanc_dicom_port: u16,
    /// cxr-led's DICOM port.
    #[arg(long, default_value_t = 11112)]
    cxrled_port: u16,
    /// Inference device: auto, cpu, cuda.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Stop after printing instead of waiting for Ctrl-C (for scripted runs).
    #[arg(long)]
    no_wait: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let default_bundle = repo.join("models/bundles/default");
    let bundle = args.bundle.clone().unwrap_or_else(|| {
        if default_bundle.join("bundle.toml").is_file() {
            default_bundle
        } else {
            cxr_led_e2e::tiny_bundle()
        }
    });
    let tiny = bundle.canonicalize().ok() == cxr_led_e2e::tiny_bundle().canonicalize().ok();
    for port in [args.orthanc_http_port, args.orthanc_dicom_port, args.cxrled_port] {
        std::net::TcpListener::bind(("127.0.0.1", port)).with_context(|| {
            format!(
                "port {port} is in use: pick free ones with --orthanc-http-port, --orthanc-dicom-port, --cxrled-port"
            )
        })?;
    }
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir).with_context(|| format!("emptying {}", args.dir.display()))?;
    }
    let options = LoopOptions {
        dir: args.dir.clone(),
        database: "cxrled_demo".into(),
        bundle: bundle.clone(),
        // The tiny bundle's output is random, and the calibrated check rightly
        // holds it; the demo lets it through so the loop can be seen.
        hold_threshold: if tiny { 1.0 } else { -1.0 },
        stable_age_secs: 3,
        quiet_period_secs: 2.0,
        workers: 1,
        device: args.device.clone(),
        drain_timeout_secs: 60,
        // The tiny bundle runs one refinement step instead of four, so the
        // 1955x1841 chest CR takes ~2 min rather than ~7 on a 2-core CPU.
        t0: if tiny { 200 } else { 0 },
        steps: if tiny { 1 } else { 0 },
        ports: Some((args.orthanc_http_port, args.orthanc_dicom_port, args.cxrled_port)),
        // The doubt map goes into the derived series too, and into each
        // study's side-by-side picture.
        doubt_map_instance: true,
    };
    println!("demo: starting cxr-led (bundle {}) and a private Orthanc in {}", bundle.display(), args.dir.display());
    let mut pacs = PacsLoop::start(&options)?;
    pacs.db.keep();
    let samples = studies::standard_set(&args.dir.join("samples"), "demo")?;
    let start = Instant::now();
    for sample in &samples {
        pacs.orthanc.upload(&sample.path)?;
        println!(
            "demo: uploaded {} (DI {:+.1}, {}x{}) to Orthanc",
            sample.label, sample.deviation_index, sample.columns, sample.rows
        );
    }
    println!(
        "demo: Orthanc forwards each study once it is stable ({} s); cxr-led enhances the under-exposed ones \
         (each one's stage follows; minutes on a CPU)",
        options.stable_age_secs
    );
    let under: Vec<&Sample> = samples.iter().filter(|s| s.deviation_index < -3.0).collect();
    let seconds = wait_for_results(&mut pacs, &under, start)?;
    cxr_led_e2e::wait::wait_until(Duration::from_secs(120), "every job done", || {
        Ok(pacs.db.count("SELECT count(*) FROM job WHERE state IN ('done', 'dead')")? == samples.len() as i64)
    })?;

    println!();
    println!("== results");
    let pictures = args.dir.join("side-by-side");
    for sample in &samples {
        if let Some(png) = side_by_side(&mut pacs, sample, &pictures)? {
            println!("{:<26} input | enhanced | doubt map: {}", sample.label, png.display());
        }
        let series = pacs.orthanc.series_of_study(&sample.study_uid)?;
        if let Some((score, threshold)) = held(&mut pacs, sample)? {
            println!(
                "{:<26} DI {:+.1}: enhanced but HELD for review (score {score:.3} > hold threshold {threshold:.3}): \
                 not sent to the PACS; see the audit query below",
                sample.label, sample.deviation_index
            );
            continue;
        }
        match pacs.derived_series(sample)? {
            Some(derived) => {
                let wait = under.iter().position(|s| s.label == sample.label).map(|i| seconds[i]).unwrap_or_default();
                println!(
                    "{:<26} DI {:+.1}: derived series {} back in its study after {:.1} s ({} series in the study now)",
                    sample.label,
                    sample.deviation_index,
                    derived["ID"].as_str().unwrap_or("?"),
                    wait,
                    series.len()
                );
            }
            None => println!(
                "{:<26} DI {:+.1}: well exposed, nothing sent back ({} series)",
                sample.label,
                sample.deviation_index,
                series.len()
            ),
        }
    }
    if tiny {
        println!("note: the tiny bundle has random weights and its results score 1.0, which the calibrated check would hold; this demo sets hold-threshold = 1.0 so the loop can be seen. Train and export a real bundle (README, Training) for an enhancement.");
    }
    println!();
    println!("== where to look");
    println!("Orthanc Explorer: http://127.0.0.1:{}/app/explorer.html", args.orthanc_http_port);
    println!("cxr-led log (JSON lines): {}", pacs.cxrled.log_path().display());
    println!(
        "cxr-led health and metrics: http://127.0.0.1:{0}/readyz, http://127.0.0.1:{0}/metrics",
        pacs.cxrled.http_port
    );
    println!("cxr-led database: {}", pacs.db.url);
    let query = "SELECT source_sop_instance_uid, exposure_rule, deviation_index, bundle_name, round(score::numeric, 3)::float8 AS score, held, deliveries->0->>'state' AS delivery FROM audit_derived_instance ORDER BY source_received_at";
    println!();
    println!("== the audit query: psql '{}' -c \"{query}\"", pacs.db.url);
    for row in pacs.db.rows(query)? {
        println!(
            "{} | {} | DI {} | {} | score {} | held {} | delivery {}",
            row.get::<String, _>(0),
            row.get::<String, _>(1),
            row.get::<Option<f64>, _>(2).map(|di| format!("{di:+.1}")).unwrap_or_else(|| "-".into()),
            row.get::<String, _>(3),
            row.get::<f64, _>(4),
            row.get::<bool, _>(5),
            row.get::<Option<String>, _>(6).unwrap_or_default()
        );
    }
    println!();
    println!("== last lines of the cxr-led log");
    println!("{}", tail(&pacs.cxrled.log(), 5));
    if args.no_wait {
        return Ok(());
    }
    println!();
    println!("demo: Orthanc and cxr-led keep running; upload more to Orthanc (http://127.0.0.1:{}/app/explorer.html, Upload). Ctrl-C stops both.", args.orthanc_http_port);
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(tokio::signal::ctrl_c())?;
    println!("demo: stopping");
    pacs.cxrled.stop()?;
    pacs.orthanc.stop()?;
    Ok(())
}

/// Writes the PNG of a sample's source, derived image and doubt map side by
/// side into `dir` (none when the sample was not enhanced); returns its path.
fn side_by_side(pacs: &mut PacsLoop, sample: &Sample, dir: &std::path::Path) -> anyhow::Result<Option<PathBuf>> {
    let rows = pacs.db.rows(&format!(
        "SELECT derived_file, derived_sop_instance_uid FROM enhancement WHERE source_sop_instance_uid = '{}'",
        sample.sop_uid.replace('\'', "")
    ))?;
    let Some(row) = rows.first() else { return Ok(None) };
    let derived = PathBuf::from(row.try_get::<String, _>(0)?);
    let derived_uid: String = row.try_get(1)?;
    let map_uid = cxr_led_dicom::derive::uid_from_parts(&[b"doubt-map", derived_uid.as_bytes()]);
    let map = derived.with_file_name(cxr_led_daemon::spool::Spool::file_name(&map_uid));
    let panels = [Panel::display_of(&sample.path)?, Panel::display_of(&derived)?, Panel::doubt_map_of(&map)?];
    let png = dir.join(format!("{}.png", sample.label));
    preview::write_side_by_side(&panels, 768, &png)?;
    Ok(Some(png))
}

/// The score and threshold of a sample's enhancement if the hallucination
/// check held it (a held result is kept for review and never sent).
fn held(pacs: &mut PacsLoop, sample: &Sample) -> anyhow::Result<Option<(f64, f64)>> {
    let rows = pacs.db.rows(&format!(
        "SELECT score, hold_threshold FROM enhancement WHERE held AND source_sop_instance_uid = '{}'",
        sample.sop_uid.replace('\'', "")
    ))?;
    Ok(rows.first().map(|row| (row.get::<f64, _>(0), row.get::<f64, _>(1))))
}

/// Where a sample is in the loop, from cxr-led's tables: received, queued,
/// enhancing, scored, sent or held; and whether the check held its result.
fn stage(pacs: &mut PacsLoop, sample: &Sample) -> anyhow::Result<(String, bool)> {
    let sop = sample.sop_uid.replace('\'', "");
    let rows = pacs.db.rows(&format!(
        "SELECT (SELECT count(*) FROM instance WHERE sop_instance_uid = '{sop}'), \
         (SELECT j.state FROM job j JOIN instance i USING (study_instance_uid) WHERE i.sop_instance_uid = '{sop}'), \
         (SELECT held FROM enhancement WHERE source_sop_instance_uid = '{sop}'), \
         (SELECT round(score::numeric, 3)::float8 FROM enhancement WHERE source_sop_instance_uid = '{sop}'), \
         (SELECT bool_and(o.state = 'sent') FROM outbox o JOIN enhancement e \
            ON o.sop_instance_uid = e.derived_sop_instance_uid WHERE e.source_sop_instance_uid = '{sop}')"
    ))?;
    let row = rows.first().context("no row from the stage query")?;
    let received: i64 = row.try_get(0)?;
    let job: Option<String> = row.try_get(1)?;
    let held: Option<bool> = row.try_get(2)?;
    let score: Option<f64> = row.try_get(3)?;
    let sent: Option<bool> = row.try_get(4)?;
    let text = match (received, job.as_deref(), held, sent) {
        (0, ..) => "waiting for Orthanc to forward it".into(),
        (_, None, ..) => "received, waiting for the study to go quiet".into(),
        (_, _, Some(true), _) => format!("scored {:.3}: HELD for review", score.unwrap_or_default()),
        (_, _, Some(false), Some(true)) => format!("scored {:.3}, sent to the PACS", score.unwrap_or_default()),
        (_, _, Some(false), _) => format!("scored {:.3}, sending", score.unwrap_or_default()),
        (_, Some("queued"), None, _) => "queued".into(),
        (_, Some("running"), None, _) => "enhancing".into(),
        (_, Some(state), None, _) => format!("job {state}"),
    };
    Ok((text, held == Some(true)))
}

/// Seconds from the upload until each under-exposed sample's derived series
/// is in Orthanc, or its result was held by the hallucination check. Prints
/// each sample's stage and the elapsed time whenever the stage changes.
fn wait_for_results(pacs: &mut PacsLoop, under: &[&Sample], since: Instant) -> anyhow::Result<Vec<f64>> {
    let mut seconds = vec![None; under.len()];
    let mut stages = vec![String::new(); under.len()];
    cxr_led_e2e::wait::wait_until(
        Duration::from_secs(1800),
        "each under-exposed study to come back or be held",
        || {
            for ((sample, done), last) in under.iter().zip(seconds.iter_mut()).zip(stages.iter_mut()) {
                if done.is_some() {
                    continue;
                }
                let (mut now, held) = stage(pacs, sample)?;
                if pacs.derived_series(sample)?.is_some() {
                    now = "back in its study in the PACS".into();
                    *done = Some(since.elapsed().as_secs_f64());
                } else if held {
                    *done = Some(since.elapsed().as_secs_f64());
                }
                if now != *last {
                    println!("demo: [{:>6.1} s] {:<26} {now}", since.elapsed().as_secs_f64(), sample.label);
                    *last = now;
                }
            }
            Ok(seconds.iter().all(Option::is_some))
        },
    )
    .with_context(|| format!("cxr-led log tail:\n{}", tail(&pacs.cxrled.log(), 30)))?;
    Ok(seconds.into_iter().map(Option::unwrap_or_default).collect())
}
