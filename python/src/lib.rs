//! The native module of the `shadowbucket` Python package (`shadowbucket._native`).
//!
//! The package's `__init__.py` re-exports everything from here, next to the exception classes
//! and the `Outcome` enum, which are plain Python (`_errors.py`, `_outcome.py`). The typed
//! interface is `shadowbucket/_native.pyi`; the tests check it against this module.
//!
//! - [`engine`]: `Engine`, the engine over one store file (the GIL is released for all engine
//!   work; see its thread model).
//! - [`history`]: `History` (usage histories from numpy arrays or ServeGen CSV files) and
//!   `evaluate` (scoring a baseline or an LSTM `Model` on one).
//! - [`model`]: `Model`, the LSTM forecaster's weights (load, save, tensors).
//! - [`train`]: `train` (the CPU trainer, GIL released, with a progress callback) and
//!   `TrainResult`.
//! - [`arrays`]: borrowing numpy arrays as slices, with clear errors.
//! - [`errors`]: the one conversion from the engine's errors to Python exceptions.
//!
//! Panics never cross into Python: engine calls run under `catch_unwind` (a panic closes the
//! engine and raises `shadowbucket.InternalError`), and pyo3 turns any other panic into an
//! exception.

mod arrays;
mod engine;
mod errors;
mod history;
mod model;
mod train;

use pyo3::prelude::*;

/// The native part of the `shadowbucket` package.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::Engine>()?;
    m.add_class::<engine::SnapshotCapture>()?;
    m.add_class::<history::History>()?;
    m.add_class::<model::Model>()?;
    m.add_class::<train::TrainResult>()?;
    m.add_function(wrap_pyfunction!(history::evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(train::train, m)?)?;
    m.add("NO_SLOT", shadowbucket::NO_SLOT)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
