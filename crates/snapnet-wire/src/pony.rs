//! Pony Express packets (docs/pony.md, "Wire format"): the payload of a UDP
//! datagram to the host's Pony port. Every packet starts with the flow
//! header; a DATA packet then carries an operation header and a slice of the
//! operation's bytes, an ACK packet a selective acknowledgement. A
//! DATA_ACK packet is a DATA packet with an acknowledgement trailer: the
//! sender's ACK rides on data going the same way instead of costing a
//! packet of its own. A DATA packet may bundle several small operations:
//! the first as in a single-operation packet, the others after it, each
//! behind a segment header (see [`field::MORE`]).
//!
//! Everything here comes from the wire, so `parse` checks every length and
//! value range before anything reads it; what it returns can be trusted to
//! be self-consistent (not to name anything that exists).

use crate::bytes::{get_u16, get_u32, get_u64, set_u16, set_u32, set_u64};

/// UDP port Pony listens on, on the host's underlay address.
pub const PORT: u16 = 7471;
/// `"PX"`.
pub const MAGIC: u16 = 0x5058;
pub const VERSION: u8 = 1;

/// Flow header field offsets.
pub mod field {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 2;
    pub const KIND: usize = 3;
    pub const SRC_EPOCH: usize = 4;
    pub const DST_EPOCH: usize = 8;
    /// DATA: the packet's sequence number; ACK: the next sequence number
    /// expected (everything before it arrived).
    pub const SEQ: usize = 12;
    /// DATA: the sender's clock when it sent; ACK: that of the newest DATA
    /// packet that caused the ACK, echoed.
    pub const TIMESTAMP: usize = 16;
    /// ACK: nanoseconds the receiver held that packet before acking.
    pub const HOLD: usize = 24;
    /// DATA: operation segments bundled after the first (0: the packet
    /// carries one operation, and all its bytes after the op header are
    /// that operation's payload).
    pub const MORE: usize = 28;
    /// DATA with `MORE` > 0: the first operation's payload bytes; the
    /// bundled segments follow them.
    pub const FIRST_LEN: usize = 30;
    /// ACK: bitmap of packets received after the cumulative point.
    pub const SACK: usize = 32;

    /// Operation header offsets (DATA).
    pub const OP: usize = 32;
    pub const OP_FLAGS: usize = 33;
    pub const STREAM: usize = 34;
    pub const DST_CONN: usize = 36;
    pub const SRC_CONN: usize = 40;
    pub const TOTAL_LEN: usize = 44;
    pub const OP_ID: usize = 48;
    pub const OFFSET: usize = 56;
    pub const REGION: usize = 60;
    pub const ADDR: usize = 64;
    pub const AUX: usize = 72;
}

/// A bundled segment: a header of [`SEGMENT_HEADER_LEN`] bytes (the
/// payload's length, then two reserved bytes), the operation header (the
/// same fields as a DATA packet's, at [`field::OP`]-relative offsets), then
/// the payload.
pub mod segment {
    pub const PAYLOAD_LEN: usize = 0;
    pub const RESERVED: usize = 2;
    pub const OP: usize = 4;
}
/// Bytes of a bundled segment's own header.
pub const SEGMENT_HEADER_LEN: usize = segment::OP;
/// Bytes of an operation header.
pub const OP_HEADER_LEN: usize = DATA_HEADER_LEN - field::OP;
/// Bytes a bundled segment takes besides its payload.
pub const SEGMENT_OVERHEAD: usize = SEGMENT_HEADER_LEN + OP_HEADER_LEN;

/// Offsets in the acknowledgement trailer, the last [`ACK_TRAILER_LEN`]
/// bytes of a DATA_ACK packet.
pub mod trailer {
    /// Next sequence number expected (everything before it arrived).
    pub const CUMULATIVE: usize = 0;
    /// Nanoseconds the receiver held the echoed packet before acking.
    pub const HOLD: usize = 4;
    /// Timestamp of the newest DATA packet acknowledged, echoed.
    pub const ECHO: usize = 8;
    /// Bitmap of packets received after the cumulative point.
    pub const SACK: usize = 16;
}

