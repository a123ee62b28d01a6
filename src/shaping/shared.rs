//! The buckets of one vNIC, shared by the engines of all its queue pairs:
//! a limit is the vNIC's, not each queue's, so a guest gets no more by
//! spreading its traffic over more queues, and no less by sending on one.
//!
//! A queue's engine locks the bucket for each frame it charges. The lock is
//! taken only by engines of the same vNIC (the same tenant), and only for a
//! shaped vNIC, whose rate the bucket caps anyway; an unshaped vNIC has no
//! bucket and pays nothing.
//!
//! Queues take turns while the bucket is short: the engines of a vNIC's
//! queues are often polled by one thread in a fixed order, and the first
//! one would otherwise take every token as it appears and starve the
//! others (a guest's flows on the other queues would stall). A queue that
//! was refused tokens is waiting; when tokens are there, the next waiting
//! queue after the last taker (in queue order) has them, reserved for
//! [`TURN`]: a queue that no longer asks loses its turn then.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Cost, RateLimit, TokenBucket};

/// How long tokens stay reserved for the queue whose turn it is.
pub const TURN: Duration = Duration::from_micros(100);

#[derive(Debug)]
struct Shared {
    bucket: TokenBucket,
    /// Queues (bit `q % 64`) refused tokens since they last got some.
    waiting: u64,
    /// The queue that took tokens last.
    last: u32,
    /// The queue whose turn it is, until when.
    reserved: Option<(u32, Instant)>,
}

/// The first queue in `set` after `after`, cyclically (`set` not empty).
fn next_after(set: u64, after: u32) -> u32 {
    let start = (after + 1) % 64;
    let rotated = set.rotate_right(start);
    (start + rotated.trailing_zeros()) % 64
}

/// One bucket, shared; each queue's engine holds a copy naming its queue.
#[derive(Clone, Debug)]
pub struct SharedBucket {
    shared: Arc<Mutex<Shared>>,
    queue: u32,
}

impl SharedBucket {
    /// `None` for an unlimited rate.
    pub fn new(limit: &RateLimit) -> Option<Self> {
        TokenBucket::new(limit).map(|bucket| Self {
            shared: Arc::new(Mutex::new(Shared {
                bucket,
                waiting: 0,
                last: 0,
                reserved: None,
            })),
            queue: 0,
        })
    }

    /// The same bucket, for queue `queue`'s engine.
    pub fn for_queue(&self, queue: u32) -> Self {
        Self {
            shared: self.shared.clone(),
            queue,
        }
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding it cannot leave the bucket invalid: every
        // update is a plain store of a level, a time or a bit.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the bucket (a refill, the levels of an upgrade, the
    /// ingress check and charge).
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(&mut TokenBucket) -> R) -> R {
        f(&mut self.shared().bucket)
    }

    /// Whether the bucket holds `c`'s tokens, catching up with the clock
    /// first if `refill` (the ingress check, once per batch).
    ///
    /// This and the other per-frame calls stay out of line: the data path
    /// calls them only for a shaped vNIC, and inlined (lock and all) they
    /// grew every vNIC's ring loops.
    #[inline(never)]
    pub fn has(&self, c: Cost, refill: bool) -> bool {
        let mut s = self.shared();
        if refill {
            s.bucket.refill(Instant::now());
        }
        s.bucket.has(c)
    }

    /// Takes `c`'s tokens (after [`Self::has`] said they are there).
    #[inline(never)]
    pub fn take(&self, c: Cost) {
        self.shared().bucket.take(c);
    }

    /// Catches up with the clock (egress, once per batch).
    #[inline(never)]
    pub fn refill_now(&self) {
        self.shared().bucket.refill(Instant::now());
    }

    /// Takes a frame's tokens for this queue, or says how long until it
    /// should ask again: when the bucket will hold them, or when another
    /// queue's turn is over.
    #[inline(never)]
    pub fn take_in_turn(&self, c: Cost) -> Result<(), Duration> {
        let mut s = self.shared();
        let q = self.queue % 64;
        let me = 1u64 << q;
        // The clock is read only around a reservation: a queue alone pays
        // nothing but the lock per frame.
        if let Some((r, until)) = s.reserved {
            let now = Instant::now();
            if now >= until {
                // It did not come for its turn: it is not waiting any more.
                s.waiting &= !(1u64 << r);
                s.reserved = None;
            } else if r != q {
                s.waiting |= me;
                return Err(until - now);
            }
        }
        if !s.bucket.has(c) {
            s.waiting |= me;
            return Err(s.bucket.wait_for(c));
        }
        let turn = next_after(s.waiting | me, s.last);
        if turn != q {
            s.waiting |= me;
            s.reserved = Some((turn, Instant::now() + TURN));
            return Err(TURN);
        }
        s.bucket.take(c);
        s.waiting &= !me;
        s.last = q;
        s.reserved = None;
        Ok(())
    }
}

