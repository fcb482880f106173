//! `shadowbucket bench`: the batch benchmarks, as JSON a person can compare across machines.
//!
//! A store of `customers` customers (contract 100 tokens/s, burst 6,000), a pool sized at 90% of
//! their summed contracts, reservations set by one tick; then batches of `batch` seeded requests
//! (1-100 tokens, ids uniform or Zipf(1.1)) through `allocate_batch` with slots resolved once,
//! one second apart, one untimed warm-up batch first. Then three predictive ticks with an LSTM
//! (the default shape, random weights: the time does not depend on them) are timed, with its step
//! on the CPU or, with `--device gpu`, on the GPU (a build with the `gpu` feature). The criterion
//! benches (`cargo bench --bench engine`, `cargo bench -p shadowbucket-gpu`) are the finer tools;
//! this one is for a quick, portable figure.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;
use shadowbucket::model::{LstmModel, ModelSpec};
use shadowbucket::predict::Predictor;
use shadowbucket::{
    Contract, CreateOptions, Engine, EngineConfig, Keys, Outcome, Rate, Reservation,
};

use crate::args::BenchArgs;
use crate::out::outln;
use crate::workload::SEC;
use crate::workload::rng::Rng;
use crate::{CliError, CmdResult, report};

struct TempStore(PathBuf, bool);

impl Drop for TempStore {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn stats(v: &mut [f64]) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    json!({ "min": v.first(), "median": v.get(v.len() / 2), "mean": mean, "max": v.last() })
}

/// An empty vector with room for `n` elements, or the error that says `what` did not fit.
fn buffer<T>(n: usize, what: &str) -> Result<Vec<T>, CliError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|e| CliError::Failed(format!("--batch {n}: no memory for the {what} ({e})")))?;
    Ok(v)
}

