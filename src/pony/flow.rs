//! The reliable part of a Pony flow (docs/pony.md, "Reliability"): the
//! sender's sequence numbers, packets in flight, RTT estimate, loss
//! detection by SACK and retransmission timers, and the receiver's
//! cumulative point and bitmap that make delivery exactly once.
//!
//! Pure logic: the caller passes the time and the ACK's fields, and rebuilds
//! packets from the tokens it gets back. Everything an ACK says comes from
//! the wire, so nothing here trusts it beyond what it can check: an ACK can
//! only acknowledge packets that are in flight.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use snapnet_wire::pony::{AckBlock, SACK_BITS};

use super::swift::{Swift, SwiftConfig};

/// The bitmap is carried as `[u64; 4]`.
const SACK_WORDS: usize = 4;
const _: () = assert!(SACK_BITS == SACK_WORDS * 64);

/// A flow's reliability parameters (config keys of the `pony` section).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlowConfig {
    pub rto_min_ns: u64,
    /// Also the cap of a packet's backed-off timer.
    pub rto_max_ns: u64,
    /// The RTO until the first RTT sample.
    pub rto_initial_ns: u64,
    /// Timeouts of one packet (each followed by a retransmission) before the
    /// flow is declared dead: the next timeout fails it.
    pub max_retransmits: u32,
    /// Packets sent after one that must be acknowledged before it counts as
    /// lost rather than reordered.
    pub reorder_threshold: u32,
    pub swift: SwiftConfig,
    /// The receiving half's acknowledgements.
    pub ack: AckPolicy,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            rto_min_ns: 2_000_000,
            rto_max_ns: 200_000_000,
            rto_initial_ns: 10_000_000,
            max_retransmits: 15,
            reorder_threshold: 3,
            swift: SwiftConfig::default(),
            ack: AckPolicy::IMMEDIATE,
        }
    }
}

/// A sender's counters and estimates, for status and metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SenderStats {
    pub window: f64,
    /// 0 until the first RTT sample.
    pub srtt_ns: u64,
    pub rttvar_ns: u64,
    pub rto_ns: u64,
    pub in_flight: usize,
    /// New packets sent (retransmissions not included).
    pub sent: u64,
    pub acked: u64,
    /// Retransmissions because a packet's timer expired.
    pub retransmit_timeout: u64,
    /// Retransmissions because later packets were acknowledged.
    pub retransmit_loss: u64,
}

/// A packet the receiver has not acknowledged yet.
#[derive(Clone, Copy, Debug)]
struct Unacked<T> {
    token: T,
    last_sent_ns: u64,
    /// Position of its latest transmission in the order of all
    /// transmissions: loss detection compares it with that of acknowledged
    /// packets, so a retransmission is judged only by packets sent after it.
    transmission: u64,
    timeouts: u32,
    retransmitted: bool,
    lost: bool,
}

#[derive(Clone, Copy, Debug)]
enum Slot<T> {
    Unacked(Unacked<T>),
    /// Kept until everything before it is acknowledged, as evidence against
    /// the packets below it that are still missing.
    Acked {
        transmission: u64,
    },
}

/// The sending half of a flow. `T` is whatever lets the caller rebuild a
/// packet (operation and offset): the sender keeps no copy of the bytes.
#[derive(Clone, Debug)]
pub struct Sender<T> {
    cfg: FlowConfig,
    swift: Swift,
    /// Internal (64-bit) sequence number of `slots[0]`; `slots` covers
    /// everything from it up to the next sequence number to send.
    base_seq: u64,
    slots: VecDeque<Slot<T>>,
    unacked: usize,
    next_transmission: u64,
    /// Echoes older than the first packet are not ours to measure with.
    first_send_ns: Option<u64>,
    /// `None` until the first RTT sample.
    srtt_ns: Option<u64>,
    rttvar_ns: u64,
    rto_ns: u64,
    failed: bool,
    /// Scratch for `retransmits`: (slot offset, why) of what is due.
    due: Vec<(usize, Resend)>,
    sent: u64,
    acked: u64,
    retransmit_timeout: u64,
    retransmit_loss: u64,
    /// Scratch for loss detection, kept to avoid an allocation per ACK.
    later_acked: BinaryHeap<Reverse<u64>>,
}

impl<T: Copy> Sender<T> {
    pub fn new(cfg: FlowConfig) -> Self {
        Self::starting_at(cfg, 0)
    }

    /// A sender whose first packet gets internal sequence number `seq`.
    pub(crate) fn starting_at(cfg: FlowConfig, seq: u64) -> Self {
        Self {
            cfg,
            swift: Swift::new(cfg.swift),
            base_seq: seq,
            slots: VecDeque::new(),
            unacked: 0,
            next_transmission: 0,
            first_send_ns: None,
            srtt_ns: None,
            rttvar_ns: 0,
            rto_ns: bound(cfg.rto_initial_ns, cfg.rto_min_ns, cfg.rto_max_ns),
            failed: false,
            due: Vec::new(),
            sent: 0,
            acked: 0,
            retransmit_timeout: 0,
            retransmit_loss: 0,
            later_acked: BinaryHeap::new(),
        }
    }

    /// Whether a new packet may go out now: the congestion window has room,
    /// and the receiver's bitmap (which starts at the oldest unacknowledged
    /// packet) reaches the new packet's sequence number. A dead flow sends
    /// nothing.
    pub fn can_send(&self) -> bool {
        let window = (self.swift.window().floor() as usize).max(1);
        !self.failed && self.unacked < window && self.slots.len() < SACK_BITS
    }

    /// Records a new packet sent at `now_ns`; returns its sequence number on
    /// the wire.
    pub fn sent(&mut self, token: T, now_ns: u64) -> u32 {
        let seq = self.next_seq();
        let transmission = self.take_transmission();
        self.slots.push_back(Slot::Unacked(Unacked {
            token,
            last_sent_ns: now_ns,
            transmission,
            timeouts: 0,
            retransmitted: false,
            lost: false,
        }));
        self.unacked += 1;
        self.sent += 1;
        self.first_send_ns.get_or_insert(now_ns);
        seq as u32
    }

