//! ARP, ICMP echo and TCP super-frames as a guest sends and answers them.

use snapnet_wire::checksum::ones_sum;

pub const BROADCAST: [u8; 6] = [0xff; 6];

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(98);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An ARP request (`op` 1) or reply (`op` 2).
pub fn arp(
    op: u16,
    dst: [u8; 6],
    mac: [u8; 6],
    ip: [u8; 4],
    target_mac: [u8; 6],
    target_ip: [u8; 4],
) -> Vec<u8> {
    let mut f = eth(dst, mac, 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&target_mac);
    f.extend_from_slice(&target_ip);
    f.resize(60, 0);
    f
}

/// What an ARP frame says.
#[derive(Debug)]
pub struct Arp {
    pub op: u16,
    pub mac: [u8; 6],
    pub ip: [u8; 4],
    pub target: [u8; 4],
}

pub fn parse_arp(f: &[u8]) -> Option<Arp> {
    if f.len() < 42 || f[12..14] != [0x08, 0x06] {
        return None;
    }
    Some(Arp {
        op: u16::from_be_bytes([f[20], f[21]]),
        mac: f[22..28].try_into().ok()?,
        ip: f[28..32].try_into().ok()?,
        target: f[38..42].try_into().ok()?,
    })
}

/// An IPv4 ICMP echo request (`kind` 8) or reply (`kind` 0).
#[allow(clippy::too_many_arguments)]
pub fn icmp_echo(
    kind: u8,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    id: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, 0x0800);
    let total = 20 + 8 + payload.len();
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = !ones_sum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut icmp = vec![kind, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = !ones_sum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&icmp);
    f
}

/// What an ICMP echo frame says.
#[derive(Debug)]
pub struct Echo {
    /// 8 request, 0 reply.
    pub kind: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub id: u16,
    pub seq: u16,
    pub payload: Vec<u8>,
}

pub fn parse_icmp_echo(f: &[u8]) -> Option<Echo> {
    if f.len() < 42 || f[12..14] != [0x08, 0x00] || f[23] != 1 {
        return None;
    }
    let ihl = usize::from(f[14] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let icmp = f.get(14 + ihl..14 + total)?;
    if icmp.len() < 8 || !ones_sum(icmp) != 0 {
        return None;
    }
    Some(Echo {
        kind: icmp[0],
        src: f[26..30].try_into().ok()?,
        dst: f[30..34].try_into().ok()?,
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
        payload: icmp[8..].to_vec(),
    })
}

/// A TCP/IPv4 segment of `payload` bytes (54 bytes of headers) as a guest
/// hands it to a device with TSO: lengths filled in, the TCP checksum field
/// holding only the pseudo-header seed, to be finished by whoever segments.
pub fn tcp4_super_frame(dst_mac: [u8; 6], src_mac: [u8; 6], payload: usize) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, 0x0800);
    let total = 20 + 20 + payload;
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&(total.min(0xffff) as u16).to_be_bytes());
    ip.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    let c = !ones_sum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    // Ports 8080 -> 80, seq 1, ack 1, 20-byte header, ACK|PSH, window.
    f.extend_from_slice(&[
        0x1f, 0x90, 0, 0x50, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff,
    ]);
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend((0..payload).map(|i| (i % 251) as u8));
    f
}
