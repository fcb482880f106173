//! The predictive model: a streaming LSTM with forecast heads, one step per customer per tick.
//!
//! This module is the single definition of the model's math; the batched CPU step
//! ([`step::step_batch`]), the trainer and the GPU shaders all follow [`step::step_one`], the
//! plain reference, and the tests hold them to it.
//!
//! - [`spec`]: [`ModelSpec`] (hidden size, layers, horizons, external feeds), the feature list,
//!   the scenario thresholds and the head layout.
//! - [`weights`]: [`LstmModel`], the weights in PyTorch's `nn.LSTM` layout plus the heads and the
//!   feature scaling.
//! - [`backend`]: [`StepBackend`], where the batched step runs ([`CpuBackend`] here; the GPU
//!   crate brings another).
//! - [`features`]: building the inputs (the same for the tick, the trainer and the evaluation).
//! - [`io`]: safetensors save and load, in PyTorch's names and layouts.
//! - [`step`]: one step for one customer (the reference) and for a batch (GEMM + rayon), and the
//!   decoding of head outputs into forecasts and scenario probabilities.
//!
//! ## The math, per customer and tick
//! With features `x` (normalized by the model's feature scaling), and per layer `l` the state
//! `(h, c)`, in PyTorch's gate order `i, f, g, o`:
//!
//! ```text
//! z = W_ih · x_l + b_ih + W_hh · h + b_hh          (4H values)
//! i = σ(z[0..H])  f = σ(z[H..2H])  g = tanh(z[2H..3H])  o = σ(z[3H..4H])
//! c' = f ⊙ c + i ⊙ g      h' = o ⊙ tanh(c')          x_{l+1} = h'
//! y = W_head · h'_top + b_head                        (4·horizons + 4 values)
//! ```
//!
//! Head outputs are decoded per horizon `j` with the customer's scale `s` (see
//! [`spec::ModelSpec`]) and the step's own usage feature `x_u = x[0] = ln(1 + u_t/s)` (raw, not
//! normalized; `u_t` is the use of the interval just closed). The head is **residual**: it starts
//! from persistence and the network learns corrections in the log domain
//! (`head` = `residual-v1` in the model file, see [`io`]):
//!
//! ```text
//! z_mean = x_u + y[4j]
//! z50    = x_u + y[4j+1]
//! z90    = z50 + softplus(y[4j+2])
//! z99    = z90 + softplus(y[4j+3])
//! value  = s·expm1(max(z, 0))        (mean, p50, p90, p99)
//! ```
//!
//! so `0 <= p50 <= p90 <= p99` and `mean >= 0` always, and zero corrections forecast the last
//! interval's use (`s·expm1(x_u) = u_t`). The last four outputs are the scenario logits
//! (softmax).

pub mod backend;
pub mod fast;
pub mod features;
pub mod io;
pub mod spec;
pub mod step;
pub mod weights;

pub use backend::{CpuBackend, StepBackend};
pub use spec::{BASE_FEATURES, CUSTOMER_FEATURES, ModelSpec, SCENARIO_EDGES, SCENARIOS};
pub use step::{Decoded, StepScratch, decode, decode_block, step_batch, step_one};
pub use weights::{FeatureScaling, LayerWeights, LstmModel};
