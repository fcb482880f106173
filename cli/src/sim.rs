//! The two-strategy runner: one workload, two engines, one clock.
//!
//! Every step's requests go, in the same order and at the same instant, through (a) plain token
//! buckets sharing the pool first come, first served (an engine whose reservable share is zero,
//! so nothing is ever reserved and every grant comes from the pool) and (b) shadow buckets whose
//! reservations the chosen predictor sets at every tick. Both engines have the same customers,
//! contracts and pool. Requests are taken as used in full (no settlement).
//!
//! Reservation slack and exceed-rate are measured per customer and interval, on up to
//! [`SimOptions::sample`] customers (every k-th): the reservation in force during the interval
//! (`rho * interval`) against the tokens the shadow engine granted the customer in it. Slack is
//! `sum(max(reserved - used, 0)) / sum(used)`; the exceed-rate is the share of customer-intervals
//! with `used > reserved`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use shadowbucket::{Contract, CreateOptions, Engine, EngineConfig, Keys, NO_SLOT, Outcome, Rate};

use shadowbucket::model::ModelSpec;
use shadowbucket::predict::{Predictor, Target};

use crate::predictor::{Choice, Shadow};
use crate::workload::{Batch, Class, SEC, Workload};

/// How to run a simulation.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The shadow engine's predictor.
    pub predictor: Choice,
    /// Tick interval, seconds (a multiple of the workload's step).
    pub interval_s: u64,
    /// Reservable share of the pool (the engine's `alpha`).
    pub alpha: f64,
    /// What of the forecast becomes the reservation.
    pub target: Target,
    /// Multiplier on the forecast quantile that becomes the reservation.
    pub headroom: f64,
    /// Customers on which slack and exceed-rate are measured (at most).
    pub sample: usize,
    /// Customers whose forecasts are plotted.
    pub plotted: usize,
    /// Where the two stores go (kept); `None`: a temporary folder, removed at the end.
    pub store_dir: Option<PathBuf>,
}

/// What one strategy did.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Requests by outcome (indexed by `Outcome as usize`).
    pub outcomes: [u64; 7],
    /// Tokens granted from shadow buckets and from the pool.
    pub tokens: [u64; 2],
    /// Requests of steady customers, and how many of them were denied by the pool and in all.
    pub steady: [u64; 3],
    /// Nanoseconds spent deciding, and decisions made.
    pub decide_ns: u128,
    /// Decisions made.
    pub decisions: u64,
    /// Nanoseconds spent in ticks, and ticks run.
    pub tick_ns: u128,
    /// Ticks run.
    pub ticks: u64,
    /// Ticks whose reservation asks were cut back to the reservable budget.
    pub cut_back: u64,
    /// Contention flags up at the end, and at most at any tick.
    pub flagged_now: u64,
    /// Most customers flagged at once.
    pub flagged_peak: u64,
    /// Whether the store passed its consistency check and balanced its ledger at the end.
    pub consistent: bool,
}

impl Tally {
    /// Share of steady customers' requests denied by the pool.
    pub fn steady_pool_denied(&self) -> f64 {
        self.steady[1] as f64 / self.steady[0].max(1) as f64
    }
    /// Decisions per second.
    pub fn decisions_per_s(&self) -> f64 {
        self.decisions as f64 / (self.decide_ns.max(1) as f64 / 1e9)
    }
    /// Milliseconds per tick.
    pub fn ms_per_tick(&self) -> f64 {
        self.tick_ns as f64 / 1e6 / self.ticks.max(1) as f64
    }
}

/// Per-interval figures, for the plots.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Hours since the start, at each tick.
    pub hours: Vec<f64>,
    /// Share of grants taken from shadow buckets in the interval (shadow engine).
    pub hit_rate: Vec<f64>,
    /// Tokens granted over the pool's supply in the interval, per strategy.
    pub utilization: [Vec<f64>; 2],
    /// Pool denials in the interval, per strategy.
    pub pool_denials: [Vec<u64>; 2],
}

