//! [`GpuBackend`]: the batched LSTM step on a wgpu device, state resident between ticks.

use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use shadowbucket::model::backend::Pick;
use shadowbucket::model::{CUSTOMER_FEATURES, LstmModel, StepBackend};
use shadowbucket::{Error, Result};

use crate::context::{AdapterChoice, AdapterDesc, Context, Unavailable};
use crate::shaders::{HeadsParams, RelayoutParams, Shape, StepParams, TiledShape};

/// Which WGSL kernel runs the LSTM layers (the relayout is the same for both; the tiled kernel
/// computes the heads in its top layer where it can, [`GpuOptions::fuse_heads`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StepKernel {
    /// `shaders/lstm_step_tiled.wgsl` (the default): a workgroup takes tiles of 128 customers
    /// (64 with 256-invocation workgroups, [`GpuOptions::tiled_workgroup`]), each invocation
    /// computes 2 units × 4 gates × 4 customers in registers, the layer's weights in workgroup
    /// memory once per (persistent) workgroup, the next tile's loads in flight during the
    /// products. Falls back to [`StepKernel::Simple`] when a model's tile does not fit the
    /// adapter's workgroup memory.
    #[default]
    Tiled,
    /// `shaders/lstm_step.wgsl`: one invocation per customer.
    Simple,
}

impl StepKernel {
    /// The environment variable read by [`GpuOptions::from_env`]: `tiled` or `simple`.
    pub const ENV: &'static str = "SB_GPU_KERNEL";

    /// Parses `tiled` or `simple` (case-insensitive, surrounding blanks ignored).
    pub fn parse(s: &str) -> Option<Self> {
        parse_named(s, [StepKernel::Tiled, StepKernel::Simple], StepKernel::name)
    }

    /// `"tiled"` or `"simple"`.
    pub fn name(self) -> &'static str {
        match self {
            StepKernel::Tiled => "tiled",
            StepKernel::Simple => "simple",
        }
    }
}

/// The one of `all` whose `name` is `s` (case-insensitive, surrounding blanks ignored): the
/// option enums' `parse`, so a name is spelled once, in `name`.
fn parse_named<T: Copy, const N: usize>(
    s: &str,
    all: [T; N],
    name: fn(T) -> &'static str,
) -> Option<T> {
    let s = s.trim();
    all.into_iter().find(|&v| s.eq_ignore_ascii_case(name(v)))
}

impl std::fmt::Display for StepKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a [`GpuBackend`] is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuOptions {
    /// Which adapter (default: `SB_GPU`, see [`AdapterChoice`]).
    pub choice: AdapterChoice,
    /// Ticks between write-backs of the device state into the store's column
    /// ([`StepBackend::sync_every`]); default [`GpuOptions::DEFAULT_SYNC_EVERY`], or
    /// `SB_GPU_SYNC_EVERY`.
    pub sync_every: u32,
    /// Caps the bytes of any one buffer binding below the adapter's own limits (tests lower it to
    /// force chunking); `None` uses the adapter's.
    pub max_binding_bytes: Option<u64>,
    /// Invocations per workgroup of the simple step kernel, the heads and the relayout (capped
    /// by the adapter), default 256.
    pub workgroup: u32,
    /// The step kernel (default [`StepKernel::Tiled`], or `SB_GPU_KERNEL`).
    pub kernel: StepKernel,
    /// Tiled kernel: workgroups per layer dispatch at most (persistent: each copies the weights
    /// once, then takes every this-many-th tile); default
    /// [`GpuOptions::DEFAULT_TILED_GROUPS`], or `SB_GPU_TILED_GROUPS`; capped by the tiles and
    /// the adapter's dispatch limit. Should be at least what the device keeps resident at once
    /// (more only adds workgroups that find no tile left).
    pub tiled_groups: u32,
    /// Customers per upload piece: each chunk's features and scales go up in pieces of this
    /// many, the device copying one while the host fills the next; default
    /// [`GpuOptions::DEFAULT_UPLOAD_PIECE`] (32 MiB), or `SB_GPU_UPLOAD_PIECE`.
    pub upload_piece: u32,
    /// How the step kernels compute the gates' `tanh` and sigmoid (default
    /// [`Activation::Exp`], or `SB_GPU_ACT`).
    pub activation: Activation,
    /// Tiled kernel: invocations per workgroup, 256 (tiles of 64 customers) or 512 and more
    /// (tiles of 128); default [`GpuOptions::DEFAULT_TILED_WORKGROUP`], or
    /// `SB_GPU_TILED_WORKGROUP`. Capped by the adapter, and at 256 where a binding cannot hold
    /// 128 customers' state.
    pub tiled_workgroup: u32,
    /// Tiled kernel: compute the heads in the top layer's kernel, from the new `h` in
    /// workgroup memory, instead of in a separate pass that reads it back (where the shape
    /// allows: every invocation at most one register tile); default true, or
    /// `SB_GPU_FUSE_HEADS=0`.
    pub fuse_heads: bool,
    /// Tiled kernel with fused heads: write the full head outputs through workgroup memory so a
    /// workgroup's stores are contiguous (experimental; default false, or
    /// `SB_GPU_TILED_STAGE_OUT=1`).
    pub stage_out: bool,
    /// How long any one wait for the device may take before the call fails with an error
    /// instead of waiting on (a stuck or lost device); after such a failure every later call of
    /// this backend fails too, and the engine's tick goes on on the CPU. Default
    /// [`GpuOptions::DEFAULT_WAIT_TIMEOUT`], or `SB_GPU_TIMEOUT_MS` (`0`: no limit).
    pub wait_timeout: Option<Duration>,
}

/// How the step kernels compute the gates' `tanh` and sigmoid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `sigmoid(v) = 1 / (1 + exp(-v))`, `tanh(v) = 1 - 2 / (exp(2v) + 1)`: two special-function
    /// operations each on a GPU; within a few 1e-7 of `step::fast_tanh` (itself within 4.6e-7
    /// of `tanh`).
    #[default]
    Exp,
    /// `step::fast_tanh`'s rational approximation term for term, as the CPU batch computes it
    /// (sigmoid from `tanh`): a dozen multiply-adds and a division each.
    Rational,
}

impl Activation {
    /// The environment variable read by [`GpuOptions::from_env`]: `exp` or `rational`.
    pub const ENV: &'static str = "SB_GPU_ACT";

    /// Parses `exp` or `rational` (case-insensitive, surrounding blanks ignored).
    pub fn parse(s: &str) -> Option<Self> {
        parse_named(s, [Activation::Exp, Activation::Rational], Activation::name)
    }

    /// `"exp"` or `"rational"`.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Exp => "exp",
            Activation::Rational => "rational",
        }
    }
}

impl GpuOptions {
    /// Default ticks between state write-backs: 10 (ten minutes at the default 60 s interval).
    pub const DEFAULT_SYNC_EVERY: u32 = 10;
    /// The environment variable that overrides [`GpuOptions::sync_every`].
    pub const SYNC_ENV: &'static str = "SB_GPU_SYNC_EVERY";
    /// Default [`GpuOptions::tiled_groups`]: a few workgroups per streaming multiprocessor (or
    /// compute unit) of a large GPU (an H200 has 132 SMs; workgroups beyond those the device
    /// keeps resident wait their turn). Each takes every this-many-th tile.
    pub const DEFAULT_TILED_GROUPS: u32 = 1024;
    /// The environment variable that overrides [`GpuOptions::tiled_groups`].
    pub const TILED_GROUPS_ENV: &'static str = "SB_GPU_TILED_GROUPS";
    /// Default [`GpuOptions::upload_piece`]: 1Mi customers, 32 MiB of features and scales.
    pub const DEFAULT_UPLOAD_PIECE: u32 = 1 << 20;
    /// The environment variable that overrides [`GpuOptions::upload_piece`].
    pub const UPLOAD_PIECE_ENV: &'static str = "SB_GPU_UPLOAD_PIECE";
    /// Default [`GpuOptions::tiled_workgroup`]: 512 invocations, tiles of 128 customers.
    pub const DEFAULT_TILED_WORKGROUP: u32 = 512;
    /// The environment variable that overrides [`GpuOptions::tiled_workgroup`].
    pub const TILED_WORKGROUP_ENV: &'static str = "SB_GPU_TILED_WORKGROUP";
    /// The environment variable that overrides [`GpuOptions::fuse_heads`] (`0` or `1`).
    pub const FUSE_HEADS_ENV: &'static str = "SB_GPU_FUSE_HEADS";
    /// The environment variable that overrides [`GpuOptions::stage_out`] (`1` turns it on).
    pub const STAGE_OUT_ENV: &'static str = "SB_GPU_TILED_STAGE_OUT";
    /// Default [`GpuOptions::wait_timeout`]: 60 s, far above any one submission's time on a GPU
    /// (a software adapter can take seconds per chunk).
    pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(60);
    /// The environment variable that overrides [`GpuOptions::wait_timeout`], in milliseconds.
    pub const TIMEOUT_ENV: &'static str = "SB_GPU_TIMEOUT_MS";

