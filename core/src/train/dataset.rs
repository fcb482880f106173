//! Training data: per-customer sequences of raw input rows, scales and usage, built exactly as
//! the engine's tick builds them ([`features::input_row`]).

use crate::error::{Error, Result};
use crate::forecast::UsageHistory;
use crate::model::ModelSpec;
use crate::model::features::{self, IntervalUsage, Scale};
use crate::model::spec::scenario_of;
use crate::model::weights::FeatureScaling;

/// One customer's sequence.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sequence {
    /// `windows x input_dim` raw features: row `t` is what the tick closing interval `t` feeds
    /// the model.
    pub x: Vec<f32>,
    /// `s_t`: the token scale before interval `t` is folded in (the features' scale, and the one
    /// targets and decoding use).
    pub scale: Vec<f32>,
    /// Tokens used in interval `t`.
    pub usage: Vec<f64>,
}

/// Training sequences for a model: for every customer and closed interval `t`, the raw features
/// the engine's tick would feed the model, the customer's scale `s_t` and the usage.
///
/// Targets are derived, for horizon `h` of the spec and a step `t` with `t + h` inside the data:
/// `z = ln(1 + u_{t+h} / s_t)` (the quantile heads), `u_{t+h} / s_t` (the mean head) and
/// `scenario_of(u_{t+1}, s_t)` (the scenario logits). `s_t` is the scale *before* interval `t` is
/// folded in: the same scale the features of interval `t` are built with.
///
/// Events and external feeds are 0 (neither a trace nor the interval counters carry them).
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub(crate) input_dim: usize,
    pub(crate) scale_half_life: f32,
    pub(crate) windows: usize,
    pub(crate) seqs: Vec<Sequence>,
}

impl Dataset {
    /// From a usage history (a CSV trace): tokens per window as the history holds them, requests
    /// from [`UsageHistory::requests`] when present (else 0); fallbacks, denials and deviation 0.
    /// Window `t` is closed by a tick at `start_s + (t + 1) * window_s` seconds (the clock of the
    /// calendar features).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid spec or half-life (see
    /// [`Dataset::from_intervals`]).
    pub fn from_history(
        history: &UsageHistory,
        spec: &ModelSpec,
        scale_half_life: f32,
    ) -> Result<Self> {
        let series = (0..history.num_customers())
            .map(|c| {
                let tokens = history.series(c).unwrap_or_default();
                let reqs = history.requests(c);
                tokens
                    .iter()
                    .enumerate()
                    .map(|(t, &tok)| IntervalUsage {
                        tokens: tok,
                        requests: reqs.map_or(0.0, |r| r[t]),
                        ..IntervalUsage::default()
                    })
                    .collect()
            })
            .collect();
        let ns = |s: u64| {
            s.checked_mul(1_000_000_000)
                .ok_or_else(|| Error::invalid("dataset: history times overflow nanoseconds"))
        };
        Self::from_intervals(
            series,
            ns(history.start_s())?,
            ns(history.window_s())?,
            spec,
            scale_half_life,
        )
    }

