//! [`StoreWriter`]: a store on a thread of its own, awaited from any executor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use peerlink_core::durable::StoreOp;

use super::{CommitStats, Store, StoreFailure, StoreUsage};

/// Batches waiting for the store thread; a node task that commits faster than the disk waits.
const QUEUE: usize = 4;

/// Where the answer to a batch handed over with [`StoreWriter::submit`] comes: once, when the
/// batch is durable or refused (closed without an answer if the thread died).
pub type CommitAnswer = async_channel::Receiver<Result<CommitStats, StoreFailure>>;

/// One batch and where its answer goes.
struct Request {
    ops: Vec<StoreOp>,
    reply: async_channel::Sender<Result<CommitStats, StoreFailure>>,
}

/// The async front of a [`Store`]: a dedicated thread (`peerlink-store`) owns the store and
/// applies one batch at a time; [`commit`](Self::commit) sends it a batch and awaits its answer
/// over `async-channel`, so it works on smol, tokio or any other executor, and blocks none of
/// their threads on the disk.
///
/// Read the store ([`Store::load`]) before handing it over. Dropping the writer ends the
/// thread once the batches already queued are done, and closes the store (which, with
/// [`Fsync::Never`](crate::config::Fsync::Never), flushes it);
/// [`close`](Self::close) does the same and waits for it.
pub struct StoreWriter {
    requests: async_channel::Sender<Request>,
    done: async_channel::Receiver<Result<(), StoreFailure>>,
    usage: Arc<Usage>,
}

/// The store's usage after its last commit, shared with the thread.
#[derive(Default)]
struct Usage {
    entries: AtomicU64,
    bytes: AtomicU64,
}

impl Usage {
    fn set(&self, usage: StoreUsage) {
        self.entries.store(usage.entries, Ordering::Relaxed);
        self.bytes.store(usage.bytes, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWriter").field("usage", &self.usage()).finish_non_exhaustive()
    }
}

impl StoreWriter {
    /// Starts the `peerlink-store` thread that owns `store`. Fails only if the OS cannot start
    /// a thread.
    pub fn spawn(store: Box<dyn Store>) -> std::io::Result<StoreWriter> {
        let (requests, inbox) = async_channel::bounded::<Request>(QUEUE);
        let (done_tx, done) = async_channel::bounded(1);
        let usage = Arc::new(Usage::default());
        usage.set(store.usage());
        let shared = Arc::clone(&usage);
        std::thread::Builder::new().name("peerlink-store".to_owned()).spawn(move || {
            let mut store = store;
            while let Ok(Request { ops, reply }) = inbox.recv_blocking() {
                let result = store.commit(ops);
                shared.set(store.usage());
                // The committer may have stopped waiting; the batch is committed all the same.
                let _ = reply.try_send(result);
            }
            let _ = done_tx.try_send(store.close());
        })?;
        Ok(StoreWriter { requests, done, usage })
    }

    /// Applies `ops` in one transaction (see [`Store::commit`]) and returns once they are
    /// durable. Waits while the queue (4 batches) is full. A future dropped before it is
    /// done may still have its batch committed. An empty batch commits nothing.
    pub async fn commit(&self, ops: Vec<StoreOp>) -> Result<CommitStats, StoreFailure> {
        if ops.is_empty() {
            return Ok(CommitStats::default());
        }
        self.submit(ops).await?.recv().await.map_err(|_| StoreFailure::Stopped)?
    }

    /// Hands `ops` to the store thread, to be applied in one transaction after the batches
    /// handed before, and returns where its answer will come (what [`commit`](Self::commit)
    /// awaits): the caller goes on meanwhile. Waits only while the queue is full.
    pub async fn submit(&self, ops: Vec<StoreOp>) -> Result<CommitAnswer, StoreFailure> {
        let (reply, answer) = async_channel::bounded(1);
        self.requests.send(Request { ops, reply }).await.map_err(|_| StoreFailure::Stopped)?;
        Ok(answer)
    }

    /// What the store held after its last commit.
    pub fn usage(&self) -> StoreUsage {
        StoreUsage {
            entries: self.usage.entries.load(Ordering::Relaxed),
            bytes: self.usage.bytes.load(Ordering::Relaxed),
        }
    }

    /// Ends the thread once the queued batches are done, closes the store (releasing its file,
    /// so it can be opened again at once) and returns its error closing, if any.
    pub async fn close(self) -> Result<(), StoreFailure> {
        self.requests.close();
        self.done.recv().await.map_err(|_| StoreFailure::Stopped)?
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        // The thread finishes the queued batches and closes the store on its own.
        self.requests.close();
    }
}
