//! What this host publishes: its guests' MACs (per network), so its
//! memberships, and the keys that say so.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use snapnet_wire::MacAddr;

use super::keys::{HostValue, Key, MacValue, MEMBER_VALUE};

/// This host's guests as the directory should show them: (network, MAC) ->
/// the addresses the guest may use (`None`: not restricted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalEntries {
    pub macs: BTreeMap<(u32, MacAddr), Option<Vec<IpAddr>>>,
}

impl LocalEntries {
    pub fn insert(&mut self, network: u32, mac: MacAddr, allowed_ips: Option<Vec<IpAddr>>) {
        self.macs.insert((network, mac), allowed_ips);
    }

    /// The networks this host has guests in.
    pub fn networks(&self) -> BTreeSet<u32> {
        self.macs.keys().map(|(n, _)| *n).collect()
    }

    /// Every key this host owns with its value: its host key, a member key
    /// per network, a MAC key per guest MAC.
    pub fn keys(&self, host_id: &str, host: &HostValue) -> BTreeMap<Key, Vec<u8>> {
        let mut out = BTreeMap::new();
        out.insert(Key::Host(host_id.to_string()), json(host));
        for network in self.networks() {
            let member = Key::Member {
                network,
                host: host_id.to_string(),
            };
            out.insert(member, MEMBER_VALUE.to_vec());
        }
        for ((network, mac), allowed_ips) in &self.macs {
            let value = MacValue {
                host: host_id.to_string(),
                allowed_ips: allowed_ips.clone(),
            };
            out.insert(
                Key::Mac {
                    network: *network,
                    mac: *mac,
                },
                json(&value),
            );
        }
        out
    }
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, last])
    }

    #[test]
    fn one_key_per_guest_mac_and_network() {
        let host = HostValue {
            underlay_ip: "10.0.0.1".parse().unwrap(),
            mac: mac(0xaa),
        };
        let mut a = LocalEntries::default();
        a.insert(1, mac(1), None);
        a.insert(1, mac(2), Some(vec!["10.1.0.2".parse().unwrap()]));
        let ka = a.keys("h", &host);
        assert_eq!(ka.len(), 4, "{ka:?}");
        let v = &ka[&Key::Mac {
            network: 1,
            mac: mac(2),
        }];
        assert_eq!(
            std::str::from_utf8(v).unwrap(),
            r#"{"host":"h","allowed_ips":["10.1.0.2"]}"#
        );
        assert_eq!(a.networks().into_iter().collect::<Vec<_>>(), vec![1]);
    }
}
