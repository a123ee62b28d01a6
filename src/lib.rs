//! snapnet: a userspace host-networking daemon for virtual machines, after Google's Snap.
//!
//! Where a packet goes, by module: a guest's `vnic` engine copies it from the
//! guest's TX ring into a `packet` frame, hands the frame over a `packet::link` to
//! the `switch` engine, which hands it to another vNIC engine (or the uplink) that
//! copies it into the receiving guest's RX ring. Engines are `engine::Engine`s
//! scheduled by `sched`; the `control` module builds them from the config.

pub mod control;
pub mod directory;
pub mod engine;
pub mod packet;
pub mod pony;
pub mod sched;
pub mod shaping;
pub mod switch;
pub mod upgrade;
pub mod uplink;
pub mod vnic;

/// The version this build reports (status, logs, an upgrade's hello): the
/// package's, or `SNAPNET_VERSION` at build time. The test suite builds a
/// second binary with another one, to upgrade between two versions
/// (scripts/test-all.sh, tests/upgrade.rs).
pub const VERSION: &str = match option_env!("SNAPNET_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// The git revision this build came from (`build.rs`; "unknown" when built
/// outside a git checkout).
pub const GIT_REVISION: &str = env!("SNAPNET_GIT_REVISION");

/// `VERSION (git GIT_REVISION)`, what `snapnet --version` prints.
pub const VERSION_LINE: &str = env!("SNAPNET_VERSION_LINE");
