//! The GPU step against the CPU path on random weights and inputs: several sizes (some not a
//! multiple of the workgroup size), several model shapes, chunking forced by a lowered binding
//! limit, several ticks of recurrent state, `step_pick` against the CPU decode (on several
//! shapes, every horizon and quantile), and `invalidate`/`sync_state`. Every comparison runs
//! with both step kernels (tiled and simple); the other options come from the environment
//! (`SB_GPU_ACT`, `SB_GPU_TILED_WORKGROUP`, `SB_GPU_FUSE_HEADS`, `SB_GPU_TILED_STAGE_OUT`),
//! defaults otherwise. With the defaults the tiled kernel runs 128-customer tiles with the heads
//! fused in, 64-customer tiles where the lowered binding limit cannot hold 128 customers;
//! H = 64 x 2 layers falls back to the simple kernel on llvmpipe (its later layer's tile, 32 KiB,
//! does not fit the 32 KiB of workgroup memory with the placeholders).
//!
//! Tolerance: 1e-5 absolute on every state value and head output after each of several ticks
//! (with `SB_GPU_ACT=rational` the kernels use the CPU batch's own `tanh` approximation, so the
//! two differ only by summation order and fused multiply-adds, worst seen on llvmpipe 4.8e-7;
//! the default exp-based activations add a few 1e-7, worst seen 6.0e-7), and for
//! decoded picks 1e-4 relative plus 1e-4 times the customer's scale (the decode goes through
//! the device's `exp` and `log`, which WGSL lets be a few ulp off). A gate pre-activation off by
//! 1e-3 fails these tests.
//!
//! Needs an adapter: `scripts/gpu-setup.sh` installs Mesa's llvmpipe where it can. Without one
//! these tests print a loud SKIPPED line and pass, unless `SB_REQUIRE_GPU=1`.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shadowbucket::model::backend::Pick;
use shadowbucket::model::{
    CUSTOMER_FEATURES, CpuBackend, LstmModel, ModelSpec, StepBackend, step_one,
};
use shadowbucket_gpu::{AdapterChoice, GpuBackend, GpuOptions, StepKernel};

const TOL: f32 = 1e-5;
const PICK_TOL: f32 = 1e-4;
const KERNELS: [StepKernel; 2] = [StepKernel::Tiled, StepKernel::Simple];

/// The GPU backend on any adapter (software included) with `kernel`, or `None` after a loud skip
/// message.
fn gpu(max_binding_bytes: Option<u64>, kernel: StepKernel) -> Option<GpuBackend> {
    gpu_with(options(max_binding_bytes, kernel))
}

/// The tests' options: any adapter (software included), `kernel`, the binding limit lowered to
/// `max_binding_bytes`.
fn options(max_binding_bytes: Option<u64>, kernel: StepKernel) -> GpuOptions {
    let choice = match AdapterChoice::from_env() {
        AdapterChoice::Auto | AdapterChoice::Cpu => AdapterChoice::AnyGpu,
        c => c,
    };
    GpuOptions {
        choice,
        sync_every: 3,
        max_binding_bytes,
        workgroup: 256,
        kernel,
        // few workgroups, so that each takes several tiles
        tiled_groups: 3,
        // small upload pieces, so that a chunk's features go up in several
        upload_piece: 100,
        // SB_GPU_ACT, SB_GPU_TILED_WORKGROUP and SB_GPU_FUSE_HEADS apply (by default the tiled
        // kernel runs 512 invocations on 128-customer tiles, or 256 on 64 where the lowered
        // binding limit cannot hold 128 customers, and fuses the heads where it can)
        ..GpuOptions::from_env()
    }
}

/// The backend with `opts`, or `None` after a loud skip message.
fn gpu_with(opts: GpuOptions) -> Option<GpuBackend> {
    let kernel = opts.kernel;
    match GpuBackend::new(opts) {
        Ok(g) => {
            eprintln!("GPU test ({kernel} kernel) on {:?}", g.adapter());
            Some(g)
        }
        Err(e) => {
            if std::env::var("SB_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("SB_REQUIRE_GPU=1 but {e}");
            }
            eprintln!(
                "\n*** SKIPPED GPU test: {e}. Run scripts/gpu-setup.sh (Mesa llvmpipe); \
                 SB_REQUIRE_GPU=1 makes this a failure. ***\n"
            );
            None
        }
    }
}

