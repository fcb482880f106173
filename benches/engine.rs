//! Criterion benches for the shadowbucket engine.
//!
//! Two groups, one entry point:
//!
//! * `allocate_batch`: batches of 1M requests against a store of 1M customers (and 10M with
//!   `SB_BENCH_10M=1`; that store is a file of several GB and takes minutes to build and warm
//!   up), customer ids drawn
//!   uniform and Zipf(1.1), in a steady state with a mixed outcome (mostly shadow grants, some
//!   pool fallbacks, some denials; the measured mix is printed to stderr once per configuration).
//!   Variants on the same request stream:
//!   - `engine_batch_slots`: `Engine::allocate_batch_into` with `Keys::Slots` resolved once;
//!   - `engine_batch_ids`: the same with `Keys::Ids` (the index lookup inside the call);
//!   - `engine_single_loop`: `Engine::allocate_slot` one request at a time;
//!   - `engine_resolve`: `Engine::resolve` alone, ids to slots (what `engine_batch_ids` adds);
//!   - `governor_keyed`: governor's keyed limiter (dashmap state store, fake clock),
//!     `check_key_n` per request, one thread;
//!   - `governor_keyed_rayon`: the same spread over rayon's pool (governor is thread-safe).
//! * `layout`: the random gather-update behind the 128-byte `Bucket` record: one array of
//!   128-byte records against one array per field, and both again with the indices first
//!   bucketed by 4096-slot shard (what the batch path does); with seven fields (read seven, write
//!   four), then with the twelve the engine's request path really touches.
//!
//! Requests are drawn fresh for every batch (outside the timing) from a seeded stream, so every
//! variant sees the same batches and each customer, over time, its expected demand. Simulated time
//! advances one second per batch. The store lives in a fresh directory under
//! `std::env::temp_dir()` (`TMPDIR`), deleted after each configuration.
//!
//! `cargo test --benches` runs every bench once at 1/100 of the size (criterion's test mode).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use governor::clock::{Clock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_distr::Zipf;
use rayon::prelude::*;
use shadowbucket::{
    Contract, CreateOptions, Engine, EngineConfig, Keys, Outcome, PhaseTimes, Rate, Reservation,
};

// ---- workload ------------------------------------------------------------------------------------

/// Requests per batch.
const REQUESTS: usize = 1_000_000;
/// `cargo test --benches` runs each bench once in test mode (no `--bench` argument): everything
/// is then this many times smaller, so the check takes seconds even unoptimised.
const TEST_MODE_DIVISOR: usize = 100;
/// Batches run before the first measurement, to reach a steady state, plus `WARMUP_PER_SCALE`
/// for each further multiple of the batch size in customers (each is touched that much less
/// often, so its buckets settle that much more slowly: 94 batches at 10M customers).
const WARMUP_BATCHES: usize = 40;
const WARMUP_PER_SCALE: usize = 6;
/// ... of which the last this many also go through governor.
const GOVERNOR_WARMUP_BATCHES: usize = 10;
/// Simulated time between batches, ns.
const DT_NS: u64 = 1_000_000_000;
/// Tokens per request: uniform in `1..=MAX_TOKENS`.
const MAX_TOKENS: u64 = 4;
const MEAN_TOKENS: f64 = (1 + MAX_TOKENS) as f64 / 2.0;
const MEAN_SQ_TOKENS: f64 = ((1 + MAX_TOKENS) * (1 + 2 * MAX_TOKENS)) as f64 / 6.0;
/// Zipf exponent of the skewed id distribution.
const ZIPF_S: f64 = 1.1;

