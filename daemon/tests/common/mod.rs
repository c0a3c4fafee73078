//! Shared helpers of the ingest tests: a fresh database per test, an
//! in-process daemon on a free port, dcmtk peers and a raw DIMSE client.
#![allow(dead_code, missing_docs, unused_imports)]

pub mod http;
pub mod pipeline;
pub mod pki;
pub mod storescp;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cxr_led_daemon::app::service::{self, Running};
use cxr_led_daemon::config::Config;
use cxr_led_dicom::derive::Provenance;
use cxr_led_dicom::dimse;
use dicom_dictionary_std::tags;
use dicom_object::{open_file, InMemDicomObject};
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::{ClientAssociationOptions, Pdu};
use sqlx::{PgPool, Row};

pub use cxr_led_test_kit::database::{admin_url, TestDb};
pub use cxr_led_test_kit::ports::free_port;
pub use cxr_led_test_kit::tiny_bundle;
pub use cxr_led_test_kit::wait::wait_until;

pub const AE: &str = "CXRLED";
pub const CR: &str = "1.2.840.10008.5.1.4.1.1.1";
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// The folder of the copied fixtures.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A configuration for tests: loopback, port 0, the given spool and database.
pub fn test_config(db: &TestDb, spool: &Path) -> Config {
    let mut config = Config::default();
    config.ingest.listen = "127.0.0.1:0".parse().unwrap();
    config.ingest.spool_dir = spool.to_path_buf();
    config.ingest.read_timeout_secs = 20;
    config.ingest.idle_timeout_secs = 30;
    config.database.url = db.url.clone();
    config.database.max_connections = 8;
    // Tests connect as the server's superuser (the service-role test makes its own role).
    config.database.development = true;
    config.tracker.quiet_period_secs = 3600.0;
    config.tracker.poll_interval_ms = 100;
    // Ingest tests run no workers; pipeline tests turn them on with `pipeline_config`.
    config.pipeline.enabled = false;
    config.pipeline.output_dir = spool.join("derived");
    // Many services run in one test process: each gets its own HTTP port.
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config
}

/// Writes `config` as `dir/cxr-ledd.toml` for the real binary
/// ([`spawn_daemon`]); it listens where `config` says (port 0 from
/// [`test_config`]: [`Daemon::answering`] finds the port it got).
pub fn write_daemon_config(config: Config, dir: &Path) -> PathBuf {
    let path = dir.join("cxr-ledd.toml");
    std::fs::write(&path, toml::to_string(&config).expect("serialise the configuration")).unwrap();
    path
}

pub async fn start(config: Config) -> Running {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("info").try_init();
    service::start(config).await.expect("daemon starts")
}

/// Runs a dcmtk tool (off the async runtime).
pub async fn dcmtk(program: &str, args: Vec<String>) -> Output {
    let program = program.to_string();
    tokio::task::spawn_blocking(move || {
        Command::new(&program)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e} (is dcmtk installed?)"))
    })
    .await
    .unwrap()
}

