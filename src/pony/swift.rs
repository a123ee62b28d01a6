//! Swift congestion control (docs/pony.md, "Congestion control (after
//! Swift)"): a window in packets driven by the delay each ACK measures, so a
//! flow backs off as soon as queues build instead of waiting for loss.
//!
//! Pure arithmetic: the caller passes the delay, its RTT estimate and the
//! time, so the same inputs always give the same window.

/// Swift's parameters (config keys of the `pony` section).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SwiftConfig {
    /// Below this delay the window grows, above it the window shrinks.
    pub target_delay_ns: u64,
    /// Packets the window grows by per RTT while below target.
    pub additive_increase: f64,
    /// Multiplicative decrease per unit of excess delay (relative to the
    /// measured delay).
    pub beta: f64,
    /// The largest fraction one decrease may take off the window.
    pub max_decrease: f64,
    /// Packets.
    pub min_window: f64,
    /// Packets.
    pub max_window: f64,
}

impl Default for SwiftConfig {
    fn default() -> Self {
        Self {
            target_delay_ns: 500_000,
            additive_increase: 1.0,
            beta: 0.8,
            max_decrease: 0.5,
            min_window: 1.0,
            max_window: 256.0,
        }
    }
}

/// Window a flow starts with: enough to fill a short data-centre path at
/// once without waiting for the window to grow.
const INITIAL_WINDOW: f64 = 10.0;

/// One flow's congestion window.
#[derive(Clone, Debug)]
pub struct Swift {
    cfg: SwiftConfig,
    window: f64,
    /// When the window last shrank: decreases are spaced by an RTT, because
    /// the ACKs of that RTT still report the queue the previous window built.
    last_decrease_ns: Option<u64>,
    last_delay_ns: u64,
}

impl Swift {
    pub fn new(cfg: SwiftConfig) -> Self {
        let mut swift = Self {
            cfg,
            window: INITIAL_WINDOW.min(cfg.max_window),
            last_decrease_ns: None,
            last_delay_ns: 0,
        };
        swift.bound_window();
        swift
    }

    /// `acked` packets newly acknowledged by an ACK that measured `delay_ns`;
    /// `rtt_ns` is the flow's smoothed RTT.
    pub fn on_ack(&mut self, acked: u32, delay_ns: u64, rtt_ns: u64, now_ns: u64) {
        self.last_delay_ns = delay_ns;
        if delay_ns < self.cfg.target_delay_ns {
            // Spread over a window's worth of ACKs, this adds
            // `additive_increase` packets per RTT.
            self.window += self.cfg.additive_increase * f64::from(acked) / self.window;
        } else if self.may_decrease(rtt_ns, now_ns) {
            // `delay_ns` is at least the target here; a zero target and zero
            // delay is no excess rather than 0/0.
            let excess = if delay_ns == 0 {
                0.0
            } else {
                (delay_ns - self.cfg.target_delay_ns) as f64 / delay_ns as f64
            };
            let factor = (1.0 - self.cfg.beta * excess).max(1.0 - self.cfg.max_decrease);
            self.window *= factor;
            self.last_decrease_ns = Some(now_ns);
        }
        self.bound_window();
    }

    /// A packet was found lost by SACK (fast retransmit).
    pub fn on_loss(&mut self, rtt_ns: u64, now_ns: u64) {
        if self.may_decrease(rtt_ns, now_ns) {
            self.window *= 1.0 - self.cfg.max_decrease;
            self.last_decrease_ns = Some(now_ns);
        }
        self.bound_window();
    }

    /// A retransmission timer expired: the path may have changed entirely,
    /// so start again from the smallest window.
    pub fn on_timeout(&mut self, now_ns: u64) {
        self.window = self.cfg.min_window;
        self.last_decrease_ns = Some(now_ns);
        self.bound_window();
    }

    /// Packets the flow may have in flight (fractional: the caller floors).
    pub fn window(&self) -> f64 {
        self.window
    }

