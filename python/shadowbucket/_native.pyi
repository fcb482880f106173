"""Typed interface of the native module ``shadowbucket._native`` (checked by the tests)."""

import os
from pathlib import Path
from typing import (
    Any,
    Callable,
    Literal,
    Optional,
    Sequence,
    TypedDict,
    Union,
    final,
    type_check_only,
)

import numpy as np
import numpy.typing as npt

_Path = Union[str, "os.PathLike[str]"]

__all__ = [
    "Engine",
    "History",
    "Model",
    "SnapshotCapture",
    "TrainResult",
    "evaluate",
    "train",
    "NO_SLOT",
    "__version__",
]

NO_SLOT: int
__version__: str

@type_check_only
class Interval(TypedDict):
    granted_shadow: int
    granted_pool: int
    requests: int
    fallbacks: int
    denied_customer: int
    denied_pool: int
    refunded: int
    debt: int

@type_check_only
class CustomerInfo(TypedDict):
    id: int
    slot: int
    burst: int
    rate: float
    weight: int
    std_tokens: float
    std_femto: int
    shadow_tokens: float
    shadow_femto: int
    reserved_rate: float
    shadow_capacity: int
    flagged: bool
    outstanding: int
    last_interval: Interval
    this_interval: Interval
    forecast: npt.NDArray[np.float32]
    scenarios: npt.NDArray[np.float32]

@type_check_only
class StatsInfo(TypedDict):
    requests: int
    shadow_grants: int
    pool_grants: int
    denied_customer: int
    denied_pool: int
    exceeds_burst: int
    unknown: int
    invalid: int
    tokens_shadow: int
    tokens_pool: int
    tokens_refunded: int
    tokens_debt: int
    settles: int
    bumps: int
    ticks: int
    flagged: int
    batches: int
    customers: int
    capacity: int
    reserved_rate_micros: int
    reserved_capacity: int
    last_committed: int
    last_rolled_back: int
    femto_returned: int
    femto_lost_at_cap: int
    pool_femto: int
    pool_tokens: float
    reserved_rate: float

@type_check_only
class TickInfo(TypedDict):
    customers: int
    asked_rate_micros: int
    reserved_rate_micros: int
    reserved_capacity: int
    cut_back: bool
    flagged: int

@type_check_only
class LedgerInfo(TypedDict):
    supplied: int
    in_pool: int
    in_shadows: int
    granted_net: int
    lost_at_cap: int
    balanced: bool

@type_check_only
class SnapshotInfo(TypedDict):
    path: Path
    bytes: int
    written: int
    last_committed: int

@type_check_only
class ConfigInfo(TypedDict):
    pool_burst: int
    pool_rate: float
    alpha: float
    interval_ns: int
    contention_high: float
    contention_low: float
    contention_ticks: int
    contention_min_requests: int

@type_check_only
class ForecastInfo(TypedDict):
    horizons: npt.NDArray[np.uint32]
    mean: npt.NDArray[np.float64]
    p50: npt.NDArray[np.float64]
    p90: npt.NDArray[np.float64]
    p99: npt.NDArray[np.float64]
    scenarios: npt.NDArray[np.float32]
    scale: float

@type_check_only
class ModelSpecInfo(TypedDict):
    hidden: int
    layers: int
    horizons: list[int]
    feeds: list[str]

@type_check_only
class HorizonMetrics(TypedDict):
    horizon: int
    samples: int
    reserve: str
    mean_used: float
    mae: float
    pinball_p50: float
    pinball_p90: float
    pinball_p99: float
    coverage_p90: float
    coverage_p99: float
    slack: float
    over_reserved: float
    exceed_rate: float
    brier: float

@type_check_only
class ProgressInfo(TypedDict):
    epoch: int
    epochs: int
    batch: int
    batches: int
    train_loss: float
    val_loss: Optional[float]

