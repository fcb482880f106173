//! `Engine::snapshot`: a consistent copy of a store, written beside its destination and renamed
//! over it; `Engine::capture_snapshot`: the same copy taken into memory and written later, while
//! the engine goes on. (A snapshot whose process is killed at random instants, either kind:
//! `tests/durability.rs`.)

mod common;

use std::path::Path;

use common::TempDir;
use shadowbucket::model::ModelSpec;
use shadowbucket::model::weights::LstmModel;
use shadowbucket::{
    Contract, CreateOptions, Engine, EngineConfig, Error, Event, Keys, Predictor, Rate,
    Reservation, SnapshotCapture,
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

/// A snapshot of `live` to `dest` and a write of `capture` there, which must end alike; the
/// snapshot's result.
fn both_ways(live: &mut Engine, capture: &SnapshotCapture, dest: &Path) -> Result<(), Error> {
    let direct = live.snapshot(dest).map(|_| ());
    let captured = capture.write(dest).map(|_| ());
    assert_eq!(
        format!("{direct:?}"),
        format!("{captured:?}"),
        "{}",
        dest.display()
    );
    direct
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
fn a_capture_is_the_store_when_captured_whatever_follows() {
    let dir = TempDir::new("snap-capture");
    let (mut live, now) = busy_store(&dir.join("live.sb"), 4096, 500);
    let at_capture = view(&live, now);
    let direct = live.snapshot(dir.join("direct.sb")).unwrap();
    let capture = live.capture_snapshot().unwrap();
    assert_eq!(capture.bytes(), direct.bytes);
    assert_eq!(capture.held(), direct.written);
    assert_eq!(capture.last_committed(), direct.last_committed);

    // the engine goes on (batches, an event, a tick), then the capture is written, twice
    let mut later = now;
    for b in 0..3u64 {
        later += 300_000_000;
        let ids: Vec<u64> = (0..2000).map(|i| 100 + (i * 11 + b) % 500).collect();
        live.allocate_batch(Keys::Ids(&ids), &vec![3; 2000], later)
            .unwrap();
    }
    live.set_signal("news", 0.75).unwrap();
    later += 1_000_000_000;
    live.tick(later).unwrap();
    assert_ne!(view(&live, now), at_capture, "the engine did not change");
    let mut seen = Vec::new();
    let snap = capture
        .write_with(dir.join("capture.sb"), |done, total| {
            seen.push((done, total))
        })
        .unwrap();
    assert_eq!(
        (snap.bytes, snap.written, snap.last_committed),
        (direct.bytes, direct.written, direct.last_committed)
    );
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(*seen.last().unwrap(), (snap.bytes, snap.bytes));
    // byte for byte the snapshot taken at the capture's instant, events file included
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    assert!(
        read("capture.sb") == read("direct.sb"),
        "the store files differ"
    );
    assert_eq!(read("capture.sb.events"), read("direct.sb.events"));
    assert!(!dir.join("capture.sb.snapshot-tmp").exists());

    // written again after the engine is gone, from another thread: the same copy
    drop(live);
    let again = std::thread::spawn(move || capture.write(dir.join("again.sb")).map(|s| (s, dir)))
        .join()
        .unwrap();
    let (snap2, dir) = again.unwrap();
    assert_eq!(snap2.written, direct.written);
    let copy = Engine::open(&snap2.path).unwrap();
    assert_eq!(copy.recovered(), None);
    copy.check().unwrap();
    assert_eq!(view(&copy, now), at_capture);
    assert!(
        std::fs::read(dir.join("again.sb")).unwrap()
            == std::fs::read(dir.join("direct.sb")).unwrap()
    );
}

#[test]
fn a_capture_taken_again_follows_the_store_and_a_failed_one_changes_nothing() {
    let dir = TempDir::new("snap-recapture");
    let path = dir.join("live.sb");
    let (mut live, mut now) = busy_store(&path, 2048, 300);
    let mut capture = live.capture_snapshot().unwrap();
    let first = capture.last_committed();
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    for round in 0..3 {
        // the engine goes on, then the same capture is taken again and written
        now += 500_000_000;
        let ids: Vec<u64> = (0..1500).map(|i| 100 + (i * 7 + round) % 300).collect();
        live.allocate_batch(Keys::Ids(&ids), &vec![2; 1500], now)
            .unwrap();
        if round == 1 {
            live.grow(4096).unwrap(); // a longer file: the capture gets new memory
        }
        live.capture_snapshot_into(&mut capture).unwrap();
        assert_eq!(capture.last_committed(), live.stats().last_committed);
        assert!(capture.last_committed() > first);
        capture.write(dir.join("captured.sb")).unwrap();
        live.snapshot(dir.join("direct.sb")).unwrap();
        assert!(
            read("captured.sb") == read("direct.sb"),
            "round {round}: the capture is not the store"
        );
        assert_eq!(read("captured.sb.events"), read("direct.sb.events"));
    }
    // a capture through a read-only engine that fails (a writer has the store) leaves the
    // capture as it was
    let at = capture.last_committed();
    let mut ro = Engine::open_read_only(&path).unwrap();
    assert!(matches!(
        ro.capture_snapshot_into(&mut capture),
        Err(Error::Locked(_))
    ));
    assert_eq!(capture.last_committed(), at);
    capture.write(dir.join("kept.sb")).unwrap();
    assert!(read("kept.sb") == read("direct.sb"));
}

#[test]
fn a_capture_of_a_mostly_empty_store_holds_only_what_is_used() {
    let dir = TempDir::new("snap-capture-holes");
    let (mut live, _) = busy_store(&dir.join("live.sb"), 200_000, 50);
    let capture = live.capture_snapshot().unwrap();
    assert!(
        capture.held() < capture.bytes() / 2,
        "{} of {} bytes held for a store that is mostly empty",
        capture.held(),
        capture.bytes()
    );
    let snap = capture.write(dir.join("snap.sb")).unwrap();
    assert_eq!(snap.written, capture.held());
    assert_eq!(snap.bytes, std::fs::metadata(&snap.path).unwrap().len());
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&snap.path).unwrap().blocks() * 512;
        assert!(blocks < snap.bytes / 2, "the snapshot is not sparse");
    }
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
    let err = ro.capture_snapshot().unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("open it again")));
    let mut fresh = Engine::open_read_only(&path).unwrap();
    let grown = std::fs::metadata(&path).unwrap().len();
    assert_eq!(fresh.snapshot(dir.join("fresh.sb")).unwrap().bytes, grown);

    // a capture through a read-only engine holds the lock only while it copies into memory: a
    // writer may open the store and change it before the capture is written
    let at_capture = view(&fresh, now);
    let mut writer = Engine::open(&path).unwrap();
    assert!(matches!(fresh.capture_snapshot(), Err(Error::Locked(p)) if p == path));
    drop(writer);
    let capture = fresh.capture_snapshot().unwrap();
    writer = Engine::open(&path).unwrap();
    writer.set_signal("after", 1.0).unwrap();
    writer.remove_customer(150, now).unwrap();
    let snap = capture.write(dir.join("captured.sb")).unwrap();
    let copy = Engine::open(&snap.path).unwrap();
    assert_eq!(view(&copy, now), at_capture);
    assert!(copy.slot_of(150).is_some() && writer.slot_of(150).is_none());
}

