//! Ethernet II header view.

use std::fmt;
use std::str::FromStr;

pub(crate) const DST: std::ops::Range<usize> = 0..6;
pub(crate) const SRC: std::ops::Range<usize> = 6..12;
pub(crate) const ETHERTYPE: std::ops::Range<usize> = 12..14;
/// Length of the Ethernet II header.
pub const HEADER_LEN: usize = 14;

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// `"52:54:00:5a:00:01"` in JSON (configs, the overlay table), for
/// `#[serde(with = "crate::packet::wire::mac_string")]`.
pub mod mac_string {
    use super::MacAddr;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &MacAddr, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&m.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Group (broadcast or multicast) address: the I/G bit is set.
    pub fn is_group(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// The address as the low 48 bits of a u64 (a cheap hash-map key).
    #[inline]
    pub fn to_u64(self) -> u64 {
        let b = self.0;
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a MAC address string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{0}' is not a MAC address (want six hex pairs like 52:54:00:12:34:56)")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

/// A view of an Ethernet II frame.
pub struct EthernetFrame<'a> {
    bytes: &'a [u8],
}

impl<'a> EthernetFrame<'a> {
    /// `None` when `bytes` cannot hold an Ethernet header.
    #[inline]
    pub fn new_checked(bytes: &'a [u8]) -> Option<Self> {
        (bytes.len() >= HEADER_LEN).then_some(Self { bytes })
    }

    #[inline]
    pub fn dst(&self) -> MacAddr {
        MacAddr(self.bytes[DST].try_into().expect("length checked"))
    }

    #[inline]
    pub fn src(&self) -> MacAddr {
        MacAddr(self.bytes[SRC].try_into().expect("length checked"))
    }

    #[inline]
    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes([self.bytes[ETHERTYPE.start], self.bytes[ETHERTYPE.start + 1]])
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_mac() {
        let m: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        assert!(!m.is_group());
        assert!(MacAddr::BROADCAST.is_group());
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "5:54:00:ab:cd:01",
            "zz:54:00:ab:cd:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn short_frame_has_no_view() {
        assert!(EthernetFrame::new_checked(&[0; 13]).is_none());
        let mut f = [0u8; 14];
        f[0] = 1;
        f[12] = 0x08;
        let v = EthernetFrame::new_checked(&f).unwrap();
        assert!(v.dst().is_group());
        assert_eq!(v.ethertype(), 0x0800);
    }
}