// The contracts and reservations are sized from each customer's expected demand `d` (tokens/s,
// known exactly here: a perfect forecast of the mean), so the steady-state mix is set by the
// request-count noise around the mean.
/// Contract rate, in multiples of `d`.
const CONTRACT_RATE: f64 = 1.3;
/// Contract burst, in seconds of `d` (at least `3 * MAX_TOKENS`).
const CONTRACT_BURST_S: f64 = 6.0;
/// Reserved rate `rho`, in multiples of `d`: a little under the demand, so some requests fall back
/// to the pool, and (with `ALPHA_PPM`) the pool's whole supply a little under it too, so some are
/// denied when it runs dry.
const RESERVE_RATE: f64 = 0.91;
/// Shadow capacity `sigma`: `RESERVE_CAP_S` seconds of `d` plus `RESERVE_CAP_SD` standard
/// deviations of one second's demand (at least `2 * MAX_TOKENS`), to absorb the noise.
const RESERVE_CAP_S: f64 = 2.0;
const RESERVE_CAP_SD: f64 = 4.0;
/// Reservable share of the pool. The pool is sized so the reservations use the whole budget:
/// what is left for fallbacks is `1 - alpha` of the pool's rate and burst (plus shadow overflow).
const ALPHA_PPM: u32 = 970_000;

const SEED: u64 = 0x5eed_b0c4_e7ed;

#[derive(Clone, Copy, Debug)]
enum Dist {
    Uniform,
    Zipf,
}

#[derive(Clone, Copy, Debug)]
struct Setup {
    customers: usize,
    /// Requests per batch.
    requests: usize,
    dist: Dist,
}

impl Setup {
    fn label(&self) -> String {
        let n = if self.customers.is_multiple_of(1_000_000) {
            format!("{}M", self.customers / 1_000_000)
        } else if self.customers.is_multiple_of(1_000) {
            format!("{}k", self.customers / 1_000)
        } else {
            format!("{}", self.customers)
        };
        match self.dist {
            Dist::Uniform => format!("{n}_uniform"),
            Dist::Zipf => format!("{n}_zipf{ZIPF_S}"),
        }
    }
}

/// Whether criterion runs in test mode (`cargo test --benches`), not measuring.
fn test_mode() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// splitmix64: a bijection, so customer ids are distinct and scattered over the index.
fn customer_id(k: usize) -> u64 {
    let mut z = (k as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A directory under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sb-bench-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create bench temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Governor = RateLimiter<
    u64,
    DefaultKeyedStateStore<u64>,
    FakeRelativeClock,
    NoOpMiddleware<<FakeRelativeClock as Clock>::Instant>,
>;

/// The request stream: batch `b` is always the same requests (seeded by `b`), drawn fresh for
/// every batch so that, over time, each customer sees its expected demand (a short cycle of
/// pre-drawn batches would keep hitting the same customers: 4M draws over 10M customers).
struct Stream {
    customers: usize,
    dist: Dist,
    /// Zipf rank `r` (1 = hottest) belongs to customer `perm[r - 1]`: hot customers are spread
    /// over the slots rather than packed into the first shards.
    perm: Vec<u32>,
    zipf: Zipf<f64>,
}

impl Stream {
    /// Fills `ids` and `tokens` with batch `batch` (in parallel, by seeded chunks).
    fn fill(&self, batch: u64, ids: &mut [u64], tokens: &mut [u64]) {
        const CHUNK: usize = 1 << 15;
        let n = self.customers;
        ids.par_chunks_mut(CHUNK)
            .zip(tokens.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, (ic, tc))| {
                let seed = customer_id(((batch as usize) << 20) + c) ^ SEED ^ n as u64;
                let mut rng = SmallRng::seed_from_u64(seed);
                for (id, t) in ic.iter_mut().zip(tc) {
                    let k = match self.dist {
                        Dist::Uniform => rng.random_range(0..n),
                        Dist::Zipf => {
                            let r = (rng.sample(self.zipf) as usize).clamp(1, n);
                            self.perm[r - 1] as usize
                        }
                    };
                    *id = customer_id(k);
                    *t = rng.random_range(1..=MAX_TOKENS);
                }
            });
    }
}

/// The variants compared on the same stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// `Engine::allocate_batch_into` with `Keys::Slots` (ids resolved outside the timing).
    BatchSlots,
    /// `Engine::allocate_batch_into` with `Keys::Ids`.
    BatchIds,
    /// `Engine::allocate_slot` per request.
    SingleLoop,
    /// `Engine::resolve` alone: the part of `BatchIds` that `BatchSlots` leaves out.
    Resolve,
    /// governor's keyed limiter, `check_key_n` per request, one thread.
    Governor,
    /// The same over rayon's pool.
    GovernorRayon,
}

