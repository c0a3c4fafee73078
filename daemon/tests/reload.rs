//! Hot reload with real PostgreSQL: a changed configuration file is validated
//! and swapped in without a restart (a calling AE title taken off the
//! allow-list is refused from then on), an invalid one is refused and audited
//! while the old one keeps running, `SIGHUP` reloads the real binary, and a
//! changed model bundle is used for the next enhancement while a corrupted
//! one is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use cxr_led_daemon::config::Config;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use sqlx::{PgPool, Row};

fn write_config(path: &Path, config: &Config) {
    write_atomically(path, &toml::to_string(config).expect("serialise the configuration"));
}

/// As editors save: a new file renamed over the old one.
fn write_atomically(path: &Path, text: &str) {
    let temp = path.with_extension("tmp~");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

async fn reloads(db: &PgPool, outcome: &str) -> i64 {
    count(db, &format!("SELECT count(*) FROM audit_event WHERE event = 'config-reload' AND outcome = '{outcome}'"))
        .await
}

async fn wait_for_reloads(db: &PgPool, outcome: &str, n: i64) {
    wait_until(Duration::from_secs(30), &format!("{n} config-reload {outcome} rows"), || async move {
        reloads(db, outcome).await >= n
    })
    .await;
}

async fn last_reload_detail(db: &PgPool, outcome: &str) -> String {
    sqlx::query(
        "SELECT detail FROM audit_event WHERE event = 'config-reload' AND outcome = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(outcome)
    .fetch_one(db)
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_allow_list_change_applies_without_a_restart_and_a_bad_file_is_refused() {
    let db = TestDb::create().await;
    let work = tempfile::tempdir().unwrap();
    let mut config = test_config(&db, &work.path().join("spool"));
    config.ingest.allowed_calling_ae_titles = vec!["PACS".into(), "MODALITY".into()];
    let file = work.path().join("cxr-ledd.toml");
    write_config(&file, &config);
    let mut running = start(config.clone()).await;
    let _reloader = running.watch_config(&file);
    let addr = running.local_addr;
    let pool = db.pool().await;
    let images = make_copies(&fixture("CR1_6154.dcm"), work.path(), 4, "2.25.4711", "reload");

    let out = storescu(addr, "MODALITY", &[], &[images[0].0.clone()]).await;
    assert!(out.status.success(), "{}", text(&out));

    // MODALITY is taken off the list; a restart-only key changes too.
    config.ingest.allowed_calling_ae_titles = vec!["PACS".into()];
    config.ingest.max_associations = 5;
    write_config(&file, &config);
    wait_for_reloads(&pool, "success", 1).await;
    let detail = last_reload_detail(&pool, "success").await;
    assert!(detail.contains("changed: ingest.allowed-calling-ae-titles"), "{detail}");
    assert!(detail.contains("takes effect at the next restart: ingest.max-associations"), "{detail}");
    let out = storescu(addr, "MODALITY", &[], &[images[1].0.clone()]).await;
    assert!(!out.status.success(), "MODALITY is no longer allowed: {}", text(&out));
    assert!(text(&out).contains("Calling AE Title Not Recognized"), "{}", text(&out));
    let out = storescu(addr, "PACS", &[], &[images[1].0.clone()]).await;
    assert!(out.status.success(), "{}", text(&out));

    // An invalid value: refused, audited with its key, the old settings stay.
    let good = toml::to_string(&config).unwrap();
    let mut bad = config.clone();
    bad.ingest.allowed_calling_ae_titles = vec!["MODALITY".into()];
    bad.exposure.flag_above_noise_sigma = -0.5;
    write_config(&file, &bad);
    wait_for_reloads(&pool, "failure", 1).await;
    let detail = last_reload_detail(&pool, "failure").await;
    assert!(detail.contains("exposure.flag-above-noise-sigma"), "{detail}");
    assert!(detail.contains("running configuration stays in force"), "{detail}");
    // An unknown key: refused the same way.
    write_atomically(&file, &good.replace("[ingest]\n", "[ingest]\nallowed-callers = [\"MODALITY\"]\n"));
    wait_for_reloads(&pool, "failure", 2).await;
    let detail = last_reload_detail(&pool, "failure").await;
    assert!(detail.contains("unknown field `allowed-callers`"), "{detail}");
    assert_eq!(reloads(&pool, "success").await, 1);

    let out = storescu(addr, "MODALITY", &[], &[images[2].0.clone()]).await;
    assert!(!out.status.success(), "the refused files changed nothing: {}", text(&out));
    let out = storescu(addr, "PACS", &[], &[images[2].0.clone()]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(&pool, "SELECT count(*) FROM instance").await, 3);
    running.stop().await;
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_real_binary() {
    let db = TestDb::create().await;
    let work = tempfile::tempdir().unwrap();
    let config = test_config(&db, &work.path().join("spool"));
    let file = work.path().join("cxr-ledd.toml");
    write_config(&file, &config);
    let log = work.path().join("daemon.log");
    let mut daemon = spawn_daemon(&file, &log);
    let port = daemon.answering().await.port();
    let pool = db.pool().await;

    let pid = daemon.id().to_string();
    let kill = |signal: &str| {
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    };
    kill("-HUP");
    wait_for_reloads(&pool, "success", 1).await;
    assert!(last_reload_detail(&pool, "success").await.starts_with("SIGHUP: "));
    assert!(daemon.try_wait().unwrap().is_none(), "SIGHUP does not stop the daemon");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("configuration reloaded"), "{logged}");
    // Still serving after the reload.
    wait_for_echo(port).await;

    kill("-TERM");
    let status = tokio::task::spawn_blocking(move || daemon.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status}");
    pool.close().await;
}

/// A copy of dx_image.dcm with Deviation Index -7 (flagged) in its own study.
fn under_exposed_copy(dir: &Path, name: &str) -> (PathBuf, String) {
    let study = format!("2.25.1{}{}", std::process::id(), name.len());
    let (path, sop) = make_copies(&fixture("dx_image.dcm"), dir, 1, &study, name).remove(0);
    let mut object = dicom_object::open_file(&path).unwrap();
    object.put(DataElement::new(tags::DEVIATION_INDEX, VR::DS, PrimitiveValue::from("-7.0")));
    object.put(DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, PrimitiveValue::from(format!("{study}.1"))));
    object.write_to_file(&path).unwrap();
    (path, sop)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_bundle_is_used_next_and_a_corrupted_one_is_refused() {
    let db = TestDb::create().await;
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    copy_dir(&tiny_bundle(), &bundle);
    let mut config = test_config(&db, &work.path().join("spool"));
    config.tracker.quiet_period_secs = 0.5;
    config.pipeline.enabled = true;
    config.pipeline.bundle = bundle.clone();
    config.pipeline.device = "cpu".into();
    config.pipeline.poll_interval_ms = 50;
    config.pipeline.hold_threshold = 1.0;
    let file = work.path().join("cxr-ledd.toml");
    write_config(&file, &config);
    let mut running = start(config).await;
    let _reloader = running.watch_config(&file);
    let pool = db.pool().await;
    let old_sha = running.metrics.bundle().expect("bundle loaded").sha256;

    // A valid change: the manifest (the bundle's identity) gets a new description.
    let manifest = bundle.join("bundle.toml");
    let original = std::fs::read_to_string(&manifest).unwrap();
    let edited = original.replacen("description = \"", "description = \"Reloaded. ", 1);
    assert_ne!(original, edited);
    std::fs::write(&manifest, &edited).unwrap();
    let new_sha = cxr_led_models::bundle::sha256_hex(edited.as_bytes());
    assert_ne!(old_sha, new_sha);
    wait_for_reloads(&pool, "success", 1).await;
    assert_eq!(running.metrics.bundle().unwrap().sha256, new_sha);
    assert!(last_reload_detail(&pool, "success").await.contains(&new_sha));

    let (image, sop) = under_exposed_copy(work.path(), "bundle");
    let out = storescu(running.local_addr, "MODALITY", &[], &[image]).await;
    assert!(out.status.success(), "{}", text(&out));
    let query = format!("SELECT count(*) FROM enhancement WHERE source_sop_instance_uid = '{sop}'");
    wait_until(Duration::from_secs(180), "the enhancement", || {
        let (pool, query) = (&pool, query.clone());
        async move { count(pool, &query).await == 1 }
    })
    .await;
    let used: String = sqlx::query("SELECT bundle_sha256 FROM enhancement WHERE source_sop_instance_uid = $1")
        .bind(&sop)
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(used, new_sha);

    // A truncated weights file: refused, the loaded model stays.
    let weights = bundle.join("unet.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    wait_for_reloads(&pool, "failure", 1).await;
    let detail = last_reload_detail(&pool, "failure").await;
    assert!(detail.contains("pipeline.bundle"), "{detail}");
    assert_eq!(running.metrics.bundle().unwrap().sha256, new_sha);
    running.stop().await;
    pool.close().await;
}
