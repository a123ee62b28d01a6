//! Frames and how they move: the frame pool (also the AF_XDP UMEM), move-only
//! frame handles with offload metadata, SPSC links between engines, and GSO
//! segmentation. The wire formats themselves are the `snapnet_wire` crate's.

pub mod fast_hash;
pub mod frame;
pub mod link;
pub mod pool;
pub mod pool_memory;
pub mod prefetch;
pub mod segment;
pub mod umem_loans;

pub use frame::{FrameHandle, Offload};
pub use link::{link, LinkBatch, LinkRx, LinkTx};
pub use pool::{FrameCache, FramePool, PoolConfig, PoolError};
pub use umem_loans::UmemLoans;
