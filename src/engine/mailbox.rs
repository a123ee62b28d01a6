//! The engine mailbox: depth-1, lock-free on the engine side.
//!
//! The control plane posts one short closure; the engine takes it between two
//! polls (one relaxed atomic load per poll when empty), runs it on its own
//! thread against its own state, and the poster gets the closure's result. A
//! post that times out before the engine took it is withdrawn, so a request
//! runs exactly once or not at all.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::Doorbell;

/// A request: runs once against the engine's state.
pub type Job<E> = Box<dyn FnOnce(&mut E) + Send>;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MailboxError {
    #[error("engine did not take the request within {0:?} (not running?)")]
    Timeout(Duration),
    #[error("engine dropped the request without answering")]
    Dropped,
}

/// The engine's end; owned by the engine.
pub struct Mailbox<E> {
    shared: Arc<Shared<E>>,
}

/// The posting end; cheap to clone.
pub struct MailboxSender<E> {
    shared: Arc<Shared<E>>,
}

impl<E> Clone for MailboxSender<E> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<E> {
    slot: AtomicPtr<Job<E>>,
    doorbell: Doorbell,
}

impl<E> Drop for Shared<E> {
    fn drop(&mut self) {
        let p = *self.slot.get_mut();
        if !p.is_null() {
            // SAFETY: a non-null slot holds a pointer from `Box::into_raw` that
            // nobody took; we are the last owner.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

impl<E> Mailbox<E> {
    pub fn new() -> std::io::Result<(Mailbox<E>, MailboxSender<E>)> {
        let shared = Arc::new(Shared {
            slot: AtomicPtr::new(std::ptr::null_mut()),
            doorbell: Doorbell::new()?,
        });
        Ok((
            Mailbox {
                shared: shared.clone(),
            },
            MailboxSender { shared },
        ))
    }

    /// Takes the pending request, if any. The engine runs it as `job(self)`.
    #[inline]
    pub fn take(&self) -> Option<Job<E>> {
        if self.shared.slot.load(Ordering::Relaxed).is_null() {
            return None;
        }
        let p = self
            .shared
            .slot
            .swap(std::ptr::null_mut(), Ordering::Acquire);
        if p.is_null() {
            return None;
        }
        // SAFETY: the slot only ever holds null or a `Box::into_raw` pointer,
        // and the swap made us its only owner.
        Some(*unsafe { Box::from_raw(p) })
    }

    /// True when a request waits (for the re-check before sleeping).
    #[inline]
    pub fn pending(&self) -> bool {
        !self.shared.slot.load(Ordering::Acquire).is_null()
    }

    /// The doorbell a sleeping engine must also wait on.
    pub fn doorbell(&self) -> &Doorbell {
        &self.shared.doorbell
    }
}

impl<E> MailboxSender<E> {
    /// Wakes the engine if it sleeps (cheap when it does not).
    #[inline]
    pub fn ring(&self) {
        self.shared.doorbell.ring();
    }
}

impl<E: 'static> MailboxSender<E> {
    /// Runs `f` on the engine's thread and returns its result. Waits for a
    /// previous request to be taken first (depth 1).
    pub fn call<R: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut E) -> R + Send + 'static,
    ) -> Result<R, MailboxError> {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let job: Job<E> = Box::new(move |engine: &mut E| {
            let _ = reply_tx.send(f(engine));
        });
        let p = Box::into_raw(Box::new(job));
        let deadline = Instant::now() + timeout;
        // Wait for the slot to be free.
        while self
            .shared
            .slot
            .compare_exchange(
                std::ptr::null_mut(),
                p,
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_err()
        {
            if Instant::now() >= deadline {
                // SAFETY: `p` was never published, so we still own it.
                drop(unsafe { Box::from_raw(p) });
                return Err(MailboxError::Timeout(timeout));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        self.shared.doorbell.wake();
        let left = deadline.saturating_duration_since(Instant::now());
        match reply_rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(r) => Ok(r),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(MailboxError::Dropped),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Withdraw the request if the engine has not taken it yet.
                if self
                    .shared
                    .slot
                    .compare_exchange(
                        p,
                        std::ptr::null_mut(),
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    // SAFETY: the exchange returned ownership of `p` to us.
                    drop(unsafe { Box::from_raw(p) });
                    return Err(MailboxError::Timeout(timeout));
                }
                // Taken: it is running; its answer will come.
                reply_rx.recv().map_err(|_| MailboxError::Dropped)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter {
        n: u32,
        mailbox: Mailbox<Counter>,
    }

    impl Counter {
        fn poll(&mut self) {
            if let Some(job) = self.mailbox.take() {
                job(self);
            }
        }
    }

    #[test]
    fn request_runs_once_on_engine_thread_and_returns() {
        let (mailbox, tx) = Mailbox::new().unwrap();
        let mut engine = Counter { n: 0, mailbox };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let t = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                engine.poll();
            }
            engine.n
        });
        for i in 1..=100u32 {
            let got = tx
                .call(Duration::from_secs(5), move |e: &mut Counter| {
                    e.n += 1;
                    e.n * 10 + i
                })
                .unwrap();
            assert_eq!(got, i * 11);
        }
        stop.store(true, Ordering::Relaxed);
        assert_eq!(t.join().unwrap(), 100);
    }

    #[test]
    fn request_to_stopped_engine_times_out_and_never_runs() {
        let (mailbox, tx) = Mailbox::new().unwrap();
        let mut engine = Counter { n: 0, mailbox };
        let r = tx.call(Duration::from_millis(20), |e: &mut Counter| e.n += 1);
        assert_eq!(r, Err(MailboxError::Timeout(Duration::from_millis(20))));
        engine.poll();
        assert_eq!(engine.n, 0, "a withdrawn request must not run later");
    }
}
