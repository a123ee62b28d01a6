//! Engine groups: where engines run. This scheduler is the dedicated
//! policy (pinned busy-polling threads); spreading and compacting come later
//! behind the same `EngineGroup` surface.

pub mod dedicated;
mod placement;

pub use dedicated::DedicatedGroup;
pub use placement::{EngineId, GroupError};