#[test]
fn bad_destinations_are_refused_and_change_nothing() {
    let dir = TempDir::new("snap-bad");
    let path = dir.join("live.sb");
    let (mut live, now) = busy_store(&path, 1024, 200);
    let before = view(&live, now);
    let bytes = std::fs::read(&path).unwrap();
    // every destination below is refused by a snapshot and by a capture's write alike
    let capture = live.capture_snapshot().unwrap();
    let both = |live: &mut Engine, dest: &Path| both_ways(live, &capture, dest);

    // the store itself, under its own name, another spelling of it, or a hard link to it
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::hard_link(&path, dir.join("link.sb")).unwrap();
    for same in [
        path.clone(),
        dir.join("sub/../live.sb"),
        dir.join("link.sb"),
    ] {
        let err = both(&mut live, &same).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("the store itself")),
            "{}: {err}",
            same.display()
        );
    }
    std::fs::remove_file(dir.join("link.sb")).unwrap();

    // another store that a writer has open
    let other = dir.join("other.sb");
    let (held, other_bytes) = held_store(&other);
    assert!(matches!(both(&mut live, &other), Err(Error::Locked(p)) if p == other));
    assert_eq!(std::fs::read(&other).unwrap(), other_bytes);
    drop(held);

    // a path that names no file (its temporary and events files would land beside it)
    for nothing in [Path::new(""), &dir.join("sub/..")] {
        let err = both(&mut live, nothing).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("names no file")),
            "{}: {err}",
            nothing.display()
        );
    }
    assert!(!Path::new(".events").exists() && !Path::new(".snapshot-tmp").exists());

    // a directory, and a folder that does not exist
    for (dest, kind) in [
        (dir.join("sub"), std::io::ErrorKind::IsADirectory),
        (dir.join("missing/snap.sb"), std::io::ErrorKind::NotFound),
    ] {
        match both(&mut live, &dest) {
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

/// A capture outlives the file it was copied from (here its store grew: a new file took the old
/// one's place, and the old one is gone, so the system may give its inode number to the next
/// new file, on ext4 at once): the capture is written to one destination again and again, as
/// snapshots are on a schedule, and that destination is never taken for "the store itself".
#[test]
fn a_capture_whose_file_is_gone_is_written_to_one_place_again() {
    let dir = TempDir::new("snap-capture-gone");
    let path = dir.join("live.sb");
    let (mut live, _) = busy_store(&path, 1024, 100);
    let capture = live.capture_snapshot().unwrap();
    live.grow(2048).unwrap(); // the captured file is removed
    let dest = dir.join("snap.sb");
    for round in 0..3 {
        let snap = capture
            .write(&dest)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(snap.last_committed, capture.last_committed());
    }
    // a snapshot of the grown store there, then the capture again
    live.snapshot(&dest).unwrap();
    capture.write(&dest).unwrap();
    let copy = Engine::open(&dest).unwrap();
    assert_eq!(copy.stats().last_committed, capture.last_committed());
    assert_eq!(copy.capacity(), 1024);
    // the grown store is still refused while its writer has it
    assert!(matches!(capture.write(&path), Err(Error::Locked(p)) if p == path));
}

/// Through a read-only engine, a capture's `last_committed` is that of the copy it holds, even
/// when a writer opens the store and commits the moment the capture lets go of its lock (here a
/// thread tries to all the while; the engine has many events, so that rendering them after the
/// copy takes a while).
#[test]
fn a_read_only_capture_says_the_transaction_its_copy_holds() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = TempDir::new("snap-ro-race");
    let path = dir.join("live.sb");
    let (live, now) = busy_store(&path, 1024, 100);
    drop(live);
    let events = dir.join("live.sb.events");
    let mut text = format!("shadowbucket-events 1\nnext {}\n", 200_000);
    for id in 1..=200_000u64 {
        text += &format!("event {id} - 1 1.5 {now} {}\n", now + 1_000_000_000_000);
    }
    std::fs::write(&events, text).unwrap();
    let mut ro = Engine::open_read_only(&path).unwrap();
    std::fs::remove_file(&events).unwrap(); // the writer's opens stay quick
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut w) = Engine::open(&path) {
                    w.allocate(100, 1, now).unwrap();
                }
            }
        });
        // (the writer stops however this thread ends, a failed assertion included)
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        let mut taken = 0;
        for _ in 0..2000 {
            let Ok(capture) = ro.capture_snapshot() else {
                continue;
            };
            let snap = capture.write(dir.join("snap.sb")).unwrap();
            let held = Engine::open_read_only(&snap.path)
                .unwrap()
                .stats()
                .last_committed;
            assert_eq!(capture.last_committed(), held, "capture {taken}");
            assert_eq!(snap.last_committed, held, "capture {taken}");
            taken += 1;
            if taken == 5 {
                break;
            }
        }
        assert!(taken > 0, "no capture got the store");
    });
}

