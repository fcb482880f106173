"""Batch calls against single calls (semantics I5), and what the batch calls return."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import shadowbucket as sb
from conftest import SEC, make_engine


def _workload(seed: int, rounds: int, size: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for r in range(rounds):
        # ids 0..=9: 0 and 9 are unknown customers; tokens 0..=1,200 (0 is invalid, >1,000
        # exceeds the burst); the pool is small enough to run dry
        ids = rng.integers(0, 10, size=size).astype(np.uint64)
        tokens = rng.integers(0, 1_201, size=size).astype(np.uint64)
        tokens[rng.integers(0, size)] = 0
        out.append((ids, tokens, (r + 1) * SEC // 4))
    return out


def _state(eng: sb.Engine) -> list[object]:
    state: list[object] = []
    for i in eng.customer_ids().tolist():
        c = eng.customer(i)
        state.append({k: v for k, v in c.items() if k not in ("forecast", "scenarios")})
    s: dict[str, object] = dict(eng.stats())
    s.pop("batches")  # one per batch call, so it differs by design
    s.pop("last_committed")
    state.append(s)
    return state


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batch_equals_one_at_a_time(tmp_path: Path, seed: int) -> None:
    kw = dict(pool_burst=3_000, pool_rate=500)
    batch = make_engine(tmp_path / "batch.sb", **kw)
    single = make_engine(tmp_path / "single.sb", **kw)
    slot = batch.slot_of(3)
    assert slot is not None and single.slot_of(3) == slot
    for eng in (batch, single):
        eng.tick_with(0, np.array([slot], np.uint32), np.array([80.0]), np.array([400], np.uint64))
    seen = set()
    for ids, tokens, now in _workload(seed, rounds=12, size=40):
        outcomes, retry = batch.allocate_batch(ids, tokens, now)
        assert outcomes.dtype == np.uint8 and retry.dtype == np.uint64
        assert outcomes.shape == retry.shape == ids.shape
        for k in range(len(ids)):
            o, r = single.allocate(int(ids[k]), int(tokens[k]), now)
            assert (o, r) == (outcomes[k], retry[k]), f"request {k} at {now}"
            seen.add(o)
    assert _state(batch) == _state(single)
    # the workload reached every outcome, so the comparison covered them all
    assert seen == set(sb.Outcome)
    batch.close()
    single.close()


def test_slots_equal_ids(tmp_path: Path) -> None:
    a = make_engine(tmp_path / "a.sb")
    b = make_engine(tmp_path / "b.sb")
    for ids, tokens, now in _workload(7, rounds=5, size=50):
        slots = b.resolve(ids)
        assert slots.dtype == np.uint32
        unknown = (ids == 0) | (ids == 9)
        assert (slots[unknown] == sb.NO_SLOT).all() and (slots[~unknown] != sb.NO_SLOT).all()
        oa, ra = a.allocate_batch(ids, tokens, now)
        ob, rb = b.allocate_slots(slots, tokens, now)
        np.testing.assert_array_equal(oa, ob)
        np.testing.assert_array_equal(ra, rb)
    assert _state(a) == _state(b)


def test_inputs_are_not_copied_or_changed(engine: sb.Engine) -> None:
    ids = np.arange(1, 9, dtype=np.uint64)
    tokens = np.full(8, 5, np.uint64)
    ids.flags.writeable = False  # read-only arrays are fine: they are only read
    before = (ids.copy(), tokens.copy())
    outcomes, _ = engine.allocate_batch(ids, tokens, SEC)
    np.testing.assert_array_equal(ids, before[0])
    np.testing.assert_array_equal(tokens, before[1])
    assert (outcomes == sb.Outcome.GRANTED_POOL).all()
    # outputs are fresh arrays the caller owns
    assert outcomes.flags.owndata or outcomes.base is not None
    outcomes[:] = 0


def test_empty_batch(engine: sb.Engine) -> None:
    o, r = engine.allocate_batch(np.array([], np.uint64), np.array([], np.uint64), SEC)
    assert o.shape == (0,) and r.shape == (0,)


def test_a_view_with_unit_stride_is_borrowed(engine: sb.Engine) -> None:
    big = np.arange(0, 20, dtype=np.uint64)
    ids = big[1:9]  # contiguous slice of a larger array
    o, _ = engine.allocate_batch(ids, np.full(8, 1, np.uint64), SEC)
    assert (o == sb.Outcome.GRANTED_POOL).all()
