//! Where the batched step runs: the CPU here, a GPU in the `shadowbucket-gpu` crate.

use super::step::{StepScratch, step_batch};
use super::weights::LstmModel;
use crate::error::{Error, Result};

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
