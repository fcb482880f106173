//! Model weights, in PyTorch's `nn.LSTM` layout, plus the heads and the feature scaling.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::spec::ModelSpec;
use crate::error::{Error, Result};

/// One LSTM layer's weights, exactly as PyTorch's `nn.LSTM` holds them (row-major, gate order
/// `i, f, g, o` along the rows).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights {
    /// `weight_ih_l{k}`: `4H x in`.
    pub w_ih: Vec<f32>,
    /// `weight_hh_l{k}`: `4H x H`.
    pub w_hh: Vec<f32>,
    /// `bias_ih_l{k}`: `4H`.
    pub b_ih: Vec<f32>,
    /// `bias_hh_l{k}`: `4H`.
    pub b_hh: Vec<f32>,
}

/// Input normalization and customer scaling, stored with the weights.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureScaling {
    /// Per input feature: subtracted before the model sees it.
    pub mean: Vec<f32>,
    /// Per input feature: divides after the mean is subtracted (never 0).
    pub std: Vec<f32>,
    /// Half-life, in intervals, of the customer scale's exponential mean (default 1,440: a day of
    /// one-minute intervals).
    pub scale_half_life: f32,
}

impl FeatureScaling {
    /// No normalization (mean 0, std 1) for `n` features, and the default half-life.
    pub fn identity(n: usize) -> Self {
        FeatureScaling {
            mean: vec![0.0; n],
            std: vec![1.0; n],
            scale_half_life: 1440.0,
        }
    }

    /// The per-interval weight of the newest value in the scale's exponential mean.
    pub fn scale_beta(&self) -> f32 {
        1.0 - 0.5f32.powf(1.0 / self.scale_half_life)
    }
}

/// A streaming LSTM forecaster: the layers, the linear head and the feature scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct LstmModel {
    /// The shape.
    pub spec: ModelSpec,
    /// One per layer.
    pub layers: Vec<LayerWeights>,
    /// `head.weight`: `head_dim x H` (reads the top layer's `h`).
    pub head_w: Vec<f32>,
    /// `head.bias`: `head_dim`.
    pub head_b: Vec<f32>,
    /// Feature normalization and customer scaling.
    pub scaling: FeatureScaling,
}

impl LstmModel {
    /// A model with PyTorch's default initialization (every weight uniform in `±1/sqrt(H)`),
    /// deterministic for a seed, and identity feature scaling.
    ///
    /// # Errors
    /// The spec's own validation errors.
    pub fn random(spec: ModelSpec, seed: u64) -> Result<Self> {
        spec.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let k = 1.0 / (spec.hidden as f32).sqrt();
        let mut v = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-k..k)).collect() };
        let h = spec.hidden;
        let layers = (0..spec.layers)
            .map(|l| LayerWeights {
                w_ih: v(4 * h * spec.layer_input_dim(l)),
                w_hh: v(4 * h * h),
                b_ih: v(4 * h),
                b_hh: v(4 * h),
            })
            .collect();
        let head_w = v(spec.head_dim() * h);
        let head_b = v(spec.head_dim());
        let scaling = FeatureScaling::identity(spec.input_dim());
        Ok(LstmModel {
            spec,
            layers,
            head_w,
            head_b,
            scaling,
        })
    }

    /// Checks that every tensor has the shape the spec implies and every value is finite.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the tensor.
    pub fn validate(&self) -> Result<()> {
        self.spec.validate()?;
        let s = &self.spec;
        let h = s.hidden;
        if self.layers.len() != s.layers {
            return Err(Error::invalid(format!(
                "model has {} layers of weights, spec says {}",
                self.layers.len(),
                s.layers
            )));
        }
        let check = |name: String, v: &[f32], rows: usize, cols: usize| -> Result<()> {
            if v.len() != rows * cols {
                return Err(Error::invalid(format!(
                    "tensor {name} has {} values, expected {rows} x {cols}",
                    v.len()
                )));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::invalid(format!(
                    "tensor {name} holds a non-finite value"
                )));
            }
            Ok(())
        };
        for (l, w) in self.layers.iter().enumerate() {
            check(
                format!("weight_ih_l{l}"),
                &w.w_ih,
                4 * h,
                s.layer_input_dim(l),
            )?;
            check(format!("weight_hh_l{l}"), &w.w_hh, 4 * h, h)?;
            check(format!("bias_ih_l{l}"), &w.b_ih, 4 * h, 1)?;
            check(format!("bias_hh_l{l}"), &w.b_hh, 4 * h, 1)?;
        }
        check("head.weight".into(), &self.head_w, s.head_dim(), h)?;
        check("head.bias".into(), &self.head_b, s.head_dim(), 1)?;
        let n = s.input_dim();
        check("scaling.mean".into(), &self.scaling.mean, n, 1)?;
        check("scaling.std".into(), &self.scaling.std, n, 1)?;
        if self.scaling.std.iter().any(|&x| x <= 0.0) {
            return Err(Error::invalid("feature scaling std must be positive"));
        }
        let hl = self.scaling.scale_half_life;
        if !(hl.is_finite() && hl >= 1.0) {
            return Err(Error::invalid(format!(
                "scale half-life must be at least 1 interval, got {hl}"
            )));
        }
        Ok(())
    }
}
