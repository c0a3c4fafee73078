//! Shared helpers of the training tests.
#![allow(dead_code)]

use std::process::Command;

/// Runs `cxr-led-train` with `args`, failing the test with both streams
/// when it fails; returns (stdout, stderr).
pub fn train(args: &[&str]) -> (String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cxr-led-train")).args(args).output().expect("run cxr-led-train");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned());
    assert!(output.status.success(), "cxr-led-train {args:?} failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}
