//! Every bad input gets a clear error (or, for a request, its documented outcome) and leaves the
//! store unchanged: the counters, the customers and, where the call must not write at all, the
//! store file's bytes are compared before and after.
//!
//! Covered: wrong-length arrays; unknown and reserved ids; zero-token requests; bad contracts,
//! configurations and capacities; duplicate customers; a full store (then `grow`, whose result
//! survives a reopen); settles of more than is outstanding; bad ticks; a second writer, in this
//! process and in another one; read-only opens; and bad files of every kind (wrong magic,
//! unknown version, truncated, corrupt header, column table out of bounds, corrupt state page,
//! a missing path, a directory).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::TempDir;

use shadowbucket::layout::{
    Bucket, Col, FORMAT_VERSION, FileHeader, HEADER_BYTES, OLDEST_FORMAT_VERSION, StatePage,
    TxnState,
};
use shadowbucket::{
    Contract, CreateOptions, Engine, EngineConfig, Error, GrantPath, Keys, NO_SLOT, Outcome, Rate,
    Reservation, Stats,
};

const WORKER: &str = env!("CARGO_BIN_EXE_sb-crash-worker");

/// Runs the tests of this file one at a time. A child process spawned by one test holds copies
/// of every file descriptor of this process between its fork and its exec, so a store another
/// test has just closed can still be locked (`flock` follows the open file description) and a
/// reopen would fail with `Error::Locked` for that moment.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const MAX_BURST: u64 = 1 << 50;
const MAX_RATE: u64 = 1_000_000_000_000_000_000;

fn config() -> EngineConfig {
    EngineConfig::new(100_000, Rate::tokens_per_sec(10_000))
}

/// Customers of the standard test store.
const IDS: [u64; 6] = [10, 20, 30, 40, 50, 60];
/// The last instant the standard test store saw.
const NOW: u64 = 3_000_000_000;

/// A store with some history: customers, grants from both paths, denials, a tick with
/// reservations, a settle. Every customer has tokens outstanding.
fn store(dir: &TempDir, name: &str, capacity: u64) -> (Engine, PathBuf) {
    let path = dir.join(name);
    let mut eng = Engine::create(&path, CreateOptions::new(capacity, config())).unwrap();
    for (i, &id) in IDS.iter().enumerate() {
        let c = Contract::new(1_000 * (i as u64 + 1), Rate::tokens_per_sec(100)).with_weight(1);
        eng.add_customer(id, c, 0).unwrap();
    }
    let ids: Vec<u64> = IDS.iter().cycle().take(30).copied().collect();
    let toks: Vec<u64> = (0..30).map(|i| 40 + i * 17).collect();
    eng.allocate_batch(Keys::Ids(&ids), &toks, 1_000_000_000)
        .unwrap();
    let res: Vec<Reservation> = IDS[..3]
        .iter()
        .map(|&id| Reservation {
            slot: eng.slot_of(id).unwrap(),
            rate: Rate::tokens_per_sec(50),
            capacity: 500,
        })
        .collect();
    eng.tick_with(2_000_000_000, &res).unwrap();
    eng.allocate_batch(Keys::Ids(&ids), &toks, NOW).unwrap();
    eng.settle(10, 20, 5, GrantPath::Pool, NOW).unwrap();
    for &id in &IDS {
        assert!(eng.customer(id).unwrap().outstanding > 0);
    }
    (eng, path)
}

/// The store as a caller sees it, and its file's bytes.
#[derive(Debug, PartialEq)]
struct Snap {
    stats: Stats,
    customers: Vec<shadowbucket::CustomerView>,
    ids: Vec<u64>,
    bytes: Vec<u8>,
}

fn snap(eng: &Engine) -> Snap {
    let ids = eng.customer_ids();
    Snap {
        stats: eng.stats(),
        customers: ids.iter().map(|&id| eng.customer(id).unwrap()).collect(),
        ids,
        // the map is shared with the page cache, so this reads the live state
        bytes: std::fs::read(eng.path()).unwrap(),
    }
}

