//! Replaying a usage history through a forecaster and scoring it.

use std::fmt;

use super::baselines::{Forecaster, QuantileLevel};
use super::history::UsageHistory;
use super::metrics::{Metrics, MetricsAccumulator};
use crate::error::{Error, Result};
use crate::model::features::{IntervalUsage, Scale};
use crate::model::spec::scenario_of;

/// The half-life, in windows, of the reference scale that defines the scenarios in
/// [`evaluate`] and [`evaluate_with`]: 144 (a day of 10-minute windows).
pub const SCENARIO_SCALE_HALF_LIFE: f64 = 144.0;

/// The scores of one forecaster on one history, one row per horizon.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// [`Forecaster::name`].
    pub forecaster: String,
    /// Customers in the history.
    pub customers: usize,
    /// Windows used only for training (`0..train_windows`).
    pub train_windows: usize,
    /// Windows scored (`train_windows..`); each is scored once per horizon per customer.
    pub test_windows: usize,
    /// One row per horizon, in the order asked.
    pub horizons: Vec<HorizonReport>,
}

/// The metrics of one horizon.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HorizonReport {
    /// How many windows ahead the forecasts were made (1 = the next window).
    pub horizon: usize,
    /// The scores.
    pub metrics: Metrics,
}

/// [`evaluate_with`] with the p90 forecast as the reservation.
pub fn evaluate<F: Forecaster + ?Sized>(
    history: &UsageHistory,
    forecaster: &mut F,
    train_windows: usize,
    horizons: &[usize],
) -> Result<Report> {
    evaluate_with(
        history,
        forecaster,
        train_windows,
        horizons,
        QuantileLevel::P90,
    )
}

/// Replays `history` through `forecaster` (after [`Forecaster::reset`]) and scores its forecasts of
/// the test windows `train_windows..` at each horizon, with the `reserve` quantile as the
/// reservation.
///
/// Windows are replayed in time order, every customer at each window. Just before window `t` is
/// observed (so the forecaster has seen windows `0..t`), it is asked, for each horizon `h`, for its
/// forecast of window `t + h - 1`; that forecast is scored when the target is a test window. So every
/// test window of every customer is scored exactly once per horizon, always from data that ends `h`
/// windows before it (for the first test windows at `h > 1`, that is training data). The forecaster
/// never sees a window before it has been forecast.
///
/// Errors ([`Error::InvalidArgument`]): `train_windows` not in `1..num_windows()`, no horizons, a
/// horizon of 0.
pub fn evaluate_with<F: Forecaster + ?Sized>(
    history: &UsageHistory,
    forecaster: &mut F,
    train_windows: usize,
    horizons: &[usize],
    reserve: QuantileLevel,
) -> Result<Report> {
    evaluate_with_scale(
        history,
        forecaster,
        train_windows,
        horizons,
        reserve,
        SCENARIO_SCALE_HALF_LIFE,
    )
}

