"""Training the LSTM, model files (PyTorch's layout, edited from numpy) and evaluating a model."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import shadowbucket as sb
from conftest import SEC, make_engine

MIN = 60 * SEC
HIDDEN = 8
HORIZONS = [1, 2]
# small and quick: 6 customers, 8 "days" of 24 windows
OPTS: dict[str, Any] = dict(
    hidden=HIDDEN,
    horizons=HORIZONS,
    epochs=4,
    batch_customers=3,
    bptt=24,
    learning_rate=1e-2,
    validation_fraction=0.2,
    patience=0,
    scale_half_life=24.0,
)


def _periodic(customers: int = 6, windows: int = 24 * 8, seed: int = 4) -> np.ndarray:
    """A daily (24-window) sine per customer, sizes 10..1e5, with 10% noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(windows)
    rows = []
    for c in range(customers):
        base = 10.0 ** (1 + c % 5)
        v = base * (1.0 + 0.8 * np.sin(2 * np.pi * t / 24 + c))
        rows.append(np.maximum(v * (1.0 + 0.1 * rng.uniform(-1, 1, windows)), 0.0))
    return np.array(rows)


@pytest.fixture(scope="module")
def trained() -> sb.TrainResult:
    return sb.train(_periodic(), window_s=3600, seed=11, **OPTS)


def test_training_reduces_loss_and_is_seeded(trained: sb.TrainResult) -> None:
    r = trained
    assert r.epochs_run == 4 and 1 <= r.best_epoch <= 4
    assert len(r.train_losses) == 4 and len(r.val_losses) == 4
    assert all(np.isfinite(r.train_losses + r.val_losses))
    # the residual head starts from persistence, already a fair forecast of a smooth series, so
    # the first epochs gain less than from a blank head
    assert r.train_losses[-1] < 0.95 * r.train_losses[0], r.train_losses
    assert min(r.val_losses) < r.val_losses[0], r.val_losses
    m = r.model
    assert m.spec == {"hidden": HIDDEN, "layers": 1, "horizons": HORIZONS, "feeds": []}
    assert m.scale_half_life == 24.0
    assert len(m.feature_names) == len(m.feature_mean) == len(m.feature_std)
    assert "TrainResult" in repr(r)
    # the same seed gives the same model, another seed another
    assert sb.train(_periodic(), window_s=3600, seed=11, **OPTS).model == m
    assert sb.train(_periodic(), window_s=3600, seed=12, **OPTS).model != m


def test_train_takes_a_history_or_dataframe_and_checks_arguments() -> None:
    pd = pytest.importorskip("pandas")
    u = _periodic(customers=3, windows=24 * 4)
    small = dict(OPTS, epochs=1)
    a = sb.train(pd.DataFrame(u, index=[4, 5, 6]), window_s=3600, **small)
    b = sb.train(sb.history(u, customers=[4, 5, 6], window_s=3600), **small)
    assert a.model == b.model
    with pytest.raises(sb.InvalidArgumentError, match="learning_rate"):
        sb.train(u, window_s=3600, **dict(small, learning_rate=-1.0))
    with pytest.raises(sb.InvalidArgumentError, match="too few"):
        sb.train(u[:, :3], window_s=3600, **small)
    with pytest.raises(sb.InvalidArgumentError, match="unknown loss weight"):
        sb.train(u, window_s=3600, loss={"pinball": 1.0}, **small)
    with pytest.raises(sb.InvalidArgumentError, match="loss weights"):
        sb.train(u, window_s=3600, loss={"mean": -1.0}, **small)
    with pytest.raises(sb.ArgumentTypeError, match="callable"):
        sb.train(u, window_s=3600, progress=42, **small)  # type: ignore[arg-type]


def test_progress_callback_is_called_after_every_batch() -> None:
    seen: list[sb.ProgressInfo] = []
    r = sb.train(_periodic(), window_s=3600, seed=11, progress=seen.append, **dict(OPTS, epochs=2))
    batches = seen[0]["batches"]
    # 154 training windows in chunks of 24 (7), 6 customers in batches of 3 (2)
    assert batches == 7 * 2 and len(seen) == 2 * batches
    assert [(p["epoch"], p["batch"]) for p in seen[:2]] == [(1, 1), (1, 2)]
    assert seen[-1]["epoch"] == seen[-1]["epochs"] == 2 and seen[-1]["batch"] == batches
    assert seen[0]["val_loss"] is None and seen[-1]["val_loss"] == r.val_losses[0]
    assert seen[batches - 1]["train_loss"] == pytest.approx(r.train_losses[0])