/// One plotted customer: its forecast for each interval and what it asked.
#[derive(Clone, Debug, Default)]
pub struct Plotted {
    /// Customer id.
    pub id: u64,
    /// Its class.
    pub class: &'static str,
    /// Hours since the start at each interval's end.
    pub hours: Vec<f64>,
    /// Forecast mean of the interval's use.
    pub mean: Vec<f64>,
    /// Forecast p90.
    pub p90: Vec<f64>,
    /// Tokens asked in the interval.
    pub actual: Vec<f64>,
}

/// Everything a run produced.
#[derive(Clone, Debug, Default)]
pub struct SimResult {
    /// The workload's description.
    pub workload: String,
    /// Customers.
    pub customers: usize,
    /// Steady customers.
    pub steady_customers: usize,
    /// Pool rate, tokens/s.
    pub pool_rate: u64,
    /// The predictor's name.
    pub predictor: String,
    /// Steps run, and in the workload.
    pub steps_done: u64,
    /// Steps in the workload.
    pub steps_total: u64,
    /// Seconds of the workload's clock simulated.
    pub simulated_s: u64,
    /// Whether Ctrl-C stopped the run early.
    pub interrupted: bool,
    /// Wall-clock seconds.
    pub wall_s: f64,
    /// Tokens asked in all.
    pub tokens_asked: u64,
    /// Plain, then shadow.
    pub tally: [Tally; 2],
    /// Reservation slack (shadow).
    pub slack: f64,
    /// Reservation exceed-rate (shadow).
    pub exceed_rate: f64,
    /// Customer-intervals the slack was measured on.
    pub slack_samples: u64,
    /// Per-interval series.
    pub series: Series,
    /// Plotted customers.
    pub plotted: Vec<Plotted>,
    /// Where the stores are, when kept.
    pub stores: Option<PathBuf>,
}

impl SimResult {
    /// Pool utilization over the run: tokens granted over the pool's supply.
    pub fn utilization(&self, k: usize) -> f64 {
        let t = &self.tally[k];
        (t.tokens[0] + t.tokens[1]) as f64
            / (self.pool_rate as f64 * self.simulated_s.max(1) as f64)
    }
}

fn engine_config(pool: crate::workload::Pool, interval_s: u64, alpha: f64) -> EngineConfig {
    EngineConfig {
        alpha_ppm: (alpha * 1e6).round() as u32,
        interval_ns: interval_s * SEC,
        ..EngineConfig::new(pool.burst, Rate::tokens_per_sec(pool.rate))
    }
}

struct Stores {
    dir: PathBuf,
    keep: bool,
}