/// Bytes of the flow header.
pub const FLOW_HEADER_LEN: usize = 32;
/// Bits in an ACK's selective acknowledgement.
pub const SACK_BITS: usize = 256;
/// Bytes of an ACK packet.
pub const ACK_LEN: usize = field::SACK + SACK_BITS / 8;
/// Bytes of a DATA packet's headers, before its payload.
pub const DATA_HEADER_LEN: usize = 80;
/// Bytes of the acknowledgement trailer of a DATA_ACK packet.
pub const ACK_TRAILER_LEN: usize = trailer::SACK + SACK_BITS / 8;

/// Packet kinds.
pub mod kind {
    pub const DATA: u8 = 1;
    pub const ACK: u8 = 2;
    /// DATA with an acknowledgement trailer after its payload.
    pub const DATA_ACK: u8 = 3;
}

/// Operations a DATA packet carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Open a connection to service `aux`; `src_conn` is the opener's id.
    Connect = 1,
    /// Connection accepted: `dst_conn` the opener's id, `src_conn` ours.
    Accept = 2,
    /// No such service (`dst_conn` the opener's id).
    Refuse = 3,
    /// The connection `dst_conn` is closed by its peer.
    Close = 4,
    /// A slice of message `op_id` on `stream`.
    Message = 5,
    /// A slice of a write to region `region` at `addr`.
    Write = 6,
    /// A write `op_id` finished (`flags`: status).
    WriteDone = 7,
    /// Read `total_len` bytes at `addr` of region `region`.
    ReadRequest = 8,
    /// A slice of the answer to read `op_id` (`flags`: status; `total_len`:
    /// the bytes the answer has).
    ReadResponse = 9,
    /// Indirect read: entry `addr` of table region `region`, data in region
    /// `aux`, at most `total_len` bytes.
    IndirectReadRequest = 10,
    /// Nothing: a retransmission whose bytes are gone (their application
    /// exited) still has to fill its sequence number.
    Nop = 11,
}

impl Op {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Op::Connect,
            2 => Op::Accept,
            3 => Op::Refuse,
            4 => Op::Close,
            5 => Op::Message,
            6 => Op::Write,
            7 => Op::WriteDone,
            8 => Op::ReadRequest,
            9 => Op::ReadResponse,
            10 => Op::IndirectReadRequest,
            11 => Op::Nop,
            _ => return None,
        })
    }

    /// Whether the packet carries part of the operation's bytes.
    pub fn has_payload(self) -> bool {
        matches!(self, Op::Message | Op::Write | Op::ReadResponse)
    }

    /// Whether the receiver may have to leave it for later (no room for a
    /// message's or write's bytes, a connection's completion): only a
    /// packet's first operation may, so that a bundle is either refused
    /// whole or taken whole, and a retransmission never delivers twice.
    pub fn may_wait(self) -> bool {
        matches!(self, Op::Connect | Op::Message | Op::Write)
    }
}

/// The flow header every packet has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowHeader {
    pub kind: u8,
    pub src_epoch: u32,
    pub dst_epoch: u32,
    pub seq: u32,
    pub timestamp: u64,
    pub hold: u32,
    /// DATA: operation segments bundled after the first.
    pub more: u16,
}

/// The operation header of a DATA packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpHeader {
    pub op: Op,
    pub flags: u8,
    pub stream: u16,
    pub dst_conn: u32,
    pub src_conn: u32,
    pub total_len: u32,
    pub op_id: u64,
    pub offset: u32,
    pub region: u32,
    pub addr: u64,
    pub aux: u64,
}