    /// The delay the last ACK measured.
    pub fn last_delay_ns(&self) -> u64 {
        self.last_delay_ns
    }

    fn may_decrease(&self, rtt_ns: u64, now_ns: u64) -> bool {
        match self.last_decrease_ns {
            None => true,
            // A clock that went backwards counts as no time passed.
            Some(last) => now_ns.saturating_sub(last) >= rtt_ns,
        }
    }

    /// Keeps the window within the configured bounds. Written with
    /// `min`/`max` rather than `clamp`, which panics on a configuration with
    /// min above max; `f64::min`/`max` also replace a NaN (from a NaN
    /// parameter) with the bound instead of keeping it.
    fn bound_window(&mut self) {
        self.window = self
            .window
            .min(self.cfg.max_window)
            .max(self.cfg.min_window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: u64 = 100_000;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn starts_at_ten_packets_within_bounds() {
        assert!(close(Swift::new(SwiftConfig::default()).window(), 10.0));
        let small = SwiftConfig {
            max_window: 4.0,
            ..SwiftConfig::default()
        };
        assert!(close(Swift::new(small).window(), 4.0));
        let large_min = SwiftConfig {
            min_window: 16.0,
            ..SwiftConfig::default()
        };
        assert!(close(Swift::new(large_min).window(), 16.0));
    }

    #[test]
    fn grows_one_packet_per_window_of_acks_below_target() {
        let mut swift = Swift::new(SwiftConfig::default());
        let mut now = 0;
        for _ in 0..10 {
            now += 1_000;
            swift.on_ack(1, 100_000, RTT, now);
        }
        // Ten ACKs of one packet each on a window near 10: about +1.
        assert!(
            swift.window() > 10.9 && swift.window() < 11.0,
            "{}",
            swift.window()
        );
        assert_eq!(swift.last_delay_ns(), 100_000);

        let before = swift.window();
        swift.on_ack(4, 0, RTT, now);
        assert!(close(swift.window(), before + 4.0 / before));
    }

    #[test]
    fn shrinks_by_excess_delay_at_most_once_per_rtt() {
        let mut swift = Swift::new(SwiftConfig::default());
        // Delay 625 us against a 500 us target: 1 - 0.8 * 125/625 = 0.84.
        swift.on_ack(1, 625_000, RTT, 1_000_000);
        assert!(close(swift.window(), 8.4), "{}", swift.window());
        // Within the same RTT further ACKs above target change nothing.
        swift.on_ack(1, 625_000, RTT, 1_000_000 + RTT - 1);
        assert!(close(swift.window(), 8.4));
        // But ACKs below target still grow it.
        swift.on_ack(1, 400_000, RTT, 1_000_000 + RTT - 1);
        assert!(close(swift.window(), 8.4 + 1.0 / 8.4));
        let grown = swift.window();
        swift.on_ack(1, 625_000, RTT, 1_000_000 + RTT);
        assert!(close(swift.window(), grown * 0.84));
    }

    #[test]
    fn a_decrease_is_bounded_by_max_decrease() {
        let mut swift = Swift::new(SwiftConfig::default());
        // A huge delay would take 80 % off; max_decrease allows 50 %.
        swift.on_ack(1, 1_000_000_000, RTT, 0);
        assert!(close(swift.window(), 5.0));
    }

    #[test]
    fn delay_at_target_is_a_decrease_of_nothing() {
        let mut swift = Swift::new(SwiftConfig::default());
        swift.on_ack(1, 500_000, RTT, 0);
        assert!(close(swift.window(), 10.0));
    }

    #[test]
    fn never_leaves_its_bounds() {
        let cfg = SwiftConfig {
            min_window: 2.0,
            max_window: 12.0,
            ..SwiftConfig::default()
        };
        let mut swift = Swift::new(cfg);
        let mut now = 0;
        for _ in 0..1_000 {
            now += RTT;
            swift.on_ack(100, 0, RTT, now);
            assert!(swift.window() <= 12.0);
        }
        assert!(close(swift.window(), 12.0));
        for _ in 0..100 {
            now += RTT;
            swift.on_ack(1, u64::MAX, RTT, now);
            swift.on_loss(RTT, now + RTT / 2);
            assert!(swift.window() >= 2.0);
        }
        assert!(close(swift.window(), 2.0));
    }

    #[test]
    fn loss_halves_once_per_rtt() {
        let mut swift = Swift::new(SwiftConfig::default());
        swift.on_loss(RTT, 5_000);
        assert!(close(swift.window(), 5.0));
        swift.on_loss(RTT, 5_000 + RTT - 1);
        assert!(close(swift.window(), 5.0));
        // A delay decrease shares the once-per-RTT budget.
        swift.on_ack(1, 1_000_000, RTT, 5_000 + RTT - 1);
        assert!(close(swift.window(), 5.0));
        swift.on_loss(RTT, 5_000 + RTT);
        assert!(close(swift.window(), 2.5));
    }

    #[test]
    fn timeout_goes_to_the_minimum() {
        let mut swift = Swift::new(SwiftConfig::default());
        swift.on_timeout(0);
        assert!(close(swift.window(), 1.0));
        // And the window can grow again from there.
        swift.on_ack(1, 0, RTT, 1);
        assert!(close(swift.window(), 2.0));
    }

    #[test]
    fn nonsense_configuration_does_not_panic_or_leave_nan() {
        let cfgs = [
            SwiftConfig {
                min_window: 10.0,
                max_window: 1.0,
                ..SwiftConfig::default()
            },
            SwiftConfig {
                additive_increase: f64::NAN,
                beta: f64::INFINITY,
                ..SwiftConfig::default()
            },
            SwiftConfig {
                target_delay_ns: 0,
                min_window: 0.0,
                max_decrease: 2.0,
                ..SwiftConfig::default()
            },
        ];
        for cfg in cfgs {
            let mut swift = Swift::new(cfg);
            for step in 0..50u64 {
                swift.on_ack(3, step * 100_000, RTT, step * RTT);
                swift.on_ack(0, 0, 0, 0);
                swift.on_loss(0, step);
                assert!(!swift.window().is_nan());
            }
            swift.on_timeout(u64::MAX);
            assert!(!swift.window().is_nan());
        }
    }

    /// A bottleneck with a base RTT and a queue of whatever the window puts
    /// beyond the path's bandwidth-delay product: Swift must settle where
    /// the delay is its target.
    #[test]
    fn closed_loop_settles_at_target_delay() {
        const BASE_NS: u64 = 100_000;
        const PACKET_TIME_NS: f64 = 10_000.0;
        const BDP_PACKETS: f64 = 10.0;
        let delay_of =
            |window: f64| BASE_NS + ((window - BDP_PACKETS).max(0.0) * PACKET_TIME_NS) as u64;
        let cfg = SwiftConfig::default();
        let mut swift = Swift::new(cfg);
        let mut now = 0;
        let mut late_delays = Vec::new();
        for round in 0..2_000 {
            // One RTT: a window's worth of ACKs, each seeing the queue the
            // window builds.
            let delay = delay_of(swift.window());
            let acks = swift.window().floor() as u32;
            for _ in 0..acks {
                swift.on_ack(1, delay, delay, now);
            }
            now += delay;
            if round >= 1_500 {
                late_delays.push(delay);
            }
        }
        let target = cfg.target_delay_ns as f64;
        for delay in late_delays {
            let off = (delay as f64 - target).abs() / target;
            assert!(off < 0.1, "delay {delay} ns is not near the target");
        }
        // The window the target delay corresponds to: 10 + 400 us / 10 us.
        assert!((swift.window() - 50.0).abs() < 5.0, "{}", swift.window());
    }
}