pub fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// storescu with our AE title as the called one.
pub async fn storescu(addr: SocketAddr, calling: &str, extra: &[&str], files: &[PathBuf]) -> Output {
    let mut args: Vec<String> = vec!["-v".into(), "-aet".into(), calling.into(), "-aec".into(), AE.into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(addr.ip().to_string());
    args.push(addr.port().to_string());
    args.extend(files.iter().map(|f| f.display().to_string()));
    dcmtk("storescu", args).await
}

/// Writes `n` copies of a fixture with fresh SOP Instance UIDs (and the given
/// Study Instance UID), returning their paths and UIDs.
pub fn make_copies(source: &Path, dir: &Path, n: usize, study_uid: &str, tag: &str) -> Vec<(PathBuf, String)> {
    let original = open_file(source).expect("open fixture");
    (0..n)
        .map(|i| {
            // A leading 1: a UID component must not start with 0.
            let uid = format!("2.25.1{}{}{:06}", tag_digits(tag), std::process::id(), i);
            let mut obj = original.clone();
            obj.put_str(tags::SOP_INSTANCE_UID, dicom_core::VR::UI, uid.clone());
            obj.put_str(tags::STUDY_INSTANCE_UID, dicom_core::VR::UI, study_uid);
            obj.update_meta(|m| m.media_storage_sop_instance_uid = uid.clone());
            let path = dir.join(format!("{tag}_{i:04}.dcm"));
            obj.write_to_file(&path).expect("write copy");
            (path, uid)
        })
        .collect()
}

fn tag_digits(tag: &str) -> String {
    tag.bytes().map(|b| (b % 10).to_string()).collect()
}

pub async fn count(db: &PgPool, sql: &str) -> i64 {
    sqlx::query(sql).fetch_one(db).await.expect(sql).try_get::<i64, _>(0).unwrap()
}

/// Waits (up to 10 s) until `sql`, a `SELECT count(*)`, returns `expected`,
/// and panics with the last count otherwise. For rows the daemon writes after
/// it has answered the peer (an audited rejection), which a test can look for
/// before they land.
pub async fn wait_for_count(db: &PgPool, sql: &str, expected: i64) {
    let start = Instant::now();
    loop {
        let found = count(db, sql).await;
        if found == expected {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{sql}: expected {expected}, found {found}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to 60 s) until a daemon on `port` answers C-ECHO.
pub async fn wait_for_echo(port: u16) {
    wait_until(Duration::from_secs(60), "the daemon to answer C-ECHO", || answers_echo(port)).await;
}

/// Whether a daemon on `port` answers C-ECHO now (echoscu).
pub async fn answers_echo(port: u16) -> bool {
    let args = ["-aet", "PACS", "-aec", AE, "127.0.0.1", &port.to_string()].iter().map(|s| s.to_string()).collect();
    dcmtk("echoscu", args).await.status.success()
}

/// Files in the spool (not in tmp/).
pub fn spool_files(spool: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(spool)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn temp_files(spool: &Path) -> usize {
    std::fs::read_dir(spool.join("tmp")).map(|d| d.count()).unwrap_or(0)
}

/// A raw DIMSE client (dicom-ul, blocking) for inputs dcmtk refuses to send.
pub struct RawScu {
    pub association: dicom_ul::ClientAssociation<std::net::TcpStream>,
    pub pc_id: u8,
    next_id: u16,
}

impl RawScu {
    pub fn connect(addr: SocketAddr, sop_class: &str, transfer_syntax: &str) -> RawScu {
        let association = ClientAssociationOptions::new()
            .calling_ae_title("RAWSCU")
            .called_ae_title(AE)
            .with_presentation_context(sop_class, vec![transfer_syntax])
            .max_pdu_length(16384)
            .read_timeout(Duration::from_secs(30))
            .establish(addr)
            .expect("association");
        let pc_id = association.presentation_contexts()[0].id;
        RawScu { association, pc_id, next_id: 1 }
    }

    /// Sends the command and the first `chunks_to_send` 8 KiB chunks of the data set
    /// (all of it when None), and for a complete send returns the response status.
    pub fn store(
        &mut self,
        sop_class: &str,
        sop_instance: &str,
        data: &[u8],
        chunks_to_send: Option<usize>,
    ) -> Option<u16> {
        let id = self.next_id;
        self.next_id += 1;
        let command = dimse::store_request(id, sop_class, sop_instance);
        self.association
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: self.pc_id,
                    value_type: PDataValueType::Command,
                    is_last: true,
                    data: command,
                }],
            })
            .unwrap();
        let chunks: Vec<&[u8]> = data.chunks(8192).collect();
        let limit = chunks_to_send.unwrap_or(chunks.len());
        for (i, chunk) in chunks.iter().enumerate().take(limit) {
            self.association
                .send(&Pdu::PData {
                    data: vec![PDataValue {
                        presentation_context_id: self.pc_id,
                        value_type: PDataValueType::Data,
                        is_last: i + 1 == chunks.len(),
                        data: chunk.to_vec(),
                    }],
                })
                .unwrap();
        }
        if limit < chunks.len() {
            return None;
        }
        match self.association.receive().unwrap() {
            Pdu::PData { data } => Some(dimse::response_status(&data[0].data).unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The data set of a file (without preamble and meta group), in Explicit VR Little Endian.
pub fn data_set_bytes(obj: &InMemDicomObject) -> Vec<u8> {
    let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    let mut bytes = Vec::new();
    obj.write_dataset_with_ts(&mut bytes, &ts).unwrap();
    bytes
}

/// The real binary started by [`spawn_daemon`] (derefs to its [`Child`]),
/// killed with SIGKILL when dropped, so that a failing test leaves no daemon
/// behind.
///
/// [`Child`]: std::process::Child
pub struct Daemon {
    child: std::process::Child,
    log: PathBuf,
    /// Where this run's output starts in `log` (a restart appends to it).
    log_start: u64,
}

impl Daemon {
    /// Waits (up to 60 s) until this run reports the DICOM address it bound
    /// in its log and answers C-ECHO there; returns that address. A daemon
    /// that exits first fails the test with its log.
    pub async fn answering(&mut self) -> SocketAddr {
        let mut address = None;
        wait_until(Duration::from_secs(60), "the daemon to answer C-ECHO", || {
            if let Some(status) = self.child.try_wait().unwrap() {
                let output = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("cxr-ledd exited ({status}) instead of answering C-ECHO:\n{output}");
            }
            address = address.or_else(|| self.reported(cxr_led_test_kit::ports::DICOM_LISTENING));
            async move {
                match address {
                    Some(address) => answers_echo(address.port()).await,
                    None => false,
                }
            }
        })
        .await;
        address.expect("answered on a reported address")
    }

    /// The address this run reported for `message` (e.g.
    /// `cxr_led_test_kit::ports::HTTP_LISTENING`), once it has.
    pub fn reported(&self, message: &str) -> Option<SocketAddr> {
        cxr_led_test_kit::ports::reported_address(&self.log, self.log_start, message)
    }

    /// SIGKILL and reap.
    pub fn kill_and_reap(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl std::ops::Deref for Daemon {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.child
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.child
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// Starts the real `cxr-ledd run --config <config>`, its output appended to
/// `log` (tests only: examples that include this module have no binary path).
#[cfg(test)]
pub fn spawn_daemon(config: &Path, log: &Path) -> Daemon {
    spawn_daemon_with(config, log, &[])
}

/// [`spawn_daemon`] with extra environment variables.
#[cfg(test)]
pub fn spawn_daemon_with(config: &Path, log: &Path, env: &[(&str, &str)]) -> Daemon {
    let log_start = std::fs::metadata(log).map_or(0, |m| m.len());
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_cxr-ledd"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::from(file.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(file))
        .spawn()
        .expect("start cxr-ledd");
    Daemon { child, log: log.to_path_buf(), log_start }
}

/// What a derived instance of the tiny bundle records, with the given UIDs
/// (a score of 0.2 under a hold threshold of 0.5: delivered, not held).
pub fn tiny_provenance(derived_sop_instance_uid: String, derived_series_instance_uid: String) -> Provenance {
    Provenance {
        derived_sop_instance_uid,
        derived_series_instance_uid,
        model_name: "led-tiny".into(),
        model_version: "0.1.0".into(),
        bundle_sha256: "ab".repeat(32),
        t0: 200,
        steps: 10,
        precision: "f32".into(),
        device: "cpu".into(),
        score: 0.2,
        score_components: vec![("consistency".into(), 0.2)],
        hold_threshold: 0.5,
        software_version: env!("CARGO_PKG_VERSION").into(),
        created: chrono::Utc::now(),
    }
}