@type_check_only
class EvaluationReport(TypedDict):
    forecaster: str
    customers: int
    train_windows: int
    test_windows: int
    horizons: list[HorizonMetrics]

_U64 = npt.NDArray[np.uint64]
_U32 = npt.NDArray[np.uint32]
_BatchResult = tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint64]]

@final
class Engine:
    """A shadowbucket engine over one memory-mapped store file."""

    @staticmethod
    def create(
        path: _Path,
        *,
        capacity: int,
        pool_burst: int,
        pool_rate: float,
        alpha: float = 0.8,
        interval_ns: int = 60_000_000_000,
        contention_high: float = 0.5,
        contention_low: float = 0.2,
        contention_ticks: int = 3,
        contention_min_requests: int = 1,
        now_ns: int = 0,
        model: Optional[Model] = None,
        forecaster_columns: bool = True,
    ) -> Engine: ...
    @staticmethod
    def open(path: _Path, *, read_only: bool = False) -> Engine: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def __enter__(self) -> Engine: ...
    def __exit__(self, *_exc: object) -> bool: ...
    def __len__(self) -> int: ...
    @property
    def path(self) -> Path: ...
    @property
    def capacity(self) -> int: ...
    @property
    def recovered(self) -> Optional[int]: ...
    def config(self) -> ConfigInfo: ...
    def add_customer(
        self, id: int, *, burst: int, rate: float, weight: int = 1, now_ns: int = 0
    ) -> int: ...
    def add_customers(
        self,
        ids: _U64,
        bursts: _U64,
        rates: npt.NDArray[np.float64],
        weights: Optional[npt.NDArray[np.uint16]] = None,
        *,
        now_ns: int = 0,
    ) -> _U32: ...
    def update_contract(
        self, id: int, *, burst: int, rate: float, weight: int = 1, now_ns: int = 0
    ) -> None: ...
    def remove_customer(self, id: int, *, now_ns: int = 0) -> None: ...
    def grow(self, new_capacity: int) -> None: ...
    def slot_of(self, id: int) -> Optional[int]: ...
    def resolve(self, ids: _U64) -> _U32: ...
    def customer_ids(self) -> _U64: ...
    def flagged(self) -> _U64: ...
    def allocate(self, id: int, tokens: int, now_ns: int) -> tuple[Any, int]: ...
    def allocate_batch(self, ids: _U64, tokens: _U64, now_ns: int) -> _BatchResult: ...
    def allocate_slots(self, slots: _U32, tokens: _U64, now_ns: int) -> _BatchResult: ...
    def settle(self, id: int, granted: int, used: int, outcome: int, now_ns: int) -> None: ...
    def tick_with(
        self,
        now_ns: int,
        slots: _U32,
        rates: npt.NDArray[np.float64],
        capacities: _U64,
    ) -> TickInfo: ...
    def tick(self, now_ns: int) -> TickInfo: ...
    def set_predictor(
        self,
        predictor: Union[Model, Literal["last_value", "ewma", "seasonal_naive", "autopilot"]],
        *,
        alpha: float = 0.5,
        period: int = 1440,
        half_life: float = 1440.0,
    ) -> None: ...
    def load_model(self, path: _Path) -> None: ...
    @property
    def predictor(self) -> str: ...
    def reset_model_state(self) -> None: ...
    def set_policy(
        self,
        *,
        horizon: int = 0,
        target: Literal["mean", "p50", "p90", "p99", "scenario"] = "p90",
        probability: float = 0.9,
        headroom: float = 1.0,
        capacity_intervals: float = 1.0,
    ) -> None: ...
    def add_event(
        self,
        *,
        start_ns: int,
        end_ns: int,
        intensity: float = 1.0,
        kind: int = 0,
        customer: Optional[int] = None,
    ) -> int: ...
    def remove_event(self, id: int) -> None: ...
    def set_signal(self, name: str, value: float) -> None: ...
    def forecast(self, id: int) -> ForecastInfo: ...
    def customer(self, id: int, now_ns: Optional[int] = None) -> CustomerInfo: ...
    def stats(self) -> StatsInfo: ...
    def ledger(self, now_ns: int) -> LedgerInfo: ...
    def check(self) -> None: ...
    def flush(self) -> None: ...
    def snapshot(self, path: _Path) -> SnapshotInfo: ...
    def capture_snapshot(self, into: Optional[SnapshotCapture] = None) -> SnapshotCapture: ...

