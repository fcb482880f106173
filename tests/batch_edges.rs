//! The batch path against the sequential path at the edges the property tests' generators do
//! not reach (they use one capacity, 320 = five shards of 64, one chunk size, and clocks near
//! 10^12): capacities that are not a multiple of the shard, a store of one slot, shard sizes and
//! chunk sizes of every kind, crowded ranges of shard slots cut into pieces (`tuning::set_split`
//! with targets of a few requests, the pieces' plan kept or remade from batch to batch), batches
//! at and around `tuning::parallel_min`, clocks at 0 and at `u64::MAX`, and rates and bursts at
//! their limits.
//!
//! Engine A runs each batch through the parallel algorithm, engine B one request at a time
//! through the sequential loop (`parallel_min` above the batch). The tuning is process-global,
//! so every test of this file holds [`LOCK`] and sets it before each call. `EDGE_CASES=n` runs
//! the property test with `n` cases (96 by default; from 32 on, 96 on one thread, it also asserts
//! that some of its batches cut a range into pieces).

mod common;

use std::cell::Cell;
use std::sync::Mutex;

use common::TempDir;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use shadowbucket::batch::tuning;
use shadowbucket::fixed::{MAX_BURST_TOKENS, MAX_RATE_MICROS};
use shadowbucket::{
    BatchOutcome, Contract, CreateOptions, Engine, EngineConfig, GrantPath, Keys, NO_SLOT, Outcome,
    Rate, Reservation,
};

static LOCK: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug)]
struct Tune {
    parallel_min: usize,
    shard: usize,
    chunk: usize,
    /// `tuning::set_split`'s target: small ones cut the range the customers share into pieces.
    split: usize,
}

fn parallel(t: Tune) {
    tuning::set(t.parallel_min, t.shard);
    tuning::set_pool_chunk(t.chunk);
    tuning::set_split(t.split);
}

fn sequential() {
    tuning::set(usize::MAX, 64);
}

#[derive(Clone, Debug)]
enum Key {
    Cust(usize),
    Slot(u32),
    Last,
    NoSlot,
}

#[derive(Clone, Debug)]
enum Op {
    Batch(Vec<(Key, u64)>),
    ById(Vec<(Key, u64)>),
    Settle(usize, u64),
    Grow(u64),
    Tick(Vec<(usize, u64, u64)>),
    Remove(usize),
    Add(Contract),
}

#[derive(Clone, Copy, Debug)]
enum Clock {
    Same,
    Fwd(u64),
    Back(u64),
    Max,
    Zero,
}

struct Pair {
    a: Engine,
    b: Engine,
    ids: Vec<u64>,
    grants: Vec<(u64, u64, GrantPath)>,
    next: u64,
    now: u64,
    tune: Tune,
    /// Batches through A that cut a range of shard slots into pieces.
    cut_batches: usize,
    _dir: TempDir,
}

impl Pair {
    fn new(cap: u64, cfg: EngineConfig, now: u64, tune: Tune) -> Pair {
        let dir = TempDir::new("edges");
        let mk = |n: &str| {
            Engine::create(
                dir.join(n),
                CreateOptions::new(cap, cfg).without_model().at(now),
            )
            .expect("create")
        };
        Pair {
            a: mk("a.sb"),
            b: mk("b.sb"),
            ids: Vec::new(),
            grants: Vec::new(),
            next: 0,
            now,
            tune,
            cut_batches: 0,
            _dir: dir,
        }
    }

    fn add(&mut self, c: Contract) {
        if self.a.len() == self.a.capacity() {
            return;
        }
        // ids 0 and the largest valid one among them
        let id = match self.next {
            0 => 0,
            1 => u64::MAX - 2,
            n => n,
        };
        self.next += 1;
        let sa = self.a.add_customer(id, c, self.now).expect("add A");
        let sb = self.b.add_customer(id, c, self.now).expect("add B");
        assert_eq!(sa, sb);
        self.ids.push(id);
    }

    fn slot(&self, k: &Key) -> u32 {
        match *k {
            Key::Cust(i) if !self.ids.is_empty() => {
                self.a.slot_of(self.ids[i % self.ids.len()]).unwrap()
            }
            Key::Cust(_) | Key::NoSlot => NO_SLOT,
            Key::Slot(s) => s % (self.a.capacity() as u32 + 3),
            Key::Last => self.a.capacity() as u32 - 1,
        }
    }

    fn id(&self, k: &Key) -> u64 {
        match *k {
            Key::Cust(i) if !self.ids.is_empty() => self.ids[i % self.ids.len()],
            // the index's own markers, and ids nobody has
            Key::Cust(_) | Key::NoSlot => u64::MAX,
            Key::Slot(s) if s % 3 == 0 => u64::MAX - 1,
            Key::Slot(s) => 1 << 40 | s as u64,
            Key::Last => u64::MAX - 3,
        }
    }

