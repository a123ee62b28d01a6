//! Pony Express (docs/pony.md): reliable messages and one-sided operations
//! for host applications, carried between hosts' Pony engines over the
//! uplink. The operation layer (`apps.rs`, `ops.rs`) sits on the flow layer
//! (`flow.rs`, `swift.rs`); the engine (`engine.rs`) runs both in an engine
//! group; applications attach through `server.rs`.

pub mod apps;
pub mod config;
pub mod engine;
pub mod flow;
pub mod frames;
mod neighbour;
mod ops;
pub mod region;
pub mod rx_area;
pub mod server;
pub mod status;
pub mod swift;

pub use config::PonyConfig;
pub use engine::{PonyEngine, PonySetup};
pub use server::PonyServer;
pub use status::PonyStatus;