/// A model shape: H, layers, horizons, feeds.
fn spec(hidden: usize, layers: usize, horizons: &[u32], feeds: &[&str]) -> ModelSpec {
    ModelSpec {
        hidden,
        layers,
        horizons: horizons.to_vec(),
        feeds: feeds.iter().map(|f| f.to_string()).collect(),
    }
}

fn model(spec: ModelSpec, seed: u64) -> LstmModel {
    let mut m = LstmModel::random(spec, seed).unwrap();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    for (mean, sd) in m.scaling.mean.iter_mut().zip(&mut m.scaling.std) {
        *mean = rng.random_range(-1.0..1.0);
        *sd = rng.random_range(0.5..2.0);
    }
    m
}

fn close(what: &str, tick: usize, gpu: &[f32], cpu: &[f32], tol: impl Fn(usize) -> f32) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let mut worst = (0f32, 0usize);
    for (i, (a, b)) in gpu.iter().zip(cpu).enumerate() {
        let d = (a - b).abs();
        assert!(
            d <= tol(i) && a.is_finite(),
            "{what}, tick {tick}, index {i}: GPU {a} vs CPU {b}"
        );
        if d > worst.0 {
            worst = (d, i);
        }
    }
    eprintln!("  {what} tick {tick}: worst |GPU - CPU| = {:.2e}", worst.0);
}

/// Steps `n` customers `ticks` times on both backends and compares state and outputs; returns
/// how many chunks the GPU used and the kernel it ran.
fn compare(
    spec: ModelSpec,
    n: usize,
    ticks: usize,
    seed: u64,
    max_binding: Option<u64>,
    kernel: StepKernel,
) -> Option<(usize, StepKernel)> {
    let mut g = gpu(max_binding, kernel)?;
    let m = model(spec, seed);
    let (sd, hd, glob_n) = (m.spec.state_dim(), m.spec.head_dim(), m.spec.global_dim());
    let mut c = CpuBackend::new();
    c.set_model(&m).unwrap();
    g.set_model(&m).unwrap();
    let used = g.kernel().unwrap();
    eprintln!(
        "  H = {} x {} layers, n = {n}: {used} kernel, weights in workgroup memory: {:?}, \
         heads fused: {:?}",
        m.spec.hidden,
        m.spec.layers,
        g.weights_in_workgroup_memory(),
        g.heads_fused()
    );
    let mut rng = StdRng::seed_from_u64(seed + 1);
    let init: Vec<f32> = (0..n * sd).map(|_| rng.random_range(-1.0..1.0)).collect();
    let (mut st_cpu, mut st_ref, mut st_gpu) = (init.clone(), init.clone(), init);
    let cf = CUSTOMER_FEATURES;
    for tick in 0..ticks {
        let x: Vec<f32> = (0..n * cf).map(|_| rng.random_range(-3.0..3.0)).collect();
        let glob: Vec<f32> = (0..glob_n).map(|_| rng.random_range(-3.0..3.0)).collect();
        let mut out_cpu = vec![0f32; n * hd];
        let mut out_gpu = vec![f32::NAN; n * hd];
        c.step(&x, &glob, &mut st_cpu, &mut out_cpu).unwrap();
        g.step(&x, &glob, &mut st_gpu, &mut out_gpu).unwrap();
        g.sync_state(&mut st_gpu).unwrap();
        close("state vs CPU batch", tick, &st_gpu, &st_cpu, |_| TOL);
        close("heads vs CPU batch", tick, &out_gpu, &out_cpu, |_| TOL);
        // and against the plain reference, on a sample of customers
        let mut out_ref = vec![0f32; hd];
        for r in (0..n).step_by((n / 50).max(1)) {
            let full: Vec<f32> = x[r * cf..(r + 1) * cf]
                .iter()
                .chain(&glob)
                .copied()
                .collect();
            let mut s = st_ref[r * sd..(r + 1) * sd].to_vec();
            step_one(&m, &full, &mut s, &mut out_ref);
            st_ref[r * sd..(r + 1) * sd].copy_from_slice(&s);
            close(
                "state vs step_one",
                tick,
                &st_gpu[r * sd..(r + 1) * sd],
                &s,
                |_| TOL,
            );
            close(
                "heads vs step_one",
                tick,
                &out_gpu[r * hd..(r + 1) * hd],
                &out_ref,
                |_| TOL,
            );
        }
        // keep the reference in lockstep for the rows not sampled
        for r in 0..n {
            if r % (n / 50).max(1) != 0 {
                st_ref[r * sd..(r + 1) * sd].copy_from_slice(&st_cpu[r * sd..(r + 1) * sd]);
            }
        }
    }
    Some((g.chunks(), used))
}