/// [`evaluate_with`], with the half-life (in windows, `>= 1`) of the reference scale that defines
/// the scenarios for the Brier score.
///
/// **Brier score.** Each customer has a reference scale: the model's customer scale
/// ([`Scale`], an exponential mean with this half-life), fed every observed window but lagging
/// one window behind, exactly like the scale the LSTM decodes with (built before the last
/// window is folded in). The scenario that happened for a scored target is
/// `scenario_of(used, reference scale at forecast time)`, and the forecaster's
/// [`Forecaster::scenario`] for the same horizon and scale is scored against it. Give the LSTM's
/// own half-life here so that its scenarios and the scored ones agree.
///
/// # Errors
/// Those of [`evaluate_with`], and a half-life below 1.
pub fn evaluate_with_scale<F: Forecaster + ?Sized>(
    history: &UsageHistory,
    forecaster: &mut F,
    train_windows: usize,
    horizons: &[usize],
    reserve: QuantileLevel,
    scenario_half_life: f64,
) -> Result<Report> {
    if !(scenario_half_life.is_finite() && scenario_half_life >= 1.0) {
        return Err(Error::invalid(format!(
            "evaluate: the scenario scale's half-life must be >= 1 window, got {scenario_half_life}"
        )));
    }
    let beta = 1.0 - 0.5f32.powf(1.0 / scenario_half_life as f32);
    let n = history.num_windows();
    if train_windows == 0 || train_windows >= n {
        return Err(Error::invalid(format!(
            "evaluate: train_windows must be in 1..{n} (the history's windows), got {train_windows}"
        )));
    }
    if horizons.is_empty() || horizons.contains(&0) {
        return Err(Error::invalid(format!(
            "evaluate: need at least one horizon, each >= 1, got {horizons:?}"
        )));
    }
    forecaster.reset();
    let series = history.all_series();
    let mut scales = vec![Scale::default(); series.len()];
    let mut pending: Vec<Option<f64>> = vec![None; series.len()];
    let mut acc: Vec<MetricsAccumulator> = horizons
        .iter()
        .map(|_| MetricsAccumulator::new(reserve))
        .collect();
    for t in 0..n {
        for (c, s) in series.iter().enumerate() {
            for (&h, a) in horizons.iter().zip(&mut acc) {
                // `h >= 1` (checked above); a target past `usize::MAX` is past the history too.
                let target = t.saturating_add(h - 1);
                if (train_windows..n).contains(&target) {
                    a.add(&forecaster.forecast(c, h), s[target]);
                    let scale = scales[c].s();
                    let happened = scenario_of(s[target] as f32, scale);
                    a.add_scenario(&forecaster.scenario(c, h, f64::from(scale)), happened);
                }
            }
            forecaster.observe(c, s[t]);
            if let Some(u) = pending[c].replace(s[t]) {
                let u = IntervalUsage {
                    tokens: u,
                    ..IntervalUsage::default()
                };
                scales[c].update(&u, beta);
            }
        }
    }
    Ok(Report {
        forecaster: forecaster.name(),
        customers: history.num_customers(),
        train_windows,
        test_windows: n - train_windows,
        horizons: horizons
            .iter()
            .zip(&acc)
            .map(|(&horizon, a)| HorizonReport {
                horizon,
                metrics: a.summary(),
            })
            .collect(),
    })
}

/// Several reports as one aligned table (one header, a row per forecaster and horizon).
pub fn format_reports(reports: &[Report]) -> String {
    let name_w = reports
        .iter()
        .map(|r| r.forecaster.len())
        .chain([10])
        .max()
        .unwrap_or(10);
    let reserve = reports
        .iter()
        .flat_map(|r| r.horizons.first())
        .map(|h| h.metrics.reserve.name())
        .next()
        .unwrap_or("p90");
    let mut out = format!(
        "{:<name_w$} {:>3} {:>7} {:>11} {:>11} {:>11} {:>11} {:>11} {:>6} {:>6} {:>6} {:>9} {:>9} {:>9}\n",
        "forecaster",
        "h",
        "samples",
        "mean_used",
        "mae",
        "pinball50",
        "pinball90",
        "pinball99",
        "cov90",
        "cov99",
        "brier",
        format!("slack@{reserve}"),
        format!("over@{reserve}"),
        format!("exceed@{reserve}"),
    );
    for r in reports {
        for h in &r.horizons {
            let m = &h.metrics;
            out += &format!(
                "{:<name_w$} {:>3} {:>7} {:>11.1} {:>11.1} {:>11.1} {:>11.1} {:>11.1} {:>6.3} {:>6.3} {:>6.3} {:>9.3} {:>9.3} {:>9.3}\n",
                r.forecaster,
                h.horizon,
                m.samples,
                m.mean_used,
                m.mae,
                m.pinball_p50,
                m.pinball_p90,
                m.pinball_p99,
                m.coverage_p90,
                m.coverage_p99,
                m.brier,
                m.slack,
                m.over_reserved,
                m.exceed_rate,
            );
        }
    }
    out
}