    /// An ACK arrived: pushes the tokens of the packets it newly
    /// acknowledges to `acked`, updates the RTT estimate and the window, and
    /// marks the packets it shows lost. Anything it says about packets that
    /// are not in flight is ignored.
    pub fn on_ack(
        &mut self,
        cumulative: u32,
        sack: &[u64; 4],
        echo_ns: u64,
        hold_ns: u32,
        now_ns: u64,
        acked: &mut Vec<T>,
    ) {
        let span = self.slots.len() as u64;
        let mut newly_acked = 0usize;

        // Offsets from the oldest packet in flight, in wire space: a stale
        // or forged cumulative point lands outside 0..=span and is ignored.
        let cumulative_offset = u64::from(cumulative.wrapping_sub(self.base_seq as u32));
        if cumulative_offset <= span {
            for slot in self.slots.iter_mut().take(cumulative_offset as usize) {
                newly_acked += usize::from(acknowledge(slot, acked));
            }
        }
        // The bits of a stale ACK are still true, so they count whenever
        // they name a packet in flight.
        for (word_index, &word) in sack.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let bit = word_index * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let seq = cumulative.wrapping_add(1).wrapping_add(bit as u32);
                let offset = seq.wrapping_sub(self.base_seq as u32) as usize;
                if let Some(slot) = self.slots.get_mut(offset) {
                    newly_acked += usize::from(acknowledge(slot, acked));
                }
            }
        }
        if newly_acked == 0 {
            // Nothing in flight was acknowledged: a duplicate, stale or
            // forged ACK, which must not move the estimates either.
            return;
        }
        self.unacked -= newly_acked;
        self.acked += newly_acked as u64;
        while let Some(Slot::Acked { .. }) = self.slots.front() {
            self.slots.pop_front();
            self.base_seq = self.base_seq.wrapping_add(1);
        }

        if let Some(delay_ns) = self.rtt_sample(echo_ns, hold_ns, now_ns) {
            self.update_rtt(delay_ns);
            let srtt_ns = self.rtt_estimate_ns();
            let newly_acked = u32::try_from(newly_acked).unwrap_or(u32::MAX);
            self.swift.on_ack(newly_acked, delay_ns, srtt_ns, now_ns);
        }
        if self.detect_losses() {
            self.swift.on_loss(self.rtt_estimate_ns(), now_ns);
        }
    }

    /// Pushes the packets to resend now (wire sequence number and token):
    /// those found lost, unless resent within the last SRTT, and those
    /// whose timer expired, each timeout doubling that packet's timer (up to
    /// `rto_max_ns`). They count as sent at `now_ns`.
    ///
    /// A packet timing out for the `max_retransmits + 1`st time fails the
    /// flow instead: nothing from that call is to be resent and the caller
    /// should check `failed()`.
    pub fn retransmits(&mut self, now_ns: u64, out: &mut Vec<(u32, T)>) {
        if self.failed {
            return;
        }
        let srtt_ns = self.rtt_estimate_ns();
        let (rto_ns, rto_max_ns) = (self.rto_ns, self.cfg.rto_max_ns);
        let max_retransmits = self.cfg.max_retransmits;
        // One walk over the window (it runs every poll) finds what is due.
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        for (offset, slot) in self.slots.iter().enumerate() {
            if let Slot::Unacked(packet) = slot {
                if let Some(why) = resend_reason(packet, now_ns, srtt_ns, rto_ns, rto_max_ns) {
                    due.push((offset, why));
                }
            }
        }
        // Decided before anything is resent, so a dying flow sends nothing
        // more and its counters stay true.
        self.failed = due.iter().any(|&(offset, why)| {
            why == Resend::Timeout
                && matches!(&self.slots[offset], Slot::Unacked(p) if p.timeouts >= max_retransmits)
        });
        if self.failed || due.is_empty() {
            self.due = due;
            return;
        }
        let mut timed_out = false;
        let mut transmission = self.next_transmission;
        for &(offset, why) in &due {
            let Some(Slot::Unacked(packet)) = self.slots.get_mut(offset) else {
                continue;
            };
            match why {
                Resend::Loss => self.retransmit_loss += 1,
                Resend::Timeout => {
                    packet.timeouts += 1;
                    timed_out = true;
                    self.retransmit_timeout += 1;
                }
            }
            packet.last_sent_ns = now_ns;
            packet.transmission = transmission;
            transmission += 1;
            packet.retransmitted = true;
            packet.lost = false;
            let seq = self.base_seq.wrapping_add(offset as u64);
            out.push((seq as u32, packet.token));
        }
        self.next_transmission = transmission;
        self.due = due;
        if timed_out {
            self.swift.on_timeout(now_ns);
        }
    }

    /// The earliest time `retransmits` may return something (possibly
    /// already past); `None` if nothing is in flight or the flow is dead.
    pub fn deadline(&self) -> Option<u64> {
        if self.failed {
            return None;
        }
        let srtt_ns = self.rtt_estimate_ns();
        self.slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::Unacked(packet) => {
                    let timeout = timeout_ns(packet, self.rto_ns, self.cfg.rto_max_ns);
                    Some(if packet.lost {
                        timeout.min(loss_resend_ns(packet, srtt_ns))
                    } else {
                        timeout
                    })
                }
                Slot::Acked { .. } => None,
            })
            .min()
    }

    /// A packet timed out more than `max_retransmits` times: the flow is
    /// dead (its connections close with UNREACHABLE).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Packets sent and not acknowledged.
    pub fn in_flight(&self) -> usize {
        self.unacked
    }

    pub fn stats(&self) -> SenderStats {
        SenderStats {
            window: self.swift.window(),
            srtt_ns: self.srtt_ns.unwrap_or(0),
            rttvar_ns: self.rttvar_ns,
            rto_ns: self.rto_ns,
            in_flight: self.unacked,
            sent: self.sent,
            acked: self.acked,
            retransmit_timeout: self.retransmit_timeout,
            retransmit_loss: self.retransmit_loss,
        }
    }

    /// Flow reset: pushes the token of every packet in flight, oldest
    /// first, and forgets them. Sequence numbers go on from where they were;
    /// a dead flow stays dead.
    pub fn drain(&mut self, out: &mut Vec<T>) {
        let next_seq = self.next_seq();
        for slot in self.slots.drain(..) {
            if let Slot::Unacked(packet) = slot {
                out.push(packet.token);
            }
        }
        self.base_seq = next_seq;
        self.unacked = 0;
    }

    fn next_seq(&self) -> u64 {
        self.base_seq.wrapping_add(self.slots.len() as u64)
    }

    fn take_transmission(&mut self) -> u64 {
        let transmission = self.next_transmission;
        self.next_transmission += 1;
        transmission
    }

    /// The path's delay as this ACK measured it: from when the echoed packet
    /// was sent to now, less the time the receiver held it. `None` when the
    /// echo cannot be one of our timestamps.
    fn rtt_sample(&self, echo_ns: u64, hold_ns: u32, now_ns: u64) -> Option<u64> {
        let first_send_ns = self.first_send_ns?;
        if echo_ns < first_send_ns || echo_ns > now_ns {
            return None;
        }
        (now_ns - echo_ns).checked_sub(u64::from(hold_ns))
    }

    /// RFC 6298, section 2. Timestamp echoes make every sample unambiguous,
    /// retransmissions' included, so Karn's rule is not needed.
    fn update_rtt(&mut self, sample_ns: u64) {
        let srtt_ns = match self.srtt_ns {
            None => {
                self.rttvar_ns = sample_ns / 2;
                sample_ns
            }
            Some(srtt_ns) => {
                // rttvar = 3/4 rttvar + 1/4 |srtt - r|, srtt = 7/8 srtt +
                // 1/8 r, in a form that cannot overflow.
                let deviation = srtt_ns.abs_diff(sample_ns);
                self.rttvar_ns =
                    (self.rttvar_ns - self.rttvar_ns / 4).saturating_add(deviation / 4);
                (srtt_ns - srtt_ns / 8).saturating_add(sample_ns / 8)
            }
        };
        self.srtt_ns = Some(srtt_ns);
        // Samples leave out how long the receiver held a packet, but an
        // ACK may really come that much later (a delayed ACK): as QUIC's
        // max_ack_delay, the receiver's delay (taken to be ours: hosts of
        // one fabric share a config) is added to the timeout.
        let rto_ns = srtt_ns
            .saturating_add(self.rttvar_ns.saturating_mul(4))
            .saturating_add(self.cfg.ack.delay_ns);
        self.rto_ns = bound(rto_ns, self.cfg.rto_min_ns, self.cfg.rto_max_ns);
    }

    fn rtt_estimate_ns(&self) -> u64 {
        self.srtt_ns.unwrap_or(self.rto_ns)
    }

    /// Marks lost every unacknowledged packet of which at least
    /// `reorder_threshold` later packets (higher sequence number and sent
    /// after its latest transmission) are acknowledged; true if it marked
    /// any.
    fn detect_losses(&mut self) -> bool {
        // A threshold of 0 would call every packet lost at once.
        let threshold = self.cfg.reorder_threshold.max(1) as usize;
        // Walking down from the newest packet, `later_acked` holds the
        // `threshold` latest transmissions acknowledged above the current
        // one: the packet is lost if the earliest of them came after it.
        let later_acked = &mut self.later_acked;
        later_acked.clear();
        let mut found = false;
        for slot in self.slots.iter_mut().rev() {
            match slot {
                Slot::Acked { transmission } => {
                    later_acked.push(Reverse(*transmission));
                    if later_acked.len() > threshold {
                        later_acked.pop();
                    }
                }
                Slot::Unacked(packet) => {
                    if !packet.lost
                        && later_acked.len() >= threshold
                        && later_acked
                            .peek()
                            .is_some_and(|Reverse(earliest)| *earliest > packet.transmission)
                    {
                        packet.lost = true;
                        found = true;
                    }
                }
            }
        }
        found
    }
}

