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
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, Union

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
from ._native import NO_SLOT, Engine, History, Model, SnapshotCapture, TrainResult, __version__
from ._outcome import Outcome

if TYPE_CHECKING:
    from ._native import EvaluationReport, ProgressInfo

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
        # the request counts, when there, as History.from_csv keeps them (the `requests` feature)
        requests = (
            np.ascontiguousarray(
                long.pivot(index="customer", columns="window_start_s", values="requests")
                .reindex(index=wide.index, columns=wide.columns)
                .to_numpy(),
                dtype=np.float64,
            )
            if "requests" in cols
            else None
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
            requests=requests,
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
      or ``input_tokens`` + ``output_tokens``, and ``requests`` if present, as the ServeGen
      files) or wide (index = customer ids, one column per window; needs ``window_s``).
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
    forecaster: Union[str, Model] = "ewma",
    *,
    train_windows: int,
    horizons: Sequence[int] = (1,),
    reserve: str = "p90",
    alpha: float = 0.5,
    period: int = 144,
    half_life: float = 144.0,
    scenario_half_life: float | None = None,
    window_s: int | None = None,
) -> EvaluationReport:
    """Scores a forecaster on usage data (anything :func:`history` takes): its forecasts of the
    windows from ``train_windows`` on, at each horizon.

    ``forecaster`` is a baseline's name (``'last_value'``, ``'ewma'`` (``alpha``),
    ``'seasonal_naive'`` (``period`` windows) or ``'autopilot'`` (``half_life`` windows)) or an
    LSTM :class:`Model`, fed one window at a time as the engine's tick feeds it (its horizons
    not in the model's spec use the nearest one). The Brier score (``'brier'``) scores the
    scenario probabilities against scenarios defined by a reference scale with
    ``scenario_half_life`` windows (default: the model's ``scale_half_life`` for a Model, 144
    otherwise). Returns a dict whose ``"horizons"`` list has one dict of metrics per horizon
    (``pandas.DataFrame(report["horizons"])`` makes a table)."""
    return _native.evaluate(
        history(data, window_s=window_s),
        forecaster,
        train_windows=train_windows,
        horizons=list(horizons),
        reserve=reserve,
        alpha=alpha,
        period=period,
        half_life=half_life,
        scenario_half_life=scenario_half_life,
    )


def train(
    data: HistoryLike,
    *,
    hidden: int | None = None,
    layers: int | None = None,
    horizons: Sequence[int] | None = None,
    feeds: Sequence[str] | None = None,
    epochs: int = 30,
    batch_customers: int = 16,
    bptt: int = 48,
    learning_rate: float = 3e-3,
    seed: int = 0,
    validation_fraction: float = 0.1,
    patience: int = 5,
    scale_half_life: float = 1440.0,
    loss: Mapping[str, float] | None = None,
    progress: Callable[[ProgressInfo], object] | None = None,
    window_s: int | None = None,
) -> TrainResult:
    """Trains an LSTM forecaster on usage data (anything :func:`history` takes) with the
    engine's CPU trainer, and returns a :class:`TrainResult` (``model``, ``epochs_run``,
    ``best_epoch``, ``train_losses``, ``val_losses``).

    The model's shape is ``hidden``, ``layers``, ``horizons`` (windows ahead) and ``feeds``
    (``None`` takes the defaults: 32, 1, ``[1, 5, 10, 15]``, none). The last
    ``validation_fraction`` of the windows are held out for early stopping (after ``patience``
    epochs without improvement; the best epoch's weights are kept). ``scale_half_life`` is the
    customer scale's half-life in windows (1440: a day of one-minute windows; use 144 for
    10-minute windows). ``loss`` overrides loss weights (``quantile``, ``mean``,
    ``huber_delta``, ``scenario``, ``size_exponent``). A given ``seed`` gives the same model.

    The GIL is released while training. After every mini-batch, ``progress`` (if given) is
    called with a dict (``epoch`` and ``batch`` from 1, ``epochs``, ``batches``, ``train_loss``,
    ``val_loss``); an exception it raises stops training and propagates, and so does
    ``KeyboardInterrupt`` (Ctrl-C)."""
    return _native.train(
        history(data, window_s=window_s),
        hidden=hidden,
        layers=layers,
        horizons=None if horizons is None else list(horizons),
        feeds=None if feeds is None else list(feeds),
        epochs=epochs,
        batch_customers=batch_customers,
        bptt=bptt,
        learning_rate=learning_rate,
        seed=seed,
        validation_fraction=validation_fraction,
        patience=patience,
        scale_half_life=scale_half_life,
        loss=None if loss is None else dict(loss),
        progress=progress,
    )


__all__ = [
    "NO_SLOT",
    "Engine",
    "History",
    "HistoryLike",
    "Model",
    "Outcome",
    "SnapshotCapture",
    "TrainResult",
    "evaluate",
    "history",
    "train",
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
