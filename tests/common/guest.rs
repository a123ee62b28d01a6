//! A guest behind a Rust frontend that answers ARP for its address and ICMP
//! echo requests, as a host would.

use std::thread;
use std::time::{Duration, Instant};

use snapnet_frontend::{Frontend, VirtioNetHdr};

use super::packets::{arp, icmp_echo, parse_arp, parse_icmp_echo};

/// A guest on a vNIC: answers ARP for its address and ICMP echo requests,
/// and keeps whatever else arrives.
pub struct Guest {
    pub nic: Frontend,
    pub mac: [u8; 6],
    pub ip: [u8; 4],
    pub answered_arp: usize,
    pub answered_echo: usize,
}

impl Guest {
    pub fn send(&mut self, f: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.nic.send(0, &[f], &VirtioNetHdr::default()) == 0 {
            assert!(Instant::now() < deadline, "guest TX ring stays full");
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Receives for up to `timeout`, answering as a host would, until `want`
    /// accepts a frame; returns that frame.
    pub fn serve_until(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut got = Vec::new();
            self.nic.recv(0, |_, p| got.push(p.to_vec()));
            for f in got {
                if let Some(reply) = self.answer(&f) {
                    self.send(&reply);
                }
                if want(&f) {
                    return Some(f);
                }
            }
            self.nic.wait_rx(0, Duration::from_millis(20));
        }
        None
    }

    pub fn answer(&mut self, f: &[u8]) -> Option<Vec<u8>> {
        // Like a NIC: frames for another unicast MAC are not for us.
        if f.len() < 14 || (f[0] & 1 == 0 && f[..6] != self.mac) {
            return None;
        }
        if let Some(a) = parse_arp(f) {
            if a.op == 1 && a.target == self.ip {
                self.answered_arp += 1;
                return Some(arp(2, a.mac, self.mac, self.ip, a.mac, a.ip));
            }
        }
        if let Some(e) = parse_icmp_echo(f) {
            if e.kind == 8 && e.dst == self.ip {
                self.answered_echo += 1;
                let src_mac: [u8; 6] = f[6..12].try_into().unwrap();
                return Some(icmp_echo(
                    0, src_mac, self.mac, self.ip, e.src, e.id, e.seq, &e.payload,
                ));
            }
        }
        None
    }
}

impl Guest {
    pub fn new(nic: Frontend, mac: [u8; 6], ip: [u8; 4]) -> Self {
        Guest {
            nic,
            mac,
            ip,
            answered_arp: 0,
            answered_echo: 0,
        }
    }
}