    /// The defaults, with `SB_GPU`, `SB_GPU_SYNC_EVERY`, `SB_GPU_KERNEL`, `SB_GPU_TILED_GROUPS`,
    /// `SB_GPU_UPLOAD_PIECE`, `SB_GPU_ACT`, `SB_GPU_TILED_WORKGROUP`, `SB_GPU_FUSE_HEADS`,
    /// `SB_GPU_TILED_STAGE_OUT` and `SB_GPU_TIMEOUT_MS` applied (a value that does not parse is
    /// ignored, with a warning).
    pub fn from_env() -> Self {
        let positive = |name: &str| {
            let v = std::env::var(name).ok()?;
            let parsed = v.trim().parse::<u32>().ok().filter(|&v| v > 0);
            if parsed.is_none() {
                log::warn!("shadowbucket-gpu: ignoring {name}={v:?} (not a positive integer)");
            }
            parsed
        };
        let kernel = match std::env::var(StepKernel::ENV) {
            Ok(v) if !v.trim().is_empty() => StepKernel::parse(&v).unwrap_or_else(|| {
                log::warn!(
                    "shadowbucket-gpu: ignoring {}={v:?} (tiled or simple)",
                    StepKernel::ENV
                );
                StepKernel::default()
            }),
            _ => StepKernel::default(),
        };
        let activation = match std::env::var(Activation::ENV) {
            Ok(v) if !v.trim().is_empty() => Activation::parse(&v).unwrap_or_else(|| {
                log::warn!(
                    "shadowbucket-gpu: ignoring {}={v:?} (exp or rational)",
                    Activation::ENV
                );
                Activation::default()
            }),
            _ => Activation::default(),
        };
        GpuOptions {
            choice: AdapterChoice::from_env(),
            sync_every: positive(Self::SYNC_ENV).unwrap_or(Self::DEFAULT_SYNC_EVERY),
            max_binding_bytes: None,
            workgroup: 256,
            kernel,
            tiled_groups: positive(Self::TILED_GROUPS_ENV).unwrap_or(Self::DEFAULT_TILED_GROUPS),
            upload_piece: positive(Self::UPLOAD_PIECE_ENV).unwrap_or(Self::DEFAULT_UPLOAD_PIECE),
            activation,
            tiled_workgroup: positive(Self::TILED_WORKGROUP_ENV)
                .unwrap_or(Self::DEFAULT_TILED_WORKGROUP),
            fuse_heads: std::env::var(Self::FUSE_HEADS_ENV).map_or(true, |v| v.trim() != "0"),
            stage_out: std::env::var(Self::STAGE_OUT_ENV).is_ok_and(|v| v.trim() == "1"),
            wait_timeout: match std::env::var(Self::TIMEOUT_ENV) {
                Ok(v) if !v.trim().is_empty() => match v.trim().parse::<u64>() {
                    Ok(0) => None,
                    Ok(ms) => Some(Duration::from_millis(ms)),
                    Err(_) => {
                        log::warn!(
                            "shadowbucket-gpu: ignoring {}={v:?} (milliseconds, 0 for no limit)",
                            Self::TIMEOUT_ENV
                        );
                        Some(Self::DEFAULT_WAIT_TIMEOUT)
                    }
                },
                _ => Some(Self::DEFAULT_WAIT_TIMEOUT),
            },
        }
    }
}

/// Where the host's time went in the last [`StepBackend::step`] or [`StepBackend::step_pick`]
/// ([`GpuBackend::last_timings`]); wall-clock, on the calling thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickTimings {
    /// Copying the features (and scales) into the mapped upload buffers (parallel).
    pub copy_in: Duration,
    /// Copying the outputs out of the mapped readback buffers (parallel).
    pub copy_out: Duration,
    /// The rest: encoding, submitting and waiting for the device (its uploads, kernels and
    /// downloads). The device works on one chunk while the host copies the next, so this is the
    /// time the host was not copying, not the device's busy time.
    pub submit_gpu: Duration,
    /// The whole call.
    pub total: Duration,
}

