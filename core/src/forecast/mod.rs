//! Usage forecasting: per-customer usage histories, streaming baseline forecasters, and the
//! metrics that score them (groundwork for the predictive engine).
//!
//! - [`history`]: [`UsageHistory`], dense per-customer token series in fixed windows, loaded from
//!   the ServeGen traces (`UsageHistory::from_servegen_csv`) and split into train and test.
//! - [`baselines`]: the [`Forecaster`] trait (observe a window, forecast `h` windows ahead as a
//!   mean and p50/p90/p99, and scenario probabilities) and four baselines: [`LastValue`], [`Ewma`], [`SeasonalNaive`] and the
//!   Autopilot-style decaying histogram [`Autopilot`].
//! - [`metrics`]: MAE, pinball loss, coverage, and the reservation trade-off (slack against
//!   exceed-rate).
//! - [`lstm`]: [`LstmForecaster`], the streaming LSTM behind the same trait.
//! - [`evaluate`](mod@evaluate): replaying a history through a forecaster into a [`Report`].

pub mod baselines;
pub mod evaluate;
pub mod history;
pub mod lstm;
pub mod metrics;

pub use baselines::{
    Autopilot, Ewma, Forecaster, LastValue, QuantileLevel, Quantiles, SeasonalNaive,
    WINDOWS_PER_DAY_10MIN, one_hot_scenario,
};
pub use evaluate::{
    HorizonReport, Report, SCENARIO_SCALE_HALF_LIFE, evaluate, evaluate_with, evaluate_with_scale,
    format_reports,
};
pub use history::UsageHistory;
pub use lstm::LstmForecaster;
pub use metrics::{Metrics, MetricsAccumulator, pinball_loss};