impl fmt::Display for Report {
    /// A line of context, then the table of [`format_reports`] (token-valued columns in tokens per
    /// window).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} customers, {} train windows, {} test windows",
            self.forecaster, self.customers, self.train_windows, self.test_windows
        )?;
        f.write_str(&format_reports(std::slice::from_ref(self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::{Ewma, LastValue, SeasonalNaive};

    fn history(series: Vec<Vec<f64>>) -> UsageHistory {
        let ids = (0..series.len() as u64).collect();
        UsageHistory::new(ids, 0, 600, series).unwrap()
    }

    #[test]
    fn last_value_replay_hand_checked() {
        // Train [1, 2], test [3, 5]. h=1: forecasts 2 (for 3) and 3 (for 5): errors 1, 2.
        // h=2: forecasts 1 (for 3, made after window 0) and 2 (for 5): errors 2, 3.
        let h = history(vec![vec![1.0, 2.0, 3.0, 5.0]]);
        let r = evaluate(&h, &mut LastValue::new(), 2, &[1, 2]).unwrap();
        assert_eq!((r.train_windows, r.test_windows, r.customers), (2, 2, 1));
        let (m1, m2) = (r.horizons[0].metrics, r.horizons[1].metrics);
        assert_eq!((m1.samples, m2.samples), (2, 2));
        assert_eq!(m1.mae, 1.5);
        assert_eq!(m2.mae, 2.5);
        assert_eq!(m1.mean_used, 4.0);
        // Reserved = p90 = the forecast: sum 5 vs used 8; every window exceeded.
        assert_eq!(m1.slack, (5.0 - 8.0) / 8.0);
        assert_eq!(m1.exceed_rate, 1.0);
        assert_eq!(m1.coverage_p90, 0.0);
        // Scenarios against the lagging reference scale (1 for these windows): 3 and 5 are
        // spikes, the forecasts 2 and 3 "high" (h=1); 1 and 2 at h=2: wrong every time.
        assert_eq!((m1.brier, m2.brier), (2.0, 2.0));
        let table = r.to_string();
        assert!(
            table.contains("last-value") && table.lines().count() == 4,
            "{table}"
        );
    }

    #[test]
    fn several_customers_are_independent() {
        let h = history(vec![vec![1.0, 1.0, 1.0], vec![0.0, 4.0, 4.0]]);
        let r = evaluate(&h, &mut LastValue::new(), 1, &[1]).unwrap();
        let m = r.horizons[0].metrics;
        // Customer 0 perfect; customer 1: errors 4 then 0.
        assert_eq!(m.samples, 4);
        assert_eq!(m.mae, 1.0);
    }

    #[test]
    fn reset_between_runs_and_bad_args() {
        let h = history(vec![vec![3.0, 1.0, 2.0, 7.0, 1.0]]);
        let mut f = Ewma::new(0.3).unwrap();
        let a = evaluate(&h, &mut f, 2, &[1, 3]).unwrap();
        let b = evaluate(&h, &mut f, 2, &[1, 3]).unwrap();
        assert_eq!(a, b);
        let mut s = SeasonalNaive::new(2).unwrap();
        assert!(evaluate(&h, &mut s, 0, &[1]).is_err());
        assert!(evaluate(&h, &mut s, 5, &[1]).is_err());
        assert!(evaluate(&h, &mut s, 2, &[]).is_err());
        assert!(evaluate(&h, &mut s, 2, &[1, 0]).is_err());
        // A horizon past the history scores nothing (and does not overflow).
        let r = evaluate(&h, &mut s, 2, &[1, usize::MAX]).unwrap();
        assert_eq!(r.horizons[1].metrics.samples, 0);
        assert_eq!(r.horizons[0].metrics.samples, 3);
        // Works through a trait object too.
        let dynf: &mut dyn Forecaster = &mut s;
        assert!(evaluate(&h, dynf, 2, &[1]).is_ok());
    }
}
