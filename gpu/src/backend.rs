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

/// Which WGSL kernel runs the LSTM layers (the heads and the relayout are the same for both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StepKernel {
    /// `shaders/lstm_step_tiled.wgsl` (the default): a workgroup takes tiles of 64 customers,
    /// each invocation computes 2 units × 4 gates × 4 customers in registers, the layer's weights
    /// in workgroup memory once per (persistent) workgroup. Falls back to
    /// [`StepKernel::Simple`] when a model's tile does not fit the adapter's workgroup memory.
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
        match s.trim() {
            v if v.eq_ignore_ascii_case("tiled") => Some(StepKernel::Tiled),
            v if v.eq_ignore_ascii_case("simple") => Some(StepKernel::Simple),
            _ => None,
        }
    }

    /// `"tiled"` or `"simple"`.
    pub fn name(self) -> &'static str {
        match self {
            StepKernel::Tiled => "tiled",
            StepKernel::Simple => "simple",
        }
    }
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
    /// Invocations per workgroup (capped by the adapter), default 256.
    pub workgroup: u32,
    /// The step kernel (default [`StepKernel::Tiled`], or `SB_GPU_KERNEL`).
    pub kernel: StepKernel,
    /// Tiled kernel: workgroups per layer dispatch at most (persistent: each copies the weights
    /// once, then takes tiles from an atomic counter until none is left); default
    /// [`GpuOptions::DEFAULT_TILED_GROUPS`], or `SB_GPU_TILED_GROUPS`; capped by the tiles and
    /// the adapter's dispatch limit. Should be at least what the device keeps resident at once
    /// (more only adds workgroups that find no tile left).
    pub tiled_groups: u32,
    /// Customers per upload piece: each chunk's features and scales go up in pieces of this
    /// many, the device copying one while the host fills the next; default
    /// [`GpuOptions::DEFAULT_UPLOAD_PIECE`] (16 MiB), or `SB_GPU_UPLOAD_PIECE`.
    pub upload_piece: u32,
}

impl GpuOptions {
    /// Default ticks between state write-backs: 10 (ten minutes at the default 60 s interval).
    pub const DEFAULT_SYNC_EVERY: u32 = 10;
    /// The environment variable that overrides [`GpuOptions::sync_every`].
    pub const SYNC_ENV: &'static str = "SB_GPU_SYNC_EVERY";
    /// Default [`GpuOptions::tiled_groups`]: a few workgroups per streaming multiprocessor (or
    /// compute unit) of a large GPU (an H200 has 132 SMs, each holding 3 to 8 of these
    /// 256-invocation workgroups depending on registers and workgroup memory).
    pub const DEFAULT_TILED_GROUPS: u32 = 1024;
    /// The environment variable that overrides [`GpuOptions::tiled_groups`].
    pub const TILED_GROUPS_ENV: &'static str = "SB_GPU_TILED_GROUPS";
    /// Default [`GpuOptions::upload_piece`]: 512Ki customers, 16 MiB of features and scales.
    pub const DEFAULT_UPLOAD_PIECE: u32 = 1 << 19;
    /// The environment variable that overrides [`GpuOptions::upload_piece`].
    pub const UPLOAD_PIECE_ENV: &'static str = "SB_GPU_UPLOAD_PIECE";

