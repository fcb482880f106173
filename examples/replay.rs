//! Replays a built-in synthetic workload through two engines on the same clock and prints what
//! happened: plain token buckets sharing the pool first come, first served, against shadow buckets
//! whose reservations come from a simple per-customer forecast (an EWMA of the last intervals'
//! usage; the LSTM forecaster replaces it later).
//!
//! The workload is seeded and deterministic: steady customers with a daily rhythm (compressed to a
//! 20-minute cycle), and noisy neighbours that spike to many times their usual use without warning,
//! on a pool that is contended at peak.
//!
//! ```text
//! cargo run --release --example replay -- [customers] [minutes] [seed]
//! ```

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shadowbucket::{
    Contract, CreateOptions, Engine, EngineConfig, Keys, NO_SLOT, Outcome, Rate, Reservation,
};

const SEC: u64 = 1_000_000_000;
const INTERVAL_S: u64 = 60;

struct Customer {
    id: u64,
    mean: f64, // tokens per second, on average
    noisy: bool,
    spike_until: u64, // second
}

#[derive(Default, Clone, Copy)]
struct Tally {
    by: [u64; 7],
    steady_pool_denials: u64,
    steady_requests: u64,
    tokens_granted: u64,
    decide_ns: u128,
    decisions: u64,
    tick_ns: u128,
    ticks: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map_or(Ok(20_000), |s| s.parse())?;
    let minutes: u64 = args.get(1).map_or(Ok(60), |s| s.parse())?;
    let seed: u64 = args.get(2).map_or(Ok(7), |s| s.parse())?;
    let mut rng = StdRng::seed_from_u64(seed);

    let customers: Vec<Customer> = (0..n)
        .map(|i| {
            let noisy = rng.random::<f64>() < 0.15;
            Customer {
                id: 1_000_000 + i as u64 * 7,
                mean: 10f64.powf(rng.random_range(0.5..2.5)),
                noisy,
                spike_until: 0,
            }
        })
        .collect();
    let total_mean: f64 = customers.iter().map(|c| c.mean).sum();
    // The pool covers the average load with some room: the daily peak and the spikes contend
    // for it.
    let pool_rate = (total_mean * 1.35) as u64;
    let cfg = EngineConfig::new(pool_rate * 10, Rate::tokens_per_sec(pool_rate));
    // Plain buckets: nothing is reservable, so nothing is ever reserved (no bumps either).
    let plain_cfg = EngineConfig {
        alpha_ppm: 0,
        ..cfg
    };

