//! Engine groups: where engines run, and whether their threads may sleep.

pub mod group;
mod placement;

pub use group::{EngineGroup, Policy};
pub use placement::{EngineId, GroupError};