/// Two writes to one destination at once (a capture's writes may run on any threads, together:
/// docs/engine.md, Concurrency), here the second starting while the first is in the middle of its
/// copy: each write that returns leaves the destination a whole snapshot, and both succeed.
#[test]
fn writes_to_one_destination_at_once_leave_it_whole() {
    use std::sync::mpsc::channel;
    use std::time::Duration;
    let dir = TempDir::new("snap-capture-together");
    let (mut live, _) = busy_store(&dir.join("live.sb"), 200_000, 50);
    let capture = live.capture_snapshot().unwrap();
    let dest = dir.join("snap.sb");
    let whole = {
        let s = capture.write(dir.join("whole.sb")).unwrap();
        std::fs::read(s.path).unwrap()
    };
    let (a_paused, a_paused_rx) = channel();
    let (go_a, go_a_rx) = channel::<()>();
    let (b_paused, b_paused_rx) = channel();
    let (go_b, go_b_rx) = channel::<()>();
    let (capture, dest) = (&capture, &dest);
    std::thread::scope(|s| {
        let a = s.spawn(move || {
            let mut first = true;
            capture.write_with(dest, |_, _| {
                if std::mem::take(&mut first) {
                    a_paused.send(()).unwrap();
                    let _ = go_a_rx.recv();
                }
            })
        });
        a_paused_rx.recv().unwrap();
        let b = s.spawn(move || {
            let mut first = true;
            capture.write_with(dest, |_, _| {
                if std::mem::take(&mut first) {
                    let _ = b_paused.send(());
                    let _ = go_b_rx.recv();
                }
            })
        });
        // the second write is in the middle of its copy (or waits for the first to end)
        let _ = b_paused_rx.recv_timeout(Duration::from_secs(2));
        go_a.send(()).unwrap();
        let first = a.join().unwrap();
        let after_first = std::fs::read(dest).unwrap();
        go_b.send(()).unwrap();
        let second = b.join().unwrap();
        first.expect("the first write");
        assert!(
            after_first == whole,
            "the first write left {} bytes at the destination, not the snapshot's {}",
            after_first.len(),
            whole.len()
        );
        second.expect("the second write");
        assert!(std::fs::read(dest).unwrap() == whole);
    });
    assert!(!dir.join("snap.sb.snapshot-tmp").exists());
}

