//! The predictive tick and the engine's forecaster settings.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rayon::prelude::*;

use super::{Event, EventBook, Forecast, Predictor, ReservationPolicy, Target};
use crate::engine::{Engine, TickReport};
use crate::error::{Error, Result};
use crate::fixed::{MAX_BURST_TOKENS, MAX_RATE_MICROS};
use crate::forecast::{Autopilot, Ewma, Forecaster, LastValue, Quantiles, SeasonalNaive};
use crate::layout::{Bucket, Settled};
use crate::model::features::{IntervalUsage, Scale, customer_features, global_features};
use crate::model::spec::{CUSTOMER_FEATURES, FORECAST_PER_HORIZON, SCENARIO_EDGES, scenario_of};
use crate::model::step::decode_block;
use crate::model::{CpuBackend, LstmModel, ModelSpec, StepBackend};

/// Slots per parallel chunk of the tick's per-customer work.
const CHUNK: usize = 4096;

/// Customers per block of the decode (head outputs and scratch stay in L1/L2).
const DECODE_BLOCK: usize = 256;

/// Weight of the newest interval in a baseline-driven store's customer scale (a half-life of
/// 1,440 intervals, as the LSTM's default).
const BASELINE_SCALE_HALF_LIFE: f32 = 1440.0;

enum Runner {
    Lstm {
        model: Box<LstmModel>,
        cpu: CpuBackend,
    },
    Baseline {
        f: Box<dyn Forecaster + Send + Sync>,
        /// The customer id each slot held when the forecaster last observed it.
        seen: Vec<u64>,
    },
}

/// The forecaster side of an engine: predictor, policy, events, signals and scratch buffers.
pub(crate) struct Predictive {
    runner: Runner,
    policy: ReservationPolicy,
    events: EventBook,
    signals: BTreeMap<String, f32>,
    backend: Option<Mutex<Box<dyn StepBackend>>>,
    backend_failed: Option<String>,
    state_stale: bool,
    ticks_since_sync: u32,
    timings: TickTimings,
    /// Customers (slots from 0) the device stepped at the last tick: its state copy's extent.
    stepped_customers: usize,
    x: Vec<f32>,
    heads: Vec<f32>,
    old_scale: Vec<f32>,
    usage: Vec<f32>,
    /// The policy's asks per slot (rate in micro-tokens/s, capacity; 0 for none).
    res_rate: Vec<u64>,
    res_cap: Vec<u64>,
}

fn runner_for(p: Predictor) -> Result<Runner> {
    Ok(match p {
        Predictor::Lstm(model) => {
            let mut cpu = CpuBackend::new();
            cpu.set_model(&model)?;
            Runner::Lstm { model, cpu }
        }
        Predictor::LastValue => baseline(LastValue::new()),
        Predictor::Ewma { alpha } => baseline(Ewma::new(alpha)?),
        Predictor::SeasonalNaive { period } => baseline(SeasonalNaive::new(period)?),
        Predictor::Autopilot { half_life } => baseline(Autopilot::new(half_life)?),
    })
}

fn baseline(f: impl Forecaster + Send + Sync + 'static) -> Runner {
    Runner::Baseline {
        f: Box::new(f),
        seen: Vec::new(),
    }
}

impl Default for Predictive {
    fn default() -> Self {
        let runner = runner_for(Predictor::default()).expect("the default predictor is valid");
        Predictive {
            runner,
            policy: ReservationPolicy::default(),
            events: EventBook::default(),
            signals: BTreeMap::new(),
            backend: None,
            backend_failed: None,
            state_stale: true,
            ticks_since_sync: 0,
            timings: TickTimings::default(),
            stepped_customers: 0,
            x: Vec::new(),
            heads: Vec::new(),
            old_scale: Vec::new(),
            usage: Vec::new(),
            res_rate: Vec::new(),
            res_cap: Vec::new(),
        }
    }
}

