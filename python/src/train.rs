//! Training the LSTM forecaster from Python.
//!
//! `train` runs the engine's CPU trainer (`shadowbucket::train::train`) on a `History` with the
//! GIL released. After every mini-batch the trainer reports its progress; the binding then takes
//! the GIL back for a moment to check for signals (so Ctrl-C raises `KeyboardInterrupt`) and to
//! call the Python `progress` callback, if one was given, with a dict.
//!
//! **Stopping.** The trainer's progress hook cannot ask it to stop, so an exception (from the
//! callback, or a signal handler's `KeyboardInterrupt`) stops it by unwinding: the hook calls
//! `std::panic::resume_unwind` with a private marker (which runs no panic hook and prints
//! nothing), `catch_unwind` around the trainer catches it, and the exception is raised. The
//! trainer owns everything it touches (the dataset, the weights, the optimizer state), so
//! dropping it half-way leaves nothing behind. A real panic in the trainer becomes
//! `shadowbucket.InternalError`.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use pyo3::prelude::*;
use pyo3::types::PyDict;
use shadowbucket::train::{LossWeights, Progress, TrainConfig, TrainReport};

use crate::errors::{IntoPyResult, internal, invalid};
use crate::history::History;
use crate::model::{Model, spec};

/// The result of `train`: the model and its learning curves.
#[pyclass(frozen, module = "shadowbucket._native")]
pub struct TrainResult {
    model: Py<Model>,
    epochs_run: usize,
    best_epoch: usize,
    train_losses: Vec<f64>,
    val_losses: Vec<f64>,
}

#[pymethods]
impl TrainResult {
    /// The trained model (the best epoch's weights).
    #[getter]
    fn model(&self, py: Python<'_>) -> Py<Model> {
        self.model.clone_ref(py)
    }

    /// Epochs run (early stopping may end before `epochs`).
    #[getter]
    fn epochs_run(&self) -> usize {
        self.epochs_run
    }

    /// The epoch (from 1) whose weights `model` holds: the best by validation loss, or the last
    /// without validation.
    #[getter]
    fn best_epoch(&self) -> usize {
        self.best_epoch
    }

    /// Mean training loss per epoch.
    #[getter]
    fn train_losses(&self) -> Vec<f64> {
        self.train_losses.clone()
    }

    /// Validation loss per epoch (empty without validation).
    #[getter]
    fn val_losses(&self) -> Vec<f64> {
        self.val_losses.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "<shadowbucket.TrainResult {} epochs, best {}>",
            self.epochs_run, self.best_epoch
        )
    }
}

fn progress_dict<'py>(py: Python<'py>, p: &Progress) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("epoch", p.epoch)?;
    d.set_item("epochs", p.epochs)?;
    d.set_item("batch", p.batch)?;
    d.set_item("batches", p.batches)?;
    d.set_item("train_loss", p.train_loss)?;
    d.set_item("val_loss", p.val_loss)?;
    Ok(d)
}

/// The loss weights from a dict (missing keys keep their defaults; unknown keys are refused).
fn loss_weights(py: Python<'_>, d: Option<&Bound<'_, PyDict>>) -> PyResult<LossWeights> {
    let mut w = LossWeights::default();
    let Some(d) = d else { return Ok(w) };
    for (k, v) in d.iter() {
        let key: String = k.extract()?;
        let v: f64 = v.extract()?;
        match key.as_str() {
            "quantile" => w.quantile = v,
            "mean" => w.mean = v,
            "huber_delta" => w.huber_delta = v,
            "scenario" => w.scenario = v,
            "size_exponent" => w.size_exponent = v,
            _ => {
                return Err(invalid(
                    py,
                    format!(
                        "unknown loss weight {key:?}: expected 'quantile', 'mean', \
                         'huber_delta', 'scenario' or 'size_exponent'"
                    ),
                ));
            }
        }
    }
    Ok(w)
}

/// The unwind payload that stops the trainer when Python raised.
struct Stop;

/// A panic payload's message.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Trains an LSTM forecaster on `history` (the native part of `shadowbucket.train`).
#[pyfunction]
#[pyo3(signature = (
    history, *, hidden = None, layers = None, horizons = None, feeds = None, epochs = 30,
    batch_customers = 16, bptt = 48, learning_rate = 0.003, seed = 0,
    validation_fraction = 0.1, patience = 5, scale_half_life = 1440.0, loss = None,
    progress = None
))]
#[expect(
    clippy::too_many_arguments,
    reason = "keyword arguments of a Python function"
)]
pub fn train(
    py: Python<'_>,
    history: &History,
    hidden: Option<usize>,
    layers: Option<usize>,
    horizons: Option<Vec<u32>>,
    feeds: Option<Vec<String>>,
    epochs: usize,
    batch_customers: usize,
    bptt: usize,
    learning_rate: f64,
    seed: u64,
    validation_fraction: f64,
    patience: usize,
    scale_half_life: f32,
    loss: Option<&Bound<'_, PyDict>>,
    progress: Option<Py<PyAny>>,
) -> PyResult<TrainResult> {
    let cfg = TrainConfig {
        spec: spec(hidden, layers, horizons, feeds),
        epochs,
        batch_customers,
        bptt,
        learning_rate,
        seed,
        validation_fraction,
        patience,
        scale_half_life,
        loss: loss_weights(py, loss)?,
    };
    if let Some(cb) = &progress
        && !cb.bind(py).is_callable()
    {
        return Err(crate::errors::wrong_type(
            py,
            "progress must be a callable taking one dict, or None",
        ));
    }
    let h = &history.inner;
    let mut raised: Option<PyErr> = None;
    let outcome = py.detach(|| {
        let mut hook = |p: &Progress| {
            let stop = Python::attach(|py| {
                let r = py.check_signals().and_then(|()| match &progress {
                    Some(cb) => progress_dict(py, p).and_then(|d| cb.call1(py, (d,)).map(drop)),
                    None => Ok(()),
                });
                match r {
                    Ok(()) => false,
                    Err(e) => {
                        raised = Some(e);
                        true
                    }
                }
            });
            if stop {
                resume_unwind(Box::new(Stop));
            }
        };
        catch_unwind(AssertUnwindSafe(|| {
            shadowbucket::train::train(h, &cfg, &mut hook)
        }))
    });
    let report: TrainReport = match outcome {
        Ok(r) => r.py(py)?,
        Err(payload) if payload.is::<Stop>() => {
            return Err(raised.unwrap_or_else(|| internal(py, "training stopped".into())));
        }
        Err(payload) => {
            return Err(internal(
                py,
                format!(
                    "internal error in the trainer: {}",
                    panic_message(&*payload)
                ),
            ));
        }
    };
    Ok(TrainResult {
        model: Py::new(
            py,
            Model {
                inner: report.model,
            },
        )?,
        epochs_run: report.epochs_run,
        best_epoch: report.best_epoch,
        train_losses: report.train_losses,
        val_losses: report.val_losses,
    })
}
