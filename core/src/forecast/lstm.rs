//! The LSTM as a streaming [`Forecaster`], so that [`evaluate`](fn@super::evaluate) scores it
//! like the baselines.

use super::baselines::{Forecaster, Quantiles, one_hot_scenario};
use super::history::UsageHistory;
use crate::error::{Error, Result};
use crate::model::features::{self, IntervalUsage, Scale};
use crate::model::spec::FORECAST_PER_HORIZON;
use crate::model::{LstmModel, SCENARIOS, decode, step_one};

/// An [`LstmModel`] fed one window at a time, exactly as the engine's tick feeds it: each
/// observed window is one [`step_one`] with the features of
/// [`features::input_row`] (built with the customer's scale before the window is folded in), and
/// forecasts decode the last head outputs with that scale and that step's usage feature.
///
/// The `n`-th value observed for a customer is taken to be window `n` of the history it was made
/// for ([`LstmForecaster::for_history`]): that fixes the calendar features and the request count
/// (from [`UsageHistory::requests`], else 0). Events and feeds are 0.
///
/// **Horizons.** `forecast(c, h)` decodes the model's head for `h` when `h` is one of the
/// spec's horizons; otherwise the nearest one (the larger on a tie). A customer never observed
/// forecasts 0.
///
/// **Scenarios.** [`Forecaster::scenario`] at horizon 1 gives the model's scenario
/// probabilities (about the next window, against the model's own scale, which is the evaluation's
/// reference scale when both use the same half-life); at other horizons, the one-hot of the p50
/// forecast, like the baselines.
#[derive(Clone, Debug)]
pub struct LstmForecaster {
    model: LstmModel,
    start_ns: u64,
    window_ns: u64,
    requests: Option<Vec<Vec<f64>>>,
    beta: f32,
    customers: Vec<Customer>,
}

#[derive(Clone, Debug, Default)]
struct Customer {
    state: Vec<f32>,
    scale: Scale,
    /// The scale the last step's features (and so its forecasts) used.
    decode_scale: f32,
    /// The last step's raw usage feature (feature 0), which the residual head decodes from.
    decode_usage: f32,
    y: Vec<f32>,
    seen: usize,
}

impl LstmForecaster {
    /// A forecaster for `history`'s customers and windows (see the type's docs).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the model is invalid or the history's times overflow
    /// nanoseconds.
    pub fn for_history(model: LstmModel, history: &UsageHistory) -> Result<Self> {
        model.validate()?;
        let ns = |s: u64| {
            s.checked_mul(1_000_000_000)
                .ok_or_else(|| Error::invalid("LstmForecaster: history times overflow ns"))
        };
        let requests = history.has_requests().then(|| {
            (0..history.num_customers())
                .map(|c| history.requests(c).unwrap_or_default().to_vec())
                .collect()
        });
        Ok(LstmForecaster {
            beta: model.scaling.scale_beta(),
            model,
            start_ns: ns(history.start_s())?,
            window_ns: ns(history.window_s())?,
            requests,
            customers: Vec::new(),
        })
    }

    /// The model.
    pub fn model(&self) -> &LstmModel {
        &self.model
    }

    fn horizon_index(&self, horizon: usize) -> usize {
        let hs = &self.model.spec.horizons;
        let h = i64::try_from(horizon.max(1)).unwrap_or(i64::MAX);
        let mut best = 0;
        for (j, &x) in hs.iter().enumerate() {
            let (d, db) = ((i64::from(x) - h).abs(), (i64::from(hs[best]) - h).abs());
            if d <= db {
                best = j;
            }
        }
        best
    }

    fn decoded(&self, customer: usize) -> Option<(Vec<f32>, [f32; 4])> {
        let c = self.customers.get(customer).filter(|c| c.seen > 0)?;
        let mut f = vec![0f32; self.model.spec.forecast_dim()];
        let mut sc = [0f32; SCENARIOS.len()];
        decode(&c.y, c.decode_scale, c.decode_usage, &mut f, &mut sc);
        Some((f, sc))
    }
}

impl Forecaster for LstmForecaster {
    fn name(&self) -> String {
        let s = &self.model.spec;
        format!("lstm(h={},l={})", s.hidden, s.layers)
    }

    fn reset(&mut self) {
        self.customers.clear();
    }

