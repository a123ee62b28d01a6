//! The overlay directory in etcd (docs/directory.md): each host publishes
//! its guests' MACs under a lease it keeps alive, and follows everyone
//! else's to program its overlay uplink, so that hosts find each other's
//! guests without anyone writing every host's table.
//!
//! Rooms below: `uplink` (the overlay table this programs). The daemon
//! (`control`) starts it, tells it local changes, and gives it the function
//! that programs the uplink.

mod config;
mod keys;
mod local;
mod programmer;
mod session;
mod status;
mod table;

pub use config::DirectoryConfig;
pub use keys::{HostValue, Key, MacValue};
pub use local::LocalEntries;
pub use programmer::Program;
pub use session::{Directory, PublishError, Snapshot};
pub use status::{Counters, State, StatusReport};
pub use table::{Applied, DirectoryTable, ThisHost};
