//! Criterion benches for the predictive tick on the CPU.
//!
//! Group `lstm_step`, for N customers (1M; 1/100 of that in `cargo test --benches`) at hidden
//! size 32, one layer, the default features and four horizons, on the same random inputs:
//! - `gemm_only`: the step's three matrix products (`X·W_ihᵀ`, `H·W_hhᵀ`, the head), in the same
//!   chunks on rayon's pool, with no gate math: the machine's GEMM limit for these shapes;
//! - `step_batch`: the whole batched LSTM step (products plus gates plus the head);
//! - `engine_tick`: `Engine::tick(now)` on a store of N customers, each with use in the interval:
//!   features, scales, the step, decoding into the forecast columns, the reservation policy, and
//!   the tick's transaction.
//!
//! Throughput is reported in customers; the ratio `gemm_only / step_batch` (time) is the share of
//! the GEMM limit the step reaches.

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;
use shadowbucket::model::step::gemm_acc;
use shadowbucket::model::{CUSTOMER_FEATURES, LstmModel, ModelSpec, StepScratch, step_batch};
use shadowbucket::{Contract, CreateOptions, Engine, EngineConfig, Keys, Predictor, Rate};

const CUSTOMERS: usize = 1_000_000;
const TEST_MODE_DIVISOR: usize = 100;
const CHUNK: usize = StepScratch::DEFAULT_CHUNK;

fn test_mode() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

fn customers() -> usize {
    if test_mode() {
        CUSTOMERS / TEST_MODE_DIVISOR
    } else {
        CUSTOMERS
    }
}

fn bench_step(c: &mut Criterion) {
    let n = customers();
    let spec = ModelSpec::default();
    let hd = spec.hidden;
    let g4 = 4 * hd;
    let o = spec.head_dim();
    let model = LstmModel::random(spec.clone(), 1).expect("model");
    let prep = StepScratch::new(&model);
    let mut rng = SmallRng::seed_from_u64(5);
    let cf = CUSTOMER_FEATURES;
    let x: Vec<f32> = (0..n * cf).map(|_| rng.random_range(0.0..3.0)).collect();
    let glob: Vec<f32> = (0..spec.global_dim())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let mut state: Vec<f32> = (0..n * spec.state_dim())
        .map(|_| rng.random_range(-0.5..0.5))
        .collect();
    let mut out = vec![0f32; n * o];
    let w_x: Vec<f32> = (0..cf * g4).map(|_| rng.random_range(-0.2..0.2)).collect();
    let w_h: Vec<f32> = (0..hd * g4).map(|_| rng.random_range(-0.2..0.2)).collect();
    let w_o: Vec<f32> = (0..hd * o).map(|_| rng.random_range(-0.2..0.2)).collect();
    let h: Vec<f32> = (0..n * hd).map(|_| rng.random_range(-0.5..0.5)).collect();

    let mut g = c.benchmark_group("lstm_step");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::new("gemm_only", n), |b| {
        b.iter(|| {
            x.par_chunks(CHUNK * cf)
                .zip(h.par_chunks(CHUNK * hd))
                .zip(out.par_chunks_mut(CHUNK * o))
                .for_each_init(
                    || vec![0f32; CHUNK * g4],
                    |gates, ((x, h), out)| {
                        let rows = x.len() / cf;
                        let gates = &mut gates[..rows * g4];
                        gates.fill(0.0);
                        gemm_acc(rows, cf, g4, x, cf, &w_x, gates);
                        gemm_acc(rows, hd, g4, h, hd, &w_h, gates);
                        gemm_acc(rows, hd, o, h, hd, &w_o, out);
                    },
                );
            black_box(&out);
        })
    });
    g.bench_function(BenchmarkId::new("step_batch", n), |b| {
        b.iter(|| {
            step_batch(&prep, &x, &glob, &mut state, &mut out);
            black_box(&out);
        })
    });
    g.finish();
}

fn bench_tick(c: &mut Criterion) {
    let n = customers();
    let spec = ModelSpec::default();
    let dir = std::env::temp_dir().join(format!("sb-bench-tick-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let cfg = EngineConfig::new(1 << 40, Rate::tokens_per_sec(1 << 30));
    let opts = CreateOptions::new(n as u64, cfg).for_model(&spec);
    let mut e = Engine::create(dir.join("tick.sb"), opts).expect("create");
    let contract = Contract::new(1 << 20, Rate::tokens_per_sec(1 << 16));
    let all: Vec<(u64, Contract)> = (0..n as u64).map(|id| (id, contract)).collect();
    e.add_customers(&all, 0).expect("add");
    e.set_predictor(Predictor::Lstm(Box::new(
        LstmModel::random(spec, 1).expect("model"),
    )))
    .expect("predictor");
    let slots: Vec<u32> = (0..n as u32).collect();
    let mut rng = SmallRng::seed_from_u64(9);
    let tokens: Vec<u64> = (0..n).map(|_| rng.random_range(1..5_000)).collect();
    let interval = e.config().interval_ns;
    let mut now = interval;
    let mut g = c.benchmark_group("tick");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::new("engine_tick_lstm", n), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // one interval of use for every customer, outside the timing
                e.allocate_batch(Keys::Slots(&slots), &tokens, now - interval / 2)
                    .expect("batch");
                let t = std::time::Instant::now();
                black_box(e.tick(now).expect("tick"));
                total += t.elapsed();
                now += interval;
            }
            total
        })
    });
    g.finish();
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_step, bench_tick);
criterion_main!(benches);
