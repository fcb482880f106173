//! `shadowbucket.Engine`: the engine over one store file.
//!
//! # Thread model
//! The engine lives in an `RwLock` inside the Python object. Every method first releases the GIL
//! (`Python::detach`), then takes the lock (shared for queries, exclusive for changes), does the
//! engine work, and lets go of the lock before it takes the GIL back. So other Python threads
//! run while the engine works, queries from several threads run together, changes run one at a
//! time, and no thread ever waits for the lock while holding the GIL (no deadlock between the
//! two). The batch calls are also parallel inside, on rayon's pool. A `SnapshotCapture` has a lock
//! of its own, taken the same way; `capture_snapshot(into=...)` takes it before the engine's, so a
//! recapture that waits for another thread's write of the capture does not hold the engine.
//!
//! Arrays passed to a batch call are borrowed, not copied, while the GIL is released: another
//! Python thread must not write into them during the call (numpy gives no way to stop it).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::RwLock;

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};
use shadowbucket::engine::Ledger;
use shadowbucket::forecast::QuantileLevel;
use shadowbucket::{
    Contract, CreateOptions, CustomerView, EngineConfig, Event, Forecast, GrantPath, Keys, Outcome,
    Predictor, Rate, Reservation, ReservationPolicy, Stats, Target, TickReport,
};

use crate::arrays::{array1, same_len, slice};
use crate::errors::{Failure, IntoPyResult, invalid, wrong_type};
use crate::model::Model;

type Core = shadowbucket::Engine;

/// Converts a rate in tokens per second (a Python float or int) to the engine's exact rate,
/// rounded to the nearest micro-token per second.
pub fn rate(py: Python<'_>, tokens_per_sec: f64, what: &str) -> PyResult<Rate> {
    let micros = tokens_per_sec * 1e6;
    if !micros.is_finite() || micros < 0.5 || micros > u64::MAX as f64 {
        return Err(invalid(
            py,
            format!(
                "{what} must be a positive, finite number of tokens per second (at least 1e-6), \
                 got {tokens_per_sec}"
            ),
        ));
    }
    Ok(Rate::from_micros_per_sec(micros.round() as u64))
}

/// A share in `0.0..=1.0` as parts per million.
fn ppm(py: Python<'_>, share: f64, what: &str) -> PyResult<u32> {
    if !(0.0..=1.0).contains(&share) {
        return Err(invalid(
            py,
            format!("{what} must be a share between 0 and 1, got {share}"),
        ));
    }
    Ok((share * 1e6).round() as u32)
}

/// A contract from Python's numbers.
fn contract(
    py: Python<'_>,
    burst: u64,
    rate_tps: f64,
    weight: u16,
    what: &str,
) -> PyResult<Contract> {
    Ok(Contract::new(burst, rate(py, rate_tps, what)?).with_weight(weight))
}

/// Tokens as a float, from femto-tokens.
fn tokens(femto: i128) -> f64 {
    femto as f64 / shadowbucket::fixed::FEMTO_PER_TOKEN as f64
}

/// `shadowbucket.Outcome(code)`.
fn outcome<'py>(py: Python<'py>, o: Outcome) -> PyResult<Bound<'py, PyAny>> {
    static OUTCOME: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    OUTCOME
        .import(py, "shadowbucket._outcome", "Outcome")?
        .call1((o as u8,))
}

/// A shadowbucket engine over one memory-mapped store file.
///
/// Open one with `Engine.create(...)` or `Engine.open(path)`, use it as a context manager (or
/// call `close()`), and pass `now_ns` (your monotonic clock, in nanoseconds) to every call that
/// changes state.
#[pyclass(frozen, module = "shadowbucket._native")]
pub struct Engine {
    inner: RwLock<Option<Core>>,
    path: PathBuf,
}

impl Engine {
    fn new(core: Core) -> Engine {
        Engine {
            path: core.path().to_path_buf(),
            inner: RwLock::new(Some(core)),
        }
    }

