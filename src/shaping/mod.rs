//! Shaping: rate limits as passive token buckets, and the timer that wakes
//! an engine when a bucket it waits on has refilled (the Firecracker
//! rate-limiter design: the bucket never blocks, the engine's own event loop
//! waits on the timer fd).

pub mod cost;
pub mod shared;
pub mod timer;
pub mod token_bucket;

pub use cost::Cost;
pub use shared::{SharedBucket, VnicShaping};
pub use timer::WakeTimer;
pub use token_bucket::{RateLimit, TokenBucket};
