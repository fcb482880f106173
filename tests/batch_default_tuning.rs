//! The batch path with its default tuning (16384-slot shards, 32768-request chunks), on batches
//! large enough to use every part of it: many shards, several chunks gathered in parallel and
//! replayed in order, unknown slots, zero and oversized requests. The property tests check the
//! same algorithm against a reference model with tiny shards and chunks; this checks the sizes
//! it really runs with against the same engine fed one request at a time, also when the batch
//! call is made from inside rayon's pool, and when crowded ranges of slots are cut into pieces.

mod common;

use common::TempDir;
use shadowbucket::fixed::MAX_BURST_TOKENS;
use shadowbucket::{
    BatchOutcome, Contract, CreateOptions, Engine, EngineConfig, Keys, NO_SLOT, Outcome, Rate,
    Reservation,
};

const CUSTOMERS: u64 = 40_000;
const REQUESTS: usize = 70_000;

/// splitmix64, for a reproducible stream without a dependency.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Two identical engines: customers with varied contracts (one in 97 with the largest burst),
/// most with a reservation a little under their demand, and a pool small enough to run dry.
fn engines(dir: &TempDir) -> (Engine, Engine, Vec<u32>) {
    let mut cfg = EngineConfig::new(30_000, Rate::tokens_per_sec(20_000));
    cfg.alpha_ppm = 900_000;
    let contracts: Vec<(u64, Contract)> = (0..CUSTOMERS)
        .map(|k| {
            let burst = if k % 97 == 0 {
                MAX_BURST_TOKENS
            } else {
                8 + k % 40
            };
            (
                k * 7 + 1,
                Contract::new(burst, Rate::tokens_per_sec(1 + k % 5)),
            )
        })
        .collect();
    let mut out = Vec::new();
    let mut slots = Vec::new();
    for name in ["batch.sb", "single.sb"] {
        let mut e = Engine::create(
            dir.join(name),
            CreateOptions::new(CUSTOMERS + 100, cfg).without_model(),
        )
        .unwrap();
        slots = e.add_customers(&contracts, 0).unwrap();
        let res: Vec<Reservation> = slots
            .iter()
            .enumerate()
            .filter(|(k, _)| k % 5 != 0)
            .map(|(k, &slot)| Reservation {
                slot,
                rate: Rate::from_micros_per_sec(300_000 + (k as u64 % 7) * 100_000),
                capacity: 2 + k as u64 % 6,
            })
            .collect();
        e.tick_with(0, &res).unwrap();
        out.push(e);
    }
    let single = out.pop().unwrap();
    let batch = out.pop().unwrap();
    (batch, single, slots)
}

/// One batch of the stream: mostly small requests to known slots, some to slots without a
/// customer or past the capacity, some of zero tokens, some around the largest burst.
fn batch_of(b: u64, slots: &[u32]) -> (Vec<u32>, Vec<u64>) {
    (0..REQUESTS)
        .map(|i| {
            let r = mix(b << 32 | i as u64);
            let slot = match r % 1000 {
                0 => NO_SLOT,
                1 => CUSTOMERS as u32 + 50, // a free slot: no customer
                2 => u32::MAX - 1,          // past the capacity
                // a hot few, so customers repeat within a batch and across chunks
                3..=200 => slots[(r >> 20) as usize % 300],
                _ => slots[(r >> 20) as usize % slots.len()],
            };
            let tokens = match (r >> 10) % 500 {
                0 => 0,
                1 => MAX_BURST_TOKENS - 1,
                2 => MAX_BURST_TOKENS,
                3 => u64::MAX,
                _ => 1 + (r >> 40) % 6,
            };
            (slot, tokens)
        })
        .unzip()
}