/// Nothing changed: the same counters, customers and file bytes.
#[track_caller]
fn assert_unchanged(eng: &Engine, before: &Snap, ctx: &str) {
    let now = snap(eng);
    assert_eq!(now.stats, before.stats, "{ctx}: stats changed");
    assert_eq!(now.ids, before.ids, "{ctx}: customers changed");
    assert_eq!(now.customers, before.customers, "{ctx}: a customer changed");
    assert!(now.bytes == before.bytes, "{ctx}: the store file changed");
    eng.check().unwrap();
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(r: shadowbucket::Result<T>, words: &[&str], ctx: &str) {
    match r {
        Err(e @ Error::InvalidArgument(_)) => {
            let msg = e.to_string();
            for w in words {
                assert!(
                    msg.contains(w),
                    "{ctx}: message {msg:?} does not mention {w:?}"
                );
            }
        }
        other => panic!("{ctx}: expected InvalidArgument, got {other:?}"),
    }
}

// ---- requests -----------------------------------------------------------------------------------

#[test]
fn wrong_length_arrays_are_refused() {
    let _serial = serial();
    let dir = TempDir::new("lengths");
    let (mut eng, _) = store(&dir, "s.sb", 16);
    let before = snap(&eng);
    let ids = [10u64, 20, 30];
    let slots = [0u32, 1, 2];
    let mut out = [Outcome::GrantedShadow; 3];
    let mut retry = [7u64; 3];
    let cases: Vec<(&str, Keys, usize, usize, usize)> = vec![
        ("keys", Keys::Ids(&ids[..2]), 3, 3, 3),
        ("keys", Keys::Slots(&slots[..1]), 3, 3, 3),
        ("keys", Keys::Ids(&ids), 2, 2, 2),
        ("outcomes", Keys::Ids(&ids), 3, 2, 3),
        ("retry_after_ns", Keys::Ids(&ids), 3, 3, 1),
        ("outcomes", Keys::Slots(&slots), 3, 0, 3),
    ];
    let toks = [5u64, 5, 5];
    for (what, keys, nt, no, nr) in cases {
        let r = eng.allocate_batch_into(keys, &toks[..nt], NOW, &mut out[..no], &mut retry[..nr]);
        match r {
            Err(e @ Error::LengthMismatch { .. }) => {
                let Error::LengthMismatch {
                    what: w,
                    got,
                    expected,
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(*w, what);
                assert_eq!(*expected, nt);
                assert_ne!(*got, nt);
                assert!(e.to_string().contains("length mismatch"), "{e}");
                assert!(e.to_string().contains(what), "{e}");
            }
            other => panic!("{what}: expected LengthMismatch, got {other:?}"),
        }
        // the caller's arrays are left alone too
        assert!(out.iter().all(|&o| o == Outcome::GrantedShadow));
        assert!(retry.iter().all(|&r| r == 7));
        assert_unchanged(&eng, &before, what);
    }
    assert!(matches!(
        eng.allocate_batch(Keys::Ids(&ids), &toks[..2], NOW),
        Err(Error::LengthMismatch { what: "keys", .. })
    ));
    let mut res = vec![0u32; 2];
    assert!(matches!(
        eng.resolve(&ids, &mut res),
        Err(Error::LengthMismatch {
            what: "out",
            got: 2,
            expected: 3
        })
    ));
    assert_unchanged(&eng, &before, "allocate_batch / resolve");
}

/// Unknown customers, however named, are the `UnknownCustomer` outcome: counted, no retry, and
/// no customer or pool state touched.
fn check_unknown_requests(batch_len: usize) {
    let dir = TempDir::new(&format!("unknown-{batch_len}"));
    let (mut eng, _) = store(&dir, "s.sb", 16);
    eng.remove_customer(60, NOW).unwrap(); // leaves a free slot that once held a customer
    let free_slot = before_removal_slot(&eng);
    let before = snap(&eng);
    let unknown_ids = [7u64, 60, u64::MAX, u64::MAX - 1, 1 << 63];
    // ids: unknown ones among known ones, at the instant the store last saw (no refill due)
    let mut ids = Vec::new();
    let mut toks = Vec::new();
    for i in 0..batch_len {
        ids.push(unknown_ids[i % unknown_ids.len()]);
        toks.push(1 + i as u64 % 5);
    }
    let out = eng.allocate_batch(Keys::Ids(&ids), &toks, NOW).unwrap();
    for (i, (&o, &r)) in out.outcomes.iter().zip(&out.retry_after_ns).enumerate() {
        assert_eq!(o, Outcome::UnknownCustomer, "request {i} (id {})", ids[i]);
        assert_eq!(r, u64::MAX, "request {i}: retry-after");
    }
    // slots: no slot, past the capacity, a free slot
    let cap = eng.capacity() as u32;
    let bad_slots = [NO_SLOT, cap, cap + 1, u32::MAX - 1, free_slot];
    let slots: Vec<u32> = (0..batch_len)
        .map(|i| bad_slots[i % bad_slots.len()])
        .collect();
    let mut outc = vec![Outcome::GrantedShadow; batch_len];
    let mut retry = vec![0u64; batch_len];
    eng.allocate_batch_into(Keys::Slots(&slots), &toks, NOW, &mut outc, &mut retry)
        .unwrap();
    for i in 0..batch_len {
        assert_eq!(
            outc[i],
            Outcome::UnknownCustomer,
            "slot request {i} (slot {})",
            slots[i]
        );
        assert_eq!(retry[i], u64::MAX, "slot request {i}: retry-after");
    }
    let d = eng.allocate(u64::MAX, 1, NOW).unwrap();
    assert_eq!(d.outcome, Outcome::UnknownCustomer);
    assert_eq!(
        eng.allocate_slot(free_slot, 1, NOW).unwrap().outcome,
        Outcome::UnknownCustomer
    );

    let after = snap(&eng);
    assert_eq!(after.customers, before.customers, "a customer changed");
    let (a, b) = (after.stats, before.stats);
    let n = 2 * batch_len as u64 + 2;
    assert_eq!(
        a.counters.unknown,
        b.counters.unknown + n,
        "unknown requests counted"
    );
    assert_eq!(
        a.counters.requests,
        b.counters.requests + n,
        "requests counted"
    );
    assert_eq!(a.counters.batches, b.counters.batches + 4);
    assert_eq!(a.pool_femto, b.pool_femto);
    let mut a2 = a;
    a2.counters.unknown = b.counters.unknown;
    a2.counters.requests = b.counters.requests;
    a2.counters.batches = b.counters.batches;
    a2.last_committed = b.last_committed;
    assert_eq!(a2, b, "nothing but the counters changed");
    assert!(eng.ledger(NOW).balanced());
    eng.check().unwrap();
}

/// The slot of the customer removed by `check_unknown_requests` (60 sat in the sixth slot).
fn before_removal_slot(eng: &Engine) -> u32 {
    let used: Vec<u32> = eng
        .customer_ids()
        .iter()
        .map(|&id| eng.slot_of(id).unwrap())
        .collect();
    (0..eng.capacity() as u32)
        .find(|s| !used.contains(s) && *s < IDS.len() as u32)
        .unwrap()
}

#[test]
fn unknown_customers_in_a_small_batch() {
    let _serial = serial();
    check_unknown_requests(25);
}

/// Batches of 8,192 requests or more take the parallel path.
#[test]
fn unknown_customers_in_a_large_batch() {
    let _serial = serial();
    check_unknown_requests(10_000);
}

#[test]
fn unknown_and_reserved_ids_in_calls_by_id() {
    let _serial = serial();
    let dir = TempDir::new("reserved");
    let (mut eng, _) = store(&dir, "s.sb", 16);
    let before = snap(&eng);
    let c = Contract::new(100, Rate::tokens_per_sec(1));
    for id in [u64::MAX, u64::MAX - 1] {
        assert_invalid(
            eng.add_customer(id, c, NOW),
            &["reserved"],
            "add reserved id",
        );
        assert_eq!(eng.slot_of(id), None);
        let mut s = [0u32];
        eng.resolve(&[id], &mut s).unwrap();
        assert_eq!(s[0], NO_SLOT);
    }
    for id in [u64::MAX, u64::MAX - 1, 7] {
        assert!(matches!(eng.customer(id), Err(Error::UnknownCustomer(x)) if x == id));
        assert!(matches!(
            eng.customer_at(id, NOW),
            Err(Error::UnknownCustomer(_))
        ));
        assert!(matches!(
            eng.settle(id, 1, 1, GrantPath::Pool, NOW),
            Err(Error::UnknownCustomer(_))
        ));
        assert!(matches!(
            eng.update_contract(id, c, NOW),
            Err(Error::UnknownCustomer(_))
        ));
        assert!(matches!(
            eng.remove_customer(id, NOW),
            Err(Error::UnknownCustomer(_))
        ));
        let e = eng.remove_customer(id, NOW).unwrap_err();
        assert!(e.to_string().contains("unknown customer"), "{e}");
    }
    // a duplicate
    let e = eng.add_customer(20, c, NOW).unwrap_err();
    assert!(matches!(e, Error::DuplicateCustomer(20)), "{e:?}");
    assert!(e.to_string().contains("already exists"));
    assert_unchanged(&eng, &before, "unknown, reserved and duplicate ids");
}

/// A request for zero tokens is `InvalidInput` (never a grant), counted, and takes no token.
fn check_zero_tokens(batch_len: usize) {
    let dir = TempDir::new(&format!("zero-{batch_len}"));
    let (mut eng, _) = store(&dir, "s.sb", 16);
    let t = NOW + 1_000_000;
    // what every customer looks like at t, before anything happens
    let want: Vec<_> = IDS
        .iter()
        .map(|&id| eng.customer_at(id, t).unwrap())
        .collect();
    let before = eng.stats();
    let ids: Vec<u64> = (0..batch_len).map(|i| IDS[i % IDS.len()]).collect();
    let zeros = vec![0u64; batch_len];
    let out = eng.allocate_batch(Keys::Ids(&ids), &zeros, t).unwrap();
    for i in 0..batch_len {
        assert_eq!(out.outcomes[i], Outcome::InvalidInput, "request {i}");
        assert_eq!(out.retry_after_ns[i], u64::MAX, "request {i}");
    }
    let d = eng.allocate(20, 0, t).unwrap();
    assert_eq!(d.outcome, Outcome::InvalidInput);
    assert_eq!(d.retry_after_ns, u64::MAX);
    let got: Vec<_> = IDS.iter().map(|&id| eng.customer(id).unwrap()).collect();
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.std_femto, w.std_femto, "customer {}: tokens", g.id);
        assert_eq!(g.shadow_femto, w.shadow_femto, "customer {}: shadow", g.id);
        assert_eq!(
            g.outstanding, w.outstanding,
            "customer {}: outstanding",
            g.id
        );
        assert_eq!(g.last_interval, w.last_interval);
    }
    let after = eng.stats();
    let n = batch_len as u64 + 1;
    assert_eq!(after.counters.invalid, before.counters.invalid + n);
    assert_eq!(after.counters.requests, before.counters.requests + n);
    for (a, b) in [
        (after.counters.tokens_shadow, before.counters.tokens_shadow),
        (after.counters.tokens_pool, before.counters.tokens_pool),
        (after.counters.shadow_grants, before.counters.shadow_grants),
        (after.counters.pool_grants, before.counters.pool_grants),
        (after.counters.bumps, before.counters.bumps),
    ] {
        assert_eq!(a, b, "a zero-token request granted something");
    }
    assert!(eng.ledger(t).balanced());
    eng.check().unwrap();
}

