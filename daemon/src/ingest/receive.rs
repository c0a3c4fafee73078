//! One data set on its way in: its bytes go, a batch at a time as the PDUs
//! deliver them, to a blocking thread that appends them to the temporary
//! file and walks their structure ([`check`]) in the same pass. When the
//! last byte has arrived the data set is already written and checked, never
//! read back; the thread then reads its identity from the file's head and
//! fsyncs the file while `store` looks the instance up in the database.
//!
//! The queue to the thread is bounded, so a thread that falls behind slows
//! its association (TCP backpressure) instead of holding its data in memory.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cxr_led_dicom::dimse::{status, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::check::{self, Identity};
use crate::spool::{Spool, TempFile};

/// Bytes handed to the thread at once: one wake-up per batch, not per PDU.
const BATCH_BYTES: usize = 1 << 20;
/// Batches waiting for the thread. With the one being built and the one
/// being written, about 3 MiB of a data set wait in memory at most.
const QUEUED_BATCHES: usize = 1;

/// A failure status and its Error Comment.
pub type Failure = (u16, String);

/// A data set received, checked and fsynced in `tmp/`, with its identity.
#[derive(Debug)]
pub struct Received {
    /// The file: preamble, our file meta group, the data set as received.
    pub file: TempFile,
    /// What the data set says it is (equal to the request).
    pub identity: Identity,
}

/// The receiving side of one data set; [`Incoming::finish`] or
/// [`Incoming::abandon`] ends it (dropped otherwise, its file is removed).
#[derive(Debug)]
pub struct Incoming {
    batches: Option<mpsc::Sender<Vec<Vec<u8>>>>,
    batch: Vec<Vec<u8>>,
    batch_bytes: usize,
    abandoned: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Received, Failure>>>,
}

impl Incoming {
    /// Starts the thread: it creates the temporary file in `spool` and
    /// writes `file_head` (preamble and file meta group) before the data set.
    pub fn start(
        spool: Arc<Spool>,
        file_head: Vec<u8>,
        transfer_syntax: String,
        command: Command,
        max_data_set_bytes: u64,
    ) -> Incoming {
        let (sender, batches) = mpsc::channel(QUEUED_BATCHES);
        let abandoned = Arc::new(AtomicBool::new(false));
        let stop = abandoned.clone();
        let thread = tokio::task::spawn_blocking(move || {
            let mut file =
                spool.create_temp().map_err(|e| out_of_resources(format!("spool file creation failed: {e}")))?;
            match receive(&mut file, &file_head, batches, &stop, &transfer_syntax, &command, max_data_set_bytes) {
                Ok(identity) => Ok(Received { file, identity }),
                Err(failure) => {
                    file.discard();
                    Err(failure)
                }
            }
        });
        Incoming { batches: Some(sender), batch: Vec::new(), batch_bytes: 0, abandoned, thread: Some(thread) }
    }

    /// Takes the next piece of the data set (a PDU's value, moved, not copied).
    pub async fn push(&mut self, bytes: Vec<u8>) {
        if self.batches.is_none() {
            return; // the thread has stopped on a failure
        }
        self.batch_bytes += bytes.len();
        self.batch.push(bytes);
        if self.batch_bytes >= BATCH_BYTES {
            self.hand_over().await;
        }
    }

    async fn hand_over(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        if let Some(batches) = &self.batches {
            // The thread has stopped on a failure: what is left is dropped
            // (`finish` returns the failure).
            if batches.send(batch).await.is_err() {
                self.batches = None;
            }
        }
    }

    /// The last piece has arrived: waits until the data set is checked,
    /// its identity read and the file fsynced.
    pub async fn finish(mut self) -> Result<Received, Failure> {
        self.hand_over().await;
        self.batches = None;
        let thread = self.thread.take().expect("finished once");
        thread.await.map_err(|e| out_of_resources(format!("receiving thread failed: {e}")))?
    }

    /// The data set will not be completed: the thread removes the file; this
    /// waits until it has.
    pub async fn abandon(mut self) {
        self.abandoned.store(true, Ordering::Relaxed);
        self.batches = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.await;
        }
    }
}

impl Drop for Incoming {
    /// An association task ended without `finish` (shutdown): the thread
    /// stops and removes the file on its own.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.abandoned.store(true, Ordering::Relaxed);
        }
    }
}

/// The thread's work: write the head, then write and walk every batch as it
/// comes, then read the identity and fsync.
fn receive(
    file: &mut TempFile,
    file_head: &[u8],
    batches: mpsc::Receiver<Vec<Vec<u8>>>,
    abandoned: &AtomicBool,
    transfer_syntax: &str,
    command: &Command,
    max_data_set_bytes: u64,
) -> Result<Identity, Failure> {
    let write_failed = |e: std::io::Error| out_of_resources(format!("spool write failed: {e}"));
    file.write(file_head).map_err(write_failed)?;
    let mut tee = Tee { batches, abandoned, file, pieces: VecDeque::new(), offset: 0, write_error: None };
    let walked = check::check_structure(&mut tee, transfer_syntax, max_data_set_bytes);
    // The walk ends where the data set does, but a deflated stream may end
    // before its input: whatever trails it is stored as received too.
    let drained = walked.and_then(|()| {
        std::io::copy(&mut tee, &mut std::io::sink())
            .map(drop)
            .map_err(|e| out_of_resources(format!("cannot read the data set: {e}")))
    });
    if abandoned.load(Ordering::Relaxed) {
        return Err(out_of_resources("the data set was not completed".to_string()));
    }
    // A failed write makes the walk fail too; the write is the reason.
    if let Some(e) = tee.write_error.take() {
        return Err(write_failed(e));
    }
    drained?;
    let identity = check::identity(file.path(), command)?;
    file.sync().map_err(|e| out_of_resources(format!("spool fsync failed: {e}")))?;
    Ok(identity)
}

fn out_of_resources(why: String) -> Failure {
    (status::OUT_OF_RESOURCES, why)
}

/// Reads the batches as they arrive, writing each to the file before the
/// walk sees its first byte; ends when the sender is done.
struct Tee<'a> {
    batches: mpsc::Receiver<Vec<Vec<u8>>>,
    abandoned: &'a AtomicBool,
    file: &'a mut TempFile,
    pieces: VecDeque<Vec<u8>>,
    /// How far the front piece has been read.
    offset: usize,
    write_error: Option<std::io::Error>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(piece) = self.pieces.front() {
                if self.offset < piece.len() {
                    let n = buf.len().min(piece.len() - self.offset);
                    buf[..n].copy_from_slice(&piece[self.offset..self.offset + n]);
                    self.offset += n;
                    return Ok(n);
                }
                self.pieces.pop_front();
                self.offset = 0;
                continue;
            }
            let Some(batch) = self.batches.blocking_recv() else {
                return Ok(0);
            };
            if self.abandoned.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("the data set was not completed"));
            }
            if let Err(e) = self.file.write_pieces(&batch) {
                let kind = e.kind();
                self.write_error = Some(e);
                return Err(std::io::Error::new(kind, "spool write failed"));
            }
            self.pieces = batch.into();
        }
    }
}
