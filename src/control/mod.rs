//! The control side: configuration and building the daemon from it.

pub mod background;
pub mod config;
pub mod daemon;
pub mod directory_start;
pub mod metrics;
pub mod pool_sizing;
pub mod rpc;
pub mod signals;
pub mod socket_group;
pub mod socket_path;
pub mod systemd;
pub mod upgrade_process;

pub use config::{Config, ConfigError};
pub use daemon::{Daemon, DaemonError};