impl Drop for Stores {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `workload` through both strategies. `stop` ends the run early (at a step boundary);
/// `progress` is called after every step with (steps done, steps in all).
///
/// # Errors
/// A message when a store cannot be created (say, the store folder already holds one) or the
/// engine refuses something.
pub fn run(
    workload: &mut dyn Workload,
    opts: &SimOptions,
    stop: &Arc<AtomicBool>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SimResult, String> {
    let t_start = Instant::now();
    let step_s = workload.step_s();
    if opts.interval_s == 0 || !opts.interval_s.is_multiple_of(step_s) {
        return Err(format!(
            "the tick interval ({} s) must be a multiple of the workload's step ({step_s} s)",
            opts.interval_s
        ));
    }
    if !(0.0..=1.0).contains(&opts.alpha) {
        return Err(format!("alpha must be in [0, 1], got {}", opts.alpha));
    }
    // Read a model before anything is created: the shadow store is shaped for it.
    let predictor = crate::predictor::resolve(&opts.predictor)?;
    let spec = match &predictor {
        Predictor::Lstm(m) => m.spec.clone(),
        _ => ModelSpec::default(),
    };
    let customers = workload.customers().to_vec();
    let n = customers.len();
    let pool = workload.pool();
    let start_ns = workload.start_s() * SEC;

    let stores = match &opts.store_dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            for f in ["plain.sb", "shadow.sb"] {
                if d.join(f).exists() {
                    return Err(format!(
                        "{} already exists: choose another --store-dir or remove it",
                        d.join(f).display()
                    ));
                }
            }
            Stores {
                dir: d.clone(),
                keep: true,
            }
        }
        None => {
            let d = std::env::temp_dir().join(format!(
                "shadowbucket-sim-{}-{}",
                std::process::id(),
                t_start.elapsed().as_nanos()
            ));
            std::fs::create_dir_all(&d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            Stores {
                dir: d,
                keep: false,
            }
        }
    };
    let create = |name: &str, alpha: f64, model: bool| -> Result<Engine, String> {
        let o =
            CreateOptions::new(n as u64, engine_config(pool, opts.interval_s, alpha)).at(start_ns);
        let o = if model {
            o.for_model(&spec)
        } else {
            o.without_model()
        };
        let path = stores.dir.join(name);
        let mut e = Engine::create(&path, o).map_err(|e| format!("{}: {e}", path.display()))?;
        let list: Vec<(u64, Contract)> = customers.iter().map(|c| (c.id, c.contract)).collect();
        e.add_customers(&list, start_ns)
            .map_err(|e| format!("adding customers: {e}"))?;
        Ok(e)
    };
    let mut engines = [
        create("plain.sb", 0.0, false)?,
        create("shadow.sb", opts.alpha, true)?,
    ];
    let ids: Vec<u64> = customers.iter().map(|c| c.id).collect();
    let mut slots = [vec![NO_SLOT; n], vec![NO_SLOT; n]];
    for (e, s) in engines.iter().zip(&mut slots) {
        e.resolve(&ids, s).map_err(|e| e.to_string())?;
    }
    let mut shadow = Shadow::install(
        &mut engines[1],
        predictor,
        opts.target,
        opts.headroom,
        &ids,
        workload.announced(),
    )?;
    shadow.announce(&mut engines[1], start_ns)?;
    let steady: Vec<bool> = customers.iter().map(|c| c.class == Class::Steady).collect();

    let mut res = SimResult {
        workload: workload.describe(),
        customers: n,
        steady_customers: steady.iter().filter(|&&s| s).count(),
        pool_rate: pool.rate,
        predictor: engines[1].predictor_name(),
        steps_total: workload.steps(),
        ..SimResult::default()
    };

    // Plotted customers: the first of each class, then the largest others.
    let mut plotted_idx: Vec<usize> = Vec::new();
    for class in Class::ALL {
        if plotted_idx.len() < opts.plotted
            && let Some(i) = customers.iter().position(|c| c.class == class)
        {
            plotted_idx.push(i);
        }
    }
    let mut by_size: Vec<usize> = (0..n).collect();
    by_size.sort_by_key(|&i| std::cmp::Reverse(customers[i].contract.rate.micros()));
    for i in by_size {
        if plotted_idx.len() >= opts.plotted {
            break;
        }
        if !plotted_idx.contains(&i) {
            plotted_idx.push(i);
        }
    }
    res.plotted = plotted_idx
        .iter()
        .map(|&i| Plotted {
            id: customers[i].id,
            class: customers[i].class.name(),
            ..Plotted::default()
        })
        .collect();
    let stride = n.div_ceil(opts.sample.max(1)).max(1);
    let sampled: Vec<usize> = (0..n).step_by(stride).collect();

    let per_tick = opts.interval_s / step_s;
    let mut batch = Batch::default();
    let mut slot_batch = [Vec::new(), Vec::new()];
    let mut outcomes = Vec::new();
    let mut retry = Vec::new();
    let mut asked = vec![0u64; n]; // this interval
    let mut granted_shadow_engine = vec![0u64; n]; // this interval
    let mut pending: Vec<Option<(f64, f64)>> = vec![None; plotted_idx.len()];
    let mut reserved: Vec<u64> = vec![0; sampled.len()];
    let mut interval = [[0u64; 7]; 2];
    let mut interval_tokens = [0u64; 2];
    let (mut slack_num, mut used_sum) = (0f64, 0f64);
    let mut exceeded = 0u64;

    for step in 0..res.steps_total {
        if stop.load(Ordering::Relaxed) {
            res.interrupted = true;
            break;
        }
        workload.fill(step, &mut batch);
        let now = start_ns + (step + 1) * step_s * SEC;
        outcomes.resize(batch.len(), Outcome::InvalidInput);
        retry.resize(batch.len(), 0);
        for (&c, &t) in batch.who.iter().zip(&batch.tokens) {
            asked[c as usize] += t;
        }
        res.tokens_asked += batch.tokens.iter().sum::<u64>();
        for k in 0..2 {
            let sb = &mut slot_batch[k];
            sb.clear();
            sb.extend(batch.who.iter().map(|&c| slots[k][c as usize]));
            let t = Instant::now();
            engines[k]
                .allocate_batch_into(
                    Keys::Slots(sb),
                    &batch.tokens,
                    now,
                    &mut outcomes,
                    &mut retry,
                )
                .map_err(|e| e.to_string())?;
            let tl = &mut res.tally[k];
            tl.decide_ns += t.elapsed().as_nanos();
            tl.decisions += batch.len() as u64;
            for (j, &o) in outcomes.iter().enumerate() {
                let c = batch.who[j] as usize;
                let oi = o as usize;
                tl.outcomes[oi] += 1;
                interval[k][oi] += 1;
                if oi < 2 {
                    tl.tokens[oi] += batch.tokens[j];
                    interval_tokens[k] += batch.tokens[j];
                    if k == 1 {
                        granted_shadow_engine[c] += batch.tokens[j];
                    }
                }
                if steady[c] {
                    tl.steady[0] += 1;
                    tl.steady[1] += (o == Outcome::DeniedPoolExhausted) as u64;
                    tl.steady[2] += (!o.granted()) as u64;
                }
            }
        }
        res.steps_done = step + 1;
        if (step + 1) % per_tick == 0 {
            let hours = ((step + 1) * step_s) as f64 / 3600.0;
            // Slack: the reservation in force during the interval against what was granted.
            for (k, &i) in sampled.iter().enumerate() {
                let used = granted_shadow_engine[i] as f64;
                let r = reserved[k] as f64;
                if res.tally[1].ticks > 0 {
                    slack_num += (r - used).max(0.0);
                    used_sum += used;
                    exceeded += (used > r) as u64;
                    res.slack_samples += 1;
                }
            }
            for (p, (&i, pend)) in res.plotted.iter_mut().zip(plotted_idx.iter().zip(&pending)) {
                if let Some((m, q)) = pend {
                    p.hours.push(hours);
                    p.mean.push(*m);
                    p.p90.push(*q);
                    p.actual.push(asked[i] as f64);
                }
            }
            for (k, e) in engines.iter_mut().enumerate() {
                let t = Instant::now();
                let report = if k == 0 {
                    e.tick_with(now, &[]).map_err(|e| e.to_string())?
                } else {
                    shadow.tick(e, now)?
                };
                let tl = &mut res.tally[k];
                tl.cut_back += report.cut_back as u64;
                tl.tick_ns += t.elapsed().as_nanos();
                tl.ticks += 1;
                let f = e.stats().counters.flagged;
                tl.flagged_peak = tl.flagged_peak.max(f);
                tl.flagged_now = f;
            }
            for (k, &i) in sampled.iter().enumerate() {
                reserved[k] = engines[1]
                    .customer(ids[i])
                    .map(|v| {
                        (v.reserved_rate.micros() as u128 * opts.interval_s as u128 / 1_000_000)
                            as u64
                    })
                    .unwrap_or(0);
            }
            for (pend, &i) in pending.iter_mut().zip(&plotted_idx) {
                *pend = shadow.forecast(&engines[1], i).map(|q| (q.mean, q.p90));
            }
            let s = &mut res.series;
            s.hours.push(hours);
            let g1 = interval[1][0] + interval[1][1];
            s.hit_rate.push(interval[1][0] as f64 / g1.max(1) as f64);
            let supply = pool.rate as f64 * opts.interval_s as f64;
            for k in 0..2 {
                s.utilization[k].push(interval_tokens[k] as f64 / supply);
                s.pool_denials[k].push(interval[k][Outcome::DeniedPoolExhausted as usize]);
            }
            interval = [[0; 7]; 2];
            interval_tokens = [0; 2];
            asked.fill(0);
            granted_shadow_engine.fill(0);
        }
        progress(step + 1, res.steps_total);
    }
    res.simulated_s = res.steps_done * step_s;
    res.slack = slack_num / used_sum.max(1.0);
    res.exceed_rate = exceeded as f64 / res.slack_samples.max(1) as f64;
    let end = start_ns + res.simulated_s * SEC;
    for (k, e) in engines.iter().enumerate() {
        res.tally[k].consistent = e.check().is_ok() && e.ledger(end).balanced();
    }
    for e in &engines {
        e.flush().map_err(|e| e.to_string())?;
    }
    res.stores = stores.keep.then(|| stores.dir.clone());
    drop(engines);
    drop(stores);
    res.wall_s = t_start.elapsed().as_secs_f64();
    Ok(res)
}

/// The side-by-side table printed at the end of a run.
pub fn table(r: &SimResult) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let [p, h] = &r.tally;
    let row = |s: &mut String, name: &str, a: String, b: String| {
        let _ = writeln!(s, "{name:<40} {a:>16} {b:>16}");
    };
    row(&mut s, "", "plain buckets".into(), "shadow buckets".into());
    let names = [
        "granted from shadow bucket",
        "granted from pool (fallback)",
        "denied: customer limit (429)",
        "denied: pool exhausted (503)",
        "denied: exceeds burst",
    ];
    for (k, name) in names.iter().enumerate() {
        row(
            &mut s,
            name,
            p.outcomes[k].to_string(),
            h.outcomes[k].to_string(),
        );
    }
    row(
        &mut s,
        "tokens granted",
        (p.tokens[0] + p.tokens[1]).to_string(),
        (h.tokens[0] + h.tokens[1]).to_string(),
    );
    let pct = |v: f64| format!("{:.3}%", 100.0 * v);
    row(
        &mut s,
        "steady customers' requests denied by pool",
        pct(p.steady_pool_denied()),
        pct(h.steady_pool_denied()),
    );
    row(
        &mut s,
        "steady customers' requests denied (all)",
        pct(p.steady[2] as f64 / p.steady[0].max(1) as f64),
        pct(h.steady[2] as f64 / h.steady[0].max(1) as f64),
    );
    row(
        &mut s,
        "pool utilization",
        pct(r.utilization(0)),
        pct(r.utilization(1)),
    );
    row(&mut s, "reservation slack", "-".into(), pct(r.slack));
    row(
        &mut s,
        "reservation exceed-rate",
        "-".into(),
        pct(r.exceed_rate),
    );
    row(
        &mut s,
        "ticks that cut reservations back",
        "-".into(),
        pct(h.cut_back as f64 / h.ticks.max(1) as f64),
    );
    row(
        &mut s,
        "contention flags (end / peak)",
        format!("{} / {}", p.flagged_now, p.flagged_peak),
        format!("{} / {}", h.flagged_now, h.flagged_peak),
    );
    row(
        &mut s,
        "decisions per second (millions)",
        format!("{:.1}", p.decisions_per_s() / 1e6),
        format!("{:.1}", h.decisions_per_s() / 1e6),
    );
    row(
        &mut s,
        "ms per tick",
        format!("{:.2}", p.ms_per_tick()),
        format!("{:.2}", h.ms_per_tick()),
    );
    s
}
