//! Internet checksum (RFC 1071), for completing a partial checksum in software
//! when the receiving guest did not negotiate checksum offload.

/// One's-complement sum of `data`, folded to 16 bits (not inverted).
pub fn ones_sum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes(c.try_into().expect("8 bytes"));
        sum = sum.wrapping_add(v >> 32).wrapping_add(v & 0xffff_ffff);
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = rest.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Completes a CHECKSUM_PARTIAL packet: the field at `start + offset` holds
/// the pseudo-header sum; the result is the checksum of `[start, len)`.
/// Returns false when the offsets do not fit the packet.
pub fn complete_partial(packet: &mut [u8], start: usize, offset: usize) -> bool {
    let field = match start.checked_add(offset) {
        Some(f) if f + 2 <= packet.len() && start <= packet.len() => f,
        _ => return false,
    };
    let sum = !ones_sum(&packet[start..]);
    // RFC 768: a computed UDP checksum of zero is sent as all ones; harmless for TCP.
    let sum = if sum == 0 { 0xffff } else { sum };
    packet[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example bytes sum to 0xddf2.
        assert_eq!(
            ones_sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
        assert_eq!(ones_sum(&[0x01]), 0x0100);
    }

    #[test]
    fn completed_checksum_verifies_to_zero() {
        let mut p = vec![0u8; 40];
        for (i, b) in p.iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        p[20] = 0;
        p[21] = 0;
        assert!(complete_partial(&mut p, 4, 16));
        assert_eq!(!ones_sum(&p[4..]), 0);
        assert!(!complete_partial(&mut p, 39, 1));
        assert!(!complete_partial(&mut p, usize::MAX, 2));
    }
}
