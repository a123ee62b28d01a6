//! A token bucket over bytes and packets.
//!
//! A frame that costs more than a bucket holds (a GSO super-frame cut into
//! more segments than `burst_packets`, say) is let through once the bucket
//! is full, and leaves it in debt: the tokens go below zero and the next
//! frame waits until the debt is paid off at the configured rate. This is
//! Firecracker's answer to the same problem; refusing such a frame for ever
//! would wedge the queue behind it, and dropping it would punish a guest
//! for a burst size the operator chose. Over any interval the rate still
//! holds, and a burst is at most the depth plus one frame.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Cost;

/// A rate limit as configured: bytes and/or packets per second, each with a
/// burst (the bucket's depth). A rate left out is not limited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[serde(default)]
    pub bytes_per_sec: Option<u64>,
    #[serde(default)]
    pub packets_per_sec: Option<u64>,
    /// Bucket depth in bytes (default: 10 ms of `bytes_per_sec`, at least
    /// one 64 KiB TSO frame).
    #[serde(default)]
    pub burst_bytes: Option<u64>,
    /// Bucket depth in packets (default: 10 ms of `packets_per_sec`, at
    /// least 64).
    #[serde(default)]
    pub burst_packets: Option<u64>,
}

/// Smallest byte bucket: one largest frame fits, so a guest sending 64 KiB
/// TSO frames at a normal `gso_size` is paced by the rate, not by debt.
const MIN_BURST_BYTES: u64 = 65_536 + 256;
const MIN_BURST_PACKETS: u64 = 64;

impl RateLimit {
    /// Unlimited in both dimensions.
    pub fn is_unlimited(&self) -> bool {
        self.bytes_per_sec.is_none() && self.packets_per_sec.is_none()
    }
}

/// One dimension of a bucket.
#[derive(Clone, Copy, Debug)]
struct Tokens {
    per_sec: f64,
    depth: f64,
    level: f64,
}

impl Tokens {
    fn new(per_sec: u64, depth: u64) -> Self {
        Self {
            per_sec: per_sec as f64,
            depth: depth as f64,
            level: depth as f64,
        }
    }

    #[inline]
    fn refill(&mut self, secs: f64) {
        self.level = (self.level + secs * self.per_sec).min(self.depth);
    }

    /// The level at which `n` tokens may go: `n`, or a full bucket for more
    /// than it holds (which then leaves it in debt).
    #[inline]
    fn needed(&self, n: f64) -> f64 {
        n.min(self.depth)
    }

    #[inline]
    fn has(&self, n: f64) -> bool {
        self.level >= self.needed(n)
    }

    #[inline]
    fn wait_for(&self, n: f64) -> Duration {
        let needed = self.needed(n);
        if self.level >= needed || self.per_sec <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((needed - self.level) / self.per_sec)
        }
    }
}

/// A bucket's token levels (negative in debt), for a hand-over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BucketLevels {
    pub bytes: Option<f64>,
    pub packets: Option<f64>,
}

/// A passive token bucket: it only answers whether a frame may go now, and
/// how long until it may.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    bytes: Option<Tokens>,
    packets: Option<Tokens>,
    last: Instant,
}

impl TokenBucket {
    /// `None` for an unlimited rate.
    pub fn new(limit: &RateLimit) -> Option<Self> {
        if limit.is_unlimited() {
            return None;
        }
        let bytes = limit.bytes_per_sec.map(|r| {
            let depth = limit.burst_bytes.unwrap_or(r / 100).max(MIN_BURST_BYTES);
            Tokens::new(r, depth)
        });
        let packets = limit.packets_per_sec.map(|r| {
            let depth = limit
                .burst_packets
                .unwrap_or(r / 100)
                .max(MIN_BURST_PACKETS);
            Tokens::new(r, depth)
        });
        Some(Self {
            bytes,
            packets,
            last: Instant::now(),
        })
    }

