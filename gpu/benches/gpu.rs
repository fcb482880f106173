//! Criterion: the LSTM step alone and the whole reservation tick (upload, step, heads, decode,
//! download of one value per customer), CPU and GPU side by side for a few customer counts, the
//! GPU with each step kernel (`gpu_tiled`, `gpu_simple`). The GPU comes from `SB_GPU` (unset: any
//! adapter, software included); without one only the CPU runs, with a note.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shadowbucket::model::backend::Pick;
use shadowbucket::model::{CUSTOMER_FEATURES, CpuBackend, LstmModel, ModelSpec, StepBackend};
use shadowbucket_gpu::{AdapterChoice, GpuBackend, GpuOptions, StepKernel};

struct Inputs {
    model: LstmModel,
    x: Vec<f32>,
    glob: Vec<f32>,
    scale: Vec<f32>,
    state: Vec<f32>,
    out: Vec<f32>,
    one: Vec<f32>,
}

fn inputs(n: usize) -> Inputs {
    let model = LstmModel::random(ModelSpec::default(), 7).unwrap();
    let mut rng = StdRng::seed_from_u64(8);
    Inputs {
        x: (0..n * CUSTOMER_FEATURES)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect(),
        glob: (0..model.spec.global_dim())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect(),
        scale: (0..n).map(|_| rng.random_range(1.0f32..1e4)).collect(),
        state: vec![0.0; n * model.spec.state_dim()],
        out: vec![0.0; n * model.spec.head_dim()],
        one: vec![0.0; n],
        model,
    }
}

fn gpu(kernel: StepKernel) -> Option<GpuBackend> {
    let choice = match AdapterChoice::from_env() {
        AdapterChoice::Auto => AdapterChoice::AnyGpu,
        c => c,
    };
    let opts = GpuOptions {
        choice,
        kernel,
        ..GpuOptions::from_env()
    };
    GpuBackend::new(opts)
        .map_err(|e| eprintln!("gpu bench: {e}; CPU only"))
        .ok()
}

fn bench(c: &mut Criterion) {
    let mut gpus: Vec<(StepKernel, GpuBackend)> = [StepKernel::Tiled, StepKernel::Simple]
        .into_iter()
        .filter_map(|k| gpu(k).map(|g| (k, g)))
        .collect();
    for (group, tick) in [("lstm_step", false), ("tick", true)] {
        let mut grp = c.benchmark_group(group);
        grp.sample_size(10);
        for n in [10_000usize, 100_000] {
            let mut inp = inputs(n);
            let pick = Pick::new(&inp.model.spec, 0, 2).unwrap();
            grp.throughput(Throughput::Elements(n as u64));
            let mut cpu = CpuBackend::new();
            cpu.set_model(&inp.model).unwrap();
            grp.bench_with_input(BenchmarkId::new("cpu", n), &n, |b, _| {
                b.iter(|| {
                    if tick {
                        cpu.step_pick(
                            &inp.x,
                            &inp.glob,
                            &inp.scale,
                            &mut inp.state,
                            pick,
                            &mut inp.one,
                        )
                    } else {
                        cpu.step(&inp.x, &inp.glob, &mut inp.state, &mut inp.out)
                    }
                    .unwrap()
                })
            });
            for (kernel, g) in gpus.iter_mut() {
                g.set_model(&inp.model).unwrap();
                g.step(&inp.x, &inp.glob, &mut inp.state, &mut inp.out)
                    .unwrap();
                let id = BenchmarkId::new(format!("gpu_{kernel}"), n);
                grp.bench_with_input(id, &n, |b, _| {
                    b.iter(|| {
                        if tick {
                            g.step_pick(
                                &inp.x,
                                &inp.glob,
                                &inp.scale,
                                &mut inp.state,
                                pick,
                                &mut inp.one,
                            )
                            .unwrap();
                        } else {
                            g.bench_device_steps(1, &inp.glob, &inp.state).unwrap();
                        }
                    })
                });
            }
        }
        grp.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