/// Where the last predictive tick spent its time, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickTimings {
    /// Customers stepped (the slots up to the highest in use).
    pub customers: u64,
    /// Reading usage, building features, updating scales.
    pub features_ns: u64,
    /// The predictor step (LSTM or baseline), with decoding into the forecast columns.
    pub step_ns: u64,
    /// The reservation policy.
    pub policy_ns: u64,
    /// The tick's transaction (closing intervals, setting reservations).
    pub commit_ns: u64,
}

/// What a customer used in the interval now closing, from its live counters.
fn usage_of(b: &Bucket, s: &Settled) -> IntervalUsage {
    IntervalUsage::from_closed(&b.interval_usage(s))
}

impl Engine {
    /// The store's recurrent-state column is about to change behind a device backend
    /// (customers added or removed, the store grown, a new model): first write the device's
    /// newer state back into the store (if it has stepped since its last write-back), then mark
    /// the device's copy stale so that the next step uploads the store's.
    ///
    /// With a device backend, adding or removing customers between ticks thus costs one download
    /// of the state (once per tick at most): batch such changes.
    pub(crate) fn device_state_changing(&mut self) -> Result<()> {
        self.write_back_device_state()?;
        self.predictive.state_stale = true;
        Ok(())
    }

    /// Writes a device backend's state copy back into the store if it stepped since its last
    /// write-back.
    pub(crate) fn write_back_device_state(&mut self) -> Result<()> {
        let pr = &mut self.predictive;
        if let (Some(b), None) = (&pr.backend, &pr.backend_failed)
            && pr.ticks_since_sync > 0
            && !self.store.read_only()
        {
            let mut b = b
                .lock()
                .map_err(|_| Error::invalid("step backend lock poisoned"))?;
            let c = self.store.cols_mut()?;
            let n = c.model_state.len();
            let msd = match &pr.runner {
                Runner::Lstm { model, .. } => model.spec.state_dim(),
                Runner::Baseline { .. } => 0,
            };
            if let Some(most) = n.checked_div(msd) {
                let stepped = pr.stepped_customers.min(most);
                if let Err(e) = b.sync_state(&mut c.model_state[..stepped * msd]) {
                    pr.backend_failed = Some(e.to_string());
                    return Err(e);
                }
            }
            pr.ticks_since_sync = 0;
        }
        Ok(())
    }

    fn horizons(&self) -> Vec<u32> {
        match &self.predictive.runner {
            Runner::Lstm { model, .. } => model.spec.horizons.clone(),
            Runner::Baseline { .. } => {
                let n = self.dims().forecast_dim as usize / FORECAST_PER_HORIZON;
                ModelSpec::default().horizons.into_iter().take(n).collect()
            }
        }
    }

    /// Whether the store has the columns every predictor writes (scales, scenarios, a horizon).
    fn check_forecaster_columns(&self) -> Result<()> {
        let d = self.dims();
        if d.scale_dim < 2 || d.scenario_dim < 4 || d.forecast_dim < FORECAST_PER_HORIZON as u32 {
            return Err(Error::invalid(
                "this store was created without forecaster columns (CreateOptions::without_model); \
                 use tick_with and explicit reservations",
            ));
        }
        Ok(())
    }

    fn check_columns_for(&self, p: &Predictor) -> Result<()> {
        self.check_forecaster_columns()?;
        let d = self.dims();
        if let Predictor::Lstm(m) = p {
            m.validate()?;
            if m.spec.state_dim() != d.state_dim as usize
                || m.spec.forecast_dim() > d.forecast_dim as usize
            {
                return Err(Error::invalid(format!(
                    "model needs {} floats of recurrent state and {} of forecast per customer; \
                     the store has {} and {} (create it with CreateOptions::for_model)",
                    m.spec.state_dim(),
                    m.spec.forecast_dim(),
                    d.state_dim,
                    d.forecast_dim
                )));
            }
        }
        Ok(())
    }