/// Feeds batch `b`'s requests to `single` one at a time at `now`, checking each against the
/// batch's outcome and retry-after; returns how many of each outcome it saw.
fn same_as_one_at_a_time(
    single: &mut Engine,
    b: usize,
    keys: &[u32],
    tokens: &[u64],
    now: u64,
    out: &BatchOutcome,
) -> [u64; 7] {
    let mut seen = [0u64; 7];
    for (i, (&k, &n)) in keys.iter().zip(tokens).enumerate() {
        let d = single.allocate_slot(k, n, now).unwrap();
        assert_eq!(
            (out.outcomes[i], out.retry_after_ns[i]),
            (d.outcome, d.retry_after_ns),
            "batch {b}, request {i} (slot {k}, {n} tokens)"
        );
        seen[d.outcome as usize] += 1;
    }
    seen
}

/// Every `step`th customer looks the same in both engines.
fn same_customers(batch: &Engine, single: &Engine, step: usize) {
    for k in (0..CUSTOMERS).step_by(step) {
        let id = k * 7 + 1;
        assert_eq!(
            batch.customer(id).unwrap(),
            single.customer(id).unwrap(),
            "customer {id}"
        );
    }
}

/// The two engines' engine-wide state is the same (but for the count of batch calls and the
/// transaction numbers, which differ by construction).
fn same_state(batch: &Engine, single: &Engine, what: &str) {
    let (mut sa, sb) = (batch.stats(), single.stats());
    sa.counters.batches = sb.counters.batches;
    sa.last_committed = sb.last_committed;
    assert_eq!(sa, sb, "{what}: engine-wide state");
}

#[test]
fn large_batches_equal_one_request_at_a_time() {
    let dir = TempDir::new("default-tuning");
    let (mut batch, mut single, slots) = engines(&dir);
    let mut mix_seen = [0u64; 7];
    for b in 0..4u64 {
        let now = 1_000_000_000 * (b + 1);
        let (keys, tokens) = batch_of(b, &slots);
        let out = batch
            .allocate_batch(Keys::Slots(&keys), &tokens, now)
            .unwrap();
        let p = batch.last_batch_phases();
        assert!(
            !p.bucket.is_zero() && !p.local.is_zero() && !p.gather.is_zero(),
            "a batch of {REQUESTS} runs the parallel path: {p:?}"
        );
        let seen = same_as_one_at_a_time(&mut single, b as usize, &keys, &tokens, now, &out);
        for (m, n) in mix_seen.iter_mut().zip(seen) {
            *m += n;
        }
        same_state(&batch, &single, &format!("batch {b}"));
    }
    same_customers(&batch, &single, 37);
    // the stream really mixes every outcome the batch path has a separate route for
    for o in Outcome::ALL {
        assert!(mix_seen[o as usize] > 0, "no {o:?} in {mix_seen:?}");
    }
    assert!(batch.ledger(4_000_000_000).balanced());
}

#[test]
fn short_batches_run_sequentially_and_report_no_phases() {
    let dir = TempDir::new("phases-short");
    let (mut e, _, slots) = engines(&dir);
    e.allocate_batch(Keys::Slots(&slots[..100]), &[1; 100], 1_000_000_000)
        .unwrap();
    assert_eq!(e.last_batch_phases(), Default::default());
}