@final
class SnapshotCapture:
    """A consistent copy of a store held in memory, to be written without holding the engine."""

    def write(self, path: _Path) -> SnapshotInfo: ...
    @property
    def bytes(self) -> int: ...
    @property
    def held(self) -> int: ...
    @property
    def last_committed(self) -> int: ...

@final
class History:
    """Per-customer usage (tokens) over the same consecutive windows."""

    def __new__(
        cls,
        customers: _U64,
        usage: npt.NDArray[np.float64],
        *,
        window_s: int,
        start_s: int = 0,
        requests: Optional[npt.NDArray[np.float64]] = None,
    ) -> History: ...
    @staticmethod
    def from_csv(path: _Path) -> History: ...
    @property
    def customers(self) -> _U64: ...
    @property
    def usage(self) -> npt.NDArray[np.float64]: ...
    @property
    def window_s(self) -> int: ...
    @property
    def start_s(self) -> int: ...
    @property
    def num_customers(self) -> int: ...
    @property
    def num_windows(self) -> int: ...
    def split(self, k: int) -> tuple[History, History]: ...

@final
class Model:
    """The weights of a streaming LSTM forecaster."""

    @staticmethod
    def random(
        *,
        hidden: Optional[int] = None,
        layers: Optional[int] = None,
        horizons: Optional[Sequence[int]] = None,
        feeds: Optional[Sequence[str]] = None,
        seed: int = 0,
    ) -> Model: ...
    @staticmethod
    def load(path: _Path) -> Model: ...
    def save(self, path: _Path) -> None: ...
    @property
    def spec(self) -> ModelSpecInfo: ...
    @property
    def feature_names(self) -> list[str]: ...
    @property
    def feature_mean(self) -> npt.NDArray[np.float32]: ...
    @property
    def feature_std(self) -> npt.NDArray[np.float32]: ...
    @property
    def scale_half_life(self) -> float: ...
    def tensors(self) -> dict[str, npt.NDArray[np.float32]]: ...
    def metadata(self) -> dict[str, str]: ...
    def __eq__(self, value: object, /) -> bool: ...

@final
class TrainResult:
    """The result of `train`: the model and its learning curves."""

    @property
    def model(self) -> Model: ...
    @property
    def epochs_run(self) -> int: ...
    @property
    def best_epoch(self) -> int: ...
    @property
    def train_losses(self) -> list[float]: ...
    @property
    def val_losses(self) -> list[float]: ...

def evaluate(
    history: History,
    forecaster: Union[str, Model],
    *,
    train_windows: int,
    horizons: Optional[Sequence[int]] = None,
    reserve: str = "p90",
    alpha: float = 0.5,
    period: int = 144,
    half_life: float = 144.0,
    scenario_half_life: Optional[float] = None,
) -> EvaluationReport: ...
def train(
    history: History,
    *,
    hidden: Optional[int] = None,
    layers: Optional[int] = None,
    horizons: Optional[Sequence[int]] = None,
    feeds: Optional[Sequence[str]] = None,
    epochs: int = 30,
    batch_customers: int = 16,
    bptt: int = 48,
    learning_rate: float = 0.003,
    seed: int = 0,
    validation_fraction: float = 0.1,
    patience: int = 5,
    scale_half_life: float = 1440.0,
    loss: Optional[dict[str, float]] = None,
    progress: Optional[Callable[[ProgressInfo], object]] = None,
) -> TrainResult: ...
