//! Building a model's inputs: one definition for the engine's tick, the trainer and the
//! evaluation, so that a model sees the same features in training and in service.

use super::spec::CUSTOMER_FEATURES;

/// Nanoseconds per day.
pub const DAY_NS: u64 = 86_400_000_000_000;

/// What one customer did in one closed interval, in the units the features use.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct IntervalUsage {
    /// Tokens used: granted (either path) plus settlement debt minus refunds, floored at 0.
    pub tokens: f64,
    /// Requests decided.
    pub requests: f64,
    /// Pool grants (fallbacks).
    pub fallbacks: f64,
    /// Denials, either reason.
    pub denied: f64,
    /// Settlement debt minus refunds, tokens (the overestimation signal).
    pub deviation: f64,
}

impl IntervalUsage {
    /// The usage an engine interval's counters record (the tick's input, and the engine's own
    /// history for training).
    pub fn from_closed(c: &crate::layout::Closed) -> Self {
        let granted = (c.granted_shadow + c.granted_pool) as f64;
        let deviation = c.debt as f64 - c.refunded as f64;
        IntervalUsage {
            tokens: (granted + deviation).max(0.0),
            requests: c.requests as f64,
            fallbacks: c.fallbacks as f64,
            denied: (c.denied_customer + c.denied_pool) as f64,
            deviation,
        }
    }
}

/// A customer's scales (the store's scale column: `[s, s_req]`).
///
/// `s` is an exponential mean of the customer's tokens per interval and `s_req` of its requests,
/// each floored at 1. A zero scale means "nothing seen yet": the first interval with use seeds it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Scale {
    /// Tokens per interval.
    pub tokens: f32,
    /// Requests per interval.
    pub requests: f32,
}

impl Scale {
    /// The token scale used for features and decoding (at least 1).
    pub fn s(&self) -> f32 {
        self.tokens.max(1.0)
    }

    /// The request scale (at least 1).
    pub fn s_req(&self) -> f32 {
        self.requests.max(1.0)
    }

    /// Folds in one interval with weight `beta` (see
    /// [`FeatureScaling::scale_beta`](super::FeatureScaling::scale_beta)).
    pub fn update(&mut self, u: &IntervalUsage, beta: f32) {
        fn ewma(s: &mut f32, v: f32, beta: f32) {
            if *s == 0.0 {
                *s = v;
            } else {
                *s += beta * (v - *s);
            }
        }
        ewma(&mut self.tokens, u.tokens.max(0.0) as f32, beta);
        ewma(&mut self.requests, u.requests.max(0.0) as f32, beta);
    }
}

/// The per-customer features of one interval (the first [`CUSTOMER_FEATURES`] inputs), built with
/// the scale as it was *before* this interval is folded in. `event` is the customer's summed
/// active event intensity.
pub fn customer_features(u: &IntervalUsage, scale: &Scale, event: f32) -> [f32; CUSTOMER_FEATURES] {
    let s = scale.s();
    let reqs = u.requests.max(0.0);
    let share = |v: f64| {
        if reqs > 0.0 {
            (v / reqs).clamp(0.0, 1.0) as f32
        } else {
            0.0
        }
    };
    [
        (u.tokens.max(0.0) as f32 / s).ln_1p(),
        (reqs as f32 / scale.s_req()).ln_1p(),
        share(u.fallbacks),
        share(u.denied),
        (u.deviation as f32 / s).clamp(-4.0, 4.0),
        event,
        s.ln_1p() / 16.0,
    ]
}

/// The global features at time `now_ns` (the tick that closes the interval): time of day and day
/// of week (cyclic), the summed global event intensity, then the feeds' values in the model's
/// order. Written into `out`, which must hold `5 + feeds.len()` values.
pub fn global_features(now_ns: u64, event_global: f32, feeds: &[f32], out: &mut [f32]) {
    use std::f64::consts::TAU;
    assert_eq!(out.len(), 5 + feeds.len());
    let day = (now_ns % DAY_NS) as f64 / DAY_NS as f64;
    let week = ((now_ns / DAY_NS) % 7) as f64 / 7.0 + day / 7.0;
    out[0] = (TAU * day).sin() as f32;
    out[1] = (TAU * day).cos() as f32;
    out[2] = (TAU * week).sin() as f32;
    out[3] = (TAU * week).cos() as f32;
    out[4] = event_global;
    out[5..].copy_from_slice(feeds);
}

/// The full raw input row (per-customer then global features) of one customer's closed interval
/// `u`, as the engine's tick builds it: `scale` is the customer's scale *before* `u` is folded in,
/// `now_ns` the tick that closes the interval, `feeds` the external feeds' values. Events are taken
/// as 0 (histories carry none). `out` must hold `CUSTOMER_FEATURES + 5 + feeds.len()` values
/// (the model's [`input_dim`](super::ModelSpec::input_dim)).
///
/// # Panics
/// If `out` has the wrong length (a bug in the caller).
pub fn input_row(u: &IntervalUsage, scale: &Scale, now_ns: u64, feeds: &[f32], out: &mut [f32]) {
    let (cust, glob) = out.split_at_mut(CUSTOMER_FEATURES);
    cust.copy_from_slice(&customer_features(u, scale, 0.0));
    global_features(now_ns, 0.0, feeds, glob);
}

/// The training target of horizon use `u` for a customer of scale `s`: `ln(1 + u/s)`.
pub fn target_z(u: f64, s: f32) -> f32 {
    (u.max(0.0) as f32 / s.max(1.0)).ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_seeds_then_averages() {
        let mut s = Scale::default();
        assert_eq!(s.s(), 1.0);
        let u = |t| IntervalUsage {
            tokens: t,
            requests: 2.0,
            ..Default::default()
        };
        s.update(&u(0.0), 0.5);
        assert_eq!(s.tokens, 0.0);
        s.update(&u(100.0), 0.5);
        assert_eq!(s.tokens, 100.0);
        s.update(&u(0.0), 0.5);
        assert_eq!(s.tokens, 50.0);
        let f = customer_features(&u(50.0), &s, 0.0);
        assert!((f[0] - 2f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn calendar_is_cyclic() {
        let mut a = [0f32; 5];
        let mut b = [0f32; 5];
        global_features(3 * 3_600_000_000_000, 0.0, &[], &mut a);
        global_features(3 * 3_600_000_000_000 + 7 * DAY_NS, 0.0, &[], &mut b);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5);
        }
        assert!((a[0] - (std::f32::consts::TAU / 8.0).sin()).abs() < 1e-5);
    }
}