    /// Sets the forecaster the predictive [`tick`](Engine::tick) runs. The recurrent state, scales
    /// and forecasts in the store are kept, so reopening a store and setting the same model
    /// resumes where it was; call [`reset_model_state`](Engine::reset_model_state) when
    /// switching to a different model.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`]: an invalid model or baseline parameter, or a store whose
    /// forecaster columns do not fit the model.
    pub fn set_predictor(&mut self, p: Predictor) -> Result<()> {
        self.check_columns_for(&p)?;
        let runner = runner_for(p)?;
        self.device_state_changing()?;
        if let (Some(b), Runner::Lstm { model, .. }) = (&self.predictive.backend, &runner) {
            let mut b = b
                .lock()
                .map_err(|_| Error::invalid("step backend lock poisoned"))?;
            if let Err(e) = b.set_model(model) {
                self.predictive.backend_failed = Some(e.to_string());
            }
            b.invalidate();
        }
        self.predictive.runner = runner;
        self.predictive.state_stale = true;
        Ok(())
    }

    /// Loads a model saved in the safetensors format ([`LstmModel::load`]) and sets it as the
    /// predictor.
    ///
    /// # Errors
    /// Those of [`LstmModel::load`] and [`Engine::set_predictor`].
    pub fn load_model(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let m = LstmModel::load(path)?;
        self.set_predictor(Predictor::Lstm(Box::new(m)))
    }

    /// A short description of the predictor and where its step runs.
    pub fn predictor_name(&self) -> String {
        match &self.predictive.runner {
            Runner::Lstm { model, .. } => format!(
                "lstm(hidden={}, layers={}) on {}",
                model.spec.hidden,
                model.spec.layers,
                self.step_backend_name()
            ),
            Runner::Baseline { f, .. } => f.name(),
        }
    }

    /// Where the LSTM step runs: `"cpu"`, or the device backend's name.
    pub fn step_backend_name(&self) -> String {
        match (&self.predictive.backend, &self.predictive.backend_failed) {
            (Some(_), Some(why)) => format!("cpu (device backend failed: {why})"),
            (Some(b), None) => b.lock().map(|b| b.name()).unwrap_or_else(|_| "cpu".into()),
            (None, _) => "cpu".into(),
        }
    }

    /// Runs the LSTM step on `backend` (a GPU) instead of the CPU. If the backend fails, the
    /// tick falls back to the CPU and [`step_backend_name`](Engine::step_backend_name) says why.
    ///
    /// # Errors
    /// The backend refuses the current model.
    pub fn set_step_backend(&mut self, mut backend: Box<dyn StepBackend>) -> Result<()> {
        if let Runner::Lstm { model, .. } = &self.predictive.runner {
            backend.set_model(model)?;
        }
        backend.invalidate();
        self.predictive.backend = Some(Mutex::new(backend));
        self.predictive.backend_failed = None;
        self.predictive.state_stale = true;
        Ok(())
    }

    /// Zeroes every customer's recurrent state (for a new model).
    ///
    /// # Errors
    /// [`Error::ReadOnly`].
    pub fn reset_model_state(&mut self) -> Result<()> {
        if self.store.read_only() {
            return Err(Error::ReadOnly);
        }
        self.store.cols_mut()?.model_state.fill(0.0);
        self.predictive.ticks_since_sync = 0;
        self.predictive.state_stale = true;
        Ok(())
    }

    /// Writes a device backend's recurrent state back into the store and flushes the store.
    ///
    /// # Errors
    /// [`Error::ReadOnly`], a device failure, [`Error::Io`].
    pub fn sync_model_state(&mut self) -> Result<()> {
        self.write_back_device_state()?;
        self.flush()
    }

