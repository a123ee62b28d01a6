//! The directory's key layout in etcd (docs/directory.md): every key under
//! the configured prefix, values in JSON.
//!
//! | key | value |
//! |---|---|
//! | `hosts/<host_id>` | [`HostValue`]: a live host and how to reach it |
//! | `members/<network>/<host_id>` | `{}`: the host has guests in `network` |
//! | `macs/<network>/<mac>` | [`MacValue`]: which host the guest with `mac` is on |

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use snapnet_wire::MacAddr;

const HOSTS: &str = "hosts";
const MEMBERS: &str = "members";
const MACS: &str = "macs";

/// A key of the directory, without its prefix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Host(String),
    Member { network: u32, host: String },
    Mac { network: u32, mac: MacAddr },
}

impl Key {
    /// The full key under `prefix`.
    pub fn encode(&self, prefix: &str) -> String {
        match self {
            Key::Host(h) => format!("{prefix}/{HOSTS}/{h}"),
            Key::Member { network, host } => format!("{prefix}/{MEMBERS}/{network}/{host}"),
            Key::Mac { network, mac } => format!("{prefix}/{MACS}/{network}/{mac}"),
        }
    }

    /// The key `raw` names under `prefix`; `None` for anything else (another
    /// layout version, a typo, garbage).
    pub fn decode(prefix: &str, raw: &[u8]) -> Option<Key> {
        let text = std::str::from_utf8(raw).ok()?;
        let rest = text.strip_prefix(prefix)?.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let key = match (parts.next()?, parts.next(), parts.next()) {
            (HOSTS, Some(h), None) if valid_host(h) => Key::Host(h.to_string()),
            (MEMBERS, Some(n), Some(h)) if valid_host(h) => Key::Member {
                network: network(n)?,
                host: h.to_string(),
            },
            (MACS, Some(n), Some(m)) => {
                let mac: MacAddr = m.parse().ok()?;
                if mac.is_group() {
                    return None;
                }
                Key::Mac {
                    network: network(n)?,
                    mac,
                }
            }
            _ => return None,
        };
        parts.next().is_none().then_some(key)
    }
}

fn network(text: &str) -> Option<u32> {
    let n: u32 = text.parse().ok()?;
    (n < 1 << 24 && n.to_string() == text).then_some(n)
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `hosts/<id>`: where a host is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostValue {
    pub underlay_ip: Ipv4Addr,
    /// The host's uplink MAC (frames to it go there unless the config names
    /// a next hop).
    #[serde(with = "snapnet_wire::mac_string")]
    pub mac: MacAddr,
}

/// `macs/<network>/<mac>`: the host a guest's MAC is on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MacValue {
    pub host: String,
    /// The addresses the guest may use there (its vNIC's `allowed_ips`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<Vec<IpAddr>>,
}

/// The value of a `members/` key.
pub const MEMBER_VALUE: &[u8] = b"{}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_garbage_is_refused() {
        let p = "/snapnet/v1";
        let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        for k in [
            Key::Host("host-a".into()),
            Key::Member {
                network: 7,
                host: "b".into(),
            },
            Key::Mac { network: 0, mac },
        ] {
            assert_eq!(Key::decode(p, k.encode(p).as_bytes()), Some(k));
        }
        assert_eq!(
            Key::Mac { network: 7, mac }.encode(p),
            "/snapnet/v1/macs/7/52:54:00:12:34:56"
        );
        for bad in [
            "/snapnet/v1/hosts/",
            "/snapnet/v1/hosts/a/b",
            "/snapnet/v1/hostsx/a",
            "/snapnet/v2/hosts/a",
            "/snapnet/v1/members/07/a",
            "/snapnet/v1/members/16777216/a",
            "/snapnet/v1/members/x/a",
            "/snapnet/v1/macs/1/zz:54:00:12:34:56",
            "/snapnet/v1/macs/1/ff:ff:ff:ff:ff:ff",
            "/snapnet/v1/macs/1",
            "/snapnet/v1",
            "/snapnet/v1/hosts/a b",
        ] {
            assert_eq!(Key::decode(p, bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(Key::decode(p, &[0xff, 0xfe]), None);
    }
}