    /// Runs `f` on the engine with the GIL released and the lock held shared.
    fn read<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Core) -> Result<R, Failure> + Send,
    ) -> PyResult<R> {
        py.detach(|| {
            let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
            let eng = guard.as_ref().ok_or(Failure::Closed)?;
            catch_unwind(AssertUnwindSafe(|| f(eng))).unwrap_or_else(|p| {
                drop(guard);
                Err(self.broken(p))
            })
        })
        .py(py)
    }

    /// Runs `f` on the engine with the GIL released and the lock held exclusively.
    fn write<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Core) -> Result<R, Failure> + Send,
    ) -> PyResult<R> {
        py.detach(|| self.write_detached(f)).py(py)
    }

    /// [`Engine::write`] for a caller that has released the GIL already.
    fn write_detached<R>(
        &self,
        f: impl FnOnce(&mut Core) -> Result<R, Failure>,
    ) -> Result<R, Failure> {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let eng = guard.as_mut().ok_or(Failure::Closed)?;
        catch_unwind(AssertUnwindSafe(|| f(eng))).unwrap_or_else(|p| {
            drop(guard);
            Err(self.broken(p))
        })
    }

    /// After a panic inside the engine: closes it (a transaction it left unfinished is rolled
    /// back when the store is opened again) and describes the panic.
    fn broken(&self, payload: Box<dyn std::any::Any + Send>) -> Failure {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        *guard = None;
        Failure::Panic(panic_message(payload.as_ref()))
    }
}

/// A panic's message, as far as its payload says.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

fn customer_dict<'py>(py: Python<'py>, v: &CustomerView) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", v.id)?;
    d.set_item("slot", v.slot)?;
    d.set_item("burst", v.contract.burst)?;
    d.set_item("rate", v.contract.rate.as_tokens_per_sec_f64())?;
    d.set_item("weight", v.contract.weight)?;
    d.set_item("std_tokens", tokens(v.std_femto))?;
    d.set_item("std_femto", v.std_femto)?;
    d.set_item("shadow_tokens", tokens(v.shadow_femto))?;
    d.set_item("shadow_femto", v.shadow_femto)?;
    d.set_item("reserved_rate", v.reserved_rate.as_tokens_per_sec_f64())?;
    d.set_item("shadow_capacity", v.shadow_capacity)?;
    d.set_item("flagged", v.flagged)?;
    d.set_item("outstanding", v.outstanding)?;
    for (key, c) in [
        ("last_interval", &v.last_interval),
        ("this_interval", &v.this_interval),
    ] {
        let i = PyDict::new(py);
        i.set_item("granted_shadow", c.granted_shadow)?;
        i.set_item("granted_pool", c.granted_pool)?;
        i.set_item("requests", c.requests)?;
        i.set_item("fallbacks", c.fallbacks)?;
        i.set_item("denied_customer", c.denied_customer)?;
        i.set_item("denied_pool", c.denied_pool)?;
        i.set_item("refunded", c.refunded)?;
        i.set_item("debt", c.debt)?;
        d.set_item(key, i)?;
    }
    d.set_item("forecast", PyArray1::from_slice(py, &v.forecast))?;
    d.set_item("scenarios", PyArray1::from_slice(py, &v.scenarios))?;
    Ok(d)
}

fn stats_dict<'py>(py: Python<'py>, s: &Stats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let c = &s.counters;
    for (k, v) in [
        ("requests", c.requests),
        ("shadow_grants", c.shadow_grants),
        ("pool_grants", c.pool_grants),
        ("denied_customer", c.denied_customer),
        ("denied_pool", c.denied_pool),
        ("exceeds_burst", c.exceeds_burst),
        ("unknown", c.unknown),
        ("invalid", c.invalid),
        ("tokens_shadow", c.tokens_shadow),
        ("tokens_pool", c.tokens_pool),
        ("tokens_refunded", c.tokens_refunded),
        ("tokens_debt", c.tokens_debt),
        ("settles", c.settles),
        ("bumps", c.bumps),
        ("ticks", c.ticks),
        ("flagged", c.flagged),
        ("batches", c.batches),
        ("customers", s.customers),
        ("capacity", s.capacity),
        ("reserved_rate_micros", s.reserved_rate_micros),
        ("reserved_capacity", s.reserved_capacity),
        ("last_committed", s.last_committed),
        ("last_rolled_back", s.last_rolled_back),
    ] {
        d.set_item(k, v)?;
    }
    d.set_item("femto_returned", c.femto_returned)?;
    d.set_item("femto_lost_at_cap", c.femto_lost_at_cap)?;
    d.set_item("pool_femto", s.pool_femto)?;
    d.set_item("pool_tokens", tokens(s.pool_femto))?;
    d.set_item(
        "reserved_rate",
        Rate::from_micros_per_sec(s.reserved_rate_micros).as_tokens_per_sec_f64(),
    )?;
    Ok(d)
}

fn tick_dict<'py>(py: Python<'py>, r: &TickReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("customers", r.customers)?;
    d.set_item("asked_rate_micros", r.asked_rate_micros)?;
    d.set_item("reserved_rate_micros", r.reserved_rate_micros)?;
    d.set_item("reserved_capacity", r.reserved_capacity)?;
    d.set_item("cut_back", r.cut_back)?;
    d.set_item("flagged", r.flagged)?;
    Ok(d)
}