#[test]
fn zero_tokens_is_invalid_input() {
    let _serial = serial();
    check_zero_tokens(20);
}

#[test]
fn zero_tokens_in_a_large_batch_is_invalid_input() {
    let _serial = serial();
    check_zero_tokens(10_000);
}

// ---- contracts, configurations, capacities ------------------------------------------------------

#[test]
fn bad_contracts_are_refused() {
    let _serial = serial();
    let r = |m| Rate::from_micros_per_sec(m);
    // the edges are accepted
    for c in [
        Contract::new(1, r(1)),
        Contract::new(MAX_BURST, r(MAX_RATE)),
        Contract::new(1, r(MAX_RATE)).with_weight(u16::MAX),
    ] {
        c.validate().unwrap();
    }
    let bad = [
        (Contract::new(0, r(1_000_000)), "burst"),
        (Contract::new(MAX_BURST + 1, r(1_000_000)), "burst"),
        (Contract::new(u64::MAX, r(1_000_000)), "burst"),
        (Contract::new(10, r(0)), "rate"),
        (Contract::new(10, r(MAX_RATE + 1)), "rate"),
        (Contract::new(10, r(u64::MAX)), "rate"),
        (Contract::new(10, Rate::tokens_per_sec(u64::MAX)), "rate"),
    ];
    let dir = TempDir::new("contracts");
    let (mut eng, _) = store(&dir, "s.sb", 16);
    let before = snap(&eng);
    for (c, word) in bad {
        let ctx = format!("{c:?}");
        assert_invalid(c.validate(), &[word], &ctx);
        assert_invalid(eng.add_customer(99, c, NOW), &[word], &ctx);
        assert_eq!(eng.slot_of(99), None);
        assert_invalid(eng.update_contract(20, c, NOW), &[word], &ctx);
        assert_unchanged(&eng, &before, &ctx);
    }
    // rates that are not exact are refused where they are made
    assert_eq!(Rate::per_period(1, 0), None);
    assert_eq!(Rate::per_period(1, 3), None);
    assert_eq!(Rate::per_period(1, 7_000), None);
}

#[test]
fn bad_configurations_and_capacities_create_nothing() {
    let _serial = serial();
    let dir = TempDir::new("configs");
    let good = config();
    let mut cases: Vec<(EngineConfig, &str)> = Vec::new();
    let mut c = good;
    c.pool_burst = 0;
    cases.push((c, "pool_burst"));
    c = good;
    c.pool_burst = MAX_BURST * 1024 + 1;
    cases.push((c, "pool_burst"));
    c = good;
    c.pool_rate = Rate::from_micros_per_sec(0);
    cases.push((c, "pool_rate"));
    c = good;
    c.pool_rate = Rate::from_micros_per_sec(MAX_RATE + 1);
    cases.push((c, "pool_rate"));
    c = good;
    c.alpha_ppm = 1_000_001;
    cases.push((c, "alpha"));
    c = good;
    c.interval_ns = 0;
    cases.push((c, "interval"));
    c = good;
    c.contention_low_ppm = c.contention_high_ppm + 1;
    cases.push((c, "contention"));
    c = good;
    c.contention_high_ppm = 1_000_001;
    c.contention_low_ppm = 0;
    cases.push((c, "contention"));
    c = good;
    c.contention_ticks = 0;
    cases.push((c, "contention_ticks"));
    for (i, (cfg, word)) in cases.into_iter().enumerate() {
        let ctx = format!("config case {i}: {cfg:?}");
        assert_invalid(cfg.validate(), &[word], &ctx);
        let p = dir.join(&format!("cfg-{i}.sb"));
        assert_invalid(
            Engine::create(&p, CreateOptions::new(8, cfg)).map(|_| ()),
            &[word],
            &ctx,
        );
        assert!(!p.exists(), "{ctx}: a file was left behind");
    }
    for (i, cap) in [0u64, u32::MAX as u64, u64::MAX].into_iter().enumerate() {
        let p = dir.join(&format!("cap-{i}.sb"));
        assert_invalid(
            Engine::create(&p, CreateOptions::new(cap, good)).map(|_| ()),
            &["capacity"],
            "capacity",
        );
        assert!(!p.exists(), "capacity {cap}: a file was left behind");
    }
    for (i, set) in [
        |o: &mut CreateOptions| o.state_dim = u32::MAX,
        |o: &mut CreateOptions| o.forecast_dim = 1025,
        |o: &mut CreateOptions| o.scenario_dim = 65,
        |o: &mut CreateOptions| o.scale_dim = 65,
    ]
    .into_iter()
    .enumerate()
    {
        let mut opts = CreateOptions::new(8, good);
        set(&mut opts);
        let p = dir.join(&format!("dims-{i}.sb"));
        assert_invalid(
            Engine::create(&p, opts).map(|_| ()),
            &["dimension"],
            "model dimensions",
        );
        assert!(!p.exists());
    }

    // creating over an existing store is an I/O error that leaves it alone
    let (eng, path) = store(&dir, "existing.sb", 16);
    let before = snap(&eng);
    drop(eng);
    match Engine::create(&path, CreateOptions::new(8, good)) {
        Err(Error::Io { path: p, source }) => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists);
        }
        other => panic!("create over an existing store: {:?}", other.map(|_| ())),
    }
    assert!(
        std::fs::read(&path).unwrap() == before.bytes,
        "the existing store changed"
    );
    let eng = Engine::open(&path).unwrap();
    assert_unchanged(&eng, &before, "after create over it");
}

// ---- a full store, and growing it ---------------------------------------------------------------