/// A device failure as the engine's error (the engine then falls back to the CPU).
fn device_error(msg: impl Into<String>) -> Error {
    Error::Io {
        path: "<gpu device>".into(),
        source: std::io::Error::other(msg.into()),
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// The least multiple of the feature-major state's row stride, in floats (every row starts on a
/// 256-byte boundary); the tiled kernel's rows also hold whole tiles ([`Kernels::align`]).
const LD_ALIGN: usize = 64;
const _: () = assert!((TiledShape::MAX_TILE as usize).is_multiple_of(LD_ALIGN));
/// Bytes between parameter slots in a chunk's uniform buffer (the largest
/// `min_uniform_buffer_offset_alignment` WebGPU allows).
const SLOT: u64 = 256;

/// The model as the kernels read it.
struct Prepared {
    layers: usize,
    hidden: usize,
    state_dim: usize,
    head_dim: usize,
    global: usize,
    /// The simple kernel's weights: all layers' rows, vec4-padded (see lstm_step.wgsl), as
    /// floats.
    weights: Vec<f32>,
    /// The simple kernel's weights: per layer, first vec4.
    w_off: Vec<u32>,
    /// The tiled kernel's weights: per layer, `rows x HP` vec4s of gates (see
    /// lstm_step_tiled.wgsl), as floats.
    tiled_weights: Vec<f32>,
    /// The tiled kernel's weights: per layer, first vec4.
    tiled_w_off: Vec<u32>,
    /// Per layer: `b_ih + b_hh` ordered (j, q); layer 0's with the normalization folded in.
    bias: Vec<Vec<f32>>,
    /// Layer 0's weights on the global features, normalization folded in, rows in (j, q) order:
    /// `4H x global`.
    w_glob: Vec<f32>,
    /// Head rows, vec4-padded.
    head_w: Vec<f32>,
    head_b: Vec<f32>,
}

impl Prepared {
    fn new(model: &LstmModel) -> Prepared {
        let s = &model.spec;
        let h = s.hidden;
        let hv4 = h.div_ceil(4) * 4;
        let cf = CUSTOMER_FEATURES;
        let global = s.global_dim();
        let mut weights = Vec::new();
        let mut w_off = Vec::new();
        let mut tiled_weights = Vec::new();
        let mut tiled_w_off = Vec::new();
        let mut bias = Vec::new();
        let mut w_glob = vec![0f32; 4 * h * global];
        for (l, lw) in model.layers.iter().enumerate() {
            let k = s.layer_input_dim(l);
            let kin4 = if l == 0 { cf.div_ceil(4) * 4 } else { hv4 };
            w_off.push((weights.len() / 4) as u32);
            // tiled: row kk (inputs, then h), unit j, gate q at float ((kk * hv4 + j) * 4 + q)
            let mut tiled = vec![0f32; (kin4 + hv4) * hv4 * 4];
            let at = |kk: usize, j: usize, q: usize| (kk * hv4 + j) * 4 + q;
            let mut b = vec![0f32; 4 * h];
            for j in 0..h {
                for q in 0..4 {
                    let r = q * h + j;
                    let jq = 4 * j + q;
                    let mut row = vec![0f32; kin4 + hv4];
                    let mut br = lw.b_ih[r] + lw.b_hh[r];
                    for c in 0..k {
                        let mut wv = lw.w_ih[r * k + c];
                        if l == 0 {
                            // W (x - m)/sd = (W/sd) x - W m/sd, as the CPU batch folds it.
                            let sd = model.scaling.std[c];
                            let m = model.scaling.mean[c];
                            br -= wv * m / sd;
                            wv /= sd;
                            if c >= cf {
                                w_glob[jq * global + (c - cf)] = wv;
                                continue;
                            }
                        }
                        row[c] = wv;
                        tiled[at(c, j, q)] = wv;
                    }
                    let hh = &lw.w_hh[r * h..(r + 1) * h];
                    row[kin4..kin4 + h].copy_from_slice(hh);
                    for (c, &wv) in hh.iter().enumerate() {
                        tiled[at(kin4 + c, j, q)] = wv;
                    }
                    weights.extend_from_slice(&row);
                    b[jq] = br;
                }
            }
            tiled_w_off.push((tiled_weights.len() / 4) as u32);
            tiled_weights.extend_from_slice(&tiled);
            bias.push(b);
        }
        let hd = s.head_dim();
        let mut head_w = vec![0f32; hd * hv4];
        for r in 0..hd {
            head_w[r * hv4..r * hv4 + h].copy_from_slice(&model.head_w[r * h..(r + 1) * h]);
        }
        Prepared {
            layers: s.layers,
            hidden: h,
            state_dim: s.state_dim(),
            head_dim: hd,
            global,
            weights,
            w_off,
            tiled_weights,
            tiled_w_off,
            bias,
            w_glob,
            head_w,
            head_b: model.head_b.clone(),
        }
    }

    /// Every layer's bias for this tick, layer 0's with the global features folded in.
    fn bias_for(&self, glob: &[f32]) -> Vec<f32> {
        let mut all: Vec<f32> = self.bias.concat();
        for (jq, b) in all[..4 * self.hidden].iter_mut().enumerate() {
            for (w, v) in self.w_glob[jq * self.global..(jq + 1) * self.global]
                .iter()
                .zip(glob)
            {
                *b += w * v;
            }
        }
        all
    }
}

/// Pipelines and model buffers for one model.
struct Kernels {
    /// The step kernel in use (the one asked for, unless the tiled one does not fit).
    kind: StepKernel,
    /// Whether every layer's weights are read from workgroup memory.
    use_shared: bool,
    /// The state's row stride and the upload pieces are multiples of this many customers (the
    /// tiled kernel's tile, or [`LD_ALIGN`]).
    align: usize,
    /// Whether the top layer's kernel computes the heads (tiled, [`GpuOptions::fuse_heads`]);
    /// else `heads` runs after the layers.
    fused: bool,
    /// Per layer, its step pipeline (layers of one kind share one), all on the step bind group
    /// layout.
    step: Vec<wgpu::ComputePipeline>,
    step_layout: wgpu::BindGroupLayout,
    /// Per layer, its first vec4 in `weights` (the kernel's layout).
    w_off: Vec<u32>,
    heads: wgpu::ComputePipeline,
    relayout: wgpu::ComputePipeline,
    weights: wgpu::Buffer,
    bias: wgpu::Buffer,
    head_w: wgpu::Buffer,
    head_b: wgpu::Buffer,
}

/// One chunk of customers: its buffers and bind groups, kept across ticks.
struct Chunk {
    /// First customer.
    start: usize,
    /// Customers.
    n: usize,
    /// State row stride.
    ld: usize,
    params: wgpu::Buffer,
    x: wgpu::Buffer,
    state: wgpu::Buffer,
    scale: wgpu::Buffer,
    out: wgpu::Buffer,
    /// The chunk's dispatch ranges: `[0]` the whole chunk (steps without transfers), then one
    /// per upload piece (a tick uploads, computes and downloads piece by piece).
    ranges: Vec<Range>,
}

/// Customers `first .. first + n` of a chunk as one set of dispatches: its parameters and bind
/// groups, and for an upload piece its staging.
struct Range {
    /// First customer, relative to the chunk (a multiple of the tiled kernel's tile).
    first: usize,
    /// Customers.
    n: usize,
    /// Tiled kernel: workgroups per layer dispatch.
    grid: u32,
    /// The heads' parameter slot (bytes into the chunk's `params`).
    heads_slot: u64,
    step_groups: Vec<wgpu::BindGroup>,
    heads_group: wgpu::BindGroup,
    /// An upload piece's staging (none for the whole chunk).
    io: Option<Upload>,
}

/// One upload piece's host-visible staging: `upload` holds `[x: n x CF | scale: n]`
/// (`MAP_WRITE | COPY_SRC`, kept mapped between ticks), `readback` the piece's outputs
/// (`MAP_READ | COPY_DST`).
struct Upload {
    buffer: wgpu::Buffer,
    /// `buffer`'s mapping: [`UNMAPPED`], [`PENDING`] or [`MAPPED`] (set by the map callback).
    map: Arc<AtomicU8>,
    readback: wgpu::Buffer,
}

/// [`Upload::map`]: not mapped.
const UNMAPPED: u8 = 0;
/// [`Upload::map`]: `map_async` asked, not yet answered.
const PENDING: u8 = 1;
/// [`Upload::map`]: mapped for writing.
const MAPPED: u8 = 2;

/// Bytes per parallel piece of a host copy into or out of mapped memory: small enough that one
/// upload piece (32 MiB by default) keeps every core busy.
const PIECE: usize = 256 << 10;

/// Copies each `src` into its `dst` (of the same length), all of them at once in pieces of
/// [`PIECE`] bytes on rayon's pool.
fn copy_in(parts: Vec<(wgpu::WriteOnly<'_, [u8]>, &[u8])>) -> Result<()> {
    let mut whole = Vec::new();
    let mut rests = Vec::new();
    for (dst, src) in parts {
        if dst.len() != src.len() {
            return Err(device_error(format!(
                "upload of {} bytes into a mapped range of {}",
                src.len(),
                dst.len()
            )));
        }
        // Whole pieces as arrays (a `WriteOnly` of an array can move to another thread, one of
        // a slice cannot), the remainder here.
        let (pieces, rest) = dst.into_chunks::<PIECE>();
        let split = pieces.len() * PIECE;
        whole.extend(pieces.into_iter().zip(src[..split].chunks_exact(PIECE)));
        rests.push((rest, &src[split..]));
    }
    whole.into_par_iter().for_each(|(d, s)| {
        let mut d: wgpu::WriteOnly<'_, [u8]> = d.into();
        d.copy_from_slice(s);
    });
    for (mut d, s) in rests {
        d.copy_from_slice(s);
    }
    Ok(())
}

/// Copies `src` into `dst` (of the same length) in pieces of [`PIECE`] bytes on rayon's pool.
fn copy_out(dst: &mut [u8], src: &[u8]) -> Result<()> {
    if dst.len() != src.len() {
        return Err(device_error(format!(
            "download of {} bytes into {}",
            src.len(),
            dst.len()
        )));
    }
    dst.par_chunks_mut(PIECE)
        .zip(src.par_chunks(PIECE))
        .for_each(|(d, s)| d.copy_from_slice(s));
    Ok(())
}

/// Customer-major staging for state uploads and downloads, sized for the largest chunk and
/// allocated on first use.
struct Staging {
    rows: wgpu::Buffer,
    readback: wgpu::Buffer,
}

/// The batched LSTM step on a GPU through wgpu (Vulkan, Metal, DX12).
///
/// Built once with [`GpuBackend::new`] (or through [`crate::select_backend`], which falls back to
/// the CPU). Keeps the recurrent state on the device between ticks, in customers chunks sized to
/// the adapter's limits; each tick uploads only the per-customer features (and, for
/// [`StepBackend::step_pick`], the scales) and downloads only the outputs asked for. See the
/// crate docs for the state contract and the cadence.
pub struct GpuBackend {
    ctx: Context,
    opts: GpuOptions,
    workgroup: u32,
    prep: Option<Prepared>,
    kernels: Option<Kernels>,
    chunks: Vec<Chunk>,
    /// Customers the chunks were planned for.
    planned_n: usize,
    staging: Option<Staging>,
    /// The durable copy must go up before the next step.
    dirty: bool,
    /// The last tick's host-side phases.
    timings: TickTimings,
}

impl std::fmt::Debug for GpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBackend")
            .field("adapter", &self.ctx.desc)
            .field("chunks", &self.chunks.len())
            .field("customers", &self.planned_n)
            .finish_non_exhaustive()
    }
}

/// Which outputs a tick downloads.
#[derive(Clone, Copy)]
enum Want {
    /// Every head output.
    Full,
    /// One decoded value.
    Pick(Pick),
    /// Nothing (benchmarks of the step alone).
    Nothing,
}

impl GpuBackend {
    /// Selects an adapter by `opts.choice` and opens a device.
    ///
    /// # Errors
    /// [`Unavailable`] with the reason when there is no (suitable) adapter or `SB_GPU=cpu`: an
    /// ordinary outcome, on which the caller runs the CPU path.
    pub fn new(opts: GpuOptions) -> std::result::Result<GpuBackend, Unavailable> {
        let ctx = Context::new(&opts.choice)?;
        let workgroup = opts
            .workgroup
            .clamp(1, 1024)
            .min(ctx.limits.max_compute_invocations_per_workgroup)
            .min(ctx.limits.max_compute_workgroup_size_x);
        Ok(GpuBackend {
            ctx,
            opts,
            workgroup,
            prep: None,
            kernels: None,
            chunks: Vec::new(),
            planned_n: 0,
            staging: None,
            dirty: true,
            timings: TickTimings::default(),
        })
    }

    /// The chosen adapter.
    pub fn adapter(&self) -> &AdapterDesc {
        &self.ctx.desc
    }

    /// Customers per chunk for the current model (the adapter's binding and dispatch limits, or
    /// [`GpuOptions::max_binding_bytes`]).
    ///
    /// # Errors
    /// No model set, or a model too big for a single customer to fit a binding.
    pub fn chunk_capacity(&self) -> Result<usize> {
        let p = self
            .prep
            .as_ref()
            .ok_or_else(|| invalid("GPU backend has no model"))?;
        let l = &self.ctx.limits;
        let mut bind = l.max_storage_buffer_binding_size.min(l.max_buffer_size);
        if let Some(m) = self.opts.max_binding_bytes {
            bind = bind.min(m);
        }
        let bind = usize::try_from(bind).unwrap_or(usize::MAX);
        let per = 4 * p.state_dim.max(p.head_dim).max(CUSTOMER_FEATURES + 1);
        let align = self.ld_align();
        let by_state = (bind / (4 * p.state_dim)) / align * align;
        let by_dispatch = l.max_compute_workgroups_per_dimension as usize * self.workgroup as usize;
        let cap = by_state.min(bind / per).min(by_dispatch);
        if cap == 0 {
            return Err(invalid(format!(
                "model state of {} floats per customer does not fit the adapter's {bind}-byte \
                 bindings in chunks of {align}",
                p.state_dim
            )));
        }
        Ok(cap)
    }

    /// The row stride's multiple, in customers: the tiled kernel's tile, else [`LD_ALIGN`]; the
    /// upload pieces start at multiples of it too.
    fn ld_align(&self) -> usize {
        self.kernels.as_ref().map_or(LD_ALIGN, |k| k.align)
    }

    /// Chunks the current plan uses (0 before the first step).
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Whether the step kernel reads the weights from workgroup memory (false when a layer's
    /// weights exceed the adapter's workgroup storage).
    pub fn weights_in_workgroup_memory(&self) -> Option<bool> {
        self.kernels.as_ref().map(|k| k.use_shared)
    }

    /// Whether the top layer's kernel computes the heads ([`GpuOptions::fuse_heads`], where the
    /// tiled kernel's shape allows it); `None` before [`StepBackend::set_model`].
    pub fn heads_fused(&self) -> Option<bool> {
        self.kernels.as_ref().map(|k| k.fused)
    }

    /// The step kernel the current model runs on ([`GpuOptions::kernel`], unless the tiled
    /// kernel's tile does not fit the adapter's workgroup memory); `None` before
    /// [`StepBackend::set_model`].
    pub fn kernel(&self) -> Option<StepKernel> {
        self.kernels.as_ref().map(|k| k.kind)
    }

    /// Where the host's time went in the last [`StepBackend::step`] or
    /// [`StepBackend::step_pick`] (zero before the first).
    pub fn last_timings(&self) -> TickTimings {
        self.timings
    }

    /// Bytes the device reads and writes per customer in one tick (the model behind the
    /// bandwidth figures): every layer's input, `h` and `c` in, `h` and `c` out, the top `h`
    /// again for the heads, and the downloaded outputs (`pick`: one value, its scale and its
    /// usage feature, which the residual head decodes from).
    pub fn bytes_per_customer(&self, pick: bool) -> usize {
        let Some(p) = &self.prep else { return 0 };
        let h = p.hidden;
        let layers = CUSTOMER_FEATURES + (p.layers - 1) * h + 4 * h * p.layers;
        let heads = h + if pick { 3 } else { p.head_dim };
        4 * (layers + heads)
    }

    fn check_device(&self) -> Result<()> {
        if self.ctx.lost.load(Ordering::SeqCst) {
            return Err(device_error("the GPU device was lost"));
        }
        if self.ctx.timed_out.load(Ordering::SeqCst) {
            return Err(device_error(
                "an earlier wait for the GPU ran past its time limit; this backend is not used again",
            ));
        }
        Ok(())
    }

    /// Waits for submission `index` (or the latest), at most [`GpuOptions::wait_timeout`].
    fn wait(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        let timeout = self.opts.wait_timeout;
        match self.ctx.device.poll(wgpu::PollType::Wait {
            submission_index: index,
            timeout,
        }) {
            Ok(_) => Ok(()),
            Err(wgpu::PollError::Timeout) => {
                self.ctx.timed_out.store(true, Ordering::SeqCst);
                let limit = timeout.unwrap_or_default();
                log::error!("shadowbucket-gpu: the GPU did not finish within {limit:?}");
                Err(device_error(format!(
                    "the GPU did not finish within {limit:?} ({}); this backend is not used again",
                    GpuOptions::TIMEOUT_ENV
                )))
            }
            Err(e) => Err(device_error(format!("waiting for the GPU: {e}"))),
        }
    }

    fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self
            .ctx
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self
            .ctx
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let t = f();
        let e1 = pollster::block_on(val.pop());
        let e2 = pollster::block_on(oom.pop());
        match e1.or(e2) {
            Some(e) => Err(device_error(format!("{what}: {e}"))),
            None => Ok(t),
        }
    }

    fn storage(&self, label: &str, data: &[f32]) -> wgpu::Buffer {
        let b = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (4 * data.len().max(1)) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.ctx
            .queue
            .write_buffer(&b, 0, bytemuck::cast_slice(data));
        b
    }

    /// A compute pipeline from WGSL `src`; with `layout`, on that pipeline layout and without
    /// zero-initializing workgroup memory (the step kernels write all they read of it).
    fn pipeline(
        &self,
        label: &str,
        src: String,
        layout: Option<&wgpu::PipelineLayout>,
    ) -> wgpu::ComputePipeline {
        let module = self
            .ctx
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
        self.ctx
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    zero_initialize_workgroup_memory: layout.is_none(),
                    ..Default::default()
                },
                cache: None,
            })
    }

    /// The step kernels' bind group layout (both kernels, every layer): params, weights, bias,
    /// x, state, and for the tiled kernel's fused heads head_w, head_b, scale, out and the
    /// heads' params.
    fn step_bind_layout(&self) -> wgpu::BindGroupLayout {
        let entry = |binding: u32, ty: wgpu::BufferBindingType| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let read = wgpu::BufferBindingType::Storage { read_only: true };
        self.ctx
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("lstm_step"),
                entries: &[
                    entry(0, wgpu::BufferBindingType::Uniform),
                    entry(1, read),
                    entry(2, read),
                    entry(3, read),
                    entry(4, wgpu::BufferBindingType::Storage { read_only: false }),
                    entry(5, read),
                    entry(6, read),
                    entry(7, read),
                    entry(8, wgpu::BufferBindingType::Storage { read_only: false }),
                    entry(9, wgpu::BufferBindingType::Uniform),
                ],
            })
    }

    /// The tiled kernel's shape for each layer, with its weights in workgroup memory when tile
    /// and weights fit the adapter's, else from storage, and the heads fused into the top layer
    /// when asked and the shape allows; `None` when a tile alone does not fit.
    fn tiled_shapes(&self, p: &Prepared) -> Option<Vec<TiledShape>> {
        let l = &self.ctx.limits;
        let limit = u64::from(l.max_compute_workgroup_storage_size);
        // 128-customer tiles only where a binding holds a tile's state
        let bind = self
            .opts
            .max_binding_bytes
            .unwrap_or(u64::MAX)
            .min(l.max_storage_buffer_binding_size)
            .min(l.max_buffer_size);
        let big = 4 * u64::from(TiledShape::MAX_TILE) * p.state_dim as u64 <= bind;
        let workgroup = self
            .opts
            .tiled_workgroup
            .clamp(1, 1024)
            .min(l.max_compute_invocations_per_workgroup)
            .min(l.max_compute_workgroup_size_x)
            .min(if big { u32::MAX } else { 256 });
        // experimental: the fused heads' full outputs through workgroup memory
        let stage_out = self.opts.stage_out;
        let shape = |layer: usize, fuse: bool, workgroup: u32| {
            let mut s = TiledShape {
                hidden: p.hidden as u32,
                customer_features: CUSTOMER_FEATURES as u32,
                workgroup,
                first: layer == 0,
                use_shared: true,
                act_exp: self.opts.activation == Activation::Exp,
                prefetch: true,
                last: false,
                head_dim: p.head_dim as u32,
                stage_out: false,
            };
            s.last = fuse && layer + 1 == p.layers && s.can_fuse_heads();
            s.stage_out = s.last && stage_out && s.head_dim < s.rows();
            if s.last && s.tile_bytes() > limit {
                s.last = false;
            }
            s.use_shared = s.shared_bytes() <= limit;
            (s.workgroup_bytes() <= limit).then_some(s)
        };
        // every layer on one tile size (the state's row stride is a multiple of it): the asked
        // workgroup's, else 64-customer tiles where the larger ones do not fit
        let all = |workgroup: u32| {
            (0..p.layers)
                .map(|layer| shape(layer, self.opts.fuse_heads, workgroup))
                .collect::<Option<Vec<_>>>()
        };
        all(workgroup).or_else(|| all(workgroup.min(256)))
    }

    fn build_kernels(&self, p: &Prepared) -> Result<Kernels> {
        let hv = p.hidden.div_ceil(4);
        let kv0 = CUSTOMER_FEATURES.div_ceil(4);
        let largest = (0..p.layers)
            .map(|l| 4 * p.hidden * (if l == 0 { kv0 } else { hv } + hv))
            .max()
            .unwrap_or(0);
        let use_shared =
            16 * largest as u64 <= u64::from(self.ctx.limits.max_compute_workgroup_storage_size);
        let shape = Shape {
            hidden: p.hidden as u32,
            customer_features: CUSTOMER_FEATURES as u32,
            workgroup: self.workgroup,
            use_shared,
            shared_v4: if use_shared { largest as u32 } else { 1 },
            act_exp: self.opts.activation == Activation::Exp,
            head_dim: p.head_dim as u32,
        };

        let tiled = match self.opts.kernel {
            StepKernel::Simple => None,
            StepKernel::Tiled => {
                let t = self.tiled_shapes(p);
                if t.is_none() {
                    log::warn!(
                        "shadowbucket-gpu: the tiled kernel's tile for H = {} does not fit the \
                         adapter's {} bytes of workgroup memory; using the simple kernel",
                        p.hidden,
                        self.ctx.limits.max_compute_workgroup_storage_size
                    );
                }
                t
            }
        };
        let src = |r: std::result::Result<String, String>| r.map_err(device_error);
        // per layer: the step kernel's source
        let (kind, sources, all_shared, fused) = match &tiled {
            Some(shapes) => (
                StepKernel::Tiled,
                shapes
                    .iter()
                    .map(|t| src(t.source()))
                    .collect::<Result<Vec<_>>>()?,
                shapes.iter().all(|t| t.use_shared),
                shapes.last().is_some_and(|t| t.last),
            ),
            None => (
                StepKernel::Simple,
                vec![src(shape.lstm_step())?; p.layers],
                use_shared,
                false,
            ),
        };
        let align = match &tiled {
            Some(shapes) => shapes[0].tile() as usize,
            None => LD_ALIGN,
        };
        // Every step bind group binds the weights whole (only the customers' buffers are
        // chunked): a model whose weights exceed a binding cannot run here.
        let weight_bytes = 4 * match kind {
            StepKernel::Tiled => p.tiled_weights.len(),
            StepKernel::Simple => p.weights.len(),
        } as u64;
        let l = &self.ctx.limits;
        let bind = l.max_storage_buffer_binding_size.min(l.max_buffer_size);
        if weight_bytes > bind {
            return Err(invalid(format!(
                "the model's weights ({weight_bytes} bytes for H = {} x {} layers) exceed the \
                 adapter's {bind}-byte buffer bindings",
                p.hidden, p.layers
            )));
        }
        let heads_src = src(shape.heads())?;
        let relayout_src = src(shape.relayout())?;
        self.scoped("building the GPU kernels", || {
            let step_layout = self.step_bind_layout();
            let layout = self
                .ctx
                .device
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some("lstm_step"),
                    bind_group_layouts: &[Some(&step_layout)],
                    immediate_size: 0,
                });
            let label = match kind {
                StepKernel::Tiled => "lstm_step_tiled",
                StepKernel::Simple => "lstm_step",
            };
            // one pipeline per distinct source (the middle layers share theirs)
            let mut step: Vec<wgpu::ComputePipeline> = Vec::with_capacity(sources.len());
            for (l, source) in sources.iter().enumerate() {
                let same = (0..l).find(|&e| sources[e] == *source);
                step.push(match same {
                    Some(e) => step[e].clone(),
                    None => self.pipeline(label, source.clone(), Some(&layout)),
                });
            }
            let (weights, w_off) = match kind {
                StepKernel::Tiled => (&p.tiled_weights, &p.tiled_w_off),
                StepKernel::Simple => (&p.weights, &p.w_off),
            };
            Kernels {
                kind,
                use_shared: all_shared,
                align,
                fused,
                step,
                step_layout,
                w_off: w_off.clone(),
                heads: self.pipeline("heads", heads_src, None),
                relayout: self.pipeline("relayout", relayout_src, None),
                weights: self.storage("weights", weights),
                bias: self.storage("bias", &p.bias.concat()),
                head_w: self.storage("head_w", &p.head_w),
                head_b: self.storage("head_b", &p.head_b),
            }
        })
    }

    fn binding(buffer: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset,
            size: NonZeroU64::new(size),
        })
    }

    fn plan(&mut self, n: usize) -> Result<()> {
        self.chunks.clear();
        self.staging = None;
        self.planned_n = n;
        self.dirty = true;
        if n == 0 {
            return Ok(());
        }
        let cap = self.chunk_capacity()?;
        let count = n.div_ceil(cap);
        let size = n.div_ceil(count);
        let (Some(p), Some(k)) = (&self.prep, &self.kernels) else {
            return Err(invalid("GPU backend has no model"));
        };
        let dev = &self.ctx.device;
        let buf = |label: &str, floats: usize, usage: wgpu::BufferUsages| {
            dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (4 * floats.max(1)) as u64,
                usage,
                mapped_at_creation: false,
            })
        };
        use wgpu::BufferUsages as U;
        let layers = p.layers;
        // upload pieces start on whole tiles of the tiled kernel
        let tile = self.ld_align();
        let piece = (self.opts.upload_piece.max(1) as usize).div_ceil(tile) * tile;
        let chunks = self.scoped("allocating GPU buffers", || {
            (0..count)
                .map(|i| {
                    let start = i * size;
                    let cn = size.min(n - start);
                    let ld = cn.div_ceil(tile) * tile;
                    // the whole chunk, then the upload pieces
                    let spans: Vec<(usize, usize)> = std::iter::once((0, cn))
                        .chain((0..cn).step_by(piece).map(|f| (f, piece.min(cn - f))))
                        .collect();
                    // per range: one slot per layer and one for the heads; then the relayout's
                    let params = dev.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("params"),
                        size: SLOT * ((layers as u64 + 1) * spans.len() as u64 + 1),
                        usage: U::UNIFORM | U::COPY_DST,
                        mapped_at_creation: false,
                    });
                    let x = buf("x", cn * CUSTOMER_FEATURES, U::STORAGE | U::COPY_DST);
                    let state = buf("state", p.state_dim * ld, U::STORAGE);
                    let scale = buf("scale", cn, U::STORAGE | U::COPY_DST);
                    let out = buf("out", cn * p.head_dim, U::STORAGE | U::COPY_SRC);
                    let layout = &k.step_layout;
                    let ranges = spans
                        .iter()
                        .enumerate()
                        .map(|(r, &(first, rn))| {
                            let base = SLOT * (layers as u64 + 1) * r as u64;
                            let tiles = rn.div_ceil(tile);
                            let grid = tiles
                                .min(self.opts.tiled_groups.max(1) as usize)
                                .min(self.ctx.limits.max_compute_workgroups_per_dimension as usize)
                                .max(1) as u32;
                            let heads_slot = base + SLOT * layers as u64;
                            let step_groups = (0..layers)
                                .map(|l| {
                                    let sp = StepParams {
                                        n: (first + rn) as u32,
                                        ld: ld as u32,
                                        layer: l as u32,
                                        w_off: k.w_off[l],
                                        b_off: (4 * p.hidden * l) as u32,
                                        start: first as u32,
                                        _pad: [0; 2],
                                    };
                                    let slot = base + SLOT * l as u64;
                                    self.ctx.queue.write_buffer(
                                        &params,
                                        slot,
                                        bytemuck::bytes_of(&sp),
                                    );
                                    dev.create_bind_group(&wgpu::BindGroupDescriptor {
                                        label: Some("lstm_step"),
                                        layout,
                                        entries: &[
                                            wgpu::BindGroupEntry {
                                                binding: 0,
                                                resource: Self::binding(&params, slot, 32),
                                            },
                                            wgpu::BindGroupEntry {
                                                binding: 1,
                                                resource: k.weights.as_entire_binding(),
                                            },
                                            wgpu::BindGroupEntry {
                                                binding: 2,
                                                resource: k.bias.as_entire_binding(),
                                            },
                                            wgpu::BindGroupEntry {
                                                binding: 3,
                                                resource: x.as_entire_binding(),
                                            },
                                            wgpu::BindGroupEntry {
                                                binding: 4,
                                                resource: state.as_entire_binding(),
                                            },
                                            wgpu::BindGroupEntry {
                                                binding: 5,
                                                resource: k.head_w.as_entire_binding(),
                                            },
                                            wgpu::BindGroupEntry {
                                                binding: 6,
                                                resource: k.head_b.as_entire_binding(),
                                            },
                                            wgpu::BindGroupEntry {
                                                binding: 7,
                                                resource: scale.as_entire_binding(),
                                            },
                                            wgpu::BindGroupEntry {
                                                binding: 8,
                                                resource: out.as_entire_binding(),
                                            },
                                            wgpu::BindGroupEntry {
                                                binding: 9,
                                                resource: Self::binding(&params, heads_slot, 32),
                                            },
                                        ],
                                    })
                                })
                                .collect();
                            let heads_group = dev.create_bind_group(&wgpu::BindGroupDescriptor {
                                label: Some("heads"),
                                layout: &k.heads.get_bind_group_layout(0),
                                entries: &[
                                    wgpu::BindGroupEntry {
                                        binding: 0,
                                        resource: Self::binding(&params, heads_slot, 32),
                                    },
                                    wgpu::BindGroupEntry {
                                        binding: 1,
                                        resource: k.head_w.as_entire_binding(),
                                    },
                                    wgpu::BindGroupEntry {
                                        binding: 2,
                                        resource: k.head_b.as_entire_binding(),
                                    },
                                    wgpu::BindGroupEntry {
                                        binding: 3,
                                        resource: state.as_entire_binding(),
                                    },
                                    wgpu::BindGroupEntry {
                                        binding: 4,
                                        resource: scale.as_entire_binding(),
                                    },
                                    wgpu::BindGroupEntry {
                                        binding: 5,
                                        resource: out.as_entire_binding(),
                                    },
                                    wgpu::BindGroupEntry {
                                        binding: 6,
                                        resource: x.as_entire_binding(),
                                    },
                                ],
                            });
                            // the pieces' staging, mapped from the start: the first tick writes
                            // into it at once
                            let io = (r > 0).then(|| Upload {
                                buffer: dev.create_buffer(&wgpu::BufferDescriptor {
                                    label: Some("upload"),
                                    size: (4 * rn * (CUSTOMER_FEATURES + 1)) as u64,
                                    usage: U::MAP_WRITE | U::COPY_SRC,
                                    mapped_at_creation: true,
                                }),
                                map: Arc::new(AtomicU8::new(MAPPED)),
                                readback: buf(
                                    "readback",
                                    rn * p.head_dim,
                                    U::MAP_READ | U::COPY_DST,
                                ),
                            });
                            Range {
                                first,
                                n: rn,
                                grid,
                                heads_slot,
                                step_groups,
                                heads_group,
                                io,
                            }
                        })
                        .collect();
                    Chunk {
                        start,
                        n: cn,
                        ld,
                        params,
                        x,
                        state,
                        scale,
                        out,
                        ranges,
                    }
                })
                .collect::<Vec<_>>()
        })?;
        self.chunks = chunks;
        Ok(())
    }

    fn ensure_staging(&mut self) -> Result<()> {
        if self.staging.is_some() {
            return Ok(());
        }
        let sd = self.prep.as_ref().map_or(1, |p| p.state_dim);
        let most = self.chunks.iter().map(|c| c.n).max().unwrap_or(1);
        let bytes = (4 * sd * most) as u64;
        let dev = &self.ctx.device;
        use wgpu::BufferUsages as U;
        let staging = self.scoped("allocating GPU staging buffers", || Staging {
            rows: dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some("state rows"),
                size: bytes,
                usage: U::STORAGE | U::COPY_DST | U::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some("state readback"),
                size: bytes,
                usage: U::MAP_READ | U::COPY_DST,
                mapped_at_creation: false,
            }),
        })?;
        self.staging = Some(staging);
        Ok(())
    }

    /// Encodes relayout of chunk `i` in direction `dir` (0 up, 1 down).
    fn encode_relayout(&self, enc: &mut wgpu::CommandEncoder, i: usize, dir: u32) {
        let (Some(k), Some(st), Some(p)) = (&self.kernels, &self.staging, &self.prep) else {
            return;
        };
        let c = &self.chunks[i];
        let rp = RelayoutParams {
            n: c.n as u32,
            ld: c.ld as u32,
            rows: p.state_dim as u32,
            dir,
        };
        let slot = SLOT * ((p.layers as u64 + 1) * c.ranges.len() as u64);
        self.ctx
            .queue
            .write_buffer(&c.params, slot, bytemuck::bytes_of(&rp));
        let group = self
            .ctx
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("relayout"),
                layout: &k.relayout.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: Self::binding(&c.params, slot, 16),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: c.state.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: Self::binding(&st.rows, 0, (4 * p.state_dim * c.n) as u64),
                    },
                ],
            });
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("relayout"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&k.relayout);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups((c.n as u32).div_ceil(self.workgroup), 1, 1);
    }

    /// Uploads the durable state (customer-major) into every chunk's device copy.
    fn upload_state(&mut self, state: &[f32]) -> Result<()> {
        self.ensure_staging()?;
        let sd = self.prep.as_ref().map_or(0, |p| p.state_dim);
        self.scoped("uploading the state", || {
            for i in 0..self.chunks.len() {
                let c = &self.chunks[i];
                let Some(st) = &self.staging else { return };
                self.ctx.queue.write_buffer(
                    &st.rows,
                    0,
                    bytemuck::cast_slice(&state[c.start * sd..(c.start + c.n) * sd]),
                );
                let mut enc = self.ctx.device.create_command_encoder(&Default::default());
                self.encode_relayout(&mut enc, i, 0);
                self.ctx.queue.submit([enc.finish()]);
            }
        })?;
        self.dirty = false;
        Ok(())
    }

    /// Maps `buffers` (each with the byte count to read), waits, and hands each mapped range to
    /// `take` in order.
    fn read_back(
        &self,
        buffers: &[(&wgpu::Buffer, u64)],
        mut take: impl FnMut(usize, &[u8]),
    ) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        for (i, &(b, len)) in buffers.iter().enumerate() {
            let tx = tx.clone();
            b.map_async(wgpu::MapMode::Read, 0..len, move |r| {
                let _ = tx.send((i, r));
            });
        }
        drop(tx);
        self.wait(None)?;
        let mut ok = vec![false; buffers.len()];
        for (i, r) in rx.iter() {
            r.map_err(|e| device_error(format!("mapping a GPU buffer: {e}")))?;
            ok[i] = true;
        }
        if ok.iter().any(|o| !o) {
            return Err(device_error("a GPU buffer was never mapped"));
        }
        for (i, &(b, len)) in buffers.iter().enumerate() {
            {
                let view = b
                    .get_mapped_range(0..len)
                    .map_err(|e| device_error(format!("reading a GPU buffer: {e}")))?;
                take(i, &view);
            }
            b.unmap();
        }
        self.check_device()
    }

    fn run(
        &mut self,
        x: &[f32],
        glob: &[f32],
        scale: Option<&[f32]>,
        state: &[f32],
        want: Want,
        out: &mut [f32],
    ) -> Result<()> {
        let started = Instant::now();
        self.check_device()?;
        let (global, sd, hd) = match &self.prep {
            Some(p) => (p.global, p.state_dim, p.head_dim),
            None => return Err(invalid("GPU backend has no model")),
        };
        let cf = CUSTOMER_FEATURES;
        if !x.len().is_multiple_of(cf) {
            return Err(invalid(format!(
                "features have {} values, not a multiple of {cf}",
                x.len()
            )));
        }
        let n = x.len() / cf;
        let check = |what: &'static str, got: usize, expected: usize| {
            if got == expected {
                Ok(())
            } else {
                Err(Error::LengthMismatch {
                    what,
                    got,
                    expected,
                })
            }
        };
        check("global features", glob.len(), global)?;
        check("state", state.len(), n * sd)?;
        let per_out = match want {
            Want::Full => hd,
            Want::Pick(pk) => {
                check("pick's model head outputs", pk.head_dim(), hd)?;
                1
            }
            Want::Nothing => 0,
        };
        if !matches!(want, Want::Nothing) {
            check("outputs", out.len(), n * per_out)?;
        }
        if let Some(s) = scale {
            check("scales", s.len(), n)?;
        }
        if n != self.planned_n || (self.chunks.is_empty() && n > 0) {
            self.plan(n)?;
        }
        if n == 0 {
            return Ok(());
        }
        if self.dirty {
            self.upload_state(state)?;
        }
        match self.tick(x, glob, scale, want, per_out, out) {
            Ok(mut t) => {
                t.total = started.elapsed();
                t.submit_gpu = t.total.saturating_sub(t.copy_in + t.copy_out);
                self.timings = t;
                Ok(())
            }
            Err(e) => {
                // Buffers may be left mapped, or waiting to be: plan afresh on the next call, from
                // the durable copy (the device's may be half a tick ahead).
                self.chunks.clear();
                self.staging = None;
                self.planned_n = 0;
                self.dirty = true;
                Err(e)
            }
        }
    }

    /// Asks for upload piece `u` to be mapped for writing (answered by a later poll).
    fn map_upload(u: &Upload) {
        u.map.store(PENDING, Ordering::SeqCst);
        let flag = u.map.clone();
        u.buffer.map_async(wgpu::MapMode::Write, .., move |r| {
            flag.store(if r.is_ok() { MAPPED } else { UNMAPPED }, Ordering::SeqCst);
        });
    }

    /// Makes sure every upload piece is mapped (they are, after a completed tick: each is mapped
    /// again as soon as its copy is submitted).
    fn ready_uploads(&self) -> Result<()> {
        let uploads = || {
            self.chunks
                .iter()
                .flat_map(|c| c.ranges.iter().filter_map(|r| r.io.as_ref()))
        };
        let mapped = |u: &Upload| u.map.load(Ordering::SeqCst) == MAPPED;
        if uploads().all(mapped) {
            return Ok(());
        }
        for u in uploads() {
            if u.map.load(Ordering::SeqCst) == UNMAPPED {
                Self::map_upload(u);
            }
        }
        self.wait(None)?;
        if uploads().all(mapped) {
            Ok(())
        } else {
            Err(device_error("a GPU upload buffer could not be mapped"))
        }
    }

    /// Encodes the step of range `r`: every layer, then the heads unless fused (their
    /// parameters written beforehand), in one compute pass, or with `timestamps` one pass per
    /// dispatch writing its begin and end at `timestamps.1 ..` (layers, then the heads).
    fn encode_range(
        &self,
        enc: &mut wgpu::CommandEncoder,
        r: &Range,
        timestamps: Option<(&wgpu::QuerySet, u32)>,
    ) {
        let Some(k) = &self.kernels else { return };
        let groups = (r.n as u32).div_ceil(self.workgroup);
        let step_groups = match k.kind {
            StepKernel::Tiled => r.grid,
            StepKernel::Simple => groups,
        };
        let mut pass_no = 0u32;
        let mut begin = |enc: &mut wgpu::CommandEncoder| -> wgpu::ComputePass<'static> {
            let tw = timestamps.map(|(set, base)| wgpu::ComputePassTimestampWrites {
                query_set: set,
                beginning_of_pass_write_index: Some(base + 2 * pass_no),
                end_of_pass_write_index: Some(base + 2 * pass_no + 1),
            });
            pass_no += 1;
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("tick"),
                timestamp_writes: tw,
            })
            .forget_lifetime()
        };
        let mut pass = begin(enc);
        for (l, g) in r.step_groups.iter().enumerate() {
            if l > 0 && timestamps.is_some() {
                drop(pass);
                pass = begin(enc);
            }
            pass.set_pipeline(&k.step[l]);
            pass.set_bind_group(0, g, &[]);
            pass.dispatch_workgroups(step_groups, 1, 1);
        }
        if k.fused {
            return;
        }
        if timestamps.is_some() {
            drop(pass);
            pass = begin(enc);
        }
        pass.set_pipeline(&k.heads);
        pass.set_bind_group(0, &r.heads_group, &[]);
        pass.dispatch_workgroups(groups, 1, 1);
    }

    /// One tick on the planned chunks, piece by piece: copy the piece's features (and scales)
    /// into its mapped upload buffer and submit the copy into the device buffers, every layer
    /// and the heads on the piece's customers, and the copy of its outputs into its readback
    /// buffer. The device copies and computes one piece while the host fills the next. Then, in
    /// order, wait for each piece and copy its outputs out of the mapped readback buffer. Without
    /// transfers (`Want::Nothing`), one dispatch set per chunk.
    fn tick(
        &self,
        x: &[f32],
        glob: &[f32],
        scale: Option<&[f32]>,
        want: Want,
        per_out: usize,
        out: &mut [f32],
    ) -> Result<TickTimings> {
        let (Some(p), Some(k)) = (&self.prep, &self.kernels) else {
            return Err(invalid("GPU backend has no model"));
        };
        let mut tm = TickTimings::default();
        let cf = CUSTOMER_FEATURES;
        let upload = !matches!(want, Want::Nothing);
        if upload {
            self.ready_uploads()?;
        }
        let q = &self.ctx.queue;
        let bias = p.bias_for(glob);
        let (mode, first, quantile) = match want {
            Want::Pick(pk) => (1, 4 * pk.horizon() as u32, pk.quantile() as u32),
            _ => (0, 0, 0),
        };
        let top = 2 * (p.layers - 1) * p.hidden;
        let (tx, rx) = mpsc::channel();
        // per (chunk, range) submitted with a readback: its submission
        let mut subs = Vec::new();
        self.scoped("running the step", || -> Result<()> {
            q.write_buffer(&k.bias, 0, bytemuck::cast_slice(&bias));
            for (i, c) in self.chunks.iter().enumerate() {
                let ranges: Vec<(usize, &Range)> = if upload {
                    c.ranges.iter().enumerate().skip(1).collect()
                } else {
                    vec![(0, &c.ranges[0])]
                };
                for &(j, r) in &ranges {
                    let hp = HeadsParams {
                        n: (r.first + r.n) as u32,
                        ld: c.ld as u32,
                        top_row: top as u32,
                        head_dim: p.head_dim as u32,
                        mode,
                        first,
                        quantile,
                        start: r.first as u32,
                    };
                    q.write_buffer(&c.params, r.heads_slot, bytemuck::bytes_of(&hp));
                    let mut enc = self.ctx.device.create_command_encoder(&Default::default());
                    let io = r.io.as_ref().filter(|_| upload);
                    let xb = 4 * r.n * cf;
                    if let Some(u) = io {
                        let a = c.start + r.first;
                        let t = Instant::now();
                        {
                            let mut view = u
                                .buffer
                                .get_mapped_range_mut(..)
                                .map_err(|e| device_error(format!("writing a GPU buffer: {e}")))?;
                            let (dx, ds) = view.slice(..).split_at(xb);
                            let mut parts =
                                vec![(dx, bytemuck::cast_slice(&x[a * cf..(a + r.n) * cf]))];
                            if let Some(s) = scale {
                                parts.push((ds, bytemuck::cast_slice(&s[a..a + r.n])));
                            }
                            copy_in(parts)?;
                        }
                        u.buffer.unmap();
                        u.map.store(UNMAPPED, Ordering::SeqCst);
                        tm.copy_in += t.elapsed();
                        enc.copy_buffer_to_buffer(
                            &u.buffer,
                            0,
                            &c.x,
                            (4 * r.first * cf) as u64,
                            xb as u64,
                        );
                        if scale.is_some() {
                            enc.copy_buffer_to_buffer(
                                &u.buffer,
                                xb as u64,
                                &c.scale,
                                (4 * r.first) as u64,
                                (4 * r.n) as u64,
                            );
                        }
                    }
                    self.encode_range(&mut enc, r, None);
                    let len = (4 * r.n * per_out) as u64;
                    if let Some(u) = io.filter(|_| per_out > 0) {
                        enc.copy_buffer_to_buffer(
                            &c.out,
                            (4 * r.first * per_out) as u64,
                            &u.readback,
                            0,
                            len,
                        );
                    }
                    let sub = q.submit([enc.finish()]);
                    if let Some(u) = io {
                        // mapped again once the device has copied it, for the next tick
                        Self::map_upload(u);
                        if per_out > 0 {
                            let tx = tx.clone();
                            u.readback
                                .map_async(wgpu::MapMode::Read, 0..len, move |res| {
                                    let _ = tx.send(((i, j), res));
                                });
                            subs.push(((i, j), sub));
                        }
                    }
                }
            }
            Ok(())
        })??;
        drop(tx);
        if subs.is_empty() {
            self.wait(None)?;
            self.check_device()?;
            return Ok(tm);
        }
        let mut mapped = std::collections::HashMap::new();
        for ((i, j), sub) in subs {
            // this piece's outputs come out while the device runs the later ones
            self.wait(Some(sub))?;
            mapped.extend(rx.try_iter());
            if !mapped.contains_key(&(i, j)) {
                self.wait(None)?;
                mapped.extend(rx.try_iter());
            }
            match mapped.remove(&(i, j)) {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(device_error(format!("mapping a GPU buffer: {e}"))),
                None => return Err(device_error("a GPU buffer was never mapped")),
            }
            let (c, r) = (&self.chunks[i], &self.chunks[i].ranges[j]);
            let Some(u) = &r.io else {
                return Err(device_error("a piece without staging"));
            };
            let len = 4 * r.n * per_out;
            let a = c.start + r.first;
            let t = Instant::now();
            {
                let view = u
                    .readback
                    .get_mapped_range(0..len as u64)
                    .map_err(|e| device_error(format!("reading a GPU buffer: {e}")))?;
                copy_out(
                    bytemuck::cast_slice_mut(&mut out[a * per_out..(a + r.n) * per_out]),
                    &view,
                )?;
            }
            u.readback.unmap();
            tm.copy_out += t.elapsed();
        }
        self.check_device()?;
        Ok(tm)
    }

    /// Runs `ticks` device steps (every layer and the heads, no uploads or downloads) on the
    /// resident state and waits for them: the kernel time of a tick, for benchmarks. Uses the
    /// features already on the device; the first call after a model or size change needs a
    /// [`StepBackend::step`] first.
    ///
    /// # Errors
    /// No model or no planned customers, or a device failure.
    pub fn bench_device_steps(
        &mut self,
        ticks: u32,
        glob: &[f32],
        state: &[f32],
    ) -> Result<Duration> {
        if self.chunks.is_empty() {
            return Err(invalid("no customers on the device yet: run a step first"));
        }
        let x = vec![0f32; self.planned_n * CUSTOMER_FEATURES];
        let t = Instant::now();
        for _ in 0..ticks {
            self.run(&x, glob, None, state, Want::Nothing, &mut [])?;
        }
        Ok(t.elapsed())
    }

    /// Times each kernel of one device step (every layer and the heads, with every output, or
    /// with `pick` the one decoded value; state resident, no transfers, the whole chunk per
    /// dispatch as [`Self::bench_device_steps`]) with
    /// timestamp queries, one compute pass per dispatch: `(label, milliseconds)` summed over the
    /// chunks, for `layer0`, `layer1`, ..., `heads` (absent where the top layer computes them,
    /// [`GpuOptions::fuse_heads`]), and `span` (first begin to last end). `None` where the device
    /// has no timestamp queries.
    ///
    /// # Errors
    /// No model or no planned customers, or a device failure.
    pub fn profile_device_step(
        &mut self,
        glob: &[f32],
        pick: Option<Pick>,
    ) -> Result<Option<Vec<(String, f64)>>> {
        let dev = &self.ctx.device;
        if !dev.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Ok(None);
        }
        if self.chunks.is_empty() {
            return Err(invalid("no customers on the device yet: run a step first"));
        }
        let (Some(p), Some(k)) = (&self.prep, &self.kernels) else {
            return Err(invalid("GPU backend has no model"));
        };
        if glob.len() != p.global {
            return Err(Error::LengthMismatch {
                what: "global features",
                got: glob.len(),
                expected: p.global,
            });
        }
        if let Some(pk) = pick
            && pk.head_dim() != p.head_dim
        {
            return Err(Error::LengthMismatch {
                what: "pick's model head outputs",
                got: pk.head_dim(),
                expected: p.head_dim,
            });
        }
        // a begin and an end per layer, and per heads pass unless fused
        let per = 2 * (p.layers as u32 + u32::from(!k.fused));
        let count = per * self.chunks.len() as u32;
        let bytes = 8 * u64::from(count);
        use wgpu::BufferUsages as U;
        let (set, resolve, read) = self.scoped("profiling the step", || {
            let set = dev.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count,
            });
            let buffer = |usage| {
                dev.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("profile"),
                    size: bytes,
                    usage,
                    mapped_at_creation: false,
                })
            };
            let resolve = buffer(U::QUERY_RESOLVE | U::COPY_SRC);
            let read = buffer(U::MAP_READ | U::COPY_DST);
            let q = &self.ctx.queue;
            q.write_buffer(&k.bias, 0, bytemuck::cast_slice(&p.bias_for(glob)));
            let mut enc = dev.create_command_encoder(&Default::default());
            for (i, c) in self.chunks.iter().enumerate() {
                let r = &c.ranges[0];
                let (mode, first, quantile) = match pick {
                    Some(pk) => (1, 4 * pk.horizon() as u32, pk.quantile() as u32),
                    None => (0, 0, 0),
                };
                let hp = HeadsParams {
                    n: (r.first + r.n) as u32,
                    ld: c.ld as u32,
                    top_row: (2 * (p.layers - 1) * p.hidden) as u32,
                    head_dim: p.head_dim as u32,
                    mode,
                    first,
                    quantile,
                    start: r.first as u32,
                };
                q.write_buffer(&c.params, r.heads_slot, bytemuck::bytes_of(&hp));
                self.encode_range(&mut enc, r, Some((&set, i as u32 * per)));
            }
            enc.resolve_query_set(&set, 0..count, &resolve, 0);
            enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, bytes);
            q.submit([enc.finish()]);
            (set, resolve, read)
        })?;
        let mut stamps = Vec::new();
        self.read_back(&[(&read, bytes)], |_, b| {
            stamps = bytemuck::pod_collect_to_vec::<u8, u64>(b);
        })?;
        drop((set, resolve));
        let ns = f64::from(self.ctx.queue.get_timestamp_period());
        let ms = |t: u64| t as f64 * ns / 1e6;
        let mut out: Vec<(String, f64)> = (0..p.layers)
            .map(|l| format!("layer{l}"))
            .chain((!k.fused).then(|| "heads".to_string()))
            .map(|l| (l, 0.0))
            .collect();
        for chunk in stamps.chunks_exact(per as usize) {
            for (d, pair) in out.iter_mut().zip(chunk.chunks_exact(2)) {
                d.1 += ms(pair[1].saturating_sub(pair[0]));
            }
        }
        let first = stamps.iter().step_by(2).min().copied().unwrap_or(0);
        let last = stamps.iter().skip(1).step_by(2).max().copied().unwrap_or(0);
        out.push(("span".into(), ms(last.saturating_sub(first))));
        Ok(Some(out))
    }
}