    /// Sets how forecasts become reservations.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a negative or non-finite multiplier, a scenario probability
    /// outside `(0, 1]`, or a horizon index the predictor does not have.
    pub fn set_policy(&mut self, policy: ReservationPolicy) -> Result<()> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !ok(policy.headroom) || !ok(policy.capacity_intervals) {
            return Err(Error::invalid(
                "policy: headroom and capacity_intervals must be finite and >= 0",
            ));
        }
        if let Target::Scenario { probability } = policy.target
            && !(probability > 0.0 && probability <= 1.0)
        {
            return Err(Error::invalid(format!(
                "policy: scenario probability must be in (0, 1], got {probability}"
            )));
        }
        let n = self.horizons().len();
        if policy.horizon >= n {
            return Err(Error::invalid(format!(
                "policy: horizon index {} but the predictor has {n} horizons",
                policy.horizon
            )));
        }
        self.predictive.policy = policy;
        Ok(())
    }

    /// The reservation policy.
    pub fn policy(&self) -> ReservationPolicy {
        self.predictive.policy
    }

    /// Tells the forecaster about an event; returns its id. Events that ended are dropped at
    /// the next tick. Saved beside the store (see [`crate::predict`]).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (see [`EventBook::add`]).
    pub fn add_event(&mut self, e: Event) -> Result<u64> {
        if self.store.read_only() {
            return Err(Error::ReadOnly);
        }
        let id = self.predictive.events.add(e)?;
        if let Err(err) = self.save_sidecar() {
            self.predictive.events.remove(id)?;
            return Err(err);
        }
        Ok(id)
    }

    fn save_sidecar(&self) -> Result<()> {
        self.save_sidecar_at(&self.store.path)
    }

    /// Writes the events and signals beside the store file `store` (this store's, or a copy's).
    pub(crate) fn save_sidecar_at(&self, store: &std::path::Path) -> Result<()> {
        super::sidecar::save_text(&super::sidecar::path_for(store), &self.render_sidecar())
    }

    /// The text of the events file for the events and signals now.
    pub(crate) fn render_sidecar(&self) -> String {
        super::sidecar::render(&self.predictive.events, &self.predictive.signals)
    }

    /// Reads the store's events and signals (on open).
    pub(crate) fn load_sidecar(&mut self) -> Result<()> {
        let (events, signals) = super::sidecar::load(&super::sidecar::path_for(&self.store.path))?;
        self.predictive.events = events;
        self.predictive.signals = signals;
        Ok(())
    }

    /// Removes an event.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unknown id.
    pub fn remove_event(&mut self, id: u64) -> Result<()> {
        if self.store.read_only() {
            return Err(Error::ReadOnly);
        }
        let e = self.predictive.events.remove(id)?;
        if let Err(err) = self.save_sidecar() {
            self.predictive.events.insert(id, e)?;
            return Err(err);
        }
        Ok(())
    }

    /// The events held.
    pub fn events(&self) -> &EventBook {
        &self.predictive.events
    }

    /// Sets an external feed (a named global signal, e.g. a news-volume index). A model reads
    /// the feeds named in its spec; a feed never set reads as 0.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty name, a name with a comma or a control character
    /// (a line break would corrupt the saved signals), or a non-finite value.
    pub fn set_signal(&mut self, name: &str, value: f32) -> Result<()> {
        if name.is_empty()
            || name.contains(',')
            || name.contains(char::is_control)
            || name.len() > 256
        {
            return Err(Error::invalid(format!(
                "signal name must be 1..=256 bytes without commas or control characters, got {name:?}"
            )));
        }
        if !value.is_finite() {
            return Err(Error::invalid(format!(
                "signal {name}: value must be finite"
            )));
        }
        if self.store.read_only() {
            return Err(Error::ReadOnly);
        }
        let old = self.predictive.signals.insert(name.to_string(), value);
        if let Err(err) = self.save_sidecar() {
            match old {
                Some(v) => self.predictive.signals.insert(name.to_string(), v),
                None => self.predictive.signals.remove(name),
            };
            return Err(err);
        }
        Ok(())
    }

    /// The external feeds set.
    pub fn signals(&self) -> &BTreeMap<String, f32> {
        &self.predictive.signals
    }

    /// Every customer's usage in the last closed interval (what the last tick fed the predictor),
    /// as `(id, usage)` in slot order: the engine's own history, for training (append it after
    /// every tick).
    pub fn closed_usage(&self) -> Vec<(u64, IntervalUsage)> {
        let c = self.store.cols();
        c.buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| b.active())
            .map(|(slot, _)| (c.ids[slot], IntervalUsage::from_closed(&c.closed[slot])))
            .collect()
    }

    /// Where the last predictive tick spent its time (zeros before the first).
    pub fn last_tick_timings(&self) -> TickTimings {
        self.predictive.timings
    }

    /// A customer's forecast, as the last tick left it (zeros before the first).
    ///
    /// # Errors
    /// [`Error::UnknownCustomer`].
    pub fn forecast(&self, id: u64) -> Result<Forecast> {
        let slot = self.slot_of(id).ok_or(Error::UnknownCustomer(id))? as usize;
        let horizons = self.horizons();
        let d = self.dims();
        let c = self.store.cols();
        let fd = d.forecast_dim as usize;
        let f = &c.forecast[slot * fd..(slot + 1) * fd];
        let values = horizons
            .iter()
            .enumerate()
            .map(|(j, _)| {
                let q = &f[j * FORECAST_PER_HORIZON..(j + 1) * FORECAST_PER_HORIZON];
                Quantiles {
                    mean: q[0] as f64,
                    p50: q[1] as f64,
                    p90: q[2] as f64,
                    p99: q[3] as f64,
                }
            })
            .collect();
        let sd = d.scenario_dim as usize;
        let mut scenario = [0f32; 4];
        scenario.copy_from_slice(&c.scenario[slot * sd..slot * sd + 4]);
        let scale = c.scale[slot * d.scale_dim as usize];
        Ok(Forecast {
            horizons,
            values,
            scenario,
            scale,
        })
    }

    /// The predictive tick at `now`: closes every customer's interval, builds the features,
    /// runs one predictor step for every customer (forecasts and scenario probabilities go into
    /// the store), turns the forecasts into reservations with the [`ReservationPolicy`] and sets
    /// them within the reservable budget (see [`crate::predict`]).
    ///
    /// Durability: the forecaster's columns (recurrent state, scales, forecasts) are written
    /// before the tick's transaction, which closes the intervals and sets the reservations, so a
    /// crash in between leaves the store as before the tick except that the forecaster has seen
    /// the interval once already (it sees it again at the next tick). Bucket records, the pool
    /// and the reservations are all-or-nothing as for every transaction.
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; [`Error::InvalidArgument`] for a store without forecaster columns.
    pub fn tick(&mut self, now: u64) -> Result<TickReport> {
        if self.store.read_only() {
            return Err(Error::ReadOnly);
        }
        // set_predictor checked the model against the columns; the default baseline needs these
        self.check_forecaster_columns()?;
        let dims = self.dims();
        let cfg = self.config();
        let horizons = self.horizons();
        let pr = &mut self.predictive;
        let before = pr.events.len();
        pr.events.expire(now);
        let expired = pr.events.len() != before;
        let (ev_global, ev_customer) = pr.events.active_at(now);
        let feed_names: Vec<String> = match &pr.runner {
            Runner::Lstm { model, .. } => model.spec.feeds.clone(),
            Runner::Baseline { .. } => Vec::new(),
        };
        let feeds: Vec<f32> = feed_names
            .iter()
            .map(|n| pr.signals.get(n).copied().unwrap_or(0.0))
            .collect();
        let mut glob = vec![0f32; 5 + feeds.len()];
        global_features(now, ev_global, &feeds, &mut glob);
        let beta = match &pr.runner {
            Runner::Lstm { model, .. } => model.scaling.scale_beta(),
            Runner::Baseline { .. } => 1.0 - 0.5f32.powf(1.0 / BASELINE_SCALE_HALF_LIFE),
        };

        let t0 = std::time::Instant::now();
        let c = self.store.cols_mut()?;
        let n = c
            .buckets
            .iter()
            .rposition(|b| b.active())
            .map_or(0, |i| i + 1);
        let scd = dims.scale_dim as usize;
        let cf = CUSTOMER_FEATURES;
        pr.x.clear();
        pr.x.resize(n * cf, 0.0);
        pr.old_scale.clear();
        pr.old_scale.resize(n, 1.0);
        pr.usage.clear();
        pr.usage.resize(n, 0.0);

        // 1-2. usage, features, scales
        {
            let ids = &*c.ids;
            let buckets = &*c.buckets;
            let settled = &*c.settled;
            let evc = &ev_customer;
            pr.x.par_chunks_mut(CHUNK * cf)
                .zip(c.scale[..n * scd].par_chunks_mut(CHUNK * scd))
                .zip(pr.old_scale.par_chunks_mut(CHUNK))
                .zip(pr.usage.par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(k, (((x, sc), old), us))| {
                    let base = k * CHUNK;
                    for i in 0..old.len() {
                        let slot = base + i;
                        let b = &buckets[slot];
                        if !b.active() {
                            continue;
                        }
                        let u = usage_of(b, &settled[slot]);
                        let mut s = Scale {
                            tokens: sc[i * scd],
                            requests: sc[i * scd + 1],
                        };
                        let ev = if evc.is_empty() {
                            0.0
                        } else {
                            evc.get(&ids[slot]).copied().unwrap_or(0.0)
                        };
                        x[i * cf..(i + 1) * cf].copy_from_slice(&customer_features(&u, &s, ev));
                        old[i] = s.s();
                        us[i] = u.tokens as f32;
                        s.update(&u, beta);
                        sc[i * scd] = s.tokens;
                        sc[i * scd + 1] = s.requests;
                    }
                });
        }

        let t1 = std::time::Instant::now();
        // 3. the predictor step
        let fd = dims.forecast_dim as usize;
        let sd = dims.scenario_dim as usize;
        match &mut pr.runner {
            Runner::Lstm { model, cpu } => {
                let o = model.spec.head_dim();
                let msd = model.spec.state_dim();
                // every backend writes all `n * o` head outputs: no need to zero them first
                pr.heads.resize(n * o, 0.0);
                let state = &mut c.model_state[..n * msd];
                let mut done = false;
                if let (Some(b), None) = (&pr.backend, &pr.backend_failed) {
                    let mut b = b
                        .lock()
                        .map_err(|_| Error::invalid("step backend lock poisoned"))?;
                    if pr.state_stale {
                        b.invalidate();
                    }
                    let failed = match b.step(&pr.x, &glob, state, &mut pr.heads) {
                        Ok(()) => {
                            done = true;
                            pr.stepped_customers = n;
                            pr.ticks_since_sync += 1;
                            if pr.ticks_since_sync < b.sync_every() {
                                None
                            } else {
                                // (a failed write-back leaves this tick's outputs good)
                                let synced = b.sync_state(state);
                                if synced.is_ok() {
                                    pr.ticks_since_sync = 0;
                                }
                                synced.err().map(|e| ("state write-back", e))
                            }
                        }
                        Err(e) => Some(("step", e)),
                    };
                    if let Some((what, e)) = failed {
                        device_failed(&mut pr.backend_failed, what, &e);
                    }
                }
                if !done {
                    cpu.step(&pr.x, &glob, state, &mut pr.heads)?;
                }
                pr.state_stale = false;
                let heads = &pr.heads;
                let old = &pr.old_scale;
                let x = &pr.x;
                let buckets = &*c.buckets;
                // `decode_block` is `decode` with vectorized exp/expm1/softplus (within a
                // relative 1e-5 of it), a block of customers at a time.
                c.forecast[..n * fd]
                    .par_chunks_mut(DECODE_BLOCK * fd)
                    .zip(c.scenario[..n * sd].par_chunks_mut(DECODE_BLOCK * sd))
                    .enumerate()
                    .for_each_init(
                        || (Vec::new(), Vec::new(), Vec::new()),
                        |(scratch, active, usage), (k, (f, s))| {
                            let lo = k * DECODE_BLOCK;
                            let rows = f.len() / fd;
                            active.clear();
                            active.extend(buckets[lo..lo + rows].iter().map(|b| b.active()));
                            usage.clear();
                            usage.extend((lo..lo + rows).map(|slot| x[slot * cf]));
                            decode_block(
                                &heads[lo * o..(lo + rows) * o],
                                o,
                                &old[lo..lo + rows],
                                usage,
                                active,
                                f,
                                fd,
                                s,
                                sd,
                                scratch,
                            );
                        },
                    );
            }
            Runner::Baseline { f, seen } => {
                seen.resize(n.max(seen.len()), u64::MAX);
                for slot in 0..n {
                    if !c.buckets[slot].active() {
                        continue;
                    }
                    let id = c.ids[slot];
                    if seen[slot] != id {
                        f.forget(slot);
                        seen[slot] = id;
                    }
                    f.observe(slot, pr.usage[slot] as f64);
                    let out = &mut c.forecast[slot * fd..(slot + 1) * fd];
                    for (j, &h) in horizons.iter().enumerate() {
                        let q = f.forecast(slot, h as usize);
                        out[j * 4..(j + 1) * 4].copy_from_slice(&[
                            q.mean as f32,
                            q.p50 as f32,
                            q.p90 as f32,
                            q.p99 as f32,
                        ]);
                    }
                    let sc = &mut c.scenario[slot * sd..slot * sd + 4];
                    sc.fill(0.0);
                    sc[scenario_of(out[1], pr.old_scale[slot])] = 1.0;
                }
            }
        }

        let t2 = std::time::Instant::now();
        // 4. reservations
        let pol = pr.policy;
        let interval_s = cfg.interval_ns as f64 / 1e9;
        let j = pol.horizon.min(horizons.len() - 1);
        let buckets = &*c.buckets;
        let forecast = &*c.forecast;
        let scenario = &*c.scenario;
        let scale = &*c.scale;
        // Dense, slot-ordered asks (0 for none) into reused buffers: `tick_dense` takes them as
        // they are, with no list to sort, copy or check.
        pr.res_rate.clear();
        pr.res_rate.resize(n, 0);
        pr.res_cap.clear();
        pr.res_cap.resize(n, 0);
        pr.res_rate
            .par_chunks_mut(CHUNK)
            .zip(pr.res_cap.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(k, (rates, caps))| {
                for (i, (rate_out, cap_out)) in rates.iter_mut().zip(caps.iter_mut()).enumerate() {
                    let slot = k * CHUNK + i;
                    let b = &buckets[slot];
                    if !b.active() {
                        continue;
                    }
                    let f = &forecast[slot * fd + j * 4..slot * fd + (j + 1) * 4];
                    let q = match pol.target {
                        Target::Mean => f[0] as f64,
                        Target::Quantile(l) => f[1 + l as usize] as f64,
                        Target::Scenario { probability } => {
                            let p = &scenario[slot * sd..slot * sd + 4];
                            let s = (scale[slot * scd] as f64).max(1.0);
                            let mut acc = 0.0;
                            let mut q = f[3] as f64;
                            for (k, &pk) in p.iter().enumerate().take(3) {
                                acc += pk as f64;
                                if acc >= probability {
                                    q = SCENARIO_EDGES[k] as f64 * s;
                                    break;
                                }
                            }
                            q
                        }
                    };
                    let q = if q.is_finite() { q.max(0.0) } else { 0.0 };
                    let rate_tok = q * pol.headroom / interval_s;
                    let rate = ((rate_tok * 1e6).min(MAX_RATE_MICROS as f64) as u64).min(b.rate);
                    if rate == 0 {
                        continue;
                    }
                    let cap = (rate as f64 / 1e6 * interval_s * pol.capacity_intervals).ceil();
                    *cap_out = (cap.min(MAX_BURST_TOKENS as f64) as u64).min(b.burst);
                    *rate_out = rate;
                }
            });

        let t3 = std::time::Instant::now();
        // 5. close the intervals and set the reservations
        let (rates, caps) = (
            std::mem::take(&mut self.predictive.res_rate),
            std::mem::take(&mut self.predictive.res_cap),
        );
        let report = self.tick_dense(now, &rates, &caps);
        self.predictive.res_rate = rates;
        self.predictive.res_cap = caps;
        let report = report?;
        let ns = |a: std::time::Instant, b: std::time::Instant| (b - a).as_nanos() as u64;
        self.predictive.timings = TickTimings {
            customers: n as u64,
            features_ns: ns(t0, t1),
            step_ns: ns(t1, t2),
            policy_ns: ns(t2, t3),
            commit_ns: ns(t3, std::time::Instant::now()),
        };
        if expired {
            self.save_sidecar()?;
        }
        Ok(report)
    }
}