    /// Counts A's last batch if it cut a range of shard slots into pieces (ran more shards than
    /// the store has ranges).
    fn note_cut(&mut self) {
        let ranges = self.a.capacity().div_ceil(self.tune.shard as u64) as usize;
        if self.a.last_batch_phases().shards > ranges {
            self.cut_batches += 1;
        }
    }

    fn note_grants(&mut self, ids: &[u64], tokens: &[u64], out: &BatchOutcome) {
        for (i, o) in out.outcomes.iter().enumerate() {
            let path = match o {
                Outcome::GrantedShadow => GrantPath::Shadow,
                Outcome::GrantedPool => GrantPath::Pool,
                _ => continue,
            };
            self.grants.push((ids[i], tokens[i], path));
        }
    }

    fn apply(&mut self, op: &Op, clk: Clock) {
        self.now = match clk {
            Clock::Same => self.now,
            Clock::Fwd(d) => self.now.saturating_add(d),
            Clock::Back(d) => self.now.saturating_sub(d),
            Clock::Max => u64::MAX,
            Clock::Zero => 0,
        };
        let now = self.now;
        match op {
            Op::Batch(reqs) => {
                let slots: Vec<u32> = reqs.iter().map(|r| self.slot(&r.0)).collect();
                let tokens: Vec<u64> = reqs.iter().map(|r| r.1).collect();
                parallel(self.tune);
                let out = self
                    .a
                    .allocate_batch(Keys::Slots(&slots), &tokens, now)
                    .expect("batch A");
                self.note_cut();
                sequential();
                if slots.is_empty() {
                    // an empty batch still brings the engine's clock to `now`
                    self.b.allocate_batch(Keys::Slots(&[]), &[], now).unwrap();
                }
                for i in 0..slots.len() {
                    let d = self.b.allocate_slot(slots[i], tokens[i], now).unwrap();
                    assert_eq!(
                        (out.outcomes[i], out.retry_after_ns[i]),
                        (d.outcome, d.retry_after_ns),
                        "request {i} of {reqs:?} at {now}"
                    );
                }
                let ids: Vec<u64> = slots
                    .iter()
                    .map(|&s| {
                        self.ids
                            .iter()
                            .copied()
                            .find(|&id| self.a.slot_of(id) == Some(s))
                            .unwrap_or(u64::MAX)
                    })
                    .collect();
                self.note_grants(&ids, &tokens, &out);
            }
            Op::ById(reqs) => {
                let ids: Vec<u64> = reqs.iter().map(|r| self.id(&r.0)).collect();
                let tokens: Vec<u64> = reqs.iter().map(|r| r.1).collect();
                parallel(self.tune);
                let out = self
                    .a
                    .allocate_batch(Keys::Ids(&ids), &tokens, now)
                    .expect("batch A");
                self.note_cut();
                sequential();
                if ids.is_empty() {
                    self.b.allocate_batch(Keys::Ids(&[]), &[], now).unwrap();
                }
                for i in 0..ids.len() {
                    let d = self.b.allocate(ids[i], tokens[i], now).unwrap();
                    assert_eq!(
                        (out.outcomes[i], out.retry_after_ns[i]),
                        (d.outcome, d.retry_after_ns),
                        "request {i} of {reqs:?} at {now}"
                    );
                }
                self.note_grants(&ids, &tokens, &out);
            }
            Op::Settle(pick, used) => {
                if !self.grants.is_empty() {
                    let (id, n, path) = self.grants.swap_remove(pick % self.grants.len());
                    let u = used % (2 * n + 1);
                    let ra = self.a.settle(id, n, u, path, now);
                    let rb = self.b.settle(id, n, u, path, now);
                    assert_eq!(format!("{ra:?}"), format!("{rb:?}"));
                }
            }
            Op::Grow(by) => {
                let cap = self.a.capacity() + by;
                self.a.grow(cap).unwrap();
                self.b.grow(cap).unwrap();
            }
            Op::Tick(res) => {
                if self.ids.is_empty() {
                    return;
                }
                let mut rs: Vec<Reservation> = Vec::new();
                for &(i, r, c) in res {
                    let slot = self.a.slot_of(self.ids[i % self.ids.len()]).unwrap();
                    if rs.iter().all(|x| x.slot != slot) {
                        rs.push(Reservation {
                            slot,
                            rate: Rate::from_micros_per_sec(r),
                            capacity: c,
                        });
                    }
                }
                let ra = self.a.tick_with(now, &rs);
                let rb = self.b.tick_with(now, &rs);
                assert_eq!(format!("{ra:?}"), format!("{rb:?}"));
            }
            Op::Remove(i) => {
                if !self.ids.is_empty() {
                    let id = self.ids.swap_remove(i % self.ids.len());
                    self.grants.retain(|g| g.0 != id);
                    self.a.remove_customer(id, now).unwrap();
                    self.b.remove_customer(id, now).unwrap();
                }
            }
            Op::Add(c) => self.add(*c),
        }
        self.check();
    }