/// The store's own events file is no destination (a copy of the store written there leaves the
/// store unable to open: its events file is not one), nor is a path whose events file would be
/// a store a writer has open; both ways refuse them alike and change nothing.
#[test]
fn the_events_files_of_stores_are_refused() {
    let dir = TempDir::new("snap-bad-events");
    let path = dir.join("live.sb");
    let (mut live, now) = busy_store(&path, 1024, 100);
    let before = view(&live, now);
    let capture = live.capture_snapshot().unwrap();
    let events = dir.join("live.sb.events");
    let text = std::fs::read(&events).unwrap();
    for dest in [events.clone(), dir.join("sub/../live.sb.events")] {
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let direct = both_ways(&mut live, &capture, &dest);
        assert!(
            matches!(&direct, Err(Error::InvalidArgument(m)) if m.contains("events file")),
            "{}: {direct:?}",
            dest.display()
        );
    }
    assert_eq!(std::fs::read(&events).unwrap(), text);

    // a store named like another path's events file, that a writer has open
    let other = dir.join("other.events");
    let (held, other_bytes) = held_store(&other);
    let dest = dir.join("other");
    let direct = both_ways(&mut live, &capture, &dest);
    assert!(
        matches!(&direct, Err(Error::Locked(p)) if p == &other),
        "{direct:?}"
    );
    assert!(!dest.exists());
    assert_eq!(std::fs::read(&other).unwrap(), other_bytes);
    drop((held, live));
    assert_eq!(view(&Engine::open(&path).unwrap(), now), before);
}

/// A small store at `path` that a writer (the returned engine) holds open, and its bytes.
fn held_store(path: &Path) -> (Engine, Vec<u8>) {
    let held = Engine::create(
        path,
        CreateOptions::new(64, EngineConfig::new(100, Rate::tokens_per_sec(10))),
    )
    .unwrap();
    let bytes = std::fs::read(path).unwrap();
    (held, bytes)
}