    /// The defaults, with `SB_GPU`, `SB_GPU_SYNC_EVERY`, `SB_GPU_KERNEL`, `SB_GPU_TILED_GROUPS`
    /// and `SB_GPU_UPLOAD_PIECE` applied (a value that does not parse is ignored, with a
    /// warning).
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
        GpuOptions {
            choice: AdapterChoice::from_env(),
            sync_every: positive(Self::SYNC_ENV).unwrap_or(Self::DEFAULT_SYNC_EVERY),
            max_binding_bytes: None,
            workgroup: 256,
            kernel,
            tiled_groups: positive(Self::TILED_GROUPS_ENV).unwrap_or(Self::DEFAULT_TILED_GROUPS),
            upload_piece: positive(Self::UPLOAD_PIECE_ENV).unwrap_or(Self::DEFAULT_UPLOAD_PIECE),
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

/// Stride of the feature-major state rows, in floats: customers rounded up so that every row
/// starts on a 256-byte boundary and holds whole tiles of the tiled kernel.
const LD_ALIGN: usize = 64;
const _: () = assert!(LD_ALIGN.is_multiple_of(TiledShape::TILE as usize));
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
    /// The step for layer 0 and for the later layers (the same pipeline for the simple kernel);
    /// both on the step bind group layout.
    step_first: wgpu::ComputePipeline,
    step_rest: wgpu::ComputePipeline,
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
    readback: wgpu::Buffer,
    /// Host-visible upload staging in pieces of at most [`GpuOptions::upload_piece`] customers,
    /// kept mapped between ticks.
    uploads: Vec<Upload>,
    /// Tiled kernel: workgroups per layer dispatch.
    grid: u32,
    /// Tiled kernel: per layer, the next tile to take (zeroed before every tick's dispatches).
    counters: wgpu::Buffer,
    step_groups: Vec<wgpu::BindGroup>,
    heads_group: wgpu::BindGroup,
}

/// One piece of a chunk's upload staging: `[x: n x CF | scale: n]` of customers
/// `first .. first + n` of the chunk, in a host-visible buffer (`MAP_WRITE | COPY_SRC`).
struct Upload {
    /// First customer, relative to the chunk.
    first: usize,
    /// Customers.
    n: usize,
    buffer: wgpu::Buffer,
    /// `buffer`'s mapping: [`UNMAPPED`], [`PENDING`] or [`MAPPED`] (set by the map callback).
    map: Arc<AtomicU8>,
}

/// [`Upload::map`]: not mapped.
const UNMAPPED: u8 = 0;
/// [`Upload::map`]: `map_async` asked, not yet answered.
const PENDING: u8 = 1;
/// [`Upload::map`]: mapped for writing.
const MAPPED: u8 = 2;

/// Bytes per parallel piece of a host copy into or out of mapped memory.
const PIECE: usize = 2 << 20;

/// Copies `src` into `dst` (of the same length) in pieces of [`PIECE`] bytes on rayon's pool.
fn copy_in(dst: wgpu::WriteOnly<'_, [u8]>, src: &[u8]) -> Result<()> {
    if dst.len() != src.len() {
        return Err(device_error(format!(
            "upload of {} bytes into a mapped range of {}",
            src.len(),
            dst.len()
        )));
    }
    // Whole pieces as arrays (a `WriteOnly` of an array can move to another thread, one of a
    // slice cannot), the remainder here.
    let (whole, mut rest) = dst.into_chunks::<PIECE>();
    let split = whole.len() * PIECE;
    let pieces: Vec<wgpu::WriteOnly<'_, [u8; PIECE]>> = whole.into_iter().collect();
    pieces
        .into_par_iter()
        .zip(src[..split].par_chunks_exact(PIECE))
        .for_each(|(d, s)| {
            let mut d: wgpu::WriteOnly<'_, [u8]> = d.into();
            d.copy_from_slice(s);
        });
    rest.copy_from_slice(&src[split..]);
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
        let by_state = (bind / (4 * p.state_dim)) / LD_ALIGN * LD_ALIGN;
        let by_dispatch = l.max_compute_workgroups_per_dimension as usize * self.workgroup as usize;
        let cap = by_state.min(bind / per).min(by_dispatch);
        if cap == 0 {
            return Err(invalid(format!(
                "model state of {} floats per customer does not fit the adapter's {bind}-byte \
                 bindings in chunks of {LD_ALIGN}",
                p.state_dim
            )));
        }
        Ok(cap)
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
        Ok(())
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
    /// x, state, and the tiled kernel's tile counters.
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
                    entry(5, wgpu::BufferBindingType::Storage { read_only: false }),
                ],
            })
    }

    /// The tiled kernel's shapes for layer 0 and the later layers, each with its weights in
    /// workgroup memory when tile and weights fit the adapter's, else from storage; `None` when
    /// a tile alone does not fit.
    fn tiled_shapes(&self, p: &Prepared) -> Option<(TiledShape, Option<TiledShape>)> {
        let limit = u64::from(self.ctx.limits.max_compute_workgroup_storage_size);
        let shape = |first: bool| {
            let mut s = TiledShape {
                hidden: p.hidden as u32,
                customer_features: CUSTOMER_FEATURES as u32,
                workgroup: self.workgroup,
                first,
                use_shared: true,
            };
            s.use_shared = s.shared_bytes() <= limit;
            (s.tile_bytes() <= limit).then_some(s)
        };
        let first = shape(true)?;
        if p.layers > 1 {
            Some((first, Some(shape(false)?)))
        } else {
            Some((first, None))
        }
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
        let (kind, first_src, rest_src, all_shared) = match &tiled {
            Some((first, rest)) => (
                StepKernel::Tiled,
                src(first.source())?,
                rest.map(|r| r.source()).transpose().map_err(device_error)?,
                first.use_shared && rest.is_none_or(|r| r.use_shared),
            ),
            None => (
                StepKernel::Simple,
                src(shape.lstm_step())?,
                None,
                use_shared,
            ),
        };
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
            let step_first = self.pipeline(label, first_src, Some(&layout));
            let step_rest = match rest_src {
                Some(r) => self.pipeline(label, r, Some(&layout)),
                None => step_first.clone(),
            };
            let (weights, w_off) = match kind {
                StepKernel::Tiled => (&p.tiled_weights, &p.tiled_w_off),
                StepKernel::Simple => (&p.weights, &p.w_off),
            };
            Kernels {
                kind,
                use_shared: all_shared,
                step_first,
                step_rest,
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
        let chunks = self.scoped("allocating GPU buffers", || {
            (0..count)
                .map(|i| {
                    let start = i * size;
                    let cn = size.min(n - start);
                    let ld = cn.div_ceil(LD_ALIGN) * LD_ALIGN;
                    let params = dev.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("params"),
                        size: SLOT * (p.layers as u64 + 2),
                        usage: U::UNIFORM | U::COPY_DST,
                        mapped_at_creation: false,
                    });
                    let x = buf("x", cn * CUSTOMER_FEATURES, U::STORAGE | U::COPY_DST);
                    let state = buf("state", p.state_dim * ld, U::STORAGE);
                    let scale = buf("scale", cn, U::STORAGE | U::COPY_DST);
                    let out = buf("out", cn * p.head_dim, U::STORAGE | U::COPY_SRC);
                    let readback = buf("readback", cn * p.head_dim, U::MAP_READ | U::COPY_DST);
                    // mapped from the start: the first tick writes into them at once
                    let piece = self.opts.upload_piece.max(1) as usize;
                    let uploads = (0..cn)
                        .step_by(piece)
                        .map(|first| {
                            let un = piece.min(cn - first);
                            Upload {
                                first,
                                n: un,
                                buffer: dev.create_buffer(&wgpu::BufferDescriptor {
                                    label: Some("upload"),
                                    size: (4 * un * (CUSTOMER_FEATURES + 1)) as u64,
                                    usage: U::MAP_WRITE | U::COPY_SRC,
                                    mapped_at_creation: true,
                                }),
                                map: Arc::new(AtomicU8::new(MAPPED)),
                            }
                        })
                        .collect();
                    let counters = buf("counters", p.layers, U::STORAGE | U::COPY_DST);
                    let tiles = cn.div_ceil(TiledShape::TILE as usize);
                    let grid = tiles
                        .min(self.opts.tiled_groups.max(1) as usize)
                        .min(self.ctx.limits.max_compute_workgroups_per_dimension as usize)
                        .max(1) as u32;
                    for l in 0..p.layers {
                        let sp = StepParams {
                            n: cn as u32,
                            ld: ld as u32,
                            layer: l as u32,
                            w_off: k.w_off[l],
                            b_off: (4 * p.hidden * l) as u32,
                            _pad: [0; 3],
                        };
                        self.ctx.queue.write_buffer(
                            &params,
                            SLOT * l as u64,
                            bytemuck::bytes_of(&sp),
                        );
                    }
                    let layout = &k.step_layout;
                    let step_groups = (0..p.layers)
                        .map(|l| {
                            dev.create_bind_group(&wgpu::BindGroupDescriptor {
                                label: Some("lstm_step"),
                                layout,
                                entries: &[
                                    wgpu::BindGroupEntry {
                                        binding: 0,
                                        resource: Self::binding(&params, SLOT * l as u64, 32),
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
                                        resource: counters.as_entire_binding(),
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
                                resource: Self::binding(&params, SLOT * p.layers as u64, 32),
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
                    Chunk {
                        start,
                        n: cn,
                        ld,
                        params,
                        x,
                        state,
                        scale,
                        out,
                        readback,
                        uploads,
                        grid,
                        counters,
                        step_groups,
                        heads_group,
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
        let slot = SLOT * (p.layers as u64 + 1);
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
        self.ctx
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| device_error(format!("waiting for the GPU: {e}")))?;
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
        let uploads = || self.chunks.iter().flat_map(|c| &c.uploads);
        let mapped = |u: &Upload| u.map.load(Ordering::SeqCst) == MAPPED;
        if uploads().all(mapped) {
            return Ok(());
        }
        for u in uploads() {
            if u.map.load(Ordering::SeqCst) == UNMAPPED {
                Self::map_upload(u);
            }
        }
        self.ctx
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| device_error(format!("waiting for the GPU: {e}")))?;
        if uploads().all(mapped) {
            Ok(())
        } else {
            Err(device_error("a GPU upload buffer could not be mapped"))
        }
    }

    /// One tick on the planned chunks, chunk by chunk: piece by piece, copy the features (and
    /// scales) into the mapped upload piece and submit its copy to the device buffers; then
    /// submit every layer, the heads and the copy of the outputs to the readback buffer. The
    /// device copies and computes while the host fills the next pieces. Then, in order, wait for
    /// each chunk and copy its outputs out of the mapped readback buffer.
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
        let mut subs = Vec::with_capacity(self.chunks.len());
        self.scoped("running the step", || -> Result<()> {
            q.write_buffer(&k.bias, 0, bytemuck::cast_slice(&bias));
            for (i, c) in self.chunks.iter().enumerate() {
                let hp = HeadsParams {
                    n: c.n as u32,
                    ld: c.ld as u32,
                    top_row: top as u32,
                    head_dim: p.head_dim as u32,
                    mode,
                    first,
                    quantile,
                    _pad: 0,
                };
                q.write_buffer(&c.params, SLOT * p.layers as u64, bytemuck::bytes_of(&hp));
                // piece by piece: the device copies one while the host fills the next
                for u in c.uploads.iter().filter(|_| upload) {
                    let (a, xb) = (c.start + u.first, 4 * u.n * cf);
                    let t = Instant::now();
                    {
                        let mut view = u
                            .buffer
                            .get_mapped_range_mut(..)
                            .map_err(|e| device_error(format!("writing a GPU buffer: {e}")))?;
                        let (dx, ds) = view.slice(..).split_at(xb);
                        copy_in(dx, bytemuck::cast_slice(&x[a * cf..(a + u.n) * cf]))?;
                        if let Some(s) = scale {
                            copy_in(ds, bytemuck::cast_slice(&s[a..a + u.n]))?;
                        }
                    }
                    u.buffer.unmap();
                    u.map.store(UNMAPPED, Ordering::SeqCst);
                    tm.copy_in += t.elapsed();
                    let mut enc = self.ctx.device.create_command_encoder(&Default::default());
                    enc.copy_buffer_to_buffer(
                        &u.buffer,
                        0,
                        &c.x,
                        (4 * u.first * cf) as u64,
                        xb as u64,
                    );
                    if scale.is_some() {
                        enc.copy_buffer_to_buffer(
                            &u.buffer,
                            xb as u64,
                            &c.scale,
                            (4 * u.first) as u64,
                            (4 * u.n) as u64,
                        );
                    }
                    q.submit([enc.finish()]);
                    // mapped again once the device has copied it, for the next tick
                    Self::map_upload(u);
                }
                let mut enc = self.ctx.device.create_command_encoder(&Default::default());
                let groups = (c.n as u32).div_ceil(self.workgroup);
                let step_groups = match k.kind {
                    StepKernel::Tiled => {
                        enc.clear_buffer(&c.counters, 0, None);
                        c.grid
                    }
                    StepKernel::Simple => groups,
                };
                {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("tick"),
                        timestamp_writes: None,
                    });
                    for (l, g) in c.step_groups.iter().enumerate() {
                        pass.set_pipeline(if l == 0 { &k.step_first } else { &k.step_rest });
                        pass.set_bind_group(0, g, &[]);
                        pass.dispatch_workgroups(step_groups, 1, 1);
                    }
                    pass.set_pipeline(&k.heads);
                    pass.set_bind_group(0, &c.heads_group, &[]);
                    pass.dispatch_workgroups(groups, 1, 1);
                }
                let len = (4 * c.n * per_out) as u64;
                if per_out > 0 {
                    enc.copy_buffer_to_buffer(&c.out, 0, &c.readback, 0, len);
                }
                subs.push(q.submit([enc.finish()]));
                if per_out > 0 {
                    let tx = tx.clone();
                    c.readback.map_async(wgpu::MapMode::Read, 0..len, move |r| {
                        let _ = tx.send((i, r));
                    });
                }
            }
            Ok(())
        })??;
        drop(tx);
        let wait = |index: Option<wgpu::SubmissionIndex>| {
            self.ctx
                .device
                .poll(wgpu::PollType::Wait {
                    submission_index: index,
                    timeout: None,
                })
                .map_err(|e| device_error(format!("waiting for the GPU: {e}")))
        };
        if per_out == 0 {
            wait(None)?;
            self.check_device()?;
            return Ok(tm);
        }
        let mut mapped: Vec<Option<std::result::Result<(), wgpu::BufferAsyncError>>> =
            vec![None; self.chunks.len()];
        for ((i, c), sub) in self.chunks.iter().enumerate().zip(subs) {
            // this chunk's outputs come out while the device runs the later chunks
            wait(Some(sub))?;
            for (j, r) in rx.try_iter() {
                mapped[j] = Some(r);
            }
            if mapped[i].is_none() {
                wait(None)?;
                for (j, r) in rx.try_iter() {
                    mapped[j] = Some(r);
                }
            }
            match mapped[i].take() {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(device_error(format!("mapping a GPU buffer: {e}"))),
                None => return Err(device_error("a GPU buffer was never mapped")),
            }
            let len = 4 * c.n * per_out;
            let t = Instant::now();
            {
                let view = c
                    .readback
                    .get_mapped_range(0..len as u64)
                    .map_err(|e| device_error(format!("reading a GPU buffer: {e}")))?;
                copy_out(
                    bytemuck::cast_slice_mut(
                        &mut out[c.start * per_out..(c.start + c.n) * per_out],
                    ),
                    &view,
                )?;
            }
            c.readback.unmap();
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
