"""Wrong dtypes, shapes, lengths and layouts are refused with clear errors; nothing changes."""

from __future__ import annotations

import numpy as np
import pytest

import shadowbucket as sb
from conftest import SEC

IDS = np.arange(1, 5, dtype=np.uint64)
TOKENS = np.full(4, 10, np.uint64)


def _unchanged(engine: sb.Engine) -> None:
    assert engine.stats()["requests"] == 0


@pytest.mark.parametrize(
    "ids",
    [
        np.arange(1, 5),  # int64, numpy's default
        np.arange(1, 5, dtype=np.uint32),
        np.arange(1, 5, dtype=np.float64),
        np.arange(1, 5, dtype=np.uint64).astype(">u8"),  # byte-swapped
    ],
)
def test_wrong_dtype_is_type_error(engine: sb.Engine, ids: np.ndarray) -> None:
    with pytest.raises(TypeError, match=r"ids must have dtype uint64.*np\.ascontiguousarray") as ei:
        engine.allocate_batch(ids, TOKENS, SEC)
    assert isinstance(ei.value, sb.ArgumentTypeError)
    _unchanged(engine)


def test_not_an_array_is_type_error(engine: sb.Engine) -> None:
    with pytest.raises(sb.ArgumentTypeError, match="numpy array of uint64, got list"):
        engine.allocate_batch([1, 2, 3, 4], TOKENS, SEC)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tokens"):
        engine.allocate_batch(IDS, (10, 10, 10, 10), SEC)  # type: ignore[arg-type]
    _unchanged(engine)


def test_wrong_shape_is_value_error(engine: sb.Engine) -> None:
    with pytest.raises(ValueError, match=r"ids must be a 1-D array, got shape \[2, 2\]"):
        engine.allocate_batch(IDS.reshape(2, 2), TOKENS, SEC)
    with pytest.raises(ValueError, match="1-D"):
        engine.allocate_batch(np.array(3, np.uint64), TOKENS, SEC)
    with pytest.raises(TypeError, match="got numpy.uint64"):
        engine.allocate_batch(np.uint64(3), TOKENS, SEC)  # type: ignore[arg-type]
    _unchanged(engine)


def test_length_mismatch_is_value_error(engine: sb.Engine) -> None:
    with pytest.raises(sb.InvalidArgumentError, match="tokens has 3 elements but ids has 4"):
        engine.allocate_batch(IDS, TOKENS[:3], SEC)
    with pytest.raises(ValueError, match="rates"):
        engine.tick_with(SEC, np.array([0], np.uint32), np.ones(2), np.ones(1, np.uint64))
    with pytest.raises(ValueError, match="weights"):
        engine.add_customers(
            np.array([50], np.uint64),
            np.array([10], np.uint64),
            np.array([1.0]),
            np.array([1, 1], np.uint16),
        )
    _unchanged(engine)


def test_non_contiguous_is_value_error(engine: sb.Engine) -> None:
    strided = np.arange(1, 9, dtype=np.uint64)[::2]
    with pytest.raises(sb.InvalidArgumentError, match="C-contiguous.*ascontiguousarray"):
        engine.allocate_batch(strided, TOKENS, SEC)
    # the documented remedy works
    o, _ = engine.allocate_batch(np.ascontiguousarray(strided), TOKENS, SEC)
    assert (o == sb.Outcome.GRANTED_POOL).all()


def test_bad_scalars(engine: sb.Engine) -> None:
    with pytest.raises(OverflowError):
        engine.allocate(-1, 1, SEC)
    with pytest.raises(TypeError):
        engine.allocate(1, "ten", SEC)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rates"):
        engine.add_customers(
            np.array([50], np.uint64), np.array([10], np.uint64), np.array([np.inf])
        )
    # zero tokens and unknown customers are outcomes, not errors
    assert engine.allocate(1, 0, SEC)[0] is sb.Outcome.INVALID_INPUT
    assert engine.allocate(77, 1, SEC)[0] is sb.Outcome.UNKNOWN_CUSTOMER