    /// From the engine's own closed intervals: `series[c][t]` is customer `c`'s interval `t`,
    /// which starts at `start_ns + t * interval_ns` and is closed by the tick at
    /// `start_ns + (t + 1) * interval_ns` (the calendar features' time). Scales start at zero
    /// ("nothing seen") and are updated as the engine does: features of interval `t` with the
    /// scale before `t` is folded in, then the fold with weight
    /// [`FeatureScaling::scale_beta`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`]: an invalid spec, a half-life below 1, no customers, series of
    /// different or zero lengths, a zero interval, times past `u64::MAX`, or a non-finite count.
    pub fn from_intervals(
        series: Vec<Vec<IntervalUsage>>,
        start_ns: u64,
        interval_ns: u64,
        spec: &ModelSpec,
        scale_half_life: f32,
    ) -> Result<Self> {
        spec.validate()?;
        if !(scale_half_life.is_finite() && scale_half_life >= 1.0) {
            return Err(Error::invalid(format!(
                "dataset: scale half-life must be at least 1 interval, got {scale_half_life}"
            )));
        }
        if interval_ns == 0 {
            return Err(Error::invalid("dataset: interval must be > 0 ns"));
        }
        let windows = series.first().map_or(0, Vec::len);
        if windows == 0 {
            return Err(Error::invalid("dataset: no customers or no intervals"));
        }
        if let Some((c, s)) = series.iter().enumerate().find(|(_, s)| s.len() != windows) {
            return Err(Error::invalid(format!(
                "dataset: customer {c} has {} intervals, customer 0 has {windows}",
                s.len()
            )));
        }
        let end = u128::from(start_ns) + (windows as u128 + 1) * u128::from(interval_ns);
        if end > u128::from(u64::MAX) {
            return Err(Error::invalid(
                "dataset: interval times run past u64::MAX ns",
            ));
        }
        let beta = FeatureScaling {
            scale_half_life,
            ..FeatureScaling::identity(0)
        }
        .scale_beta();
        let n = spec.input_dim();
        let feeds = vec![0f32; spec.feeds.len()];
        let mut seqs = Vec::with_capacity(series.len());
        for (c, s) in series.iter().enumerate() {
            let mut seq = Sequence {
                x: vec![0f32; windows * n],
                scale: Vec::with_capacity(windows),
                usage: Vec::with_capacity(windows),
            };
            let mut scale = Scale::default();
            for (t, u) in s.iter().enumerate() {
                if [u.tokens, u.requests, u.fallbacks, u.denied, u.deviation]
                    .iter()
                    .any(|v| !v.is_finite())
                {
                    return Err(Error::invalid(format!(
                        "dataset: customer {c}, interval {t}: a non-finite count"
                    )));
                }
                let now = start_ns + (t as u64 + 1) * interval_ns;
                features::input_row(u, &scale, now, &feeds, &mut seq.x[t * n..(t + 1) * n]);
                seq.scale.push(scale.s());
                seq.usage.push(u.tokens.max(0.0));
                scale.update(u, beta);
            }
            seqs.push(seq);
        }
        Ok(Dataset {
            input_dim: n,
            scale_half_life,
            windows,
            seqs,
        })
    }

    /// Customers.
    pub fn num_customers(&self) -> usize {
        self.seqs.len()
    }

    /// Intervals per customer.
    pub fn num_windows(&self) -> usize {
        self.windows
    }

    /// Input features per row.
    pub fn input_dim(&self) -> usize {
        self.input_dim
    }

    /// The half-life the scales were computed with.
    pub fn scale_half_life(&self) -> f32 {
        self.scale_half_life
    }

    /// Feature mean and standard deviation over intervals `0..windows` of every customer (a
    /// constant feature gets std 1), with this dataset's half-life.
    pub(crate) fn feature_scaling(&self, windows: usize) -> FeatureScaling {
        let n = self.input_dim;
        let mut sum = vec![0f64; n];
        let mut sq = vec![0f64; n];
        let mut count = 0f64;
        for s in &self.seqs {
            for row in s.x[..windows * n].chunks_exact(n) {
                for (k, &v) in row.iter().enumerate() {
                    sum[k] += f64::from(v);
                    sq[k] += f64::from(v) * f64::from(v);
                }
                count += 1.0;
            }
        }
        let count = count.max(1.0);
        let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let var = (q / count - m * m).max(0.0);
                if var.sqrt() < 1e-6 {
                    1.0
                } else {
                    var.sqrt() as f32
                }
            })
            .collect();
        FeatureScaling {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
            scale_half_life: self.scale_half_life,
        }
    }
}

/// The targets of step `t` of a sequence (see [`Dataset`]), for targets inside `0..limit`.
pub(crate) struct Targets<'a> {
    seq: &'a Sequence,
    limit: usize,
}

