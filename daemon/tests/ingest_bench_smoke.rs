//! The ingest benchmark (`daemon/bench/ingest.py`) run end to end on a few
//! files with the test build, so that a change which breaks it (a renamed
//! log field, a config key, a start-up step) fails here rather than on the
//! next person who measures. Its figures are not judged: a run this short
//! measures the ramp-up.

use std::path::Path;
use std::process::Command;

#[test]
fn the_ingest_benchmark_runs_on_a_few_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let out = tempfile::tempdir().unwrap();
    let report_path = out.path().join("ingest.json");
    let run = Command::new("python3")
        .arg(root.join("daemon/bench/ingest.py"))
        .args(["--cxr-ledd", env!("CARGO_BIN_EXE_cxr-ledd")])
        .args(["--small", "3", "--large", "1", "--associations", "1,2", "--no-orthanc", "--out"])
        .arg(&report_path)
        .output()
        .expect("python3 runs");
    let printed = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "the benchmark failed:\n{printed}");

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let rows = report["results"].as_array().expect("results");
    // Two file sets (2 KB and 7 MB CR) on 1 and 2 associations.
    assert_eq!(rows.len(), 4, "{report:#}");
    for row in rows {
        for receiver in ["cxr-led", "storescp"] {
            assert!(row[receiver]["instances_per_s"].as_f64().is_some_and(|rate| rate > 0.0), "{row:#}");
        }
        // The store stage's timings were found in the daemon's log.
        for stage in ["seal", "spool", "database"] {
            assert!(row["cxr-led"]["stages_ms"][stage].as_f64().is_some(), "{row:#}");
        }
        assert!(row["cxr-led"]["peak_rss_mib"].as_f64().is_some(), "{row:#}");
        assert!(row["storescp"]["durable_instances_per_s"].as_f64().is_some(), "{row:#}");
        assert!(row["fsync_loop_instances_per_s"].as_f64().is_some_and(|rate| rate > 0.0), "{row:#}");
    }
}
