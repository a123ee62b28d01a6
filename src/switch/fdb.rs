//! The forwarding database: (virtual network, MAC) -> port, with static
//! entries (a vNIC's configured MAC) that learning cannot move. Every lookup
//! and every learned address is scoped to one virtual network, so the same
//! MAC in two networks is two unrelated entries.
//!
//! Learning is bounded per port and network: a port may hold at most
//! [`FdbLimits::max_learned`] learned addresses in each network it carries,
//! so a flat uplink's wire (or a guest making up source addresses) fills
//! its own share and no other port's or network's. A learned entry lives
//! [`FdbLimits::max_age`] after the last frame from its address, as in a
//! Linux bridge; the switch advances the table's coarse clock once per poll
//! ([`Fdb::tick`]), so the packet path only compares two integers.
//!
//! The tables use the run-keyed hasher of `packet::fast_hash`: addresses
//! are chosen by tenants and the wire, and must not be able to collide on
//! purpose.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::PortId;
use crate::packet::fast_hash::{FastMap, NetMac};
use crate::sched::clock::{self, Stamp};
use snapnet_wire::MacAddr;

/// Entries the table has room for before it grows (growing happens only
/// while learning new addresses, bounded by the limits).
pub const DEFAULT_CAPACITY: usize = 8192;

/// How learning is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbLimits {
    /// Learned addresses one port may hold in one network; beyond it new
    /// addresses from that port are not learned (frames to them flood).
    pub max_learned: u32,
    /// How long a learned entry lives after the last frame from it.
    pub max_age: Duration,
}

impl Default for FdbLimits {
    fn default() -> Self {
        Self {
            max_learned: 4096,
            // Linux bridges' default ageing time.
            max_age: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub port: PortId,
    pub is_static: bool,
}

/// A live entry as it crosses to another process (an upgrade,
/// docs/upgrade.md): its port by name, since port ids are each process's
/// own, and how long ago its address last sent, so that a learned entry
/// ages on from where it was instead of starting again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbEntryState {
    pub network: u32,
    pub mac: [u8; 6],
    pub port: String,
    pub is_static: bool,
    /// Seconds since the address last sent (0 for static entries).
    #[serde(default)]
    pub idle_secs: u32,
}

/// An entry as stored: when its address last sent (table seconds).
#[derive(Clone, Copy)]
struct Slot {
    entry: FdbEntry,
    seen: u32,
}

pub struct Fdb {
    map: FastMap<NetMac, Slot>,
    /// Learned entries per (port, network): see [`share`].
    learned: FastMap<u64, u32>,
    limits: FdbLimits,
    /// `limits.max_age` in table seconds (at least 1).
    max_age: u32,
    /// The table's clock: whole seconds since `origin`, as of the last tick.
    origin: Stamp,
    now: u32,
    /// When expired entries are next swept out of the table.
    next_sweep: u32,
    /// Changes whenever an entry is added, moved or removed, or the clock
    /// ticks, so callers can cache a lookup (or a learn) and know when it
    /// went stale.
    generation: u64,
}

/// The key of a (port, network) share of learned entries.
#[inline]
fn share(port: PortId, network: u32) -> u64 {
    (u64::from(port.0) << 32) | u64::from(network)
}

impl Fdb {
    pub fn new(capacity: usize) -> Self {
        Self::with_limits(capacity, FdbLimits::default())
    }

    pub fn with_limits(capacity: usize, limits: FdbLimits) -> Self {
        let mut fdb = Self {
            map: FastMap::with_capacity_and_hasher(capacity, Default::default()),
            learned: FastMap::default(),
            limits,
            max_age: 1,
            origin: clock::now(),
            now: 0,
            next_sweep: 0,
            generation: 0,
        };
        fdb.set_limits(limits);
        fdb
    }

    /// Changes the limits; entries already learned stay (until they age).
    pub fn set_limits(&mut self, limits: FdbLimits) {
        self.limits = limits;
        self.max_age = u32::try_from(limits.max_age.as_secs())
            .unwrap_or(u32::MAX)
            .max(1);
        self.next_sweep = self.now;
    }

    pub fn limits(&self) -> FdbLimits {
        self.limits
    }

    /// Advances the table's clock (once per switch poll: one clock read).
    /// Entries past their age stop answering lookups at once; they are
    /// swept out of the table every eighth of the age.
    #[inline]
    pub fn tick(&mut self) {
        let secs = clock::now().nanos_since(self.origin) / 1_000_000_000;
        self.advance_to(u32::try_from(secs).unwrap_or(u32::MAX));
    }

