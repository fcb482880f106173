//! I7 durability: a worker process is killed with SIGKILL at random instants while it applies a
//! deterministic stream of transactions (large batches, ticks, settles, customer changes) to a
//! store; after every kill the store is reopened and must
//!
//! - pass `Engine::check` and balance its ledger (I4), with I2 (pool) and I1 (every customer's
//!   contract) holding;
//! - say exactly how many transactions completed (`Stats::last_committed`) and which one was
//!   rolled back (`Engine::recovered`, `Stats::last_rolled_back`);
//! - equal, customer by customer and counter by counter, a fresh store that replayed exactly the
//!   transactions the reopened store says were committed (so every record is whole: before or
//!   after each transaction, never in between, and a batch is all or nothing).
//!
//! The worker cuts crowded ranges of slots into pieces (`tuning::set_split`; the stream's first
//! range holds about 80% of its requests), so kills also land in batches whose shards are pieces.
//! The worker is `src/bin/sb-crash-worker`; the stream is `src/bin/sb-crash-worker/workload.rs`,
//! which this test includes, so the test replays exactly what the worker ran. Set `SB_SEED` to
//! rerun with another seed.

mod common;

#[allow(dead_code)]
#[path = "../src/bin/sb-crash-worker/workload.rs"]
mod workload;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;

use shadowbucket::fixed::FEMTO_PER_TOKEN;
use shadowbucket::layout::{Globals, StatePage, TxnState, txn_kind};
use shadowbucket::{Contract, Engine, Rate, Stats};
use workload::{Mix, Op, Rng, op_time};

const WORKER: &str = env!("CARGO_BIN_EXE_sb-crash-worker");

/// Runs the tests of this file one at a time. A child process spawned by one test holds copies
/// of every file descriptor of this process between its fork and its exec, so a store another
/// test has just closed can still be locked (`flock` follows the open file description) and a
/// reopen would fail with `Error::Locked` for that moment.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn seed() -> u64 {
    std::env::var("SB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_D00D)
}

/// What the replay knows about one customer since it was (last) added, for I1.
#[derive(Clone, Copy, Debug)]
struct Track {
    added_ns: u64,
    contract: Contract,
    /// Tokens granted, plus settlement debt, less refunds.
    net_granted: i128,
    /// False once the contract changed: the simple bound below no longer applies.
    exact: bool,
}

/// The reference: a store in this process that replays the stream one transaction at a time.
struct Replay {
    eng: Engine,
    seed: u64,
    mix: Mix,
    /// Transactions of the stream applied.
    k: u64,
    track: HashMap<u64, Track>,
}

impl Replay {
    fn new(eng: Engine, seed: u64, mix: Mix) -> Replay {
        let track = eng
            .customer_ids()
            .into_iter()
            .map(|id| {
                let v = eng.customer(id).unwrap();
                (
                    id,
                    Track {
                        added_ns: workload::T0,
                        contract: v.contract,
                        net_granted: 0,
                        exact: true,
                    },
                )
            })
            .collect();
        Replay {
            eng,
            seed,
            mix,
            k: 0,
            track,
        }
    }

    fn op(&self, k: u64) -> Op {
        workload::make_op(self.seed, self.mix, k, &self.eng)
    }

    fn advance_to(&mut self, k: u64) {
        while self.k < k {
            let op = self.op(self.k);
            let now = op_time(self.seed, self.k);
            let out = workload::apply(&mut self.eng, &op, now);
            match &op {
                Op::Batch { ids, tokens } => {
                    let out = out.unwrap();
                    for i in 0..ids.len() {
                        if out.outcomes[i].granted() {
                            self.track.get_mut(&ids[i]).unwrap().net_granted += tokens[i] as i128;
                        }
                    }
                }
                Op::Settle {
                    id, granted, used, ..
                } => {
                    self.track.get_mut(id).unwrap().net_granted += *used as i128 - *granted as i128;
                }
                Op::Add(id, c) => {
                    self.track.insert(
                        *id,
                        Track {
                            added_ns: now,
                            contract: *c,
                            net_granted: 0,
                            exact: true,
                        },
                    );
                }
                Op::Remove(id) => {
                    self.track.remove(id);
                }
                Op::Update(id, _) => self.track.get_mut(id).unwrap().exact = false,
                Op::Tick(_) => {}
            }
            self.k += 1;
        }
    }
}

