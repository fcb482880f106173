//! Where the LSTM step runs: the CPU, or a GPU through the `shadowbucket-gpu` crate when the
//! command is built with the `gpu` feature.

use shadowbucket::Engine;

use crate::CliError;
use crate::args::Device;

/// Puts `engine`'s LSTM step on `device`.
///
/// # Errors
/// `--device gpu` in a build without the `gpu` feature, or when no GPU adapter can be had.
pub fn use_device(engine: &mut Engine, device: Device) -> Result<(), CliError> {
    match device {
        Device::Cpu => Ok(()),
        Device::Gpu => gpu(engine),
    }
}

#[cfg(feature = "gpu")]
fn gpu(engine: &mut Engine) -> Result<(), CliError> {
    let mut opts = shadowbucket_gpu::GpuOptions::from_env();
    // --device gpu asks for a GPU even where SB_GPU says cpu.
    if matches!(opts.choice, shadowbucket_gpu::AdapterChoice::Cpu) {
        opts.choice = shadowbucket_gpu::AdapterChoice::Auto;
    }
    let backend = shadowbucket_gpu::GpuBackend::new(opts)
        .map_err(|e| CliError::Failed(format!("no GPU available: {}", e.0)))?;
    engine
        .set_step_backend(Box::new(backend))
        .map_err(|e| CliError::Failed(format!("the GPU refused the model: {e}")))
}

#[cfg(not(feature = "gpu"))]
fn gpu(_engine: &mut Engine) -> Result<(), CliError> {
    Err(CliError::Failed(
        "--device gpu is not available in this build: rebuild with the GPU backend, \
         `cargo build --release -p shadowbucket-cli --features gpu`, or use --device cpu"
            .into(),
    ))
}
