//! The predictive tick: from each customer's closed interval to its next reservation.
//!
//! At every [`Engine::tick`](crate::Engine::tick) the engine
//! 1. reads each customer's usage in the interval that is closing (tokens granted by path, debt
//!    minus refunds, requests, fallbacks, denials),
//! 2. builds the model's features ([`crate::model::features`]): usage and requests in units of
//!    the customer's scale, the deviation signals, the customer's and global [`Event`]s active
//!    now, the calendar, and the external feeds set with
//!    [`Engine::set_signal`](crate::Engine::set_signal); then folds the interval into the
//!    customer's scale,
//! 3. runs one step of the [`Predictor`] for every customer (the LSTM advances each customer's
//!    recurrent state in the store by one step; a baseline observes the interval) and writes the
//!    forecast and scenario probabilities into the store's columns,
//! 4. turns each forecast into a reservation with the [`ReservationPolicy`], and
//! 5. closes the interval and sets the reservations in one transaction (cut back to the
//!    reservable budget by weight, then proportionally; `docs/engine.md`).
//!
//! The recurrent state, scales and forecasts are in the store. Events and signals are kept
//! beside it, in `<store>.events` (rewritten atomically on every change, read when the store is
//! opened), so they survive restarts too. The predictor (a model file, or a baseline) and the
//! policy are the caller's configuration: set them again after opening a store (a baseline's
//! own history is in memory and starts afresh).

mod events;
pub(crate) mod sidecar;
pub(crate) mod tick;

pub use events::{Event, EventBook};
pub use tick::TickTimings;

use crate::forecast::{QuantileLevel, Quantiles};
use crate::model::LstmModel;

/// Which forecaster fills the shadow buckets at each tick.
#[derive(Clone, Debug)]
pub enum Predictor {
    /// The streaming LSTM (its recurrent state lives in the store).
    Lstm(Box<LstmModel>),
    /// The last interval's use, as a point forecast.
    LastValue,
    /// An exponentially weighted mean with a spread estimate ([`crate::forecast::Ewma`]).
    Ewma {
        /// Weight of the newest interval, in `(0, 1]`.
        alpha: f64,
    },
    /// The use one period earlier ([`crate::forecast::SeasonalNaive`]).
    SeasonalNaive {
        /// Period in intervals (1,440 is a day of one-minute intervals).
        period: usize,
    },
    /// An Autopilot-style decaying histogram ([`crate::forecast::Autopilot`]).
    Autopilot {
        /// Half-life in intervals.
        half_life: f64,
    },
}

impl Default for Predictor {
    /// `Ewma { alpha: 0.5 }`: the engine's predictor until one is set.
    fn default() -> Self {
        Predictor::Ewma { alpha: 0.5 }
    }
}

/// What part of the forecast becomes the reservation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// The expected use.
    Mean,
    /// A quantile of the use.
    Quantile(QuantileLevel),
    /// Enough to cover the scenarios up to the first one at which the cumulative probability
    /// (low, then medium, high, spike) reaches `probability`: the scenario's upper edge times the
    /// customer's scale (low 0.5, medium 1.5, high 3 scales; spike: the p99 forecast).
    Scenario {
        /// In `(0, 1]`.
        probability: f64,
    },
}

/// How a forecast becomes a reservation.
///
/// For each customer, `q` = the [`Target`] of the forecast at horizon index `horizon` (tokens per
/// interval), then the reserved rate is `rho = q * headroom / interval` and the shadow capacity
/// `sigma = rho * interval * capacity_intervals` (rounded up), each capped at the customer's
/// contract (`rate` and `burst`: a reservation beyond the contract could never be used).
///
/// The default, `Quantile(P90)` of the next interval with headroom 1 and one interval of
/// capacity, reserves what the customer uses in nine intervals out of ten: the fallback path
/// absorbs the tenth, and the immediate bump (`docs/engine.md`) raises the reservation then.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReservationPolicy {
    /// Index into the predictor's horizons (0: the next interval).
    pub horizon: usize,
    /// What of the forecast to reserve.
    pub target: Target,
    /// Multiplier on the target (at least 0).
    pub headroom: f64,
    /// Shadow capacity, in intervals of the reserved rate (at least 0).
    pub capacity_intervals: f64,
}

impl Default for ReservationPolicy {
    fn default() -> Self {
        ReservationPolicy {
            horizon: 0,
            target: Target::Quantile(QuantileLevel::P90),
            headroom: 1.0,
            capacity_intervals: 1.0,
        }
    }
}

/// A customer's forecast, as the last tick left it.
#[derive(Clone, Debug, PartialEq)]
pub struct Forecast {
    /// The horizons, in intervals after the last tick.
    pub horizons: Vec<u32>,
    /// Per horizon: mean, p50, p90, p99 of the use in that interval, tokens.
    pub values: Vec<Quantiles>,
    /// Probabilities of the low, medium, high and spike scenarios for the next interval.
    pub scenario: [f32; 4],
    /// The customer's token scale (its recent use per interval) against which scenarios are
    /// defined.
    pub scale: f32,
}