    #[inline]
    fn advance_to(&mut self, now: u32) {
        if now == self.now {
            return;
        }
        self.now = now;
        // Entries may have expired: cached lookups look again, and cached
        // learns refresh their entry (once a second per address).
        self.generation += 1;
        if now >= self.next_sweep {
            self.sweep();
        }
    }

    #[cold]
    fn sweep(&mut self) {
        let (now, max_age) = (self.now, self.max_age);
        self.next_sweep = now.saturating_add((max_age / 8).max(1));
        let learned = &mut self.learned;
        self.map.retain(|key, slot| {
            let keep = slot.entry.is_static || now.wrapping_sub(slot.seen) < max_age;
            if !keep {
                release(learned, share(slot.entry.port, key.network()));
            }
            keep
        });
    }

    #[inline]
    fn live(&self, slot: &Slot) -> bool {
        slot.entry.is_static || self.now.wrapping_sub(slot.seen) < self.max_age
    }

    #[inline]
    pub fn lookup(&self, network: u32, mac: MacAddr) -> Option<PortId> {
        self.map
            .get(&NetMac::new(network, mac))
            .filter(|s| self.live(s))
            .map(|s| s.entry.port)
    }

    /// Learns `mac` behind `port`, or refreshes it; static entries stay
    /// put. A new address is learned only while the port has room in its
    /// share of `network`; one that moved to a port without room is
    /// forgotten (frames to it flood) rather than left pointing where the
    /// address no longer is.
    #[inline]
    pub fn learn(&mut self, network: u32, mac: MacAddr, port: PortId) {
        let key = NetMac::new(network, mac);
        let now = self.now;
        if let Some(slot) = self.map.get_mut(&key) {
            if slot.entry.is_static {
                return;
            }
            slot.seen = now;
            if slot.entry.port != port {
                self.relearn(key, port);
            }
            return;
        }
        if self.take(share(port, network)) {
            let entry = FdbEntry {
                port,
                is_static: false,
            };
            self.map.insert(key, Slot { entry, seen: now });
            self.generation += 1;
        }
    }

    /// A learned address moved to `port`.
    #[cold]
    fn relearn(&mut self, key: NetMac, port: PortId) {
        let Some(old) = self.map.get(&key).map(|s| s.entry.port) else {
            return;
        };
        release(&mut self.learned, share(old, key.network()));
        if self.take(share(port, key.network())) {
            if let Some(slot) = self.map.get_mut(&key) {
                slot.entry.port = port;
            }
        } else {
            self.map.remove(&key);
        }
        self.generation += 1;
    }

    /// Counts one more learned entry in a share, if it has room.
    #[inline]
    fn take(&mut self, share: u64) -> bool {
        let n = self.learned.entry(share).or_insert(0);
        if *n >= self.limits.max_learned {
            return false;
        }
        *n += 1;
        true
    }

    /// Changes whenever an entry is added, moved or removed, and when the
    /// clock ticks (entries may have aged out).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Installs a static entry (replacing whatever was there).
    pub fn add_static(&mut self, network: u32, mac: MacAddr, port: PortId) {
        let entry = FdbEntry {
            port,
            is_static: true,
        };
        let slot = Slot {
            entry,
            seen: self.now,
        };
        if let Some(old) = self.map.insert(NetMac::new(network, mac), slot) {
            self.forget_learned(network, old.entry);
        }
        self.generation += 1;
    }

    /// Removes the entry of `mac` in `network`; false if there was none.
    pub fn remove(&mut self, network: u32, mac: MacAddr) -> bool {
        let Some(old) = self.map.remove(&NetMac::new(network, mac)) else {
            return false;
        };
        self.forget_learned(network, old.entry);
        self.generation += 1;
        true
    }

    fn forget_learned(&mut self, network: u32, old: FdbEntry) {
        if !old.is_static {
            release(&mut self.learned, share(old.port, network));
        }
    }

    /// Removes every entry that points at `port`.
    pub fn forget_port(&mut self, port: PortId) {
        self.map.retain(|_, s| s.entry.port != port);
        self.learned.retain(|k, _| (k >> 32) as u16 != port.0);
        self.generation += 1;
    }

    /// Learned entries `port` holds in `network`.
    pub fn learned(&self, port: PortId, network: u32) -> u32 {
        self.learned
            .get(&share(port, network))
            .copied()
            .unwrap_or(0)
    }

    /// All live entries, for listing.
    pub fn entries(&self) -> Vec<(u32, MacAddr, FdbEntry)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .filter(|(_, s)| self.live(s))
            .map(|(k, s)| (k.network(), k.mac(), s.entry))
            .collect();
        v.sort_by_key(|(n, m, _)| (*n, *m));
        v
    }
}

