//! The engine's predictive tick with the LSTM step on the GPU gives the same forecasts and
//! reservations as on the CPU, over several ticks, with customers added and removed between
//! ticks (the device's state copy is invalidated and re-uploaded), and the device's state
//! written back to the store survives a reopen.
//!
//! Tolerance: forecasts within 1e-4 relative (plus 1e-3 tokens); reserved rates within 1e-4
//! relative plus 1 micro-token/s (they are rounded from the float forecasts).
//!
//! Needs an adapter (Mesa's llvmpipe here and in CI, see `scripts/gpu-setup.sh`); without one
//! this test prints a loud SKIPPED line and passes, unless `SB_REQUIRE_GPU=1`.

use shadowbucket::model::{LstmModel, ModelSpec};
use shadowbucket::{Contract, CreateOptions, Engine, EngineConfig, Predictor, Rate};
use shadowbucket_gpu::{AdapterChoice, GpuBackend, GpuOptions, StepKernel};

use std::time::Duration;

const SEC: u64 = 1_000_000_000;
const MIN: u64 = 60 * SEC;

fn gpu(kernel: StepKernel) -> Option<GpuBackend> {
    gpu_with(GpuOptions {
        choice: AdapterChoice::AnyGpu,
        sync_every: 2,
        // small chunks, so that the engine's customers span several
        max_binding_bytes: Some(16 << 10),
        workgroup: 64,
        kernel,
        tiled_groups: GpuOptions::DEFAULT_TILED_GROUPS,
        upload_piece: 50,
        // SB_GPU_ACT, SB_GPU_TILED_WORKGROUP and SB_GPU_FUSE_HEADS apply
        ..GpuOptions::from_env()
    })
}

fn gpu_with(opts: GpuOptions) -> Option<GpuBackend> {
    match GpuBackend::new(opts) {
        Ok(g) => Some(g),
        Err(e) => {
            if std::env::var("SB_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("SB_REQUIRE_GPU=1 but {e}");
            }
            eprintln!("\n*** SKIPPED GPU engine test: {e}. Run scripts/gpu-setup.sh. ***\n");
            None
        }
    }
}

/// Two engines in a fresh folder with the same random LSTM (H = 16): `cpu` stepping on the CPU,
/// `dev` on the backend `g`.
struct Pair {
    dir: std::path::PathBuf,
    model: LstmModel,
    cpu: Engine,
    dev: Engine,
}

impl Pair {
    fn new(tag: &str, capacity: u64, seed: u64, g: GpuBackend) -> Pair {
        let spec = ModelSpec {
            hidden: 16,
            ..ModelSpec::default()
        };
        let model = LstmModel::random(spec.clone(), seed).unwrap();
        let dir = std::env::temp_dir().join(format!("sb-gpu-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = EngineConfig::new(1 << 34, Rate::tokens_per_sec(1 << 24));
        let opts = CreateOptions::new(capacity, cfg).for_model(&spec);
        let mut cpu = Engine::create(dir.join("cpu.sb"), opts).unwrap();
        let mut dev = Engine::create(dir.join("gpu.sb"), opts).unwrap();
        for e in [&mut cpu, &mut dev] {
            e.set_predictor(Predictor::Lstm(Box::new(model.clone())))
                .unwrap();
        }
        dev.set_step_backend(Box::new(g)).unwrap();
        Pair {
            dir,
            model,
            cpu,
            dev,
        }
    }
}

fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()) + abs
}

#[test]
fn gpu_tick_matches_cpu_tick() {
    for kernel in [StepKernel::Tiled, StepKernel::Simple] {
        tick_matches(kernel);
    }
}