/// Runs `bench`.
pub fn run(a: BenchArgs) -> CmdResult {
    if a.customers == 0 || a.customers >= u32::MAX as u64 / 2 {
        return Err(CliError::Usage(format!(
            "--customers must be 1..{}, got {}",
            u32::MAX / 2,
            a.customers
        )));
    }
    if a.batch == 0 || a.iterations == 0 {
        return Err(CliError::Usage(
            "--batch and --iterations must be at least 1".into(),
        ));
    }
    if a.batch > shadowbucket::engine::MAX_BATCH {
        return Err(CliError::Usage(format!(
            "--batch must be at most {} (the most one batch call takes), got {}",
            shadowbucket::engine::MAX_BATCH,
            a.batch
        )));
    }
    if let Some(o) = &a.out {
        report::check_writable(o).map_err(CliError::Usage)?;
    }
    let dir = a.store_dir.clone().unwrap_or_else(std::env::temp_dir);
    if !dir.is_dir() {
        return Err(CliError::Failed(format!(
            "store folder {} does not exist",
            dir.display()
        )));
    }
    // The batch's arrays first: a batch too large for this machine's memory is an error, not an
    // abort (and leaves no store behind).
    let mut keys = buffer::<u32>(a.batch, "request ids")?;
    let mut tokens = buffer::<u64>(a.batch, "request sizes")?;
    let mut outcomes = buffer::<Outcome>(a.batch, "outcomes")?;
    let mut retry = buffer::<u64>(a.batch, "retry-afters")?;
    let path = dir.join(format!("shadowbucket-bench-{}.sb", std::process::id()));
    let n = a.customers;
    let rate = 100u64;
    let pool_rate = (n * rate * 9 / 10).max(1);
    let cfg = EngineConfig::new(pool_rate * 2, Rate::tokens_per_sec(pool_rate));
    let setup = Instant::now();
    let spec = ModelSpec::default();
    let mut e = Engine::create(&path, CreateOptions::new(n, cfg).for_model(&spec))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let _guard = TempStore(path.clone(), true);
    let model = LstmModel::random(spec, a.seed).map_err(|e| e.to_string())?;
    e.set_predictor(Predictor::Lstm(Box::new(model)))
        .map_err(|e| e.to_string())?;
    crate::device::use_device(&mut e, a.device)?;
    let contract = Contract::new(6_000, Rate::tokens_per_sec(rate));
    let list: Vec<(u64, Contract)> = (0..n).map(|i| (i + 1, contract)).collect();
    let slots = e.add_customers(&list, 0).map_err(|e| e.to_string())?;
    let res: Vec<Reservation> = slots
        .iter()
        .map(|&slot| Reservation {
            slot,
            rate: Rate::tokens_per_sec(70),
            capacity: 2_000,
        })
        .collect();
    e.tick_with(SEC, &res).map_err(|e| e.to_string())?;

    // The request stream: slots and tokens, seeded.
    let cdf: Option<Vec<f64>> = (!a.uniform).then(|| {
        let mut acc = 0.0;
        let mut v: Vec<f64> = (0..n)
            .map(|k| {
                acc += 1.0 / ((k + 1) as f64).powf(1.1);
                acc
            })
            .collect();
        v.iter_mut().for_each(|x| *x /= acc);
        v
    });
    let mut r = Rng::new(a.seed, 0, 0);
    keys.extend((0..a.batch).map(|_| {
        let k = match &cdf {
            Some(c) => c.partition_point(|&x| x < r.uniform()).min(n as usize - 1),
            None => (r.next_u64() % n) as usize,
        };
        slots[k]
    }));
    tokens.extend((0..a.batch).map(|_| 1 + r.next_u64() % 100));
    let setup_s = setup.elapsed().as_secs_f64();

    outcomes.resize(a.batch, Outcome::InvalidInput);
    retry.resize(a.batch, 0);
    let mut counts = [0u64; 7];
    let mut ns = Vec::with_capacity(a.iterations);
    // per phase of the batch path (in the order of `PhaseTimes::durations`), ms per batch
    let mut phases: [Vec<f64>; 4] = Default::default();
    // shards of the customer-local phase, per batch (more than the ranges when crowded ones
    // were cut)
    let mut shards = Vec::with_capacity(a.iterations);
    for it in 0..=a.iterations {
        let now = (2 + it as u64) * SEC;
        let t = Instant::now();
        e.allocate_batch_into(Keys::Slots(&keys), &tokens, now, &mut outcomes, &mut retry)
            .map_err(|e| e.to_string())?;
        let dt = t.elapsed().as_nanos() as f64;
        if it > 0 {
            ns.push(dt / a.batch as f64);
            let p = e.last_batch_phases();
            for (v, d) in phases.iter_mut().zip(p.durations()) {
                v.push(d.as_secs_f64() * 1e3);
            }
            shards.push(p.shards as f64);
            for o in &outcomes {
                counts[*o as usize] += 1;
            }
        }
    }
    let mut tick_ms = Vec::new();
    for k in 0..4u64 {
        let t = Instant::now();
        e.tick((10 + a.iterations as u64 + k) * 60 * SEC)
            .map_err(|e| e.to_string())?;
        // the first tick uploads the state to a device: untimed
        if k > 0 {
            tick_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let total: u64 = counts.iter().sum();
    let share = |k: usize| counts[k] as f64 / total.max(1) as f64;
    let median_ns = {
        let mut v = ns.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let out = json!({
        "benchmark": "allocate_batch (slots resolved once)",
        "device": e.step_backend_name(),
        "threads": rayon::current_num_threads(),
        "customers": n,
        "batch": a.batch,
        "iterations": a.iterations,
        "ids": if a.uniform { "uniform" } else { "zipf(1.1)" },
        "seed": a.seed,
        "setup_s": setup_s,
        "ns_per_decision": stats(&mut ns),
        "decisions_per_s": 1e9 / median_ns,
        "phases_ms": {
            "note": "Engine::last_batch_phases; all zero for batches short enough to run sequentially",
            "bucket": stats(&mut phases[0]),
            "local": stats(&mut phases[1]),
            "gather_and_replay": stats(&mut phases[2]),
            "replay_busy": stats(&mut phases[3]),
        },
        "shards": {
            "note": "shards of the customer-local phase: one per range of shadowbucket::batch::SHARD_SLOTS slots, more where crowded ranges were cut into pieces",
            "ranges": n.div_ceil(shadowbucket::batch::SHARD_SLOTS as u64),
            "per_batch": stats(&mut shards),
        },
        "outcome_shares": {
            "granted_shadow": share(0), "granted_pool": share(1),
            "denied_customer_limit": share(2), "denied_pool_exhausted": share(3),
        },
        "tick": {
            "kind": "predictive tick: LSTM step for every customer, forecasts, reservations",
            "predictor": e.predictor_name(),
            "ms": stats(&mut tick_ms),
        },
    });
    let text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
    match &a.out {
        Some(o) => {
            report::write_atomic(o, format!("{text}\n").as_bytes())?;
            outln!("{}", o.display());
        }
        None => outln!("{text}"),
    }
    Ok(0)
}
