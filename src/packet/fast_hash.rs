//! The hasher of the tables the packet path looks up per frame (forwarding
//! database, overlay, Pony's flows, connections and streams): folded
//! multiplies, as in foldhash, keyed with a random key chosen once per run.
//! std's SipHash costs more than the lookup itself on keys of one or two
//! words; an unkeyed fast hash would let a tenant pick MAC addresses that
//! collide and turn every lookup into a long probe.
//!
//! The key being secret is what keeps collisions out of a tenant's reach, so
//! it never leaves the process (no logging, no counters).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::OnceLock;

use snapnet_wire::MacAddr;

/// A hash map keyed with this run's key.
pub type FastMap<K, V> = HashMap<K, V, FastState>;
/// A hash set keyed with this run's key.
pub type FastSet<T> = HashSet<T, FastState>;

/// The finishing multiplier: odd, and dense in bits (digits of pi).
const FINISH: u64 = 0x082e_fa98_ec4e_6c89;

/// This run's key: random, chosen on first use.
fn run_key() -> [u64; 2] {
    static KEY: OnceLock<[u64; 2]> = OnceLock::new();
    *KEY.get_or_init(|| {
        // std seeds every RandomState from the OS's random source; two
        // SipHash outputs under that seed are as random as the seed.
        let s = RandomState::new();
        [s.hash_one(0u64), s.hash_one(1u64)]
    })
}

/// The high and low halves of the full product, xored: every bit of either
/// input reaches every bit of the result.
#[inline(always)]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Builds [`FastHasher`]s with this run's key (not `Debug`: the key stays
/// out of logs).
#[derive(Clone, Copy)]
pub struct FastState {
    key: [u64; 2],
}

impl Default for FastState {
    fn default() -> Self {
        Self { key: run_key() }
    }
}

impl BuildHasher for FastState {
    type Hasher = FastHasher;

    #[inline]
    fn build_hasher(&self) -> FastHasher {
        FastHasher {
            acc: self.key[0],
            key: self.key[1],
        }
    }
}

/// One folded multiply per word written, one more to finish.
pub struct FastHasher {
    acc: u64,
    key: u64,
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        // One folded multiply leaves structure when the keys are
        // neighbours (consecutive MACs): for about one run key in
        // twenty-five, some bucket got three times its share of 4096 such
        // keys (at worst 2598 of them in one of 256 buckets). A second one
        // spreads them like random keys (bucket from the low bits, tag from
        // the top seven, as hashbrown takes them).
        folded_multiply(self.acc, FINISH)
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.acc = folded_multiply(self.acc ^ v, self.key);
    }

    #[inline]
    fn write_u128(&mut self, v: u128) {
        // Both halves enter one multiply, each xored with a secret, so the
        // pair costs what one word does.
        self.acc = folded_multiply(self.acc ^ (v as u64), self.key ^ ((v >> 64) as u64));
    }

    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }

    #[inline]
    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v));
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            // The length goes in too, so a short tail differs from its zero
            // padding.
            self.write_u64(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 59));
        }
    }
}

/// A (virtual network, MAC address) table key as one word pair: one
/// multiply to hash, one compare to match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NetMac(u128);

impl NetMac {
    #[inline]
    pub fn new(network: u32, mac: MacAddr) -> Self {
        Self((u128::from(network) << 48) | u128::from(mac.to_u64()))
    }

    pub fn network(self) -> u32 {
        (self.0 >> 48) as u32
    }

    pub fn mac(self) -> MacAddr {
        let b = (self.0 as u64).to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

impl Hash for NetMac {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash<T: Hash>(s: &FastState, v: T) -> u64 {
        s.hash_one(v)
    }

    #[test]
    fn one_key_per_run_and_keys_change_the_hash() {
        let a = FastState::default();
        let b = FastState::default();
        let k = NetMac::new(7, MacAddr([0x52, 0x54, 0, 0, 0, 1]));
        assert_eq!(hash(&a, k), hash(&b, k), "one key for the whole run");
        assert_ne!(run_key(), [0, 0]);
        let other = FastState {
            key: [run_key()[0] ^ 1, run_key()[1]],
        };
        assert_ne!(hash(&a, k), hash(&other, k), "the key is in the hash");
    }

    #[test]
    fn neighbouring_keys_spread_over_buckets_and_tags() {
        // The run's key, and a key with which one folded multiply alone
        // put 328 of the 4096 keys in one of the 256 buckets.
        for s in [
            FastState::default(),
            FastState {
                key: [0xb901_f5cb_8487_49cb, 0x6e14_429b_7055_5598],
            },
        ] {
            spread(&s);
        }
    }

    fn spread(s: &FastState) {
        // A tenant's likely addresses: consecutive MACs in one network, and
        // one MAC in consecutive networks.
        for keys in [
            (0..4096u128)
                .map(|i| NetMac::new(1, NetMac(0x5254_0000_0000 + i).mac()))
                .collect::<Vec<_>>(),
            (0..4096u32)
                .map(|n| NetMac::new(n, MacAddr([2, 0, 0, 0, 0, 1])))
                .collect(),
        ] {
            let mut low = vec![0u32; 256];
            let mut top = vec![0u32; 128];
            for k in &keys {
                let h = hash(s, k);
                low[(h & 0xff) as usize] += 1;
                top[(h >> 57) as usize] += 1;
            }
            // 4096 keys: 16 per bucket and 32 per tag on average; the
            // bounds are ~7 standard deviations out (the key is random, the
            // test must not be flaky), yet a hash that ignored the varying
            // bits, or left them in a few buckets, fails them.
            assert!(low.iter().all(|&n| n <= 48), "{low:?}");
            assert!(top.iter().all(|&n| (4..=80).contains(&n)), "{top:?}");
        }
    }

    #[test]
    fn net_mac_round_trips_and_byte_writes_count_their_length() {
        let m = MacAddr([0xfe, 1, 2, 3, 4, 0xff]);
        let k = NetMac::new(0x00ff_ffff, m);
        assert_eq!((k.network(), k.mac()), (0x00ff_ffff, m));
        let s = FastState::default();
        let bytes = |b: &[u8]| {
            let mut h = s.build_hasher();
            h.write(b);
            h.finish()
        };
        assert_ne!(bytes(&[1]), bytes(&[1, 0]));
        assert_ne!(bytes(&[0; 8]), bytes(&[0; 9]));
    }
}
