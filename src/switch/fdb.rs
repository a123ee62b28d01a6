//! The forwarding database: (virtual network, MAC) -> port, with static
//! entries (a vNIC's configured MAC) that learning cannot move. Every lookup
//! and every learned address is scoped to one virtual network, so the same
//! MAC in two networks is two unrelated entries.

use super::PortId;
use crate::packet::fast_hash::{FastMap, NetMac};
use crate::packet::wire::MacAddr;

/// Entries learning may create; beyond it new addresses are flooded.
pub const DEFAULT_CAPACITY: usize = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub port: PortId,
    pub is_static: bool,
}

pub struct Fdb {
    map: FastMap<NetMac, FdbEntry>,
    capacity: usize,
    /// Changes whenever an entry is added, moved or removed, so callers can
    /// cache a lookup and know when it went stale.
    generation: u64,
}

impl Fdb {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: FastMap::with_capacity_and_hasher(capacity, Default::default()),
            capacity,
            generation: 0,
        }
    }

    #[inline]
    pub fn lookup(&self, network: u32, mac: MacAddr) -> Option<PortId> {
        self.map.get(&NetMac::new(network, mac)).map(|e| e.port)
    }

    /// Learns `mac` behind `port`; static entries stay put. Never allocates:
    /// the table was sized at creation and is full at `capacity`.
    #[inline]
    pub fn learn(&mut self, network: u32, mac: MacAddr, port: PortId) {
        let key = NetMac::new(network, mac);
        if let Some(e) = self.map.get_mut(&key) {
            if !e.is_static && e.port != port {
                e.port = port;
                self.generation += 1;
            }
            return;
        }
        if self.map.len() < self.capacity {
            let entry = FdbEntry {
                port,
                is_static: false,
            };
            self.map.insert(key, entry);
            self.generation += 1;
        }
    }

    /// Changes whenever an entry is added, moved or removed.
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
        self.map.insert(NetMac::new(network, mac), entry);
        self.generation += 1;
    }

    /// Removes the entry of `mac` in `network`; false if there was none.
    pub fn remove(&mut self, network: u32, mac: MacAddr) -> bool {
        let found = self.map.remove(&NetMac::new(network, mac)).is_some();
        if found {
            self.generation += 1;
        }
        found
    }

    /// Removes every entry that points at `port`.
    pub fn forget_port(&mut self, port: PortId) {
        self.map.retain(|_, e| e.port != port);
        self.generation += 1;
    }

    /// All entries, for listing.
    pub fn entries(&self) -> Vec<(u32, MacAddr, FdbEntry)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .map(|(k, e)| (k.network(), k.mac(), *e))
            .collect();
        v.sort_by_key(|(n, m, _)| (*n, *m));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_moves_dynamic_not_static_and_is_bounded() {
        let mut fdb = Fdb::new(2);
        let a = MacAddr([2, 0, 0, 0, 0, 1]);
        let b = MacAddr([2, 0, 0, 0, 0, 2]);
        let c = MacAddr([2, 0, 0, 0, 0, 3]);
        fdb.add_static(7, a, PortId(0));
        fdb.learn(7, a, PortId(1));
        assert_eq!(fdb.lookup(7, a), Some(PortId(0)));
        assert_eq!(fdb.lookup(8, a), None, "networks do not share entries");
        fdb.learn(7, b, PortId(1));
        fdb.learn(7, b, PortId(2));
        assert_eq!(fdb.lookup(7, b), Some(PortId(2)));
        fdb.learn(7, c, PortId(1));
        assert_eq!(fdb.lookup(7, c), None, "full table must not grow");
        fdb.forget_port(PortId(2));
        assert_eq!(fdb.lookup(7, b), None);
        assert_eq!(
            fdb.entries(),
            vec![(
                7,
                a,
                FdbEntry {
                    port: PortId(0),
                    is_static: true
                }
            )]
        );
        let top = (1 << 24) - 1;
        fdb.add_static(top, b, PortId(3));
        assert_eq!(fdb.lookup(top, b), Some(PortId(3)));
        assert_eq!(fdb.entries()[1].0, top);
    }
}