impl StepBackend for GpuBackend {
    fn name(&self) -> String {
        format!("gpu: {} ({})", self.ctx.desc.name, self.ctx.desc.backend)
    }

    fn set_model(&mut self, model: &LstmModel) -> Result<()> {
        model.validate()?;
        self.check_device()?;
        let prep = Prepared::new(model);
        let kernels = self.build_kernels(&prep)?;
        self.prep = Some(prep);
        self.kernels = Some(kernels);
        self.chunks.clear();
        self.staging = None;
        self.planned_n = 0;
        self.dirty = true;
        Ok(())
    }

    fn step(&mut self, x: &[f32], glob: &[f32], state: &mut [f32], out: &mut [f32]) -> Result<()> {
        self.run(x, glob, None, state, Want::Full, out)
    }

    fn step_pick(
        &mut self,
        x: &[f32],
        glob: &[f32],
        scale: &[f32],
        state: &mut [f32],
        pick: Pick,
        out: &mut [f32],
    ) -> Result<()> {
        if scale.len() * CUSTOMER_FEATURES != x.len() {
            return Err(Error::LengthMismatch {
                what: "scales",
                got: scale.len(),
                expected: x.len() / CUSTOMER_FEATURES,
            });
        }
        self.run(x, glob, Some(scale), state, Want::Pick(pick), out)
    }

