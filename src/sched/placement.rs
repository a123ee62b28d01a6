//! Identifiers and errors shared by every group policy.

use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

/// Names one engine placed in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EngineId(pub u64);

impl EngineId {
    pub fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        EngineId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

#[derive(Debug, Error)]
pub enum GroupError {
    #[error("group '{group}': cannot start thread: {source}")]
    Spawn {
        group: String,
        source: std::io::Error,
    },
    #[error("group '{0}' has no threads")]
    NoThreads(String),
    #[error("engine {0:?} is not in group '{1}'")]
    UnknownEngine(EngineId, String),
    #[error("group '{0}' is stopped")]
    Stopped(String),
}
