//! The plain token bucket against the `governor` crate (0.10, GCRA), decision for decision.
//!
//! A customer's standard bucket of `burst` tokens refilled at one token every `P` ns is, when the
//! pool never limits and nothing is reserved, exactly governor's
//! `Quota::with_period(P ns).allow_burst(burst)` with `check_n`: GCRA's theoretical arrival time
//! `tat` and our level are two encodings of the same state (`level = burst - (tat - now) / P`,
//! capped at `burst`), and our femto-token arithmetic is exact for every `P` that divides
//! 10^15 ns. So on any stream of requests and clock advances:
//!
//! | governor                       | shadowbucket                                   |
//! |--------------------------------|------------------------------------------------|
//! | `Ok(Ok(_))`                    | `GrantedPool` (no reservation: the pool path), retry 0 |
//! | `Ok(Err(not_until))`           | `DeniedCustomerLimit`                          |
//! | `Err(InsufficientCapacity(b))` | `ExceedsBurst` (`b` is the burst), retry `u64::MAX` |
//!
//! and the retry-after of a denial equals `not_until.wait_time_from(clock.now())` **exactly**, to
//! the nanosecond: governor's earliest conforming time is `tat + (n - 1) P - (burst - 1) P`, our
//! retry-after is `ceil((n * 10^15 - level) / rate)` with `rate = 10^15 / P`, and the two are the
//! same integer (no 1-token or 1-ns rounding difference appears, and the test asserts equality).
//!
//! Engine time is the fake clock's elapsed nanoseconds; governor's keys and our customers both
//! start full.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use governor::clock::{Clock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{InsufficientCapacity, Quota, RateLimiter};
use shadowbucket::{Contract, CreateOptions, Engine, EngineConfig, Keys, Outcome, Rate};

type Direct =
    RateLimiter<NotKeyed, InMemoryState, FakeRelativeClock, NoOpMiddleware<governor::nanos::Nanos>>;
type Keyed = RateLimiter<
    u64,
    DefaultKeyedStateStore<u64>,
    FakeRelativeClock,
    NoOpMiddleware<governor::nanos::Nanos>,
>;

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sb-governor-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Periods (ns per token) for which `10^15 / P` is whole, and bursts.
const DIRECT: &[(u64, u32)] = &[
    (1, 5),
    (1_000, 1),
    (2_000, 3),
    (3_125, 17),
    (4_000, 10),
    (5_000, 100),
    (8_000, 1_000),
    (10_000, 40_000),
    (125_000, 50_000),
    (1_000_000, 7),
    (1_000_000_000, 2),
    (1_000_000_000_000, 4),
];
/// One keyed limiter shared by several customers.
const KEYED: (u64, u32) = (5_000, 64);
const KEYED_IDS: std::ops::Range<u64> = 100..106;

enum Lim {
    Direct(Direct),
    Keyed,
}

struct Customer {
    id: u64,
    period: u64,
    burst: u32,
    lim: Lim,
}

fn quota(period: u64, burst: u32) -> Quota {
    Quota::with_period(Duration::from_nanos(period))
        .unwrap()
        .allow_burst(NonZeroU32::new(burst).unwrap())
}

#[derive(Default, Debug)]
struct Counts {
    granted: u64,
    shadow: u64,
    denied: u64,
    exceeds: u64,
}