#[test]
fn default_model_several_sizes() {
    for kernel in KERNELS {
        for (i, n) in [1usize, 255, 256, 257, 1000].into_iter().enumerate() {
            let Some((_, used)) = compare(ModelSpec::default(), n, 4, 10 + i as u64, None, kernel)
            else {
                return;
            };
            assert_eq!(used, kernel, "H = 32 runs the kernel asked for");
        }
    }
}

#[test]
fn other_shapes() {
    let specs = [
        spec(8, 3, &[1, 2], &["news"]),
        spec(5, 2, &[1], &[]),
        spec(64, 2, &[1, 5, 10, 15], &[]),
    ];
    for kernel in KERNELS {
        for (i, spec) in specs.iter().enumerate() {
            if compare(spec.clone(), 300, 3, 20 + i as u64, None, kernel).is_none() {
                return;
            }
        }
    }
}

#[test]
fn chunking_above_a_lowered_binding_limit() {
    for kernel in KERNELS {
        // 64 floats of state per customer: a 64 KiB limit allows 256 customers per chunk.
        let Some((chunks, _)) = compare(ModelSpec::default(), 1000, 4, 30, Some(64 * 1024), kernel)
        else {
            return;
        };
        assert_eq!(chunks, 4, "1000 customers in chunks of at most 256");
        let spec = spec(8, 2, &[1, 3], &[]);
        let Some((chunks, _)) = compare(spec, 777, 3, 31, Some(8 * 1024), kernel) else {
            return;
        };
        assert!(chunks > 1);
    }
}

#[test]
fn pick_matches_cpu_decode() {
    for kernel in KERNELS {
        pick_matches_cpu_decode_with(kernel);
    }
}

fn pick_matches_cpu_decode_with(kernel: StepKernel) {
    let Some(mut g) = gpu(Some(64 * 1024), kernel) else {
        return;
    };
    let m = model(ModelSpec::default(), 40);
    let mut c = CpuBackend::new();
    c.set_model(&m).unwrap();
    g.set_model(&m).unwrap();
    let mut p = Picks::new(&m.spec, 700, 41);
    for tick in 0..8 {
        let pick = Pick::new(&m.spec, tick % 4, (tick / 2) % 4).unwrap();
        p.step(&mut c, &mut g, &m.spec, pick, tick);
    }
    p.check_state(&mut g, 8);
}

/// The CPU backend's and the GPU's states for `n` customers stepped with picks side by side,
/// their scales, and the source of each tick's inputs.
struct Picks {
    rng: StdRng,
    scale: Vec<f32>,
    st_cpu: Vec<f32>,
    st_gpu: Vec<f32>,
}

impl Picks {
    fn new(spec: &ModelSpec, n: usize, seed: u64) -> Picks {
        let mut rng = StdRng::seed_from_u64(seed);
        let st_cpu: Vec<f32> = (0..n * spec.state_dim())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let scale = (0..n).map(|_| rng.random_range(1.0f32..1000.0)).collect();
        Picks {
            rng,
            scale,
            st_gpu: st_cpu.clone(),
            st_cpu,
        }
    }

    /// One tick of fresh inputs on both backends with `pick`; the picked values must agree.
    fn step(
        &mut self,
        c: &mut CpuBackend,
        g: &mut GpuBackend,
        spec: &ModelSpec,
        pick: Pick,
        tick: usize,
    ) {
        let n = self.scale.len();
        let rng = &mut self.rng;
        let x: Vec<f32> = (0..n * CUSTOMER_FEATURES)
            .map(|_| rng.random_range(-3.0..3.0))
            .collect();
        let glob: Vec<f32> = (0..spec.global_dim())
            .map(|_| rng.random_range(-3.0..3.0))
            .collect();
        let mut a = vec![0f32; n];
        let mut b = vec![f32::NAN; n];
        c.step_pick(&x, &glob, &self.scale, &mut self.st_cpu, pick, &mut a)
            .unwrap();
        g.step_pick(&x, &glob, &self.scale, &mut self.st_gpu, pick, &mut b)
            .unwrap();
        let scale = &self.scale;
        close("pick", tick, &b, &a, |i| {
            PICK_TOL * a[i].abs() + PICK_TOL * scale[i]
        });
    }