    fn observe(&mut self, customer: usize, value: f64) {
        if customer >= self.customers.len() {
            self.customers.resize(customer + 1, Customer::default());
        }
        let spec = &self.model.spec;
        let c = &mut self.customers[customer];
        if c.state.is_empty() {
            c.state = vec![0.0; spec.state_dim()];
            c.y = vec![0.0; spec.head_dim()];
        }
        let t = c.seen;
        let u = IntervalUsage {
            tokens: if value.is_finite() {
                value.max(0.0)
            } else {
                0.0
            },
            requests: self
                .requests
                .as_ref()
                .and_then(|r| r.get(customer)?.get(t).copied())
                .unwrap_or(0.0),
            ..IntervalUsage::default()
        };
        let now = self
            .start_ns
            .saturating_add((t as u64 + 1).saturating_mul(self.window_ns));
        let mut x = vec![0f32; spec.input_dim()];
        let feeds = vec![0f32; spec.feeds.len()];
        features::input_row(&u, &c.scale, now, &feeds, &mut x);
        c.decode_scale = c.scale.s();
        c.decode_usage = x[0];
        step_one(&self.model, &x, &mut c.state, &mut c.y);
        c.scale.update(&u, self.beta);
        c.seen += 1;
    }

    fn forecast(&self, customer: usize, horizon: usize) -> Quantiles {
        let Some((f, _)) = self.decoded(customer) else {
            return Quantiles::point(0.0);
        };
        let j = self.horizon_index(horizon) * FORECAST_PER_HORIZON;
        Quantiles {
            mean: f64::from(f[j]),
            p50: f64::from(f[j + 1]),
            p90: f64::from(f[j + 2]),
            p99: f64::from(f[j + 3]),
        }
    }

    fn scenario(&self, customer: usize, horizon: usize, scale: f64) -> [f64; 4] {
        match self.decoded(customer) {
            Some((_, sc)) if horizon <= 1 => sc.map(f64::from),
            _ => one_hot_scenario(self.forecast(customer, horizon).p50, scale),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelSpec;

    #[test]
    fn streams_like_step_one_and_picks_horizons() {
        let spec = ModelSpec {
            hidden: 4,
            layers: 1,
            horizons: vec![1, 3, 6],
            feeds: vec![],
        };
        let model = LstmModel::random(spec, 1).unwrap();
        let h = UsageHistory::new(vec![7], 0, 600, vec![vec![10.0, 20.0, 5.0]]).unwrap();
        let mut f = LstmForecaster::for_history(model.clone(), &h).unwrap();
        assert_eq!(f.forecast(0, 1), Quantiles::point(0.0));
        for &v in &[10.0, 20.0] {
            f.observe(0, v);
        }
        // By hand: the same two steps.
        let mut st = vec![0f32; model.spec.state_dim()];
        let mut y = vec![0f32; model.spec.head_dim()];
        let mut scale = Scale::default();
        let (mut s_used, mut z_used) = (0.0, 0.0);
        for (t, v) in [10.0, 20.0].into_iter().enumerate() {
            let u = IntervalUsage {
                tokens: v,
                ..Default::default()
            };
            let mut x = vec![0f32; model.spec.input_dim()];
            features::input_row(&u, &scale, (t as u64 + 1) * 600_000_000_000, &[], &mut x);
            s_used = scale.s();
            z_used = x[0];
            step_one(&model, &x, &mut st, &mut y);
            scale.update(&u, model.scaling.scale_beta());
        }
        let mut dec = vec![0f32; 12];
        let mut sc = [0f32; 4];
        decode(&y, s_used, z_used, &mut dec, &mut sc);
        let q = f.forecast(0, 3);
        assert_eq!(
            (q.mean, q.p50, q.p99),
            (dec[4].into(), dec[5].into(), dec[7].into())
        );
        // 2 is nearest to 1 and 3: the larger. 5 is nearest to 6; 100 to 6.
        assert_eq!(f.forecast(0, 2), q);
        assert_eq!(f.forecast(0, 5).p90, f64::from(dec[10]));
        assert_eq!(f.forecast(0, 100).p90, f64::from(dec[10]));
        // past i64::MAX too (it once wrapped to -1 and picked the smallest)
        assert_eq!(f.forecast(0, usize::MAX).p90, f64::from(dec[10]));
        assert_eq!(f.scenario(0, 1, 1.0), sc.map(f64::from));
        f.reset();
        assert_eq!(f.forecast(0, 1), Quantiles::point(0.0));
    }
}