impl<'a> Targets<'a> {
    pub(crate) fn new(seq: &'a Sequence, limit: usize) -> Self {
        Targets { seq, limit }
    }

    /// `(z, u/s)` for horizon `h` from step `t`, or `None` past the limit.
    pub(crate) fn horizon(&self, t: usize, h: u32) -> Option<(f64, f64)> {
        let k = t + h as usize;
        if k >= self.limit {
            return None;
        }
        let s = f64::from(self.seq.scale[t]);
        let u = self.seq.usage[k];
        Some((f64::from(features::target_z(u, self.seq.scale[t])), u / s))
    }

    /// The scenario of the next interval from step `t`, or `None` past the limit.
    pub(crate) fn scenario(&self, t: usize) -> Option<usize> {
        let k = t + 1;
        (k < self.limit).then(|| scenario_of(self.seq.usage[k] as f32, self.seq.scale[t]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_lag_the_interval_and_targets_use_them() {
        let h = UsageHistory::new(vec![1], 0, 600, vec![vec![0.0, 100.0, 300.0, 50.0]])
            .unwrap()
            .with_requests(vec![vec![0.0, 2.0, 4.0, 1.0]])
            .unwrap();
        let spec = ModelSpec {
            hidden: 2,
            layers: 1,
            horizons: vec![1, 2],
            feeds: vec![],
        };
        let d = Dataset::from_history(&h, &spec, 1.0).unwrap();
        let s = &d.seqs[0];
        // beta = 0.5: scale before each interval: 0 (read as 1), 0 -> seeded 100, then 200.
        assert_eq!(s.scale, vec![1.0, 1.0, 100.0, 200.0]);
        let n = d.input_dim();
        assert!((s.x[n] - 101f32.ln()).abs() < 1e-5); // usage of interval 1 against scale 1
        assert!((s.x[2 * n] - 4f32.ln()).abs() < 1e-5); // 300 against 100
        assert!((s.x[2 * n + 1] - 3f32.ln()).abs() < 1e-5); // 4 requests against 2
        let tg = Targets::new(s, 4);
        let (z, r) = tg.horizon(2, 1).unwrap();
        assert!((z - 1.5f64.ln()).abs() < 1e-6 && (r - 0.5).abs() < 1e-12);
        assert!(tg.horizon(2, 2).is_none());
        assert_eq!(tg.scenario(1), Some(3)); // 300 / 1
        assert_eq!(tg.scenario(2), Some(1)); // 50 / 100
        assert_eq!(tg.scenario(3), None);
        // The feature scaling is over the first windows only; constant features get std 1.
        let fs = d.feature_scaling(2);
        assert!((fs.mean[0] - 101f32.ln() / 2.0).abs() < 1e-5);
        assert_eq!(fs.std[2], 1.0);
    }

    #[test]
    fn bad_inputs() {
        let spec = ModelSpec::default();
        let u = IntervalUsage::default();
        assert!(Dataset::from_intervals(vec![], 0, 1, &spec, 10.0).is_err());
        assert!(Dataset::from_intervals(vec![vec![u]], 0, 0, &spec, 10.0).is_err());
        assert!(Dataset::from_intervals(vec![vec![u]], 0, 1, &spec, 0.5).is_err());
        assert!(Dataset::from_intervals(vec![vec![u], vec![]], 0, 1, &spec, 10.0).is_err());
        assert!(Dataset::from_intervals(vec![vec![u]], u64::MAX, 1, &spec, 10.0).is_err());
        let nan = IntervalUsage {
            tokens: f64::NAN,
            ..u
        };
        assert!(Dataset::from_intervals(vec![vec![nan]], 0, 1, &spec, 10.0).is_err());
        assert!(Dataset::from_intervals(vec![vec![u; 3]], 0, 1, &spec, 10.0).is_ok());
    }
}
