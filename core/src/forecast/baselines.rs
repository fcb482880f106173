//! Streaming forecasters: baselines that see one customer-window at a time.
//!
//! A [`Forecaster`] is fed each customer's usage window by window ([`Forecaster::observe`]) and, at
//! any point, forecasts the usage `horizon` windows after the last one it saw
//! ([`Forecaster::forecast`]) as a mean and three quantiles ([`Quantiles`]). Customers are indices
//! (`0..`), as in [`UsageHistory`](super::UsageHistory); a forecaster grows its state to the largest
//! index it has seen and forecasts zero usage for a customer it has never seen.
//!
//! Forecasts are never negative (usage is not), and `p50 <= p90 <= p99`.

use crate::error::{Error, Result};
use crate::model::SCENARIOS;
use crate::model::spec::scenario_of;

/// A forecast of one customer's usage in one future window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantiles {
    /// The expected usage (the forecaster's point forecast).
    pub mean: f64,
    /// The median.
    pub p50: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The 99th percentile.
    pub p99: f64,
}

impl Quantiles {
    /// A point forecast: every quantile (and the mean) equal to `v`.
    pub fn point(v: f64) -> Self {
        Quantiles {
            mean: v,
            p50: v,
            p90: v,
            p99: v,
        }
    }

    /// The quantile at `level`.
    pub fn get(&self, level: QuantileLevel) -> f64 {
        match level {
            QuantileLevel::P50 => self.p50,
            QuantileLevel::P90 => self.p90,
            QuantileLevel::P99 => self.p99,
        }
    }
}

/// One of the quantiles a [`Quantiles`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantileLevel {
    /// The median.
    P50,
    /// The 90th percentile.
    P90,
    /// The 99th percentile.
    P99,
}

impl QuantileLevel {
    /// All three, in increasing order.
    pub const ALL: [QuantileLevel; 3] =
        [QuantileLevel::P50, QuantileLevel::P90, QuantileLevel::P99];

    /// The probability level: 0.5, 0.9 or 0.99.
    pub fn tau(self) -> f64 {
        match self {
            QuantileLevel::P50 => 0.5,
            QuantileLevel::P90 => 0.9,
            QuantileLevel::P99 => 0.99,
        }
    }

    /// `"p50"`, `"p90"` or `"p99"`.
    pub fn name(self) -> &'static str {
        match self {
            QuantileLevel::P50 => "p50",
            QuantileLevel::P90 => "p90",
            QuantileLevel::P99 => "p99",
        }
    }
}

/// A streaming per-customer forecaster.
pub trait Forecaster {
    /// A short name with its parameters, for reports (e.g. `"ewma(a=0.5)"`).
    fn name(&self) -> String;

    /// Forgets everything observed (parameters are kept).
    fn reset(&mut self);

    /// Forgets what was observed for one customer (its index is about to be reused). The
    /// default does nothing: forecasters with per-customer state override it.
    fn forget(&mut self, customer: usize) {
        let _ = customer;
    }

    /// Feeds the usage of `customer` in its next window. Non-finite or negative values are taken
    /// as 0 (usage cannot be negative); callers should not send them.
    fn observe(&mut self, customer: usize, value: f64);

    /// The forecast of `customer`'s usage `horizon` windows after the last one observed: `horizon =
    /// 1` is the next window. A horizon of 0 is taken as 1.
    fn forecast(&self, customer: usize, horizon: usize) -> Quantiles;

    /// The probabilities of the scenarios ([`SCENARIOS`]: low, medium, high, spike) of
    /// `customer`'s usage `horizon` windows ahead, against the customer's reference `scale`
    /// (tokens per window; see [`scenario_of`]). They sum to 1.
    ///
    /// The default, for forecasters without a notion of scenarios, is a one-hot of the scenario
    /// the p50 forecast falls in ([`one_hot_scenario`]).
    fn scenario(&self, customer: usize, horizon: usize, scale: f64) -> [f64; 4] {
        one_hot_scenario(self.forecast(customer, horizon).p50, scale)
    }
}

