//! Usage histories and forecaster evaluation.
//!
//! `History` wraps the engine's `UsageHistory`: a dense series of token counts per customer in
//! fixed windows, made from a 2-D numpy array (copied: the history owns its data) or loaded from a
//! ServeGen CSV file. `evaluate` replays one through a forecaster (a baseline, or an LSTM `Model`
//! through `LstmForecaster`, fed exactly as the engine's tick feeds it) and scores it, with the GIL
//! released.

use std::path::PathBuf;

use numpy::ndarray::Array2;
use numpy::prelude::*;
use numpy::{PyArray1, PyArray2, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use shadowbucket::forecast::{
    self, Autopilot, Ewma, Forecaster, LastValue, LstmForecaster, QuantileLevel, Report,
    SCENARIO_SCALE_HALF_LIFE, SeasonalNaive, UsageHistory,
};

use crate::arrays::{array1, slice};
use crate::errors::{IntoPyResult, invalid, wrong_type};
use crate::model::Model;

/// Per-customer usage (tokens) over the same consecutive windows.
#[pyclass(frozen, module = "shadowbucket._native")]
pub struct History {
    pub(crate) inner: UsageHistory,
}

#[pymethods]
impl History {
    /// A history from `customers` (uint64 ids) and `usage` (a float64 array of shape
    /// `(customers, windows)`: `usage[c, t]` tokens of customer `c` in window `t`), with windows of
    /// `window_s` seconds starting at `start_s`, and optionally `requests` (float64, the same
    /// shape: request counts, the model's `requests` feature, as a CSV's `requests` column gives
    /// them). The data is copied.
    #[new]
    #[pyo3(signature = (customers, usage, *, window_s, start_s = 0, requests = None))]
    fn new(
        py: Python<'_>,
        customers: &Bound<'_, PyAny>,
        usage: &Bound<'_, PyAny>,
        window_s: u64,
        start_s: u64,
        requests: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<History> {
        let ids_a = array1::<u64>(customers, "customers")?;
        let ids = slice(&ids_a, "customers")?.to_vec();
        let series = rows(py, usage, "usage", ids.len())?;
        let mut inner = UsageHistory::new(ids, start_s, window_s, series).py(py)?;
        if let Some(r) = requests {
            let req = rows(py, r, "requests", inner.num_customers())?;
            inner = inner.with_requests(req).py(py)?;
        }
        Ok(History { inner })
    }

    /// Loads a ServeGen per-tenant CSV (columns `customer`, `window_start_s`, `input_tokens`,
    /// `output_tokens`; usage is input plus output tokens).
    #[staticmethod]
    fn from_csv(py: Python<'_>, path: PathBuf) -> PyResult<History> {
        let inner = py
            .detach(|| UsageHistory::from_servegen_csv(&path))
            .py(py)?;
        Ok(History { inner })
    }

    /// Customer ids, in row order.
    #[getter]
    fn customers<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_slice(py, self.inner.customers())
    }

    /// The usage, a float64 array of shape `(customers, windows)` (a copy).
    #[getter]
    fn usage<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let (c, w) = (self.inner.num_customers(), self.inner.num_windows());
        let flat: Vec<f64> = self.inner.all_series().concat();
        let a = Array2::from_shape_vec((c, w), flat).map_err(|e| invalid(py, e.to_string()))?;
        Ok(a.into_pyarray(py))
    }

    /// Seconds per window.
    #[getter]
    fn window_s(&self) -> u64 {
        self.inner.window_s()
    }

    /// Start of the first window, seconds.
    #[getter]
    fn start_s(&self) -> u64 {
        self.inner.start_s()
    }

    /// Number of customers.
    #[getter]
    fn num_customers(&self) -> usize {
        self.inner.num_customers()
    }

    /// Number of windows.
    #[getter]
    fn num_windows(&self) -> usize {
        self.inner.num_windows()
    }

    /// Splits into windows `0..k` and `k..`.
    fn split(&self, py: Python<'_>, k: usize) -> PyResult<(History, History)> {
        let (a, b) = self.inner.split_at_window(k).py(py)?;
        Ok((History { inner: a }, History { inner: b }))
    }

    fn __repr__(&self) -> String {
        format!(
            "<shadowbucket.History {} customers x {} windows of {} s>",
            self.inner.num_customers(),
            self.inner.num_windows(),
            self.inner.window_s()
        )
    }
}

/// The rows of `a`, a 2-D float64 numpy array `(customers, windows)` with `customers` rows.
fn rows(
    py: Python<'_>,
    a: &Bound<'_, PyAny>,
    name: &str,
    customers: usize,
) -> PyResult<Vec<Vec<f64>>> {
    let u: PyReadonlyArray2<'_, f64> = match a.cast::<PyArray2<f64>>() {
        Ok(a) => a.try_readonly().map_err(|e| invalid(py, e.to_string()))?,
        Err(_) => {
            return Err(match a.cast::<numpy::PyUntypedArray>() {
                Ok(a) if a.ndim() != 2 => invalid(
                    py,
                    format!(
                        "{name} must be a 2-D array (customers, windows), got shape {:?}",
                        a.shape()
                    ),
                ),
                _ => wrong_type(
                    py,
                    format!(
                        "{name} must be a 2-D numpy array of float64; convert with \
                         np.asarray({name}, dtype=np.float64)"
                    ),
                ),
            });
        }
    };
    let view = u.as_array();
    if view.nrows() != customers {
        return Err(invalid(
            py,
            format!(
                "{name} has {} rows but there are {customers} customers",
                view.nrows()
            ),
        ));
    }
    Ok(view.rows().into_iter().map(|r| r.to_vec()).collect())
}

