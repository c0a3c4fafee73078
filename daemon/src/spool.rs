//! The durable spool: received data sets are streamed to `tmp/`, fsynced,
//! renamed into the spool folder and the folder is fsynced, so a file that
//! carries a spool name is complete and on disk.
//!
//! File names never come from the peer: an instance is stored as
//! `<sha256 of its SOP Instance UID>.dcm`, a Part 10 file (preamble, file meta
//! group written by us, then the data set bytes exactly as received).

use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// Sub-folder of the spool that holds files being received.
pub const TMP_DIR: &str = "tmp";
/// Suffix of a spooled instance.
pub const SUFFIX: &str = ".dcm";

/// A spool folder on a local file system.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
}

/// A file being received into `tmp/`; [`Spool::commit`] moves it into the
/// spool. Blocking I/O: it is written from the thread that receives its data
/// set (`ingest::receive`), never from an async task.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    file: std::fs::File,
    written: u64,
    synced: bool,
}

impl TempFile {
    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_pieces(&[bytes])
    }

    /// Appends the pieces in order, in as few system calls as the kernel
    /// allows (the PDUs of a data set arrive as separate buffers; gathering
    /// them would copy every byte once more).
    pub fn write_pieces<B: AsRef<[u8]>>(&mut self, pieces: &[B]) -> std::io::Result<()> {
        let mut slices: Vec<IoSlice> = pieces.iter().map(|piece| IoSlice::new(piece.as_ref())).collect();
        let mut left = &mut slices[..];
        // Empty pieces at the front would read as a write of nothing.
        IoSlice::advance_slices(&mut left, 0);
        while !left.is_empty() {
            match self.file.write_vectored(left) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n as u64;
                    IoSlice::advance_slices(&mut left, n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.synced = false;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.written
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fsyncs the file's data and metadata.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        self.synced = true;
        Ok(())
    }

    /// Deletes the file (best effort: a leftover is removed at the next start).
    pub fn discard(self) {
        drop(self.file);
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove temporary file");
        }
    }
}

/// Fsyncs a folder, so that the names created or removed in it are on disk.
fn fsync_folder(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Spool {
    /// Opens (creating if needed) the spool folder and its `tmp/`.
    pub fn open(dir: &Path) -> std::io::Result<Spool> {
        let tmp = dir.join(TMP_DIR);
        std::fs::create_dir_all(&tmp)?;
        Ok(Spool { dir: dir.to_path_buf(), tmp, counter: AtomicU64::new(0) })
    }

    /// The spool folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The spool file name of an instance: never derived from the UID's characters.
    pub fn file_name(sop_instance_uid: &str) -> String {
        let digest = Sha256::digest(sop_instance_uid.as_bytes());
        format!("{}{SUFFIX}", hex::encode(digest))
    }

    /// The full path of a spool file name.
    pub fn path_of(&self, file_name: &str) -> PathBuf {
        self.dir.join(file_name)
    }

    /// Creates a new, empty temporary file (blocking).
    pub fn create_temp(&self) -> std::io::Result<TempFile> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let path = self.tmp.join(format!("{}-{nanos}-{n}.part", std::process::id()));
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        Ok(TempFile { path, file, written: 0, synced: false })
    }

    /// Fsyncs a temporary file (unless it was already), renames it to
    /// `file_name` in the spool and fsyncs the spool folder, on one blocking
    /// thread. An existing file of that name is replaced.
    pub async fn commit(&self, temp: TempFile, file_name: &str) -> std::io::Result<PathBuf> {
        let target = self.dir.join(file_name);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut temp = temp;
            if !temp.synced {
                if let Err(e) = temp.sync() {
                    temp.discard();
                    return Err(e);
                }
            }
            let TempFile { path, file, .. } = temp;
            drop(file);
            if let Err(e) = std::fs::rename(&path, &target) {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
            fsync_folder(&dir)?;
            Ok(target)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Removes a spooled file (after a failed database insert) and fsyncs the folder.
    pub async fn remove(&self, file_name: &str) -> std::io::Result<()> {
        match tokio::fs::remove_file(self.dir.join(file_name)).await {
            Ok(()) => self.sync_dir().await,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn sync_dir(&self) -> std::io::Result<()> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || fsync_folder(&dir)).await.map_err(std::io::Error::other)?
    }

    /// Deletes every leftover in `tmp/` (data sets whose C-STORE never got Success).
    pub fn clean_temp(&self) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The names of all spooled instance files.
    pub fn list(&self) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type()?.is_file() && name.ends_with(SUFFIX) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_name_is_hashed() {
        let name = Spool::file_name("../../etc/passwd");
        assert!(name.ends_with(SUFFIX));
        assert_eq!(name.len(), 64 + SUFFIX.len());
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'));
    }

    #[tokio::test]
    async fn commit_moves_and_clean_temp_removes_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut t = spool.create_temp().unwrap();
        t.write(b"hel").unwrap();
        t.write_pieces(&[b"l".to_vec(), Vec::new(), b"o".to_vec()]).unwrap();
        assert_eq!(t.len(), 5);
        let name = Spool::file_name("1.2.3");
        let path = spool.commit(t, &name).await.unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"hello");
        let mut leftover = spool.create_temp().unwrap();
        leftover.write(b"partial").unwrap();
        drop(leftover);
        assert_eq!(spool.clean_temp().unwrap(), 1);
        assert_eq!(spool.list().unwrap(), vec![name.clone()]);
        spool.remove(&name).await.unwrap();
        assert!(spool.list().unwrap().is_empty());
    }
}