/// The scenario probabilities of a point forecast: 1 for the scenario `value` falls in against
/// `scale`, 0 for the others.
pub fn one_hot_scenario(value: f64, scale: f64) -> [f64; SCENARIOS.len()] {
    let mut p = [0.0; SCENARIOS.len()];
    p[scenario_of(value as f32, scale as f32)] = 1.0;
    p
}

fn clean(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 { v } else { 0.0 }
}

fn grow<T: Clone>(v: &mut Vec<T>, customer: usize, fill: T) {
    if customer >= v.len() {
        v.resize(customer + 1, fill);
    }
}

/// Forecasts the last observed value, at every horizon, as a point forecast (all quantiles equal).
///
/// The persistence baseline. It carries no notion of spread, so its p90/p99 "reservations" are just
/// the last value: its coverage shows how often usage does not grow from one window to the next.
#[derive(Clone, Debug, Default)]
pub struct LastValue {
    last: Vec<f64>,
}

impl LastValue {
    /// A new, empty one.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Forecaster for LastValue {
    fn name(&self) -> String {
        "last-value".into()
    }

    fn reset(&mut self) {
        self.last.clear();
    }

    fn forget(&mut self, customer: usize) {
        if let Some(v) = self.last.get_mut(customer) {
            *v = 0.0;
        }
    }

    fn observe(&mut self, customer: usize, value: f64) {
        grow(&mut self.last, customer, 0.0);
        self.last[customer] = clean(value);
    }

    fn forecast(&self, customer: usize, _horizon: usize) -> Quantiles {
        Quantiles::point(self.last.get(customer).copied().unwrap_or(0.0))
    }
}

/// `Phi^-1(0.9)`, the standard normal's 90th percentile.
const Z90: f64 = 1.281_551_565_544_600_4;
/// `Phi^-1(0.99)`.
const Z99: f64 = 2.326_347_874_040_840_8;
/// `sigma / E|X - mu|` for a normal distribution: `sqrt(pi / 2)`.
const SIGMA_PER_MAD: f64 = 1.253_314_137_315_500_3;

/// An exponentially weighted moving average with a Gaussian-style spread.
///
/// After each observation `x`: `level = alpha * x + (1 - alpha) * level` and
/// `mad = alpha * |x - level_before| + (1 - alpha) * mad`, where `|x - level_before|` is the absolute
/// error of the one-step forecast that was standing when `x` arrived (the first observation sets
/// `level = x`, `mad = 0`).
///
/// The forecast at horizon `h` is flat in `h`: `mean = p50 = level`. The quantiles use the simple
/// rule of a normal error whose standard deviation is `sqrt(pi/2) * mad` (the ratio of the standard
/// deviation to the mean absolute deviation of a normal), widened by `sqrt(h)` as for a random walk:
/// `p90 = level + 1.2816 * s`, `p99 = level + 2.3263 * s` with `s = 1.2533 * mad * sqrt(h)`, each
/// clamped at 0. Usage here is bursty and skewed, so this rule is a baseline, not a calibrated model:
/// the coverage columns of the evaluation show how far off it is.
#[derive(Clone, Debug)]
pub struct Ewma {
    alpha: f64,
    level: Vec<f64>,
    mad: Vec<f64>,
    seen: Vec<bool>,
}

impl Ewma {
    /// A new one with smoothing `alpha` in `(0, 1]` (1 is [`LastValue`] with a spread); else
    /// [`Error::InvalidArgument`].
    pub fn new(alpha: f64) -> Result<Self> {
        if !(alpha > 0.0 && alpha <= 1.0) {
            return Err(Error::invalid(format!(
                "Ewma: alpha must be in (0, 1], got {alpha}"
            )));
        }
        Ok(Ewma {
            alpha,
            level: Vec::new(),
            mad: Vec::new(),
            seen: Vec::new(),
        })
    }

    /// The smoothing factor.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }
}

impl Forecaster for Ewma {
    fn name(&self) -> String {
        format!("ewma(a={})", self.alpha)
    }

