//! The shape of a model: sizes, horizons, features and outputs.

use crate::error::{Error, Result};

/// The features every model sees, in input order; a model's external feeds follow them
/// ([`ModelSpec::feature_names`]).
///
/// Built per customer at each tick from the interval just closed (`u` = tokens used: granted plus
/// settlement debt minus refunds; `s` = the customer's scale, see [`ModelSpec`]):
///
/// | feature | value |
/// |---|---|
/// | `usage` | `ln(1 + u / s)` |
/// | `requests` | `ln(1 + requests / s_req)` (the request-count scale) |
/// | `fallback_share` | pool grants over requests (0 without requests) |
/// | `denied_share` | denials (either reason) over requests |
/// | `deviation` | `(debt - refunded) / s`, clipped to `[-4, 4]` |
/// | `event_customer` | summed intensity of the customer's own events active at the tick |
/// | `scale` | `ln(1 + s) / 16`: the customer's absolute size |
/// | `tod_sin`, `tod_cos` | time of day of the tick, cyclic |
/// | `dow_sin`, `dow_cos` | day of week of the tick, cyclic (day 0 = the clock's epoch day) |
/// | `event_global` | summed intensity of global events active at the tick |
///
/// The first [`CUSTOMER_FEATURES`] differ per customer; the rest (and the feeds) are the same for
/// every customer at a tick ("global"), which lets the batched step fold them into the bias once
/// per tick and a GPU upload only the per-customer part.
///
/// A trace without engine counters (a CSV) leaves `fallback_share`, `denied_share` and
/// `deviation` at 0.
pub const BASE_FEATURES: [&str; 12] = [
    "usage",
    "requests",
    "fallback_share",
    "denied_share",
    "deviation",
    "event_customer",
    "scale",
    "tod_sin",
    "tod_cos",
    "dow_sin",
    "dow_cos",
    "event_global",
];

/// How many of [`BASE_FEATURES`] (the first ones) differ per customer.
pub const CUSTOMER_FEATURES: usize = 7;

/// Index of each base feature in the input vector.
pub mod feat {
    /// `ln(1 + u/s)`.
    pub const USAGE: usize = 0;
    /// `ln(1 + requests/s_req)`.
    pub const REQUESTS: usize = 1;
    /// Fallbacks over requests.
    pub const FALLBACK_SHARE: usize = 2;
    /// Denials over requests.
    pub const DENIED_SHARE: usize = 3;
    /// Settlement deviation over scale.
    pub const DEVIATION: usize = 4;
    /// The customer's active events.
    pub const EVENT_CUSTOMER: usize = 5;
    /// `ln(1+s)/16`.
    pub const SCALE: usize = 6;
    /// Time of day, sine.
    pub const TOD_SIN: usize = 7;
    /// Time of day, cosine.
    pub const TOD_COS: usize = 8;
    /// Day of week, sine.
    pub const DOW_SIN: usize = 9;
    /// Day of week, cosine.
    pub const DOW_COS: usize = 10;
    /// Global active events.
    pub const EVENT_GLOBAL: usize = 11;
}

/// The scenarios, in output order.
pub const SCENARIOS: [&str; 4] = ["low", "medium", "high", "spike"];

/// Scenario thresholds on `r = u_next / s`, the next interval's use over the customer's baseline
/// scale: low `r < 0.5`, medium `0.5 <= r < 1.5`, high `1.5 <= r < 3`, spike `r >= 3`.
pub const SCENARIO_EDGES: [f32; 3] = [0.5, 1.5, 3.0];

/// The scenario (index into [`SCENARIOS`]) of a usage `u` against scale `s`.
pub fn scenario_of(u: f32, s: f32) -> usize {
    let r = u / s.max(f32::MIN_POSITIVE);
    SCENARIO_EDGES.iter().take_while(|&&e| r >= e).count()
}

/// Head outputs per horizon: mean, p50 and the two quantile increments.
pub const HEAD_PER_HORIZON: usize = 4;

/// Decoded forecast floats per horizon in the store's forecast column: mean, p50, p90, p99.
pub const FORECAST_PER_HORIZON: usize = 4;

/// The shape of a model.
///
/// **Scaling.** Usage spans six orders of magnitude across customers, so every customer carries
/// a scale `s` (and a request-count scale `s_req`): an exponentially weighted mean of its usage
/// per interval with a half-life of [`FeatureScaling::scale_half_life`](super::FeatureScaling)
/// intervals, floored at 1, seeded by the first interval with use. Inputs and targets are in units
/// of `s`, outputs are decoded back with it. The scales live in the store's scale column, next to
/// the recurrent state, so they survive restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    /// LSTM hidden size (default 32).
    pub hidden: usize,
    /// Stacked LSTM layers (default 1).
    pub layers: usize,
    /// Forecast horizons in intervals, strictly increasing: horizon `h` is the use in the `h`-th
    /// interval after the tick (default `[1, 5, 10, 15]`: 1, 5, 10 and 15 minutes at the default
    /// 60 s interval). The reservation policy reads the first.
    pub horizons: Vec<u32>,
    /// Names of the external feeds (global scalar signals) the model reads, after the base
    /// features (default none).
    pub feeds: Vec<String>,
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            hidden: 32,
            layers: 1,
            horizons: vec![1, 5, 10, 15],
            feeds: Vec::new(),
        }
    }
}

