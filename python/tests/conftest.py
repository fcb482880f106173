"""Shared fixtures: a fresh store per test, in pytest's temporary directory."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import shadowbucket as sb

SEC = 1_000_000_000


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A path where a store may be created."""
    return tmp_path / "store.sb"


def make_engine(path: Path, customers: int = 8, **kw: object) -> sb.Engine:
    """An engine with customers 1..=customers, burst 1,000 and rate 100 tokens/s each."""
    opts: dict[str, object] = dict(capacity=64, pool_burst=20_000, pool_rate=2_000)
    opts.update(kw)
    eng = sb.Engine.create(path, **opts)  # type: ignore[arg-type]
    ids = np.arange(1, customers + 1, dtype=np.uint64)
    eng.add_customers(ids, np.full(customers, 1_000, np.uint64), np.full(customers, 100.0))
    return eng


@pytest.fixture
def engine(store: Path) -> Iterator[sb.Engine]:
    """An open engine with eight customers (ids 1..=8)."""
    eng = make_engine(store)
    yield eng
    eng.close()