/// A vNIC's egress and ingress buckets, one copy per queue engine.
#[derive(Clone, Debug, Default)]
pub struct VnicShaping {
    /// Guest egress (its TX): chains wait in the TX ring while it is empty.
    pub egress: Option<SharedBucket>,
    /// Guest ingress (its RX): frames over the limit are dropped.
    pub ingress: Option<SharedBucket>,
}

impl VnicShaping {
    /// Fresh, full buckets for `tx` and `rx`.
    pub fn new(tx: &RateLimit, rx: &RateLimit) -> Self {
        Self {
            egress: SharedBucket::new(tx),
            ingress: SharedBucket::new(rx),
        }
    }

    /// The same buckets, for queue pair `queue`'s engine.
    pub fn for_queue(&self, queue: u32) -> Self {
        Self {
            egress: self.egress.as_ref().map(|b| b.for_queue(queue)),
            ingress: self.ingress.as_ref().map(|b| b.for_queue(queue)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_per_second(burst: u64) -> VnicShaping {
        VnicShaping::new(
            &RateLimit {
                packets_per_sec: Some(1),
                burst_packets: Some(burst),
                ..Default::default()
            },
            &RateLimit::default(),
        )
    }

    #[test]
    fn copies_draw_from_one_bucket() {
        let shaping = one_per_second(100);
        assert!(shaping.ingress.is_none(), "no limit, no bucket");
        let queues = [shaping.for_queue(0), shaping.for_queue(1)];
        let mut sent = 0;
        for _ in 0..200 {
            for q in &queues {
                if q.egress
                    .as_ref()
                    .unwrap()
                    .take_in_turn(Cost::frame(60))
                    .is_ok()
                {
                    sent += 1;
                }
            }
        }
        assert_eq!(sent, 100, "two queues share one burst of 100");
    }

    #[test]
    fn a_short_bucket_is_shared_by_turns() {
        // Polled in a fixed order, one token at a time: each queue gets
        // every other one, none starves.
        let shaping = one_per_second(64);
        let queues: Vec<SharedBucket> = (0..3)
            .map(|q| shaping.for_queue(q).egress.unwrap())
            .collect();
        // Empty the bucket.
        while queues[0].take_in_turn(Cost::frame(60)).is_ok() {}
        let mut got = [0; 3];
        let mut clock = std::time::Instant::now();
        for _ in 0..300 {
            // One token arrives, then every queue tries, in order.
            clock += Duration::from_secs(1);
            queues[0].with(|b| b.refill(clock));
            for (q, bucket) in queues.iter().enumerate() {
                if bucket.take_in_turn(Cost::frame(60)).is_ok() {
                    got[q] += 1;
                }
            }
        }
        assert_eq!(got, [100, 100, 100], "turns");
    }

    #[test]
    fn a_queue_that_stops_asking_loses_its_turn() {
        let shaping = one_per_second(64);
        let (a, b) = (
            shaping.for_queue(0).egress.unwrap(),
            shaping.for_queue(1).egress.unwrap(),
        );
        while a.take_in_turn(Cost::frame(60)).is_ok() {}
        // b asks once, then never again.
        assert!(b.take_in_turn(Cost::frame(60)).is_err());
        let mut clock = Instant::now();
        let mut got = 0;
        for _ in 0..20 {
            clock += Duration::from_secs(1);
            a.with(|bucket| bucket.refill(clock));
            let mut tries = 0;
            while a.take_in_turn(Cost::frame(60)).is_err() {
                tries += 1;
                assert!(tries < 1000, "a never got the token");
                std::thread::sleep(TURN / 4);
            }
            got += 1;
        }
        assert_eq!(got, 20);
    }

    #[test]
    fn next_after_wraps() {
        assert_eq!(next_after(0b101, 0), 2);
        assert_eq!(next_after(0b101, 2), 0);
        assert_eq!(next_after(0b100, 2), 2);
        assert_eq!(next_after(1 << 63 | 1, 63), 0);
    }
}
