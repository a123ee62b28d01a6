//! Engine groups: where engines run, and whether their threads may sleep.

pub(crate) mod clock;
mod coalesce;
mod compact;
mod cpu_share;
pub mod group;
mod nap;
mod os;
mod placement;
pub mod stats;
mod worker;

pub use group::{EngineGroup, Policy};
pub use placement::{EngineId, GroupError};
