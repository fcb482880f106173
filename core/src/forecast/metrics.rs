//! Forecast evaluation metrics: accuracy (MAE, pinball loss), calibration (coverage), the
//! reservation trade-off (slack against exceed-rate), and the Brier score of scenario
//! probabilities (NaN for forecasters that give none).
//!
//! A [`MetricsAccumulator`] takes (forecast, actual) pairs, one per customer-window at one
//! horizon, and summarizes them as [`Metrics`]. All sums are over the pairs given, so customers
//! with more usage weigh more in the token-valued metrics (MAE, pinball, slack); the rates
//! (coverage, exceed-rate) count every customer-window once.

use super::baselines::{QuantileLevel, Quantiles};

/// The pinball (quantile) loss of the `tau`-quantile forecast `q` when `actual` happens:
/// `tau * (actual - q)` if `actual >= q`, else `(1 - tau) * (q - actual)`. Never negative for `tau`
/// in `[0, 1]`; its mean is minimized by the true `tau`-quantile. At `tau = 0.5` it is half the
/// absolute error.
pub fn pinball_loss(tau: f64, q: f64, actual: f64) -> f64 {
    if actual >= q {
        tau * (actual - q)
    } else {
        (1.0 - tau) * (q - actual)
    }
}

/// Running sums for [`Metrics`].
#[derive(Clone, Debug)]
pub struct MetricsAccumulator {
    reserve: QuantileLevel,
    samples: u64,
    abs_err: f64,
    pinball: [f64; 3],
    covered: [u64; 3],
    used: f64,
    reserved: f64,
    over: f64,
    exceeded: u64,
    brier: f64,
    brier_samples: u64,
}

impl MetricsAccumulator {
    /// An empty one whose reservation is the forecast's `reserve` quantile.
    pub fn new(reserve: QuantileLevel) -> Self {
        MetricsAccumulator {
            reserve,
            samples: 0,
            abs_err: 0.0,
            pinball: [0.0; 3],
            covered: [0; 3],
            used: 0.0,
            reserved: 0.0,
            over: 0.0,
            exceeded: 0,
            brier: 0.0,
            brier_samples: 0,
        }
    }

    /// Adds one scenario forecast: the probabilities given to each scenario, and the index of the
    /// scenario that happened (out of range: counted as none happening).
    pub fn add_scenario(&mut self, probs: &[f64], actual: usize) {
        self.brier_samples += 1;
        self.brier += probs
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let o = if k == actual { 1.0 } else { 0.0 };
                (p - o) * (p - o)
            })
            .sum::<f64>();
    }

    /// Adds one customer-window: what was forecast, and what was used.
    pub fn add(&mut self, forecast: &Quantiles, actual: f64) {
        self.samples += 1;
        self.abs_err += (forecast.mean - actual).abs();
        for (i, level) in QuantileLevel::ALL.into_iter().enumerate() {
            let q = forecast.get(level);
            self.pinball[i] += pinball_loss(level.tau(), q, actual);
            self.covered[i] += u64::from(actual <= q);
        }
        let reserved = forecast.get(self.reserve);
        self.used += actual;
        self.reserved += reserved;
        self.over += (reserved - actual).max(0.0);
        self.exceeded += u64::from(actual > reserved);
    }

    /// The metrics of everything added so far. With no samples, every mean and rate is NaN.
    pub fn summary(&self) -> Metrics {
        let n = self.samples as f64;
        let rate = |k: u64| k as f64 / n;
        Metrics {
            samples: self.samples,
            mean_used: self.used / n,
            mae: self.abs_err / n,
            pinball_p50: self.pinball[0] / n,
            pinball_p90: self.pinball[1] / n,
            pinball_p99: self.pinball[2] / n,
            coverage_p90: rate(self.covered[1]),
            coverage_p99: rate(self.covered[2]),
            reserve: self.reserve,
            slack: (self.reserved - self.used) / self.used,
            over_reserved: self.over / self.used,
            exceed_rate: rate(self.exceeded),
            brier: self.brier / self.brier_samples as f64,
        }
    }
}