#[test]
fn full_store_then_grow_keeps_customers_and_tokens() {
    let _serial = serial();
    let dir = TempDir::new("full");
    let (mut eng, path) = store(&dir, "s.sb", IDS.len() as u64);
    let before = snap(&eng);
    let c = Contract::new(500, Rate::tokens_per_sec(5));
    match eng.add_customer(99, c, NOW) {
        Err(e @ Error::StoreFull { .. }) => {
            assert!(matches!(
                e,
                Error::StoreFull {
                    capacity: 6,
                    suggested: 12
                }
            ));
            assert!(e.to_string().contains("grow"), "{e}");
        }
        other => panic!("expected StoreFull, got {other:?}"),
    }
    assert_unchanged(&eng, &before, "add to a full store");
    for bad in [0, 5, 6, u32::MAX as u64, u64::MAX] {
        assert_invalid(eng.grow(bad), &["capacity"], &format!("grow({bad})"));
        assert_unchanged(&eng, &before, &format!("grow({bad})"));
    }

    eng.grow(13).unwrap();
    assert_eq!(eng.capacity(), 13);
    let grown = snap(&eng);
    let mut want = before.stats;
    want.capacity = 13;
    assert_eq!(grown.stats, want, "stats after grow");
    assert_eq!(grown.ids, before.ids);
    assert_eq!(
        grown.customers, before.customers,
        "customers after grow (slots, tokens, ...)"
    );
    assert!(
        !dir.join("s.sb.grow-tmp").exists(),
        "grow left its temporary file"
    );
    assert!(eng.ledger(NOW).balanced());
    eng.check().unwrap();
    // the grown store is locked like any other
    assert!(matches!(Engine::open(&path), Err(Error::Locked(_))));

    // and works: the new customer gets a slot, old customers keep their tokens
    let slot = eng.add_customer(99, c, NOW).unwrap();
    assert!((6..13).contains(&slot), "slot {slot}");
    assert_eq!(
        eng.allocate(99, 100, NOW).unwrap().outcome,
        Outcome::GrantedPool
    );
    let t = NOW + 1;
    let d = eng.allocate(10, 1, t).unwrap();
    assert!(d.outcome.granted());
    let want_views: Vec<_> = eng
        .customer_ids()
        .iter()
        .map(|&id| eng.customer(id).unwrap())
        .collect();
    let want_stats = eng.stats();
    drop(eng);

    // everything survives a reopen
    let eng = Engine::open(&path).unwrap();
    assert_eq!(eng.recovered(), None);
    assert_eq!(eng.capacity(), 13);
    assert_eq!(eng.stats(), want_stats);
    let views: Vec<_> = eng
        .customer_ids()
        .iter()
        .map(|&id| eng.customer(id).unwrap())
        .collect();
    assert_eq!(views, want_views);
    assert!(eng.ledger(t).balanced());
    eng.check().unwrap();
}

// ---- settle and tick ----------------------------------------------------------------------------

#[test]
fn bad_settles_are_refused() {
    let _serial = serial();
    let dir = TempDir::new("settle");
    let (mut eng, _) = store(&dir, "s.sb", 16);
    let out = eng.customer(20).unwrap().outstanding;
    assert!(out > 0);
    let before = snap(&eng);
    let cases: Vec<(u64, u64, u64, &[&str])> = vec![
        (20, out + 1, out + 1, &["outstanding"]),
        (20, u64::MAX, 0, &["outstanding"]),
        (20, 0, 0, &["granted"]),
        (20, 0, 5, &["granted"]),
        (20, 1, MAX_BURST + 1, &["absurd"]),
        (20, 1, u64::MAX, &["absurd"]),
    ];
    for (id, granted, used, words) in cases {
        for path in [GrantPath::Shadow, GrantPath::Pool] {
            let ctx = format!("settle({id}, {granted}, {used}, {path:?})");
            assert_invalid(eng.settle(id, granted, used, path, NOW), words, &ctx);
            assert_unchanged(&eng, &before, &ctx);
        }
    }
    // settle everything outstanding in two steps, then one token more is refused
    eng.settle(20, out - 1, out - 1, GrantPath::Pool, NOW)
        .unwrap();
    eng.settle(20, 1, 0, GrantPath::Pool, NOW).unwrap();
    assert_eq!(eng.customer(20).unwrap().outstanding, 0);
    let before = snap(&eng);
    assert_invalid(
        eng.settle(20, 1, 1, GrantPath::Shadow, NOW),
        &["outstanding"],
        "nothing outstanding",
    );
    assert_unchanged(&eng, &before, "nothing outstanding");
}

#[test]
fn bad_ticks_are_refused() {
    let _serial = serial();
    let dir = TempDir::new("tick");
    let (mut eng, _) = store(&dir, "s.sb", 16);
    let s10 = eng.slot_of(10).unwrap();
    let s20 = eng.slot_of(20).unwrap();
    eng.remove_customer(60, NOW).unwrap();
    let empty = (0..16u32)
        .find(|s| {
            !eng.customer_ids()
                .iter()
                .any(|&id| eng.slot_of(id) == Some(*s))
        })
        .unwrap();
    let before = snap(&eng);
    let ok = |slot| Reservation {
        slot,
        rate: Rate::tokens_per_sec(10),
        capacity: 100,
    };
    let cases: Vec<(Vec<Reservation>, &str)> = vec![
        (vec![ok(s10), ok(s20), ok(s10)], "twice"),
        (vec![ok(s20), ok(s20)], "twice"),
        (vec![ok(s10), ok(empty)], "no customer"),
        (vec![ok(16)], "no customer"),
        (vec![ok(NO_SLOT)], "no customer"),
        (
            vec![
                ok(s10),
                Reservation {
                    slot: s20,
                    rate: Rate::from_micros_per_sec(MAX_RATE + 1),
                    capacity: 1,
                },
            ],
            "absurd",
        ),
        (
            vec![Reservation {
                slot: s20,
                rate: Rate::tokens_per_sec(1),
                capacity: MAX_BURST + 1,
            }],
            "absurd",
        ),
    ];
    for (i, (res, word)) in cases.into_iter().enumerate() {
        let ctx = format!("tick case {i}: {res:?}");
        assert_invalid(eng.tick_with(NOW + 1_000, &res), &[word], &ctx);
        assert_unchanged(&eng, &before, &ctx);
    }
    // a good tick still works afterwards
    let rep = eng.tick_with(NOW + 1_000, &[ok(s10), ok(s20)]).unwrap();
    assert_eq!(rep.customers, 5);
    assert_eq!(eng.stats().counters.ticks, before.stats.counters.ticks + 1);
    eng.check().unwrap();
}

// ---- writers and readers ------------------------------------------------------------------------

fn probe(path: &Path) -> String {
    let out = Command::new(WORKER)
        .arg("probe")
        .arg(path)
        .output()
        .expect("run the worker");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Starts a worker that holds the store open for writing until its stdin closes.
fn hold(path: &Path) -> std::process::Child {
    let mut child = Command::new(WORKER)
        .arg("hold")
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the worker");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held");
    child
}

#[test]
fn a_second_writer_is_locked_out() {
    let _serial = serial();
    let dir = TempDir::new("locked");
    let (eng, path) = store(&dir, "s.sb", 16);
    let before = snap(&eng);

    // in this process: a second open is a second open file description, so flock conflicts
    match Engine::open(&path) {
        Err(e @ Error::Locked(_)) => {
            assert!(matches!(&e, Error::Locked(p) if *p == path));
            assert!(e.to_string().contains("locked"), "{e}");
        }
        other => panic!("second writer: {:?}", other.map(|_| ())),
    }
    // in another process
    assert_eq!(probe(&path), "locked");
    // readers take no lock
    let ro = Engine::open_read_only(&path).unwrap();
    assert_eq!(ro.stats(), before.stats);
    drop(ro);
    assert_unchanged(&eng, &before, "refused second writers");
    drop(eng);
    assert_eq!(probe(&path), "ok");

    // another process holds it: refused here until that process closes it ...
    let mut child = hold(&path);
    assert!(matches!(Engine::open(&path), Err(Error::Locked(_))));
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let eng = Engine::open(&path).unwrap();
    assert_unchanged(&eng, &before, "after the other writer closed it");
    drop(eng);

    // ... or is killed (the kernel drops the lock with the process)
    let mut child = hold(&path);
    assert!(matches!(Engine::open(&path), Err(Error::Locked(_))));
    child.kill().unwrap();
    child.wait().unwrap();
    let eng = Engine::open(&path).unwrap();
    assert_unchanged(&eng, &before, "after the other writer was killed");
}