    /// The GPU's state, written back, against the CPU's.
    fn check_state(&mut self, g: &mut GpuBackend, tick: usize) {
        g.sync_state(&mut self.st_gpu).unwrap();
        close(
            "state after picks",
            tick,
            &self.st_gpu,
            &self.st_cpu,
            |_| TOL,
        );
    }
}

/// The pick on other model shapes (the fused top layer above the first, so its usage features
/// come from `x`, not the tile; H not a multiple of 4; H = 64, unfused; an extra feed), every
/// horizon and quantile, N not a multiple of the tile, chunked by a lowered binding limit.
#[test]
fn pick_other_shapes_every_quantile() {
    let specs = [
        (spec(8, 3, &[1, 2], &["news"]), None),
        (spec(5, 2, &[1, 4, 9], &[]), Some(8 * 1024)),
        (spec(5, 1, &[1, 2], &[]), None),
        (spec(32, 2, &[1, 5], &[]), Some(64 * 1024)),
        (spec(64, 2, &[1, 5, 10, 15], &[]), None),
    ];
    for kernel in KERNELS {
        for (i, (spec, bind)) in specs.iter().enumerate() {
            let Some(mut g) = gpu(*bind, kernel) else {
                return;
            };
            let m = model(spec.clone(), 80 + i as u64);
            let mut c = CpuBackend::new();
            c.set_model(&m).unwrap();
            g.set_model(&m).unwrap();
            eprintln!(
                "  pick: H = {} x {} layers: {} kernel, heads fused: {:?}",
                m.spec.hidden,
                m.spec.layers,
                g.kernel().unwrap(),
                g.heads_fused()
            );
            let mut p = Picks::new(&m.spec, 301, 90 + i as u64);
            let mut tick = 0;
            for horizon in 0..m.spec.horizons.len() {
                for quantile in 0..4 {
                    let pick = Pick::new(&m.spec, horizon, quantile).unwrap();
                    p.step(&mut c, &mut g, &m.spec, pick, tick);
                    tick += 1;
                }
            }
            p.check_state(&mut g, tick);
            if bind.is_some() {
                assert!(
                    g.chunks() > 1,
                    "the lowered binding limit chunks the customers"
                );
            }
        }
    }
}

#[test]
fn invalidate_takes_the_durable_copy() {
    for kernel in KERNELS {
        invalidate_takes_the_durable_copy_with(kernel);
    }
}

fn invalidate_takes_the_durable_copy_with(kernel: StepKernel) {
    let Some(mut g) = gpu(None, kernel) else {
        return;
    };
    let m = model(ModelSpec::default(), 50);
    let mut c = CpuBackend::new();
    c.set_model(&m).unwrap();
    g.set_model(&m).unwrap();
    let n = 333;
    let (sd, hd, cf) = (m.spec.state_dim(), m.spec.head_dim(), CUSTOMER_FEATURES);
    let mut rng = StdRng::seed_from_u64(51);
    let mut st_cpu: Vec<f32> = (0..n * sd).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut st_gpu = st_cpu.clone();
    let x: Vec<f32> = (0..n * cf).map(|_| rng.random_range(-3.0..3.0)).collect();
    let glob = vec![0.5f32; m.spec.global_dim()];
    let (mut a, mut b) = (vec![0f32; n * hd], vec![0f32; n * hd]);
    g.step(&x, &glob, &mut st_gpu, &mut b).unwrap();
    // Between write-backs the durable copy is stale: the device holds the truth.
    assert_eq!(g.sync_every(), 3);
    assert_ne!(st_gpu, st_cpu.iter().map(|_| 0.0).collect::<Vec<_>>());
    // The engine changes the column (say, resets customers) and invalidates.
    for v in &mut st_cpu[..10 * sd] {
        *v = 0.0;
    }
    st_gpu.copy_from_slice(&st_cpu);
    g.invalidate();
    // sync_state after invalidate leaves the durable copy alone
    g.sync_state(&mut st_gpu).unwrap();
    assert_eq!(st_gpu, st_cpu);
    c.step(&x, &glob, &mut st_cpu, &mut a).unwrap();
    g.step(&x, &glob, &mut st_gpu, &mut b).unwrap();
    close("heads after invalidate", 0, &b, &a, |_| TOL);
    g.sync_state(&mut st_gpu).unwrap();
    close("state after invalidate", 0, &st_gpu, &st_cpu, |_| TOL);
}