    fn reset(&mut self) {
        self.level.clear();
        self.mad.clear();
        self.seen.clear();
    }

    fn forget(&mut self, customer: usize) {
        if customer < self.seen.len() {
            self.level[customer] = 0.0;
            self.mad[customer] = 0.0;
            self.seen[customer] = false;
        }
    }

    fn observe(&mut self, customer: usize, value: f64) {
        let x = clean(value);
        grow(&mut self.level, customer, 0.0);
        grow(&mut self.mad, customer, 0.0);
        grow(&mut self.seen, customer, false);
        if !self.seen[customer] {
            self.seen[customer] = true;
            self.level[customer] = x;
            self.mad[customer] = 0.0;
            return;
        }
        let a = self.alpha;
        let err = (x - self.level[customer]).abs();
        self.mad[customer] = a * err + (1.0 - a) * self.mad[customer];
        self.level[customer] = a * x + (1.0 - a) * self.level[customer];
    }

    fn forecast(&self, customer: usize, horizon: usize) -> Quantiles {
        let level = self.level.get(customer).copied().unwrap_or(0.0);
        let mad = self.mad.get(customer).copied().unwrap_or(0.0);
        let s = SIGMA_PER_MAD * mad * (horizon.max(1) as f64).sqrt();
        Quantiles {
            mean: level,
            p50: level,
            p90: (level + Z90 * s).max(0.0),
            p99: (level + Z99 * s).max(0.0),
        }
    }
}

/// Windows in a day at the ServeGen traces' 10-minute windows: the usual [`SeasonalNaive`] period.
pub const WINDOWS_PER_DAY_10MIN: usize = 144;

/// "Same time one period ago" (with `period = 144` ten-minute windows: same time yesterday), as a
/// point forecast.
///
/// The forecast for the window `h` steps ahead is the value observed `k * period` windows before
/// it, with the smallest `k >= 1` that lands on an observed window (`k = ceil(h / period)`). Until a
/// customer has that much history, it falls back to the last value (0 before any). Keeps the last
/// `period` values per customer.
#[derive(Clone, Debug)]
pub struct SeasonalNaive {
    period: usize,
    ring: Vec<Vec<f64>>,
    count: Vec<usize>,
}

impl SeasonalNaive {
    /// A new one with a period of `period >= 1` windows; else [`Error::InvalidArgument`].
    pub fn new(period: usize) -> Result<Self> {
        if period == 0 {
            return Err(Error::invalid("SeasonalNaive: period must be >= 1 window"));
        }
        Ok(SeasonalNaive {
            period,
            ring: Vec::new(),
            count: Vec::new(),
        })
    }

    /// The period, in windows.
    pub fn period(&self) -> usize {
        self.period
    }
}

impl Forecaster for SeasonalNaive {
    fn name(&self) -> String {
        format!("seasonal-naive(p={})", self.period)
    }

    fn reset(&mut self) {
        self.ring.clear();
        self.count.clear();
    }

    fn forget(&mut self, customer: usize) {
        if customer < self.count.len() {
            self.ring[customer].clear();
            self.count[customer] = 0;
        }
    }

    fn observe(&mut self, customer: usize, value: f64) {
        grow(&mut self.ring, customer, Vec::new());
        grow(&mut self.count, customer, 0);
        // The ring grows with the values seen (`min(n, period)` of them), never to `period` up
        // front: a huge period (a caller's parameter) must not allocate beyond what was observed.
        let ring = &mut self.ring[customer];
        let n = self.count[customer];
        if ring.len() < self.period {
            ring.push(clean(value));
        } else {
            ring[n % self.period] = clean(value);
        }
        self.count[customer] = n + 1;
    }

    fn forecast(&self, customer: usize, horizon: usize) -> Quantiles {
        let n = self.count.get(customer).copied().unwrap_or(0);
        if n == 0 {
            return Quantiles::point(0.0);
        }
        let ring = &self.ring[customer];
        let h = horizon.max(1);
        // Target index n - 1 + h; its seasonal source is k periods earlier, within the last period.
        let back = h.div_ceil(self.period) * self.period;
        let v = match (n - 1 + h).checked_sub(back) {
            Some(src) => ring[src % self.period],
            None => ring[(n - 1) % self.period],
        };
        Quantiles::point(v)
    }
}

