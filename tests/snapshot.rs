//! `Engine::snapshot`: a consistent copy of a store, written beside its destination and renamed
//! over it. (A snapshot whose process is killed at random instants: `tests/durability.rs`.)

mod common;

use std::path::Path;

use common::TempDir;
use shadowbucket::model::ModelSpec;
use shadowbucket::model::weights::LstmModel;
use shadowbucket::{
    Contract, CreateOptions, Engine, EngineConfig, Error, Event, Keys, Predictor, Rate, Reservation,
};

const T0: u64 = 1_000_000_000;

/// The LSTM forecaster the stores run (random weights: its recurrent state lives in the store).
fn predictor() -> Predictor {
    Predictor::Lstm(Box::new(
        LstmModel::random(ModelSpec::default(), 11).unwrap(),
    ))
}

/// A store with `n` customers (ids 100..), some reservations, batches with every outcome, a
/// settle, a predictive tick, an event and a signal behind it. Returns the engine and the clock.
fn busy_store(path: &Path, capacity: u64, n: u64) -> (Engine, u64) {
    let cfg = EngineConfig::new(n * 20, Rate::tokens_per_sec(n * 2));
    let mut e = Engine::create(path, CreateOptions::new(capacity, cfg).at(T0)).unwrap();
    e.set_predictor(predictor()).unwrap();
    let all: Vec<(u64, Contract)> = (0..n)
        .map(|i| (100 + i, Contract::new(30 + i % 50, Rate::tokens_per_sec(3))))
        .collect();
    let slots = e.add_customers(&all, T0).unwrap();
    let res: Vec<Reservation> = slots
        .iter()
        .step_by(3)
        .map(|&slot| Reservation {
            slot,
            rate: Rate::tokens_per_sec(1),
            capacity: 10,
        })
        .collect();
    let mut now = T0;
    e.tick_with(now, &res).unwrap();
    for b in 0..5u64 {
        now += 700_000_000;
        let ids: Vec<u64> = (0..4 * n).map(|i| 100 + (i * 7 + b) % (n + 3)).collect();
        let tokens: Vec<u64> = (0..4 * n).map(|i| 1 + (i + b) % 9).collect();
        e.allocate_batch(Keys::Ids(&ids), &tokens, now).unwrap();
    }
    e.settle(101, 5, 2, shadowbucket::GrantPath::Shadow, now)
        .unwrap();
    e.add_event(Event {
        customer: Some(102),
        kind: 3,
        intensity: 1.5,
        start_ns: now,
        end_ns: now + 60_000_000_000,
    })
    .unwrap();
    e.set_signal("news", 0.25).unwrap();
    now += 1_000_000_000;
    e.tick(now).unwrap();
    (e, now)
}

/// Everything a caller can see of a store, for comparing two.
fn view(e: &Engine, now: u64) -> String {
    let custs: Vec<_> = e
        .customer_ids()
        .into_iter()
        .map(|id| e.customer_at(id, now).unwrap())
        .collect();
    let events: Vec<_> = e.events().iter().map(|(id, ev)| (id, *ev)).collect();
    format!(
        "{:?}\n{custs:?}\n{:?}\n{:?}\n{events:?}\n{:?}",
        e.stats(),
        e.flagged(),
        e.ledger(now),
        e.signals()
    )
}

