//! The directory as this host last read it, and the overlay table it means
//! for this host.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use snapnet_wire::MacAddr;

use super::keys::{HostValue, Key, MacValue};
use crate::uplink::overlay::{OverlayConfig, RemoteHost, RemoteMac};

/// Every host, membership and guest MAC of the directory.
#[derive(Clone, Debug, Default)]
pub struct DirectoryTable {
    hosts: BTreeMap<String, HostValue>,
    members: BTreeMap<u32, BTreeSet<String>>,
    macs: BTreeMap<(u32, MacAddr), MacValue>,
    /// The same MACs by the host claiming them: the overlay is derived a
    /// host at a time, with no look-up per MAC.
    /// With each MAC its addresses, for the uplink's ARP/ND answers.
    macs_of: BTreeMap<String, BTreeMap<(u32, MacAddr), Vec<IpAddr>>>,
}

/// What one put or delete did to the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Changed,
    Unchanged,
    /// A key outside the layout or a value that does not parse: ignored
    /// (and counted by the caller).
    Malformed,
}

/// Who this host is, for deriving its overlay.
#[derive(Clone, Debug)]
pub struct ThisHost {
    pub host_id: String,
    pub underlay_ip: Ipv4Addr,
    pub next_hop_mac: Option<MacAddr>,
}

impl DirectoryTable {
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    pub fn macs(&self) -> usize {
        self.macs.len()
    }

    pub fn has_host(&self, id: &str) -> bool {
        self.hosts.contains_key(id)
    }

    /// The claim on a guest MAC, if any.
    pub fn mac(&self, network: u32, mac: MacAddr) -> Option<&MacValue> {
        self.macs.get(&(network, mac))
    }

