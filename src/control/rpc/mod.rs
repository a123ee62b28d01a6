//! The control API: JSON-RPC 2.0 over a unix socket, one request or batch per
//! line. `protocol` is the envelope and error codes, `methods` the calls,
//! `server` the socket, `client` what `snapnet ctl` uses.

pub mod client;
pub mod methods;
pub mod protocol;
pub mod server;

pub use methods::{Context, UpgradeFailure, UpgradeHook, METHODS};
pub use protocol::RpcError;