    fn invalidate(&mut self) {
        self.dirty = true;
    }

    fn sync_state(&mut self, state: &mut [f32]) -> Result<()> {
        self.check_device()?;
        if self.dirty || self.chunks.is_empty() {
            // The durable copy is already the truth.
            return Ok(());
        }
        let sd = self.prep.as_ref().map_or(0, |p| p.state_dim);
        if state.len() != self.planned_n * sd {
            return Err(Error::LengthMismatch {
                what: "state",
                got: state.len(),
                expected: self.planned_n * sd,
            });
        }
        self.ensure_staging()?;
        for i in 0..self.chunks.len() {
            let c = &self.chunks[i];
            let Some(st) = &self.staging else {
                return Err(device_error("no staging buffer"));
            };
            let len = (4 * sd * c.n) as u64;
            self.scoped("downloading the state", || {
                let mut enc = self.ctx.device.create_command_encoder(&Default::default());
                self.encode_relayout(&mut enc, i, 1);
                enc.copy_buffer_to_buffer(&st.rows, 0, &st.readback, 0, len);
                self.ctx.queue.submit([enc.finish()]);
            })?;
            let dst = &mut state[c.start * sd..(c.start + c.n) * sd];
            self.read_back(&[(&st.readback, len)], |_, bytes| {
                dst.copy_from_slice(bytemuck::cast_slice(bytes));
            })?;
        }
        Ok(())
    }

    fn sync_every(&self) -> u32 {
        self.opts.sync_every.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::{Activation, StepKernel};

    #[test]
    fn option_names_parse_back() {
        for k in [StepKernel::Tiled, StepKernel::Simple] {
            assert_eq!(StepKernel::parse(k.name()), Some(k));
            assert_eq!(
                StepKernel::parse(&format!(" {} ", k.name().to_uppercase())),
                Some(k)
            );
        }
        for a in [Activation::Exp, Activation::Rational] {
            assert_eq!(Activation::parse(a.name()), Some(a));
            assert_eq!(
                Activation::parse(&format!("\t{}\n", a.name().to_uppercase())),
                Some(a)
            );
        }
        assert_eq!(StepKernel::parse("tile"), None);
        assert_eq!(StepKernel::parse(""), None);
        assert_eq!(Activation::parse("tanh"), None);
        assert_ne!(StepKernel::Tiled.name(), StepKernel::Simple.name());
        assert_ne!(Activation::Exp.name(), Activation::Rational.name());
    }
}
