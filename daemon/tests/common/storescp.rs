//! dcmtk's `storescp` as the PACS of the delivery and pipeline tests.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dicom_dictionary_std::tags;

/// A storescp child process storing into `dir`, killed and reaped when dropped.
pub struct StoreScp {
    child: Child,
    dir: PathBuf,
    /// The folder's owner when storescp made its own (dropped with it).
    _temp: Option<tempfile::TempDir>,
}

impl StoreScp {
    /// storescp as `ae_title` on `port`, storing into a folder of its own.
    pub fn start(ae_title: &str, port: u16, extra: &[&str]) -> StoreScp {
        let temp = tempfile::tempdir().unwrap();
        let mut scp = StoreScp::start_in(ae_title, port, temp.path(), extra);
        scp._temp = Some(temp);
        scp
    }

    /// storescp as `ae_title` on `port`, storing into `dir` (created when
    /// missing), with `extra` options; returns once it accepts connections.
    pub fn start_in(ae_title: &str, port: u16, dir: &Path, extra: &[&str]) -> StoreScp {
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new("storescp")
            .args(["-aet", ae_title, "-od"])
            .arg(dir)
            .args(extra)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("storescp runs (is dcmtk installed?)");
        // From here on, dropping the handle kills and reaps the process.
        let scp = StoreScp { child, dir: dir.to_path_buf(), _temp: None };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..200 {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return scp;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("storescp did not start listening on {port}");
    }

    /// The received files (storescp names them `<modality>.<SOP Instance UID>`).
    pub fn files(&self) -> Vec<PathBuf> {
        received(&self.dir)
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The files a storescp stored into `dir`, sorted (none when it does not exist).
pub fn received(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// The SOP Instance UID of each received file, in the order of `files`.
pub fn sop_instance_uids(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|file| {
            let object = dicom_object::open_file(file).unwrap();
            object.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0').to_string()
        })
        .collect()
}