impl Variant {
    const ALL: [Variant; 6] = [
        Variant::BatchSlots,
        Variant::BatchIds,
        Variant::SingleLoop,
        Variant::Resolve,
        Variant::Governor,
        Variant::GovernorRayon,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::BatchSlots => "engine_batch_slots",
            Variant::BatchIds => "engine_batch_ids",
            Variant::SingleLoop => "engine_single_loop",
            Variant::Resolve => "engine_resolve",
            Variant::Governor => "governor_keyed",
            Variant::GovernorRayon => "governor_keyed_rayon",
        }
    }

    fn needs_slots(self) -> bool {
        matches!(self, Variant::BatchSlots | Variant::SingleLoop)
    }
}

/// One configuration's store, request stream and comparison limiter.
struct Bed {
    // Field order is drop order: the engine (and its mapping and lock) before the directory.
    engine: Engine,
    /// Engine clock, ns.
    now: u64,
    stream: Stream,
    /// Number of the next batch drawn from the stream.
    batch_no: u64,
    /// Number of the next side batch (warm-up and mix report).
    side_no: u64,
    ids: Vec<u64>,
    slots: Vec<u32>,
    tokens: Vec<u64>,
    outcomes: Vec<Outcome>,
    retry: Vec<u64>,
    governor: Governor,
    governor_clock: FakeRelativeClock,
    /// Each phase's minimum over the timed `engine_batch_slots` batches (criterion's warm-up
    /// included; in the order of `PhaseTimes::durations`), printed with the final mix.
    phase_min: [Duration; 4],
    /// Each phase's total over the same batches, and how many there were (for the means).
    phase_sum: [Duration; 4],
    phase_batches: u32,
    _dir: TempDir,
}

/// Batch numbers from here on are used for warming up and for the printed mix, so every variant
/// measures the stream from batch 0.
const SIDE_BATCHES: u64 = 1 << 40;
/// Batches whose outcome mix is printed.
const MIX_BATCHES: usize = 4;