impl ModelSpec {
    /// Most hidden units.
    pub const MAX_HIDDEN: usize = 1024;
    /// Most layers.
    pub const MAX_LAYERS: usize = 8;
    /// Most horizons.
    pub const MAX_HORIZONS: usize = 16;
    /// Most external feeds.
    pub const MAX_FEEDS: usize = 32;

    /// Input features: the base features and the feeds.
    pub fn input_dim(&self) -> usize {
        BASE_FEATURES.len() + self.feeds.len()
    }

    /// Input width of layer `l` (the features for layer 0, the hidden size above).
    pub fn layer_input_dim(&self, l: usize) -> usize {
        if l == 0 {
            self.input_dim()
        } else {
            self.hidden
        }
    }

    /// Gate pre-activations per layer: `4 * hidden`.
    pub fn gates(&self) -> usize {
        4 * self.hidden
    }

    /// Floats of recurrent state per customer: `h` and `c` for every layer, laid out
    /// `[h_0, c_0, h_1, c_1, ...]`.
    pub fn state_dim(&self) -> usize {
        2 * self.hidden * self.layers
    }

    /// Head outputs per customer: [`HEAD_PER_HORIZON`] per horizon, then the scenario logits.
    pub fn head_dim(&self) -> usize {
        HEAD_PER_HORIZON * self.horizons.len() + SCENARIOS.len()
    }

    /// Decoded forecast floats per customer: [`FORECAST_PER_HORIZON`] per horizon.
    pub fn forecast_dim(&self) -> usize {
        FORECAST_PER_HORIZON * self.horizons.len()
    }

    /// Features that are the same for every customer at a tick: the global base features and the
    /// feeds.
    pub fn global_dim(&self) -> usize {
        self.input_dim() - CUSTOMER_FEATURES
    }

    /// Every input feature's name, in order.
    pub fn feature_names(&self) -> Vec<String> {
        BASE_FEATURES
            .iter()
            .map(|s| s.to_string())
            .chain(self.feeds.iter().map(|f| format!("feed:{f}")))
            .collect()
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the field out of range.
    pub fn validate(&self) -> Result<()> {
        if self.hidden == 0 || self.hidden > Self::MAX_HIDDEN {
            return Err(Error::invalid(format!(
                "model hidden size must be 1..={}, got {}",
                Self::MAX_HIDDEN,
                self.hidden
            )));
        }
        if self.layers == 0 || self.layers > Self::MAX_LAYERS {
            return Err(Error::invalid(format!(
                "model layers must be 1..={}, got {}",
                Self::MAX_LAYERS,
                self.layers
            )));
        }
        if self.horizons.is_empty() || self.horizons.len() > Self::MAX_HORIZONS {
            return Err(Error::invalid(format!(
                "model needs 1..={} horizons, got {}",
                Self::MAX_HORIZONS,
                self.horizons.len()
            )));
        }
        if self.horizons[0] == 0 || self.horizons.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::invalid(format!(
                "model horizons must be positive and strictly increasing, got {:?}",
                self.horizons
            )));
        }
        if self.feeds.len() > Self::MAX_FEEDS {
            return Err(Error::invalid(format!(
                "model reads at most {} feeds, got {}",
                Self::MAX_FEEDS,
                self.feeds.len()
            )));
        }
        for (i, f) in self.feeds.iter().enumerate() {
            if f.is_empty() || f.contains(',') || self.feeds[..i].contains(f) {
                return Err(Error::invalid(format!(
                    "feed names must be non-empty, without commas, and distinct; got {f:?}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_thresholds() {
        assert_eq!(scenario_of(0.0, 10.0), 0);
        assert_eq!(scenario_of(4.9, 10.0), 0);
        assert_eq!(scenario_of(5.0, 10.0), 1);
        assert_eq!(scenario_of(15.0, 10.0), 2);
        assert_eq!(scenario_of(29.9, 10.0), 2);
        assert_eq!(scenario_of(30.0, 10.0), 3);
    }

    #[test]
    fn dims_and_validation() {
        let s = ModelSpec::default();
        s.validate().unwrap();
        assert_eq!(s.input_dim(), 12);
        assert_eq!(s.state_dim(), 64);
        assert_eq!(s.head_dim(), 20);
        assert_eq!(s.forecast_dim(), 16);
        let bad = ModelSpec {
            horizons: vec![5, 5],
            ..ModelSpec::default()
        };
        assert!(bad.validate().is_err());
        let bad = ModelSpec {
            feeds: vec!["a".into(), "a".into()],
            ..ModelSpec::default()
        };
        assert!(bad.validate().is_err());
        assert!(
            ModelSpec {
                hidden: 0,
                ..ModelSpec::default()
            }
            .validate()
            .is_err()
        );
    }
}
