//! The durable spool: received data sets are streamed to `tmp/`, fsynced,
//! renamed into the spool folder and the folder is fsynced, so a file that
//! carries a spool name is complete and on disk.
//!
//! File names never come from the peer: an instance is stored as
//! `<sha256 of its SOP Instance UID>.dcm`, a Part 10 file (preamble, file meta
//! group written by us, then the data set bytes exactly as received).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Sub-folder of the spool that holds files being received.
pub const TMP_DIR: &str = "tmp";
/// Write buffer of a file being received.
const WRITE_BUFFER: usize = 1 << 20;
/// Suffix of a spooled instance.
pub const SUFFIX: &str = ".dcm";

/// A spool folder on a local file system.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
}

/// A file being received into `tmp/`; [`Spool::commit`] moves it into the spool.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    /// Buffered: PDUs arrive in pieces of at most max-pdu-length bytes, and
    /// each write to a tokio file is a hop to the blocking pool.
    file: tokio::io::BufWriter<tokio::fs::File>,
    written: u64,
}

impl TempFile {
    /// Appends bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes).await?;
        self.written += bytes.len() as u64;
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

    /// Flushes buffered writes to the file (no fsync).
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush().await
    }

    /// Flushes and fsyncs the file's data and metadata.
    pub async fn sync(&mut self) -> std::io::Result<()> {
        self.file.flush().await?;
        self.file.get_ref().sync_all().await
    }

    /// Deletes the file (best effort: a leftover is removed at the next start).
    pub async fn discard(self) {
        drop(self.file);
        if let Err(e) = tokio::fs::remove_file(&self.path).await {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove temporary file");
        }
    }
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

    /// Creates a new, empty temporary file.
    pub async fn create_temp(&self) -> std::io::Result<TempFile> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let path = self.tmp.join(format!("{}-{nanos}-{n}.part", std::process::id()));
        let file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(&path).await?;
        Ok(TempFile { path, file: tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file), written: 0 })
    }

    /// Fsyncs a temporary file, renames it to `file_name` in the spool and
    /// fsyncs the spool folder. An existing file of that name is replaced.
    pub async fn commit(&self, mut temp: TempFile, file_name: &str) -> std::io::Result<PathBuf> {
        if let Err(e) = temp.sync().await {
            temp.discard().await;
            return Err(e);
        }
        let TempFile { path, file, .. } = temp;
        drop(file);
        let target = self.dir.join(file_name);
        if let Err(e) = tokio::fs::rename(&path, &target).await {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        self.sync_dir().await?;
        Ok(target)
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
        tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
            .await
            .map_err(std::io::Error::other)?
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
        let mut t = spool.create_temp().await.unwrap();
        t.write(b"hello").await.unwrap();
        let name = Spool::file_name("1.2.3");
        let path = spool.commit(t, &name).await.unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"hello");
        let mut leftover = spool.create_temp().await.unwrap();
        leftover.write(b"partial").await.unwrap();
        drop(leftover);
        assert_eq!(spool.clean_temp().unwrap(), 1);
        assert_eq!(spool.list().unwrap(), vec![name.clone()]);
        spool.remove(&name).await.unwrap();
        assert!(spool.list().unwrap().is_empty());
    }
}