/// An acknowledgement: an ACK packet's fields, or a DATA_ACK's trailer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AckBlock {
    pub cumulative: u32,
    pub hold: u32,
    pub echo: u64,
    pub sack: [u64; SACK_BITS / 64],
}

/// The operations bundled after a DATA packet's first, checked by `parse`
/// (each fits, is a known operation, and cannot wait): iterating cannot
/// fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segments<'a> {
    bytes: &'a [u8],
}

impl<'a> Segments<'a> {
    pub const EMPTY: Segments<'static> = Segments { bytes: &[] };
}

impl<'a> Iterator for Segments<'a> {
    type Item = (OpHeader, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (h, payload, rest) = split_segment(self.bytes).ok()?;
        self.bytes = rest;
        Some((h, payload))
    }
}

/// A parsed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Data {
        flow: FlowHeader,
        op: OpHeader,
        payload: &'a [u8],
        /// The trailer of a DATA_ACK packet.
        ack: Option<AckBlock>,
        /// Operations bundled after the first.
        more: Segments<'a>,
    },
    Ack {
        flow: FlowHeader,
        sack: [u64; SACK_BITS / 64],
    },
}

/// Why a packet was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than its headers.
    Truncated,
    /// Not a Pony packet of this version.
    BadMagic,
    UnknownKind,
    UnknownOp,
    /// The payload does not fit inside the operation (`offset + len >
    /// total_len`), or an operation without payload carries some.
    BadLength,
    /// A bundle's segments do not add up to the packet, or one after the
    /// first is an operation that may wait.
    BadBundle,
}

/// Reads an operation header from the start of `b` (at least
/// [`OP_HEADER_LEN`] bytes) and checks `payload` against it.
fn parse_op(b: &[u8], payload: &[u8]) -> Result<OpHeader, ParseError> {
    let at = |f: usize| f - field::OP;
    let op = Op::from_u8(b[at(field::OP)]).ok_or(ParseError::UnknownOp)?;
    let h = OpHeader {
        op,
        flags: b[at(field::OP_FLAGS)],
        stream: get_u16(b, at(field::STREAM)),
        dst_conn: get_u32(b, at(field::DST_CONN)),
        src_conn: get_u32(b, at(field::SRC_CONN)),
        total_len: get_u32(b, at(field::TOTAL_LEN)),
        op_id: get_u64(b, at(field::OP_ID)),
        offset: get_u32(b, at(field::OFFSET)),
        region: get_u32(b, at(field::REGION)),
        addr: get_u64(b, at(field::ADDR)),
        aux: get_u64(b, at(field::AUX)),
    };
    let fits = u64::from(h.offset) + payload.len() as u64 <= u64::from(h.total_len);
    if (op.has_payload() && !fits) || (!op.has_payload() && !payload.is_empty()) {
        return Err(ParseError::BadLength);
    }
    Ok(h)
}

/// The bundled segment at the start of `b`: its operation, payload, and
/// the bytes after it.
fn split_segment(b: &[u8]) -> Result<(OpHeader, &[u8], &[u8]), ParseError> {
    if b.len() < SEGMENT_OVERHEAD {
        return Err(ParseError::BadBundle);
    }
    let len = usize::from(get_u16(b, segment::PAYLOAD_LEN));
    let Some(payload) = b.get(SEGMENT_OVERHEAD..SEGMENT_OVERHEAD + len) else {
        return Err(ParseError::BadBundle);
    };
    let h = parse_op(&b[segment::OP..], payload)?;
    if h.op.may_wait() {
        return Err(ParseError::BadBundle);
    }
    Ok((h, payload, &b[SEGMENT_OVERHEAD + len..]))
}