impl Bed {
    fn build(setup: Setup) -> Bed {
        let t0 = Instant::now();
        let n = setup.customers;
        let label = setup.label();
        let mut rng = SmallRng::seed_from_u64(SEED ^ n as u64);

        // Each customer's share of the requests.
        let mut share = vec![0f64; n];
        let mut perm = Vec::new();
        match setup.dist {
            Dist::Uniform => share.fill(1.0 / n as f64),
            Dist::Zipf => {
                perm = (0..n as u32).collect();
                perm.shuffle(&mut rng);
                let h: f64 = (1..=n).map(|r| (r as f64).powf(-ZIPF_S)).sum();
                for (r, &k) in perm.iter().enumerate() {
                    share[k as usize] = ((r + 1) as f64).powf(-ZIPF_S) / h;
                }
            }
        }
        let stream = Stream {
            customers: n,
            dist: setup.dist,
            perm,
            zipf: Zipf::new(n as f64, ZIPF_S).expect("zipf parameters"),
        };

        // Contracts and reservations from the expected demand.
        let secs = DT_NS as f64 / 1e9;
        let demand = |k: usize| share[k] * setup.requests as f64 * MEAN_TOKENS / secs; // tokens/s
        let contract = |k: usize| {
            let d = demand(k);
            Contract::new(
                ((CONTRACT_BURST_S * d).ceil() as u64).max(3 * MAX_TOKENS),
                Rate::from_micros_per_sec(((CONTRACT_RATE * d * 1e6) as u64).max(1)),
            )
        };
        let reservation = |k: usize| {
            let d = demand(k);
            // Standard deviation of the tokens asked in one second (Poisson arrivals).
            let sd = (share[k] * setup.requests as f64 / secs * MEAN_SQ_TOKENS).sqrt();
            (
                (RESERVE_RATE * d * 1e6) as u64,
                ((RESERVE_CAP_S * d + RESERVE_CAP_SD * sd).ceil() as u64).max(2 * MAX_TOKENS),
            )
        };
        let (sum_rho, sum_sigma) = (0..n).map(reservation).fold((0u128, 0u128), |a, r| {
            (a.0 + r.0 as u128, a.1 + r.1 as u128)
        });
        let pool_rate = (sum_rho * 1_000_000).div_ceil(ALPHA_PPM as u128) as u64 + 1;
        let pool_burst = (sum_sigma * 1_000_000).div_ceil(ALPHA_PPM as u128) as u64 + 1;
        let mut cfg = EngineConfig::new(pool_burst, Rate::from_micros_per_sec(pool_rate));
        cfg.alpha_ppm = ALPHA_PPM;

        let dir = TempDir::new(&label);
        let mut engine = Engine::create(
            dir.0.join("bench.sb"),
            CreateOptions::new(n as u64, cfg).without_model(),
        )
        .expect("create store");
        let all: Vec<(u64, Contract)> = (0..n).map(|k| (customer_id(k), contract(k))).collect();
        let slots = engine.add_customers(&all, 0).expect("add customers");
        drop(all);
        let res: Vec<Reservation> = slots
            .iter()
            .enumerate()
            .map(|(k, &slot)| {
                let (rho, sigma) = reservation(k);
                Reservation {
                    slot,
                    rate: Rate::from_micros_per_sec(rho),
                    capacity: sigma,
                }
            })
            .collect();
        let report = engine.tick_with(0, &res).expect("tick");
        assert!(!report.cut_back, "reservations should fit the budget");
        drop(res);
        drop(share);

        // Governor: one quota for every key (it has no per-key quotas), the contract of a
        // customer with the mean demand.
        let d_mean = setup.requests as f64 * MEAN_TOKENS / n as f64 / secs;
        let rate = CONTRACT_RATE * d_mean;
        let burst = ((CONTRACT_BURST_S * d_mean).ceil() as u32).max(3 * MAX_TOKENS as u32);
        let quota = Quota::with_period(Duration::from_nanos((1e9 / rate) as u64))
            .expect("quota period")
            .allow_burst(NonZeroU32::new(burst).expect("burst"));
        let governor_clock = FakeRelativeClock::default();
        let governor = RateLimiter::dashmap_with_clock(quota, governor_clock.clone());

        let r = setup.requests;
        let mut bed = Bed {
            engine,
            now: 0,
            stream,
            batch_no: SIDE_BATCHES,
            side_no: 0,
            ids: vec![0; r],
            slots: vec![0; r],
            tokens: vec![0; r],
            outcomes: vec![Outcome::InvalidInput; r],
            retry: vec![0; r],
            governor,
            governor_clock,
            phase_min: [Duration::MAX; 4],
            phase_sum: [Duration::ZERO; 4],
            phase_batches: 0,
            _dir: dir,
        };
        let built = t0.elapsed();

        // Warm up to a steady state (shadow buckets start empty, standard buckets and the pool
        // full): long enough for every customer's buckets to settle, in simulated time.
        let t1 = Instant::now();
        let warmup = WARMUP_BATCHES + WARMUP_PER_SCALE * (n.div_ceil(r).max(1) - 1);
        for i in 0..warmup {
            bed.prepare(true);
            bed.run(Variant::BatchSlots);
            if i + GOVERNOR_WARMUP_BATCHES >= warmup {
                bed.run(Variant::Governor);
            }
        }
        eprintln!(
            "[{label}] store built in {built:.1?}, warmed up in {:.1?} ({n} customers, pool \
             rate {:.0} tokens/s, burst {pool_burst}, reserved {:.0} tokens/s, sigma \
             {sum_sigma}; governor quota {rate:.3} tokens/s, burst {burst})",
            t1.elapsed(),
            pool_rate as f64 / 1e6,
            sum_rho as f64 / 1e6,
        );
        bed.side_no = bed.batch_no;
        bed.print_mix(&label, "steady state");
        bed
    }

    /// Draws the next batch of the stream (and resolves its slots when needed).
    fn prepare(&mut self, slots: bool) {
        self.stream
            .fill(self.batch_no, &mut self.ids, &mut self.tokens);
        self.batch_no += 1;
        if slots {
            self.engine
                .resolve(&self.ids, &mut self.slots)
                .expect("resolve");
        }
    }