#[test]
fn bad_lengths_are_errors() {
    let Some(mut g) = gpu(None, StepKernel::default()) else {
        return;
    };
    let m = model(ModelSpec::default(), 60);
    let mut st = vec![0f32; 10 * m.spec.state_dim()];
    let mut out = vec![0f32; 10 * m.spec.head_dim()];
    let x = vec![0f32; 10 * CUSTOMER_FEATURES];
    let glob = vec![0f32; m.spec.global_dim()];
    assert!(
        g.step(&x, &glob, &mut st, &mut out).is_err(),
        "no model yet"
    );
    g.set_model(&m).unwrap();
    assert!(g.step(&x[1..], &glob, &mut st, &mut out).is_err());
    assert!(g.step(&x, &glob[1..], &mut st, &mut out).is_err());
    assert!(g.step(&x, &glob, &mut st[1..], &mut out).is_err());
    assert!(g.step(&x, &glob, &mut st, &mut out[1..]).is_err());
    g.step(&x, &glob, &mut st, &mut out).unwrap();
    let pick = Pick::new(&m.spec, 0, 2).unwrap();
    let mut one = vec![0f32; 10];
    assert!(
        g.step_pick(&x, &glob, &[1.0; 9], &mut st, pick, &mut one)
            .is_err()
    );
    assert!(
        g.step_pick(&x, &glob, &[1.0; 10], &mut st, pick, &mut one[1..])
            .is_err()
    );
    g.step_pick(&x, &glob, &[1.0; 10], &mut st, pick, &mut one)
        .unwrap();
    // empty store: nothing to do
    g.step(&[], &glob, &mut [], &mut []).unwrap();
}

/// A valid model whose weights exceed the adapter's buffer bindings (H = 1024 x 5 layers:
/// 151 MB, over the 128 MiB llvmpipe allows; the weights are bound whole, not chunked) is
/// refused by `set_model` ("the backend cannot hold this model"), not accepted and then failing
/// every step. Where the adapter binds that much, the model must step.
#[test]
fn a_model_too_big_to_bind_is_refused_at_set_model() {
    let spec = spec(1024, 5, &[1], &[]);
    let m = LstmModel::random(spec, 70).unwrap();
    let n = 3;
    let (sd, hd, cf) = (m.spec.state_dim(), m.spec.head_dim(), CUSTOMER_FEATURES);
    for kernel in KERNELS {
        let Some(mut g) = gpu(None, kernel) else {
            return;
        };
        if let Err(e) = g.set_model(&m) {
            eprintln!("  refused: {e}");
            continue;
        }
        let mut st = vec![0.1f32; n * sd];
        let mut out = vec![0f32; n * hd];
        g.step(
            &vec![0.5f32; n * cf],
            &vec![0f32; m.spec.global_dim()],
            &mut st,
            &mut out,
        )
        .expect("set_model accepted the model, so it must step");
    }
}

/// A wait for the device longer than `GpuOptions::wait_timeout` (1 ns here, which no submission
/// meets) is an error, not a stall, and the backend refuses every later call.
#[test]
fn a_wait_past_the_time_limit_is_an_error() {
    for kernel in KERNELS {
        let Some(mut g) = gpu_with(GpuOptions {
            wait_timeout: Some(std::time::Duration::from_nanos(1)),
            // one upload piece, so that the first wait comes straight after its submission
            upload_piece: GpuOptions::DEFAULT_UPLOAD_PIECE,
            ..options(None, kernel)
        }) else {
            return;
        };
        let spec = ModelSpec {
            hidden: 8,
            ..ModelSpec::default()
        };
        let m = model(spec.clone(), 3);
        g.set_model(&m).unwrap();
        let n = 20_000;
        let x = vec![0.5; n * CUSTOMER_FEATURES];
        let glob = vec![0.1; spec.global_dim()];
        let mut state = vec![0.0; n * spec.state_dim()];
        let mut out = vec![0.0; n * spec.head_dim()];
        let e = g.step(&x, &glob, &mut state, &mut out).unwrap_err();
        assert!(e.to_string().contains("did not finish"), "{kernel}: {e}");
        let e = g.step(&x, &glob, &mut state, &mut out).unwrap_err();
        assert!(e.to_string().contains("not used again"), "{kernel}: {e}");
        assert!(g.sync_state(&mut state).is_err(), "{kernel}");
    }
}
