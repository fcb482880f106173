"""The predictive engine from Python: tick, predictors, policy, events, signals, forecasts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import shadowbucket as sb
from conftest import SEC, make_engine

MIN = 60 * SEC


def _steady(eng: sb.Engine, minutes: int, ids: np.ndarray, tokens: int) -> None:
    for m in range(minutes):
        now = m * MIN + SEC
        eng.allocate_batch(ids, np.full(len(ids), tokens, np.uint64), now)
        eng.tick((m + 1) * MIN)


def test_default_predictor_reserves_from_forecasts(engine: sb.Engine) -> None:
    assert engine.predictor.startswith("ewma")
    ids = np.arange(1, 9, dtype=np.uint64)
    _steady(engine, 5, ids, 200)
    f = engine.forecast(1)
    assert f["mean"].dtype == np.float64 and len(f["mean"]) == len(f["horizons"])
    assert f["p90"][0] == pytest.approx(200, rel=0.05)
    assert f["scenarios"].shape == (4,)
    c = engine.customer(1)
    assert c["reserved_rate"] > 0 and c["shadow_capacity"] > 0
    # predicted traffic now takes the fast path
    o, _ = engine.allocate_batch(ids, np.full(8, 100, np.uint64), 5 * MIN + 30 * SEC)
    assert (o == sb.Outcome.GRANTED_SHADOW).all()


def test_set_predictor_by_name_and_bad_names(engine: sb.Engine) -> None:
    engine.set_predictor("last_value")
    assert "last" in engine.predictor
    engine.set_predictor("ewma", alpha=0.25)
    assert "0.25" in engine.predictor
    engine.set_predictor("seasonal_naive", period=10)
    engine.set_predictor("autopilot", half_life=30.0)
    with pytest.raises(sb.InvalidArgumentError, match="unknown predictor"):
        engine.set_predictor("prophet")  # type: ignore[arg-type]
    with pytest.raises(sb.InvalidArgumentError):
        engine.set_predictor("ewma", alpha=0.0)
    with pytest.raises(sb.ArgumentTypeError, match="Model or a baseline"):
        engine.set_predictor(3)  # type: ignore[arg-type]


def test_seasonal_naive_with_a_huge_period_keeps_the_engine(engine: sb.Engine) -> None:
    # The period is the most history kept per customer, not memory allocated up front: a huge one
    # once failed the tick's allocation (a panic that closed the engine, or an abort).
    engine.set_predictor("seasonal_naive", period=2**61)
    for m in range(1, 4):
        engine.allocate(1, 10 * m, m * 60 * SEC - 1)
        engine.tick(m * 60 * SEC)
    assert not engine.closed
    # fewer intervals seen than the period: the last value
    assert (engine.forecast(1)["p50"] == 30.0).all()


def test_policy(engine: sb.Engine) -> None:
    engine.set_policy(target="mean", headroom=1.5, capacity_intervals=2.0)
    engine.set_policy(target="scenario", probability=0.8)
    with pytest.raises(ValueError, match="target"):
        engine.set_policy(target="p95")  # type: ignore[arg-type]
    with pytest.raises(sb.InvalidArgumentError, match="headroom"):
        engine.set_policy(headroom=-1)
    with pytest.raises(sb.InvalidArgumentError, match="horizon"):
        engine.set_policy(horizon=99)


def test_events_and_signals(engine: sb.Engine) -> None:
    a = engine.add_event(start_ns=0, end_ns=10 * MIN, intensity=2.0, customer=1)
    b = engine.add_event(start_ns=0, end_ns=10 * MIN, kind=7)
    assert a != b
    engine.remove_event(a)
    with pytest.raises(sb.InvalidArgumentError):
        engine.remove_event(a)
    with pytest.raises(sb.InvalidArgumentError):
        engine.add_event(start_ns=10, end_ns=5)
    engine.set_signal("news_volume", 3.5)
    with pytest.raises(sb.InvalidArgumentError):
        engine.set_signal("", 1.0)
    with pytest.raises(sb.InvalidArgumentError):
        engine.set_signal("x", float("nan"))


def test_lstm_predictor_runs_in_the_tick(tmp_path: Path) -> None:
    model = sb.Model.random(hidden=8, horizons=[1, 5], seed=3)
    assert model.spec == {"hidden": 8, "layers": 1, "horizons": [1, 5], "feeds": []}
    assert model == sb.Model.random(hidden=8, horizons=[1, 5], seed=3)
    assert model != sb.Model.random(hidden=8, horizons=[1, 5], seed=4)
    # a store whose forecaster columns do not fit the model is refused
    with make_engine(tmp_path / "plain.sb") as plain:
        with pytest.raises(sb.InvalidArgumentError):
            plain.set_predictor(model)
    with make_engine(tmp_path / "lstm.sb", model=model) as eng:
        eng.set_predictor(model)
        assert eng.predictor.startswith("lstm(hidden=8")
        _steady(eng, 3, np.arange(1, 9, dtype=np.uint64), 100)
        f = eng.forecast(1)
        assert f["horizons"].tolist() == [1, 5]
        assert np.isfinite(f["mean"]).all() and (f["p99"] >= f["p50"]).all()
        assert f["scenarios"].sum() == pytest.approx(1.0, abs=1e-4)
        assert eng.customer(1)["forecast"].shape == (8,)
        eng.reset_model_state()