/// An Autopilot-style moving-window recommender: a decaying histogram of each customer's recent
/// usage, read off at percentiles.
///
/// After Rzadca et al., "Autopilot: workload autoscaling at Google", EuroSys 2020 (and the
/// Kubernetes Vertical Pod Autoscaler, which works the same way): every observation goes into a
/// histogram with a weight that halves every `half_life` windows into the past, so the histogram
/// describes roughly the last few half-lives of usage and forgets the rest. The forecast, the same
/// at every horizon, is its weighted mean (kept exactly, not from the buckets) and its 50th, 90th and
/// 99th weighted percentiles. Autopilot recommends a high percentile (or the peak) of this
/// histogram as the limit; in an evaluation the p90/p99 columns are that recommendation.
///
/// Choices:
/// - Decay is per observed window, not per second: with one observation per window (as in
///   [`evaluate`](fn@super::evaluate)) the two agree. The default half-life is
///   [`Autopilot::DEFAULT_HALF_LIFE`] = 72 ten-minute windows (12 h), of the order that Autopilot and
///   the VPA use for CPU; [`Autopilot::new`] takes any other.
/// - Buckets, as in the VPA: bucket 0 is `[0, 1)` token (an idle window, since the traces count
///   whole tokens); bucket `k >= 1` is `[1.05^(k-1), 1.05^k)` tokens, up to `1.05^614 ~ 1e13`
///   tokens per window (larger values go to the last bucket). A percentile is the upper bound of the
///   bucket where the cumulative weight reaches it (conservative by at most 5%, as the VPA does),
///   except that bucket 0 reads as 0.
/// - Instead of scaling every bucket down at each step, the newest observation gets weight
///   `2^(n / half_life)` (for the customer's `n`-th observation) and the whole histogram is rescaled
///   when that exponent passes 64, so an observation costs O(1) and a forecast O(buckets).
/// - The state is ~615 `f64` per customer: fine for the baselines' thousands of customers, not for
///   millions (that needs a sparse or coarser histogram).
#[derive(Clone, Debug)]
pub struct Autopilot {
    half_life: f64,
    hists: Vec<Hist>,
}

#[derive(Clone, Debug, Default)]
struct Hist {
    buckets: Vec<f64>,
    total: f64,
    weighted_sum: f64,
    /// Observations since the last rescale.
    steps: u64,
}

/// Growth factor between histogram buckets.
const RATIO: f64 = 1.05;
/// Bucket 0 plus geometric buckets up to ~1e13 tokens.
const NUM_BUCKETS: usize = 615;

fn bucket_of(v: f64) -> usize {
    if v < 1.0 {
        0
    } else {
        let k = 1 + (v.ln() / RATIO.ln()).floor() as usize;
        k.min(NUM_BUCKETS - 1)
    }
}

fn bucket_upper(k: usize) -> f64 {
    if k == 0 { 0.0 } else { RATIO.powi(k as i32) }
}

impl Autopilot {
    /// 72 windows: 12 hours of 10-minute windows.
    pub const DEFAULT_HALF_LIFE: f64 = 72.0;

    /// A new one whose weights halve every `half_life_windows` windows (finite and `> 0`, else
    /// [`Error::InvalidArgument`]).
    pub fn new(half_life_windows: f64) -> Result<Self> {
        if !(half_life_windows.is_finite() && half_life_windows > 0.0) {
            return Err(Error::invalid(format!(
                "Autopilot: half-life must be a finite number of windows > 0, got {half_life_windows}"
            )));
        }
        Ok(Autopilot {
            half_life: half_life_windows,
            hists: Vec::new(),
        })
    }

    /// The half-life, in windows.
    pub fn half_life(&self) -> f64 {
        self.half_life
    }
}

impl Default for Autopilot {
    fn default() -> Self {
        Autopilot {
            half_life: Self::DEFAULT_HALF_LIFE,
            hists: Vec::new(),
        }
    }
}