    fn check(&self) {
        let (mut sa, sb) = (self.a.stats(), self.b.stats());
        sa.counters.batches = sb.counters.batches;
        sa.last_committed = sb.last_committed;
        assert_eq!(sa, sb, "engine-wide state");
        for &id in &self.ids {
            assert_eq!(
                self.a.customer(id).unwrap(),
                self.b.customer(id).unwrap(),
                "customer {id}"
            );
        }
        assert_eq!(self.a.ledger(self.now), self.b.ledger(self.now));
        self.a.check().unwrap();
    }
}

fn rate() -> impl Strategy<Value = u64> {
    prop_oneof![
        1u64..=2_000_000,
        1u64..=500_000_000,
        Just(MAX_RATE_MICROS),
        1u64..=MAX_RATE_MICROS,
    ]
}

fn contract() -> impl Strategy<Value = Contract> {
    let burst =
        prop_oneof![8 => 1u64..=2_000, 1 => Just(MAX_BURST_TOKENS), 1 => 1u64..=MAX_BURST_TOKENS];
    (burst, rate(), 0u16..=3)
        .prop_map(|(b, r, w)| Contract::new(b, Rate::from_micros_per_sec(r)).with_weight(w))
}

fn config() -> impl Strategy<Value = EngineConfig> {
    (
        prop_oneof![1u64..=300, 1u64..=4_000, Just(MAX_BURST_TOKENS * 1024)],
        rate(),
        prop_oneof![Just(800_000u32), Just(1_000_000u32), 0u32..=1_000_000],
        prop_oneof![Just(60_000_000_000u64), 1u64..=10_000_000_000],
    )
        .prop_map(|(pb, pr, alpha, interval)| {
            let mut c = EngineConfig::new(pb, Rate::from_micros_per_sec(pr));
            c.alpha_ppm = alpha;
            c.interval_ns = interval;
            c
        })
}

fn tokens() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0u64),
        6 => 1u64..=20,
        2 => 1u64..=3_000,
        1 => prop_oneof![
            Just((1u64 << 35) - 2),
            Just((1u64 << 35) - 1),
            Just(1u64 << 35),
            Just((1u64 << 35) + 1),
            Just(MAX_BURST_TOKENS),
            Just(MAX_BURST_TOKENS + 1),
            Just(u64::MAX),
            any::<u64>(),
        ],
    ]
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        12 => any::<usize>().prop_map(Key::Cust),
        1 => any::<u32>().prop_map(Key::Slot),
        1 => Just(Key::Last),
        1 => Just(Key::NoSlot),
    ]
}

fn clock() -> impl Strategy<Value = Clock> {
    prop_oneof![
        3 => Just(Clock::Same),
        5 => (0u64..=3_000_000_000).prop_map(Clock::Fwd),
        2 => (0u64..=3_000_000_000).prop_map(Clock::Back),
        1 => any::<u64>().prop_map(Clock::Back),
        1 => any::<u64>().prop_map(Clock::Fwd),
        1 => Just(Clock::Max),
        1 => Just(Clock::Zero),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => vec((key(), tokens()), 0..70).prop_map(Op::Batch),
        4 => vec((key(), tokens()), 0..70).prop_map(Op::ById),
        3 => (any::<usize>(), any::<u64>()).prop_map(|(p, u)| Op::Settle(p, u)),
        1 => (1u64..=100).prop_map(Op::Grow),
        3 => vec(
            (
                any::<usize>(),
                prop_oneof![0u64..=5_000_000, 0u64..=2_000_000_000, Just(MAX_RATE_MICROS)],
                prop_oneof![0u64..=50, 0u64..=3_000],
            ),
            0..12
        )
        .prop_map(Op::Tick),
        1 => any::<usize>().prop_map(Op::Remove),
        1 => contract().prop_map(Op::Add),
    ]
}

