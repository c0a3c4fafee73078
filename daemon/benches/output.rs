//! Figures for the output side, printed and written to a JSON file, not
//! asserted: building and durably writing the derived instance of the
//! 1955 x 1841 CR, and delivering derived instances to dcmtk `storescp`
//! through the outbox, side by side with dcmtk `storescu` sending the same
//! files to the same `storescp`.
//!
//! ```text
//! cargo bench -p cxr-led-daemon --bench output -- [--copies 16] [--out out/bench/output.json]
//! ```
//! with PostgreSQL at `$DATABASE_URL` and dcmtk installed (`.ci/env.sh`,
//! `cxr_led_test_services`). `cargo test --benches` runs it with two copies
//! into a temporary file, as a smoke test.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

use common::{fixture, tiny_provenance, TestDb};
use cxr_led_daemon::config::{DeliveryConfig, DestinationConfig};
use cxr_led_daemon::ops::metrics::Metrics;
use cxr_led_daemon::{db, delivery};
use cxr_led_dicom::derive::{self, Provenance, StoredPixels};
use dicom_dictionary_std::tags;
use dicom_pixeldata::PixelDecoder;

fn provenance(n: usize) -> Provenance {
    let instance = derive::uid_from_parts(&[b"bench-instance", &n.to_le_bytes()]);
    tiny_provenance(instance, derive::uid_from_parts(&[b"bench-series"]))
}

/// Output-side figures (see the file's doc comment).
#[derive(Parser)]
struct Options {
    /// Derived instances to build, write and deliver.
    #[arg(long, default_value_t = 16)]
    copies: usize,
    /// Where the figures go (JSON).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../out/bench/output.json"))]
    out: PathBuf,
    /// Added by `cargo bench`; without it (`cargo test --benches`) a two-copy smoke run.
    #[arg(long, hide = true)]
    bench: bool,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut options = Options::parse();
    if !options.bench {
        options.copies = 2;
        options.out = std::env::temp_dir().join(format!("cxr-led-output-bench-smoke-{}.json", std::process::id()));
    }
    let copies = options.copies;
    let work = tempfile::tempdir().unwrap();
    let source = dicom_object::open_file(fixture("RG1_UNCR.dcm")).unwrap();

    let t = Instant::now();
    let decoded = source.decode_pixel_data().unwrap();
    let pixels: Vec<u16> = decoded.data_ow().iter().map(|&v| 4095 - (v & 4095)).collect();
    let decode = t.elapsed();
    let mut build = Duration::ZERO;
    let mut write = Duration::ZERO;
    let mut files = Vec::new();
    for n in 0..copies {
        let p = provenance(n);
        let t = Instant::now();
        let derived = derive::derive_instance(&source, StoredPixels::U16(pixels.clone()), &p).unwrap();
        build += t.elapsed();
        let path = work.path().join(format!("{n}.dcm"));
        let t = Instant::now();
        derive::write_durably(&derived, &path).unwrap();
        write += t.elapsed();
        files.push((path, p.derived_sop_instance_uid));
    }
    let doubt: Vec<f32> = (0..pixels.len()).map(|i| (i % 1000) as f32 / 1000.0).collect();
    let t = Instant::now();
    let map = derive::doubt_map_instance(&source, &doubt, 1955, 1841, &provenance(0), "2.25.1").unwrap();
    let doubt_build = t.elapsed();
    drop(map);
    let bytes = std::fs::metadata(&files[0].0).unwrap().len() as f64;
    println!("derived instance of the 1955 x 1841 CR ({:.1} MB):", bytes / 1e6);
    println!("  decode source (native)      {:8.1} ms", millis(decode));
    println!("  derive_instance             {:8.1} ms (mean of {copies})", millis(build) / copies as f64);
    println!("  write_durably (fsync twice) {:8.1} ms (mean of {copies})", millis(write) / copies as f64);
    println!("  doubt_map_instance          {:8.1} ms", millis(doubt_build));

    // Delivery: cxr-led's outbox + SCU against storescu, both into storescp.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = tempfile::tempdir().unwrap();
    let mut scp = Command::new("storescp")
        .args(["-aet", "PACS", "-pdu", "65536", "-od"])
        .arg(out.path())
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("storescp");
    std::thread::sleep(Duration::from_millis(500));

    let test_db = TestDb::create().await;
    let pool = db::connect(&test_db.url, 4).await.unwrap();
    let config = DeliveryConfig {
        destinations: vec![DestinationConfig {
            name: "pacs".into(),
            ae_title: "PACS".into(),
            address: format!("127.0.0.1:{port}"),
            tls: None,
        }],
        batch_size: copies as u32,
        ..Default::default()
    };
    let study = source.element(tags::STUDY_INSTANCE_UID).unwrap().to_str().unwrap().to_string();
    let mut tx = pool.begin().await.unwrap();
    for (path, uid) in &files {
        delivery::outbox::enqueue(&mut tx, uid, derive::CR_IMAGE_STORAGE, &study, path, &config.destinations)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let t = Instant::now();
    let mut sent = 0;
    while sent < copies {
        sent += delivery::deliver_due(&pool, &config, &Metrics::default()).await.unwrap();
    }
    let ours = t.elapsed();
    let delivered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE state = 'sent'").fetch_one(&pool).await.unwrap();

    let mut args: Vec<String> =
        ["-aet", "CXRLED", "-aec", "PACS", "-pdu", "65536", "127.0.0.1"].iter().map(|s| s.to_string()).collect();
    args.push(port.to_string());
    args.extend(files.iter().map(|(p, _)| p.display().to_string()));
    let t = Instant::now();
    let status = Command::new("storescu").args(&args).status().expect("storescu");
    let theirs = t.elapsed();
    let _ = scp.kill();
    let _ = scp.wait();
    assert!(status.success());
    let rate = |d: Duration| (copies as f64 / d.as_secs_f64(), copies as f64 * bytes / 1e6 / d.as_secs_f64());
    let (oi, om) = rate(ours);
    let (ti, tm) = rate(theirs);
    println!("delivery of {copies} x {:.1} MB to storescp over loopback, one association:", bytes / 1e6);
    println!("  cxr-led outbox + SCU   {oi:6.1} inst/s {om:7.1} MB/s ({delivered} rows sent, audit included)");
    println!("  dcmtk storescu         {ti:6.1} inst/s {tm:7.1} MB/s");
    println!("  ratio cxr-led / storescu {:.2}", oi / ti);
    pool.close().await;
    let figures = serde_json::json!({
        "copies": copies,
        "instance_megabytes": bytes / 1e6,
        "decode_source_ms": millis(decode),
        "derive_instance_ms": millis(build) / copies as f64,
        "write_durably_ms": millis(write) / copies as f64,
        "doubt_map_instance_ms": millis(doubt_build),
        "delivery": {
            "cxr_led": { "instances_per_second": oi, "megabytes_per_second": om, "rows_sent": delivered },
            "storescu": { "instances_per_second": ti, "megabytes_per_second": tm },
            "ratio": oi / ti,
        },
    });
    assert_eq!(delivered, copies as i64, "every derived instance was delivered");
    if let Some(folder) = options.out.parent() {
        std::fs::create_dir_all(folder).unwrap();
    }
    std::fs::write(&options.out, serde_json::to_string_pretty(&figures).unwrap()).unwrap();
    println!("figures written to {}", options.out.display());
}
