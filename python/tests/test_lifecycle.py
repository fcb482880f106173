"""The engine's life cycle: create, use, close, reopen; customers; queries; errors."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import shadowbucket as sb
from conftest import SEC, make_engine


def test_create_use_close_reopen(store: Path) -> None:
    with sb.Engine.create(store, capacity=16, pool_burst=10_000, pool_rate=1_000) as eng:
        assert not eng.closed
        assert eng.path == store
        assert eng.capacity == 16
        assert len(eng) == 0
        slot = eng.add_customer(42, burst=500, rate=10)
        assert eng.slot_of(42) == slot
        assert eng.slot_of(43) is None
        assert len(eng) == 1
        outcome, retry = eng.allocate(42, 100, SEC)
        assert outcome is sb.Outcome.GRANTED_POOL and outcome.granted
        assert retry == 0
    assert eng.closed
    eng.close()  # closing twice is a no-op
    with pytest.raises(sb.ClosedError):
        eng.stats()
    with pytest.raises(ValueError):  # ClosedError is a ValueError, like a closed file's
        len(eng)

    with sb.Engine.open(store) as eng:
        assert eng.recovered is None
        c = eng.customer(42)
        assert c["burst"] == 500 and c["rate"] == 10.0 and c["outstanding"] == 100
        assert c["std_tokens"] == 400.0
        assert eng.stats()["pool_grants"] == 1


def test_config_round_trip(store: Path) -> None:
    with sb.Engine.create(
        store,
        capacity=4,
        pool_burst=1_000,
        pool_rate=250.5,
        alpha=0.6,
        interval_ns=10 * SEC,
        contention_high=0.4,
        contention_low=0.1,
        contention_ticks=2,
        contention_min_requests=5,
    ) as eng:
        assert eng.config() == {
            "pool_burst": 1_000,
            "pool_rate": 250.5,
            "alpha": 0.6,
            "interval_ns": 10 * SEC,
            "contention_high": 0.4,
            "contention_low": 0.1,
            "contention_ticks": 2,
            "contention_min_requests": 5,
        }


def test_bad_config_is_value_error(store: Path) -> None:
    with pytest.raises(sb.InvalidArgumentError):
        sb.Engine.create(store, capacity=4, pool_burst=0, pool_rate=1)
    with pytest.raises(ValueError, match="alpha"):
        sb.Engine.create(store, capacity=4, pool_burst=10, pool_rate=1, alpha=1.5)
    with pytest.raises(ValueError, match="pool_rate"):
        sb.Engine.create(store, capacity=4, pool_burst=10, pool_rate=float("nan"))
    assert not store.exists()


def test_customers_add_update_remove(engine: sb.Engine) -> None:
    with pytest.raises(sb.DuplicateCustomerError):
        engine.add_customer(1, burst=10, rate=1)
    with pytest.raises(sb.UnknownCustomerError):
        engine.update_contract(99, burst=10, rate=1)
    with pytest.raises(LookupError):
        engine.customer(99)
    with pytest.raises(sb.InvalidArgumentError, match="burst"):
        engine.add_customer(100, burst=0, rate=1)
    with pytest.raises(ValueError, match="rate"):
        engine.add_customer(100, burst=10, rate=-1)
    engine.update_contract(1, burst=50, rate=5, weight=3, now_ns=SEC)
    c = engine.customer(1)
    assert (c["burst"], c["rate"], c["weight"], c["std_tokens"]) == (50, 5.0, 3, 50.0)
    engine.remove_customer(2, now_ns=SEC)
    assert 2 not in engine.customer_ids().tolist()
    assert engine.customer_ids().tolist() == [1, 3, 4, 5, 6, 7, 8]
    with pytest.raises(sb.UnknownCustomerError):
        engine.remove_customer(2)
    # a whole batch is refused when one id is bad, and nothing is added
    with pytest.raises(sb.DuplicateCustomerError):
        engine.add_customers(
            np.array([200, 3], np.uint64), np.array([10, 10], np.uint64), np.array([1.0, 1.0])
        )
    assert engine.slot_of(200) is None


def test_store_full_and_grow(store: Path) -> None:
    with sb.Engine.create(store, capacity=2, pool_burst=100, pool_rate=10) as eng:
        eng.add_customer(1, burst=10, rate=1)
        eng.add_customer(2, burst=10, rate=1)
        with pytest.raises(sb.StoreFullError, match="grow"):
            eng.add_customer(3, burst=10, rate=1)
        with pytest.raises(sb.InvalidArgumentError):
            eng.grow(1)
        eng.grow(8)
        assert eng.capacity == 8
        eng.add_customer(3, burst=10, rate=1)
        assert eng.customer_ids().tolist() == [1, 2, 3]


def test_settle_refunds_and_debt(engine: sb.Engine) -> None:
    outcome, _ = engine.allocate(1, 100, SEC)
    assert outcome == sb.Outcome.GRANTED_POOL
    engine.settle(1, 100, 30, outcome, SEC)
    s = engine.stats()
    assert s["tokens_refunded"] == 70 and s["settles"] == 1
    assert engine.customer(1)["std_tokens"] == 970.0
    with pytest.raises(sb.InvalidArgumentError, match="outstanding"):
        engine.settle(1, 100, 100, sb.Outcome.GRANTED_POOL, SEC)
    engine.allocate(1, 10, SEC)
    engine.settle(1, 10, 25, sb.Outcome.GRANTED_POOL, SEC)
    assert engine.stats()["tokens_debt"] == 15
    with pytest.raises(ValueError, match="GRANTED_SHADOW"):
        engine.settle(1, 10, 10, sb.Outcome.DENIED_POOL_EXHAUSTED, SEC)


def test_tick_with_reservations_then_shadow_grants(engine: sb.Engine) -> None:
    slot = engine.slot_of(1)
    assert slot is not None
    rep = engine.tick_with(
        0, np.array([slot], np.uint32), np.array([50.0]), np.array([300], np.uint64)
    )
    assert rep["customers"] == 8 and rep["reserved_capacity"] == 300 and not rep["cut_back"]
    assert rep["reserved_rate_micros"] == 50_000_000
    outcome, _ = engine.allocate(1, 40, SEC)
    assert outcome == sb.Outcome.GRANTED_SHADOW
    c = engine.customer(1)
    assert c["reserved_rate"] == 50.0 and c["shadow_capacity"] == 300
    with pytest.raises(sb.InvalidArgumentError, match="listed twice"):
        engine.tick_with(
            SEC, np.array([slot, slot], np.uint32), np.ones(2), np.ones(2, np.uint64)
        )


def test_stats_and_ledger_are_dicts(engine: sb.Engine) -> None:
    engine.allocate_batch(np.arange(1, 9, dtype=np.uint64), np.full(8, 10, np.uint64), SEC)
    s = engine.stats()
    assert isinstance(s, dict)
    assert s["requests"] == 8 and s["pool_grants"] == 8 and s["tokens_pool"] == 80
    assert s["customers"] == 8 and s["capacity"] == 64 and s["batches"] == 1
    led = engine.ledger(2 * SEC)
    assert led["balanced"]
    assert led["supplied"] == led["in_pool"] + led["in_shadows"] + led["granted_net"] + led[
        "lost_at_cap"
    ]
    engine.check()
    engine.flush()


def test_read_only_and_lock(store: Path) -> None:
    eng = make_engine(store)
    with pytest.raises(sb.LockedError):
        sb.Engine.open(store)
    with sb.Engine.open(store, read_only=True) as ro:
        assert len(ro) == 8
        assert ro.customer(3)["burst"] == 1_000
        with pytest.raises(sb.ReadOnlyError):
            ro.allocate(3, 1, SEC)
        with pytest.raises(sb.ReadOnlyError):
            ro.add_customer(100, burst=1, rate=1)
    eng.close()
    # the lock went with close()
    sb.Engine.open(store).close()


def test_snapshot(store: Path, tmp_path: Path) -> None:
    eng = make_engine(store)
    ids = np.arange(1, 9, dtype=np.uint64)
    eng.allocate_batch(ids, np.full(8, 10, dtype=np.uint64), SEC)
    snap_path = tmp_path / "snap.sb"
    info = eng.snapshot(snap_path)
    assert info["path"] == snap_path
    assert info["last_committed"] == eng.stats()["last_committed"]
    assert 0 < info["written"] <= info["bytes"] == snap_path.stat().st_size
    # the copy is a store of its own with the same state
    with sb.Engine.open(snap_path) as copy:
        assert copy.recovered is None
        copy.check()
        assert copy.stats() == eng.stats()
        a: dict[str, object] = dict(copy.customer(3))
        b: dict[str, object] = dict(eng.customer(3))
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k
        # a writer holds the copy: no snapshot goes over it
        with pytest.raises(sb.LockedError):
            eng.snapshot(snap_path)
    # never over the store itself; a folder that does not exist
    with pytest.raises(sb.InvalidArgumentError, match="the store itself"):
        eng.snapshot(store)
    with pytest.raises(sb.NotFoundError):
        eng.snapshot(tmp_path / "missing" / "snap.sb")
    # through a read-only engine: refused while a writer has the store, fine once it is closed
    with sb.Engine.open(store, read_only=True) as ro:
        with pytest.raises(sb.LockedError):
            ro.snapshot(tmp_path / "ro.sb")
        eng.close()
        assert ro.snapshot(tmp_path / "ro.sb")["last_committed"] == info["last_committed"]
    with sb.Engine.open(tmp_path / "ro.sb", read_only=True) as copy:
        assert copy.customer(3)["outstanding"] == 10


def test_capture_snapshot(store: Path, tmp_path: Path) -> None:
    eng = make_engine(store)
    ids = np.arange(1, 9, dtype=np.uint64)
    eng.allocate_batch(ids, np.full(8, 10, dtype=np.uint64), SEC)
    at_capture = eng.stats()
    cap = eng.capture_snapshot()
    assert isinstance(cap, sb.SnapshotCapture)
    assert cap.last_committed == at_capture["last_committed"]
    assert 0 < cap.held <= cap.bytes
    assert f"last_committed={cap.last_committed}" in repr(cap)
    # the engine goes on; the capture is the store as it was, written from another thread
    eng.allocate_batch(ids, np.full(8, 5, dtype=np.uint64), 2 * SEC)
    assert eng.stats()["requests"] == at_capture["requests"] + 8
    out: dict[str, object] = {}

    def write() -> None:
        out["info"] = cap.write(tmp_path / "cap.sb")

    t = threading.Thread(target=write)
    t.start()
    t.join()
    info = out["info"]
    assert isinstance(info, dict)
    assert info["last_committed"] == cap.last_committed and info["written"] == cap.held
    with sb.Engine.open(tmp_path / "cap.sb") as copy:
        assert copy.recovered is None
        copy.check()
        assert copy.stats() == at_capture
        # a writer holds the copy: no capture goes over it
        with pytest.raises(sb.LockedError):
            cap.write(tmp_path / "cap.sb")
    with pytest.raises(sb.InvalidArgumentError, match="the store itself"):
        cap.write(store)
    with pytest.raises(sb.NotFoundError):
        cap.write(tmp_path / "missing" / "snap.sb")
    # captured again into the same capture: the store as it is now
    now = eng.stats()
    assert eng.capture_snapshot(into=cap) is cap
    assert cap.last_committed == now["last_committed"] > at_capture["last_committed"]
    # written again after the engine is closed
    eng.close()
    assert cap.write(tmp_path / "again.sb")["last_committed"] == now["last_committed"]
    with sb.Engine.open(tmp_path / "again.sb", read_only=True) as copy:
        assert copy.stats()["requests"] == now["requests"]
    with pytest.raises(sb.ClosedError):
        eng.capture_snapshot()
    with pytest.raises(TypeError):
        sb.Engine.open(tmp_path / "again.sb").capture_snapshot(into="not a capture")  # type: ignore[arg-type]


def test_capture_into_a_capture_being_written_does_not_hold_the_engine(
    store: Path, tmp_path: Path
) -> None:
    # One thread writes a capture while another captures into it again (a scheduled snapshot
    # that did not wait for the last write). The recapture must wait for the write without
    # holding the engine: other threads' calls go on meanwhile.
    eng = make_engine(store)
    cap = eng.capture_snapshot()
    slow = tmp_path / "slow.sb"
    os.mkfifo(slow)  # cap.write(slow) waits in open() until something opens the other end
    done: dict[str, object] = {}

    def run(name: str, f: Callable[[], object]) -> threading.Thread:
        def body() -> None:
            try:
                done[name] = f()
            except Exception as e:
                done[name] = e

        t = threading.Thread(target=body, daemon=True)
        t.start()
        return t

    writer = run("write", lambda: cap.write(slow))
    time.sleep(0.3)  # the writer now holds the capture, waiting on the FIFO
    recapture = run("recapture", lambda: eng.capture_snapshot(into=cap))
    time.sleep(0.3)  # the recapture now waits for the capture
    query = run("stats", eng.stats)
    query.join(timeout=5)
    engine_held = query.is_alive()
    # let the writer go on: open the FIFO's other end (it has a reader once the writer waits)
    deadline = time.monotonic() + 10
    while True:
        try:
            os.close(os.open(slow, os.O_WRONLY | os.O_NONBLOCK))
            break
        except OSError:
            assert time.monotonic() < deadline, "the writer never opened the FIFO"
            time.sleep(0.01)
    for t in (writer, recapture, query):
        t.join(timeout=30)
        assert not t.is_alive()
    assert not engine_held, "the engine was held while the recapture waited for a capture's write"
    assert done["recapture"] is cap
    assert isinstance(done["stats"], dict)
    eng.close()


def test_exception_hierarchy() -> None:
    for cls in (
        sb.InvalidArgumentError,
        sb.ArgumentTypeError,
        sb.UnknownCustomerError,
        sb.DuplicateCustomerError,
        sb.StoreFullError,
        sb.LockedError,
        sb.ReadOnlyError,
        sb.BadFileError,
        sb.StorageError,
        sb.NotFoundError,
        sb.AccessDeniedError,
        sb.AlreadyExistsError,
        sb.ClosedError,
        sb.InternalError,
    ):
        assert issubclass(cls, sb.Error)
    assert issubclass(sb.InvalidArgumentError, ValueError)
    assert issubclass(sb.ArgumentTypeError, TypeError)
    assert issubclass(sb.NotFoundError, FileNotFoundError)
    assert issubclass(sb.AccessDeniedError, PermissionError)
    assert issubclass(sb.AlreadyExistsError, FileExistsError)
    assert issubclass(sb.StorageError, OSError)
