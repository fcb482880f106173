//! The deterministic workload shared by the crash worker (`main.rs`) and `tests/durability.rs`.
//!
//! Operation `k` of the stream for a seed is a pure function of `(seed, k)` and of the store's
//! committed state after operations `0..k`, and every operation is exactly one transaction that
//! commits (it never returns an error). So a store that says "`k` transactions of this stream
//! committed" can be reproduced exactly by replaying operations `0..k` in a fresh store.

use shadowbucket::{
    BatchOutcome, Contract, CreateOptions, Engine, EngineConfig, GrantPath, Keys, Rate, Reservation,
};
use std::path::Path;

/// Customers added at setup.
pub const CUSTOMERS: u64 = 20_000;
/// Slots in the store (room for the customers the stream adds).
pub const CAPACITY: u64 = 24_576;
/// The store's creation time, ns.
pub const T0: u64 = 1_000_000_000;
/// Time between two operations (plus a jitter below it), ns.
pub const STEP_NS: u64 = 250_000_000;
/// Ids of customers added by the stream start here.
pub const ADDED_BASE: u64 = 50_000_000_000;

/// SplitMix64: a tiny, portable, deterministic generator.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator for this seed and stream.
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        r.next();
        r
    }

    /// Next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        debug_assert!(lo <= hi);
        let span = hi - lo;
        if span == u64::MAX {
            return self.next();
        }
        lo + self.next() % (span + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }
}

/// The id of setup customer `i`.
pub fn customer_id(i: u64) -> u64 {
    1_000 + i * 7
}

/// The engine configuration of the stream's store.
pub fn config() -> EngineConfig {
    EngineConfig::new(20_000_000, Rate::tokens_per_sec(16_000_000))
}

/// A random contract.
pub fn contract(r: &mut Rng) -> Contract {
    let burst = r.range(50, 20_000);
    // micro-tokens/s, deliberately not round: 1 .. 2,000 tokens/s
    let rate = Rate::from_micros_per_sec(r.range(1_000_000, 2_000_000_000));
    Contract::new(burst, rate).with_weight(r.range(1, 3) as u16)
}

/// Creates the store with its setup customers (not part of the stream: the test runs it).
pub fn setup(path: &Path, seed: u64) -> shadowbucket::Result<Engine> {
    let mut eng = Engine::create(path, CreateOptions::new(CAPACITY, config()).at(T0))?;
    let mut r = Rng::new(seed, u64::MAX);
    for i in 0..CUSTOMERS {
        eng.add_customer(customer_id(i), contract(&mut r), T0)?;
    }
    Ok(eng)
}

/// The time of operation `k`, ns (strictly increasing in `k`).
pub fn op_time(seed: u64, k: u64) -> u64 {
    let jitter = Rng::new(seed, 0x7133_0000_0000_0000 ^ k).next() % STEP_NS;
    T0 + (k + 1) * STEP_NS + jitter
}

/// One operation of the stream: exactly one transaction.
#[derive(Clone, Debug)]
pub enum Op {
    /// A batch of requests.
    Batch {
        /// Customer ids (some unknown).
        ids: Vec<u64>,
        /// Tokens (some zero, some above the burst).
        tokens: Vec<u64>,
    },
    /// A tick with these reservations.
    Tick(Vec<Reservation>),
    /// A settle.
    Settle {
        /// Customer.
        id: u64,
        /// Tokens granted.
        granted: u64,
        /// Tokens used.
        used: u64,
        /// Path.
        path: GrantPath,
    },
    /// Add a customer.
    Add(u64, Contract),
    /// Remove a customer.
    Remove(u64),
    /// Change a contract.
    Update(u64, Contract),
}

/// Largest batch (the crash worker's big batches are drawn in `BIG_MIN..=BIG_MAX`).
pub const BIG_MAX: u64 = 200_000;
/// Smallest big batch.
pub const BIG_MIN: u64 = 50_000;

fn batch(r: &mut Rng, len: u64) -> Op {
    let mut ids = Vec::with_capacity(len as usize);
    let mut tokens = Vec::with_capacity(len as usize);
    for _ in 0..len {
        let x = r.next();
        let id = match x % 100 {
            0 => u64::MAX - (x >> 63),             // reserved ids
            1 => (x >> 8) | (1 << 60),             // unknown
            2..=4 => ADDED_BASE + (x >> 8) % 4096, // added by the stream, maybe
            _ => customer_id((x >> 8) % CUSTOMERS),
        };
        let y = r.next();
        let n = match y % 200 {
            0 => 0,           // invalid
            1 => 30_000,      // above every burst
            2..=9 => y >> 50, // large
            _ => 1 + (y >> 8) % 40,
        };
        ids.push(id);
        tokens.push(n);
    }
    Op::Batch { ids, tokens }
}

/// Which operations a stream is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// Mostly large batches (50k-200k requests), with small batches, ticks, settles and
    /// customer changes mixed in.
    Batches,
    /// No large batch: ticks (the longest transactions left), settles, customer changes and
    /// small batches, so that kills land inside those.
    Small,
}