fn forecast_dict<'py>(py: Python<'py>, f: &Forecast) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("horizons", PyArray1::from_slice(py, &f.horizons))?;
    let col = |g: fn(&shadowbucket::forecast::Quantiles) -> f64| -> Vec<f64> {
        f.values.iter().map(g).collect()
    };
    d.set_item("mean", PyArray1::from_vec(py, col(|q| q.mean)))?;
    d.set_item("p50", PyArray1::from_vec(py, col(|q| q.p50)))?;
    d.set_item("p90", PyArray1::from_vec(py, col(|q| q.p90)))?;
    d.set_item("p99", PyArray1::from_vec(py, col(|q| q.p99)))?;
    d.set_item("scenarios", PyArray1::from_slice(py, &f.scenario))?;
    d.set_item("scale", f.scale)?;
    Ok(d)
}

fn ledger_dict<'py>(py: Python<'py>, l: &Ledger) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("supplied", l.supplied)?;
    d.set_item("in_pool", l.in_pool)?;
    d.set_item("in_shadows", l.in_shadows)?;
    d.set_item("granted_net", l.granted_net)?;
    d.set_item("lost_at_cap", l.lost_at_cap)?;
    d.set_item("balanced", l.balanced())?;
    Ok(d)
}

fn outcomes_u8(o: Vec<Outcome>) -> Vec<u8> {
    o.into_iter().map(|o| o as u8).collect()
}

type BatchArrays<'py> = (Bound<'py, PyArray1<u8>>, Bound<'py, PyArray1<u64>>);