    /// Runs the prepared batch through one variant, one simulated second after the last.
    fn run(&mut self, v: Variant) {
        match v {
            Variant::BatchSlots | Variant::BatchIds => {
                self.now += DT_NS;
                let keys = if v == Variant::BatchSlots {
                    Keys::Slots(&self.slots)
                } else {
                    Keys::Ids(&self.ids)
                };
                self.engine
                    .allocate_batch_into(
                        keys,
                        &self.tokens,
                        self.now,
                        &mut self.outcomes,
                        &mut self.retry,
                    )
                    .expect("allocate batch");
            }
            Variant::SingleLoop => {
                self.now += DT_NS;
                let now = self.now;
                for ((&s, &t), o) in self.slots.iter().zip(&self.tokens).zip(&mut self.outcomes) {
                    *o = self
                        .engine
                        .allocate_slot(s, t, now)
                        .expect("allocate")
                        .outcome;
                }
            }
            Variant::Resolve => {
                self.engine
                    .resolve(&self.ids, &mut self.slots)
                    .expect("resolve");
            }
            Variant::Governor | Variant::GovernorRayon => {
                self.governor_clock.advance(Duration::from_nanos(DT_NS));
                let gov = &self.governor;
                let check = |(id, &t): (&u64, &u64)| {
                    let n = NonZeroU32::new(t as u32).expect("tokens > 0");
                    matches!(gov.check_key_n(id, n), Ok(Ok(())))
                };
                let allowed = if v == Variant::GovernorRayon {
                    self.ids
                        .par_iter()
                        .zip(self.tokens.par_iter())
                        .with_min_len(4096)
                        .filter(|&p| check(p))
                        .count()
                } else {
                    self.ids
                        .iter()
                        .zip(&self.tokens)
                        .filter(|&p| check(p))
                        .count()
                };
                // Kept in `retry[0]` for the mix report.
                self.retry[0] = allowed as u64;
            }
        }
    }

    /// Runs a few batches through the engine and governor and prints the outcome mix.
    fn print_mix(&mut self, label: &str, when: &str) {
        let saved = std::mem::replace(&mut self.batch_no, self.side_no);
        let mut counts = [0u64; 7];
        let mut allowed = 0u64;
        for _ in 0..MIX_BATCHES {
            self.prepare(true);
            self.run(Variant::BatchSlots);
            for o in &self.outcomes {
                counts[*o as usize] += 1;
            }
            self.run(Variant::Governor);
            allowed += self.retry[0];
        }
        self.side_no = std::mem::replace(&mut self.batch_no, saved);
        let total = (MIX_BATCHES * self.ids.len()) as f64;
        let pct = |c: u64| 100.0 * c as f64 / total;
        eprintln!(
            "[{label}] outcome mix ({when}, {} requests): shadow {:.2}%, pool {:.2}%, \
             denied customer-limit {:.2}%, denied pool-exhausted {:.2}%, exceeds-burst {:.2}%, \
             unknown {:.2}%; governor_keyed allowed {:.2}%",
            total as u64,
            pct(counts[Outcome::GrantedShadow as usize]),
            pct(counts[Outcome::GrantedPool as usize]),
            pct(counts[Outcome::DeniedCustomerLimit as usize]),
            pct(counts[Outcome::DeniedPoolExhausted as usize]),
            pct(counts[Outcome::ExceedsBurst as usize]),
            pct(counts[Outcome::UnknownCustomer as usize] + counts[Outcome::InvalidInput as usize]),
            pct(allowed),
        );
    }
}

/// Times `iters` batches of variant `v`; drawing the batches is left out of the timing.
fn timed(bed: &mut Bed, iters: u64, v: Variant) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        bed.prepare(v.needs_slots());
        let t = Instant::now();
        bed.run(v);
        total += t.elapsed();
        if v == Variant::BatchSlots {
            let p = bed.engine.last_batch_phases().durations();
            for ((m, sum), d) in bed.phase_min.iter_mut().zip(&mut bed.phase_sum).zip(p) {
                *m = (*m).min(d);
                *sum += d;
            }
            bed.phase_batches += 1;
        }
    }
    total
}