impl Fdb {
    /// Every live entry, with its port named by `port_name` (entries of a
    /// port it does not name are left out).
    pub fn export(&self, port_name: impl Fn(PortId) -> Option<String>) -> Vec<FdbEntryState> {
        let mut v: Vec<FdbEntryState> = self
            .map
            .iter()
            .filter(|(_, s)| self.live(s))
            .filter_map(|(k, s)| {
                Some(FdbEntryState {
                    network: k.network(),
                    mac: k.mac().0,
                    port: port_name(s.entry.port)?,
                    is_static: s.entry.is_static,
                    idle_secs: if s.entry.is_static {
                        0
                    } else {
                        self.now.wrapping_sub(s.seen)
                    },
                })
            })
            .collect();
        v.sort_by_key(|e| (e.network, e.mac));
        v
    }

    /// Takes over `entries` exported by another table, with ports found by
    /// name through `port_of`. What this table holds already wins over a
    /// learned entry (its own static entries, set from the configuration);
    /// a learned entry keeps its age and counts against its port's share,
    /// like one learned here. Returns the entries not taken: an unknown
    /// port, an entry aged out meanwhile, or a share that is full.
    pub fn import(
        &mut self,
        entries: &[FdbEntryState],
        port_of: impl Fn(&str) -> Option<PortId>,
    ) -> usize {
        let mut skipped = 0;
        for e in entries {
            let key = NetMac::new(e.network, MacAddr(e.mac));
            let port = port_of(&e.port);
            let taken = match port {
                Some(port) if e.is_static => {
                    self.add_static(e.network, MacAddr(e.mac), port);
                    true
                }
                Some(port)
                    if e.idle_secs < self.max_age
                        && !self.map.contains_key(&key)
                        && self.take(share(port, e.network)) =>
                {
                    let entry = FdbEntry {
                        port,
                        is_static: false,
                    };
                    let seen = self.now.wrapping_sub(e.idle_secs);
                    self.map.insert(key, Slot { entry, seen });
                    self.generation += 1;
                    true
                }
                _ => false,
            };
            skipped += usize::from(!taken);
        }
        skipped
    }
}