#[test]
fn a_snapshot_is_the_store_and_goes_on_like_it() {
    let dir = TempDir::new("snap-copy");
    let (mut live, mut now) = busy_store(&dir.join("live.sb"), 4096, 500);
    let before = view(&live, now);
    let mut seen = Vec::new();
    let snap = live
        .snapshot_with(dir.join("snap.sb"), |done, total| seen.push((done, total)))
        .unwrap();
    // the source is unchanged, and the copy holds its bytes exactly
    assert_eq!(view(&live, now), before);
    assert_eq!(snap.last_committed, live.stats().last_committed);
    assert_eq!(snap.path, dir.join("snap.sb"));
    let (a, b) = (
        std::fs::read(dir.join("live.sb")).unwrap(),
        std::fs::read(&snap.path).unwrap(),
    );
    assert_eq!(a.len() as u64, snap.bytes);
    assert!(a == b, "the snapshot's bytes differ from the store's");
    assert!(!Path::new(&format!("{}.snapshot-tmp", snap.path.display())).exists());
    // progress rises to the whole file
    assert!(!seen.is_empty());
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(*seen.last().unwrap(), (snap.bytes, snap.bytes));

    // opened for writing it recovers nothing, checks, and shows the same state and events
    let mut copy = Engine::open(&snap.path).unwrap();
    copy.set_predictor(predictor()).unwrap();
    assert_eq!(copy.recovered(), None);
    copy.check().unwrap();
    assert_eq!(view(&copy, now), before);

    // the same requests on both give the same outcomes and the same end state
    for b in 0..3u64 {
        now += 400_000_000;
        let ids: Vec<u64> = (0..3000).map(|i| 100 + (i * 13 + b) % 510).collect();
        let tokens: Vec<u64> = (0..3000).map(|i| 1 + (i * b) % 11).collect();
        let x = live.allocate_batch(Keys::Ids(&ids), &tokens, now).unwrap();
        let y = copy.allocate_batch(Keys::Ids(&ids), &tokens, now).unwrap();
        assert_eq!(x.outcomes, y.outcomes);
        assert_eq!(x.retry_after_ns, y.retry_after_ns);
    }
    now += 1_000_000_000;
    live.tick(now).unwrap();
    copy.tick(now).unwrap();
    assert!(
        view(&copy, now) == view(&live, now),
        "the copy went another way"
    );
}

#[test]
fn unused_capacity_stays_a_hole_and_a_new_snapshot_replaces_the_old() {
    let dir = TempDir::new("snap-holes");
    let (mut live, now) = busy_store(&dir.join("live.sb"), 200_000, 50);
    let dest = dir.join("snap.sb");
    let first = live.snapshot(&dest).unwrap();
    assert!(
        first.written < first.bytes / 2,
        "{} of {} bytes written for a store that is mostly empty",
        first.written,
        first.bytes
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&dest).unwrap();
        assert_eq!(m.len(), first.bytes);
        assert!(
            m.blocks() * 512 < first.bytes / 2,
            "the snapshot is not sparse: {} bytes allocated of {}",
            m.blocks() * 512,
            first.bytes
        );
    }
    // a later snapshot over the first holds the later state (the first's events file too)
    live.remove_customer(120, now).unwrap();
    let event = live.events().iter().next().unwrap().0;
    live.remove_event(event).unwrap();
    let second = live.snapshot(&dest).unwrap();
    assert_eq!(second.last_committed, first.last_committed + 1);
    let copy = Engine::open_read_only(&dest).unwrap();
    assert_eq!(view(&copy, now), view(&live, now));
    assert!(copy.slot_of(120).is_none());
    assert_eq!(copy.events().iter().count(), 0);

    // The store itself has blocks for every byte (on a full disk, a write to a hole of a mapped
    // file kills the process); a snapshot keeps its holes through read-only opens, and gets its
    // blocks when it is opened for writing.
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let allocated = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            m.blocks() * 512 >= m.len()
        };
        assert!(allocated(&dir.join("live.sb")), "the store has holes");
        drop(copy);
        assert!(!allocated(&dest), "a read-only open filled the holes");
        drop(Engine::open(&dest).unwrap());
        assert!(
            allocated(&dest),
            "a store opened for writing kept its holes"
        );
    }
}

