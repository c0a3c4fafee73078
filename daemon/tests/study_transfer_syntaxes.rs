//! One study (the RG1 chest CR) arrives in every transfer syntax we have
//! fixtures for or dcmtk can produce; each instance is spooled byte-exact in
//! its transfer syntax, joins the study, and the study becomes one job after
//! its quiet period.

mod common;

use std::path::{Path, PathBuf};

use common::*;

async fn with_new_uid(source: &Path, dir: &Path, name: &str, uid: &str, study: Option<&str>) -> PathBuf {
    let target = dir.join(name);
    std::fs::copy(source, &target).unwrap();
    let mut args = vec!["-nb".to_string(), "-m".to_string(), format!("(0008,0018)={uid}")];
    if let Some(study) = study {
        args.extend(["-m".to_string(), format!("(0020,000d)={study}")]);
    }
    args.push(target.display().to_string());
    let out = dcmtk("dcmodify", args).await;
    assert!(out.status.success(), "{}", text(&out));
    target
}

async fn encode(program: &str, flags: &[&str], source: &Path, target: &Path) {
    let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    args.extend([source.display().to_string(), target.display().to_string()]);
    let out = dcmtk(program, args).await;
    assert!(out.status.success(), "{program}: {}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rg1_study_in_every_transfer_syntax() {
    const STUDY: &str = "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457";
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let mut config = test_config(&db, spool.path());
    config.tracker.quiet_period_secs = 4.0;
    let running = start(config).await;
    let addr = running.local_addr;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let uncr = fixture("RG1_UNCR.dcm");

    let implicit = with_new_uid(&uncr, w, "implicit.dcm", "2.25.1001", None).await;
    let deflated = with_new_uid(&uncr, w, "deflated.dcm", "2.25.1002", None).await;
    encode("dcmcrle", &[], &uncr, &w.join("rle_src.dcm")).await;
    let rle = with_new_uid(&w.join("rle_src.dcm"), w, "rle.dcm", "2.25.1003", None).await;
    encode("dcmcjpeg", &[], &uncr, &w.join("jpegll_src.dcm")).await;
    let jpeg_lossless = with_new_uid(&w.join("jpegll_src.dcm"), w, "jpegll.dcm", "2.25.1004", None).await;
    encode("dcmcjpeg", &["+eb"], &fixture("dx_image.dcm"), &w.join("jpegb_src.dcm")).await;
    let jpeg_baseline = with_new_uid(&w.join("jpegb_src.dcm"), w, "jpegb.dcm", "2.25.1005", Some(STUDY)).await;

    let sends: Vec<(&[&str], PathBuf, &str)> = vec![
        (&[], uncr.clone(), "1.2.840.10008.1.2.1"),
        (&["-xv"], fixture("RG1_J2KR.dcm"), "1.2.840.10008.1.2.4.90"),
        (&["-xw"], fixture("RG1_J2KI.dcm"), "1.2.840.10008.1.2.4.91"),
        (&["-xu"], fixture("RG1_JLSN.dcm"), "1.2.840.10008.1.2.4.81"),
        (&["-xi"], implicit, "1.2.840.10008.1.2"),
        (&["-xd"], deflated, "1.2.840.10008.1.2.1.99"),
        (&["-xr"], rle, "1.2.840.10008.1.2.5"),
        (&["-xs"], jpeg_lossless, "1.2.840.10008.1.2.4.70"),
        (&["-xy"], jpeg_baseline, "1.2.840.10008.1.2.4.50"),
    ];
    let pool = db.pool().await;
    for (flags, file, ts) in &sends {
        let mut flags = flags.to_vec();
        flags.push("-R");
        let out = storescu(addr, "PACS", &flags, std::slice::from_ref(file)).await;
        assert!(out.status.success(), "{ts}: {}", text(&out));
        assert!(text(&out).contains("Received Store Response (Success)"), "{ts}: {}", text(&out));
        let stored: String =
            sqlx::query_scalar("SELECT transfer_syntax_uid FROM instance ORDER BY received_at DESC LIMIT 1")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(&stored, ts, "{}", file.display());
    }

    // Every spooled file is a readable Part 10 file in its transfer syntax.
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT sop_instance_uid, spool_file, transfer_syntax_uid FROM instance")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), sends.len());
    for (uid, file, ts) in rows {
        let obj = dicom_object::open_file(spool.path().join(&file)).unwrap();
        assert_eq!(obj.meta().transfer_syntax().trim_end_matches('\0'), ts);
        assert_eq!(obj.meta().media_storage_sop_instance_uid().trim_end_matches('\0'), uid);
    }
    assert_eq!(count(&pool, "SELECT count(DISTINCT study_instance_uid) FROM instance").await, 1);

    wait_until(std::time::Duration::from_secs(30), "the study job", || {
        let pool = pool.clone();
        async move { count(&pool, "SELECT count(*) FROM job").await == 1 }
    })
    .await;
    let (study, instances): (String, i32) = sqlx::query_as(
        "SELECT s.study_instance_uid, s.instance_count FROM job j JOIN study s USING (study_instance_uid)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(study, STUDY);
    assert_eq!(instances as usize, sends.len());
    running.stop().await;
    pool.close().await;
}