/// Parses a UDP payload.
pub fn parse(b: &[u8]) -> Result<Packet<'_>, ParseError> {
    if b.len() < FLOW_HEADER_LEN {
        return Err(ParseError::Truncated);
    }
    if get_u16(b, field::MAGIC) != MAGIC || b[field::VERSION] != VERSION {
        return Err(ParseError::BadMagic);
    }
    let flow = FlowHeader {
        kind: b[field::KIND],
        src_epoch: get_u32(b, field::SRC_EPOCH),
        dst_epoch: get_u32(b, field::DST_EPOCH),
        seq: get_u32(b, field::SEQ),
        timestamp: get_u64(b, field::TIMESTAMP),
        hold: get_u32(b, field::HOLD),
        more: get_u16(b, field::MORE),
    };
    match flow.kind {
        kind::ACK => {
            if b.len() < ACK_LEN {
                return Err(ParseError::Truncated);
            }
            let mut sack = [0u64; SACK_BITS / 64];
            for (i, w) in sack.iter_mut().enumerate() {
                *w = get_u64(b, field::SACK + 8 * i);
            }
            Ok(Packet::Ack { flow, sack })
        }
        kind::DATA | kind::DATA_ACK => {
            let (b, ack) = if flow.kind == kind::DATA_ACK {
                let Some(body) = b.len().checked_sub(ACK_TRAILER_LEN) else {
                    return Err(ParseError::Truncated);
                };
                let (body, t) = b.split_at(body);
                let mut sack = [0u64; SACK_BITS / 64];
                for (i, w) in sack.iter_mut().enumerate() {
                    *w = get_u64(t, trailer::SACK + 8 * i);
                }
                let ack = AckBlock {
                    cumulative: get_u32(t, trailer::CUMULATIVE),
                    hold: get_u32(t, trailer::HOLD),
                    echo: get_u64(t, trailer::ECHO),
                    sack,
                };
                (body, Some(ack))
            } else {
                (b, None)
            };
            if b.len() < DATA_HEADER_LEN {
                return Err(ParseError::Truncated);
            }
            let body = &b[DATA_HEADER_LEN..];
            let (payload, rest) = if flow.more == 0 {
                (body, &body[body.len()..])
            } else {
                let first = usize::from(get_u16(b, field::FIRST_LEN));
                if first > body.len() {
                    return Err(ParseError::BadBundle);
                }
                body.split_at(first)
            };
            let h = parse_op(&b[field::OP..], payload)?;
            // Every bundled segment checked now, so that the engine can
            // iterate them without failing half way.
            let mut left = rest;
            for _ in 0..flow.more {
                left = split_segment(left)?.2;
            }
            if !left.is_empty() {
                return Err(ParseError::BadBundle);
            }
            Ok(Packet::Data {
                flow,
                op: h,
                payload,
                ack,
                more: Segments { bytes: rest },
            })
        }
        _ => Err(ParseError::UnknownKind),
    }
}

/// Writes a flow header at the start of `out` (at least
/// [`FLOW_HEADER_LEN`] bytes).
pub fn emit_flow(f: &FlowHeader, out: &mut [u8]) {
    set_u16(out, field::MAGIC, MAGIC);
    out[field::VERSION] = VERSION;
    out[field::KIND] = f.kind;
    set_u32(out, field::SRC_EPOCH, f.src_epoch);
    set_u32(out, field::DST_EPOCH, f.dst_epoch);
    set_u32(out, field::SEQ, f.seq);
    set_u64(out, field::TIMESTAMP, f.timestamp);
    set_u32(out, field::HOLD, f.hold);
    set_u16(out, field::MORE, f.more);
    set_u16(out, field::FIRST_LEN, 0);
}

/// Writes an ACK packet (flow header with `kind` ACK, then the bitmap) into
/// `out` (at least [`ACK_LEN`] bytes).
pub fn emit_ack(f: &FlowHeader, sack: &[u64; SACK_BITS / 64], out: &mut [u8]) {
    emit_flow(
        &FlowHeader {
            kind: kind::ACK,
            ..*f
        },
        out,
    );
    for (i, w) in sack.iter().enumerate() {
        set_u64(out, field::SACK + 8 * i, *w);
    }
}

