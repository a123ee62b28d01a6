//! Finds a peer's MAC for the Pony engine, off its thread: the kernel keeps
//! the uplink interface's neighbour table (ARP reaches the kernel, not
//! snapnet), so the answer is read from `/proc/net/arp`, after a datagram
//! to the peer's discard port has made the kernel ask when it did not know.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use snapnet_wire::MacAddr;

/// How long a look-up may take before the peer counts as unreachable.
const GIVE_UP_AFTER: Duration = Duration::from_secs(3);
/// How often the kernel is made to ask again meanwhile.
const PROBE_EVERY: Duration = Duration::from_millis(300);

/// The MAC the kernel has for `peer` on `interface`, if it has one.
pub fn lookup(interface: &str, peer: Ipv4Addr) -> Option<MacAddr> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    parse_arp_table(&table, interface, peer)
}

/// Looks `peer` up, making the kernel resolve it from `local` if needed.
pub fn resolve(interface: &str, local: Ipv4Addr, peer: Ipv4Addr) -> Option<MacAddr> {
    let start = Instant::now();
    let probe = UdpSocket::bind((local, 0)).ok();
    let mut probed: Option<Instant> = None;
    loop {
        if let Some(mac) = lookup(interface, peer) {
            return Some(mac);
        }
        if start.elapsed() >= GIVE_UP_AFTER {
            return None;
        }
        if probed.is_none_or(|t| t.elapsed() >= PROBE_EVERY) {
            if let Some(s) = &probe {
                let _ = s.send_to(&[], (peer, 9));
            }
            probed = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The complete entry for `peer` on `interface` in `/proc/net/arp`'s text.
fn parse_arp_table(table: &str, interface: &str, peer: Ipv4Addr) -> Option<MacAddr> {
    // IP address, HW type, Flags, HW address, Mask, Device.
    const COMPLETE: u32 = 0x2;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [ip, _, flags, mac, _, dev] = f.as_slice() else {
            return None;
        };
        let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
        let matches = ip.parse::<Ipv4Addr>().ok()? == peer && *dev == interface;
        (matches && flags & COMPLETE != 0)
            .then(|| mac.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_complete_entries_of_the_interface_only() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 10.0.0.2         0x1         0x2         02:00:00:00:00:02     *        up0\n\
                 10.0.0.3         0x1         0x0         00:00:00:00:00:00     *        up0\n\
                 10.0.0.4         0x1         0x2         02:00:00:00:00:04     *        other\n";
        let a = |ip: [u8; 4]| parse_arp_table(t, "up0", Ipv4Addr::from(ip));
        assert_eq!(a([10, 0, 0, 2]), Some(MacAddr([2, 0, 0, 0, 0, 2])));
        assert_eq!(a([10, 0, 0, 3]), None);
        assert_eq!(a([10, 0, 0, 4]), None);
        assert_eq!(a([10, 0, 0, 9]), None);
    }
}