/// Marks `slot` acknowledged, pushing its token if it was not already.
fn acknowledge<T: Copy>(slot: &mut Slot<T>, acked: &mut Vec<T>) -> bool {
    match *slot {
        Slot::Unacked(packet) => {
            acked.push(packet.token);
            *slot = Slot::Acked {
                transmission: packet.transmission,
            };
            true
        }
        Slot::Acked { .. } => false,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resend {
    Loss,
    Timeout,
}

/// Why `packet` is to be resent at `now_ns`, if it is. A known loss goes
/// first: it is no reason to back the timer off.
fn resend_reason<T>(
    packet: &Unacked<T>,
    now_ns: u64,
    srtt_ns: u64,
    rto_ns: u64,
    rto_max_ns: u64,
) -> Option<Resend> {
    if packet.lost && loss_resend_ns(packet, srtt_ns) <= now_ns {
        Some(Resend::Loss)
    } else if timeout_ns(packet, rto_ns, rto_max_ns) <= now_ns {
        Some(Resend::Timeout)
    } else {
        None
    }
}

/// When `packet`'s timer expires: its RTO doubled per timeout so far.
fn timeout_ns<T>(packet: &Unacked<T>, rto_ns: u64, rto_max_ns: u64) -> u64 {
    let backoff = 1u64.checked_shl(packet.timeouts).unwrap_or(u64::MAX);
    // `rto_ns` itself is never above `rto_max_ns`.
    let packet_rto_ns = rto_ns.saturating_mul(backoff).min(rto_max_ns);
    packet.last_sent_ns.saturating_add(packet_rto_ns)
}

/// When a packet marked lost may be resent: at once, unless it was already
/// retransmitted, whose answer may still be on its way for an RTT.
fn loss_resend_ns<T>(packet: &Unacked<T>, srtt_ns: u64) -> u64 {
    if packet.retransmitted {
        packet.last_sent_ns.saturating_add(srtt_ns)
    } else {
        packet.last_sent_ns
    }
}

/// `value` within `[min, max]`; `max` wins over a `min` above it (where
/// `clamp` would panic).
fn bound(value: u64, min: u64, max: u64) -> u64 {
    value.max(min).min(max)
}

/// How a DATA packet relates to what the receiver already has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Not received before: deliver it (then `accept`).
    New,
    /// Received before: drop it, acknowledge at once (`duplicate`).
    Duplicate,
    /// Beyond what the bitmap can record: drop it unacknowledged, the
    /// sender will retransmit it.
    OutOfWindow,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub received: u64,
    pub duplicates: u64,
    pub out_of_window: u64,
}

/// The receiving half of a flow: what arrived, so every packet is delivered
/// once, and what to put in the next ACK.
#[derive(Clone, Debug)]
pub struct Receiver {
    cumulative: u32,
    /// Bit i: `cumulative + 1 + i` arrived (same layout as the ACK's).
    sack: [u64; SACK_WORDS],
    echo_timestamp: u64,
    echo_arrival_ns: u64,
    /// Something arrived that the sender has not seen acknowledged.
    ack_due: bool,
    /// The ACK should not wait (a duplicate or a gap: the sender needs to
    /// know now).
    ack_urgent: bool,
    /// Packets accepted since the last ACK, and when the first arrived.
    unacked: u32,
    first_unacked_ns: u64,
    policy: AckPolicy,
    stats: ReceiverStats,
}

/// How long an acknowledgement may wait for data going back to ride on
/// (docs/pony.md, "Reliability"): a request's ACK then costs no packet of
/// its own, and the requester hears of it and of the answer at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckPolicy {
    /// The longest an acknowledgement waits; 0: it goes in the poll that
    /// received the packet.
    pub delay_ns: u64,
    /// Acknowledge at once when this many packets wait for it (a sender's
    /// window should not drain waiting for the delay).
    pub every: u32,
}

impl AckPolicy {
    /// Every ACK at once: in the poll that received its packet.
    pub const IMMEDIATE: Self = Self {
        delay_ns: 0,
        every: 1,
    };
}

impl Default for Receiver {
    fn default() -> Self {
        Self::new()
    }
}

impl Receiver {
    /// A receiver that acknowledges at once.
    pub fn new() -> Self {
        Self::with_policy(AckPolicy::IMMEDIATE)
    }

    pub fn with_policy(policy: AckPolicy) -> Self {
        Self {
            policy,
            ..Self::starting_at(0)
        }
    }

    /// A receiver expecting `seq` first.
    pub(crate) fn starting_at(seq: u32) -> Self {
        Self {
            cumulative: seq,
            sack: [0; SACK_WORDS],
            echo_timestamp: 0,
            echo_arrival_ns: 0,
            ack_due: false,
            ack_urgent: false,
            unacked: 0,
            first_unacked_ns: 0,
            policy: AckPolicy::IMMEDIATE,
            stats: ReceiverStats::default(),
        }
    }