#[test]
fn a_read_only_engine_snapshots_a_store_no_writer_has_open() {
    let dir = TempDir::new("snap-ro");
    let path = dir.join("live.sb");
    let (live, now) = busy_store(&path, 2048, 300);
    let want = view(&live, now);

    // while the writer has it open, a read-only snapshot is refused, and nothing is written
    let mut ro = Engine::open_read_only(&path).unwrap();
    let dest = dir.join("snap.sb");
    assert!(matches!(ro.snapshot(&dest), Err(Error::Locked(p)) if p == path));
    assert!(!dest.exists());
    drop(live);

    // without a writer it works, and a writer opening the store meanwhile is refused
    let mut writer_refused = 0;
    let snap = ro
        .snapshot_with(&dest, |_, _| {
            if matches!(Engine::open(&path), Err(Error::Locked(_))) {
                writer_refused += 1;
            }
        })
        .unwrap();
    assert!(writer_refused >= 1);
    assert_eq!(view(&Engine::open(&snap.path).unwrap(), now), want);
    // the lock is gone afterwards
    let mut writer = Engine::open(&path).unwrap();

    // a store grown since the read-only engine opened it is a new file: no stale snapshot of it
    writer.grow(4096).unwrap();
    drop(writer);
    let err = ro.snapshot(dir.join("stale.sb")).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("open it again")),
        "{err}"
    );
    assert!(!dir.join("stale.sb").exists());
    let mut fresh = Engine::open_read_only(&path).unwrap();
    let grown = std::fs::metadata(&path).unwrap().len();
    assert_eq!(fresh.snapshot(dir.join("fresh.sb")).unwrap().bytes, grown);
}

#[test]
fn bad_destinations_are_refused_and_change_nothing() {
    let dir = TempDir::new("snap-bad");
    let path = dir.join("live.sb");
    let (mut live, now) = busy_store(&path, 1024, 200);
    let before = view(&live, now);
    let bytes = std::fs::read(&path).unwrap();

    // the store itself, under its own name, another spelling of it, or a hard link to it
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::hard_link(&path, dir.join("link.sb")).unwrap();
    for same in [
        path.clone(),
        dir.join("sub/../live.sb"),
        dir.join("link.sb"),
    ] {
        let err = live.snapshot(&same).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("the store itself")),
            "{}: {err}",
            same.display()
        );
    }
    std::fs::remove_file(dir.join("link.sb")).unwrap();

    // another store that a writer has open
    let other = dir.join("other.sb");
    let held = Engine::create(
        &other,
        CreateOptions::new(64, EngineConfig::new(100, Rate::tokens_per_sec(10))),
    )
    .unwrap();
    let other_bytes = std::fs::read(&other).unwrap();
    assert!(matches!(live.snapshot(&other), Err(Error::Locked(p)) if p == other));
    assert_eq!(std::fs::read(&other).unwrap(), other_bytes);
    drop(held);

    // a directory, and a folder that does not exist
    for (dest, kind) in [
        (dir.join("sub"), std::io::ErrorKind::IsADirectory),
        (dir.join("missing/snap.sb"), std::io::ErrorKind::NotFound),
    ] {
        match live.snapshot(&dest) {
            Err(Error::Io { source, .. }) => assert_eq!(source.kind(), kind, "{}", dest.display()),
            other => panic!("{}: {other:?}", dest.display()),
        }
    }
    assert!(!dir.join("sub.snapshot-tmp").exists());

    // the store is unchanged and still works
    assert_eq!(view(&live, now), before);
    assert!(std::fs::read(&path).unwrap() == bytes);
    live.check().unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("snapshot-tmp"))
        .collect();
    assert!(names.is_empty(), "temporary files left: {names:?}");
}

#[test]
fn a_leftover_temporary_file_is_replaced() {
    let dir = TempDir::new("snap-leftover");
    let (mut live, now) = busy_store(&dir.join("live.sb"), 1024, 100);
    let dest = dir.join("snap.sb");
    // what a snapshot killed in the middle of its copy leaves
    std::fs::write(dir.join("snap.sb.snapshot-tmp"), b"half a copy").unwrap();
    live.snapshot(&dest).unwrap();
    assert!(!dir.join("snap.sb.snapshot-tmp").exists());
    assert_eq!(view(&Engine::open(&dest).unwrap(), now), view(&live, now));
}