/// `Stats` without the sequence numbers, which differ between a store that rolled transactions
/// back (each rollback uses up a sequence number) and one that never crashed.
fn stats_sans_seq(mut s: Stats) -> Stats {
    s.last_committed = 0;
    s.last_rolled_back = 0;
    s
}

/// The reopened store and the replay hold the same state, slot for slot.
fn assert_same(got: &Engine, want: &Engine, now: u64, ctx: &str) {
    assert_eq!(
        stats_sans_seq(got.stats()),
        stats_sans_seq(want.stats()),
        "{ctx}: stats differ from the replay"
    );
    let ids = got.customer_ids();
    let want_ids = want.customer_ids();
    let flagged = (got.flagged(), want.flagged());
    assert_eq!(ids, want_ids, "{ctx}: customers (in slot order) differ");
    for &id in &ids {
        let (a, b) = (got.customer(id).unwrap(), want.customer(id).unwrap());
        assert_eq!(a, b, "{ctx}: customer {id} differs from the replay");
    }
    assert_eq!(flagged.0, flagged.1, "{ctx}: flagged customers differ");
    assert_eq!(got.ledger(now), want.ledger(now), "{ctx}: ledgers differ");
}

/// I1, I2 and I4 on a reopened store, with the replay's per-customer history.
fn assert_bounds(eng: &Engine, rep: &Replay, now: u64, ctx: &str) {
    let l = eng.ledger(now);
    assert!(l.balanced(), "{ctx}: ledger not balanced: {l:?}");
    // I2: net of refunds, the customers got no more than the pool's supply (less what was lost
    // at its cap): pool_burst + pool_rate * elapsed.
    let c = eng.stats().counters;
    let granted = c.tokens_shadow as i128 + c.tokens_pool as i128 - c.tokens_refunded as i128;
    assert!(
        granted * FEMTO_PER_TOKEN <= l.supplied - l.lost_at_cap,
        "{ctx}: I2 violated: {granted} tokens granted, ledger {l:?}"
    );
    // I1: for every customer whose contract has not changed since it was added,
    // (granted + debt - refunded) + what its bucket holds <= burst + rate * elapsed, exactly in
    // femto-tokens (equality unless the bucket spent time full).
    let mut checked = 0;
    for (&id, t) in &rep.track {
        if !t.exact {
            continue;
        }
        let v = eng.customer_at(id, now).unwrap();
        assert_eq!(v.contract, t.contract, "{ctx}: customer {id}'s contract");
        let bound = t.contract.burst as i128 * FEMTO_PER_TOKEN
            + t.contract.rate.micros() as i128 * (now - t.added_ns) as i128;
        assert!(
            t.net_granted * FEMTO_PER_TOKEN + v.std_femto <= bound,
            "{ctx}: I1 violated for customer {id}: net granted {} tokens, bucket {} fT, bound {bound} fT",
            t.net_granted,
            v.std_femto
        );
        checked += 1;
    }
    assert!(checked > 0);
}

fn kind_name(op: &Op) -> &'static str {
    match op {
        Op::Batch { ids, .. } if ids.len() >= 8192 => "large batch",
        Op::Batch { .. } => "small batch",
        Op::Tick(_) => "tick",
        Op::Settle { .. } => "settle",
        Op::Add(..) | Op::Remove(_) => "add/remove",
        Op::Update(..) => "contract update",
    }
}

/// Starts the worker with `args`, its standard error to `err_path`.
fn spawn_worker(args: &[&OsStr], err_path: &Path) -> Child {
    Command::new(WORKER)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(err_path).unwrap())
        .spawn()
        .expect("spawn the worker")
}

