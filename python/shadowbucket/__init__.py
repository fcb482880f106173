"""shadowbucket: forecast-driven shadow token buckets, from Python.

The engine is Rust (the private module ``shadowbucket._native``); this package re-exports it with
the exception classes (:mod:`shadowbucket._errors`), the :class:`Outcome` enum, and helpers that
turn numpy arrays, pandas DataFrames or CSV paths into a :class:`History`.

>>> import numpy as np, shadowbucket as sb
>>> with sb.Engine.create(path, capacity=1024, pool_burst=1_000_000, pool_rate=100_000) as eng:
...     eng.add_customer(42, burst=6_000, rate=100)
...     outcomes, retry = eng.allocate_batch(np.array([42], np.uint64), np.array([500], np.uint64), 1)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence, Union

import numpy as np

from . import _native
from ._errors import (
    AccessDeniedError,
    AlreadyExistsError,
    ArgumentTypeError,
    BadFileError,
    ClosedError,
    DuplicateCustomerError,
    Error,
    InternalError,
    InvalidArgumentError,
    LockedError,
    NotFoundError,
    ReadOnlyError,
    StorageError,
    StoreFullError,
    UnknownCustomerError,
)
from ._native import NO_SLOT, Engine, History, Model, __version__
from ._outcome import Outcome

if TYPE_CHECKING:
    from ._native import EvaluationReport

HistoryLike = Union[History, str, "os.PathLike[str]", "np.ndarray[Any, Any]", Any]
"""What :func:`history` accepts: a History, a CSV path, a 2-D numpy array or a pandas DataFrame."""


def _from_dataframe(df: Any, window_s: int | None, start_s: int | None) -> History:
    cols = set(df.columns)
    if {"customer", "window_start_s"} <= cols:
        # long format, one row per customer and window (the ServeGen columns)
        if "tokens" in cols:
            used = df["tokens"]
        elif {"input_tokens", "output_tokens"} <= cols:
            used = df["input_tokens"] + df["output_tokens"]
        else:
            raise InvalidArgumentError(
                "a long-format DataFrame needs a 'tokens' column or 'input_tokens' and "
                "'output_tokens' columns"
            )
        long = df.assign(_used=used)
        if long.duplicated(["customer", "window_start_s"]).any():
            raise InvalidArgumentError("the DataFrame has a customer with the same window twice")
        wide = long.pivot(index="customer", columns="window_start_s", values="_used")
        if wide.isna().to_numpy().any():
            raise InvalidArgumentError(
                "ragged DataFrame: some customers lack windows that others have"
            )
        starts = np.asarray(wide.columns, dtype=np.int64)
        if len(starts) < 2 and window_s is None:
            raise InvalidArgumentError("need two distinct window starts, or window_s")
        gaps = np.diff(starts)
        step = int(window_s if window_s is not None else gaps.min())
        if step <= 0 or (gaps % step != 0).any() or (gaps != step).any():
            raise InvalidArgumentError("window starts are not consecutive windows")
        return History(
            np.ascontiguousarray(wide.index.to_numpy(), dtype=np.uint64),
            np.ascontiguousarray(wide.to_numpy(), dtype=np.float64),
            window_s=step,
            start_s=int(starts[0]) if start_s is None else start_s,
        )
    # wide format: index = customer ids, one column per window
    if window_s is None:
        raise InvalidArgumentError("a wide DataFrame (customers x windows) needs window_s")
    return History(
        np.ascontiguousarray(df.index.to_numpy(), dtype=np.uint64),
        np.ascontiguousarray(df.to_numpy(), dtype=np.float64),
        window_s=window_s,
        start_s=start_s or 0,
    )


def history(
    data: HistoryLike,
    *,
    customers: "np.ndarray[Any, Any] | Sequence[int] | None" = None,
    window_s: int | None = None,
    start_s: int | None = None,
) -> History:
    """Makes a :class:`History` from whatever holds the usage.

    - a :class:`History`: returned as is;
    - a path (``str`` or ``os.PathLike``): a ServeGen CSV file (:meth:`History.from_csv`);
    - a 2-D numpy array ``(customers, windows)`` of tokens: with ``window_s`` and optionally
      ``customers`` (ids; default ``0..n``) and ``start_s``;
    - a pandas DataFrame, either long (columns ``customer``, ``window_start_s`` and ``tokens``
      or ``input_tokens`` + ``output_tokens``, as the ServeGen files) or wide (index = customer
      ids, one column per window; needs ``window_s``).
    """
    if isinstance(data, History):
        return data
    if isinstance(data, (str, os.PathLike)):
        return History.from_csv(data)
    if isinstance(data, np.ndarray):
        if window_s is None:
            raise InvalidArgumentError("a numpy usage array needs window_s")
        usage = np.ascontiguousarray(data, dtype=np.float64)
        ids = (
            np.arange(usage.shape[0], dtype=np.uint64)
            if customers is None
            else np.ascontiguousarray(customers, dtype=np.uint64)
        )
        return History(ids, usage, window_s=window_s, start_s=start_s or 0)
    if hasattr(data, "columns") and hasattr(data, "to_numpy"):
        return _from_dataframe(data, window_s, start_s)
    raise ArgumentTypeError(
        "usage data must be a History, a CSV path, a 2-D numpy array or a pandas DataFrame, "
        f"got {type(data).__name__}"
    )


def evaluate(
    data: HistoryLike,
    forecaster: str = "ewma",
    *,
    train_windows: int,
    horizons: Sequence[int] = (1,),
    reserve: str = "p90",
    alpha: float = 0.5,
    period: int = 144,
    half_life: float = 144.0,
    window_s: int | None = None,
) -> EvaluationReport:
    """Scores a baseline forecaster (``'last_value'``, ``'ewma'`` (``alpha``),
    ``'seasonal_naive'`` (``period`` windows) or ``'autopilot'`` (``half_life`` windows)) on
    usage data (anything :func:`history` takes): its forecasts of the windows from
    ``train_windows`` on, at each horizon. Returns a dict whose ``"horizons"`` list has one dict of
    metrics per horizon (``pandas.DataFrame(report["horizons"])`` makes a table)."""
    return _native.evaluate(
        history(data, window_s=window_s),
        forecaster,
        train_windows=train_windows,
        horizons=list(horizons),
        reserve=reserve,
        alpha=alpha,
        period=period,
        half_life=half_life,
    )


__all__ = [
    "NO_SLOT",
    "Engine",
    "History",
    "HistoryLike",
    "Model",
    "Outcome",
    "evaluate",
    "history",
    "__version__",
    "Error",
    "InvalidArgumentError",
    "ArgumentTypeError",
    "UnknownCustomerError",
    "DuplicateCustomerError",
    "StoreFullError",
    "LockedError",
    "ReadOnlyError",
    "BadFileError",
    "StorageError",
    "NotFoundError",
    "AccessDeniedError",
    "AlreadyExistsError",
    "ClosedError",
    "InternalError",
]