/// Writes a DATA packet's headers into `out` (at least
/// [`DATA_HEADER_LEN`] bytes); the payload goes after them. `f.kind` says
/// whether it is DATA or DATA_ACK (then [`emit_ack_trailer`] writes the
/// trailer after the payload); anything else is taken for DATA.
pub fn emit_data(f: &FlowHeader, h: &OpHeader, out: &mut [u8]) {
    let kind = if f.kind == kind::DATA_ACK {
        kind::DATA_ACK
    } else {
        kind::DATA
    };
    emit_flow(&FlowHeader { kind, ..*f }, out);
    emit_op(h, &mut out[field::OP..]);
}

/// Writes an operation header at the start of `out`.
fn emit_op(h: &OpHeader, out: &mut [u8]) {
    let at = |f: usize| f - field::OP;
    out[at(field::OP)] = h.op as u8;
    out[at(field::OP_FLAGS)] = h.flags;
    set_u16(out, at(field::STREAM), h.stream);
    set_u32(out, at(field::DST_CONN), h.dst_conn);
    set_u32(out, at(field::SRC_CONN), h.src_conn);
    set_u32(out, at(field::TOTAL_LEN), h.total_len);
    set_u64(out, at(field::OP_ID), h.op_id);
    set_u32(out, at(field::OFFSET), h.offset);
    set_u32(out, at(field::REGION), h.region);
    set_u64(out, at(field::ADDR), h.addr);
    set_u64(out, at(field::AUX), h.aux);
}

/// Marks a DATA packet written by [`emit_data`] (with `f.more` segments
/// bundled) as carrying `first_len` payload bytes for its first operation.
pub fn set_first_len(first_len: u16, out: &mut [u8]) {
    set_u16(out, field::FIRST_LEN, first_len);
}

/// Writes a bundled segment's headers at the start of `out` (at least
/// [`SEGMENT_OVERHEAD`] bytes); its `payload_len` bytes of payload go
/// after them.
pub fn emit_segment(h: &OpHeader, payload_len: u16, out: &mut [u8]) {
    set_u16(out, segment::PAYLOAD_LEN, payload_len);
    set_u16(out, segment::RESERVED, 0);
    emit_op(h, &mut out[segment::OP..]);
}