    pub fn put(&mut self, prefix: &str, key: &[u8], value: &[u8]) -> Applied {
        let Some(key) = Key::decode(prefix, key) else {
            return Applied::Malformed;
        };
        fn set<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, k: K, v: V) -> Applied {
            if map.get(&k) == Some(&v) {
                return Applied::Unchanged;
            }
            map.insert(k, v);
            Applied::Changed
        }
        match key {
            Key::Host(h) => match serde_json::from_slice::<HostValue>(value) {
                Ok(v) => set(&mut self.hosts, h, v),
                Err(_) => Applied::Malformed,
            },
            Key::Member { network, host } => {
                if self.members.entry(network).or_default().insert(host) {
                    Applied::Changed
                } else {
                    Applied::Unchanged
                }
            }
            Key::Mac { network, mac } => match serde_json::from_slice::<MacValue>(value) {
                Ok(v) => {
                    let key = (network, mac);
                    if let Some(old) = self.macs.get(&key).filter(|old| old.host != v.host) {
                        let old_host = old.host.clone();
                        self.forget_claim(&old_host, key);
                    }
                    let ips = v.allowed_ips.clone().unwrap_or_default();
                    self.macs_of
                        .entry(v.host.clone())
                        .or_default()
                        .insert(key, ips);
                    set(&mut self.macs, key, v)
                }
                Err(_) => Applied::Malformed,
            },
        }
    }

    fn forget_claim(&mut self, host: &str, key: (u32, MacAddr)) {
        if let Some(set) = self.macs_of.get_mut(host) {
            set.remove(&key);
            if set.is_empty() {
                self.macs_of.remove(host);
            }
        }
    }

    pub fn delete(&mut self, prefix: &str, key: &[u8]) -> Applied {
        let removed = match Key::decode(prefix, key) {
            None => return Applied::Malformed,
            Some(Key::Host(h)) => self.hosts.remove(&h).is_some(),
            Some(Key::Member { network, host }) => {
                let Some(set) = self.members.get_mut(&network) else {
                    return Applied::Unchanged;
                };
                let removed = set.remove(&host);
                if set.is_empty() {
                    self.members.remove(&network);
                }
                removed
            }
            Some(Key::Mac { network, mac }) => match self.macs.remove(&(network, mac)) {
                Some(old) => {
                    self.forget_claim(&old.host, (network, mac));
                    true
                }
                None => false,
            },
        };
        if removed {
            Applied::Changed
        } else {
            Applied::Unchanged
        }
    }

    /// The overlay this host's uplink should have: every other live host
    /// with the networks it is a member of, and every guest MAC on one of
    /// them. A host whose address is this host's, or another host's already
    /// listed, is left out (two hosts cannot share an underlay address); a
    /// MAC claimed by this host or by a host without a live `hosts/` key is
    /// too.
    pub fn overlay(&self, me: &ThisHost) -> OverlayConfig {
        let mut out = OverlayConfig {
            local_ip: me.underlay_ip,
            remotes: Vec::new(),
            macs: Vec::new(),
        };
        let mut networks_of: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for (network, hosts) in &self.members {
            for h in hosts {
                networks_of.entry(h.as_str()).or_default().push(*network);
            }
        }
        let mut addresses = BTreeSet::new();
        for (id, host) in &self.hosts {
            if *id == me.host_id
                || host.underlay_ip == me.underlay_ip
                || !addresses.insert(host.underlay_ip)
            {
                continue;
            }
            out.remotes.push(RemoteHost {
                ip: host.underlay_ip,
                mac: me.next_hop_mac.unwrap_or(host.mac),
                networks: networks_of.remove(id.as_str()).unwrap_or_default(),
            });
            for (key, ips) in self.macs_of.get(id).into_iter().flatten() {
                out.macs.push(RemoteMac {
                    network: key.0,
                    mac: key.1,
                    remote: host.underlay_ip,
                    ips: ips.clone(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::overlay::OverlayTable;

    const P: &str = "/p";

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, last])
    }

    fn me() -> ThisHost {
        ThisHost {
            host_id: "a".into(),
            underlay_ip: "10.0.0.1".parse().unwrap(),
            next_hop_mac: None,
        }
    }

    fn remote_ips(o: &OverlayConfig) -> Vec<String> {
        o.remotes.iter().map(|r| r.ip.to_string()).collect()
    }

    fn host(t: &mut DirectoryTable, id: &str, ip: &str, last: u8) {
        let v = format!(r#"{{"underlay_ip":"{ip}","mac":"{}"}}"#, mac(last));
        assert_eq!(
            t.put(P, format!("{P}/hosts/{id}").as_bytes(), v.as_bytes()),
            Applied::Changed
        );
    }

    #[test]
    fn the_overlay_of_hosts_members_and_macs() {
        let mut t = DirectoryTable::default();
        host(&mut t, "a", "10.0.0.1", 0xa);
        host(&mut t, "b", "10.0.0.2", 0xb);
        host(&mut t, "c", "10.0.0.3", 0xc);
        for (n, h) in [(1, "a"), (1, "b"), (2, "b"), (2, "c")] {
            t.put(P, format!("{P}/members/{n}/{h}").as_bytes(), b"{}");
        }
        for (n, m, h) in [(1, 1, "a"), (1, 2, "b"), (2, 3, "c"), (2, 4, "gone")] {
            let v = format!(r#"{{"host":"{h}"}}"#);
            t.put(
                P,
                format!("{P}/macs/{n}/{}", mac(m)).as_bytes(),
                v.as_bytes(),
            );
        }
        let o = t.overlay(&me());
        assert_eq!(o.remotes.len(), 2, "{o:?}");
        assert_eq!(o.remotes[0].ip.to_string(), "10.0.0.2");
        assert_eq!(o.remotes[0].networks, vec![1, 2]);
        assert_eq!(o.remotes[0].mac, mac(0xb));
        assert_eq!(o.remotes[1].networks, vec![2]);
        // Own MACs and a host that is gone are not remote entries.
        let macs: Vec<_> = o
            .macs
            .iter()
            .map(|m| (m.network, m.mac, m.remote.to_string()))
            .collect();
        assert_eq!(
            macs,
            vec![
                (1, mac(2), "10.0.0.2".into()),
                (2, mac(3), "10.0.0.3".into())
            ]
        );
        OverlayTable::new(&o, mac(0xa)).expect("a table the uplink takes");

        // A next hop replaces every remote MAC; a host on our own or an
        // already listed address is left out.
        host(&mut t, "d", "10.0.0.2", 0xd);
        host(&mut t, "e", "10.0.0.1", 0xe);
        let routed = ThisHost {
            next_hop_mac: Some(mac(0x99)),
            ..me()
        };
        let o = t.overlay(&routed);
        assert_eq!(o.remotes.len(), 2);
        assert!(o.remotes.iter().all(|r| r.mac == mac(0x99)));
        OverlayTable::new(&o, mac(0xa)).unwrap();

        // Deletes undo; a second delete changes nothing.
        let key = format!("{P}/macs/1/{}", mac(2));
        assert_eq!(t.delete(P, key.as_bytes()), Applied::Changed);
        assert_eq!(t.delete(P, key.as_bytes()), Applied::Unchanged);
        assert_eq!(
            t.delete(P, format!("{P}/members/2/c").as_bytes()),
            Applied::Changed
        );
        assert_eq!(
            t.delete(P, format!("{P}/hosts/b").as_bytes()),
            Applied::Changed
        );
        // d (b's address) is listed now that b is gone.
        let o = t.overlay(&me());
        assert_eq!(remote_ips(&o), vec!["10.0.0.3", "10.0.0.2"]);
        t.delete(P, format!("{P}/hosts/d").as_bytes());
        let o = t.overlay(&me());
        assert_eq!(o.remotes.len(), 1);
        assert!(o.remotes[0].networks.is_empty());
    }

    #[test]
    fn a_claim_moves_between_hosts() {
        let mut t = DirectoryTable::default();
        host(&mut t, "b", "10.0.0.2", 0xb);
        host(&mut t, "c", "10.0.0.3", 0xc);
        let key = format!("{P}/macs/1/{}", mac(7));
        for (owner, ip) in [("b", "10.0.0.2"), ("c", "10.0.0.3")] {
            let v = format!(r#"{{"host":"{owner}"}}"#);
            assert_eq!(t.put(P, key.as_bytes(), v.as_bytes()), Applied::Changed);
            let o = t.overlay(&me());
            assert_eq!(o.macs.len(), 1, "{o:?}");
            assert_eq!(o.macs[0].remote.to_string(), ip);
        }
        assert_eq!(t.delete(P, key.as_bytes()), Applied::Changed);
        assert!(t.overlay(&me()).macs.is_empty());
        assert!(t.macs_of.is_empty(), "{:?}", t.macs_of);
    }

    #[test]
    fn malformed_keys_and_values_change_nothing() {
        let mut t = DirectoryTable::default();
        assert_eq!(t.put(P, b"/p/hosts/x", b"not json"), Applied::Malformed);
        assert_eq!(
            t.put(P, b"/p/hosts/x", br#"{"underlay_ip":"10.0.0.9","mac":"x"}"#),
            Applied::Malformed
        );
        assert_eq!(
            t.put(P, b"/p/macs/1/52:54:00:00:00:01", b"{}"),
            Applied::Malformed
        );
        assert_eq!(t.put(P, b"/q/hosts/x", b"{}"), Applied::Malformed);
        assert_eq!(t.delete(P, b"/p/bogus"), Applied::Malformed);
        assert_eq!(t.hosts() + t.macs(), 0);
        host(&mut t, "x", "10.0.0.9", 9);
        assert_eq!(
            t.put(
                P,
                b"/p/hosts/x",
                format!(r#"{{"underlay_ip":"10.0.0.9","mac":"{}"}}"#, mac(9)).as_bytes()
            ),
            Applied::Unchanged
        );
    }
}