/// Lets the worker run for `ms`, then kills it with SIGKILL. A worker that exited by itself
/// fails the test, with what it wrote to `err_path`.
fn kill_after(mut child: Child, ms: u64, err_path: &Path, tag: &str) {
    std::thread::sleep(Duration::from_millis(ms));
    if let Some(status) = child.try_wait().unwrap() {
        panic!(
            "{tag}: the worker exited by itself ({status}): {}",
            std::fs::read_to_string(err_path).unwrap_or_default()
        );
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Runs the worker on a fresh store, kills it `kills` times after random sleeps of up to
/// `max_sleep_ms`, and checks the store after each kill. Returns the rolled-back kinds.
fn crash_loop(tag: &str, mix: Mix, kills: usize, max_sleep_ms: u64) -> HashMap<&'static str, u32> {
    let seed = seed();
    eprintln!("{tag}: seed {seed} (set SB_SEED to change it)");
    let started = Instant::now();
    let dir = TempDir::new(tag);
    let path = dir.join("store.sb");
    let rpath = dir.join("replay.sb");
    let setup = workload::setup(&path, seed).unwrap();
    let s0 = setup.stats();
    drop(setup);
    std::fs::copy(&path, &rpath).unwrap();
    let mut rep = Replay::new(Engine::open(&rpath).unwrap(), seed, mix);
    let mut rng = Rng::new(seed, 0x5_1EE9);
    let (mut lc, mut lrb) = (s0.last_committed, s0.last_rolled_back);
    let mut k = 0u64;
    let mut stalls = 0;
    let mut rolled_back: HashMap<&'static str, u32> = HashMap::new();
    let mut between = 0;
    for i in 0..kills {
        let err_path = dir.join(&format!("worker-{i}.stderr"));
        let (seed_s, k_s) = (seed.to_string(), k.to_string());
        let args = [
            "run".as_ref(),
            path.as_os_str(),
            seed_s.as_ref(),
            mix.name().as_ref(),
            k_s.as_ref(),
        ];
        let child = spawn_worker(&args, &err_path);
        // after two kills in a row without progress, give a long transaction time to finish
        let ms = if stalls >= 2 {
            3 * max_sleep_ms
        } else {
            rng.range(0, max_sleep_ms)
        };
        kill_after(child, ms, &err_path, tag);

        let eng = Engine::open(&path).expect("reopen after a kill");
        let ctx = format!("{tag}: kill {i} after {ms} ms");
        let s = eng.stats();
        let max0 = lc.max(lrb);
        let done = if s.last_committed == lc {
            0
        } else {
            assert!(
                s.last_committed > max0,
                "{ctx}: last_committed went from {lc} to {}",
                s.last_committed
            );
            s.last_committed - max0
        };
        match eng.recovered() {
            Some(seq) => {
                assert_eq!(
                    seq,
                    max0 + done + 1,
                    "{ctx}: rolled back a transaction out of order"
                );
                assert_eq!(s.last_rolled_back, seq, "{ctx}: last_rolled_back");
            }
            None => {
                assert_eq!(s.last_rolled_back, lrb, "{ctx}: last_rolled_back changed");
                between += 1;
            }
        }
        eng.check()
            .unwrap_or_else(|e| panic!("{ctx}: check failed: {e}"));
        let k_new = k + done;
        // later than every instant the store has seen (the rolled-back one included)
        let now = op_time(seed, k_new);
        rep.advance_to(k_new);
        if eng.recovered().is_some() {
            let kind = kind_name(&rep.op(k_new));
            *rolled_back.entry(kind).or_default() += 1;
        }
        assert_same(&eng, &rep.eng, now, &ctx);
        assert_bounds(&eng, &rep, now, &ctx);
        lc = s.last_committed;
        lrb = s.last_rolled_back;
        k = k_new;
        stalls = if done == 0 { stalls + 1 } else { 0 };
    }
    // a read-only open sees the same thing, and a last writer's open recovers nothing
    let ro = Engine::open_read_only(&path).unwrap();
    assert_same(&ro, &rep.eng, op_time(seed, k), "read-only reopen");
    drop(ro);
    let eng = Engine::open(&path).unwrap();
    assert_eq!(eng.recovered(), None);
    eng.check().unwrap();
    eprintln!(
        "{tag}: {kills} kills in {:?}: {k} transactions committed, {between} kills between \
         transactions, rolled back: {rolled_back:?}",
        started.elapsed()
    );
    assert!(
        k >= kills as u64 / 4,
        "{tag}: the worker made too little progress ({k})"
    );
    rolled_back
}

#[test]
fn killed_during_large_batches() {
    let _serial = serial();
    let rb = crash_loop("batches", Mix::Batches, 40, 200);
    assert!(
        rb.values().sum::<u32>() >= 1,
        "no kill landed inside a transaction: the test did not test recovery"
    );
}

#[test]
fn killed_during_ticks_settles_and_customer_changes() {
    let _serial = serial();
    let rb = crash_loop("small", Mix::Small, 24, 60);
    assert!(
        rb.values().sum::<u32>() >= 1,
        "no kill landed inside a transaction: the test did not test recovery"
    );
}

/// A snapshot is whole whenever the process taking it is killed: the worker applies the stream
/// to a fresh copy of the store and snapshots it after every operation (every other one
/// captured and written on another thread while the next operation runs); after each kill the
/// snapshot (where one was finished) opens without recovering anything, passes `Engine::check`,
/// and equals the replay of exactly the transactions it says were committed.
#[test]
fn killed_during_snapshots() {
    let _serial = serial();
    let seed = seed();
    let dir = TempDir::new("snapshots");
    let setup_path = dir.join("setup.sb");
    let s0 = workload::setup(&setup_path, seed).unwrap().stats();
    let mut rng = Rng::new(seed, 0x5AA9_5407);
    let (mut snaps, mut mid_copy) = (Vec::new(), 0);
    for i in 0..16 {
        let path = dir.join(&format!("store-{i}.sb"));
        let dest = dir.join(&format!("snap-{i}.sb"));
        std::fs::copy(&setup_path, &path).unwrap();
        let err_path = dir.join(&format!("worker-{i}.stderr"));
        let seed_s = seed.to_string();
        let args = [
            "snapshot".as_ref(),
            path.as_os_str(),
            dest.as_os_str(),
            seed_s.as_ref(),
            Mix::Small.name().as_ref(),
        ];
        let child = spawn_worker(&args, &err_path);
        kill_after(child, rng.range(20, 400), &err_path, "snapshots");
        if dir.join(&format!("snap-{i}.sb.snapshot-tmp")).exists() {
            mid_copy += 1;
        }
        if !dest.exists() {
            continue; // killed before its first snapshot was in place
        }
        let eng = Engine::open(&dest).expect("open a snapshot");
        let ctx = format!("kill {i}");
        assert_eq!(
            eng.recovered(),
            None,
            "{ctx}: a snapshot holds no transaction in flight"
        );
        eng.check()
            .unwrap_or_else(|e| panic!("{ctx}: check failed: {e}"));
        let s = eng.stats();
        assert_eq!(s.last_rolled_back, s0.last_rolled_back, "{ctx}");
        assert!(s.last_committed > s0.last_committed, "{ctx}");
        snaps.push((s.last_committed - s0.last_committed, dest));
    }
    eprintln!(
        "snapshots: {} of 16 kills left a snapshot, {mid_copy} landed in the middle of a copy",
        snaps.len()
    );
    assert!(
        snaps.len() >= 8,
        "too few snapshots were finished to test them"
    );
    assert!(
        mid_copy >= 1,
        "no kill landed inside a snapshot: the test did not test one"
    );
    // against one replay, in the order of the transactions they hold
    snaps.sort();
    let rpath = dir.join("replay.sb");
    std::fs::copy(&setup_path, &rpath).unwrap();
    let mut rep = Replay::new(Engine::open(&rpath).unwrap(), seed, Mix::Small);
    for (done, dest) in snaps {
        rep.advance_to(done);
        let now = op_time(seed, done);
        let ctx = format!("snapshot after {done} transactions");
        let eng = Engine::open(&dest).unwrap();
        assert_same(&eng, &rep.eng, now, &ctx);
        assert_bounds(&eng, &rep, now, &ctx);
    }
}

// ---- kills at exact instants, forged ------------------------------------------------------------
//
// SIGKILL lands where it lands. These tests forge, in the state page, exactly what a kill at one
// chosen instant leaves behind (the layout types are public), to check the recovery rules that
// random kills rarely reach.

fn state_off(field: usize) -> usize {
    shadowbucket::layout::HEADER_BYTES as usize + field
}

fn read_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn write_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

const TXN: usize = std::mem::offset_of!(StatePage, txn);

/// What a kill leaves just after `Txn::begin` (undo copied, kind set, `active` published) and
/// before the transaction wrote anything else.
fn forge_begun(path: &Path, kind: u64) -> u64 {
    let mut b = std::fs::read(path).unwrap();
    let g = state_off(std::mem::offset_of!(StatePage, globals));
    let u = state_off(std::mem::offset_of!(StatePage, undo));
    let n = std::mem::size_of::<Globals>();
    b.copy_within(g..g + n, u);
    let lc = read_u64(
        &b,
        state_off(TXN + std::mem::offset_of!(TxnState, last_committed)),
    );
    let lrb = read_u64(
        &b,
        state_off(TXN + std::mem::offset_of!(TxnState, last_rolled_back)),
    );
    let seq = lc.max(lrb) + 1;
    write_u64(
        &mut b,
        state_off(TXN + std::mem::offset_of!(TxnState, kind)),
        kind,
    );
    write_u64(
        &mut b,
        state_off(TXN + std::mem::offset_of!(TxnState, active)),
        seq,
    );
    std::fs::write(path, &b).unwrap();
    seq
}

fn small_store(path: &Path) -> Engine {
    let cfg = shadowbucket::EngineConfig::new(1_000_000, Rate::tokens_per_sec(1_000));
    let mut eng = Engine::create(
        path,
        shadowbucket::CreateOptions::new(16, cfg).without_model(),
    )
    .unwrap();
    for id in 1..=10 {
        eng.add_customer(id, Contract::new(1_000, Rate::tokens_per_sec(10)), 0)
            .unwrap();
    }
    eng
}

#[test]
fn kill_between_commit_and_clear_counts_as_committed() {
    let _serial = serial();
    let dir = TempDir::new("commit-edge");
    let path = dir.join("s.sb");
    let mut eng = small_store(&path);
    eng.allocate(3, 7, 1_000).unwrap();
    let before = eng.stats();
    let view = eng.customer(3).unwrap();
    drop(eng);
    // `Txn::commit` stores `last_committed = seq`, then `active = 0`: kill between the two
    let mut b = std::fs::read(&path).unwrap();
    let lc = read_u64(
        &b,
        state_off(TXN + std::mem::offset_of!(TxnState, last_committed)),
    );
    write_u64(
        &mut b,
        state_off(TXN + std::mem::offset_of!(TxnState, active)),
        lc,
    );
    std::fs::write(&path, &b).unwrap();
    let eng = Engine::open(&path).unwrap();
    assert_eq!(eng.recovered(), None);
    assert_eq!(eng.stats(), before);
    assert_eq!(eng.customer(3).unwrap(), view);
    eng.check().unwrap();
}

#[test]
fn kill_right_after_begin_rolls_back_to_the_same_state() {
    let _serial = serial();
    for kind in [txn_kind::ALLOCATE, txn_kind::SETTLE, txn_kind::TICK] {
        let dir = TempDir::new(&format!("begun-{kind}"));
        let path = dir.join("s.sb");
        let mut eng = small_store(&path);
        eng.allocate(3, 7, 1_000).unwrap();
        let before = eng.stats();
        let views: Vec<_> = (1..=10).map(|id| eng.customer(id).unwrap()).collect();
        drop(eng);
        let seq = forge_begun(&path, kind);
        let eng = Engine::open(&path).unwrap();
        assert_eq!(eng.recovered(), Some(seq), "kind {kind}");
        let after = eng.stats();
        assert_eq!(after.last_rolled_back, seq);
        assert_eq!(stats_sans_seq(after), stats_sans_seq(before), "kind {kind}");
        let got: Vec<_> = (1..=10).map(|id| eng.customer(id).unwrap()).collect();
        assert_eq!(got, views, "kind {kind}");
        eng.check().unwrap();
    }
}

/// A rolled-back customer change must leave the store as it was, free-slot order included: the
/// next `add_customer` gets the slot it would have got had the process not been killed.
#[test]
fn rolled_back_customer_change_keeps_the_free_slot_order() {
    let _serial = serial();
    let dir = TempDir::new("admin-order");
    let clean = dir.join("clean.sb");
    let crashed = dir.join("crashed.sb");
    let mut eng = small_store(&clean);
    // free the slots of customers 3 and 6 (slots 2 and 5), in that order: 5 is on top now
    eng.remove_customer(3, 0).unwrap();
    eng.remove_customer(6, 0).unwrap();
    drop(eng);
    std::fs::copy(&clean, &crashed).unwrap();
    // the crashed copy: killed just after an add_customer (or remove) began
    let seq = forge_begun(&crashed, txn_kind::ADMIN);
    let mut a = Engine::open(&clean).unwrap();
    let mut b = Engine::open(&crashed).unwrap();
    assert_eq!(b.recovered(), Some(seq));
    assert_eq!(stats_sans_seq(a.stats()), stats_sans_seq(b.stats()));
    let c = Contract::new(1_000, Rate::tokens_per_sec(10));
    let sa = a.add_customer(100, c, 0).unwrap();
    let sb = b.add_customer(100, c, 0).unwrap();
    assert_eq!(
        sa, sb,
        "after the rollback, the next customer gets slot {sb} instead of {sa}"
    );
}
