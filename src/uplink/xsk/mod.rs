//! A small AF_XDP socket layer of our own: the rings, and a socket whose UMEM
//! is the frame pool. (`afxdp` is unmaintained and reports raw errno;
//! `xdpilone` is EUPL-licensed; `xsk-rs` allocates its own UMEM, while the
//! point here is that the UMEM *is* snapnet's pool.)

pub mod ring;
pub mod socket;

pub use socket::{BindMode, RingSizes, UmemArea, XskError, XskKernelStats, XskSocket};