#[test]
fn read_only_refuses_every_change() {
    let _serial = serial();
    let dir = TempDir::new("ro");
    let (writer, path) = store(&dir, "s.sb", 16);
    let before = snap(&writer);
    // a reader works beside the writer and after it
    for with_writer in [true, false] {
        let mut ro = Engine::open_read_only(&path).unwrap();
        let ctx = format!("read-only (writer open: {with_writer})");
        assert_unchanged(&ro, &before, &ctx);
        let slot = ro.slot_of(20).unwrap();
        let c = Contract::new(100, Rate::tokens_per_sec(1));
        let mut o = [Outcome::InvalidInput];
        let mut r = [0u64];
        let results: Vec<(&str, shadowbucket::Result<()>)> = vec![
            ("allocate", ro.allocate(20, 1, NOW + 1).map(|_| ())),
            (
                "allocate_slot",
                ro.allocate_slot(slot, 1, NOW + 1).map(|_| ()),
            ),
            (
                "allocate_batch",
                ro.allocate_batch(Keys::Ids(&[20, 30]), &[1, 1], NOW + 1)
                    .map(|_| ()),
            ),
            (
                "allocate_batch_into",
                ro.allocate_batch_into(Keys::Slots(&[slot]), &[1], NOW + 1, &mut o, &mut r),
            ),
            ("settle", ro.settle(20, 1, 0, GrantPath::Pool, NOW + 1)),
            (
                "tick",
                ro.tick_with(
                    NOW + 1,
                    &[Reservation {
                        slot,
                        rate: Rate::tokens_per_sec(1),
                        capacity: 1,
                    }],
                )
                .map(|_| ()),
            ),
            ("add_customer", ro.add_customer(99, c, NOW + 1).map(|_| ())),
            ("update_contract", ro.update_contract(20, c, NOW + 1)),
            ("remove_customer", ro.remove_customer(20, NOW + 1)),
            ("grow", ro.grow(32)),
        ];
        for (what, res) in results {
            match res {
                Err(e @ Error::ReadOnly) => assert!(e.to_string().contains("read-only"), "{e}"),
                other => panic!("{ctx}: {what}: expected ReadOnly, got {other:?}"),
            }
        }
        assert_eq!(
            o[0],
            Outcome::InvalidInput,
            "{ctx}: the output array was written"
        );
        ro.flush().unwrap();
        assert!(ro.ledger(NOW).balanced());
        assert_unchanged(&ro, &before, &ctx);
        if with_writer {
            assert_unchanged(&writer, &before, &ctx);
        }
    }
    drop(writer);
    let eng = Engine::open(&path).unwrap();
    assert_unchanged(&eng, &before, "after the readers");
}

// ---- bad files ----------------------------------------------------------------------------------

const CHECKSUM: usize = std::mem::offset_of!(FileHeader, checksum);

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Recomputes the header's CRC-32, so that only the edited field is wrong.
fn fix_crc(b: &mut [u8]) {
    let crc = crc32fast::hash(&b[..CHECKSUM]);
    put_u32(b, CHECKSUM, crc);
}

fn column(i: usize) -> usize {
    std::mem::offset_of!(FileHeader, columns) + i * 16
}

/// Byte offset of column `c` in the store file `b`, from its header.
fn column_offset(b: &[u8], c: Col) -> usize {
    get_u64(b, column(c as usize)) as usize
}

fn state(field: usize) -> usize {
    HEADER_BYTES as usize + field
}

fn globals(field: usize) -> usize {
    state(std::mem::offset_of!(StatePage, globals) + field)
}

