//! The end-to-end benchmark cannot rot: `cxr-led-e2e-bench` runs once, as
//! small as it goes (no latency rounds, one queued study), through the real
//! Orthanc loop, and its JSON carries every figure. No timing is asserted.

use std::process::Command;

#[test]
fn the_e2e_benchmark_runs_end_to_end_and_writes_its_figures() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("e2e.json");
    let output = Command::new(env!("CARGO_BIN_EXE_cxr-led-e2e-bench"))
        .args(["--rounds", "0", "--queued", "1", "--dir"])
        .arg(work.path().join("run"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("start cxr-led-e2e-bench");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    let figures: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(figures["throughput"]["studies"], 1, "{figures}");
    assert!(figures["throughput"]["studies_per_minute"].as_f64().is_some_and(|rate| rate > 0.0), "{figures}");
    assert_eq!(figures["throughput"]["each_seconds"].as_array().map(Vec::len), Some(1), "{figures}");
    assert_eq!(figures["latency"].as_array().map(Vec::len), Some(0), "{figures}");
    for key in ["device", "workers", "t0", "steps", "cxrled_quiet_period_secs"] {
        assert!(!figures[key].is_null(), "{key} missing: {figures}");
    }
}
