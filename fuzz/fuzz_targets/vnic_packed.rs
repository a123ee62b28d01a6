//! A vNIC queue pair on packed virtqueues: descriptor-chain walking, guest
//! TX and guest RX against a fuzzed guest memory, ring and feature set.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| snapnet_fuzz::guest::run(data, true));