fn bench_allocate_batch(c: &mut Criterion) {
    let div = if test_mode() { TEST_MODE_DIVISOR } else { 1 };
    let mut sizes = vec![1_000_000];
    if std::env::var("SB_BENCH_10M").is_ok_and(|v| v == "1") {
        sizes.push(10_000_000);
    }
    let setups = sizes.into_iter().flat_map(|customers| {
        [Dist::Uniform, Dist::Zipf].map(|dist| Setup {
            customers: customers / div,
            requests: REQUESTS / div,
            dist,
        })
    });

    let mut group = c.benchmark_group("allocate_batch");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    for setup in setups {
        let label = setup.label();
        group.throughput(Throughput::Elements(setup.requests as u64));
        // Built on first use, so a filter that skips a configuration skips its setup too.
        let mut bed: Option<Bed> = None;
        for v in Variant::ALL {
            // Criterion calls the closure once per sample; the stream must not restart each time.
            let mut started = false;
            group.bench_function(BenchmarkId::new(v.name(), &label), |b| {
                let bed = bed.get_or_insert_with(|| Bed::build(setup));
                if !started {
                    // Every variant measures the same stream: batches 0, 1, 2, ...
                    bed.batch_no = 0;
                    started = true;
                }
                b.iter_custom(|iters| timed(bed, iters, v));
            });
        }
        if let Some(mut b) = bed.take() {
            if b.phase_min[0] != Duration::MAX {
                let minima: Vec<String> = PhaseTimes::NAMES
                    .iter()
                    .zip(b.phase_min)
                    .map(|(name, d)| format!("{name} {d:.2?}"))
                    .collect();
                let means: Vec<String> = PhaseTimes::NAMES
                    .iter()
                    .zip(b.phase_sum)
                    .map(|(name, d)| format!("{name} {:.2?}", d / b.phase_batches))
                    .collect();
                eprintln!(
                    "[{label}] engine_batch_slots phase minima: {}; means over {} batches: {}; \
                     shards in the last batch: {}",
                    minima.join(", "),
                    b.phase_batches,
                    means.join(", "),
                    b.engine.last_batch_phases().shards
                );
            }
            b.print_mix(&label, "after the benches");
        }
        // `b` (and its store directory) is dropped here, before the next configuration.
    }
    group.finish();
}

// ---- layout --------------------------------------------------------------------------------------

const LAYOUT_RECORDS: usize = 1_000_000;
const LAYOUT_UPDATES: usize = 1_000_000;
const LAYOUT_SHARD_BITS: u32 = 12; // 4096 slots per shard, as in the batch path
const FEMTO: i128 = 1_000_000_000_000_000;

/// The hot fields of `shadowbucket::layout::Bucket` (seven of them, 72 bytes), padded with cold
/// fields to the same 128-byte, 128-aligned record.
#[repr(C, align(128))]
#[derive(Clone, Copy, Default)]
struct Rec {
    std: i128,
    shadow: i128,
    last_ns: u64,
    rate: u64,
    burst: u64,
    rho: u64,
    outstanding: u64,
    _cold: [u64; 7],
}

const _: () = assert!(std::mem::size_of::<Rec>() == 128);

/// The same seven fields, one array each.
struct Soa {
    std: Vec<i128>,
    shadow: Vec<i128>,
    last_ns: Vec<u64>,
    rate: Vec<u64>,
    burst: Vec<u64>,
    rho: Vec<u64>,
    outstanding: Vec<u64>,
}

/// The update: reads the seven fields, writes four (`std`, `shadow`, `last_ns`, `outstanding`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn refill_take(
    std: &mut i128,
    shadow: &mut i128,
    last_ns: &mut u64,
    rate: u64,
    burst: u64,
    rho: u64,
    outstanding: &mut u64,
    now: u64,
    n: u64,
) {
    let dt = now.saturating_sub(*last_ns) as i128;
    *last_ns = now;
    let cap = burst as i128 * FEMTO;
    let s = (*std + rate as i128 * dt).min(cap);
    let sh = (*shadow + rho as i128 * dt).min(cap);
    let nf = n as i128 * FEMTO;
    let ok = s >= nf && sh >= nf;
    let take = if ok { nf } else { 0 };
    *std = s - take;
    *shadow = sh - take;
    *outstanding += if ok { n } else { 0 };
}

#[inline(always)]
fn tokens_for(i: u32) -> u64 {
    1 + (i & 3) as u64
}

