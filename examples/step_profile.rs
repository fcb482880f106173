//! Times the batched LSTM step against the plain GEMM of the same shapes, alternating, on one
//! run's inputs (a profiling aid; criterion's `tick` bench is the measurement of record).
//! Usage: `step_profile [customers] [tick]` (default 1,000,000; `tick`: time only the tick);
//! `STEP_CHUNK=rows` sets the customers per parallel chunk of both (default
//! `StepScratch::DEFAULT_CHUNK`).
use std::time::Instant;

use rayon::prelude::*;
use shadowbucket::model::step::gemm_acc;
use shadowbucket::model::{CUSTOMER_FEATURES, LstmModel, ModelSpec, StepScratch, step_batch};

/// Best of five `Engine::tick(now)` on a store of `n` customers that all used tokens, in ms.
fn time_tick(n: usize, model: &LstmModel) -> f64 {
    use shadowbucket::{Contract, CreateOptions, Engine, EngineConfig, Keys, Predictor, Rate};
    let dir = std::env::temp_dir().join(format!("sb-step-profile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = EngineConfig::new(1 << 40, Rate::tokens_per_sec(1 << 30));
    let opts = CreateOptions::new(n as u64, cfg).for_model(&model.spec);
    let mut e = Engine::create(dir.join("t.sb"), opts).expect("create");
    let c = Contract::new(1 << 20, Rate::tokens_per_sec(1 << 16));
    let all: Vec<(u64, Contract)> = (0..n as u64).map(|id| (id, c)).collect();
    e.add_customers(&all, 0).expect("add");
    e.set_predictor(Predictor::Lstm(Box::new(model.clone())))
        .expect("model");
    let slots: Vec<u32> = (0..n as u32).collect();
    let tokens: Vec<u64> = (0..n as u64).map(|i| 1 + i % 5000).collect();
    let iv = e.config().interval_ns;
    let mut best = f64::MAX;
    for k in 1..=5u64 {
        e.allocate_batch(Keys::Slots(&slots), &tokens, k * iv - iv / 2)
            .expect("batch");
        let t = Instant::now();
        e.tick(k * iv).expect("tick");
        best = best.min(t.elapsed().as_secs_f64());
        let tt = e.last_tick_timings();
        eprintln!(
            "tick {k}: features {:.1} ms, step {:.1} ms, policy {:.1} ms, commit {:.1} ms",
            tt.features_ns as f64 / 1e6,
            tt.step_ns as f64 / 1e6,
            tt.policy_ns as f64 / 1e6,
            tt.commit_ns as f64 / 1e6
        );
    }
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
    best * 1e3
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let spec = ModelSpec::default();
    if std::env::args().nth(2).as_deref() == Some("tick") {
        let model = LstmModel::random(spec, 1).expect("model");
        println!(
            "{n} customers: engine tick (LSTM) {:.1} ms",
            time_tick(n, &model)
        );
        return;
    }
    let (hd, o, cf) = (spec.hidden, spec.head_dim(), CUSTOMER_FEATURES);
    let g4 = 4 * hd;
    let model = LstmModel::random(spec.clone(), 1).expect("model");
    let ch: usize = std::env::var("STEP_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(StepScratch::DEFAULT_CHUNK);
    let prep = StepScratch::new(&model).with_chunk(ch);
    let x = vec![0.5f32; n * cf];
    let glob = vec![0.1f32; spec.global_dim()];
    let mut st = vec![0.1f32; n * spec.state_dim()];
    let h = vec![0.1f32; n * hd];
    let mut out = vec![0f32; n * o];
    let (w_x, w_h, w_o) = (
        vec![0.1f32; cf * g4],
        vec![0.1f32; hd * g4],
        vec![0.1f32; hd * o],
    );
    let (mut best_g, mut best_s) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        let t = Instant::now();
        x.par_chunks(ch * cf)
            .zip(h.par_chunks(ch * hd))
            .zip(out.par_chunks_mut(ch * o))
            .for_each_init(
                || vec![0f32; ch * g4],
                |gates, ((x, h), out)| {
                    let rows = x.len() / cf;
                    let gates = &mut gates[..rows * g4];
                    gemm_acc(rows, cf, g4, x, cf, &w_x, gates);
                    gemm_acc(rows, hd, g4, h, hd, &w_h, gates);
                    gemm_acc(rows, hd, o, h, hd, &w_o, out);
                },
            );
        best_g = best_g.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        step_batch(&prep, &x, &glob, &mut st, &mut out);
        best_s = best_s.min(t.elapsed().as_secs_f64());
    }
    drop((st, out, h, x));
    let tick_ms = time_tick(n, &model);
    println!(
        "{n} customers, {} threads: engine tick (LSTM) {tick_ms:.1} ms; gemm only {:.1} ms, step {:.1} ms, step at {:.0}% of the GEMM limit",
        rayon::current_num_threads(),
        best_g * 1e3,
        best_s * 1e3,
        100.0 * best_g / best_s
    );
}