    let dir = std::env::temp_dir().join(format!("shadowbucket-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut plain = Engine::create(
        dir.join("plain.sb"),
        CreateOptions::new(n as u64, plain_cfg).without_model(),
    )?;
    let mut shadow = Engine::create(
        dir.join("shadow.sb"),
        CreateOptions::new(n as u64, cfg).without_model(),
    )?;
    for c in &customers {
        // Contract: twice the customer's mean rate (ten times for the noisy ones, which bought
        // room for their peaks), a minute of it as burst.
        let rate = (c.mean * if c.noisy { 10.0 } else { 2.0 }).ceil() as u64;
        let contract = Contract::new(rate * 60, Rate::tokens_per_sec(rate));
        plain.add_customer(c.id, contract, 0)?;
        shadow.add_customer(c.id, contract, 0)?;
    }
    let ids: Vec<u64> = customers.iter().map(|c| c.id).collect();
    let mut slots = vec![NO_SLOT; n];
    shadow.resolve(&ids, &mut slots)?;
    let steady: Vec<bool> = customers.iter().map(|c| !c.noisy).collect();

    println!(
        "shadowbucket replay: {n} customers ({} noisy), {minutes} simulated minutes, pool {} tokens/s, seed {seed}",
        customers.iter().filter(|c| c.noisy).count(),
        pool_rate
    );

    let mut ewma = vec![0f64; n];
    let mut tally = [Tally::default(); 2];
    let mut batch_ids = Vec::with_capacity(n);
    let mut batch_tokens = Vec::with_capacity(n);
    let mut who = Vec::with_capacity(n);
    let mut out_o = Vec::new();
    let mut out_r = Vec::new();
    let mut customers = customers;
    for sec in 1..=minutes * 60 {
        let now = sec * SEC;
        // Daily rhythm compressed to 20 minutes: 0.75x .. 1.25x.
        let phase = (sec as f64 / 1200.0) * std::f64::consts::TAU;
        let rhythm = 1.0 + 0.25 * phase.sin();
        batch_ids.clear();
        batch_tokens.clear();
        who.clear();
        for (i, c) in customers.iter_mut().enumerate() {
            if c.noisy && c.spike_until < sec && rng.random::<f64>() < 1.0 / 600.0 {
                c.spike_until = sec + rng.random_range(60..300);
            }
            let spike = if c.spike_until >= sec { 25.0 } else { 1.0 };
            let jitter = if c.noisy {
                rng.random_range(0.3..1.7)
            } else {
                rng.random_range(0.9..1.1)
            };
            let want = c.mean * rhythm * spike * jitter;
            // One to three requests a second share the demand.
            let k = 1 + (want > 50.0) as usize + (want > 200.0) as usize;
            for _ in 0..k {
                batch_ids.push(c.id);
                batch_tokens.push(((want / k as f64).round() as u64).max(1));
                who.push(i);
            }
        }
        out_o.resize(batch_ids.len(), Outcome::InvalidInput);
        out_r.resize(batch_ids.len(), 0);
        for (e, eng) in [&mut plain, &mut shadow].into_iter().enumerate() {
            let t = Instant::now();
            eng.allocate_batch_into(
                Keys::Ids(&batch_ids),
                &batch_tokens,
                now,
                &mut out_o,
                &mut out_r,
            )?;
            let tl = &mut tally[e];
            tl.decide_ns += t.elapsed().as_nanos();
            tl.decisions += batch_ids.len() as u64;
            for (k, o) in out_o.iter().enumerate() {
                tl.by[*o as usize] += 1;
                if o.granted() {
                    tl.tokens_granted += batch_tokens[k];
                }
                if steady[who[k]] {
                    tl.steady_requests += 1;
                    tl.steady_pool_denials += (*o == Outcome::DeniedPoolExhausted) as u64;
                }
            }
        }
        if sec % INTERVAL_S == 0 {
            // Plain buckets: the tick only closes the intervals.
            let t = Instant::now();
            plain.tick_with(now, &[])?;
            tally[0].tick_ns += t.elapsed().as_nanos();
            tally[0].ticks += 1;
            // Shadow buckets: reserve 1.1x a robust EWMA of each customer's granted tokens per
            // second (observations clipped at 1.5x the average, so a spike nobody announced does
            // not take the reservable budget from predictable customers).
            let t = Instant::now();
            let mut res = Vec::with_capacity(n);
            for (i, &slot) in slots.iter().enumerate() {
                let last = shadow.customer(ids[i])?.this_interval;
                let used = (last.granted_shadow + last.granted_pool) as f64 / INTERVAL_S as f64;
                ewma[i] = if sec == INTERVAL_S {
                    used
                } else {
                    0.5 * ewma[i] + 0.5 * used.min(1.2 * ewma[i])
                };
                let rate = (ewma[i] * 1.1 * 1e6) as u64;
                res.push(Reservation {
                    slot,
                    rate: Rate::from_micros_per_sec(rate),
                    capacity: (ewma[i] * 1.1 * 5.0).ceil() as u64,
                });
            }
            shadow.tick_with(now, &res)?;
            tally[1].tick_ns += t.elapsed().as_nanos();
            tally[1].ticks += 1;
        }
    }

    let names = [
        "granted from shadow bucket",
        "granted from pool (fallback)",
        "denied: customer limit (429)",
        "denied: pool exhausted (503)",
        "exceeds burst",
        "unknown customer",
        "invalid",
    ];
    println!();
    println!(
        "{:<38} {:>16} {:>16}",
        "", "plain buckets", "shadow buckets"
    );
    for (k, name) in names.iter().enumerate().take(5) {
        println!("{:<38} {:>16} {:>16}", name, tally[0].by[k], tally[1].by[k]);
    }
    println!(
        "{:<38} {:>16} {:>16}",
        "tokens granted", tally[0].tokens_granted, tally[1].tokens_granted
    );
    let pct = |t: &Tally| 100.0 * t.steady_pool_denials as f64 / t.steady_requests.max(1) as f64;
    println!(
        "{:<38} {:>15.3}% {:>15.3}%",
        "steady customers denied by the pool",
        pct(&tally[0]),
        pct(&tally[1])
    );
    println!(
        "{:<38} {:>16} {:>16}",
        "contention flags raised (now)",
        plain.stats().counters.flagged,
        shadow.stats().counters.flagged
    );
    let rate = |t: &Tally| t.decisions as f64 / (t.decide_ns as f64 / 1e9) / 1e6;
    println!(
        "{:<38} {:>16.1} {:>16.1}",
        "decisions per second (millions)",
        rate(&tally[0]),
        rate(&tally[1])
    );
    println!(
        "{:<38} {:>16.2} {:>16.2}",
        "ms per tick",
        tally[0].tick_ns as f64 / 1e6 / tally[0].ticks.max(1) as f64,
        tally[1].tick_ns as f64 / 1e6 / tally[1].ticks.max(1) as f64
    );
    let now = minutes * 60 * SEC;
    for (name, e) in [("plain", &plain), ("shadow", &shadow)] {
        e.check()?;
        assert!(e.ledger(now).balanced(), "{name}: ledger out of balance");
    }
    println!("\nboth stores pass their consistency check and balance their ledgers");
    drop(plain);
    drop(shadow);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