/// Writes a DATA_ACK packet's trailer into `out` (exactly
/// [`ACK_TRAILER_LEN`] bytes: the packet's last).
pub fn emit_ack_trailer(a: &AckBlock, out: &mut [u8]) {
    set_u32(out, trailer::CUMULATIVE, a.cumulative);
    set_u32(out, trailer::HOLD, a.hold);
    set_u64(out, trailer::ECHO, a.echo);
    for (i, w) in a.sack.iter().enumerate() {
        set_u64(out, trailer::SACK + 8 * i, *w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_header(op: Op, total: u32, offset: u32) -> OpHeader {
        OpHeader {
            op,
            flags: 0,
            stream: 3,
            dst_conn: 4,
            src_conn: 5,
            total_len: total,
            op_id: 6,
            offset,
            region: 7,
            addr: 8,
            aux: 9,
        }
    }

    fn flow() -> FlowHeader {
        FlowHeader {
            kind: kind::DATA,
            src_epoch: 1,
            dst_epoch: 2,
            seq: 77,
            timestamp: 123_456,
            hold: 0,
            more: 0,
        }
    }

    /// A DATA packet bundling `ops` (header, payload) after its first,
    /// with `ack` as trailer when given.
    fn bundle(
        first: (&OpHeader, &[u8]),
        ops: &[(OpHeader, &[u8])],
        ack: Option<&AckBlock>,
    ) -> Vec<u8> {
        let f = FlowHeader {
            kind: if ack.is_some() {
                kind::DATA_ACK
            } else {
                kind::DATA
            },
            more: ops.len() as u16,
            ..flow()
        };
        let mut b = vec![0u8; DATA_HEADER_LEN];
        emit_data(&f, first.0, &mut b);
        set_first_len(first.1.len() as u16, &mut b);
        b.extend_from_slice(first.1);
        for (h, payload) in ops {
            let at = b.len();
            b.resize(at + SEGMENT_OVERHEAD, 0);
            emit_segment(h, payload.len() as u16, &mut b[at..]);
            b.extend_from_slice(payload);
        }
        if let Some(a) = ack {
            let at = b.len();
            b.resize(at + ACK_TRAILER_LEN, 0);
            emit_ack_trailer(a, &mut b[at..]);
        }
        b
    }

    #[test]
    fn bundles_round_trip_with_and_without_a_trailer() {
        let first = data_header(Op::Message, 5, 0);
        let read = data_header(Op::IndirectReadRequest, 64, 0);
        let answer = data_header(Op::ReadResponse, 64, 0);
        let ops = [(read, &[][..]), (answer, &[7u8; 64][..]), (read, &[][..])];
        let ack = AckBlock {
            cumulative: 3,
            ..AckBlock::default()
        };
        for trailer in [None, Some(&ack)] {
            let b = bundle((&first, b"hello"), &ops, trailer);
            let Ok(Packet::Data {
                flow: f,
                op,
                payload,
                ack: got_ack,
                more,
            }) = parse(&b)
            else {
                panic!("{:?}", parse(&b));
            };
            assert_eq!((f.more, op, payload), (3, first, &b"hello"[..]));
            assert_eq!(got_ack, trailer.copied());
            assert_eq!(more.collect::<Vec<_>>(), ops.to_vec());
        }
        // A single-operation packet bundles nothing.
        let mut b = vec![0u8; DATA_HEADER_LEN + 3];
        emit_data(&flow(), &first, &mut b);
        let Ok(Packet::Data { more, payload, .. }) = parse(&b) else {
            panic!()
        };
        assert_eq!((more.count(), payload.len()), (0, 3));
    }

    #[test]
    fn bundles_that_do_not_add_up_or_bundle_what_may_wait_are_refused() {
        let first = data_header(Op::ReadRequest, 64, 0);
        let read = data_header(Op::ReadRequest, 64, 0);
        let ok = bundle((&first, &[]), &[(read, &[])], None);
        assert!(parse(&ok).is_ok());
        // A message, a write or a connect only ever comes first.
        for op in [Op::Message, Op::Write, Op::Connect] {
            let h = data_header(op, 64, 0);
            let payload: &[u8] = if op.has_payload() { &[1u8; 4] } else { &[] };
            let b = bundle((&first, &[]), &[(h, payload)], None);
            assert_eq!(parse(&b), Err(ParseError::BadBundle), "{op:?}");
        }
        // Fewer segments than announced, more bytes than segments, a
        // segment cut short, a first payload past the end.
        let mut b = ok.clone();
        set_u16(&mut b, field::MORE, 2);
        assert_eq!(parse(&b), Err(ParseError::BadBundle));
        let mut b = ok.clone();
        b.push(0);
        assert_eq!(parse(&b), Err(ParseError::BadBundle));
        assert_eq!(parse(&ok[..ok.len() - 1]), Err(ParseError::BadBundle));
        let mut b = ok.clone();
        set_first_len(1000, &mut b);
        assert_eq!(parse(&b), Err(ParseError::BadBundle));
        // A segment's payload is checked against its operation too.
        let b = bundle(
            (&first, &[]),
            &[(data_header(Op::ReadResponse, 4, 0), &[0u8; 5])],
            None,
        );
        assert_eq!(parse(&b), Err(ParseError::BadLength));
        let mut b = bundle((&first, &[]), &[(read, &[])], None);
        b[DATA_HEADER_LEN + segment::OP] = 0;
        assert_eq!(parse(&b), Err(ParseError::UnknownOp));
    }

    #[test]
    fn data_round_trips() {
        let mut b = vec![0u8; DATA_HEADER_LEN + 10];
        let h = data_header(Op::Message, 100, 90);
        emit_data(&flow(), &h, &mut b);
        b[DATA_HEADER_LEN..].copy_from_slice(&[0xab; 10]);
        match parse(&b).unwrap() {
            Packet::Data {
                flow: f,
                op,
                payload,
                ack,
                more,
            } => {
                assert_eq!(more.count(), 0);
                assert_eq!(f, flow());
                assert_eq!(op, h);
                assert_eq!(payload, &[0xab; 10]);
                assert_eq!(ack, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn data_with_an_ack_trailer_round_trips() {
        let mut b = vec![0u8; DATA_HEADER_LEN + 10 + ACK_TRAILER_LEN];
        let h = data_header(Op::Message, 100, 90);
        let f = FlowHeader {
            kind: kind::DATA_ACK,
            ..flow()
        };
        let a = AckBlock {
            cumulative: 41,
            hold: 7,
            echo: 99_999,
            sack: [5, 0, 0, 1 << 63],
        };
        emit_data(&f, &h, &mut b);
        b[DATA_HEADER_LEN..DATA_HEADER_LEN + 10].copy_from_slice(&[0xab; 10]);
        emit_ack_trailer(&a, &mut b[DATA_HEADER_LEN + 10..]);
        assert_eq!(
            parse(&b),
            Ok(Packet::Data {
                flow: f,
                op: h,
                payload: &[0xab; 10],
                ack: Some(a),
                more: Segments::EMPTY,
            })
        );
        // The trailer is taken off the end before the payload is checked:
        // cut short, the packet is truncated or its payload too short.
        assert_eq!(
            parse(&b[..DATA_HEADER_LEN + ACK_TRAILER_LEN - 1]),
            Err(ParseError::Truncated)
        );
        assert_eq!(parse(&b[..FLOW_HEADER_LEN + 4]), Err(ParseError::Truncated));
        match parse(&b[..b.len() - 1]) {
            Ok(Packet::Data { payload, ack, .. }) => {
                assert_eq!(payload.len(), 9);
                assert!(ack.is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ack_round_trips() {
        let mut b = vec![0u8; ACK_LEN];
        let sack = [1, 2, 3, u64::MAX];
        let f = FlowHeader {
            kind: kind::ACK,
            hold: 55,
            ..flow()
        };
        emit_ack(&f, &sack, &mut b);
        assert_eq!(parse(&b).unwrap(), Packet::Ack { flow: f, sack });
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let mut b = vec![0u8; DATA_HEADER_LEN + 10];
        emit_data(&flow(), &data_header(Op::Message, 100, 91), &mut b);
        assert_eq!(parse(&b), Err(ParseError::BadLength));
        emit_data(&flow(), &data_header(Op::ReadRequest, 100, 0), &mut b);
        assert_eq!(parse(&b), Err(ParseError::BadLength));
        emit_data(
            &flow(),
            &data_header(Op::Message, u32::MAX, u32::MAX),
            &mut b,
        );
        assert_eq!(parse(&b), Err(ParseError::BadLength));
        assert_eq!(parse(&b[..DATA_HEADER_LEN - 1]), Err(ParseError::Truncated));
        assert_eq!(parse(&b[..10]), Err(ParseError::Truncated));
        let mut bad = b.clone();
        bad[field::OP] = 0;
        assert_eq!(parse(&bad), Err(ParseError::UnknownOp));
        bad[field::KIND] = 9;
        assert_eq!(parse(&bad), Err(ParseError::UnknownKind));
        bad[0] = 0;
        assert_eq!(parse(&bad), Err(ParseError::BadMagic));
        let mut ack = vec![0u8; ACK_LEN];
        emit_ack(&flow(), &[0; 4], &mut ack);
        assert_eq!(parse(&ack[..ACK_LEN - 1]), Err(ParseError::Truncated));
    }
}