/// Batches through the parallel algorithm give what the sequential loop gives, one request at a
/// time, over capacities, shard and chunk sizes, split targets, clocks and sizes at their edges.
/// Run by hand (not `proptest!`) so that it can also check its own reach: over its cases, some
/// batches must have cut a range into pieces, or the split targets it draws test nothing.
#[test]
fn parallel_equals_sequential_at_the_edges() {
    let cases: u32 = std::env::var("EDGE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(96);
    let strategy = (
        prop_oneof![Just(1u64), 1u64..=200, 60u64..=700],
        prop_oneof![Just(64usize), Just(128), Just(256), Just(16384)],
        prop_oneof![Just(1usize), 1usize..=40, Just(32768)],
        prop_oneof![Just(0usize), Just(usize::MAX), 1usize..=8],
        prop_oneof![
            Just(0u64),
            Just(1_000_000_000_000),
            Just(u64::MAX - 10_000_000_000)
        ],
        config(),
        vec(contract(), 1..40),
        vec((op(), clock()), 1..40),
    );
    // batches that cut a range, over all cases
    let cut = Cell::new(0usize);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(
        &strategy,
        |(cap, shard, chunk, split, t0, cfg, custs, ops)| {
            let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let tune = Tune {
                parallel_min: 1,
                shard,
                chunk,
                split,
            };
            let mut p = Pair::new(cap, cfg, t0, tune);
            for c in custs {
                p.add(c);
            }
            for (op, clk) in &ops {
                p.apply(op, *clk);
            }
            cut.set(cut.get() + p.cut_batches);
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    let cut = cut.into_inner();
    // (about a fifth of the batches with the default 96 cases.) On one thread only the explicit
    // targets cut (the default target never does there): about 15% of cases had a batch that
    // cut, against 36% on two threads (600 and 400 cases), so 32 cases with none came by chance
    // about once in 160 runs (0.85^32; `PROPTEST_RNG_SEED=320 EDGE_CASES=32
    // RAYON_NUM_THREADS=1`: none, where two threads cut 65 batches). With 96 cases on one thread
    // that is 0.85^96, about 2e-7; with 32 on two, 0.64^32, about 6e-7.
    let min_cases = if rayon::current_num_threads() == 1 {
        96
    } else {
        32
    };
    if cases >= min_cases {
        assert!(cut > 0, "no batch of {cases} cases cut a range into pieces");
    }
    eprintln!("{cut} batches cut a range into pieces over {cases} cases");
}

/// With the default tuning, batches just under, at and over `parallel_min` (8192), on a store
/// one shard and a few slots long, hot on its last slots and on one customer, give what the
/// requests give one at a time.
#[test]
fn default_tuning_around_parallel_min() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let cap = 16384 + 7;
    let cfg = EngineConfig::new(5_000, Rate::tokens_per_sec(1_000));
    let mut p = Pair::new(
        cap,
        cfg,
        0,
        Tune {
            parallel_min: 8192,
            shard: 16384,
            chunk: 32768,
            split: 0,
        },
    );
    for k in 0..cap {
        p.next = k + 2;
        let c = Contract::new(1 + k % 50, Rate::tokens_per_sec(1 + k % 3));
        p.add(c);
    }
    let sizes = [(1u64 << 35) - 1, 1 << 35, u64::MAX, 0, 1, 2, 3];
    for (round, len) in [8191usize, 8192, 8193, 8192 + 8192].into_iter().enumerate() {
        let reqs: Vec<(Key, u64)> = (0..len)
            .map(|i| {
                let key = match i % 7 {
                    0 => Key::Last,
                    1 => Key::Cust(0),
                    2 => Key::Slot(cap as u32 - 2),
                    3 => Key::NoSlot,
                    _ => Key::Cust(i * 31),
                };
                (key, sizes[(i / 7 + round) % sizes.len()])
            })
            .collect();
        p.apply(&Op::Batch(reqs), Clock::Fwd(400_000_000));
    }
    tuning::reset();
}

/// `tuning::set(0, …)` sends every batch down the parallel path, the empty one too: it brings
/// the clock to `now` and changes nothing else, whatever the split target.
#[test]
fn an_empty_batch_on_the_parallel_path() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for split in [0, 1, usize::MAX] {
        let cfg = EngineConfig::new(500, Rate::tokens_per_sec(100));
        let tune = Tune {
            parallel_min: 0,
            shard: 64,
            chunk: 7,
            split,
        };
        let mut p = Pair::new(300, cfg, 1_000_000_000_000, tune);
        for k in 0..40 {
            p.add(Contract::new(1 + k % 9, Rate::tokens_per_sec(1 + k % 4)));
        }
        let hot: Vec<(Key, u64)> = (0..200).map(|i| (Key::Cust(i % 3), 1)).collect();
        for op in [Op::Batch(hot), Op::Batch(Vec::new()), Op::ById(Vec::new())] {
            p.apply(&op, Clock::Fwd(1_000_000));
        }
    }
    tuning::reset();
}