fn update_aos(recs: &mut [Rec], idx: &[u32], now: u64) {
    for &i in idx {
        let r = &mut recs[i as usize];
        refill_take(
            &mut r.std,
            &mut r.shadow,
            &mut r.last_ns,
            r.rate,
            r.burst,
            r.rho,
            &mut r.outstanding,
            now,
            tokens_for(i),
        );
    }
}

fn update_soa(s: &mut Soa, idx: &[u32], now: u64) {
    for &i in idx {
        let i = i as usize;
        refill_take(
            &mut s.std[i],
            &mut s.shadow[i],
            &mut s.last_ns[i],
            s.rate[i],
            s.burst[i],
            s.rho[i],
            &mut s.outstanding[i],
            now,
            tokens_for(i as u32),
        );
    }
}

/// The twelve fields the engine's request path actually touches in `Bucket` (the seven above plus
/// `sigma`, the interval's grant and request counters, the journal `epoch` and the `flags`), in one
/// 128-byte record (101 bytes used).
#[repr(C, align(128))]
#[derive(Clone, Copy, Default)]
struct Rec12 {
    std: i128,
    shadow: i128,
    last_ns: u64,
    rate: u64,
    burst: u64,
    rho: u64,
    sigma: u64,
    outstanding: u64,
    granted: u64,
    epoch: u64,
    requests: u32,
    flags: u8,
}

const _: () = assert!(std::mem::size_of::<Rec12>() == 128);

/// The same twelve fields, one array each.
struct Soa12 {
    std: Vec<i128>,
    shadow: Vec<i128>,
    last_ns: Vec<u64>,
    rate: Vec<u64>,
    burst: Vec<u64>,
    rho: Vec<u64>,
    sigma: Vec<u64>,
    outstanding: Vec<u64>,
    granted: Vec<u64>,
    epoch: Vec<u64>,
    requests: Vec<u32>,
    flags: Vec<u8>,
}

/// The twelve-field update (reads twelve, writes seven), with the fields named by a prefix
/// (`r.` for a record, `s.` ... `[i]` for the arrays) so both layouts share one definition.
macro_rules! refill_take12 {
    ($($p:ident).+ $([$i:expr])?, $now:expr, $n:expr) => {{
        let (now, n) = ($now, $n);
        if $($p).+.flags$([$i])? & 1 != 0 {
            $($p).+.epoch$([$i])? = now;
            let dt = now.saturating_sub($($p).+.last_ns$([$i])?) as i128;
            $($p).+.last_ns$([$i])? = now;
            let cap = $($p).+.burst$([$i])? as i128 * FEMTO;
            let s = ($($p).+.std$([$i])? + $($p).+.rate$([$i])? as i128 * dt).min(cap);
            let scap = $($p).+.sigma$([$i])? as i128 * FEMTO;
            let sh = ($($p).+.shadow$([$i])? + $($p).+.rho$([$i])? as i128 * dt).min(scap);
            let nf = n as i128 * FEMTO;
            let ok = s >= nf && sh >= nf;
            let take = if ok { nf } else { 0 };
            $($p).+.std$([$i])? = s - take;
            $($p).+.shadow$([$i])? = sh - take;
            $($p).+.outstanding$([$i])? += if ok { n } else { 0 };
            $($p).+.granted$([$i])? += if ok { n } else { 0 };
            $($p).+.requests$([$i])? += 1;
        }
    }};
}

fn update_aos12(recs: &mut [Rec12], idx: &[u32], now: u64) {
    for &i in idx {
        let r = &mut recs[i as usize];
        refill_take12!(r, now, tokens_for(i));
    }
}

fn update_soa12(s: &mut Soa12, idx: &[u32], now: u64) {
    for &i in idx {
        let k = i as usize;
        refill_take12!(s[k], now, tokens_for(i));
    }
}

/// Stable counting sort of `idx` by shard into `out` (batch order kept within a shard).
fn bucket_by_shard(idx: &[u32], out: &mut [u32], hist: &mut [usize]) {
    hist.fill(0);
    for &i in idx {
        hist[(i >> LAYOUT_SHARD_BITS) as usize] += 1;
    }
    let mut pos = 0;
    for h in hist.iter_mut() {
        let c = *h;
        *h = pos;
        pos += c;
    }
    for &i in idx {
        let h = &mut hist[(i >> LAYOUT_SHARD_BITS) as usize];
        out[*h] = i;
        *h += 1;
    }
}

