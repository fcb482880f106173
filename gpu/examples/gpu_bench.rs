//! The bench command: the LSTM step and the whole tick for N customers on the chosen GPU
//! backend and on the CPU path, same inputs, printed as one JSON object.
//!
//! `cargo run --release -p shadowbucket-gpu --example gpu_bench -- [N] [hidden] [ticks] [layers]`
//! (defaults 100000 32 10 1). The adapter comes from `SB_GPU` (unset here means any adapter,
//! software ones included); `SB_BENCH_CPU=0` skips the CPU figures, `SB_BENCH_OTHER=0` the second
//! kernel.
//!
//! Figures: `step_ms` is the device step alone (every layer and the heads, state resident, no
//! transfers; wall time of submit and wait); `tick_pick_ms` is the tick the reservation runs
//! (upload features and scales, step, heads, decode one value per customer on the device,
//! download N floats), split into the host's phases (`tick_pick_copy_in_ms`: features and scales
//! into the mapped upload buffers; `tick_pick_copy_out_ms`: the values out of the mapped readback
//! buffers; `tick_pick_submit_gpu_ms`: the rest, encoding, submitting and waiting for the device,
//! which works on one chunk while the host copies the next; see `GpuBackend::last_timings`);
//! `tick_full_ms` downloads every head output instead. Bandwidth is the modelled bytes per
//! customer ([`GpuBackend::bytes_per_customer`]) times N over the time.
//!
//! These unsuffixed figures are the default kernel's (`kernel`: `SB_GPU_KERNEL`, else tiled).
//! The step and the pick tick also run on a second backend with the other kernel, and every
//! kernel's figures are repeated with its name as suffix (`step_ms_tiled`, `step_ms_simple`,
//! `tick_pick_ms_tiled`, ...), with `step_speedup_tiled_vs_simple` (simple's time over tiled's),
//! `tick_pick_speedup_tiled_vs_simple` and `pick_max_rel_diff_tiled_vs_simple` (the largest
//! difference between the two kernels' last picked values, relative to max(|value|, 1): both
//! ran the same inputs and ticks, so it is rounding only). `kernel_used_<kernel>` says which
//! kernel a backend ran (the tiled one falls back to simple where its tile does not fit),
//! `heads_fused_<kernel>` whether its top layer computed the heads.
//!
//! Device times (timestamp queries, where the adapter has them; `GpuBackend::profile_device_step`,
//! one compute pass per dispatch, the least of three): `device_layer<l>_ms_<kernel>`,
//! `device_heads_ms_<kernel>` (absent when fused into the top layer) and `device_span_ms_<kernel>`
//! for a step with every head output, and the same with `_pick` before the kernel suffix for a
//! step decoding the one picked value. `activation`, `tiled_workgroup`, `tiled_groups` and
//! `upload_piece` echo the options in force.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shadowbucket::model::backend::Pick;
use shadowbucket::model::{CUSTOMER_FEATURES, CpuBackend, LstmModel, ModelSpec, StepBackend};
use shadowbucket_gpu::{AdapterChoice, AdapterDesc, GpuBackend, GpuOptions, StepKernel};

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|a| a.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = arg(1, 100_000);
    let hidden = arg(2, 32);
    let ticks = arg(3, 10).max(1) as u32;
    let layers = arg(4, 1);
    let spec = ModelSpec {
        hidden,
        layers,
        ..ModelSpec::default()
    };
    let model = LstmModel::random(spec, 7)?;
    let (sd, hd) = (model.spec.state_dim(), model.spec.head_dim());
    let mut rng = StdRng::seed_from_u64(8);
    let x: Vec<f32> = (0..n * CUSTOMER_FEATURES)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let glob: Vec<f32> = (0..model.spec.global_dim())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let scale: Vec<f32> = (0..n).map(|_| rng.random_range(1.0f32..1e4)).collect();
    let pick = Pick::new(&model.spec, 0, 2)?; // horizon 1, p90
    let mut fields: Vec<(String, String)> = vec![
        ("n".into(), n.to_string()),
        ("hidden".into(), hidden.to_string()),
        ("layers".into(), layers.to_string()),
        ("ticks".into(), ticks.to_string()),
    ];
    let per_s = |ms: f64| format!("{:.0}", n as f64 / (ms / 1e3));
    let ms = |v: f64| format!("{v:.3}");
    let inputs = Inputs {
        model: &model,
        x: &x,
        glob: &glob,
        scale: &scale,
        pick,
        ticks,
    };
    let choice = match AdapterChoice::from_env() {
        AdapterChoice::Auto => AdapterChoice::AnyGpu,
        c => c,
    };
    let base = GpuOptions {
        choice,
        ..GpuOptions::from_env()
    };
    // the default kernel (SB_GPU_KERNEL, else tiled) first, then the others
    let default = base.kernel;
    let mut runs: Vec<Run> = Vec::new();
    let mut kernels = vec![default];
    if std::env::var("SB_BENCH_OTHER").map_or(true, |v| v != "0") {
        kernels.extend(
            [StepKernel::Tiled, StepKernel::Simple]
                .into_iter()
                .filter(|&k| k != default),
        );
    }
    for kernel in kernels {
        let opts = GpuOptions {
            kernel,
            ..base.clone()
        };
        match GpuBackend::new(opts) {
            Ok(g) => runs.push(measure(g, kernel, kernel == default, &inputs)?),
            Err(e) => {
                fields.push(("gpu_unavailable".into(), json_str(&e.to_string())));
                break;
            }
        }
    }
    if let Some(d) = runs.first() {
        let gbs = |bytes: usize, ms: f64| format!("{:.2}", (bytes * n) as f64 / (ms / 1e3) / 1e9);
        let a = &d.adapter;
        fields.extend([
            ("adapter".into(), json_str(&a.name)),
            ("backend".into(), json_str(&a.backend)),
            ("driver".into(), json_str(&a.driver)),
            ("device_type".into(), json_str(&a.device_type)),
            ("kernel".into(), json_str(d.kernel.name())),
            ("activation".into(), json_str(base.activation.name())),
            ("workgroup".into(), base.workgroup.to_string()),
            ("tiled_workgroup".into(), base.tiled_workgroup.to_string()),
            ("tiled_groups".into(), base.tiled_groups.to_string()),
            ("upload_piece".into(), base.upload_piece.to_string()),
            ("chunks".into(), d.chunks.to_string()),
            (
                "weights_in_workgroup_memory".into(),
                d.weights_in_workgroup_memory.to_string(),
            ),
            ("step_ms".into(), ms(d.step_ms)),
            ("step_customers_per_s".into(), per_s(d.step_ms)),
            (
                "step_bytes_per_customer".into(),
                d.bytes_per_customer.to_string(),
            ),
            ("step_gb_per_s".into(), gbs(d.bytes_per_customer, d.step_ms)),
            ("tick_pick_ms".into(), ms(d.pick_ms)),
            ("tick_pick_customers_per_s".into(), per_s(d.pick_ms)),
            (
                "tick_pick_gb_per_s".into(),
                gbs(d.bytes_per_customer_pick, d.pick_ms),
            ),
            ("tick_pick_copy_in_ms".into(), ms(d.copy_in_ms)),
            ("tick_pick_submit_gpu_ms".into(), ms(d.submit_gpu_ms)),
            ("tick_pick_copy_out_ms".into(), ms(d.copy_out_ms)),
            ("tick_full_ms".into(), ms(d.full_ms.unwrap_or(f64::NAN))),
        ]);
        for r in &runs {
            let k = r.asked.name();
            fields.extend([
                (format!("kernel_used_{k}"), json_str(r.kernel.name())),
                (
                    format!("weights_in_workgroup_memory_{k}"),
                    r.weights_in_workgroup_memory.to_string(),
                ),
                (format!("heads_fused_{k}"), r.heads_fused.to_string()),
                (format!("step_ms_{k}"), ms(r.step_ms)),
                (format!("tick_pick_ms_{k}"), ms(r.pick_ms)),
                (format!("tick_pick_copy_in_ms_{k}"), ms(r.copy_in_ms)),
                (format!("tick_pick_submit_gpu_ms_{k}"), ms(r.submit_gpu_ms)),
                (format!("tick_pick_copy_out_ms_{k}"), ms(r.copy_out_ms)),
            ]);
            for (label, v) in r.profile.iter().flatten() {
                fields.push((format!("device_{label}_ms_{k}"), ms(*v)));
            }
        }
        let find = |k: StepKernel| runs.iter().find(|r| r.asked == k);
        for k in [StepKernel::Tiled] {
            let (Some(t), Some(s)) = (find(k), find(StepKernel::Simple)) else {
                continue;
            };
            let worst = t
                .last_pick
                .iter()
                .zip(&s.last_pick)
                .map(|(a, b)| f64::from((a - b).abs()) / f64::from(a.abs().max(b.abs()).max(1.0)))
                .fold(0f64, f64::max);
            let k = k.name();
            fields.extend([
                (
                    format!("step_speedup_{k}_vs_simple"),
                    format!("{:.2}", s.step_ms / t.step_ms),
                ),
                (
                    format!("tick_pick_speedup_{k}_vs_simple"),
                    format!("{:.2}", s.pick_ms / t.pick_ms),
                ),
                // the same inputs and tick sequence on both: they agree up to summation order
                (
                    format!("pick_max_rel_diff_{k}_vs_simple"),
                    format!("{worst:.2e}"),
                ),
            ]);
        }
    }
    if std::env::var("SB_BENCH_CPU").map_or(true, |v| v != "0") {
        let mut c = CpuBackend::new();
        c.set_model(&model)?;
        let mut state = vec![0f32; n * sd];
        let mut out = vec![0f32; n * hd];
        let mut one = vec![0f32; n];
        c.step(&x, &glob, &mut state, &mut out)?;
        let t = Instant::now();
        for _ in 0..ticks {
            c.step(&x, &glob, &mut state, &mut out)?;
        }
        let step_ms = t.elapsed().as_secs_f64() * 1e3 / f64::from(ticks);
        let t = Instant::now();
        for _ in 0..ticks {
            c.step_pick(&x, &glob, &scale, &mut state, pick, &mut one)?;
        }
        let pick_ms = t.elapsed().as_secs_f64() * 1e3 / f64::from(ticks);
        fields.extend([
            ("cpu_threads".into(), rayon_threads().to_string()),
            ("cpu_step_ms".into(), format!("{step_ms:.3}")),
            ("cpu_step_customers_per_s".into(), per_s(step_ms)),
            ("cpu_tick_pick_ms".into(), format!("{pick_ms:.3}")),
        ]);
    }
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("  {}: {v}", json_str(k)))
        .collect();
    println!("{{\n{}\n}}", body.join(",\n"));
    Ok(())
}