#[pymethods]
impl Engine {
    /// Creates a new store file at `path` (which must not exist) and opens it for writing.
    #[staticmethod]
    #[pyo3(signature = (
        path, *, capacity, pool_burst, pool_rate, alpha = 0.8, interval_ns = 60_000_000_000,
        contention_high = 0.5, contention_low = 0.2, contention_ticks = 3,
        contention_min_requests = 1, now_ns = 0, model = None, forecaster_columns = true
    ))]
    #[expect(
        clippy::too_many_arguments,
        reason = "keyword arguments of a Python constructor"
    )]
    fn create(
        py: Python<'_>,
        path: PathBuf,
        capacity: u64,
        pool_burst: u64,
        pool_rate: f64,
        alpha: f64,
        interval_ns: u64,
        contention_high: f64,
        contention_low: f64,
        contention_ticks: u8,
        contention_min_requests: u32,
        now_ns: u64,
        model: Option<&Bound<'_, Model>>,
        forecaster_columns: bool,
    ) -> PyResult<Engine> {
        let mut cfg = EngineConfig::new(pool_burst, rate(py, pool_rate, "pool_rate")?);
        cfg.alpha_ppm = ppm(py, alpha, "alpha")?;
        cfg.interval_ns = interval_ns;
        cfg.contention_high_ppm = ppm(py, contention_high, "contention_high")?;
        cfg.contention_low_ppm = ppm(py, contention_low, "contention_low")?;
        cfg.contention_ticks = contention_ticks;
        cfg.contention_min_requests = contention_min_requests;
        let mut opts = CreateOptions::new(capacity, cfg).at(now_ns);
        if let Some(m) = model {
            opts = opts.for_model(&m.get().inner.spec);
        }
        if !forecaster_columns {
            opts = opts.without_model();
        }
        let core = py.detach(|| Core::create(&path, opts)).py(py)?;
        Ok(Engine::new(core))
    }

    /// Opens an existing store: for writing (taking its lock, and rolling back a transaction a
    /// killed process left unfinished), or read-only.
    #[staticmethod]
    #[pyo3(signature = (path, *, read_only = false))]
    fn open(py: Python<'_>, path: PathBuf, read_only: bool) -> PyResult<Engine> {
        let core = py
            .detach(|| {
                if read_only {
                    Core::open_read_only(&path)
                } else {
                    Core::open(&path)
                }
            })
            .py(py)?;
        Ok(Engine::new(core))
    }

    /// Flushes the store and closes it (releasing its lock). Closing twice does nothing; any
    /// other call on a closed engine raises `ClosedError`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
            match guard.take() {
                Some(e) => e.flush(),
                None => Ok(()),
            }
        })
        .py(py)
    }

    /// Whether `close()` has been called.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        // (without the GIL, like every wait for the lock: a long call holds it)
        py.detach(|| {
            self.inner
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_none()
        })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let state = if self.closed(py) { "closed" } else { "open" };
        format!("<shadowbucket.Engine {:?} ({state})>", self.path)
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.read(py, |e| Ok(e.len() as usize))
    }

    /// The store's path.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Customer slots in the store.
    #[getter]
    fn capacity(&self, py: Python<'_>) -> PyResult<u64> {
        self.read(py, |e| Ok(e.capacity()))
    }

    /// The sequence number of the transaction rolled back when the store was opened, if a killed
    /// process had left one unfinished.
    #[getter]
    fn recovered(&self, py: Python<'_>) -> PyResult<Option<u64>> {
        self.read(py, |e| Ok(e.recovered()))
    }

    /// The engine's configuration, as a dict.
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.read(py, |e| Ok(e.config()))?;
        let d = PyDict::new(py);
        d.set_item("pool_burst", c.pool_burst)?;
        d.set_item("pool_rate", c.pool_rate.as_tokens_per_sec_f64())?;
        d.set_item("alpha", c.alpha_ppm as f64 / 1e6)?;
        d.set_item("interval_ns", c.interval_ns)?;
        d.set_item("contention_high", c.contention_high_ppm as f64 / 1e6)?;
        d.set_item("contention_low", c.contention_low_ppm as f64 / 1e6)?;
        d.set_item("contention_ticks", c.contention_ticks)?;
        d.set_item("contention_min_requests", c.contention_min_requests)?;
        Ok(d)
    }

    // ---- customers ---------------------------------------------------------------------------

    /// Adds a customer with a full standard bucket and no reservation; returns its slot.
    #[pyo3(signature = (id, *, burst, rate, weight = 1, now_ns = 0))]
    fn add_customer(
        &self,
        py: Python<'_>,
        id: u64,
        burst: u64,
        rate: f64,
        weight: u16,
        now_ns: u64,
    ) -> PyResult<u32> {
        let c = contract(py, burst, rate, weight, "rate")?;
        self.write(py, |e| Ok(e.add_customer(id, c, now_ns)?))
    }

    /// Adds many customers in one transaction (all or none); returns their slots.
    #[pyo3(signature = (ids, bursts, rates, weights = None, *, now_ns = 0))]
    fn add_customers<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'py, PyAny>,
        bursts: &Bound<'py, PyAny>,
        rates: &Bound<'py, PyAny>,
        weights: Option<&Bound<'py, PyAny>>,
        now_ns: u64,
    ) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let (ids_a, bursts_a, rates_a) = (
            array1::<u64>(ids, "ids")?,
            array1::<u64>(bursts, "bursts")?,
            array1::<f64>(rates, "rates")?,
        );
        let weights_a = weights.map(|w| array1::<u16>(w, "weights")).transpose()?;
        let ids_s = slice(&ids_a, "ids")?;
        let bursts_s = slice(&bursts_a, "bursts")?;
        let rates_s = slice(&rates_a, "rates")?;
        let weights_s = weights_a
            .as_ref()
            .map(|w| slice(w, "weights"))
            .transpose()?;
        let n = ids_s.len();
        same_len(
            py,
            n,
            &[
                ("bursts", bursts_s.len()),
                ("rates", rates_s.len()),
                ("weights", weights_s.map_or(n, |w| w.len())),
            ],
            "ids",
        )?;
        let mut customers = Vec::with_capacity(n);
        for i in 0..n {
            let w = weights_s.map_or(1, |w| w[i]);
            let what = format!("rates[{i}]");
            customers.push((ids_s[i], contract(py, bursts_s[i], rates_s[i], w, &what)?));
        }
        let slots = self.write(py, |e| Ok(e.add_customers(&customers, now_ns)?))?;
        Ok(PyArray1::from_vec(py, slots))
    }

    /// Changes a customer's contract, keeping its tokens (capped at the new burst).
    #[pyo3(signature = (id, *, burst, rate, weight = 1, now_ns = 0))]
    fn update_contract(
        &self,
        py: Python<'_>,
        id: u64,
        burst: u64,
        rate: f64,
        weight: u16,
        now_ns: u64,
    ) -> PyResult<()> {
        let c = contract(py, burst, rate, weight, "rate")?;
        self.write(py, |e| Ok(e.update_contract(id, c, now_ns)?))
    }

    /// Removes a customer; its shadow balance goes back to the pool.
    #[pyo3(signature = (id, *, now_ns = 0))]
    fn remove_customer(&self, py: Python<'_>, id: u64, now_ns: u64) -> PyResult<()> {
        self.write(py, |e| Ok(e.remove_customer(id, now_ns)?))
    }

    /// Moves the store to a larger file (slots are kept).
    fn grow(&self, py: Python<'_>, new_capacity: u64) -> PyResult<()> {
        self.write(py, |e| Ok(e.grow(new_capacity)?))
    }

    /// The slot of customer `id`, or None.
    fn slot_of(&self, py: Python<'_>, id: u64) -> PyResult<Option<u32>> {
        self.read(py, |e| Ok(e.slot_of(id)))
    }

    /// Resolves ids to slots (`NO_SLOT` for unknown ids).
    fn resolve<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let a = array1::<u64>(ids, "ids")?;
        let s = slice(&a, "ids")?;
        let out = self.read(py, |e| {
            let mut out = vec![shadowbucket::NO_SLOT; s.len()];
            e.resolve(s, &mut out)?;
            Ok(out)
        })?;
        Ok(PyArray1::from_vec(py, out))
    }

    /// Ids of all customers, in slot order.
    fn customer_ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let v = self.read(py, |e| Ok(e.customer_ids()))?;
        Ok(PyArray1::from_vec(py, v))
    }

    /// Ids of the customers whose contention flag is raised, in slot order.
    fn flagged<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let v = self.read(py, |e| Ok(e.flagged()))?;
        Ok(PyArray1::from_vec(py, v))
    }

    // ---- allocation --------------------------------------------------------------------------

    /// One request for `tokens` by customer `id` at `now_ns`: `(outcome, retry_after_ns)`.
    fn allocate<'py>(
        &self,
        py: Python<'py>,
        id: u64,
        tokens: u64,
        now_ns: u64,
    ) -> PyResult<(Bound<'py, PyAny>, u64)> {
        let d = self.write(py, |e| Ok(e.allocate(id, tokens, now_ns)?))?;
        Ok((outcome(py, d.outcome)?, d.retry_after_ns))
    }

    /// A batch of requests by customer id: `(outcomes uint8, retry_after_ns uint64)`, exactly as
    /// if the requests were applied one at a time in order.
    fn allocate_batch<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'py, PyAny>,
        tokens: &Bound<'py, PyAny>,
        now_ns: u64,
    ) -> PyResult<BatchArrays<'py>> {
        let ids_a = array1::<u64>(ids, "ids")?;
        self.batch(py, Keys::Ids(slice(&ids_a, "ids")?), tokens, now_ns, "ids")
    }

    /// A batch of requests by slot (see `resolve`); as `allocate_batch`.
    fn allocate_slots<'py>(
        &self,
        py: Python<'py>,
        slots: &Bound<'py, PyAny>,
        tokens: &Bound<'py, PyAny>,
        now_ns: u64,
    ) -> PyResult<BatchArrays<'py>> {
        let slots_a = array1::<u32>(slots, "slots")?;
        self.batch(
            py,
            Keys::Slots(slice(&slots_a, "slots")?),
            tokens,
            now_ns,
            "slots",
        )
    }

    /// Reports what a granted request used: `granted` tokens admitted with `outcome`
    /// (`Outcome.GRANTED_SHADOW` or `Outcome.GRANTED_POOL`), `used` consumed.
    #[pyo3(signature = (id, granted, used, outcome, now_ns))]
    fn settle(
        &self,
        py: Python<'_>,
        id: u64,
        granted: u64,
        used: u64,
        outcome: u8,
        now_ns: u64,
    ) -> PyResult<()> {
        let path = match Outcome::from_code(outcome) {
            Some(Outcome::GrantedShadow) => GrantPath::Shadow,
            Some(Outcome::GrantedPool) => GrantPath::Pool,
            _ => {
                return Err(invalid(
                    py,
                    format!(
                        "settle: outcome must be Outcome.GRANTED_SHADOW (0) or \
                         Outcome.GRANTED_POOL (1), got {outcome}"
                    ),
                ));
            }
        };
        self.write(py, |e| Ok(e.settle(id, granted, used, path, now_ns)?))
    }

    // ---- tick --------------------------------------------------------------------------------

    /// The tick with explicit reservations: closes every customer's interval, releases the old
    /// reservations and sets these (`rates` in tokens per second, `capacities` in tokens; the
    /// customers not listed get none), cut back to the reservable budget.
    #[pyo3(signature = (now_ns, slots, rates, capacities))]
    fn tick_with<'py>(
        &self,
        py: Python<'py>,
        now_ns: u64,
        slots: &Bound<'py, PyAny>,
        rates: &Bound<'py, PyAny>,
        capacities: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let (sa, ra, ca) = (
            array1::<u32>(slots, "slots")?,
            array1::<f64>(rates, "rates")?,
            array1::<u64>(capacities, "capacities")?,
        );
        let (ss, rs, cs) = (
            slice(&sa, "slots")?,
            slice(&ra, "rates")?,
            slice(&ca, "capacities")?,
        );
        same_len(
            py,
            ss.len(),
            &[("rates", rs.len()), ("capacities", cs.len())],
            "slots",
        )?;
        let mut res = Vec::with_capacity(ss.len());
        for i in 0..ss.len() {
            let r = if rs[i] == 0.0 {
                Rate::from_micros_per_sec(0)
            } else {
                rate(py, rs[i], &format!("rates[{i}]"))?
            };
            res.push(Reservation {
                slot: ss[i],
                rate: r,
                capacity: cs[i],
            });
        }
        let r = self.write(py, |e| Ok(e.tick_with(now_ns, &res)?))?;
        tick_dict(py, &r)
    }

    /// The predictive tick: closes every customer's interval, steps the predictor for every
    /// customer, writes forecasts and scenario probabilities, and sets the reservations the
    /// policy makes of them.
    fn tick<'py>(&self, py: Python<'py>, now_ns: u64) -> PyResult<Bound<'py, PyDict>> {
        let r = self.write(py, |e| Ok(e.tick(now_ns)?))?;
        tick_dict(py, &r)
    }

    /// Sets the forecaster of the predictive tick: a `Model` (the LSTM), or a baseline by name:
    /// `'last_value'`, `'ewma'` (`alpha`), `'seasonal_naive'` (`period`, in intervals) or
    /// `'autopilot'` (`half_life`, in intervals).
    #[pyo3(signature = (predictor, *, alpha = 0.5, period = 1440, half_life = 1440.0))]
    fn set_predictor(
        &self,
        py: Python<'_>,
        predictor: &Bound<'_, PyAny>,
        alpha: f64,
        period: usize,
        half_life: f64,
    ) -> PyResult<()> {
        let p = if let Ok(m) = predictor.cast::<Model>() {
            Predictor::Lstm(Box::new(m.get().inner.clone()))
        } else if let Ok(name) = predictor.extract::<String>() {
            match name.as_str() {
                "last_value" => Predictor::LastValue,
                "ewma" => Predictor::Ewma { alpha },
                "seasonal_naive" => Predictor::SeasonalNaive { period },
                "autopilot" => Predictor::Autopilot { half_life },
                _ => {
                    return Err(invalid(
                        py,
                        format!(
                            "unknown predictor {name:?}: expected a Model, 'last_value', \
                             'ewma', 'seasonal_naive' or 'autopilot'"
                        ),
                    ));
                }
            }
        } else {
            return Err(wrong_type(
                py,
                format!(
                    "predictor must be a shadowbucket.Model or a baseline's name, got {}",
                    predictor.get_type().name()?
                ),
            ));
        };
        self.write(py, |e| Ok(e.set_predictor(p)?))
    }

    /// Loads a model saved in the safetensors format and sets it as the predictor.
    fn load_model(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        self.write(py, |e| Ok(e.load_model(&path)?))
    }

    /// The predictor in use, described (e.g. `'ewma(a=0.5)'`, `'lstm(hidden=32, layers=1) on cpu'`).
    #[getter]
    fn predictor(&self, py: Python<'_>) -> PyResult<String> {
        self.read(py, |e| Ok(e.predictor_name()))
    }

    /// Zeroes every customer's recurrent state (when switching to a different model).
    fn reset_model_state(&self, py: Python<'_>) -> PyResult<()> {
        self.write(py, |e| Ok(e.reset_model_state()?))
    }

    /// Sets how forecasts become reservations: the `target` (`'mean'`, `'p50'`, `'p90'`,
    /// `'p99'`, or `'scenario'` with `probability`) of the forecast at horizon index `horizon`,
    /// times `headroom`, is the reserved use per interval; the shadow capacity holds
    /// `capacity_intervals` intervals of it.
    #[pyo3(signature = (
        *, horizon = 0, target = "p90", probability = 0.9, headroom = 1.0,
        capacity_intervals = 1.0
    ))]
    fn set_policy(
        &self,
        py: Python<'_>,
        horizon: usize,
        target: &str,
        probability: f64,
        headroom: f64,
        capacity_intervals: f64,
    ) -> PyResult<()> {
        let target = match target {
            "mean" => Target::Mean,
            "p50" => Target::Quantile(QuantileLevel::P50),
            "p90" => Target::Quantile(QuantileLevel::P90),
            "p99" => Target::Quantile(QuantileLevel::P99),
            "scenario" => Target::Scenario { probability },
            _ => {
                return Err(invalid(
                    py,
                    format!(
                        "target must be 'mean', 'p50', 'p90', 'p99' or 'scenario', got {target:?}"
                    ),
                ));
            }
        };
        let policy = ReservationPolicy {
            horizon,
            target,
            headroom,
            capacity_intervals,
        };
        self.write(py, |e| Ok(e.set_policy(policy)?))
    }

    /// Tells the forecaster about an event (a campaign, a launch) from `start_ns` to `end_ns`,
    /// for one customer or (`customer=None`) for all; returns its id.
    #[pyo3(signature = (*, start_ns, end_ns, intensity = 1.0, kind = 0, customer = None))]
    fn add_event(
        &self,
        py: Python<'_>,
        start_ns: u64,
        end_ns: u64,
        intensity: f32,
        kind: u32,
        customer: Option<u64>,
    ) -> PyResult<u64> {
        let ev = Event {
            customer,
            kind,
            intensity,
            start_ns,
            end_ns,
        };
        self.write(py, |e| Ok(e.add_event(ev)?))
    }

    /// Removes an event by id.
    fn remove_event(&self, py: Python<'_>, id: u64) -> PyResult<()> {
        self.write(py, |e| Ok(e.remove_event(id)?))
    }

    /// Sets an external feed (a named global signal a model may read).
    fn set_signal(&self, py: Python<'_>, name: &str, value: f32) -> PyResult<()> {
        self.write(py, |e| Ok(e.set_signal(name, value)?))
    }

    /// A customer's forecast as the last tick left it: `horizons` (intervals), `mean`, `p50`,
    /// `p90`, `p99` (arrays, one value per horizon, tokens per interval), `scenarios` (low,
    /// medium, high, spike probabilities) and `scale`.
    fn forecast<'py>(&self, py: Python<'py>, id: u64) -> PyResult<Bound<'py, PyDict>> {
        let f = self.read(py, |e| Ok(e.forecast(id)?))?;
        forecast_dict(py, &f)
    }

    // ---- queries -----------------------------------------------------------------------------

    /// A customer, as a dict; with `now_ns`, as it would be at that instant (nothing is written).
    #[pyo3(signature = (id, now_ns = None))]
    fn customer<'py>(
        &self,
        py: Python<'py>,
        id: u64,
        now_ns: Option<u64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let v = self.read(py, |e| {
            Ok(match now_ns {
                Some(t) => e.customer_at(id, t)?,
                None => e.customer(id)?,
            })
        })?;
        customer_dict(py, &v)
    }

    /// Engine-wide counters and pool state, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.read(py, |e| Ok(e.stats()))?;
        stats_dict(py, &s)
    }

    /// Where every femto-token of the pool's supply is at `now_ns`, as a dict.
    fn ledger<'py>(&self, py: Python<'py>, now_ns: u64) -> PyResult<Bound<'py, PyDict>> {
        let l = self.read(py, |e| Ok(e.ledger(now_ns)))?;
        ledger_dict(py, &l)
    }

    /// Checks the store's consistency; raises `BadFileError` describing the first problem.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        self.read(py, |e| Ok(e.check()?))
    }

    /// Writes everything to disk and waits for it.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.read(py, |e| Ok(e.flush()?))
    }

    /// Writes a consistent copy of the store to `path`, which then opens like any store (copy
    /// it back over a lost store to restore it).
    ///
    /// The copy holds every transaction committed before the call, with the events and signals
    /// beside it (`<path>.events`). It goes to a new file beside `path` first, is synced to the
    /// disk, then renamed over `path`, so `path` always holds the previous snapshot or the new
    /// one. Through a read-only engine it takes a shared lock on the store while it copies
    /// (`LockedError` when a writer has the store open). Returns `path`, `bytes`, `written` (the
    /// rest are runs of zeros left as holes) and `last_committed`. Raises `InvalidArgumentError`
    /// when `path` (or its events file) is the store itself or its events file, `LockedError` when
    /// a writer has `path` (or its events file) open as a store.
    fn snapshot<'py>(&self, py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
        let s = self.write(py, |e| Ok(e.snapshot(&path)?))?;
        snapshot_dict(py, s)
    }

    /// Copies the store into memory, consistently, for a snapshot written later with
    /// `SnapshotCapture.write(path)` while the engine goes on.
    ///
    /// `snapshot()` holds the engine for as long as the copy takes to reach the disk (seconds
    /// for a store of several GB); this holds it only for a copy in memory, at the price of
    /// memory for the copy (the store file's size less its runs of zeros) until the capture is
    /// dropped. With `into=`, an earlier capture, the copy goes into that capture's memory and
    /// replaces it (the same object is returned; a write of it in progress on another thread is
    /// waited for, without holding the engine): a copy into new memory faults in every page of
    /// it, and one into a capture of the same store does not, so a service that snapshots on a
    /// schedule keeps one capture. Through a read-only engine it holds a shared lock on the store
    /// only while it copies (`LockedError` when a writer has the store open).
    #[pyo3(signature = (into = None))]
    fn capture_snapshot(
        &self,
        py: Python<'_>,
        into: Option<Py<SnapshotCapture>>,
    ) -> PyResult<Py<SnapshotCapture>> {
        match into {
            None => {
                let inner = self.write(py, |e| Ok(e.capture_snapshot()?))?;
                Py::new(
                    py,
                    SnapshotCapture {
                        inner: RwLock::new(inner),
                    },
                )
            }
            Some(cap) => {
                let c = cap.get();
                // The capture's lock first, then the engine's: waiting for another thread's
                // write of the capture (as long as the disk takes) must not hold the engine.
                py.detach(|| {
                    let mut inner = c.inner.write().unwrap_or_else(|p| p.into_inner());
                    self.write_detached(|e| Ok(e.capture_snapshot_into(&mut inner)?))
                })
                .py(py)?;
                Ok(cap)
            }
        }
    }
}

