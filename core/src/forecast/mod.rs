//! Usage forecasting: per-customer usage histories, streaming baseline forecasters, and the
//! metrics that score them (groundwork for the predictive engine).
//!
//! - [`history`]: [`UsageHistory`], dense per-customer token series in fixed windows, loaded from
//!   the ServeGen traces (`UsageHistory::from_servegen_csv`) and split into train and test.
//! - [`baselines`]: the [`Forecaster`] trait (observe a window, forecast `h` windows ahead as a
//!   mean and p50/p90/p99) and four baselines: [`LastValue`], [`Ewma`], [`SeasonalNaive`] and the
//!   Autopilot-style decaying histogram [`Autopilot`].
//! - [`metrics`]: MAE, pinball loss, coverage, and the reservation trade-off (slack against
//!   exceed-rate).
//! - [`evaluate`](mod@evaluate): replaying a history through a forecaster into a [`Report`].

pub mod baselines;
pub mod evaluate;
pub mod history;
pub mod metrics;

pub use baselines::{
    Autopilot, Ewma, Forecaster, LastValue, QuantileLevel, Quantiles, SeasonalNaive,
    WINDOWS_PER_DAY_10MIN,
};
pub use evaluate::{HorizonReport, Report, evaluate, evaluate_with, format_reports};
pub use history::UsageHistory;
pub use metrics::{Metrics, MetricsAccumulator, pinball_loss};