impl Forecaster for Autopilot {
    fn name(&self) -> String {
        format!("autopilot(hl={})", self.half_life)
    }

    fn reset(&mut self) {
        self.hists.clear();
    }

    fn forget(&mut self, customer: usize) {
        if let Some(h) = self.hists.get_mut(customer) {
            *h = Hist::default();
        }
    }

    fn observe(&mut self, customer: usize, value: f64) {
        grow(&mut self.hists, customer, Hist::default());
        let h = &mut self.hists[customer];
        if h.buckets.is_empty() {
            h.buckets.resize(NUM_BUCKETS, 0.0);
        }
        let x = clean(value);
        let mut exponent = h.steps as f64 / self.half_life;
        if exponent > 64.0 {
            let scale = (-exponent).exp2();
            h.buckets.iter_mut().for_each(|b| *b *= scale);
            h.total *= scale;
            h.weighted_sum *= scale;
            h.steps = 0;
            exponent = 0.0;
        }
        let w = exponent.exp2();
        h.buckets[bucket_of(x)] += w;
        h.total += w;
        h.weighted_sum += w * x;
        h.steps += 1;
    }

    fn forecast(&self, customer: usize, _horizon: usize) -> Quantiles {
        let Some(h) = self.hists.get(customer).filter(|h| h.total > 0.0) else {
            return Quantiles::point(0.0);
        };
        let pct = |tau: f64| {
            let target = tau * h.total;
            let mut cum = 0.0;
            for (k, b) in h.buckets.iter().enumerate() {
                cum += b;
                if cum >= target && *b > 0.0 {
                    return bucket_upper(k);
                }
            }
            // Rounding left the target just above the sum: the last non-empty bucket.
            let k = h.buckets.iter().rposition(|b| *b > 0.0).unwrap_or(0);
            bucket_upper(k)
        };
        Quantiles {
            mean: h.weighted_sum / h.total,
            p50: pct(0.5),
            p90: pct(0.9),
            p99: pct(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(f: &mut dyn Forecaster, c: usize, xs: &[f64]) {
        for &x in xs {
            f.observe(c, x);
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn last_value() {
        let mut f = LastValue::new();
        assert_eq!(f.forecast(0, 1), Quantiles::point(0.0));
        feed(&mut f, 0, &[1.0, 2.0, 3.0]);
        assert_eq!(f.forecast(0, 1), Quantiles::point(3.0));
        assert_eq!(f.forecast(0, 5), Quantiles::point(3.0));
        // Customers are independent; an unseen one (even beyond the state) forecasts 0.
        f.observe(2, 7.0);
        assert_eq!(f.forecast(1, 1), Quantiles::point(0.0));
        assert_eq!(f.forecast(2, 1), Quantiles::point(7.0));
        assert_eq!(f.forecast(99, 1), Quantiles::point(0.0));
        f.reset();
        assert_eq!(f.forecast(0, 1), Quantiles::point(0.0));
    }

    #[test]
    fn ewma_hand_checked() {
        let mut f = Ewma::new(0.5).unwrap();
        // level: 2 -> 0.5*4+0.5*2 = 3 -> 0.5*0+0.5*3 = 1.5
        // mad:   0 -> 0.5*|4-2| = 1  -> 0.5*|0-3| + 0.5*1 = 2
        feed(&mut f, 0, &[2.0, 4.0, 0.0]);
        let q = f.forecast(0, 1);
        assert!(close(q.mean, 1.5) && close(q.p50, 1.5));
        let s = SIGMA_PER_MAD * 2.0;
        assert!(close(q.p90, 1.5 + Z90 * s), "{q:?}");
        assert!(close(q.p99, 1.5 + Z99 * s), "{q:?}");
        // Horizon 4 doubles the spread; the level stays.
        let q4 = f.forecast(0, 4);
        assert!(close(q4.p50, 1.5) && close(q4.p90, 1.5 + Z90 * 2.0 * s));
        // Horizon 0 is horizon 1.
        assert_eq!(f.forecast(0, 0), q);
        // alpha = 1 follows the last value.
        let mut g = Ewma::new(1.0).unwrap();
        feed(&mut g, 0, &[1.0, 2.0, 3.0]);
        assert_eq!(g.forecast(0, 1).p50, 3.0);
        assert!(Ewma::new(0.0).is_err() && Ewma::new(1.5).is_err() && Ewma::new(f64::NAN).is_err());
    }

    #[test]
    fn seasonal_naive_hand_checked() {
        let mut f = SeasonalNaive::new(3).unwrap();
        assert_eq!(f.forecast(0, 1).p50, 0.0);
        feed(&mut f, 0, &[1.0, 2.0]);
        // Not a full period yet: last value.
        assert_eq!(f.forecast(0, 1).p50, 2.0);
        // Target index 2 at h=1 has source -1 (fallback), at h=2 target 3 has source 0.
        assert_eq!(f.forecast(0, 2).p50, 1.0);
        feed(&mut f, 0, &[3.0, 4.0]);
        // Observed [1,2,3,4] (indices 0..=3): h=1 -> target 4, source 1 -> 2.
        assert_eq!(f.forecast(0, 1).p50, 2.0);
        assert_eq!(f.forecast(0, 2).p50, 3.0);
        assert_eq!(f.forecast(0, 3).p50, 4.0);
        // h=4 -> target 7, two periods back -> index 1 -> 2.
        assert_eq!(f.forecast(0, 4).p50, 2.0);
        assert!(SeasonalNaive::new(0).is_err());
    }

    #[test]
    fn autopilot_hand_checked() {
        // Half-life 1: weights 1, 2, 4, 8 for the four observations (total 15).
        let mut f = Autopilot::new(1.0).unwrap();
        feed(&mut f, 0, &[100.0, 0.0, 0.0, 10.0]);
        let q = f.forecast(0, 1);
        assert!(close(q.mean, (100.0 + 80.0) / 15.0), "{q:?}");
        // Cumulative weight: idle (0) has 2 + 4 = 6 (< 7.5 = p50's target), 10's bucket brings it
        // to 14 (>= 13.5 = p90's target), 100's bucket to 15 (>= 14.85 = p99's).
        let b10 = bucket_upper(bucket_of(10.0));
        assert!((10.0..=10.5).contains(&b10), "{b10}");
        // `close`, not `==`: an optimized build may constant-fold `powi` in the test differently
        // from the run-time call in the forecaster (a last-bit difference).
        assert!(close(q.p50, b10) && close(q.p90, b10), "{q:?}");
        assert!(close(q.p99, bucket_upper(bucket_of(100.0))), "{q:?}");
        // All idle: every quantile is 0.
        let mut g = Autopilot::default();
        feed(&mut g, 3, &[0.0; 10]);
        assert_eq!(g.forecast(3, 1), Quantiles::point(0.0));
        assert!(Autopilot::new(0.0).is_err() && Autopilot::new(f64::INFINITY).is_err());
    }

    #[test]
    fn autopilot_rescale_keeps_the_distribution() {
        // Long runs trigger rescaling; old values must be forgotten, not overflow.
        let mut f = Autopilot::new(2.0).unwrap();
        feed(&mut f, 0, &[1e6; 500]);
        feed(&mut f, 0, &[50.0; 500]);
        let q = f.forecast(0, 1);
        assert!(q.mean.is_finite() && close(q.mean, 50.0), "{q:?}");
        assert!(close(q.p99, bucket_upper(bucket_of(50.0))), "{q:?}");
    }

    #[test]
    fn bucket_bounds() {
        for v in [1.0, 1.04, 1.06, 2.0, 1234.5, 9.9e12] {
            let k = bucket_of(v);
            assert!(k >= 1 && bucket_upper(k) > v, "{v}: {k}");
            assert!(
                bucket_upper(k - 1) <= v * (1.0 + 1e-12) || k == 1,
                "{v}: {k}"
            );
        }
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(1e20), NUM_BUCKETS - 1);
    }
}
