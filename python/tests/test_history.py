"""Usage histories from numpy, pandas and CSV files, and forecaster evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import shadowbucket as sb


def _usage(customers: int = 3, windows: int = 40) -> np.ndarray:
    t = np.arange(windows)
    base = np.array([[100.0], [1_000.0], [10.0]])[:customers]
    return base * (1.5 + np.sin(t / 3.0))


def _write_servegen_csv(path: Path, usage: np.ndarray, ids: list[int], window_s: int) -> None:
    lines = ["customer,window_start_s,requests,input_tokens,output_tokens"]
    for c, cid in enumerate(ids):
        for t, u in enumerate(usage[c]):
            lines.append(f"{cid},{1000 + t * window_s},1,{u * 0.75},{u * 0.25}")
    path.write_text("\n".join(lines) + "\n")


def test_history_from_numpy() -> None:
    u = _usage()
    h = sb.history(u, customers=[7, 8, 9], window_s=600)
    assert (h.num_customers, h.num_windows, h.window_s, h.start_s) == (3, 40, 600, 0)
    assert h.customers.tolist() == [7, 8, 9]
    np.testing.assert_array_equal(h.usage, u)
    a, b = h.split(30)
    assert (a.num_windows, b.num_windows, b.start_s) == (30, 10, 30 * 600)
    assert sb.history(h) is h


def test_history_checks() -> None:
    with pytest.raises(sb.InvalidArgumentError, match="window_s"):
        sb.history(_usage())
    with pytest.raises(sb.InvalidArgumentError, match="not a finite value"):
        sb.history(-_usage(), window_s=60)
    with pytest.raises(sb.InvalidArgumentError, match="appears twice"):
        sb.history(_usage(), customers=[1, 1, 2], window_s=60)
    with pytest.raises(ValueError, match="2-D"):
        sb.History(np.arange(3, dtype=np.uint64), np.zeros(3), window_s=60)
    with pytest.raises(sb.ArgumentTypeError, match="float64"):
        sb.History(np.arange(3, dtype=np.uint64), np.zeros((3, 4), np.int64), window_s=60)
    with pytest.raises(sb.InvalidArgumentError, match="rows"):
        sb.History(np.arange(2, dtype=np.uint64), np.zeros((3, 4)), window_s=60)
    with pytest.raises(sb.ArgumentTypeError):
        sb.history(42)


def test_history_from_csv_and_pandas_agree(tmp_path: Path) -> None:
    u = _usage()
    csv = tmp_path / "trace.csv"
    _write_servegen_csv(csv, u, [5, 6, 7], 600)
    from_csv = sb.history(csv)
    assert from_csv.customers.tolist() == [5, 6, 7]
    assert (from_csv.window_s, from_csv.start_s) == (600, 1000)
    np.testing.assert_allclose(from_csv.usage, u)

    long = pd.read_csv(csv)
    from_long = sb.history(long)
    np.testing.assert_array_equal(from_long.customers, from_csv.customers)
    np.testing.assert_allclose(from_long.usage, from_csv.usage)
    assert (from_long.window_s, from_long.start_s) == (600, 1000)

    wide = pd.DataFrame(u, index=[5, 6, 7])
    from_wide = sb.history(wide, window_s=600)
    np.testing.assert_allclose(from_wide.usage, u)

    with pytest.raises(sb.InvalidArgumentError, match="ragged"):
        sb.history(long.iloc[1:])


def test_history_from_pandas_keeps_requests_as_csv_does(tmp_path: Path) -> None:
    """A ServeGen DataFrame carries its `requests` column into the History, as the CSV path does
    (the model's `requests` feature): training on either gives the same model."""
    u = _usage(windows=60)
    csv = tmp_path / "trace.csv"
    lines = ["customer,window_start_s,requests,input_tokens,output_tokens"]
    for c in range(3):
        for t, x in enumerate(u[c]):
            lines.append(f"{c},{t * 600},{1 + (t * (c + 2)) % 7},{x * 0.75},{x * 0.25}")
    csv.write_text("\n".join(lines) + "\n")
    from_csv, from_long = (
        sb.train(data, hidden=4, horizons=[1], epochs=1, scale_half_life=144.0, seed=0)
        for data in (csv, pd.read_csv(csv))
    )
    assert from_long.model == from_csv.model


def test_bad_csv(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sb.history(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("customer,window_start_s\n1,0\n")
    with pytest.raises(sb.InvalidArgumentError, match="column"):
        sb.History.from_csv(bad)


def test_evaluate_baselines() -> None:
    h = sb.history(_usage(windows=60), window_s=600)
    rep = sb.evaluate(h, "ewma", train_windows=40, horizons=[1, 3], alpha=0.3)
    assert rep["forecaster"].startswith("ewma")
    assert (rep["customers"], rep["train_windows"], rep["test_windows"]) == (3, 40, 20)
    assert [r["horizon"] for r in rep["horizons"]] == [1, 3]
    assert rep["horizons"][0]["samples"] == 60
    table = pd.DataFrame(rep["horizons"])
    assert {"mae", "coverage_p90", "exceed_rate"} <= set(table.columns)
    # a perfectly periodic series: seasonal naive with the right period is exact
    periodic = np.tile(np.array([[1.0, 5.0, 2.0, 8.0]]), (2, 15))
    exact = sb.evaluate(periodic, "seasonal_naive", period=4, train_windows=20, window_s=60)
    assert exact["horizons"][0]["mae"] == 0.0
    last = sb.evaluate(periodic, "last_value", train_windows=20, window_s=60)
    assert last["horizons"][0]["mae"] > 0.0
    sb.evaluate(h, "autopilot", train_windows=40, reserve="p99", half_life=10.0)
    with pytest.raises(sb.InvalidArgumentError, match="unknown forecaster"):
        sb.evaluate(h, "arima", train_windows=40)
    with pytest.raises(sb.InvalidArgumentError, match="reserve"):
        sb.evaluate(h, "ewma", train_windows=40, reserve="p95")
    with pytest.raises(sb.InvalidArgumentError, match="train_windows"):
        sb.evaluate(h, "ewma", train_windows=0)


def test_evaluate_a_horizon_past_the_history_scores_nothing() -> None:
    # A horizon whose target window lies past the history has no samples; a huge one must not
    # overflow (a panic, pyo3's PanicException, in a debug build; garbage scores otherwise).
    h = sb.history(_usage(windows=30), window_s=600)
    for f in ("ewma", "seasonal_naive"):
        rep = sb.evaluate(h, f, train_windows=20, horizons=[1, 2**63, 2**64 - 1], period=4)
        assert [r["samples"] for r in rep["horizons"]] == [30, 0, 0]