def test_the_gil_is_released_while_training() -> None:
    """Another thread runs Python while a training thread is between progress reports."""
    counter = 0
    at_report: list[int] = []
    done = threading.Event()

    def spin() -> None:
        nonlocal counter
        while not done.is_set():
            counter += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        sb.train(
            _periodic(),
            window_s=3600,
            progress=lambda p: at_report.append(counter),
            **dict(OPTS, epochs=2),
        )
    finally:
        done.set()
        spinner.join()
    assert at_report[-1] > at_report[0]


def test_an_exception_in_the_callback_stops_training() -> None:
    class Enough(Exception):
        pass

    calls = 0

    def stop_at_3(p: sb.ProgressInfo) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise Enough(p["batch"])

    with pytest.raises(Enough) as e:
        sb.train(_periodic(), window_s=3600, progress=stop_at_3, **dict(OPTS, epochs=1000))
    assert calls == 3 and e.value.args == (3,)


def test_ctrl_c_interrupts_training_without_a_callback() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are handled in the main thread")
    timer = threading.Timer(0.5, signal.raise_signal, (signal.SIGINT,))
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            # far more epochs than can run before the signal
            sb.train(_periodic(), window_s=3600, **dict(OPTS, epochs=100_000))
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, old)


def test_model_file_has_pytorch_names_and_round_trips(
    trained: sb.TrainResult, tmp_path: Path
) -> None:
    m = trained.model
    path = tmp_path / "model.safetensors"
    m.save(path)
    assert sb.Model.load(path) == m
    t = load_file(path)
    g, head = 4 * HIDDEN, 4 * len(HORIZONS) + 4
    inputs = len(m.feature_names)
    assert {k: v.shape for k, v in t.items()} == {
        "weight_ih_l0": (g, inputs),
        "weight_hh_l0": (g, HIDDEN),
        "bias_ih_l0": (g,),
        "bias_hh_l0": (g,),
        "head.weight": (head, HIDDEN),
        "head.bias": (head,),
    }
    assert all(v.dtype == np.float32 for v in t.values())
    mine = m.tensors()
    assert mine.keys() == t.keys()
    for k in t:
        np.testing.assert_array_equal(mine[k], t[k])
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
    assert meta == m.metadata()
    assert meta["format"] == "shadowbucket-lstm" and meta["horizons"] == "1,2"
    assert meta["features"].split(",") == m.feature_names


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def test_a_model_edited_in_numpy_runs_in_the_engine(
    trained: sb.TrainResult, tmp_path: Path
) -> None:
    """Zero head weights make the head's outputs its biases: the engine's forecast is then the
    decode of `core/src/model/step.rs` applied to the biases (a residual on the usage feature
    ln(1 + u/s) of the interval just closed), computed here in numpy."""
    m = trained.model
    src = tmp_path / "trained.safetensors"
    m.save(src)
    t = load_file(src)
    with safe_open(src, framework="numpy") as f:
        meta = f.metadata()
    head = 4 * len(HORIZONS) + 4
    t["head.weight"] = np.zeros((head, HIDDEN), np.float32)
    # per horizon: mean, p50, p90 and p99 raw outputs; then four scenario logits
    bias = np.array([0.5, 0.3, -1.0, 0.2, 1.5, 1.0, 0.4, 0.7, 0.1, 2.0, -0.5, 0.0], np.float32)
    t["head.bias"] = bias
    edited = tmp_path / "edited.safetensors"
    save_file(t, edited, metadata=meta)
    assert sb.Model.load(edited).tensors()["head.bias"].tolist() == bias.tolist()

    with make_engine(tmp_path / "lstm.sb", model=m) as eng:
        eng.load_model(edited)
        assert eng.predictor.startswith(f"lstm(hidden={HIDDEN}")
        ids = np.arange(1, 9, dtype=np.uint64)
        for k in range(3):  # constant use: the scale settles at 100 tokens per interval
            eng.allocate_batch(ids, np.full(8, 100, np.uint64), k * MIN + SEC)
            eng.tick((k + 1) * MIN)
        f = eng.forecast(1)
    s = f["scale"]
    assert s == pytest.approx(100.0)
    y = bias.astype(np.float64).reshape(-1)
    u = np.log1p(100.0 / s)  # the last interval's 100 tokens, against the scale before it (100)
    mean, p50, p90, p99 = [], [], [], []
    for j in range(len(HORIZONS)):
        y0, y1, y2, y3 = y[4 * j : 4 * j + 4]
        z50 = u + y1
        z90 = z50 + _softplus(y2)
        z99 = z90 + _softplus(y3)
        mean.append(s * np.expm1(max(u + y0, 0.0)))
        p50.append(s * np.expm1(max(z50, 0.0)))
        p90.append(s * np.expm1(max(z90, 0.0)))
        p99.append(s * np.expm1(max(z99, 0.0)))
    logits = y[4 * len(HORIZONS) :]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    np.testing.assert_allclose(f["mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(f["p50"], p50, rtol=1e-5)
    np.testing.assert_allclose(f["p90"], p90, rtol=1e-5)
    np.testing.assert_allclose(f["p99"], p99, rtol=1e-5)
    np.testing.assert_allclose(f["scenarios"], probs, rtol=1e-5)


def test_bad_model_files_are_refused(trained: sb.TrainResult, tmp_path: Path) -> None:
    m = trained.model
    good = tmp_path / "good.safetensors"
    m.save(good)
    t = load_file(good)
    with safe_open(good, framework="numpy") as f:
        meta = f.metadata()
    t["head.weight"] = np.zeros((4 * len(HORIZONS) + 4, HIDDEN + 1), np.float32)
    wrong = tmp_path / "wrong.safetensors"
    save_file(t, wrong, metadata=meta)
    with pytest.raises(sb.BadFileError, match=r"head\.weight.*shape"):
        sb.Model.load(wrong)
    with make_engine(tmp_path / "e.sb", model=m) as eng:
        with pytest.raises(sb.BadFileError, match=r"head\.weight"):
            eng.load_model(wrong)
        assert eng.predictor.startswith("ewma")  # unchanged
    with pytest.raises(FileNotFoundError) as e:
        sb.Model.load(tmp_path / "missing.safetensors")
    assert isinstance(e.value, sb.NotFoundError)
    assert e.value.filename == str(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model")
    with pytest.raises(sb.BadFileError, match="safetensors"):
        sb.Model.load(junk)
    nometa = tmp_path / "nometa.safetensors"
    save_file(load_file(good), nometa)
    with pytest.raises(sb.BadFileError, match="metadata"):
        sb.Model.load(nometa)
    with pytest.raises(FileNotFoundError):
        m.save(tmp_path / "no" / "such" / "dir" / "m.safetensors")


def test_evaluate_an_lstm_model(trained: sb.TrainResult) -> None:
    u = _periodic(seed=5)
    rep = sb.evaluate(u, trained.model, train_windows=24 * 6, horizons=[1, 2, 3], window_s=3600)
    assert rep["forecaster"].startswith("lstm")
    assert [r["horizon"] for r in rep["horizons"]] == [1, 2, 3]
    for r in rep["horizons"]:
        assert r["samples"] == 6 * 48
        for k in ("mae", "pinball_p50", "pinball_p90", "pinball_p99", "slack", "brier"):
            assert np.isfinite(r[k]), k
        assert 0.0 <= r["brier"] <= 2.0
    base = sb.evaluate(u, "ewma", train_windows=24 * 6, window_s=3600, scenario_half_life=24.0)
    assert 0.0 <= base["horizons"][0]["brier"] <= 2.0
    with pytest.raises(sb.ArgumentTypeError, match="Model or a baseline"):
        sb.evaluate(u, 3, train_windows=10, window_s=3600)  # type: ignore[arg-type]
