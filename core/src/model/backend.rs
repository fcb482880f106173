//! Where the batched step runs: the CPU here, a GPU in the `shadowbucket-gpu` crate.

use rayon::prelude::*;

use super::spec::{
    CUSTOMER_FEATURES, FORECAST_PER_HORIZON, HEAD_PER_HORIZON, ModelSpec, SCENARIOS,
};
use super::step::{StepScratch, decode, step_batch};
use super::weights::LstmModel;
use crate::error::{Error, Result};

/// The one decoded forecast value per customer that a reservation reads: one horizon's mean or
/// quantile, decoded exactly as [`decode`] does (so in tokens, with the customer's scale).
///
/// Built for a model's spec with [`Pick::new`], which checks the indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    horizon: usize,
    quantile: usize,
    horizons: usize,
}

impl Pick {
    /// Horizon number `horizon` (an index into `spec.horizons`; 0 is the one the reservation
    /// policy reads) and `quantile`, an index into `[mean, p50, p90, p99]`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when either index is out of range for `spec`.
    pub fn new(spec: &ModelSpec, horizon: usize, quantile: usize) -> Result<Self> {
        if horizon >= spec.horizons.len() || quantile >= FORECAST_PER_HORIZON {
            return Err(Error::invalid(format!(
                "pick (horizon {horizon}, quantile {quantile}) is out of range for a model with \
                 {} horizons and {FORECAST_PER_HORIZON} values per horizon",
                spec.horizons.len()
            )));
        }
        Ok(Pick {
            horizon,
            quantile,
            horizons: spec.horizons.len(),
        })
    }

    /// The horizon's index.
    pub fn horizon(&self) -> usize {
        self.horizon
    }

    /// The value's index in `[mean, p50, p90, p99]`.
    pub fn quantile(&self) -> usize {
        self.quantile
    }

    /// Head outputs per customer of the model this pick was built for.
    pub fn head_dim(&self) -> usize {
        HEAD_PER_HORIZON * self.horizons + SCENARIOS.len()
    }

    /// Decodes one customer's head outputs `y` with scale `s` and usage feature `usage_z` (the
    /// customer's raw feature 0 of this step), as [`decode`] does, and returns the picked value.
    ///
    /// # Panics
    /// If `y` does not have [`Pick::head_dim`] values (a bug in the caller).
    pub fn decode_one(&self, y: &[f32], s: f32, usage_z: f32) -> f32 {
        let mut f = [0f32; FORECAST_PER_HORIZON * ModelSpec::MAX_HORIZONS];
        let f = &mut f[..FORECAST_PER_HORIZON * self.horizons];
        let mut sc = [0f32; SCENARIOS.len()];
        decode(y, s, usage_z, f, &mut sc);
        f[self.horizon * FORECAST_PER_HORIZON + self.quantile]
    }
}

/// Something that runs [`step_batch`]'s math for every customer of a store at each tick.
///
/// The engine owns the durable copy of the recurrent state (the store's state column) and passes
/// it to every call. A backend may keep its own copy (a GPU keeps it in device memory between
/// ticks); then it must
/// - treat the durable copy as the truth after [`StepBackend::invalidate`] (the engine calls it
///   whenever the column changed behind the backend: customers added or removed, a new model, a
///   reopened store), and
/// - write its copy back into the durable one in [`StepBackend::sync_state`] (the engine calls it
///   on flush and every [`StepBackend::sync_every`] ticks).
pub trait StepBackend: Send {
    /// A short description for logs and reports (e.g. `"cpu"` or the adapter's name).
    fn name(&self) -> String;

    /// Takes a model (weights go to the device once, here).
    ///
    /// # Errors
    /// The backend cannot hold this model.
    fn set_model(&mut self, model: &LstmModel) -> Result<()>;

    /// One step: `x` is `n x CUSTOMER_FEATURES`, `glob` the global features, `state` the durable
    /// `n x state_dim` copy, `out` receives `n x head_dim` head outputs (every one of them is
    /// written: the engine does not clear `out` between ticks).
    ///
    /// # Errors
    /// No model set, or a device failure (the engine then falls back to the CPU).
    fn step(&mut self, x: &[f32], glob: &[f32], state: &mut [f32], out: &mut [f32]) -> Result<()>;

