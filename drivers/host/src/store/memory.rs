//! [`MemoryStore`]: the store as a map in memory.

use std::collections::BTreeMap;

use peerlink_core::durable::StoreOp;

use super::{CommitStats, Entries, Limits, Store, StoreFailure, StoreUsage};

/// A store in memory: a `BTreeMap`, atomic and bounded like the file store, gone with the
/// process. What `[storage] kind = "memory"` (and `Config::default()`) uses, and what tests use.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    usage: StoreUsage,
    limits: Limits,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store without bounds.
    pub fn new() -> Self {
        Self::with_limits(Limits::NONE)
    }

    /// An empty store with bounds.
    pub fn with_limits(limits: Limits) -> Self {
        MemoryStore { map: BTreeMap::new(), usage: StoreUsage::default(), limits }
    }

    /// The value `key` holds (for tests).
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }
}

impl Store for MemoryStore {
    fn load(&mut self) -> Result<Entries, StoreFailure> {
        Ok(self.map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn commit(&mut self, ops: Vec<StoreOp>) -> Result<CommitStats, StoreFailure> {
        let map = &self.map;
        let after = super::usage_after(self.usage, &ops, self.limits, |k| {
            Ok::<_, std::convert::Infallible>(map.get(k).map(|v| v.len() as u64))
        });
        let usage = match after {
            Ok(Ok(usage)) => usage,
            Ok(Err(reason)) => return Err(StoreFailure::Full { path: None, reason }),
            Err(never) => match never {},
        };
        let stats =
            CommitStats { ops: ops.len(), bytes_written: super::bytes_written(&ops), fsyncs: 0 };
        for op in ops {
            match op {
                StoreOp::Put { key, value } => {
                    self.map.insert(key, value);
                }
                StoreOp::Delete { key } => {
                    self.map.remove(&key);
                }
            }
        }
        self.usage = usage;
        Ok(stats)
    }

    fn usage(&self) -> StoreUsage {
        self.usage
    }
}
