//! JSON-RPC requests into a running daemon whose namespace has a `lo` that
//! uplinks can attach to (`snapnet_fuzz::rpc`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| snapnet_fuzz::rpc::run(data, snapnet_fuzz::rpc::Interfaces::Loopback));