/// Which error a bad file must give.
#[derive(Clone, Copy, Debug)]
enum Want {
    BadFile(&'static str),
    Io(std::io::ErrorKind),
}

#[track_caller]
fn assert_refused(path: &Path, write: bool, want: Want, ctx: &str) {
    let before = std::fs::read(path).ok();
    let r = if write {
        Engine::open(path)
    } else {
        Engine::open_read_only(path)
    };
    let mode = if write { "open" } else { "open_read_only" };
    match (r, want) {
        (Err(e @ Error::BadFile { .. }), Want::BadFile(word)) => {
            let Error::BadFile { path: p, reason } = &e else {
                unreachable!()
            };
            assert_eq!(p, path, "{ctx}: {mode}: the error names another path");
            assert!(
                reason.contains(word),
                "{ctx}: {mode}: reason {reason:?} does not mention {word:?}"
            );
            assert!(
                e.to_string().contains("not a valid shadowbucket file"),
                "{e}"
            );
        }
        (Err(Error::Io { path: p, source }), Want::Io(kind)) => {
            assert_eq!(p, path, "{ctx}: {mode}: the error names another path");
            assert_eq!(source.kind(), kind, "{ctx}: {mode}: {source}");
        }
        (other, _) => panic!(
            "{ctx}: {mode}: expected {want:?}, got {:?}",
            other.map(|_| ())
        ),
    }
    assert!(
        std::fs::read(path).ok() == before,
        "{ctx}: {mode}: the file was modified"
    );
}

/// Where each field of a record lies in format versions 1 and 2 (the same fields as
/// `Bucket`, in another order), and its size, written out here rather than taken from the
/// library, so that the upgrade is checked against the old format itself.
const V2_FIELDS: [(usize, usize, usize); 19] = {
    use std::mem::offset_of;
    type B = Bucket;
    [
        // (offset in version 2, offset now, size)
        (0, offset_of!(B, std), 16),
        (16, offset_of!(B, shadow), 16),
        (32, offset_of!(B, last_ns), 8),
        (40, offset_of!(B, rate), 8),
        (48, offset_of!(B, burst), 8),
        (56, offset_of!(B, rho), 8),
        (64, offset_of!(B, sigma), 8),
        (72, offset_of!(B, outstanding), 8),
        (80, offset_of!(B, granted_shadow), 8),
        (88, offset_of!(B, granted_pool), 8),
        (96, offset_of!(B, requests), 4),
        (100, offset_of!(B, fallbacks), 4),
        (104, offset_of!(B, denied_customer), 4),
        (108, offset_of!(B, denied_pool), 4),
        (112, offset_of!(B, epoch), 8),
        (120, offset_of!(B, weight), 2),
        (122, offset_of!(B, flags), 1),
        (123, offset_of!(B, streak), 1),
        (124, offset_of!(B, _pad), 4),
    ]
};

/// A record (`Bucket`, 128 bytes) laid out as version 2 did.
fn record_v2(r: &[u8]) -> [u8; 128] {
    let mut out = [0u8; 128];
    for (old, now, len) in V2_FIELDS {
        out[old..old + len].copy_from_slice(&r[now..now + len]);
    }
    out
}

/// Byte offset of record `i` of column `c` in the file `b`.
fn record_at(b: &[u8], c: Col, i: usize) -> usize {
    column_offset(b, c) + 128 * i
}

/// The store file `b` (this version) as a genuine store of format `version` (1 or 2): its
/// records and journal entries in the old field order, without the log heads column (the last
/// one), the header saying so.
fn as_old_version(b: &[u8], version: u32) -> Vec<u8> {
    let mut old = b.to_vec();
    for c in [Col::Buckets, Col::Journal] {
        let len = get_u64(b, column(c as usize) + 8) as usize / 128;
        for i in 0..len {
            let at = record_at(b, c, i);
            old[at..at + 128].copy_from_slice(&record_v2(&b[at..at + 128]));
        }
    }
    let end = column_offset(b, Col::LogHeads);
    old.truncate(end);
    let heads = column(Col::LogHeads as usize);
    old[heads..heads + 16].fill(0);
    put_u64(
        &mut old,
        std::mem::offset_of!(FileHeader, file_len),
        end as u64,
    );
    put_u32(&mut old, std::mem::offset_of!(FileHeader, version), version);
    fix_crc(&mut old);
    old
}

/// The bytes of `b` outside the log heads column, which an upgrade starts empty.
fn sans_log_heads(b: &[u8]) -> Vec<u8> {
    b[..column_offset(b, Col::LogHeads)].to_vec()
}

/// A store of versions 1 or 2 (whose records order their fields differently) is refused
/// read-only, with the way to upgrade it in the error; opening it for writing rewrites it as this
/// version with every byte of its state as it was. So is a version 1 store whose header a version
/// 2 build was marking as version 2 when it was killed (one of the two fields written).
#[test]
fn an_older_version_is_upgraded_when_opened_for_writing() {
    let _serial = serial();
    let dir = TempDir::new("old-version");
    let (eng, path) = store(&dir, "old.sb", 16);
    let before = snap(&eng);
    drop(eng);
    const VERSION: usize = std::mem::offset_of!(FileHeader, version);
    assert_eq!(get_u32(&before.bytes, VERSION), FORMAT_VERSION);
    const { assert!(OLDEST_FORMAT_VERSION == 1 && FORMAT_VERSION == 3) };
    let v1 = as_old_version(&before.bytes, 1);
    let v2 = as_old_version(&before.bytes, 2);
    assert!(v2.len() < before.bytes.len() && v1 != v2);
    // what a killed in-place upgrade from version 1 to 2 left: the version or the checksum
    let version_only = {
        let mut b = v1.clone();
        put_u32(&mut b, VERSION, 2);
        b
    };
    let checksum_only = {
        let mut b = v1.clone();
        b[CHECKSUM..CHECKSUM + 4].copy_from_slice(&v2[CHECKSUM..CHECKSUM + 4]);
        b
    };
    for (what, old) in [
        ("version 1", v1.clone()),
        ("version 2", v2),
        ("torn, version only", version_only),
        ("torn, checksum only", checksum_only),
    ] {
        std::fs::write(&path, &old).unwrap();
        assert_refused(
            &path,
            false,
            Want::BadFile("open the store for writing"),
            what,
        );
        let eng = Engine::open(&path).unwrap();
        assert_eq!(eng.recovered(), None, "{what}");
        let now = snap(&eng);
        assert_eq!(now.stats, before.stats, "{what}");
        assert_eq!(now.customers, before.customers, "{what}");
        assert!(now.bytes.len() == before.bytes.len(), "{what}");
        assert!(
            sans_log_heads(&now.bytes) == sans_log_heads(&before.bytes),
            "{what}: not the same store"
        );
        eng.check().unwrap();
        drop(eng);
        assert!(
            !dir.join("old.sb.upgrade-tmp").exists(),
            "{what}: the new file is left beside the store"
        );
        // and it is this version's store now, read-only too
        let ro = Engine::open_read_only(&path).unwrap();
        assert_eq!(ro.stats(), before.stats, "{what}");
    }

    // anything else in an old header corrupt is still refused
    let mut bad = v1.clone();
    bad[std::mem::offset_of!(FileHeader, capacity)] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    for write in [false, true] {
        assert_refused(&path, write, Want::BadFile("checksum"), "corrupt version 1");
    }
    std::fs::write(&path, &before.bytes).unwrap();
    let mut eng = Engine::open(&path).unwrap();
    eng.allocate(IDS[0], 1, NOW).unwrap();
}

/// A version 2 store left by a process killed in a batch (its journal as version 2 kept it:
/// whole records appended to a log, each entry tagged with the transaction in `epoch` and naming
/// its slot in `_pad`, the records stamped with the transaction; and a record journaled at its
/// own slot) is rolled back as version 2 would have, then upgraded.
#[test]
fn an_older_version_killed_in_a_batch_is_rolled_back_then_upgraded() {
    let _serial = serial();
    let dir = TempDir::new("old-version-crash");
    let (eng, path) = store(&dir, "old.sb", 16);
    let before = snap(&eng);
    let slots: Vec<usize> = IDS
        .iter()
        .map(|&id| eng.slot_of(id).unwrap() as usize)
        .collect();
    drop(eng);
    // (the log's first four places are not the journal entries of the other two slots)
    assert!(slots[4..].iter().all(|&s| s >= 4), "{slots:?}");
    let mut b = before.bytes.clone();
    let committed = get_u64(&b, state(std::mem::offset_of!(TxnState, last_committed)));
    let seq = committed + 1;
    // a batch in flight: the globals' pre-image saved, the transaction active
    let (g, u) = (
        state(std::mem::offset_of!(StatePage, globals)),
        state(std::mem::offset_of!(StatePage, undo)),
    );
    let len = std::mem::size_of::<shadowbucket::layout::Globals>();
    b.copy_within(g..g + len, u);
    put_u64(&mut b, state(std::mem::offset_of!(TxnState, active)), seq);
    put_u64(&mut b, state(std::mem::offset_of!(TxnState, kind)), 1);
    // the pool changed by the batch
    b[globals(0)] ^= 0x55;
    let epoch = std::mem::offset_of!(Bucket, epoch);
    let pad = std::mem::offset_of!(Bucket, _pad);
    let std_level = std::mem::offset_of!(Bucket, std);
    for (k, &slot) in slots.iter().enumerate() {
        let rec = record_at(&b, Col::Buckets, slot);
        if k < 4 {
            // logged: the entry goes to the log's next place, tagged and naming its slot
            let entry = record_at(&b, Col::Journal, k);
            b.copy_within(rec..rec + 128, entry);
            put_u64(&mut b, entry + epoch, seq);
            put_u32(&mut b, entry + pad, slot as u32);
        } else {
            // journaled at its own slot
            let entry = record_at(&b, Col::Journal, slot);
            b.copy_within(rec..rec + 128, entry);
        }
        // then the record is stamped and changed
        put_u64(&mut b, rec + epoch, seq);
        b[rec + std_level + 3] ^= 0xa5;
    }
    std::fs::write(&path, as_old_version(&b, 2)).unwrap();

    let eng = Engine::open(&path).unwrap();
    assert_eq!(eng.recovered(), Some(seq));
    let now = snap(&eng);
    assert_eq!(now.customers, before.customers);
    assert_eq!(now.stats.last_rolled_back, seq);
    assert_eq!(
        Stats {
            last_rolled_back: 0,
            ..now.stats
        },
        before.stats
    );
    for (k, &slot) in slots.iter().enumerate() {
        let (was, is) = (
            record_at(&before.bytes, Col::Buckets, slot),
            record_at(&now.bytes, Col::Buckets, slot),
        );
        let mut want = before.bytes[was..was + 128].to_vec();
        if k < 4 {
            // restored from the log: its stamp is reset
            want[epoch..epoch + 8].fill(0);
        }
        assert!(now.bytes[is..is + 128] == want[..], "slot {slot}");
    }
    eng.check().unwrap();
}

#[test]
fn bad_files_are_refused_and_left_untouched() {
    let _serial = serial();
    let dir = TempDir::new("files");
    let (eng, good_path) = store(&dir, "good.sb", 16);
    drop(eng);
    let good = std::fs::read(&good_path).unwrap();
    let len = good.len();
    let lc = get_u64(
        &good,
        state(
            std::mem::offset_of!(StatePage, txn) + std::mem::offset_of!(TxnState, last_committed),
        ),
    );
    assert!(lc > 3);

    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let cases: Vec<(&str, Vec<u8>, &'static str)> = vec![
        ("wrong magic", edit(&|b| b[0] ^= 0x20), "magic"),
        ("zeroed file", vec![0u8; len], "magic"),
        ("text file", b"hello, world\n".repeat(1_000), "magic"),
        (
            "unknown version",
            edit(&|b| {
                put_u32(
                    b,
                    std::mem::offset_of!(FileHeader, version),
                    FORMAT_VERSION + 1,
                )
            }),
            "version",
        ),
        (
            "unknown version, checksum fixed",
            edit(&|b| {
                put_u32(b, std::mem::offset_of!(FileHeader, version), 99);
                fix_crc(b)
            }),
            "version",
        ),
        (
            "flipped capacity byte",
            edit(&|b| b[std::mem::offset_of!(FileHeader, capacity)] ^= 1),
            "checksum",
        ),
        (
            "flipped column table byte",
            edit(&|b| b[column(4) + 3] ^= 0x10),
            "checksum",
        ),
        (
            "flipped checksum byte",
            edit(&|b| b[CHECKSUM + 2] ^= 0xff),
            "checksum",
        ),
        (
            "header length",
            edit(&|b| {
                put_u32(b, std::mem::offset_of!(FileHeader, header_len), 64);
                fix_crc(b)
            }),
            "header length",
        ),
        (
            "capacity zero",
            edit(&|b| {
                put_u64(b, std::mem::offset_of!(FileHeader, capacity), 0);
                fix_crc(b)
            }),
            "capacity",
        ),
        (
            "capacity huge",
            edit(&|b| {
                put_u64(b, std::mem::offset_of!(FileHeader, capacity), u64::MAX);
                fix_crc(b)
            }),
            "capacity",
        ),
        (
            "capacity larger than the file",
            edit(&|b| {
                put_u64(b, std::mem::offset_of!(FileHeader, capacity), 1_000);
                fix_crc(b)
            }),
            "index capacity",
        ),
        (
            "index capacity",
            edit(&|b| {
                put_u64(b, std::mem::offset_of!(FileHeader, index_capacity), 64);
                fix_crc(b)
            }),
            "index capacity",
        ),
        (
            "column offset past the end",
            edit(&|b| {
                put_u64(b, column(0), len as u64 + 4096);
                fix_crc(b)
            }),
            "out of bounds",
        ),
        (
            "column offset into the header",
            edit(&|b| {
                put_u64(b, column(6), 0);
                fix_crc(b)
            }),
            "out of bounds",
        ),
        (
            "column length past the end",
            edit(&|b| {
                put_u64(b, column(10) + 8, u64::MAX / 2);
                fix_crc(b)
            }),
            "out of bounds",
        ),
        (
            "columns overlapping",
            edit(&|b| {
                let o = get_u64(b, column(2));
                put_u64(b, column(3), o);
                fix_crc(b)
            }),
            "out of bounds",
        ),
        (
            "file length field",
            edit(&|b| {
                put_u64(
                    b,
                    std::mem::offset_of!(FileHeader, file_len),
                    len as u64 * 4,
                );
                fix_crc(b)
            }),
            "file length",
        ),
        (
            "state: more customers than slots",
            edit(&|b| {
                put_u64(
                    b,
                    globals(std::mem::offset_of!(
                        shadowbucket::layout::Globals,
                        customers
                    )),
                    17,
                )
            }),
            "customer count",
        ),
        (
            "state: free list does not add up",
            edit(&|b| {
                put_u64(
                    b,
                    globals(std::mem::offset_of!(
                        shadowbucket::layout::Globals,
                        free_top
                    )),
                    0,
                )
            }),
            "customer count",
        ),
        (
            "state: zero configuration",
            edit(&|b| {
                let o = globals(
                    std::mem::offset_of!(shadowbucket::layout::Globals, config)
                        + std::mem::offset_of!(shadowbucket::layout::ConfigRaw, pool_rate),
                );
                put_u64(b, o, 0)
            }),
            "configuration",
        ),
        (
            "state: transaction numbers",
            edit(&|b| {
                let o = state(
                    std::mem::offset_of!(StatePage, txn) + std::mem::offset_of!(TxnState, active),
                );
                put_u64(b, o, lc - 1)
            }),
            "transaction",
        ),
    ];
    // truncations, from nothing to one byte short
    let mut cuts: Vec<(String, Vec<u8>)> = [
        0,
        1,
        64,
        4095,
        4096,
        8191,
        8192,
        12_288,
        len / 2,
        len - 4096,
        len - 1,
    ]
    .into_iter()
    .map(|n| (format!("truncated to {n} bytes"), good[..n].to_vec()))
    .collect();
    cuts.dedup_by_key(|c| c.1.len());

    let all = cases
        .into_iter()
        .map(|(n, b, w)| (n.to_string(), b, w))
        .chain(cuts.into_iter().map(|(n, b)| (n, b, "truncated")));
    for (i, (name, bytes, word)) in all.enumerate() {
        let p = dir.join(&format!("bad-{i}.sb"));
        std::fs::write(&p, &bytes).unwrap();
        for write in [true, false] {
            assert_refused(&p, write, Want::BadFile(word), &name);
        }
    }

    // not there at all
    let missing = dir.join("missing.sb");
    for write in [true, false] {
        assert_refused(
            &missing,
            write,
            Want::Io(std::io::ErrorKind::NotFound),
            "missing file",
        );
    }
    assert!(!missing.exists(), "opening created the file");
    // a directory
    let d = dir.join("a-directory.sb");
    std::fs::create_dir(&d).unwrap();
    assert_refused(
        &d,
        true,
        Want::Io(std::io::ErrorKind::IsADirectory),
        "directory",
    );
    // read-only: refused too (today as BadFile, see `a_directory_read_only_is_an_io_error`)
    assert!(matches!(
        Engine::open_read_only(&d),
        Err(Error::Io { .. } | Error::BadFile { .. })
    ));
    assert!(d.is_dir() && std::fs::read_dir(&d).unwrap().next().is_none());

    // the good file was never touched and still opens
    assert!(std::fs::read(&good_path).unwrap() == good);
    let eng = Engine::open(&good_path).unwrap();
    eng.check().unwrap();
}

/// A directory opened read-only should be refused as what it is, like the writer's open does
/// (`Io` with `IsADirectory`), not as a truncated store.
#[test]
fn a_directory_read_only_is_an_io_error() {
    let _serial = serial();
    let dir = TempDir::new("dir-ro");
    let d = dir.join("a-directory.sb");
    std::fs::create_dir(&d).unwrap();
    assert_refused(
        &d,
        false,
        Want::Io(std::io::ErrorKind::IsADirectory),
        "directory",
    );
}

// ---- corrupt columns ----------------------------------------------------------------------------
//
// The columns are not checksummed and `open` does not read them (it must stay O(1)), so a
// corrupt column is for `Engine::check` to report; no call may panic on one.

/// A small store with 4 customers in 16 slots, closed; returns its path and bytes.
fn small_closed_store(dir: &TempDir) -> (PathBuf, Vec<u8>) {
    let path = dir.join("s.sb");
    let mut eng = Engine::create(&path, CreateOptions::new(16, config()).without_model()).unwrap();
    for id in 1..=4 {
        eng.add_customer(id, Contract::new(10, Rate::tokens_per_sec(1)), 0)
            .unwrap();
    }
    drop(eng);
    let b = std::fs::read(&path).unwrap();
    (path, b)
}

/// Runs `f`, turning a panic into a test failure that names `what`.
#[track_caller]
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => panic!("{what} panicked instead of returning an error"),
    }
}

