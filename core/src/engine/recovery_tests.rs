//! Recovery of a batch that ran the parallel path and never committed: its shards' journal logs
//! (`store::JournalLog`) must restore every line it changed, and nothing else.

use super::*;
use crate::layout::{Bucket, LogHead};

/// A record as recovery must leave it: everything but `epoch`, which recovery resets.
fn sans_epoch(b: &Bucket) -> Bucket {
    Bucket { epoch: 0, ..*b }
}

/// The batch tuning is process-wide: one test of this file at a time.
static TUNING: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_crashed_parallel_batch_is_rolled_back_from_its_shard_logs() {
    // several small shards, and the parallel path for any batch
    crashed_batch_is_rolled_back("ranges", 64, usize::MAX, false);
}

/// The same with crowded ranges cut into pieces: each piece's log names its own part of the
/// range, and recovery restores every piece's entries.
#[test]
fn a_crashed_batch_with_cut_ranges_is_rolled_back_from_its_pieces_logs() {
    crashed_batch_is_rolled_back("pieces", 256, 40, true);
}

/// A batch over ranges of `shard` slots (ranges holding more than `split` of its requests cut
/// into pieces; `skewed`: most requests on a few customers of each range) dies before its
/// commit; reopening the store rolls it back exactly.
fn crashed_batch_is_rolled_back(tag: &str, shard: usize, split: usize, skewed: bool) {
    let _one = TUNING.lock().unwrap_or_else(|e| e.into_inner());
    batch::tuning::set(1, shard);
    batch::tuning::set_pool_chunk(97);
    batch::tuning::set_split(split);
    let dir = std::env::temp_dir().join(format!("sb-recovery-log-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sb");
    let cfg = EngineConfig::new(40_000, Rate::tokens_per_sec(2_000));
    let mut eng = Engine::create(&path, CreateOptions::new(1_000, cfg).without_model()).unwrap();
    let n = 700u64;
    let all: Vec<(u64, Contract)> = (0..n)
        .map(|id| {
            (
                id,
                Contract::new(50 + id % 7, Rate::tokens_per_sec(5 + id % 3)),
            )
        })
        .collect();
    let slots = eng.add_customers(&all, 0).unwrap();
    let res: Vec<Reservation> = slots
        .iter()
        .step_by(2)
        .map(|&slot| Reservation {
            slot,
            rate: Rate::tokens_per_sec(3),
            capacity: 20,
        })
        .collect();
    eng.tick_with(0, &res).unwrap();
    // a stream of requests with duplicates, some customers not in it, one unknown slot
    let mut x = 12345u64;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    let mut batch_of = move |len: usize| -> (Vec<u32>, Vec<u64>) {
        let mut s: Vec<u32> = (0..len)
            .map(|_| {
                let k = next() % 600;
                // three requests in four on the first ten customers of each range of 256
                let k = if skewed && !next().is_multiple_of(4) {
                    (k / 256) * 256 + k % 10
                } else {
                    k
                };
                slots[k as usize]
            })
            .collect();
        s[len / 2] = 999;
        let t = (0..len).map(|_| 1 + next() % 9).collect();
        (s, t)
    };
    // a committed batch first, so the journal and the log heads hold older entries
    let (s1, t1) = batch_of(3_000);
    let mut o = vec![Outcome::InvalidInput; s1.len()];
    let mut r = vec![0u64; s1.len()];
    eng.allocate_batch_into(Keys::Slots(&s1), &t1, 2_000_000_000, &mut o, &mut r)
        .unwrap();
    let before: Vec<Bucket> = eng.store.cols().buckets.to_vec();
    let globals = eng.store.cols().state.globals;

    // the next batch runs, and the process dies before its commit
    let (s2, t2) = batch_of(5_000);
    let mut o = vec![Outcome::InvalidInput; s2.len()];
    let mut r = vec![0u64; s2.len()];
    let seq = {
        let mut c = eng.store.alloc_cols_mut().unwrap();
        let txn = super::apply_batch(
            &mut c,
            &mut eng.scratch,
            &s2,
            &t2,
            5_000_000_000,
            &mut o,
            &mut r,
        );
        txn.seq
    };
    assert!(
        eng.last_batch_phases().local > std::time::Duration::ZERO,
        "the batch did not take the parallel path"
    );
    // every customer the batch named (slot 999 holds none) logged its first line once; those
    // whose second line changed logged that too
    let distinct: std::collections::HashSet<u32> =
        s2.iter().copied().filter(|&s| s != 999).collect();
    let c = eng.store.cols_mut().unwrap();
    let heads: Vec<LogHead> = c
        .log_heads
        .iter()
        .filter(|h| h.seq == seq)
        .copied()
        .collect();
    assert!(heads.len() > 1, "{} shard logs", heads.len());
    // with cut ranges, more logs than ranges, each within one range
    let ranges = 1_000usize.div_ceil(shard);
    if skewed {
        assert!(
            heads.len() > ranges,
            "{} logs over {ranges} ranges",
            heads.len()
        );
    } else {
        assert_eq!(heads.len(), ranges);
    }
    for h in &heads {
        let (first, end) = (h.first_slot as usize, (h.first_slot + h.slots) as usize);
        assert!(
            first / shard == (end - 1) / shard,
            "log of {first}..{end} crosses a range"
        );
    }
    let line0: usize = heads.iter().map(|h| h.entries[0] as usize).sum();
    let line1: usize = heads.iter().map(|h| h.entries[1] as usize).sum();
    assert_eq!(line0, distinct.len());
    let second_line = |b: &Bucket| Bucket {
        std: 0,
        shadow: 0,
        last_ns: 0,
        outstanding: 0,
        granted_shadow: 0,
        requests: 0,
        ..sans_epoch(b)
    };
    // records whose `view` differs from before the batch
    let differing = |view: fn(&Bucket) -> Bucket| {
        c.buckets
            .iter()
            .zip(&before)
            .filter(|(a, b)| view(a) != view(b))
            .count()
    };
    let changed = differing(sans_epoch);
    let changed1 = differing(second_line);
    assert!(changed > 100, "only {changed} records changed");
    assert!(changed1 > 10, "only {changed1} second lines changed");
    assert!(
        (changed1..distinct.len()).contains(&line1),
        "{line1} second lines logged, {changed1} changed"
    );
    drop(eng);

    let eng = Engine::open(&path).unwrap();
    assert_eq!(eng.recovered(), Some(seq));
    let after = eng.store.cols().buckets;
    for (i, (a, b)) in after.iter().zip(&before).enumerate() {
        assert_eq!(sans_epoch(a), sans_epoch(b), "slot {i}");
        if !distinct.contains(&(i as u32)) {
            assert_eq!(a, b, "slot {i}: untouched, yet it changed");
        }
    }
    assert_eq!(eng.stats().last_rolled_back, seq);
    assert_eq!(eng.store.cols().state.globals, globals);
    eng.check().unwrap();
    drop(eng);
    batch::tuning::reset();
    std::fs::remove_dir_all(&dir).unwrap();
}