    /// Brings the bucket up to `now`.
    #[inline]
    pub fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.last).as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        self.last = now;
        for t in self.bytes.iter_mut().chain(self.packets.iter_mut()) {
            t.refill(secs);
        }
    }

    /// True when a frame costing `c` may go (call `refill` first).
    #[inline]
    pub fn has(&self, c: Cost) -> bool {
        self.bytes.is_none_or(|t| t.has(c.bytes as f64))
            && self.packets.is_none_or(|t| t.has(c.packets as f64))
    }

    /// Takes the tokens of a frame costing `c` (after `has` said yes); a
    /// frame larger than the bucket leaves it in debt.
    #[inline]
    pub fn take(&mut self, c: Cost) {
        if let Some(t) = self.bytes.as_mut() {
            t.level -= c.bytes as f64;
        }
        if let Some(t) = self.packets.as_mut() {
            t.level -= c.packets as f64;
        }
    }

    /// `has` then `take`.
    #[inline]
    pub fn try_take(&mut self, c: Cost) -> bool {
        let ok = self.has(c);
        if ok {
            self.take(c);
        }
        ok
    }

    /// The bucket's levels (bytes, packets) as of `now`: what an upgrade
    /// carries to the new process, so that a guest in debt stays in debt
    /// and a full bucket is not a second burst.
    pub fn levels(&mut self, now: Instant) -> BucketLevels {
        self.refill(now);
        BucketLevels {
            bytes: self.bytes.map(|t| t.level),
            packets: self.packets.map(|t| t.level),
        }
    }

    /// Takes over `levels` (from [`Self::levels`]), as of `now`. A level the
    /// bucket has no dimension for is ignored, and each is clamped to this
    /// bucket's depth: the limits may have changed with the binary.
    pub fn set_levels(&mut self, levels: &BucketLevels, now: Instant) {
        let set = |t: &mut Option<Tokens>, level: Option<f64>| {
            if let (Some(t), Some(level)) = (t.as_mut(), level.filter(|l| l.is_finite())) {
                t.level = level.min(t.depth);
            }
        };
        set(&mut self.bytes, levels.bytes);
        set(&mut self.packets, levels.packets);
        self.last = now;
    }

    /// How long until a frame costing `c` may go.
    pub fn wait_for(&self, c: Cost) -> Duration {
        let b = self
            .bytes
            .map_or(Duration::ZERO, |t| t.wait_for(c.bytes as f64));
        let p = self
            .packets
            .map_or(Duration::ZERO, |t| t.wait_for(c.packets as f64));
        b.max(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_move_to_another_bucket_debt_included() {
        let limit = RateLimit {
            bytes_per_sec: Some(1_000),
            burst_bytes: Some(100_000),
            ..Default::default()
        };
        let mut old = TokenBucket::new(&limit).unwrap();
        let now = old.last;
        old.take(Cost::frame(150_000));
        let levels = old.levels(now);
        assert_eq!(levels.bytes, Some(-50_000.0));
        assert_eq!(levels.packets, None);
        let mut new = TokenBucket::new(&limit).unwrap();
        new.set_levels(&levels, now);
        assert!(!new.has(Cost::frame(1)), "the debt moved with the guest");
        // A level above a (new, smaller) depth is clamped.
        let mut small = TokenBucket::new(&RateLimit {
            burst_bytes: Some(70_000),
            ..limit
        })
        .unwrap();
        small.set_levels(
            &BucketLevels {
                bytes: Some(1e9),
                packets: Some(5.0),
            },
            now,
        );
        assert_eq!(small.levels(now).bytes, Some(70_000.0));
    }

    #[test]
    fn rate_and_burst_hold() {
        let mut b = TokenBucket::new(&RateLimit {
            bytes_per_sec: Some(1_000_000),
            burst_bytes: Some(100_000),
            ..Default::default()
        })
        .unwrap();
        let t0 = b.last;
        b.refill(t0);
        // The burst goes at once, then nothing.
        let mut sent = 0;
        while b.try_take(Cost::frame(1000)) {
            sent += 1000;
        }
        assert_eq!(sent, 100_000);
        assert!(!b.has(Cost::frame(1000)));
        let w = b.wait_for(Cost::frame(1000));
        assert!(
            w > Duration::from_micros(900) && w <= Duration::from_millis(1),
            "{w:?}"
        );
        // One simulated second later a second's worth has been added, capped
        // at the burst.
        b.refill(t0 + Duration::from_secs(1));
        let mut again = 0;
        while b.try_take(Cost::frame(1000)) {
            again += 1000;
        }
        assert_eq!(again, 100_000);
        // Over 10 simulated seconds in 1 ms steps, exactly the rate passes.
        let mut total = 0u64;
        for ms in 1..=10_000u64 {
            b.refill(t0 + Duration::from_secs(1) + Duration::from_millis(ms));
            while b.try_take(Cost::frame(1000)) {
                total += 1000;
            }
        }
        assert!((9_990_000..=10_000_000).contains(&total), "{total}");
    }

    #[test]
    fn packets_limit_and_unlimited() {
        assert!(TokenBucket::new(&RateLimit::default()).is_none());
        let mut b = TokenBucket::new(&RateLimit {
            packets_per_sec: Some(1000),
            burst_packets: Some(10),
            ..Default::default()
        })
        .unwrap();
        let t0 = b.last;
        let mut n = 0;
        while b.try_take(Cost::frame(9000)) {
            n += 1;
        }
        assert_eq!(n, 64, "burst is at least 64 packets");
        b.refill(t0 + Duration::from_millis(10));
        assert!(b.try_take(Cost::frame(9000)));
        // A bucket smaller than a TSO frame is raised so the frame fits.
        let mut small = TokenBucket::new(&RateLimit {
            bytes_per_sec: Some(1000),
            burst_bytes: Some(10),
            ..Default::default()
        })
        .unwrap();
        assert!(small.try_take(Cost::frame(65_000)));
    }

    #[test]
    fn a_frame_larger_than_the_bucket_goes_once_full_then_pays_its_debt() {
        // 1000 packets/s, 100 deep; frames of 250 packets (a super-frame of
        // 250 segments) would never fit if they had to.
        let mut b = TokenBucket::new(&RateLimit {
            packets_per_sec: Some(1000),
            burst_packets: Some(100),
            ..Default::default()
        })
        .unwrap();
        let t0 = b.last;
        let big = Cost {
            bytes: 60_000,
            packets: 250,
        };
        assert!(b.try_take(big), "a full bucket lets it through");
        assert!(!b.has(Cost::frame(64)), "then the bucket is in debt");
        // 150 packets of debt and a full bucket again: 250 ms.
        let w = b.wait_for(big);
        assert!(
            w > Duration::from_millis(249) && w <= Duration::from_millis(250),
            "{w:?}"
        );
        b.refill(t0 + Duration::from_millis(200));
        assert!(!b.has(big));
        // Over 10 simulated seconds the rate holds: 1000/s, plus the depth.
        let mut sent = 1;
        for ms in 1..=10_000u64 {
            b.refill(t0 + Duration::from_millis(ms));
            while b.try_take(big) {
                sent += 1;
            }
        }
        assert!((39..=41).contains(&sent), "{sent} x 250 packets in 10 s");
    }
}