/// A batch call made from one of rayon's own worker threads (a caller that is itself a parallel
/// task, with other tasks keeping the pool busy) runs its parallel phases on the same pool
/// without deadlocking, and still equals its requests one at a time.
#[test]
fn batches_called_from_inside_rayon_equal_one_request_at_a_time() {
    let dir = TempDir::new("from-rayon");
    let (mut batch, mut single, slots) = engines(&dir);
    let streams: Vec<(Vec<u32>, Vec<u64>)> = (0..3u64).map(|b| batch_of(b, &slots)).collect();
    // on a thread of its own, so that a deadlock fails the test instead of hanging it
    let (done, finished) = std::sync::mpsc::channel();
    let work = streams.clone();
    std::thread::spawn(move || {
        let mut outs = Vec::new();
        let mut busy = 0u64;
        rayon::scope(|s| {
            s.spawn(|_| {
                for (b, (keys, tokens)) in work.iter().enumerate() {
                    let now = 1_000_000_000 * (b as u64 + 1);
                    outs.push(
                        batch
                            .allocate_batch(Keys::Slots(keys), tokens, now)
                            .unwrap(),
                    );
                    let p = batch.last_batch_phases();
                    assert!(!p.gather.is_zero(), "not the parallel path: {p:?}");
                }
            });
            s.spawn(|_| {
                use rayon::prelude::*;
                busy = (0..2_000_000u64)
                    .into_par_iter()
                    .map(mix)
                    .reduce(|| 0, u64::wrapping_add);
            });
        });
        let _ = done.send((batch, outs, busy));
    });
    let (batch, outs, busy) = match finished.recv_timeout(std::time::Duration::from_secs(120)) {
        Ok(r) => r,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("batch calls from inside rayon's pool did not finish in 120 s (a deadlock?)")
        }
        Err(e) => panic!("the thread making the batch calls failed (see its panic above): {e}"),
    };
    assert_ne!(busy, 0);
    assert_eq!(outs.len(), streams.len());
    for (b, ((keys, tokens), out)) in streams.iter().zip(&outs).enumerate() {
        let now = 1_000_000_000 * (b as u64 + 1);
        same_as_one_at_a_time(&mut single, b, keys, tokens, now, out);
    }
    same_state(&batch, &single, "after the batches");
}

/// A range of 16384 slots that holds most of a batch's requests (hot customers in neighbouring
/// slots) is cut into pieces decided in parallel, with the default tuning: from two threads on,
/// such batches run more shards than the store has ranges, the cut is kept from batch to batch
/// while the crowd stays and remade when it moves, and every batch still equals its requests one
/// at a time.
#[test]
fn crowded_ranges_are_cut_and_still_equal_one_request_at_a_time() {
    let dir = TempDir::new("crowded");
    let (mut batch, mut single, slots) = engines(&dir);
    // 40,000 customers in slots 0..40,000: ranges of 16384 slots 0, 1 and 2
    let ranges = (batch.capacity() as usize).div_ceil(shadowbucket::batch::SHARD_SLOTS);
    assert_eq!(ranges, 3);
    let cuts = rayon::current_num_threads() >= 2;
    // where the crowd is, per batch: a range's first 2,000 customers, skewed to the first few
    // (three in four requests), or nowhere
    let crowd = [Some(0), Some(0), Some(0), Some(1), Some(1), None];
    for (b, at) in crowd.into_iter().enumerate() {
        let now = 1_000_000_000 * (b as u64 + 1);
        let (keys, tokens): (Vec<u32>, Vec<u64>) = (0..REQUESTS)
            .map(|i| {
                let r = mix((b as u64) << 32 | i as u64);
                let k = match at {
                    Some(range) if !r.is_multiple_of(4) => {
                        // u^4 of a uniform u in [0, 1): most requests on the first customers
                        let u = (r >> 11) as f64 / (1u64 << 53) as f64;
                        range * 16384 + (2_000.0 * u.powi(4)) as usize
                    }
                    _ => (r >> 20) as usize % slots.len(),
                };
                (slots[k], 1 + (r >> 40) % 4)
            })
            .unzip();
        let out = batch
            .allocate_batch(Keys::Slots(&keys), &tokens, now)
            .unwrap();
        let shards = batch.last_batch_phases().shards;
        // (spread evenly, ranges 0 and 1 hold 41% of the requests each, which is crowded on two
        // threads too: the last batch's plan is whatever that gives)
        if at.is_some() {
            if cuts {
                assert!(shards > ranges, "batch {b}: {shards} shards, none cut");
            } else {
                assert_eq!(shards, ranges, "batch {b}: one thread cuts nothing");
            }
        }
        // a cut is kept while the crowd stays, and remade when it moves (and when it spreads:
        // then range 0 is crowded, and uncut)
        let kept = batch.last_batch_phases().kept_cut;
        assert_eq!(kept, cuts && [1, 2, 4].contains(&b), "batch {b}: cut kept");
        same_as_one_at_a_time(&mut single, b, &keys, &tokens, now, &out);
    }
    same_state(&batch, &single, "after the batches");
    same_customers(&batch, &single, 11);
}
