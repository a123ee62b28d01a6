//! The buckets of one vNIC, shared by the engines of all its queue pairs:
//! a limit is the vNIC's, not each queue's, so a guest gets no more by
//! spreading its traffic over more queues, and no less by sending on one.
//!
//! A queue's engine locks the bucket for each frame it charges. The lock is
//! taken only by engines of the same vNIC (the same tenant), and only for a
//! shaped vNIC, whose rate the bucket caps anyway; an unshaped vNIC has no
//! bucket and pays nothing.

use std::sync::{Arc, Mutex, MutexGuard};

use super::{RateLimit, TokenBucket};

/// One bucket, shared.
#[derive(Clone, Debug)]
pub struct SharedBucket(Arc<Mutex<TokenBucket>>);

impl SharedBucket {
    /// `None` for an unlimited rate.
    pub fn new(limit: &RateLimit) -> Option<Self> {
        TokenBucket::new(limit).map(|b| Self(Arc::new(Mutex::new(b))))
    }

    /// The bucket, for one frame's charge or one refill.
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, TokenBucket> {
        // A panic while holding it cannot leave the bucket invalid: every
        // update is a plain store of a level or a time.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaping::Cost;

    #[test]
    fn copies_draw_from_one_bucket() {
        let shaping = VnicShaping::new(
            &RateLimit {
                packets_per_sec: Some(1),
                burst_packets: Some(100),
                ..Default::default()
            },
            &RateLimit::default(),
        );
        assert!(shaping.ingress.is_none(), "no limit, no bucket");
        let queues = [shaping.clone(), shaping];
        let mut sent = 0;
        for _ in 0..200 {
            for q in &queues {
                if q.egress.as_ref().unwrap().lock().try_take(Cost::frame(60)) {
                    sent += 1;
                }
            }
        }
        assert_eq!(sent, 100, "two queues share one burst of 100");
    }
}
