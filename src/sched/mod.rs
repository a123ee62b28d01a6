//! Engine groups: where engines run, and whether their threads may sleep.

mod clock;
mod compact;
pub mod group;
mod placement;
pub mod stats;

pub use group::{EngineGroup, Policy};
pub use placement::{EngineId, GroupError};