/// Summary metrics over a set of customer-windows (one horizon).
///
/// Token-valued fields are in tokens per window. NaN where undefined: everything when there are no
/// samples, the slack ratios when nothing was used.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    /// How many customer-windows.
    pub samples: u64,
    /// Mean usage per customer-window (the scale the token-valued metrics compare to).
    pub mean_used: f64,
    /// Mean absolute error of the `mean` forecast.
    pub mae: f64,
    /// Mean pinball loss of `p50` (half the mean absolute error of `p50`).
    pub pinball_p50: f64,
    /// Mean pinball loss of `p90`.
    pub pinball_p90: f64,
    /// Mean pinball loss of `p99`.
    pub pinball_p99: f64,
    /// Share of customer-windows with `used <= p90` (0.9 if calibrated).
    pub coverage_p90: f64,
    /// Share of customer-windows with `used <= p99` (0.99 if calibrated).
    pub coverage_p99: f64,
    /// The quantile taken as the reservation for `slack`, `over_reserved` and `exceed_rate`.
    pub reserve: QuantileLevel,
    /// Net slack: `sum(reserved - used) / sum(used)`. Shortfalls offset excess here, so it can be
    /// negative; see `over_reserved` for the excess alone.
    pub slack: f64,
    /// Gross excess: `sum(max(reserved - used, 0)) / sum(used)`, the idle reserved capacity as a
    /// share of what was used.
    pub over_reserved: f64,
    /// Share of customer-windows with `used > reserved` (those that would fall back to the pool).
    pub exceed_rate: f64,
    /// The multi-class Brier score of the scenario probabilities: the mean over customer-windows
    /// of `sum_k (p_k - o_k)^2`, with `o` the one-hot of the scenario that happened (0 is
    /// perfect, 2 the worst; a one-hot forecast scores 0 when right and 2 when wrong). NaN
    /// without scenario forecasts.
    pub brier: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pinball_hand_checked() {
        // Under-forecast by 10 at tau 0.9: 0.9 * 10; over-forecast by 10: 0.1 * 10.
        assert!((pinball_loss(0.9, 90.0, 100.0) - 9.0).abs() < 1e-12);
        assert!((pinball_loss(0.9, 110.0, 100.0) - 1.0).abs() < 1e-12);
        assert_eq!(pinball_loss(0.5, 3.0, 7.0), 2.0);
        assert_eq!(pinball_loss(0.99, 5.0, 5.0), 0.0);
    }

    #[test]
    fn accumulator_hand_checked() {
        let mut m = MetricsAccumulator::new(QuantileLevel::P90);
        let f = Quantiles {
            mean: 10.0,
            p50: 10.0,
            p90: 20.0,
            p99: 30.0,
        };
        m.add(&f, 10.0); // exact median; reserved 20: over 10
        m.add(&f, 25.0); // above p90, below p99
        m.add(&f, 40.0); // above p99
        m.add(&f, 5.0); // reserved 20: over 15
        let s = m.summary();
        assert_eq!(s.samples, 4);
        assert_eq!(s.mean_used, 20.0);
        assert_eq!(s.mae, (0.0 + 15.0 + 30.0 + 5.0) / 4.0);
        assert_eq!(s.pinball_p50, s.mae / 2.0);
        // p90 = 20: 10 -> 0.1*10; 25 -> 0.9*5; 40 -> 0.9*20; 5 -> 0.1*15.
        assert!((s.pinball_p90 - (1.0 + 4.5 + 18.0 + 1.5) / 4.0).abs() < 1e-12);
        assert_eq!(s.coverage_p90, 0.5);
        assert_eq!(s.coverage_p99, 0.75);
        // reserved 80, used 80.
        assert_eq!(s.slack, 0.0);
        assert_eq!(s.over_reserved, 25.0 / 80.0);
        assert_eq!(s.exceed_rate, 0.5);
        assert!(s.brier.is_nan());
        m.add_scenario(&[1.0, 0.0, 0.0, 0.0], 0); // right: 0
        m.add_scenario(&[0.0, 1.0, 0.0, 0.0], 3); // wrong: 2
        m.add_scenario(&[0.5, 0.5, 0.0, 0.0], 1); // 0.25 + 0.25
        assert!((m.summary().brier - 2.5 / 3.0).abs() < 1e-12);
        assert!(
            MetricsAccumulator::new(QuantileLevel::P50)
                .summary()
                .mae
                .is_nan()
        );
    }

    proptest! {
        #[test]
        fn pinball_nonnegative(tau in 0.0f64..=1.0, q in -1e9f64..1e9, y in -1e9f64..1e9) {
            prop_assert!(pinball_loss(tau, q, y) >= 0.0);
        }

        #[test]
        fn rates_in_unit_interval(
            pairs in prop::collection::vec((0.0f64..1e6, 0.0f64..1e6, 0.0f64..1e6, 0.0f64..1e6), 1..50)
        ) {
            let mut m = MetricsAccumulator::new(QuantileLevel::P90);
            for (a, b, c, y) in pairs {
                let mut v = [a, b, c];
                v.sort_by(f64::total_cmp);
                m.add(&Quantiles { mean: v[0], p50: v[0], p90: v[1], p99: v[2] }, y);
            }
            let s = m.summary();
            for r in [s.coverage_p90, s.coverage_p99, s.exceed_rate] {
                prop_assert!((0.0..=1.0).contains(&r));
            }
            prop_assert!(s.coverage_p99 >= s.coverage_p90);
            prop_assert!((s.coverage_p90 + s.exceed_rate - 1.0).abs() < 1e-12);
            prop_assert!(s.pinball_p50 >= 0.0 && s.pinball_p90 >= 0.0 && s.pinball_p99 >= 0.0);
        }
    }
}