    /// Whether `seq` is new, a duplicate or beyond the bitmap. Sequence
    /// numbers wrap: anything up to half the space behind the cumulative
    /// point is taken for an old packet (a duplicate), anything ahead of the
    /// bitmap for one the sender should not have sent yet.
    pub fn classify(&self, seq: u32) -> Arrival {
        let offset = seq.wrapping_sub(self.cumulative);
        if offset > u32::MAX / 2 {
            return Arrival::Duplicate;
        }
        if offset == 0 {
            return Arrival::New;
        }
        let bit = offset as usize - 1;
        if offset as usize >= SACK_BITS {
            Arrival::OutOfWindow
        } else if self.sack[bit / 64] & (1 << (bit % 64)) != 0 {
            Arrival::Duplicate
        } else {
            Arrival::New
        }
    }

    /// Records `seq`, which `classify` called new (anything else is
    /// ignored), sent at the sender's `timestamp`: the next ACK covers it and
    /// echoes its timestamp.
    pub fn accept(&mut self, seq: u32, timestamp: u64, now_ns: u64) {
        if self.classify(seq) != Arrival::New {
            return;
        }
        let offset = seq.wrapping_sub(self.cumulative) as usize;
        // Filling a gap moves the cumulative point past what the sender
        // may be about to retransmit: news as well.
        let had_gap = self.sack != [0; SACK_WORDS];
        if offset == 0 {
            // The cumulative point moves past this packet and every packet
            // after it that already arrived.
            let advance = 1 + trailing_ones(&self.sack);
            shift_right(&mut self.sack, advance);
            self.cumulative = self.cumulative.wrapping_add(advance as u32);
        } else {
            let bit = offset - 1;
            self.sack[bit / 64] |= 1 << (bit % 64);
        }
        self.stats.received += 1;
        // A gap (this packet overtook another, or fills one with more
        // missing behind it) is news for the sender's loss detection.
        self.ack_urgent |= had_gap || self.sack != [0; SACK_WORDS];
        self.remember_echo(timestamp, now_ns);
    }

    /// A duplicate arrived: the sender did not get our ACK for it, so one is
    /// due at once, echoing this copy's timestamp (a fresh RTT sample).
    pub fn duplicate(&mut self, timestamp: u64, now_ns: u64) {
        self.stats.duplicates += 1;
        self.ack_urgent = true;
        self.remember_echo(timestamp, now_ns);
    }

    /// A packet `classify` put out of the window was dropped.
    pub fn count_out_of_window(&mut self) {
        self.stats.out_of_window += 1;
    }

    /// Whether anything waits to be acknowledged: data going to the peer
    /// takes the ACK along.
    pub fn ack_due(&self) -> bool {
        self.ack_due
    }

    /// When the ACK must go in a packet of its own if no data has taken
    /// it: now for an urgent one, else at the policy's delay after the
    /// first packet it covers (or once `every` packets wait).
    pub fn ack_deadline(&self) -> Option<u64> {
        if !self.ack_due {
            return None;
        }
        if self.ack_urgent || self.unacked >= self.policy.every {
            return Some(self.first_unacked_ns);
        }
        Some(self.first_unacked_ns.saturating_add(self.policy.delay_ns))
    }

    /// Whether the ACK must go now, in a packet of its own.
    pub fn ack_due_now(&self, now_ns: u64) -> bool {
        self.ack_deadline().is_some_and(|d| d <= now_ns)
    }

    /// The ACK to send now, taken as sent (the engine takes the fields and
    /// marks them sent apart, once its packet went out).
    #[cfg(test)]
    pub fn ack(&mut self, now_ns: u64) -> AckBlock {
        let a = self.ack_fields(now_ns);
        self.ack_sent();
        a
    }

    /// The ACK as it would go now; nothing changes until [`ack_sent`]
    /// (so an ACK whose packet could not be built is not lost).
    ///
    /// [`ack_sent`]: Self::ack_sent
    pub fn ack_fields(&self, now_ns: u64) -> AckBlock {
        let hold = now_ns.saturating_sub(self.echo_arrival_ns);
        AckBlock {
            cumulative: self.cumulative,
            sack: self.sack,
            echo: self.echo_timestamp,
            hold: u32::try_from(hold).unwrap_or(u32::MAX),
        }
    }

    /// What [`ack_fields`](Self::ack_fields) gave went out.
    pub fn ack_sent(&mut self) {
        self.ack_due = false;
        self.ack_urgent = false;
        self.unacked = 0;
    }

    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    fn remember_echo(&mut self, timestamp: u64, now_ns: u64) {
        self.echo_timestamp = timestamp;
        self.echo_arrival_ns = now_ns;
        if !self.ack_due {
            self.first_unacked_ns = now_ns;
        }
        self.unacked = self.unacked.saturating_add(1);
        self.ack_due = true;
    }
}

/// Consecutive set bits from bit 0.
fn trailing_ones(bits: &[u64; SACK_WORDS]) -> usize {
    let mut count = 0;
    for &word in bits {
        count += word.trailing_ones() as usize;
        if word != u64::MAX {
            break;
        }
    }
    count
}

