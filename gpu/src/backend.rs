//! [`GpuBackend`]: the batched LSTM step on a wgpu device, state resident between ticks.

use std::num::NonZeroU64;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shadowbucket::model::backend::Pick;
use shadowbucket::model::{CUSTOMER_FEATURES, LstmModel, StepBackend};
use shadowbucket::{Error, Result};

use crate::context::{AdapterChoice, AdapterDesc, Context, Unavailable};
use crate::shaders::{HeadsParams, RelayoutParams, Shape, StepParams};

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
}

impl GpuOptions {
    /// Default ticks between state write-backs: 10 (ten minutes at the default 60 s interval).
    pub const DEFAULT_SYNC_EVERY: u32 = 10;
    /// The environment variable that overrides [`GpuOptions::sync_every`].
    pub const SYNC_ENV: &'static str = "SB_GPU_SYNC_EVERY";

    /// The defaults, with `SB_GPU` and `SB_GPU_SYNC_EVERY` applied.
    pub fn from_env() -> Self {
        let sync_every = std::env::var(Self::SYNC_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|&v| v > 0)
            .unwrap_or(Self::DEFAULT_SYNC_EVERY);
        GpuOptions {
            choice: AdapterChoice::from_env(),
            sync_every,
            max_binding_bytes: None,
            workgroup: 256,
        }
    }
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
/// starts on a 256-byte boundary.
const LD_ALIGN: usize = 64;
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
    /// All layers' rows, vec4-padded (see lstm_step.wgsl), as floats.
    weights: Vec<f32>,
    /// Per layer: first vec4.
    w_off: Vec<u32>,
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
        let mut bias = Vec::new();
        let mut w_glob = vec![0f32; 4 * h * global];
        for (l, lw) in model.layers.iter().enumerate() {
            let k = s.layer_input_dim(l);
            let kin4 = if l == 0 { cf.div_ceil(4) * 4 } else { hv4 };
            w_off.push((weights.len() / 4) as u32);
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
                    }
                    row[kin4..kin4 + h].copy_from_slice(&lw.w_hh[r * h..(r + 1) * h]);
                    weights.extend_from_slice(&row);
                    b[jq] = br;
                }
            }
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
    shape: Shape,
    step: wgpu::ComputePipeline,
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
    step_groups: Vec<wgpu::BindGroup>,
    heads_group: wgpu::BindGroup,
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
        let per = 4 * p.state_dim.max(p.head_dim).max(CUSTOMER_FEATURES);
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
        self.kernels.as_ref().map(|k| k.shape.use_shared)
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

    fn pipeline(&self, label: &str, src: String) -> wgpu::ComputePipeline {
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
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            })
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
        let src = |r: std::result::Result<String, String>| r.map_err(device_error);
        let step_src = src(shape.lstm_step())?;
        let heads_src = src(shape.heads())?;
        let relayout_src = src(shape.relayout())?;
        self.scoped("building the GPU kernels", || Kernels {
            shape,
            step: self.pipeline("lstm_step", step_src),
            heads: self.pipeline("heads", heads_src),
            relayout: self.pipeline("relayout", relayout_src),
            weights: self.storage("weights", &p.weights),
            bias: self.storage("bias", &p.bias.concat()),
            head_w: self.storage("head_w", &p.head_w),
            head_b: self.storage("head_b", &p.head_b),
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
                    for l in 0..p.layers {
                        let sp = StepParams {
                            n: cn as u32,
                            ld: ld as u32,
                            layer: l as u32,
                            w_off: p.w_off[l],
                            b_off: (4 * p.hidden * l) as u32,
                            _pad: [0; 3],
                        };
                        self.ctx.queue.write_buffer(
                            &params,
                            SLOT * l as u64,
                            bytemuck::bytes_of(&sp),
                        );
                    }
                    let layout = k.step.get_bind_group_layout(0);
                    let step_groups = (0..p.layers)
                        .map(|l| {
                            dev.create_bind_group(&wgpu::BindGroupDescriptor {
                                label: Some("lstm_step"),
                                layout: &layout,
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
        self.check_device()?;
        let (global, sd, hd, layers, top) = match &self.prep {
            Some(p) => (
                p.global,
                p.state_dim,
                p.head_dim,
                p.layers,
                2 * (p.layers - 1) * p.hidden,
            ),
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
        let (Some(p), Some(k)) = (&self.prep, &self.kernels) else {
            return Err(invalid("GPU backend has no model"));
        };
        let q = &self.ctx.queue;
        let bias = p.bias_for(glob);
        self.scoped("running the step", || {
            q.write_buffer(&k.bias, 0, bytemuck::cast_slice(&bias));
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            for c in &self.chunks {
                if !matches!(want, Want::Nothing) {
                    q.write_buffer(
                        &c.x,
                        0,
                        bytemuck::cast_slice(&x[c.start * cf..(c.start + c.n) * cf]),
                    );
                }
                if let Some(s) = scale {
                    q.write_buffer(
                        &c.scale,
                        0,
                        bytemuck::cast_slice(&s[c.start..c.start + c.n]),
                    );
                }
                let (mode, first, quantile) = match want {
                    Want::Pick(pk) => (1, 4 * pk.horizon() as u32, pk.quantile() as u32),
                    _ => (0, 0, 0),
                };
                let hp = HeadsParams {
                    n: c.n as u32,
                    ld: c.ld as u32,
                    top_row: top as u32,
                    head_dim: hd as u32,
                    mode,
                    first,
                    quantile,
                    _pad: 0,
                };
                q.write_buffer(&c.params, SLOT * layers as u64, bytemuck::bytes_of(&hp));
                let groups = (c.n as u32).div_ceil(self.workgroup);
                {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("tick"),
                        timestamp_writes: None,
                    });
                    pass.set_pipeline(&k.step);
                    for g in &c.step_groups {
                        pass.set_bind_group(0, g, &[]);
                        pass.dispatch_workgroups(groups, 1, 1);
                    }
                    pass.set_pipeline(&k.heads);
                    pass.set_bind_group(0, &c.heads_group, &[]);
                    pass.dispatch_workgroups(groups, 1, 1);
                }
                if per_out > 0 {
                    enc.copy_buffer_to_buffer(
                        &c.out,
                        0,
                        &c.readback,
                        0,
                        (4 * c.n * per_out) as u64,
                    );
                }
            }
            q.submit([enc.finish()]);
        })?;
        if per_out == 0 {
            self.ctx
                .device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| device_error(format!("waiting for the GPU: {e}")))?;
            return self.check_device();
        }
        let bufs: Vec<(&wgpu::Buffer, u64)> = self
            .chunks
            .iter()
            .map(|c| (&c.readback, (4 * c.n * per_out) as u64))
            .collect();
        let starts: Vec<usize> = self.chunks.iter().map(|c| c.start * per_out).collect();
        self.read_back(&bufs, |i, bytes| {
            let vals: &[f32] = bytemuck::cast_slice(bytes);
            out[starts[i]..starts[i] + vals.len()].copy_from_slice(vals);
        })
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