#[test]
fn corrupt_free_slot_stack_is_reported() {
    let _serial = serial();
    let dir = TempDir::new("corrupt-free");
    let (path, good) = small_closed_store(&dir);
    // the top of the free stack (12 free slots: entry 11) names slot 1000 of 16
    let mut b = good.clone();
    let top = column_offset(&b, Col::FreeStack) + 11 * 4;
    put_u32(&mut b, top, 1_000);
    std::fs::write(&path, &b).unwrap();
    let mut eng = Engine::open(&path).unwrap();
    assert!(
        matches!(eng.check(), Err(Error::BadFile { .. })),
        "check() does not see the corrupt free-slot stack"
    );
    let c = Contract::new(10, Rate::tokens_per_sec(1));
    let r = no_panic("add_customer", || eng.add_customer(9, c, 0));
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn corrupt_index_entry_is_an_error_not_a_panic() {
    let _serial = serial();
    let dir = TempDir::new("corrupt-index");
    let (path, good) = small_closed_store(&dir);
    // customer 1's index entry names slot 1000 of 16
    let mut b = good.clone();
    let index = column_offset(&b, Col::Index);
    let entries = get_u64(&b, std::mem::offset_of!(FileHeader, index_capacity)) as usize;
    let e = (0..entries)
        .map(|e| index + e * 16)
        .find(|&o| get_u64(&b, o) == 1)
        .expect("customer 1 in the index");
    put_u64(&mut b, e + 8, 1_000);
    std::fs::write(&path, &b).unwrap();
    let mut eng = Engine::open(&path).unwrap();
    assert!(matches!(eng.check(), Err(Error::BadFile { .. })));
    // a request is safe (the slot is past the capacity: UnknownCustomer) ...
    let d = no_panic("allocate", || eng.allocate(1, 1, 0)).unwrap();
    assert_eq!(d.outcome, Outcome::UnknownCustomer);
    // ... and so must the other calls by id be
    let r = no_panic("customer", || eng.customer(1).map(|_| ()));
    assert!(r.is_err(), "{r:?}");
    let r = no_panic("customer_at", || eng.customer_at(1, 0).map(|_| ()));
    assert!(r.is_err(), "{r:?}");
    let r = no_panic("settle", || eng.settle(1, 1, 1, GrantPath::Pool, 0));
    assert!(r.is_err(), "{r:?}");
}

/// On a full file system, creating or growing a store is an I/O error that changes nothing,
/// instead of a sparse file whose first writes through the mapping kill the process (`SIGBUS`).
/// It needs a small file system: it mounts a 4 MiB tmpfs where it may (as root) and says SKIPPED
/// where it may not.
#[cfg(target_os = "linux")]
#[test]
fn a_full_file_system_is_an_error_not_a_crash() {
    let _serial = serial();
    let dir = TempDir::new("full-fs");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "SKIPPED a_full_file_system_is_an_error_not_a_crash: cannot mount a small tmpfs here \
             (needs root)"
        );
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());

    // 200,000 slots need far more than 4 MiB: refused, and no file left
    let big = mnt.join("big.sb");
    let err = Engine::create(&big, CreateOptions::new(200_000, config()))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("cannot reserve"),
        "{err}"
    );
    assert!(!big.exists(), "a failed create left a file");

    // a store that fits works, and growing it past the space left changes nothing
    let path = mnt.join("small.sb");
    let mut eng = Engine::create(&path, CreateOptions::new(16, config())).unwrap();
    for &id in &IDS {
        eng.add_customer(id, Contract::new(1_000, Rate::tokens_per_sec(100)), 0)
            .unwrap();
    }
    let ids: Vec<u64> = IDS.iter().cycle().take(30).copied().collect();
    let toks = vec![7u64; 30];
    eng.allocate_batch(Keys::Ids(&ids), &toks, NOW).unwrap();
    let before = snap(&eng);
    let err = eng.grow(200_000).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_unchanged(&eng, &before, "a grow with no space");
    let names: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["small.sb"], "a failed grow left a file");
    // and the store goes on
    let out = eng.allocate_batch(Keys::Ids(&ids), &toks, NOW + 1).unwrap();
    assert_eq!(out.outcomes.len(), 30);
    drop(eng);
    Engine::open(&path).unwrap().check().unwrap();
}

