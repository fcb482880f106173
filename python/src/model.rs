//! `shadowbucket.Model`: the streaming LSTM forecaster's weights.
//!
//! A model is made at random (`Model.random`, for tests and as a trainer's start), comes out of
//! `shadowbucket.train`, or is loaded from a safetensors file (`Model.load`); `save` writes one.
//! The tensor names and layout are the engine's (`core/src/model/weights.rs`): PyTorch's
//! `nn.LSTM` names, so the file opens with `safetensors.numpy.load_file` as a dict of arrays.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use shadowbucket::model::{LstmModel, ModelSpec};

use crate::errors::IntoPyResult;

/// The weights of a streaming LSTM forecaster.
#[pyclass(frozen, module = "shadowbucket._native")]
pub struct Model {
    pub(crate) inner: LstmModel,
}

/// The spec as a dict.
pub(crate) fn spec_dict<'py>(py: Python<'py>, s: &ModelSpec) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("hidden", s.hidden)?;
    d.set_item("layers", s.layers)?;
    d.set_item("horizons", s.horizons.clone())?;
    d.set_item("feeds", s.feeds.clone())?;
    Ok(d)
}

/// A spec from Python's arguments (`None` takes the default).
pub(crate) fn spec(
    hidden: Option<usize>,
    layers: Option<usize>,
    horizons: Option<Vec<u32>>,
    feeds: Option<Vec<String>>,
) -> ModelSpec {
    let d = ModelSpec::default();
    ModelSpec {
        hidden: hidden.unwrap_or(d.hidden),
        layers: layers.unwrap_or(d.layers),
        horizons: horizons.unwrap_or(d.horizons),
        feeds: feeds.unwrap_or(d.feeds),
    }
}

#[pymethods]
impl Model {
    /// A model with PyTorch's default initialization, deterministic for a seed (default spec:
    /// hidden 32, one layer, horizons 1, 5, 10, 15 intervals, no feeds).
    #[staticmethod]
    #[pyo3(signature = (*, hidden = None, layers = None, horizons = None, feeds = None, seed = 0))]
    fn random(
        py: Python<'_>,
        hidden: Option<usize>,
        layers: Option<usize>,
        horizons: Option<Vec<u32>>,
        feeds: Option<Vec<String>>,
        seed: u64,
    ) -> PyResult<Model> {
        let inner = LstmModel::random(spec(hidden, layers, horizons, feeds), seed).py(py)?;
        Ok(Model { inner })
    }

    /// The model's shape: hidden, layers, horizons, feeds.
    #[getter]
    fn spec<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        spec_dict(py, &self.inner.spec)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<Model>()
            .is_ok_and(|o| o.get().inner == self.inner)
    }

    fn __repr__(&self) -> String {
        let s = &self.inner.spec;
        format!(
            "<shadowbucket.Model lstm(hidden={}, layers={}, horizons={:?}, feeds={:?})>",
            s.hidden, s.layers, s.horizons, s.feeds
        )
    }
}