/// Runs `requests` random requests through both; with `reservations`, the engine's automatic
/// reservation bump is on (default alpha) and a grant may come from the shadow bucket.
fn run(seed: u64, requests: u64, reservations: bool) -> Counts {
    let dir = TempDir::new(&format!("{seed}-{reservations}"));
    // a pool that never limits: 2^50 tokens refilled at 10^12 tokens/s
    let mut cfg = EngineConfig::new(
        1 << 50,
        Rate::from_micros_per_sec(1_000_000_000_000_000_000),
    );
    if !reservations {
        cfg.alpha_ppm = 0; // nothing may be reserved: every grant takes the pool path
    }
    let mut eng = Engine::create(
        dir.0.join("gov.sb"),
        CreateOptions::new(64, cfg).without_model(),
    )
    .unwrap();
    let clock = FakeRelativeClock::default();
    let keyed: Keyed = RateLimiter::new(
        quota(KEYED.0, KEYED.1),
        DefaultKeyedStateStore::default(),
        clock.clone(),
    );
    let mut customers = Vec::new();
    for (i, &(period, burst)) in DIRECT.iter().enumerate() {
        customers.push(Customer {
            id: i as u64 + 1,
            period,
            burst,
            lim: Lim::Direct(RateLimiter::direct_with_clock(
                quota(period, burst),
                clock.clone(),
            )),
        });
    }
    for id in KEYED_IDS {
        customers.push(Customer {
            id,
            period: KEYED.0,
            burst: KEYED.1,
            lim: Lim::Keyed,
        });
    }
    for c in &customers {
        let rate = Rate::per_period(1, c.period).expect("exact rate");
        eng.add_customer(c.id, Contract::new(c.burst as u64, rate), 0)
            .unwrap();
    }

    let mut r = Rng(seed);
    let mut counts = Counts::default();
    let mut done = 0u64;
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    let mut picks = Vec::new();
    while done < requests {
        // one instant: a single request or a batch of several (duplicates included)
        let m = if r.next().is_multiple_of(5) {
            r.range(2, 8)
        } else {
            1
        };
        ids.clear();
        tokens.clear();
        picks.clear();
        for _ in 0..m {
            let ci = (r.next() % customers.len() as u64) as usize;
            let b = customers[ci].burst as u64;
            let n = match r.next() % 100 {
                0..=59 => r.range(1, b.min(8)),
                60..=79 => r.range(1, b),
                80..=89 => b,
                90..=94 => r.range(b + 1, 2 * b + 2),
                _ => r.range(1, 2 * b + 2),
            };
            ids.push(customers[ci].id);
            tokens.push(n);
            picks.push(ci);
        }
        // advance the clock, on the scale of the first customer's period and request
        let c0 = &customers[picks[0]];
        let dt = match r.next() % 100 {
            0..=29 => 0,
            30..=59 => r.range(0, c0.period),
            60..=84 => r.range(0, 2 * tokens[0] * c0.period),
            85..=94 => r.range(0, 1_000),
            _ => r.range(0, 2 * c0.burst as u64 * c0.period),
        };
        clock.advance(Duration::from_nanos(dt));
        let now = clock.now().as_u64();

        let ours: Vec<(Outcome, u64)> = if m == 1 && r.next().is_multiple_of(2) {
            let d = eng.allocate(ids[0], tokens[0], now).unwrap();
            vec![(d.outcome, d.retry_after_ns)]
        } else {
            let out = eng.allocate_batch(Keys::Ids(&ids), &tokens, now).unwrap();
            out.outcomes.into_iter().zip(out.retry_after_ns).collect()
        };

        for (j, &ci) in picks.iter().enumerate() {
            let c = &customers[ci];
            let n = NonZeroU32::new(tokens[j] as u32).unwrap();
            let theirs = match &c.lim {
                Lim::Direct(l) => l.check_n(n),
                Lim::Keyed => keyed.check_key_n(&c.id, n),
            };
            let (outcome, retry) = ours[j];
            let ctx = format!(
                "request {} (customer {} period {} ns burst {}, n {}, t {now} ns)",
                done + j as u64,
                c.id,
                c.period,
                c.burst,
                tokens[j]
            );
            match theirs {
                Ok(Ok(())) => {
                    if reservations {
                        assert!(
                            outcome.granted(),
                            "{ctx}: governor grants, we say {outcome:?}"
                        );
                        counts.shadow += (outcome == Outcome::GrantedShadow) as u64;
                    } else {
                        assert_eq!(outcome, Outcome::GrantedPool, "{ctx}: governor grants");
                    }
                    assert_eq!(retry, 0, "{ctx}");
                    counts.granted += 1;
                }
                Ok(Err(not_until)) => {
                    assert_eq!(
                        outcome,
                        Outcome::DeniedCustomerLimit,
                        "{ctx}: governor denies"
                    );
                    let wait = not_until.wait_time_from(clock.now());
                    assert_eq!(
                        retry as u128,
                        wait.as_nanos(),
                        "{ctx}: retry-after differs from governor's wait time"
                    );
                    assert!(retry > 0, "{ctx}");
                    counts.denied += 1;
                }
                Err(InsufficientCapacity(cap)) => {
                    assert_eq!(outcome, Outcome::ExceedsBurst, "{ctx}: governor says never");
                    assert_eq!(cap, c.burst, "{ctx}: governor's capacity");
                    assert_eq!(retry, u64::MAX, "{ctx}");
                    counts.exceeds += 1;
                }
            }
        }
        done += m;
    }

    let s = eng.stats();
    assert_eq!(
        s.counters.pool_grants + s.counters.shadow_grants,
        counts.granted
    );
    assert_eq!(s.counters.shadow_grants, counts.shadow);
    assert_eq!(s.counters.denied_customer, counts.denied);
    assert_eq!(s.counters.exceeds_burst, counts.exceeds);
    assert_eq!(s.counters.denied_pool, 0, "the pool never limits");
    if !reservations {
        assert_eq!(s.counters.bumps, 0);
        assert_eq!((s.reserved_rate_micros, s.reserved_capacity), (0, 0));
    }
    let now = clock.now().as_u64();
    assert!(eng.ledger(now).balanced());
    eng.check().unwrap();
    counts
}

#[test]
fn plain_bucket_matches_governor_decision_for_decision() {
    for seed in [1, 0xDEC1_5105, 0x6A7E_2024] {
        let c = run(seed, 60_000, false);
        eprintln!("seed {seed}: {c:?}");
        // every kind of decision was exercised, many times
        assert!(
            c.granted > 10_000 && c.denied > 4_000 && c.exceeds > 1_000,
            "{c:?}"
        );
    }
}

/// With reservations on (the engine bumps a customer's reservation after every pool grant),
/// grants may come from the shadow bucket instead, but no decision of the contract changes:
/// the shadow path never grants what the standard bucket does not hold.
#[test]
fn reservations_never_change_a_contract_decision() {
    let c = run(7, 20_000, true);
    eprintln!("{c:?}");
    assert!(c.shadow > 1_000, "the shadow path was not exercised: {c:?}");
    assert!(c.granted > c.shadow, "{c:?}");
}