/// `check` finds an index entry that names another customer's slot (a damaged file): `resolve`
/// and the batch path by id trust the index, so this is where such damage shows.
#[test]
fn check_finds_an_index_entry_naming_another_customers_slot() {
    let _serial = serial();
    let dir = TempDir::new("corrupt-index-stray");
    let (path, good) = small_closed_store(&dir);
    let eng = Engine::open(&path).unwrap();
    let s2 = eng.slot_of(2).unwrap();
    eng.check().unwrap();
    drop(eng);
    // an empty index entry now says that id 99 (no customer) lives in customer 2's slot
    let mut b = good.clone();
    let index = column_offset(&b, Col::Index);
    let entries = get_u64(&b, std::mem::offset_of!(FileHeader, index_capacity)) as usize;
    let e = (0..entries)
        .map(|e| index + e * 16)
        .find(|&o| get_u64(&b, o) == u64::MAX)
        .expect("an empty index entry");
    put_u64(&mut b, e, 99);
    put_u64(&mut b, e + 8, s2 as u64);
    std::fs::write(&path, &b).unwrap();
    let eng = Engine::open(&path).unwrap();
    let err = eng.check().unwrap_err();
    assert!(
        matches!(err, Error::BadFile { .. }) && err.to_string().contains("index"),
        "{err}"
    );
}