fn tick_matches(kernel: StepKernel) {
    let Some(g) = gpu(kernel) else { return };
    let Pair {
        dir,
        model,
        mut cpu,
        mut dev,
    } = Pair::new(&format!("engine-{kernel}"), 512, 17, g);
    assert!(
        !dev.step_backend_name().starts_with("cpu"),
        "{}",
        dev.step_backend_name()
    );
    let contract = Contract::new(1 << 30, Rate::tokens_per_sec(1 << 20));
    let mut next_id = 0u64;
    for t in 1..=5u64 {
        // customers come and go between ticks
        for e in [&mut cpu, &mut dev] {
            for k in 0..60 {
                e.add_customer(next_id + k, contract, (t - 1) * MIN)
                    .unwrap();
            }
            if t > 2 {
                for k in 0..20 {
                    e.remove_customer(next_id - 60 + 3 * k, (t - 1) * MIN)
                        .unwrap();
                }
            }
        }
        next_id += 60;
        let ids = cpu.customer_ids();
        for (i, &id) in ids.iter().enumerate() {
            let n = 1 + (id * 7919 + t * 31) % 50_000;
            for e in [&mut cpu, &mut dev] {
                e.allocate(id, n, (t - 1) * MIN + 1 + i as u64).unwrap();
            }
        }
        cpu.tick(t * MIN).unwrap();
        dev.tick(t * MIN).unwrap();
        assert!(
            !dev.step_backend_name().starts_with("cpu"),
            "fell back: {}",
            dev.step_backend_name()
        );
        for &id in &ids {
            let (a, b) = (cpu.forecast(id).unwrap(), dev.forecast(id).unwrap());
            for (x, y) in a.values.iter().zip(&b.values) {
                for (p, q) in [
                    (x.mean, y.mean),
                    (x.p50, y.p50),
                    (x.p90, y.p90),
                    (x.p99, y.p99),
                ] {
                    assert!(
                        close(p, q, 1e-4, 1e-3),
                        "tick {t} customer {id}: {p} vs {q}"
                    );
                }
            }
            for (p, q) in a.scenario.iter().zip(&b.scenario) {
                assert!((p - q).abs() < 1e-4);
            }
            let ra = cpu.customer(id).unwrap().reserved_rate.micros() as f64;
            let rb = dev.customer(id).unwrap().reserved_rate.micros() as f64;
            assert!(
                close(ra, rb, 1e-4, 1.0),
                "tick {t} customer {id}: rate {ra} vs {rb}"
            );
        }
    }
    // the device's state goes back to the store (dropping the engine writes it back): a
    // reopened store, stepping on the CPU, continues like the CPU engine
    drop(dev);
    let mut re = Engine::open(dir.join("gpu.sb")).unwrap();
    re.set_predictor(Predictor::Lstm(Box::new(model))).unwrap();
    for e in [&mut cpu, &mut re] {
        e.tick(6 * MIN).unwrap();
    }
    for id in cpu.customer_ids() {
        let (a, b) = (cpu.forecast(id).unwrap(), re.forecast(id).unwrap());
        for (x, y) in a.values.iter().zip(&b.values) {
            assert!(
                close(x.p90, y.p90, 1e-4, 1e-3),
                "after reopen, customer {id}"
            );
        }
    }
    drop((cpu, re));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A device that does not finish within `GpuOptions::wait_timeout` (here 1 ns, which no
/// submission meets) fails the step with an error instead of stalling the tick: the tick goes on
/// on the CPU from the state last written back (here the first, so the forecasts are the CPU
/// engine's exactly), says why, and stays on the CPU.
#[test]
fn a_device_past_its_time_limit_falls_back_to_the_cpu() {
    let Some(g) = gpu_with(GpuOptions {
        choice: AdapterChoice::AnyGpu,
        wait_timeout: Some(Duration::from_nanos(1)),
        ..GpuOptions::from_env()
    }) else {
        return;
    };
    let Pair {
        dir,
        mut cpu,
        mut dev,
        ..
    } = Pair::new("timeout", 4096, 5, g);
    let contract = Contract::new(1 << 30, Rate::tokens_per_sec(1 << 20));
    for e in [&mut cpu, &mut dev] {
        for id in 0..4000u64 {
            e.add_customer(id, contract, 0).unwrap();
        }
    }
    for t in 1..=2u64 {
        for id in 0..4000u64 {
            let n = 1 + (id * 7919 + t * 31) % 50_000;
            for e in [&mut cpu, &mut dev] {
                e.allocate(id, n, (t - 1) * MIN + 1 + id).unwrap();
            }
        }
        cpu.tick(t * MIN).unwrap();
        dev.tick(t * MIN).unwrap();
        let name = dev.step_backend_name();
        assert!(
            name.starts_with("cpu (device backend failed") && name.contains("did not finish"),
            "tick {t}: {name}"
        );
        for id in 0..4000u64 {
            assert_eq!(
                cpu.forecast(id).unwrap(),
                dev.forecast(id).unwrap(),
                "tick {t} customer {id}"
            );
        }
    }
    drop((cpu, dev));
    let _ = std::fs::remove_dir_all(&dir);
}