/// Shifts the bitmap towards bit 0 by `n` bits.
fn shift_right(bits: &mut [u64; SACK_WORDS], n: usize) {
    let old = *bits;
    let (words, rest) = (n / 64, n % 64);
    for (index, word) in bits.iter_mut().enumerate() {
        let low = old.get(index + words).copied().unwrap_or(0);
        let high = old.get(index + words + 1).copied().unwrap_or(0);
        *word = if rest == 0 {
            low
        } else {
            (low >> rest) | (high << (64 - rest))
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Deterministic randomness for the simulated link.
    struct XorShift(u64);

    impl XorShift {
        fn new(seed: u64) -> Self {
            Self(seed | 1)
        }

        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            if n == 0 {
                0
            } else {
                self.next() % n
            }
        }

        fn chance(&mut self, probability: f64) -> bool {
            ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < probability
        }
    }

    #[derive(Clone, Copy, Debug)]
    struct Link {
        loss: f64,
        ack_loss: f64,
        duplication: f64,
        one_way_ns: u64,
        /// Extra delay up to this, per packet: reorders them.
        jitter_ns: u64,
        /// Serialisation time of a DATA packet at a bottleneck in front of
        /// the link, whose queue is the delay Swift reacts to (0: none).
        packet_time_ns: u64,
    }

    impl Link {
        fn lossy(loss: f64) -> Self {
            Self {
                loss,
                ack_loss: loss,
                duplication: 0.01,
                one_way_ns: 20_000,
                jitter_ns: 5_000,
                packet_time_ns: 1_000,
            }
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Event {
        Data {
            seq: u32,
            timestamp: u64,
            token: u32,
        },
        Ack(AckBlock),
        ReceiverPoll,
    }

    /// How long the receiving engine takes to come round to sending its
    /// ACK: what the hold time reports.
    const POLL_NS: u64 = 5_000;

    struct Outcome {
        sender: SenderStats,
        receiver: ReceiverStats,
        failed: bool,
        end_ns: u64,
    }

    /// Runs `packets` tokens from a sender to a receiver over `link` until
    /// everything is acknowledged, checking exactly-once delivery.
    fn simulate(link: Link, seed: u64, packets: u32, start_seq: u64) -> Outcome {
        let mut rng = XorShift::new(seed);
        let mut sender = Sender::starting_at(FlowConfig::default(), start_seq);
        let mut receiver = Receiver::starting_at(start_seq as u32);
        let mut events: BTreeMap<(u64, u64), Event> = BTreeMap::new();
        let mut event_order = 0u64;
        let mut schedule = |events: &mut BTreeMap<(u64, u64), Event>, at: u64, event| {
            events.insert((at, event_order), event);
            event_order += 1;
        };
        let mut delivered = vec![0u32; packets as usize];
        let mut acked_times = vec![0u32; packets as usize];
        let mut next_token = 0u32;
        let mut bottleneck_free_ns = 0u64;
        let mut poll_scheduled = false;
        let mut resend = Vec::new();
        let mut acked = Vec::new();
        let mut now = 0u64;

        for _ in 0..2_000_000 {
            // The sender's turn: retransmissions first, then new packets.
            resend.clear();
            sender.retransmits(now, &mut resend);
            let mut to_send: Vec<(u32, u32)> = resend.clone();
            while sender.can_send() && next_token < packets {
                to_send.push((sender.sent(next_token, now), next_token));
                next_token += 1;
            }
            for (seq, token) in to_send {
                let departure = now.max(bottleneck_free_ns) + link.packet_time_ns;
                bottleneck_free_ns = departure;
                let copies = if rng.chance(link.duplication) { 2 } else { 1 };
                for _ in 0..copies {
                    if !rng.chance(link.loss) {
                        let at = departure + link.one_way_ns + rng.below(link.jitter_ns);
                        let timestamp = now;
                        schedule(
                            &mut events,
                            at,
                            Event::Data {
                                seq,
                                timestamp,
                                token,
                            },
                        );
                    }
                }
            }

            let next_event = events.keys().next().map(|&(at, _)| at);
            let next = match (next_event, sender.deadline()) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(at) => at,
                    None => break,
                },
            };
            now = now.max(next);

            while let Some(entry) = events.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                match entry.remove() {
                    Event::Data {
                        seq,
                        timestamp,
                        token,
                    } => {
                        assert_eq!(
                            seq,
                            start_seq.wrapping_add(u64::from(token)) as u32,
                            "a retransmission keeps its sequence number"
                        );
                        match receiver.classify(seq) {
                            Arrival::New => {
                                receiver.accept(seq, timestamp, now);
                                delivered[token as usize] += 1;
                            }
                            Arrival::Duplicate => receiver.duplicate(timestamp, now),
                            Arrival::OutOfWindow => receiver.count_out_of_window(),
                        }
                        if receiver.ack_due() && !poll_scheduled {
                            poll_scheduled = true;
                            schedule(&mut events, now + POLL_NS, Event::ReceiverPoll);
                        }
                    }
                    Event::ReceiverPoll => {
                        poll_scheduled = false;
                        let ack = receiver.ack(now);
                        assert!(!receiver.ack_due());
                        if !rng.chance(link.ack_loss) {
                            let at = now + link.one_way_ns + rng.below(link.jitter_ns);
                            schedule(&mut events, at, Event::Ack(ack));
                        }
                    }
                    Event::Ack(ack) => {
                        acked.clear();
                        sender.on_ack(
                            ack.cumulative,
                            &ack.sack,
                            ack.echo,
                            ack.hold,
                            now,
                            &mut acked,
                        );
                        for &token in &acked {
                            acked_times[token as usize] += 1;
                        }
                    }
                }
            }
        }

        assert!(events.is_empty(), "the simulation ran out of steps");
        assert_eq!(next_token, packets);
        for (token, (&delivered, &acked)) in delivered.iter().zip(&acked_times).enumerate() {
            assert_eq!(delivered, 1, "token {token} delivered {delivered} times");
            assert_eq!(acked, 1, "token {token} acknowledged {acked} times");
        }
        assert_eq!(sender.in_flight(), 0);
        assert_eq!(sender.deadline(), None);
        Outcome {
            sender: sender.stats(),
            receiver: receiver.stats(),
            failed: sender.failed(),
            end_ns: now,
        }
    }

    const SEEDS: [u64; 3] = [0x9e37_79b9_7f4a_7c15, 42, 0xdead_beef];

    #[test]
    fn a_lossy_reordering_link_delivers_everything_exactly_once() {
        for loss in [0.0, 0.01, 0.05, 0.2] {
            for seed in SEEDS {
                let outcome = simulate(Link::lossy(loss), seed, 5_000, 0);
                assert!(!outcome.failed, "loss {loss} seed {seed}");
                let stats = outcome.sender;
                assert_eq!(stats.sent, 5_000);
                assert_eq!(stats.acked, 5_000);
                assert_eq!(outcome.receiver.received, 5_000);
                assert!(outcome.receiver.duplicates > 0, "duplication is 1 %");
                if loss > 0.0 {
                    assert!(
                        stats.retransmit_loss + stats.retransmit_timeout > 0,
                        "loss {loss} seed {seed}: {stats:?}"
                    );
                }
                if loss >= 0.2 {
                    // Losing a retransmission too leaves only the timer.
                    assert!(stats.retransmit_timeout > 0, "seed {seed}: {stats:?}");
                }
                // RTT here is 40 to 120 us plus the poll time.
                assert!(
                    stats.srtt_ns > 40_000 && stats.srtt_ns < 130_000,
                    "{stats:?}"
                );
            }
        }
    }

    #[test]
    fn heavy_reordering_costs_spurious_retransmissions_but_nothing_else() {
        // Bursts leave at one instant and arrive in any order over a time
        // comparable to the RTT.
        let link = Link {
            jitter_ns: 40_000,
            packet_time_ns: 0,
            ..Link::lossy(0.05)
        };
        let outcome = simulate(link, 3, 5_000, 0);
        assert!(!outcome.failed);
        assert_eq!(outcome.sender.acked, 5_000);
    }

    #[test]
    fn a_bottleneck_queue_is_held_near_the_target_delay() {
        let link = Link {
            packet_time_ns: 10_000,
            ..Link::lossy(0.01)
        };
        for seed in SEEDS {
            let outcome = simulate(link, seed, 3_000, 0);
            assert!(!outcome.failed);
            // A 256-packet window would queue 2.5 ms at 10 us a packet;
            // Swift keeps the queue, and so the RTT, near 500 us.
            let stats = outcome.sender;
            assert!(stats.srtt_ns < 900_000, "{stats:?}");
            assert!(stats.window < 100.0, "{stats:?}");
            // Most of the time goes into sending: the link stays busy.
            assert!(
                outcome.end_ns < 3_000 * 10_000 * 3 / 2,
                "{}",
                outcome.end_ns
            );
        }
    }

    #[test]
    fn sequence_numbers_wrap_around() {
        for (loss, seed) in [(0.0, 7), (0.05, 8), (0.2, 9)] {
            let start = u64::from(u32::MAX) - 700;
            let outcome = simulate(Link::lossy(loss), seed, 2_000, start);
            assert!(!outcome.failed);
            assert_eq!(outcome.sender.acked, 2_000);
        }
    }

    fn token_list(sender: &mut Sender<u32>, count: u32, now: u64) -> Vec<u32> {
        (0..count).map(|token| sender.sent(token, now)).collect()
    }

    #[test]
    fn acks_move_the_cumulative_point_and_sack_marks_single_packets() {
        let mut sender = Sender::starting_at(FlowConfig::default(), 100);
        assert_eq!(
            token_list(&mut sender, 8, 1_000),
            (100..108).collect::<Vec<_>>()
        );
        let mut acked = Vec::new();
        // 100, 101 cumulatively; 103 (bit 0 is 103 = 102 + 1) by SACK.
        sender.on_ack(102, &[1, 0, 0, 0], 1_000, 0, 11_000, &mut acked);
        assert_eq!(acked, vec![0, 1, 3]);
        assert_eq!(sender.in_flight(), 5);
        // The same ACK again acknowledges nothing new.
        acked.clear();
        sender.on_ack(102, &[1, 0, 0, 0], 1_000, 0, 12_000, &mut acked);
        assert!(acked.is_empty());
        assert_eq!(sender.stats().acked, 3);
    }

    #[test]
    fn rtt_follows_rfc_6298_without_the_hold_time() {
        let cfg = FlowConfig {
            rto_min_ns: 1,
            ..FlowConfig::default()
        };
        let mut sender = Sender::new(cfg);
        assert_eq!(sender.stats().rto_ns, 10_000_000);
        let mut acked = Vec::new();
        sender.sent(0u32, 1_000);
        sender.on_ack(1, &[0; 4], 1_000, 200, 2_000, &mut acked);
        let stats = sender.stats();
        assert_eq!(
            (stats.srtt_ns, stats.rttvar_ns, stats.rto_ns),
            (800, 400, 2_400)
        );
        assert_eq!(sender.swift.last_delay_ns(), 800);
        sender.sent(1, 2_000);
        sender.on_ack(2, &[0; 4], 2_000, 0, 3_600, &mut acked);
        // rttvar = 300 + 800/4, srtt = 700 + 1600/8.
        let stats = sender.stats();
        assert_eq!(
            (stats.srtt_ns, stats.rttvar_ns, stats.rto_ns),
            (900, 500, 2_900)
        );

        // The default minimum applies.
        let mut sender = Sender::new(FlowConfig::default());
        sender.sent(0u32, 0);
        sender.on_ack(1, &[0; 4], 0, 0, 1_000, &mut acked);
        assert_eq!(sender.stats().rto_ns, 2_000_000);

        // A receiver that may delay its ACKs: their delay is added.
        let mut sender = Sender::new(FlowConfig {
            ack: AckPolicy {
                delay_ns: 5_000,
                every: 4,
            },
            ..cfg
        });
        sender.sent(0u32, 1_000);
        sender.on_ack(1, &[0; 4], 1_000, 200, 2_000, &mut acked);
        assert_eq!(sender.stats().rto_ns, 2_400 + 5_000);
    }

    #[test]
    fn an_echo_that_cannot_be_ours_gives_no_sample() {
        let mut acked = Vec::new();
        for (echo, hold, now) in [(500, 0, 2_000), (3_000, 0, 2_000), (1_000, 5_000, 2_000)] {
            let mut sender = Sender::new(FlowConfig::default());
            sender.sent(0u32, 1_000);
            sender.on_ack(1, &[0; 4], echo, hold, now, &mut acked);
            assert_eq!(sender.in_flight(), 0, "the ACK itself still counts");
            assert_eq!(sender.stats().srtt_ns, 0);
        }
    }

    #[test]
    fn window_and_sack_span_limit_sending() {
        let mut sender = Sender::new(FlowConfig::default());
        let mut count = 0u32;
        while sender.can_send() {
            sender.sent(count, 0);
            count += 1;
        }
        assert_eq!(count, 10, "the initial window");

        let cfg = FlowConfig {
            swift: SwiftConfig {
                max_window: 1_000.0,
                min_window: 1_000.0,
                ..SwiftConfig::default()
            },
            ..FlowConfig::default()
        };
        let mut sender = Sender::new(cfg);
        let mut count = 0u32;
        while sender.can_send() {
            sender.sent(count, 0);
            count += 1;
        }
        assert_eq!(count as usize, SACK_BITS, "the receiver's bitmap");
        // Everything but the oldest acknowledged: still stuck behind it.
        let mut acked = Vec::new();
        sender.on_ack(0, &[u64::MAX; 4], 0, 0, 10, &mut acked);
        assert_eq!(acked.len(), SACK_BITS - 1);
        assert!(!sender.can_send());
        sender.on_ack(1, &[0; 4], 0, 0, 10, &mut acked);
        assert!(sender.can_send());
    }

    #[test]
    fn three_later_packets_acknowledged_make_a_loss() {
        let mut sender = Sender::new(FlowConfig::default());
        token_list(&mut sender, 10, 0);
        let mut acked = Vec::new();
        let mut resend = Vec::new();
        // 1 and 2 acknowledged: reordering, not yet loss.
        sender.on_ack(0, &[0b11, 0, 0, 0], 0, 0, 100_000, &mut acked);
        sender.retransmits(100_000, &mut resend);
        assert!(resend.is_empty());
        assert_eq!(sender.deadline(), Some(2_000_000), "the RTO floor");
        // 3 as well: 0 is lost, resent at once, and the window halves.
        sender.on_ack(0, &[0b111, 0, 0, 0], 0, 0, 100_000, &mut acked);
        assert_eq!(sender.deadline(), Some(0));
        assert!((sender.stats().window - 5.0).abs() < 0.5);
        sender.retransmits(100_000, &mut resend);
        assert_eq!(resend, vec![(0, 0)]);
        assert_eq!(sender.stats().retransmit_loss, 1);

        // Packets sent before the retransmission say nothing about it.
        resend.clear();
        sender.on_ack(0, &[0b11_1111, 0, 0, 0], 0, 0, 150_000, &mut acked);
        sender.retransmits(150_000, &mut resend);
        assert!(resend.is_empty());
        // Three sent after it do, but it is resent only an SRTT (100 us)
        // after its last transmission.
        for token in 10..13 {
            sender.sent(token, 150_000);
        }
        sender.on_ack(
            0,
            &[0b1111_1100_0000, 0, 0, 0],
            150_000,
            0,
            190_000,
            &mut acked,
        );
        let srtt = sender.stats().srtt_ns;
        assert_eq!(sender.deadline(), Some(100_000 + srtt));
        sender.retransmits(100_000 + srtt - 1, &mut resend);
        assert!(resend.is_empty());
        sender.retransmits(100_000 + srtt, &mut resend);
        assert_eq!(resend, vec![(0, 0)]);
        assert_eq!(sender.stats().retransmit_loss, 2);
    }

    #[test]
    fn timeouts_back_off_exponentially_until_the_flow_fails() {
        let cfg = FlowConfig::default();
        let mut sender = Sender::new(cfg);
        token_list(&mut sender, 5, 0);
        let mut resend = Vec::new();
        let mut last = 0;
        let mut intervals = Vec::new();
        while let Some(deadline) = sender.deadline() {
            resend.clear();
            // Just before the deadline nothing is due.
            sender.retransmits(deadline - 1, &mut resend);
            assert!(resend.is_empty());
            sender.retransmits(deadline, &mut resend);
            if sender.failed() {
                assert!(resend.is_empty());
                break;
            }
            assert_eq!(
                resend,
                (0..5).map(|token| (token, token)).collect::<Vec<_>>()
            );
            assert!((sender.stats().window - 1.0).abs() < 1e-9);
            intervals.push(deadline - last);
            last = deadline;
        }
        let ms = 1_000_000;
        let mut expected = vec![10 * ms, 20 * ms, 40 * ms, 80 * ms, 160 * ms];
        expected.resize(cfg.max_retransmits as usize, 200 * ms);
        assert_eq!(intervals, expected);
        assert!(sender.failed());
        assert!(!sender.can_send());
        assert_eq!(sender.deadline(), None);
        assert_eq!(sender.stats().retransmit_timeout, 5 * 15);
        let mut drained = Vec::new();
        sender.drain(&mut drained);
        assert_eq!(drained, vec![0, 1, 2, 3, 4]);
        assert_eq!(sender.in_flight(), 0);
    }

    #[test]
    fn drain_hands_back_what_is_in_flight_and_numbering_goes_on() {
        let mut sender = Sender::new(FlowConfig::default());
        token_list(&mut sender, 6, 0);
        let mut acked = Vec::new();
        sender.on_ack(1, &[0b10, 0, 0, 0], 0, 0, 1_000, &mut acked);
        assert_eq!(acked, vec![0, 3]);
        let mut drained = Vec::new();
        sender.drain(&mut drained);
        assert_eq!(drained, vec![1, 2, 4, 5]);
        assert_eq!((sender.in_flight(), sender.deadline()), (0, None));
        assert!(sender.can_send());
        assert_eq!(sender.sent(6, 2_000), 6);
        // ACKs for what was drained are stale now.
        acked.clear();
        sender.on_ack(6, &[0; 4], 0, 0, 3_000, &mut acked);
        assert!(acked.is_empty());
        assert_eq!(sender.in_flight(), 1);
    }

    #[test]
    fn each_packet_keeps_its_own_timer() {
        let mut sender = Sender::new(FlowConfig::default());
        sender.sent(0u32, 0);
        sender.sent(1, 4_000_000);
        let mut resend = Vec::new();
        sender.retransmits(10_000_000, &mut resend);
        assert_eq!(resend, vec![(0, 0)]);
        assert_eq!(sender.deadline(), Some(14_000_000));
        resend.clear();
        sender.retransmits(14_000_000, &mut resend);
        assert_eq!(resend, vec![(1, 1)]);
        // Packet 0's second timeout is twice as long.
        assert_eq!(sender.deadline(), Some(30_000_000));
    }

    fn snapshot(sender: &Sender<u32>) -> (SenderStats, usize, Option<u64>, bool, bool) {
        (
            sender.stats(),
            sender.in_flight(),
            sender.deadline(),
            sender.can_send(),
            sender.failed(),
        )
    }

    #[test]
    fn garbage_acks_change_nothing() {
        let mut acked = Vec::new();
        // Nothing in flight at all, whatever the ACK says.
        let mut idle = Sender::<u32>::new(FlowConfig::default());
        let before = snapshot(&idle);
        idle.on_ack(12345, &[u64::MAX; 4], 0, 0, 1_000, &mut acked);
        assert_eq!(snapshot(&idle), before);

        for start in [0u64, u64::from(u32::MAX) - 3, 1 << 40] {
            let mut sender = Sender::starting_at(FlowConfig::default(), start);
            let base = start as u32;
            token_list(&mut sender, 8, 1_000);
            let before = snapshot(&sender);
            let garbage: [(u32, [u64; 4]); 8] = [
                // Far ahead, with and without bits.
                (base.wrapping_add(9), [0; 4]),
                (base.wrapping_add(1_000), [u64::MAX; 4]),
                (base.wrapping_add(1 << 31), [u64::MAX; 4]),
                // Far behind: its bits end before the oldest packet.
                (base.wrapping_sub(1_000), [u64::MAX; 4]),
                (base.wrapping_sub(257), [u64::MAX; 4]),
                // The current point, with bits for packets not yet sent.
                (base, [!0xff, u64::MAX, u64::MAX, u64::MAX]),
                (base.wrapping_add(4).wrapping_sub(4), [0; 4]),
                (base.wrapping_sub(1), [!0x1ff, u64::MAX, u64::MAX, u64::MAX]),
            ];
            for (cumulative, sack) in garbage {
                sender.on_ack(cumulative, &sack, 1_000, 0, 2_000, &mut acked);
                assert!(acked.is_empty(), "cumulative {cumulative}");
                assert_eq!(snapshot(&sender), before, "cumulative {cumulative}");
            }
        }
    }

    #[test]
    fn random_acks_never_panic_and_keep_the_books() {
        let mut rng = XorShift::new(0x5eed);
        for round in 0..40u64 {
            let start = match round % 3 {
                0 => 0,
                1 => u64::from(u32::MAX) - rng.below(300),
                _ => u64::MAX - rng.below(300),
            };
            let mut sender = Sender::starting_at(FlowConfig::default(), start);
            let mut acked = Vec::new();
            let mut resend = Vec::new();
            let mut acked_total = 0usize;
            let mut sent_total = 0usize;
            let mut now = rng.next() >> 20;
            for _ in 0..300 {
                now = now.wrapping_add(rng.below(1_000_000));
                while sender.can_send() && rng.chance(0.7) {
                    sender.sent(sent_total as u32, now);
                    sent_total += 1;
                }
                let base = start.wrapping_add(acked_total as u64) as u32;
                let cumulative = match rng.below(4) {
                    0 => rng.next() as u32,
                    1 => base.wrapping_add(rng.below(20) as u32),
                    2 => base.wrapping_sub(rng.below(300) as u32),
                    _ => base,
                };
                let sack = [rng.next(), rng.next() & rng.next(), rng.next(), 0];
                let echo = match rng.below(3) {
                    0 => rng.next(),
                    _ => now.saturating_sub(rng.below(500_000)),
                };
                acked.clear();
                let clock = if rng.chance(0.1) { rng.next() } else { now };
                sender.on_ack(
                    cumulative,
                    &sack,
                    echo,
                    rng.next() as u32,
                    clock,
                    &mut acked,
                );
                acked_total += acked.len();
                resend.clear();
                sender.retransmits(if rng.chance(0.1) { rng.next() } else { now }, &mut resend);
                let _ = sender.deadline();
                assert_eq!(sender.in_flight() + acked_total, sent_total);
            }
            let mut drained = Vec::new();
            sender.drain(&mut drained);
            assert_eq!(drained.len() + acked_total, sent_total);
            assert_eq!(sender.in_flight(), 0);
        }
    }

    #[test]
    fn receiver_classifies_around_its_window() {
        for start in [0u32, 1_000, u32::MAX - 10] {
            let receiver = Receiver::starting_at(start);
            assert_eq!(receiver.classify(start), Arrival::New);
            assert_eq!(receiver.classify(start.wrapping_add(255)), Arrival::New);
            assert_eq!(
                receiver.classify(start.wrapping_add(256)),
                Arrival::OutOfWindow
            );
            assert_eq!(
                receiver.classify(start.wrapping_add(1 << 30)),
                Arrival::OutOfWindow
            );
            assert_eq!(receiver.classify(start.wrapping_sub(1)), Arrival::Duplicate);
            assert_eq!(
                receiver.classify(start.wrapping_sub(1 << 30)),
                Arrival::Duplicate
            );
            assert_eq!(
                receiver.classify(start.wrapping_add(1 << 31)),
                Arrival::Duplicate
            );
        }
    }

    #[test]
    fn receiver_records_bitmap_and_advances_over_it() {
        let start = u32::MAX - 70;
        let mut receiver = Receiver::starting_at(start);
        assert!(!receiver.ack_due());
        // start+1, start+65 (bit 64: word 1) and start+200 arrive first.
        for offset in [1u32, 65, 200] {
            receiver.accept(start.wrapping_add(offset), u64::from(offset), 1_000);
            assert_eq!(
                receiver.classify(start.wrapping_add(offset)),
                Arrival::Duplicate
            );
        }
        assert!(receiver.ack_due());
        let ack = receiver.ack(1_500);
        assert!(!receiver.ack_due());
        assert_eq!(ack.cumulative, start);
        assert_eq!(ack.sack, [1, 1, 0, 1 << (199 - 192)]);
        assert_eq!((ack.echo, ack.hold), (200, 500));

        // The missing one moves the point past start+1.
        receiver.accept(start, 7, 2_000);
        let ack = receiver.ack(2_000);
        assert_eq!(ack.cumulative, start.wrapping_add(2));
        assert_eq!(ack.sack, [1 << 62, 0, 0, 1 << (197 - 192)]);
        assert_eq!((ack.echo, ack.hold), (7, 0));

        // Filling start+2 ..= start+64 runs the point through start+65.
        for offset in 2..65u32 {
            receiver.accept(start.wrapping_add(offset), 0, 3_000);
        }
        let ack = receiver.ack(3_000);
        assert_eq!(ack.cumulative, start.wrapping_add(66));
        assert_eq!(ack.sack, [0, 0, 1 << (199 - 66 - 128), 0]);
        assert_eq!(receiver.stats().received, 67);

        // Accepting what is not new changes nothing.
        receiver.accept(start, 0, 4_000);
        receiver.accept(start.wrapping_add(1_000), 0, 4_000);
        assert_eq!(receiver.ack(4_000).cumulative, start.wrapping_add(66));
        assert_eq!(receiver.stats().received, 67);
    }

    #[test]
    fn delayed_acks_wait_for_their_delay_or_count_and_never_for_news() {
        let policy = AckPolicy {
            delay_ns: 1_000,
            every: 3,
        };
        let mut receiver = Receiver::with_policy(policy);
        assert_eq!(receiver.ack_deadline(), None);
        // In order: the ACK may wait the delay from the first packet...
        receiver.accept(0, 10, 100);
        receiver.accept(1, 20, 500);
        assert!(receiver.ack_due());
        assert_eq!(receiver.ack_deadline(), Some(1_100));
        assert!(!receiver.ack_due_now(1_099));
        assert!(receiver.ack_due_now(1_100));
        // ...or until `every` packets wait.
        receiver.accept(2, 30, 600);
        assert!(receiver.ack_due_now(600));
        let ack = receiver.ack(700);
        assert_eq!((ack.cumulative, ack.echo, ack.hold), (3, 30, 100));
        assert_eq!(receiver.ack_deadline(), None);
        // A gap is news for the sender's loss detection: at once.
        receiver.accept(5, 40, 2_000);
        assert!(receiver.ack_due_now(2_000));
        receiver.ack(2_000);
        // So is a duplicate (our ACK was lost).
        receiver.duplicate(10, 3_000);
        assert!(receiver.ack_due_now(3_000));
        // Filling the gap is news too (the cumulative point jumps); after
        // it the bitmap is clear again and the delay applies.
        let mut in_order = Receiver::with_policy(policy);
        in_order.accept(1, 1, 10);
        assert!(in_order.ack_due_now(10));
        in_order.ack(10);
        in_order.accept(0, 2, 20);
        assert!(in_order.ack_due_now(20));
        assert_eq!(in_order.ack(20).cumulative, 2);
        in_order.accept(2, 3, 30);
        assert_eq!(in_order.ack_deadline(), Some(1_030));
        // Fields taken without `ack_sent` leave the ACK due.
        assert_eq!(in_order.ack_fields(40).cumulative, 3);
        assert!(in_order.ack_due());
        in_order.ack_sent();
        assert!(!in_order.ack_due());
    }

    #[test]
    fn receiver_duplicates_and_out_of_window_are_counted_and_duplicates_acked() {
        let mut receiver = Receiver::new();
        receiver.accept(0, 10, 100);
        receiver.ack(100);
        receiver.duplicate(20, 300);
        assert!(receiver.ack_due());
        let ack = receiver.ack(400);
        assert_eq!((ack.cumulative, ack.echo, ack.hold), (1, 20, 100));
        receiver.count_out_of_window();
        assert_eq!(
            receiver.stats(),
            ReceiverStats {
                received: 1,
                duplicates: 1,
                out_of_window: 1
            }
        );
        // A hold too long for the field saturates.
        receiver.duplicate(0, 0);
        assert_eq!(receiver.ack(u64::MAX).hold, u32::MAX);
    }

    #[test]
    fn receiver_full_bitmap_advances_all_the_way() {
        let mut receiver = Receiver::starting_at(5);
        for seq in 6..261u32 {
            receiver.accept(seq, 0, 0);
        }
        assert_eq!(
            receiver.ack(0).sack,
            [u64::MAX, u64::MAX, u64::MAX, u64::MAX >> 1]
        );
        receiver.accept(5, 0, 0);
        let ack = receiver.ack(0);
        assert_eq!((ack.cumulative, ack.sack), (261, [0; 4]));
    }

    #[test]
    fn receiver_random_arrivals_are_each_new_once() {
        let mut rng = XorShift::new(77);
        let start = u32::MAX - 500;
        let mut receiver = Receiver::starting_at(start);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20_000 {
            let cumulative = receiver.ack(0).cumulative;
            let seq = match rng.below(3) {
                0 => rng.next() as u32,
                _ => cumulative
                    .wrapping_add(rng.below(300) as u32)
                    .wrapping_sub(20),
            };
            match receiver.classify(seq) {
                Arrival::New => {
                    assert!(seen.insert(seq), "{seq} new twice");
                    receiver.accept(seq, 0, 0);
                    assert_ne!(receiver.classify(seq), Arrival::New);
                }
                Arrival::Duplicate => receiver.duplicate(0, 0),
                Arrival::OutOfWindow => receiver.count_out_of_window(),
            }
        }
        assert_eq!(receiver.stats().received as usize, seen.len());
        assert!(receiver.ack(0).cumulative.wrapping_sub(start) > 1_000);
    }
}
