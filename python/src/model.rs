//! `shadowbucket.Model`: the streaming LSTM forecaster's weights.
//!
//! A model is made at random (`Model.random`, for tests and as a trainer's start), comes out of
//! `shadowbucket.train`, or is loaded from a safetensors file (`Model.load`); `save` writes one.
//! The tensor names and layout are the engine's (`core/src/model/weights.rs`): PyTorch's
//! `nn.LSTM` names, so the file opens with `safetensors.numpy.load_file` as a dict of arrays.

use std::path::PathBuf;

use numpy::PyArray1;
use numpy::prelude::*;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use shadowbucket::model::{LstmModel, ModelSpec};

use crate::errors::{IntoPyResult, invalid};

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

    /// Reads a model file (safetensors, as `save` or PyTorch writes it; see
    /// `core/src/model/io.rs`). A missing file raises `NotFoundError` (a `FileNotFoundError`), a
    /// file that is not a valid model `BadFileError` saying what is wrong (a tensor of the wrong
    /// shape, missing metadata, ...).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Model> {
        let inner = py.detach(|| LstmModel::load(&path)).py(py)?;
        Ok(Model { inner })
    }

    /// Writes the model as a safetensors file, atomically (a temporary file next to `path`,
    /// renamed over it): PyTorch `nn.LSTM` tensor names (`weight_ih_l0`, ...) plus `head.weight`
    /// and `head.bias`, with the spec and the feature scaling in the metadata.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let m = &self.inner;
        py.detach(|| m.save(&path)).py(py)
    }

    /// The model's shape: hidden, layers, horizons, feeds.
    #[getter]
    fn spec<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        spec_dict(py, &self.inner.spec)
    }

    /// The names of the input features, in order (the `features` metadata of a model file).
    #[getter]
    fn feature_names(&self) -> Vec<String> {
        self.inner.spec.feature_names()
    }

    /// The per-feature mean subtracted from the inputs (float32, one per feature).
    #[getter]
    fn feature_mean<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        PyArray1::from_slice(py, &self.inner.scaling.mean)
    }

    /// The per-feature standard deviation the inputs are divided by (float32).
    #[getter]
    fn feature_std<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        PyArray1::from_slice(py, &self.inner.scaling.std)
    }

    /// Half-life of the customer scale, in intervals.
    #[getter]
    fn scale_half_life(&self) -> f32 {
        self.inner.scaling.scale_half_life
    }

    /// The weights as float32 numpy arrays (copies) under PyTorch's names and shapes:
    /// `weight_ih_l{k}` `[4H, in]`, `weight_hh_l{k}` `[4H, H]`, `bias_ih_l{k}`, `bias_hh_l{k}`
    /// `[4H]`, `head.weight` `[head, H]`, `head.bias` `[head]`.
    fn tensors<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, shape, values) in self.inner.named_tensors() {
            let a = PyArray1::from_slice(py, values)
                .reshape(shape)
                .map_err(|e| invalid(py, e.to_string()))?;
            d.set_item(name, a)?;
        }
        Ok(d)
    }

    /// The metadata a model file is written with (all strings, as safetensors requires).
    fn metadata(&self) -> std::collections::HashMap<String, String> {
        self.inner.safetensors_metadata()
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