/// What a snapshot wrote, as the dict Python gets.
fn snapshot_dict(py: Python<'_>, s: shadowbucket::Snapshot) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("path", s.path)?;
    d.set_item("bytes", s.bytes)?;
    d.set_item("written", s.written)?;
    d.set_item("last_committed", s.last_committed)?;
    Ok(d)
}

/// A consistent copy of a store held in memory (`Engine.capture_snapshot()`), to be written to a
/// snapshot file without holding the engine. Nothing the engine does afterwards changes it; it
/// may be written after the engine is closed, from any thread, and to several paths. Dropping it
/// frees the memory.
#[pyclass(frozen, module = "shadowbucket._native")]
pub struct SnapshotCapture {
    /// Read by writes and queries, replaced by `Engine.capture_snapshot(into=...)`; taken only
    /// with the GIL released, as the engine's lock is, and never while an engine's lock is held
    /// (a recapture takes this one first, then the engine's).
    inner: RwLock<shadowbucket::SnapshotCapture>,
}

impl SnapshotCapture {
    /// Runs `f` on the capture with the GIL released and the lock held shared.
    fn read<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&shadowbucket::SnapshotCapture) -> R + Send,
    ) -> R {
        py.detach(|| f(&self.inner.read().unwrap_or_else(|p| p.into_inner())))
    }
}

