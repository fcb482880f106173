//! GPU inference for shadowbucket's streaming LSTM: the batched step of
//! [`shadowbucket::model::step_batch`] as WGSL compute shaders on wgpu (Vulkan, Metal, DX12),
//! behind the engine's [`StepBackend`] trait. The CPU path stays the reference and the fallback.
//!
//! ## Using it
//! ```no_run
//! use shadowbucket::model::StepBackend;
//! let mut backend: Box<dyn StepBackend> = shadowbucket_gpu::select_backend_from_env();
//! // backend.set_model(&model)?; then every tick backend.step(..) or backend.step_pick(..)
//! ```
//! [`select_backend`] returns a [`GpuBackend`] when an adapter is chosen (see [`AdapterChoice`]:
//! the `SB_GPU` environment variable, `cpu`, `gpu` or a name substring) and a
//! [`CpuBackend`] otherwise, logging why; it never panics for want of a GPU.
//!
//! ## State on the device
//! The recurrent state lives on the device between ticks; a tick uploads the per-customer
//! features (and, for [`StepBackend::step_pick`], the scales) and downloads the head outputs, or
//! with `step_pick` just the one decoded value per customer the reservation reads. The store's
//! column stays the durable copy: the backend uploads it on the first step, after
//! [`StepBackend::invalidate`] and whenever the customer count changes, and writes its own copy
//! back in [`StepBackend::sync_state`], which the engine calls on flush and every
//! [`StepBackend::sync_every`] ticks ([`GpuOptions::sync_every`], default 10, env
//! `SB_GPU_SYNC_EVERY`). A crash or a device loss therefore loses at most that many ticks of
//! recurrent state, which the LSTM rebuilds from the inputs.
//!
//! ## Layout and chunking
//! State feature-major on the device (coalesced loads and stores). The default step kernel
//! ([`StepKernel::Tiled`], `shaders/lstm_step_tiled.wgsl`) computes register tiles of 2 units ×
//! 4 gates × 4 customers from tiles of 128 customers in workgroup memory, in persistent
//! workgroups of 512 invocations that hold the layer's weights in workgroup memory and load the
//! next tile while computing this one; its top layer also computes the heads
//! ([`GpuOptions::fuse_heads`]). [`StepKernel::Simple`] (`shaders/lstm_step.wgsl`, one
//! invocation per customer, then `shaders/heads.wgsl`) stays selectable ([`GpuOptions::kernel`],
//! env `SB_GPU_KERNEL=tiled|simple`). The gates' activations come from `exp` by default
//! ([`Activation`]), or from the CPU batch's own rational `tanh`.
//! Customers are split into chunks so that no buffer binding exceeds the adapter's
//! `max_storage_buffer_binding_size` (or [`GpuOptions::max_binding_bytes`]) and no dispatch
//! exceeds `max_compute_workgroups_per_dimension`; every chunk keeps its own buffers across ticks.
//!
//! ## Transfers
//! Each chunk keeps, per upload piece ([`GpuOptions::upload_piece`]), a host-visible upload
//! buffer mapped between ticks (filled in parallel, then copied on the device) and a readback
//! buffer (copied out in parallel); every piece gets its own dispatches, so the device copies
//! and computes one piece, and sends its outputs back, while the host fills the next.
//! [`GpuBackend::last_timings`] splits a tick's host time into those phases;
//! [`GpuBackend::profile_device_step`] times each kernel on the device.

mod backend;
mod context;
pub mod shaders;

pub use backend::{Activation, GpuBackend, GpuOptions, StepKernel, TickTimings};
pub use context::{AdapterChoice, AdapterDesc, Unavailable};

use shadowbucket::model::{CpuBackend, StepBackend};

/// The GPU backend if `opts` selects an adapter, otherwise the CPU backend; the reason for the
/// choice is logged (`log` crate) and returned.
pub fn select_backend(opts: GpuOptions) -> (Box<dyn StepBackend>, String) {
    match GpuBackend::new(opts) {
        Ok(g) => {
            let why = format!(
                "GPU backend on {} ({}, {})",
                g.adapter().name,
                g.adapter().backend,
                g.adapter().device_type
            );
            log::info!("shadowbucket-gpu: {why}");
            (Box::new(g), why)
        }
        Err(e) => {
            let why = format!("CPU backend: {e}");
            log::warn!("shadowbucket-gpu: {why}");
            (Box::new(CpuBackend::new()), why)
        }
    }
}

/// [`select_backend`] with [`GpuOptions::from_env`], returning only the backend.
pub fn select_backend_from_env() -> Box<dyn StepBackend> {
    select_backend(GpuOptions::from_env()).0
}