    /// One step that returns only what the reservation reads: `out[r]` is customer `r`'s
    /// `pick` value decoded with its scale `scale[r]` and its usage feature
    /// `x[r * CUSTOMER_FEATURES]` (tokens), `n` values instead of
    /// `n x head_dim` head outputs. Same inputs and state handling as [`StepBackend::step`].
    ///
    /// The default runs [`StepBackend::step`] and [`Pick::decode_one`] on every row; a GPU
    /// backend decodes on the device and downloads `n` floats.
    ///
    /// # Errors
    /// As [`StepBackend::step`]; [`Error::LengthMismatch`] when `scale` or `out` does not have
    /// one value per customer.
    fn step_pick(
        &mut self,
        x: &[f32],
        glob: &[f32],
        scale: &[f32],
        state: &mut [f32],
        pick: Pick,
        out: &mut [f32],
    ) -> Result<()> {
        let n = scale.len();
        if out.len() != n {
            return Err(Error::LengthMismatch {
                what: "pick output",
                got: out.len(),
                expected: n,
            });
        }
        if n * CUSTOMER_FEATURES != x.len() {
            return Err(Error::LengthMismatch {
                what: "scales",
                got: n,
                expected: x.len() / CUSTOMER_FEATURES,
            });
        }
        let hd = pick.head_dim();
        let mut y = vec![0f32; n * hd];
        self.step(x, glob, state, &mut y)?;
        let cf = CUSTOMER_FEATURES;
        out.par_iter_mut()
            .zip(y.par_chunks_exact(hd.max(1)))
            .zip(scale.par_iter())
            .zip(x.par_chunks_exact(cf))
            .for_each(|(((o, y), &s), x)| *o = pick.decode_one(y, s, x[0]));
        Ok(())
    }

    /// The durable copy no longer matches the backend's own (see the trait's docs).
    fn invalidate(&mut self) {}

    /// Writes the backend's own state copy into `state`.
    ///
    /// # Errors
    /// A device failure.
    fn sync_state(&mut self, state: &mut [f32]) -> Result<()> {
        let _ = state;
        Ok(())
    }

    /// Ticks between write-backs of the state (1 for backends that step the durable copy
    /// itself).
    fn sync_every(&self) -> u32 {
        1
    }
}

/// The CPU backend: [`step_batch`] on the durable copy itself (nothing to sync).
#[derive(Debug, Default)]
pub struct CpuBackend {
    prep: Option<StepScratch>,
}

impl CpuBackend {
    /// No model yet.
    pub fn new() -> Self {
        CpuBackend::default()
    }
}

impl StepBackend for CpuBackend {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn set_model(&mut self, model: &LstmModel) -> Result<()> {
        model.validate()?;
        self.prep = Some(StepScratch::new(model));
        Ok(())
    }

    fn step(&mut self, x: &[f32], glob: &[f32], state: &mut [f32], out: &mut [f32]) -> Result<()> {
        let p = self
            .prep
            .as_ref()
            .ok_or_else(|| Error::invalid("step backend has no model"))?;
        step_batch(p, x, glob, state, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `step_pick`'s documented error: scales that are not one per customer of `x` (here 2 for 3
    /// customers, with `out` matching the scales) are a `LengthMismatch`, not a panic in the step.
    #[test]
    fn step_pick_refuses_scales_of_another_length() {
        let spec = ModelSpec {
            hidden: 4,
            layers: 1,
            horizons: vec![1, 2],
            feeds: vec![],
        };
        let model = LstmModel::random(spec.clone(), 1).unwrap();
        let mut cpu = CpuBackend::new();
        cpu.set_model(&model).unwrap();
        let x = vec![0.5f32; 3 * CUSTOMER_FEATURES];
        let glob = vec![0f32; spec.global_dim()];
        let mut state = vec![0f32; 3 * spec.state_dim()];
        let pick = Pick::new(&spec, 0, 2).unwrap();
        let mut out = vec![0f32; 2];
        let r = cpu.step_pick(&x, &glob, &[1.0, 1.0], &mut state, pick, &mut out);
        assert!(matches!(r, Err(Error::LengthMismatch { .. })), "{r:?}");
        // The right lengths still work.
        let mut out = vec![0f32; 3];
        cpu.step_pick(&x, &glob, &[1.0; 3], &mut state, pick, &mut out)
            .unwrap();
        assert!(out.iter().all(|v| v.is_finite() && *v >= 0.0));
    }
}
