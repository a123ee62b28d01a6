//! Ethernet II header view.

use std::fmt;
use std::str::FromStr;

use crate::bytes::{get_u16, set_u16};

/// Field ranges.
pub const DST: std::ops::Range<usize> = 0..6;
pub const SRC: std::ops::Range<usize> = 6..12;
pub const ETHERTYPE: std::ops::Range<usize> = 12..14;
/// Length of the Ethernet II header.
pub const HEADER_LEN: usize = 14;

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// `"52:54:00:5a:00:01"` in JSON (configs, the overlay table), for
/// `#[serde(with = "snapnet_wire::mac_string")]`.
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

/// An optional MAC as a string or absent, for
/// `#[serde(default, with = "snapnet_wire::optional_mac_string")]`.
pub mod optional_mac_string {
    use super::MacAddr;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &Option<MacAddr>, s: S) -> Result<S::Ok, S::Error> {
        match m {
            Some(m) => s.serialize_str(&m.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MacAddr>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
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

/// A checked view of an Ethernet II header at the start of `buffer`.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// `None` when `buffer` cannot hold an Ethernet header.
    #[inline]
    pub fn new_checked(buffer: T) -> Option<Self> {
        (buffer.as_ref().len() >= HEADER_LEN).then_some(Self { buffer })
    }

    #[inline]
    pub fn dst(&self) -> MacAddr {
        MacAddr(
            self.buffer.as_ref()[DST]
                .try_into()
                .expect("length checked"),
        )
    }

    #[inline]
    pub fn src(&self) -> MacAddr {
        MacAddr(
            self.buffer.as_ref()[SRC]
                .try_into()
                .expect("length checked"),
        )
    }

    #[inline]
    pub fn ethertype(&self) -> u16 {
        get_u16(self.buffer.as_ref(), ETHERTYPE.start)
    }
}

impl<'a> EthernetFrame<&'a [u8]> {
    /// What follows the header (the first VLAN tag, if there is one).
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Writes a header into the first [`HEADER_LEN`] bytes of `buffer`;
    /// `None` when it is shorter.
    #[inline]
    pub fn emit(mut buffer: T, dst: MacAddr, src: MacAddr, ethertype: u16) -> Option<Self> {
        let h = buffer.as_mut().get_mut(..HEADER_LEN)?;
        h[DST].copy_from_slice(&dst.0);
        h[SRC].copy_from_slice(&src.0);
        set_u16(h, ETHERTYPE.start, ethertype);
        Some(Self { buffer })
    }

    #[inline]
    pub fn set_dst(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[DST].copy_from_slice(&mac.0)
    }

    #[inline]
    pub fn set_src(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[SRC].copy_from_slice(&mac.0)
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
        assert!(EthernetFrame::new_checked(&[0; 13][..]).is_none());
        let mut f = [0u8; 14];
        f[0] = 1;
        f[12] = 0x08;
        let v = EthernetFrame::new_checked(&f[..]).unwrap();
        assert!(v.dst().is_group());
        assert_eq!(v.ethertype(), 0x0800);
        let m = MacAddr([2, 0, 0, 0, 0, 9]);
        let mut e = EthernetFrame::emit(&mut f[..], MacAddr::BROADCAST, m, 0x86dd).unwrap();
        e.set_src(MacAddr([2; 6]));
        e.set_dst(m);
        assert_eq!(
            (e.dst(), e.src(), e.ethertype()),
            (m, MacAddr([2; 6]), 0x86dd)
        );
        assert!(EthernetFrame::emit(&mut f[..13], m, m, 0).is_none());
    }
}