/// Counts one learned entry of a share gone (a share at zero is dropped,
/// so ports and networks that come and go leave nothing behind).
fn release(learned: &mut FastMap<u64, u32>, share: u64) {
    if let Some(n) = learned.get_mut(&share) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            learned.remove(&share);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
    const C: MacAddr = MacAddr([2, 0, 0, 0, 0, 3]);

    fn limits(max_learned: u32, max_age_s: u64) -> FdbLimits {
        FdbLimits {
            max_learned,
            max_age: Duration::from_secs(max_age_s),
        }
    }

    /// The `i`th of many addresses a port makes up.
    fn made_up(i: u32) -> MacAddr {
        let b = i.to_be_bytes();
        MacAddr([2, 0xee, b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn learning_moves_dynamic_not_static_and_is_bounded() {
        let mut fdb = Fdb::with_limits(16, limits(1, 300));
        fdb.add_static(7, A, PortId(0));
        fdb.learn(7, A, PortId(1));
        assert_eq!(fdb.lookup(7, A), Some(PortId(0)));
        assert_eq!(fdb.lookup(8, A), None, "networks do not share entries");
        fdb.learn(7, B, PortId(1));
        fdb.learn(7, B, PortId(2));
        assert_eq!(fdb.lookup(7, B), Some(PortId(2)));
        assert_eq!(
            (fdb.learned(PortId(1), 7), fdb.learned(PortId(2), 7)),
            (0, 1)
        );
        fdb.learn(7, C, PortId(2));
        assert_eq!(fdb.lookup(7, C), None, "a full share must not grow");
        fdb.learn(7, C, PortId(1));
        assert_eq!(fdb.lookup(7, C), Some(PortId(1)), "another port's share");
        fdb.learn(7, C, PortId(2));
        assert_eq!(fdb.lookup(7, C), None, "moved to a full share: forgotten");
        assert_eq!(fdb.learned(PortId(1), 7), 0);
        fdb.forget_port(PortId(2));
        assert_eq!(fdb.lookup(7, B), None);
        assert_eq!(fdb.learned(PortId(2), 7), 0);
        assert_eq!(
            fdb.entries(),
            vec![(
                7,
                A,
                FdbEntry {
                    port: PortId(0),
                    is_static: true
                }
            )]
        );
        let top = (1 << 24) - 1;
        fdb.add_static(top, B, PortId(3));
        assert_eq!(fdb.lookup(top, B), Some(PortId(3)));
        assert_eq!(fdb.entries()[1].0, top);
    }

    #[test]
    fn a_port_flooding_addresses_cannot_evict_or_block_another_ports_or_networks() {
        let mut fdb = Fdb::with_limits(DEFAULT_CAPACITY, FdbLimits::default());
        let (wire, guest) = (PortId(0), PortId(1));
        fdb.learn(5, A, guest);
        // The wire of a flat uplink in network 5 (and one in network 6)
        // sends from far more addresses than any share holds.
        for i in 0..100_000 {
            fdb.learn(5, made_up(i), wire);
            fdb.learn(6, made_up(i), PortId(2));
        }
        let max = FdbLimits::default().max_learned;
        assert_eq!(fdb.learned(wire, 5), max);
        assert_eq!(fdb.learned(PortId(2), 6), max);
        assert_eq!(fdb.lookup(5, A), Some(guest), "not evicted");
        fdb.learn(5, B, guest);
        fdb.learn(6, C, guest);
        fdb.learn(7, C, wire);
        assert_eq!(fdb.lookup(5, B), Some(guest), "another port still learns");
        assert_eq!(fdb.lookup(6, C), Some(guest), "in a full network too");
        assert_eq!(
            fdb.lookup(7, C),
            Some(wire),
            "the port's other networks too"
        );
    }

    #[test]
    fn learned_entries_age_out_unless_refreshed_and_static_ones_never() {
        let mut fdb = Fdb::with_limits(16, limits(1, 300));
        fdb.add_static(1, A, PortId(0));
        fdb.learn(1, B, PortId(1));
        fdb.learn(1, C, PortId(2));
        let g = fdb.generation();
        fdb.advance_to(200);
        assert!(fdb.generation() > g, "cached lookups look again");
        fdb.learn(1, C, PortId(2));
        fdb.advance_to(299);
        assert_eq!(fdb.lookup(1, B), Some(PortId(1)), "299 s old");
        fdb.advance_to(300);
        assert_eq!(fdb.lookup(1, B), None, "300 s without a frame");
        assert_eq!(fdb.lookup(1, C), Some(PortId(2)), "refreshed at 200 s");
        assert_eq!(fdb.lookup(1, A), Some(PortId(0)));
        // Swept out within an eighth of the age: its share is free again.
        fdb.advance_to(300 + 300 / 8 + 1);
        assert_eq!(fdb.learned(PortId(1), 1), 0);
        fdb.learn(1, made_up(9), PortId(1));
        assert_eq!(fdb.lookup(1, made_up(9)), Some(PortId(1)));
        fdb.advance_to(10_000);
        assert_eq!(fdb.entries().len(), 1, "only the static entry is left");
        assert_eq!(fdb.lookup(1, A), Some(PortId(0)));
    }

    #[test]
    fn entries_cross_to_another_table_by_port_name_and_keep_their_age() {
        let names = ["vnic0", "vnic1", "uplink"];
        let mut old = Fdb::with_limits(16, limits(2, 300));
        old.add_static(7, A, PortId(0));
        old.learn(7, B, PortId(2));
        old.advance_to(100);
        old.learn(9, C, PortId(1));
        old.advance_to(250);
        let exported = old.export(|p| names.get(usize::from(p.0)).map(|n| n.to_string()));
        assert_eq!(exported.len(), 3);
        let b = exported.iter().find(|e| e.mac == B.0).unwrap();
        assert_eq!(
            (b.port.as_str(), b.is_static, b.idle_secs),
            ("uplink", false, 250)
        );

        // The new process numbers its ports otherwise, and its own static
        // entry for A is already there (from its configuration).
        let mut new = Fdb::with_limits(16, limits(2, 300));
        let id = |n: &str| match n {
            "uplink" => Some(PortId(5)),
            "vnic1" => Some(PortId(6)),
            "vnic0" => Some(PortId(7)),
            _ => None,
        };
        new.add_static(7, A, PortId(7));
        new.advance_to(1000);
        assert_eq!(new.import(&exported, id), 0);
        assert_eq!(new.lookup(7, A), Some(PortId(7)));
        assert_eq!(new.lookup(7, B), Some(PortId(5)));
        assert_eq!(new.lookup(9, C), Some(PortId(6)));
        assert_eq!(new.learned(PortId(5), 7), 1, "counted in its port's share");
        // B ages on from 250 s idle: gone 50 s later; C (150 s) lives on.
        new.advance_to(1050);
        assert_eq!(new.lookup(7, B), None);
        assert_eq!(new.lookup(9, C), Some(PortId(6)));

        // The format round-trips, and what cannot be taken is counted.
        let json = serde_json::to_string(&exported).unwrap();
        let back: Vec<FdbEntryState> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, exported);
        let mut full = Fdb::with_limits(16, limits(0, 300));
        let unknown = |_: &str| None;
        assert_eq!(full.import(&back, unknown), 3);
        assert_eq!(full.import(&back, id), 2, "learned entries find no room");
    }
}