fn level(py: Python<'_>, name: &str) -> PyResult<QuantileLevel> {
    QuantileLevel::ALL
        .into_iter()
        .find(|l| l.name() == name)
        .ok_or_else(|| {
            invalid(
                py,
                format!("reserve must be 'p50', 'p90' or 'p99', got {name:?}"),
            )
        })
}

/// A baseline forecaster by name.
fn baseline(
    py: Python<'_>,
    name: &str,
    alpha: f64,
    period: usize,
    half_life: f64,
) -> PyResult<Box<dyn Forecaster + Send>> {
    Ok(match name {
        "last_value" => Box::new(LastValue::new()),
        "ewma" => Box::new(Ewma::new(alpha).py(py)?),
        "seasonal_naive" => Box::new(SeasonalNaive::new(period).py(py)?),
        "autopilot" => Box::new(Autopilot::new(half_life).py(py)?),
        _ => {
            return Err(invalid(
                py,
                format!(
                    "unknown forecaster {name:?}: expected 'last_value', 'ewma', \
                     'seasonal_naive' or 'autopilot'"
                ),
            ));
        }
    })
}

/// A report as a dict with one dict per horizon under `"horizons"`.
pub(crate) fn report_dict<'py>(py: Python<'py>, r: &Report) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("forecaster", &r.forecaster)?;
    d.set_item("customers", r.customers)?;
    d.set_item("train_windows", r.train_windows)?;
    d.set_item("test_windows", r.test_windows)?;
    let rows = PyList::empty(py);
    for h in &r.horizons {
        let m = &h.metrics;
        let row = PyDict::new(py);
        row.set_item("horizon", h.horizon)?;
        row.set_item("samples", m.samples)?;
        row.set_item("reserve", m.reserve.name())?;
        for (k, v) in [
            ("mean_used", m.mean_used),
            ("mae", m.mae),
            ("pinball_p50", m.pinball_p50),
            ("pinball_p90", m.pinball_p90),
            ("pinball_p99", m.pinball_p99),
            ("coverage_p90", m.coverage_p90),
            ("coverage_p99", m.coverage_p99),
            ("slack", m.slack),
            ("over_reserved", m.over_reserved),
            ("exceed_rate", m.exceed_rate),
            ("brier", m.brier),
        ] {
            row.set_item(k, v)?;
        }
        rows.append(row)?;
    }
    d.set_item("horizons", rows)?;
    Ok(d)
}

/// Replays `history` through a forecaster (a baseline's name or an LSTM `Model`) and scores its
/// forecasts of the windows from `train_windows` on, at each horizon (default: 1), with the
/// `reserve` quantile as the reservation. The scenarios of the Brier score are defined against a
/// reference scale with `scenario_half_life` windows (default: the model's own half-life for a
/// `Model`, 144 otherwise).
#[pyfunction]
#[pyo3(signature = (
    history, forecaster, *, train_windows, horizons = None, reserve = "p90", alpha = 0.5,
    period = 144, half_life = 144.0, scenario_half_life = None
))]
#[expect(
    clippy::too_many_arguments,
    reason = "keyword arguments of a Python function"
)]
pub fn evaluate<'py>(
    py: Python<'py>,
    history: &History,
    forecaster: &Bound<'py, PyAny>,
    train_windows: usize,
    horizons: Option<Vec<usize>>,
    reserve: &str,
    alpha: f64,
    period: usize,
    half_life: f64,
    scenario_half_life: Option<f64>,
) -> PyResult<Bound<'py, PyDict>> {
    let h = &history.inner;
    let (mut f, default_half_life): (Box<dyn Forecaster + Send>, f64) =
        if let Ok(m) = forecaster.cast::<Model>() {
            let model = m.get().inner.clone();
            let hl = f64::from(model.scaling.scale_half_life);
            (Box::new(LstmForecaster::for_history(model, h).py(py)?), hl)
        } else if let Ok(name) = forecaster.extract::<String>() {
            (
                baseline(py, &name, alpha, period, half_life)?,
                SCENARIO_SCALE_HALF_LIFE,
            )
        } else {
            return Err(wrong_type(
                py,
                format!(
                    "forecaster must be a shadowbucket.Model or a baseline's name, got {}",
                    forecaster.get_type().name()?
                ),
            ));
        };
    let lvl = level(py, reserve)?;
    let horizons = horizons.unwrap_or_else(|| vec![1]);
    let shl = scenario_half_life.unwrap_or(default_half_life);
    let r = py
        .detach(|| forecast::evaluate_with_scale(h, f.as_mut(), train_windows, &horizons, lvl, shl))
        .py(py)?;
    report_dict(py, &r)
}