impl Mix {
    /// The name on the worker's command line.
    pub fn name(self) -> &'static str {
        match self {
            Mix::Batches => "batches",
            Mix::Small => "small",
        }
    }

    /// From the name on the command line.
    pub fn parse(s: &str) -> Option<Mix> {
        match s {
            "batches" => Some(Mix::Batches),
            "small" => Some(Mix::Small),
            _ => None,
        }
    }
}

/// Operation `k` of the stream for `seed` and `mix`, decided from the committed state `eng`.
pub fn make_op(seed: u64, mix: Mix, k: u64, eng: &Engine) -> Op {
    let mut r = Rng::new(seed, k);
    let mut kind = r.next() % 100;
    if mix == Mix::Small {
        // no large batch; ticks get the largest share
        kind = match kind {
            0..=39 => 70 + kind % 8,
            40..=54 => 55 + kind % 15,
            k => k,
        };
    }
    match kind {
        0..=54 => {
            let len = r.range(BIG_MIN, BIG_MAX);
            batch(&mut r, len)
        }
        55..=69 => {
            let len = r.range(1, 2_000);
            batch(&mut r, len)
        }
        70..=77 => {
            // a tick: reservations for a random third of the customers; now and then the asks
            // exceed the budget and are cut back
            let scale = if r.chance(1, 4) { 40 } else { 1 };
            let mut res = Vec::new();
            let want = r.range(0, CUSTOMERS / 3);
            for _ in 0..want {
                let id = customer_id(r.range(0, CUSTOMERS - 1));
                if let Some(slot) = eng.slot_of(id) {
                    res.push(Reservation {
                        slot,
                        rate: Rate::from_micros_per_sec(r.range(0, 200_000_000) * scale),
                        capacity: r.range(0, 500) * scale,
                    });
                }
            }
            res.sort_by_key(|x| x.slot);
            res.dedup_by_key(|x| x.slot);
            // shuffle a little so the engine sorts
            if res.len() > 2 {
                let a = r.range(0, res.len() as u64 - 1) as usize;
                let b = r.range(0, res.len() as u64 - 1) as usize;
                res.swap(a, b);
            }
            Op::Tick(res)
        }
        78..=91 => {
            // a settle of a customer with tokens outstanding (the first one found from a random
            // start), else a small batch
            let start = r.range(0, CUSTOMERS - 1);
            for d in 0..64 {
                let id = customer_id((start + d) % CUSTOMERS);
                if let Ok(v) = eng.customer(id)
                    && v.outstanding > 0
                {
                    let granted = r.range(1, v.outstanding.min(100));
                    let used = r.range(0, 2 * granted);
                    let path = if r.chance(1, 2) {
                        GrantPath::Shadow
                    } else {
                        GrantPath::Pool
                    };
                    return Op::Settle {
                        id,
                        granted,
                        used,
                        path,
                    };
                }
            }
            batch(&mut r, 100)
        }
        92..=95 => {
            // remove a setup customer, or add it back when it is gone
            let id = customer_id(r.range(0, CUSTOMERS - 1));
            if eng.slot_of(id).is_some() {
                Op::Remove(id)
            } else {
                Op::Add(id, contract(&mut r))
            }
        }
        96..=97 => {
            let id = ADDED_BASE + r.range(0, 4095);
            if eng.slot_of(id).is_some() {
                Op::Remove(id)
            } else if eng.len() + 1 < eng.capacity() {
                Op::Add(id, contract(&mut r))
            } else {
                batch(&mut r, 10)
            }
        }
        _ => {
            let id = customer_id(r.range(0, CUSTOMERS - 1));
            if eng.slot_of(id).is_some() {
                Op::Update(id, contract(&mut r))
            } else {
                batch(&mut r, 10)
            }
        }
    }
}

/// Applies one operation at `now`. Returns the batch outcomes for a batch.
///
/// # Panics
/// When the engine refuses it: the stream only makes operations that commit.
pub fn apply(eng: &mut Engine, op: &Op, now: u64) -> Option<BatchOutcome> {
    match op {
        Op::Batch { ids, tokens } => Some(
            eng.allocate_batch(Keys::Ids(ids), tokens, now)
                .expect("batch"),
        ),
        Op::Tick(res) => {
            eng.tick_with(now, res).expect("tick");
            None
        }
        Op::Settle {
            id,
            granted,
            used,
            path,
        } => {
            eng.settle(*id, *granted, *used, *path, now)
                .expect("settle");
            None
        }
        Op::Add(id, c) => {
            eng.add_customer(*id, *c, now).expect("add");
            None
        }
        Op::Remove(id) => {
            eng.remove_customer(*id, now).expect("remove");
            None
        }
        Op::Update(id, c) => {
            eng.update_contract(*id, *c, now).expect("update");
            None
        }
    }
}
