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

/// Runs `cxr-led-train` expecting failure; returns stderr.
pub fn train_fails(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_cxr-led-train")).args(args).output().expect("run cxr-led-train");
    assert!(!output.status.success(), "cxr-led-train {args:?} should have failed");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A small `paired` run on CPU: the tiny-paired preset, `data` (e.g.
/// `--high-quality DIR` or `--pairs FILE`, two words: `out` is then at index
/// 6), 16-px patches, batch 4 from 2 sources, validation every 2 steps.
pub fn paired_args<'a>(data: [&'a str; 2], out: &'a str, validation_images: &'a str) -> Vec<&'a str> {
    let mut args = vec!["paired", "--preset", "tiny-paired"];
    args.extend(data);
    args.extend(["--out", out, "--patch", "16", "--batch", "4", "--sources", "2", "--validate-every", "2"]);
    args.extend(["--validation-images", validation_images, "--device", "cpu"]);
    args
}