/// Records that the device backend failed in `what`, so that the tick runs the CPU step from now
/// on, from the store's copy of the state (the one last written back), and says so.
fn device_failed(failed: &mut Option<String>, what: &str, e: &Error) {
    eprintln!(
        "shadowbucket: device {what} failed ({e}); running the CPU step from now on, from the \
         state last written back"
    );
    *failed = Some(e.to_string());
}

impl Drop for Engine {
    /// Best effort: a device backend's newer recurrent state goes back into the store (a crash
    /// skips this; the state then resumes from the last write-back, see `docs/predictive.md`).
    fn drop(&mut self) {
        if self.predictive.backend.is_some()
            && let Err(e) = self.write_back_device_state()
        {
            eprintln!("shadowbucket: could not write the device's model state back: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{CpuBackend, LstmModel, ModelSpec, StepBackend};
    use crate::{Contract, CreateOptions, Engine, EngineConfig, Error, Predictor, Rate};

    /// A device whose steps work (on the CPU) and whose state write-back fails, as after the
    /// device was lost between a step and its write-back.
    struct LosesState(CpuBackend);

    impl StepBackend for LosesState {
        fn name(&self) -> String {
            "loses-state".into()
        }
        fn set_model(&mut self, model: &LstmModel) -> crate::Result<()> {
            self.0.set_model(model)
        }
        fn step(
            &mut self,
            x: &[f32],
            glob: &[f32],
            state: &mut [f32],
            out: &mut [f32],
        ) -> crate::Result<()> {
            self.0.step(x, glob, state, out)
        }
        fn sync_state(&mut self, _: &mut [f32]) -> crate::Result<()> {
            Err(Error::invalid("device lost"))
        }
    }

    /// A failed write-back inside a tick is the device failing: the tick completes with the
    /// step it made, and the engine runs the CPU step from then on, as for a failed step.
    /// A fresh folder for one test (removed first if a run before left it), with the path of a
    /// store in it.
    fn fresh(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("sb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sb");
        (dir, path)
    }

    #[test]
    fn a_failed_state_write_back_falls_back_to_the_cpu() {
        let (dir, path) = fresh("sync-fail");
        let cfg = EngineConfig::new(100_000, Rate::tokens_per_sec(1_000));
        let spec = ModelSpec::default();
        let mut e = Engine::create(&path, CreateOptions::new(8, cfg).for_model(&spec)).unwrap();
        for id in 1..=4 {
            e.add_customer(id, Contract::new(500, Rate::tokens_per_sec(10)), 0)
                .unwrap();
        }
        let model = LstmModel::random(spec, 3).unwrap();
        e.set_predictor(Predictor::Lstm(Box::new(model))).unwrap();
        e.set_step_backend(Box::new(LosesState(CpuBackend::new())))
            .unwrap();
        assert_eq!(e.step_backend_name(), "loses-state");
        let report = e.tick(60_000_000_000);
        assert!(report.is_ok(), "{:?}", report.map(|_| ()));
        assert!(
            e.step_backend_name().contains("device lost"),
            "{}",
            e.step_backend_name()
        );
        e.tick(120_000_000_000).unwrap();
        drop(e);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_signal_name_that_would_break_the_sidecar_is_refused() {
        let (dir, path) = fresh("signal-name");
        let cfg = EngineConfig::new(1_000, Rate::tokens_per_sec(100));
        let mut e = Engine::create(&path, CreateOptions::new(8, cfg)).unwrap();
        e.set_signal("news volume", 1.5).unwrap();
        // The sidecar holds a signal per line: a line break (or a carriage return, which
        // reading drops) in a name would make the store unreadable or rename the signal.
        for name in ["news\nvolume", "news\r", "a\u{0}b"] {
            assert!(
                matches!(e.set_signal(name, 2.0), Err(Error::InvalidArgument(_))),
                "{name:?}"
            );
        }
        drop(e);
        let e = Engine::open(&path).unwrap();
        assert_eq!(e.signals().len(), 1);
        assert_eq!(e.signals()["news volume"], 1.5);
        drop(e);
        std::fs::remove_dir_all(&dir).ok();
    }
}
