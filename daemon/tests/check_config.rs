//! `cxr-ledd check-config FILE` as operators run it: the real binary, exit 0
//! with a short summary for a good file, exit 78 (EX_CONFIG) listing every
//! problem with its key path for a bad one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EX_CONFIG: i32 = 78;

fn check_config(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cxr-ledd")).arg("check-config").arg(file).output().expect("run cxr-ledd")
}

fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("cxr-ledd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_documented_config_passes() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/cxr-ledd.toml");
    let output = check_config(&shipped);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("ok: ingest CXRLED on 0.0.0.0:11112"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "a short summary, not a dump: {stdout}");
}

#[test]
fn every_problem_is_listed_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        r#"
[ingest]
ae-title = "A-TITLE-FAR-TOO-LONG"
max-pdu-length = 10
[pipeline]
workers = 0
hold-threshold = 2.0
[exposure]
flag-above-noise-sigma = 1.5
[delivery]
destinations = [
    { name = "pacs", ae-title = "PACS", address = "pacs.example:104" },
    { name = "archive", ae-title = "ARCHIVE", address = "archive.example" },
]
retry-initial-secs = 100
retry-max-secs = 10
[mail]
enabled = true
to = ["not an address"]
[http]
listen = "0.0.0.0:11112"
"#,
    );
    let output = check_config(&file);
    assert_eq!(output.status.code(), Some(EX_CONFIG), "{}", stderr(&output));
    let text = stderr(&output);
    for key in [
        "ingest.ae-title: ",
        "ingest.max-pdu-length: ",
        "pipeline.workers: must be at least 1 (set pipeline.enabled = false for none)",
        "pipeline.hold-threshold: ",
        "exposure.flag-above-noise-sigma: ",
        "delivery.destinations[1].address: \"archive.example\" must be host:port",
        "delivery.retry-max-secs: ",
        "mail.to[0]: ",
        "http.listen: ",
    ] {
        assert!(text.contains(key), "missing {key:?} in:\n{text}");
    }
    assert!(!text.contains("destinations[0]"), "{text}");
    assert!(output.stdout.is_empty());
}

#[test]
fn a_parse_error_names_the_key_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "[ingest]\nae-title = \"LED\"\n\n[delivery]\ndestinations = [{ name = \"p\", ae-title = \"P\", adress = \"h:1\" }]\n");
    let output = check_config(&file);
    assert_eq!(output.status.code(), Some(EX_CONFIG));
    let text = stderr(&output);
    assert!(text.contains("delivery.destinations[0]"), "{text}");
    assert!(text.contains("line 5"), "{text}");
    assert!(text.contains("unknown field `adress`"), "{text}");

    let file = write(&dir, "[tracker]\nquiet-period-secs = \"soon\"\n");
    let text = stderr(&check_config(&file));
    assert!(text.contains("tracker.quiet-period-secs") && text.contains("line 2"), "{text}");
}

#[test]
fn secrets_in_the_file_are_refused_with_where_they_belong() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "[mail]\nenabled = false\npassword = \"hunter2\"\n");
    let output = check_config(&file);
    assert_eq!(output.status.code(), Some(EX_CONFIG));
    let text = stderr(&output);
    assert!(text.contains("mail.password: secrets never go in this file"), "{text}");
    assert!(text.contains("LoadCredential=smtp-password") && text.contains("CXR_LED_SMTP_PASSWORD"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    let file = write(&dir, "[database]\nurl = \"postgres://cxr_led:hunter2@db.example/cxr_led\"\n");
    let output = check_config(&file);
    assert_eq!(output.status.code(), Some(EX_CONFIG));
    let text = stderr(&output);
    assert!(text.contains("database.url: contains a password") && text.contains("DATABASE_URL"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn an_unreadable_file_is_a_config_error() {
    let output = check_config(Path::new("/nonexistent/cxr-ledd.toml"));
    assert_eq!(output.status.code(), Some(EX_CONFIG));
    assert!(stderr(&output).contains("reading /nonexistent/cxr-ledd.toml"), "{}", stderr(&output));
}
