"""Threads calling one engine at once: changes are serialized, queries run alongside, and the
result is that of some order of the calls."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

import shadowbucket as sb
from conftest import SEC, make_engine

THREADS = 4
ROUNDS = 50


def test_concurrent_batches_and_queries(tmp_path: Path) -> None:
    # a pool far larger than all requests: every request is granted whatever the order, so the
    # end state is known exactly
    eng = make_engine(tmp_path / "t.sb", customers=THREADS * 4, pool_burst=10**9, pool_rate=10**6)
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS + 1)

    def writer(k: int) -> None:
        try:
            start.wait()
            ids = np.arange(1 + 4 * k, 5 + 4 * k, dtype=np.uint64)  # this thread's customers
            for r in range(ROUNDS):
                o, _ = eng.allocate_batch(ids, np.full(4, 2, np.uint64), SEC + r)
                assert (o == sb.Outcome.GRANTED_POOL).all()
                eng.allocate(int(ids[0]), 1, SEC + r)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def reader() -> None:
        try:
            start.wait()
            for _ in range(ROUNDS):
                s = eng.stats()
                assert s["requests"] == s["pool_grants"]
                eng.customer(1)
                eng.resolve(np.arange(1, 17, dtype=np.uint64))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(THREADS - 1)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join()
    assert not errors, errors
    writers = THREADS - 1
    s = eng.stats()
    assert s["requests"] == writers * ROUNDS * 5
    assert s["tokens_pool"] == writers * ROUNDS * (4 * 2 + 1)
    assert s["batches"] == writers * ROUNDS * 2
    for k in range(writers):
        first = eng.customer(1 + 4 * k)
        assert first["outstanding"] == ROUNDS * 3
        assert eng.customer(2 + 4 * k)["outstanding"] == ROUNDS * 2
    assert eng.ledger(2 * SEC)["balanced"]
    eng.check()
    eng.close()


def test_close_while_other_threads_call(tmp_path: Path) -> None:
    eng = make_engine(tmp_path / "c.sb")
    outcomes: list[str] = []
    go = threading.Barrier(3)

    def caller() -> None:
        go.wait()
        for _ in range(200):
            try:
                eng.allocate(1, 1, SEC)
                outcomes.append("ok")
            except sb.ClosedError:
                outcomes.append("closed")

    ts = [threading.Thread(target=caller) for _ in range(2)]
    for t in ts:
        t.start()
    go.wait()
    eng.close()
    for t in ts:
        t.join()
    # every call either ran on the open engine or saw it closed; none crashed
    assert len(outcomes) == 400
    assert outcomes[-1] == "closed" or "closed" not in outcomes
    with sb.Engine.open(tmp_path / "c.sb") as again:
        assert again.stats()["requests"] == outcomes.count("ok")