#[pymethods]
impl SnapshotCapture {
    /// Writes the copy to `path` exactly as `Engine.snapshot(path)` would have written the store
    /// when it was captured (a new file beside `path`, synced, renamed over it, the events file
    /// beside it), with the GIL released. Returns `path`, `bytes`, `written` and
    /// `last_committed`. Raises `InvalidArgumentError` when `path` (or its events file) is the
    /// store the copy was captured from or that store's events file, `LockedError` when a writer
    /// has `path` (or its events file) open as a store. Writes may run on several threads at
    /// once; in one process, two to one path take turns.
    fn write<'py>(&self, py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
        let s = self
            .read(py, |c| {
                catch_unwind(AssertUnwindSafe(|| c.write(&path).map_err(Failure::Core)))
                    .unwrap_or_else(|p| Err(Failure::Panic(panic_message(p.as_ref()))))
            })
            .py(py)?;
        snapshot_dict(py, s)
    }

    /// The store file's length in bytes.
    #[getter]
    fn bytes(&self, py: Python<'_>) -> u64 {
        self.read(py, |c| c.bytes())
    }

    /// Bytes of the store the copy holds (the store file's, less its runs of zeros).
    #[getter]
    fn held(&self, py: Python<'_>) -> u64 {
        self.read(py, |c| c.held())
    }

    /// The last transaction the copy holds (`stats()["last_committed"]` when it was captured).
    #[getter]
    fn last_committed(&self, py: Python<'_>) -> u64 {
        self.read(py, |c| c.last_committed())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        self.read(py, |c| {
            format!(
                "<shadowbucket.SnapshotCapture last_committed={} bytes={} held={}>",
                c.last_committed(),
                c.bytes(),
                c.held()
            )
        })
    }
}

impl Engine {
    fn batch<'py>(
        &self,
        py: Python<'py>,
        keys: Keys<'_>,
        tokens: &Bound<'py, PyAny>,
        now_ns: u64,
        first: &str,
    ) -> PyResult<BatchArrays<'py>> {
        let ta: PyReadonlyArray1<'py, u64> = array1::<u64>(tokens, "tokens")?;
        let ts = slice(&ta, "tokens")?;
        let n = match keys {
            Keys::Ids(x) => x.len(),
            Keys::Slots(x) => x.len(),
        };
        same_len(py, n, &[("tokens", ts.len())], first)?;
        let (o, r) = self.write(py, |e| {
            let out = e.allocate_batch(keys, ts, now_ns)?;
            Ok((outcomes_u8(out.outcomes), out.retry_after_ns))
        })?;
        Ok((PyArray1::from_vec(py, o), PyArray1::from_vec(py, r)))
    }
}