fn bench_layout(c: &mut Criterion) {
    let div = if test_mode() { TEST_MODE_DIVISOR } else { 1 };
    let (records, updates) = (LAYOUT_RECORDS / div, LAYOUT_UPDATES / div);
    let mut rng = SmallRng::seed_from_u64(SEED ^ 0x1a70);
    let idx: Vec<u32> = (0..updates)
        .map(|_| rng.random_range(0..records as u32))
        .collect();
    let rate = 2_500_000u64; // 2.5 tokens/s
    let mut recs = vec![
        Rec {
            std: 8 * FEMTO,
            shadow: 4 * FEMTO,
            rate,
            burst: 8,
            rho: rate,
            ..Rec::default()
        };
        records
    ];
    let mut soa = Soa {
        std: vec![8 * FEMTO; records],
        shadow: vec![4 * FEMTO; records],
        last_ns: vec![0; records],
        rate: vec![rate; records],
        burst: vec![8; records],
        rho: vec![rate; records],
        outstanding: vec![0; records],
    };
    let mut recs12 = vec![
        Rec12 {
            std: 8 * FEMTO,
            shadow: 4 * FEMTO,
            rate,
            burst: 8,
            rho: rate,
            sigma: 8,
            flags: 1,
            ..Rec12::default()
        };
        records
    ];
    let mut soa12 = Soa12 {
        std: vec![8 * FEMTO; records],
        shadow: vec![4 * FEMTO; records],
        last_ns: vec![0; records],
        rate: vec![rate; records],
        burst: vec![8; records],
        rho: vec![rate; records],
        sigma: vec![8; records],
        outstanding: vec![0; records],
        granted: vec![0; records],
        epoch: vec![0; records],
        requests: vec![0; records],
        flags: vec![1; records],
    };
    let shards = records.div_ceil(1 << LAYOUT_SHARD_BITS);
    let mut sorted = vec![0u32; updates];
    let mut hist = vec![0usize; shards];

    let mut group = c.benchmark_group("layout");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(updates as u64));
    let p = if records.is_multiple_of(1_000_000) {
        format!("{}M_records", records / 1_000_000)
    } else {
        format!("{}k_records", records / 1_000)
    };
    let mut now = 0u64;
    {
        // Each layout with the updates in random order, then bucketed by shard first. The
        // 12-field pair is the request path's real footprint.
        let mut layouts: [(&str, Update<'_>); 4] = [
            (
                "aos_128B_record",
                Box::new(|i, t| update_aos(&mut recs, i, t)),
            ),
            ("soa_7_arrays", Box::new(|i, t| update_soa(&mut soa, i, t))),
            (
                "aos_128B_record_12f",
                Box::new(|i, t| update_aos12(&mut recs12, i, t)),
            ),
            (
                "soa_12_arrays",
                Box::new(|i, t| update_soa12(&mut soa12, i, t)),
            ),
        ];
        for (name, update) in layouts.iter_mut() {
            for sharded in [false, true] {
                let id = if sharded {
                    format!("{name}_sharded")
                } else {
                    name.to_string()
                };
                group.bench_function(BenchmarkId::new(id, &p), |b| {
                    b.iter(|| {
                        now += 1_000_000;
                        if sharded {
                            bucket_by_shard(&idx, &mut sorted, &mut hist);
                            update(&sorted, now);
                        } else {
                            update(&idx, now);
                        }
                    })
                });
            }
        }
    }
    group.finish();
    black_box((
        recs.iter().map(|r| r.outstanding).sum::<u64>(),
        soa.outstanding.iter().sum::<u64>(),
        recs12.iter().map(|r| r.granted).sum::<u64>(),
        soa12.granted.iter().sum::<u64>(),
    ));
}

/// One layout's update over a list of record indices at a time.
type Update<'a> = Box<dyn FnMut(&[u32], u64) + 'a>;

criterion_group!(benches, bench_allocate_batch, bench_layout);
criterion_main!(benches);