struct Inputs<'a> {
    model: &'a LstmModel,
    x: &'a [f32],
    glob: &'a [f32],
    scale: &'a [f32],
    pick: Pick,
    ticks: u32,
}

/// One backend's figures, in milliseconds per tick.
struct Run {
    asked: StepKernel,
    kernel: StepKernel,
    adapter: AdapterDesc,
    chunks: usize,
    weights_in_workgroup_memory: bool,
    heads_fused: bool,
    bytes_per_customer: usize,
    bytes_per_customer_pick: usize,
    step_ms: f64,
    pick_ms: f64,
    copy_in_ms: f64,
    submit_gpu_ms: f64,
    copy_out_ms: f64,
    full_ms: Option<f64>,
    last_pick: Vec<f32>,
    /// Device time per kernel of one step (timestamp queries), the least of three.
    profile: Option<Vec<(String, f64)>>,
}

/// Warms `g` up with one full step, then times `ticks` device steps, `ticks` pick ticks (with
/// their host phases) and, when `full`, `ticks` full ticks.
fn measure(
    mut g: GpuBackend,
    asked: StepKernel,
    full: bool,
    inp: &Inputs,
) -> Result<Run, Box<dyn std::error::Error>> {
    let m = inp.model;
    let n = inp.scale.len();
    let ticks = inp.ticks;
    g.set_model(m)?;
    let mut state = vec![0f32; n * m.spec.state_dim()];
    let mut out = vec![0f32; n * m.spec.head_dim()];
    let mut one = vec![0f32; n];
    g.step(inp.x, inp.glob, &mut state, &mut out)?; // uploads the state, compiles, warms up
    let step_ms =
        g.bench_device_steps(ticks, inp.glob, &state)?.as_secs_f64() * 1e3 / f64::from(ticks);
    // the least of three, every output and the pick
    let mut profile: Option<Vec<(String, f64)>> = None;
    for pick in [None, Some(inp.pick)] {
        let mut best: Option<Vec<(String, f64)>> = None;
        for _ in 0..3 {
            if let Some(p) = g.profile_device_step(inp.glob, pick)? {
                best = Some(match best {
                    Some(b) => b
                        .into_iter()
                        .zip(p)
                        .map(|((l, a), (_, b))| (l, a.min(b)))
                        .collect(),
                    None => p,
                });
            }
        }
        let suffix = if pick.is_some() { "_pick" } else { "" };
        if let Some(b) = best {
            profile
                .get_or_insert_with(Vec::new)
                .extend(b.into_iter().map(|(l, v)| (format!("{l}{suffix}"), v)));
        }
    }
    let (mut copy_in, mut submit_gpu, mut copy_out) = (0f64, 0f64, 0f64);
    let t = Instant::now();
    for _ in 0..ticks {
        g.step_pick(inp.x, inp.glob, inp.scale, &mut state, inp.pick, &mut one)?;
        let tm = g.last_timings();
        copy_in += tm.copy_in.as_secs_f64();
        submit_gpu += tm.submit_gpu.as_secs_f64();
        copy_out += tm.copy_out.as_secs_f64();
    }
    let pick_ms = t.elapsed().as_secs_f64() * 1e3 / f64::from(ticks);
    let per_tick = |s: f64| s * 1e3 / f64::from(ticks);
    let full_ms = if full {
        let t = Instant::now();
        for _ in 0..ticks {
            g.step(inp.x, inp.glob, &mut state, &mut out)?;
        }
        Some(t.elapsed().as_secs_f64() * 1e3 / f64::from(ticks))
    } else {
        None
    };
    Ok(Run {
        asked,
        kernel: g.kernel().unwrap_or(asked),
        adapter: g.adapter().clone(),
        chunks: g.chunks(),
        weights_in_workgroup_memory: g.weights_in_workgroup_memory().unwrap_or(false),
        heads_fused: g.heads_fused().unwrap_or(false),
        bytes_per_customer: g.bytes_per_customer(false),
        bytes_per_customer_pick: g.bytes_per_customer(true),
        step_ms,
        pick_ms,
        copy_in_ms: per_tick(copy_in),
        submit_gpu_ms: per_tick(submit_gpu),
        copy_out_ms: per_tick(copy_out),
        full_ms,
        last_pick: one,
        profile,
    })
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
