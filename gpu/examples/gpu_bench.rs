//! The bench command: the LSTM step and the whole tick for N customers on the chosen GPU
//! backend and on the CPU path, same inputs, printed as one JSON object.
//!
//! `cargo run --release -p shadowbucket-gpu --example gpu_bench -- [N] [hidden] [ticks] [layers]`
//! (defaults 100000 32 10 1). The adapter comes from `SB_GPU` (unset here means any adapter,
//! software ones included); `SB_BENCH_CPU=0` skips the CPU figures.
//!
//! Figures: `step_ms` is the device step alone (every layer and the heads, state resident, no
//! transfers; wall time of submit and wait); `tick_pick_ms` is the tick the reservation runs
//! (upload features and scales, step, heads, decode one value per customer on the device,
//! download N floats); `tick_full_ms` downloads every head output instead. Bandwidth is the
//! modelled bytes per customer ([`GpuBackend::bytes_per_customer`]) times N over the time.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shadowbucket::model::backend::Pick;
use shadowbucket::model::{CUSTOMER_FEATURES, CpuBackend, LstmModel, ModelSpec, StepBackend};
use shadowbucket_gpu::{AdapterChoice, GpuBackend, GpuOptions};

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
    let choice = match AdapterChoice::from_env() {
        AdapterChoice::Auto => AdapterChoice::AnyGpu,
        c => c,
    };
    let opts = GpuOptions {
        choice,
        ..GpuOptions::from_env()
    };
    match GpuBackend::new(opts) {
        Ok(mut g) => {
            g.set_model(&model)?;
            let mut state = vec![0f32; n * sd];
            let mut out = vec![0f32; n * hd];
            let mut one = vec![0f32; n];
            g.step(&x, &glob, &mut state, &mut out)?; // uploads the state, compiles, warms up
            let step_ms =
                g.bench_device_steps(ticks, &glob, &state)?.as_secs_f64() * 1e3 / f64::from(ticks);
            let t = Instant::now();
            for _ in 0..ticks {
                g.step_pick(&x, &glob, &scale, &mut state, pick, &mut one)?;
            }
            let pick_ms = t.elapsed().as_secs_f64() * 1e3 / f64::from(ticks);
            let t = Instant::now();
            for _ in 0..ticks {
                g.step(&x, &glob, &mut state, &mut out)?;
            }
            let full_ms = t.elapsed().as_secs_f64() * 1e3 / f64::from(ticks);
            let gbs =
                |bytes: usize, ms: f64| format!("{:.2}", (bytes * n) as f64 / (ms / 1e3) / 1e9);
            let a = g.adapter().clone();
            fields.extend([
                ("adapter".into(), json_str(&a.name)),
                ("backend".into(), json_str(&a.backend)),
                ("driver".into(), json_str(&a.driver)),
                ("device_type".into(), json_str(&a.device_type)),
                ("chunks".into(), g.chunks().to_string()),
                (
                    "weights_in_workgroup_memory".into(),
                    g.weights_in_workgroup_memory().unwrap_or(false).to_string(),
                ),
                ("step_ms".into(), format!("{step_ms:.3}")),
                ("step_customers_per_s".into(), per_s(step_ms)),
                (
                    "step_bytes_per_customer".into(),
                    g.bytes_per_customer(false).to_string(),
                ),
                (
                    "step_gb_per_s".into(),
                    gbs(g.bytes_per_customer(false), step_ms),
                ),
                ("tick_pick_ms".into(), format!("{pick_ms:.3}")),
                ("tick_pick_customers_per_s".into(), per_s(pick_ms)),
                (
                    "tick_pick_gb_per_s".into(),
                    gbs(g.bytes_per_customer(true), pick_ms),
                ),
                ("tick_full_ms".into(), format!("{full_ms:.3}")),
            ]);
        }
        Err(e) => fields.push(("gpu_unavailable".into(), json_str(&e.to_string()))),
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

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
