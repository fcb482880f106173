//! The engine: the public API over one store file.
//!
//! # Thread safety
//! `Engine` is `Send + Sync`. Calls that change state take `&mut self`, so Rust lets one run at a
//! time; queries take `&self` and may run concurrently with each other. The batch calls
//! ([`Engine::allocate_batch`], [`Engine::tick`]) are parallel inside, on rayon's global pool.
//! Services that share one engine between threads wrap it in a `Mutex` or `RwLock`.

use std::path::Path;

use rayon::prelude::*;

use crate::batch::{self, NO_SLOT, SHARD_SLOTS};
use crate::config::{Contract, EngineConfig, Reservation};
use crate::error::{Error, Result};
use crate::fixed::{FEMTO_PER_TOKEN, MAX_BURST_TOKENS, MAX_RATE_MICROS, Rate, accrual, femto};
use crate::index::{self, valid_id};
use crate::kernel::{
    Decision, Outcome, Overflow, advance, clamp_pool, credit_overflow, credit_pool, pool_cap,
    refill_bucket,
};
use crate::layout::*;
use crate::predict::tick::Predictive;
use crate::reserve::cut_back;
use crate::store::{self, Store, Txn, journal_bucket, journal_full};

/// Options for [`Engine::create`].
#[derive(Clone, Copy, Debug)]
pub struct CreateOptions {
    /// Customer slots (grow later with [`Engine::grow`]).
    pub capacity: u64,
    /// Engine configuration.
    pub config: EngineConfig,
    /// The caller's clock at creation, ns: the pool starts full at this instant.
    pub now_ns: u64,
    /// Floats of recurrent state per customer, for the forecaster (default 64: one LSTM layer of
    /// hidden size 32, hidden and cell state; at most 65,536).
    pub state_dim: u32,
    /// Floats of forecast per customer (default 16: four horizons of mean, p50, p90, p99; at
    /// most 1,024).
    pub forecast_dim: u32,
    /// Scenario probabilities per customer (default 4: low, medium, high, spike; at most 64).
    pub scenario_dim: u32,
    /// Floats of per-customer feature scaling (default 2, at most 64).
    pub scale_dim: u32,
}

impl CreateOptions {
    /// Defaults for `capacity` customers and this configuration, created at time 0.
    pub fn new(capacity: u64, config: EngineConfig) -> Self {
        CreateOptions {
            capacity,
            config,
            now_ns: 0,
            state_dim: 64,
            forecast_dim: 16,
            scenario_dim: 4,
            scale_dim: 2,
        }
    }

    /// The same options with the creation time set.
    pub fn at(mut self, now_ns: u64) -> Self {
        self.now_ns = now_ns;
        self
    }

    /// The same options with forecaster columns sized for `spec` (recurrent state, forecast
    /// horizons).
    pub fn for_model(mut self, spec: &crate::model::ModelSpec) -> Self {
        self.state_dim = spec.state_dim() as u32;
        self.forecast_dim = spec.forecast_dim() as u32;
        self.scenario_dim = crate::model::SCENARIOS.len() as u32;
        self.scale_dim = 2;
        self
    }

    /// The same options without any forecaster columns.
    pub fn without_model(mut self) -> Self {
        self.state_dim = 0;
        self.forecast_dim = 0;
        self.scenario_dim = 0;
        self.scale_dim = 0;
        self
    }
}

/// Requests named by customer id or by slot.
#[derive(Clone, Copy, Debug)]
pub enum Keys<'a> {
    /// Customer ids, resolved through the index.
    Ids(&'a [u64]),
    /// Slots from [`Engine::resolve`] or [`Engine::slot_of`].
    Slots(&'a [u32]),
}

/// Where a settled grant was paid from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantPath {
    /// The shadow bucket ([`Outcome::GrantedShadow`]).
    Shadow,
    /// The pool ([`Outcome::GrantedPool`]).
    Pool,
}

/// What one customer looks like now.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomerView {
    /// Customer id.
    pub id: u64,
    /// Slot.
    pub slot: u32,
    /// Contract.
    pub contract: Contract,
    /// Standard bucket level, femto-tokens.
    pub std_femto: i128,
    /// Shadow bucket level, femto-tokens.
    pub shadow_femto: i128,
    /// Reserved rate.
    pub reserved_rate: Rate,
    /// Shadow capacity, tokens.
    pub shadow_capacity: u64,
    /// Contention flag.
    pub flagged: bool,
    /// Tokens granted and not yet settled.
    pub outstanding: u64,
    /// Usage in the last closed interval.
    pub last_interval: Closed,
    /// Usage so far in the current interval.
    pub this_interval: Closed,
    /// Forecast (the forecaster's outputs; zeros until one runs).
    pub forecast: Vec<f32>,
    /// Scenario probabilities (low, medium, high, spike; zeros until a forecaster runs).
    pub scenarios: Vec<f32>,
}

impl CustomerView {
    /// Whole tokens left in the standard bucket (rounded down).
    pub fn std_tokens(&self) -> i128 {
        self.std_femto.div_euclid(FEMTO_PER_TOKEN)
    }

    /// Whole tokens left in the shadow bucket (rounded down).
    pub fn shadow_tokens(&self) -> i128 {
        self.shadow_femto.div_euclid(FEMTO_PER_TOKEN)
    }
}

/// Engine-wide figures, cheap to read at every tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Counters since the store was created.
    pub counters: StatsRaw,
    /// Customers in the store.
    pub customers: u64,
    /// Capacity.
    pub capacity: u64,
    /// Pool level, femto-tokens.
    pub pool_femto: i128,
    /// Sum of reserved rates, micro-tokens/s.
    pub reserved_rate_micros: u64,
    /// Sum of shadow capacities, tokens.
    pub reserved_capacity: u64,
    /// Sequence number of the last completed transaction.
    pub last_committed: u64,
    /// Sequence number of the last transaction rolled back after a crash (0: none).
    pub last_rolled_back: u64,
}

/// Where every femto-token of the pool's supply is (semantics I4), as of one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ledger {
    /// The pool's initial fill plus `pool_rate` times the time since creation.
    pub supplied: i128,
    /// In the pool.
    pub in_pool: i128,
    /// In shadow buckets.
    pub in_shadows: i128,
    /// Granted net of refunds, debt counted as granted.
    pub granted_net: i128,
    /// Lost at the pool's cap.
    pub lost_at_cap: i128,
}

impl Ledger {
    /// Whether every token is accounted for exactly once.
    pub fn balanced(&self) -> bool {
        self.supplied == self.in_pool + self.in_shadows + self.granted_net + self.lost_at_cap
    }
}

/// What a tick did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickReport {
    /// Customers whose interval was closed.
    pub customers: u64,
    /// Sum of reserved rates asked, micro-tokens/s.
    pub asked_rate_micros: u128,
    /// Sum of reserved rates set (after cut-back), micro-tokens/s.
    pub reserved_rate_micros: u64,
    /// Sum of shadow capacities set, tokens.
    pub reserved_capacity: u64,
    /// Whether the asks had to be cut back.
    pub cut_back: bool,
    /// Customers flagged as contended after this tick.
    pub flagged: u64,
}

/// A shadow-bucket allocation engine over one memory-mapped store.
///
/// ```
/// use shadowbucket::{Contract, CreateOptions, Engine, EngineConfig, Outcome, Rate, Reservation};
/// # let dir = std::env::temp_dir().join(format!("sb-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("engine.sb");
/// # let _ = std::fs::remove_file(&path);
/// let cfg = EngineConfig::new(1_000_000, Rate::tokens_per_sec(100_000));
/// let mut eng = Engine::create(&path, CreateOptions::new(1024, cfg))?;
/// let slot = eng.add_customer(42, Contract::new(5_000, Rate::tokens_per_sec(100)), 0)?;
///
/// // no reservation yet: the request falls back to the pool
/// assert_eq!(eng.allocate(42, 100, 1_000)?.outcome, Outcome::GrantedPool);
///
/// // reserve 50 tokens/s with room for 1,000 tokens, then a request a second later
/// let res = [Reservation { slot, rate: Rate::tokens_per_sec(50), capacity: 1_000 }];
/// eng.tick_with(2_000, &res)?;
/// let d = eng.allocate(42, 40, 1_000_002_000)?;
/// assert_eq!(d.outcome, Outcome::GrantedShadow);
///
/// // a batch: same outcomes as one request at a time
/// let out = eng.allocate_batch(shadowbucket::Keys::Ids(&[42, 7]), &[10, 10], 1_000_002_000)?;
/// assert_eq!(out.outcomes[1], Outcome::UnknownCustomer);
/// assert!(eng.ledger(1_000_002_000).balanced());
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), shadowbucket::Error>(())
/// ```
pub struct Engine {
    pub(crate) store: Store,
    recovered: Option<u64>,
    scratch: batch::Scratch,
    /// The slots of the last batch given by id (a buffer reused by the next one).
    resolved: Vec<u32>,
    pub(crate) predictive: Predictive,
}

/// Ids per parallel task of [`Engine::resolve`].
const RESOLVE_CHUNK: usize = 4096;
/// How many ids ahead [`Engine::resolve`] prefetches the index line where a search begins: 48
/// beat 24, 32 and 64 in alternated runs of the `engine_resolve` bench on the current development
/// machine (the README's "Resolving ids" under Speed, "The current development machine", has the
/// runs; 24 had beaten 16 and 32 on the machine before).
const RESOLVE_AHEAD: usize = 48;

/// The most requests one batch call takes (the batch path numbers requests with 32 bits).
pub const MAX_BATCH: usize = u32::MAX as usize - 1;

/// Outcomes of a batch, one per request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// What happened to each request.
    pub outcomes: Vec<Outcome>,
    /// Retry-after per request, ns (0 for grants, `u64::MAX` for never).
    pub retry_after_ns: Vec<u64>,
}

fn config_raw(c: &EngineConfig) -> ConfigRaw {
    ConfigRaw {
        pool_burst: c.pool_burst,
        pool_rate: c.pool_rate.micros(),
        interval_ns: c.interval_ns,
        alpha_ppm: c.alpha_ppm,
        contention_high_ppm: c.contention_high_ppm,
        contention_low_ppm: c.contention_low_ppm,
        contention_min_requests: c.contention_min_requests,
        contention_ticks: c.contention_ticks as u32,
        _pad: 0,
    }
}

fn config_from_raw(c: &ConfigRaw) -> EngineConfig {
    EngineConfig {
        pool_burst: c.pool_burst,
        pool_rate: Rate::from_micros_per_sec(c.pool_rate),
        alpha_ppm: c.alpha_ppm,
        interval_ns: c.interval_ns,
        contention_high_ppm: c.contention_high_ppm,
        contention_low_ppm: c.contention_low_ppm,
        contention_ticks: c.contention_ticks.min(255) as u8,
        contention_min_requests: c.contention_min_requests,
    }
}

impl Engine {
    /// Creates a new store file at `path` (which must not exist) and opens it for writing.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad configuration or capacity; [`Error::Io`] when the file
    /// exists or cannot be written.
    pub fn create(path: impl AsRef<Path>, opts: CreateOptions) -> Result<Engine> {
        opts.config.validate()?;
        let dims = Dims {
            capacity: opts.capacity,
            state_dim: opts.state_dim,
            forecast_dim: opts.forecast_dim,
            scenario_dim: opts.scenario_dim,
            scale_dim: opts.scale_dim,
        };
        let mut store = Store::create(path.as_ref(), dims)?;
        let set_up = (|| {
            // A new store starts with no events: drop a stale sidecar left by a deleted one.
            let sidecar = crate::predict::sidecar::path_for(path.as_ref());
            if let Err(e) = std::fs::remove_file(&sidecar)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(Error::io(&sidecar, e));
            }
            let c = store.cols_mut()?;
            let g = &mut c.state.globals;
            g.config = config_raw(&opts.config);
            g.pool.level = femto(opts.config.pool_burst);
            g.pool.last_ns = opts.now_ns;
            g.pool.full_at_ns = opts.now_ns;
            g.last_tick_ns = opts.now_ns;
            g.created_ns = opts.now_ns;
            g.stats = StatsRaw::default();
            store.flush()
        })();
        if let Err(e) = set_up {
            // the store was made just now: a failed create leaves no file behind
            drop(store);
            let _ = std::fs::remove_file(path.as_ref());
            return Err(e);
        }
        Ok(Engine {
            store,
            recovered: None,
            scratch: batch::Scratch::default(),
            resolved: Vec::new(),
            predictive: Predictive::default(),
        })
    }

    /// Opens an existing store for writing, taking its lock, and rolls back a transaction that a
    /// killed process left unfinished (see [`Engine::recovered`]).
    ///
    /// # Errors
    /// [`Error::Locked`] when another process has it open for writing; [`Error::BadFile`] when it
    /// is not a valid store (the file is left untouched); [`Error::Io`].
    pub fn open(path: impl AsRef<Path>) -> Result<Engine> {
        let (store, recovered) = Store::open(path.as_ref(), true)?;
        let mut e = Engine {
            store,
            recovered,
            scratch: batch::Scratch::default(),
            resolved: Vec::new(),
            predictive: Predictive::default(),
        };
        e.load_sidecar()?;
        Ok(e)
    }

    /// Opens an existing store read-only, without a lock: queries work, changes return
    /// [`Error::ReadOnly`]. It sees the live file, including a transaction in flight.
    ///
    /// # Errors
    /// [`Error::BadFile`], [`Error::Io`].
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Engine> {
        let (store, _) = Store::open(path.as_ref(), false)?;
        let mut e = Engine {
            store,
            recovered: None,
            scratch: batch::Scratch::default(),
            resolved: Vec::new(),
            predictive: Predictive::default(),
        };
        e.load_sidecar()?;
        Ok(e)
    }

    /// The sequence number of the transaction rolled back when this engine opened the store, if
    /// a killed process had left one unfinished.
    pub fn recovered(&self) -> Option<u64> {
        self.recovered
    }

    /// The store's path.
    pub fn path(&self) -> &Path {
        &self.store.path
    }

    /// Customer slots in the store.
    pub fn capacity(&self) -> u64 {
        self.store.header.capacity
    }

    /// The dimensions of the store's forecaster columns.
    pub fn dims(&self) -> Dims {
        self.store.header.dims()
    }

    /// The engine configuration.
    pub fn config(&self) -> EngineConfig {
        config_from_raw(&self.store.cols().state.globals.config)
    }

    /// Customers in the store.
    pub fn len(&self) -> u64 {
        self.store.cols().state.globals.customers
    }

    /// Whether the store has no customers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes everything to disk and waits for it.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn flush(&self) -> Result<()> {
        self.store.flush()
    }

    // ---- customers ---------------------------------------------------------------------------

    /// The slot of customer `id`, if present.
    pub fn slot_of(&self, id: u64) -> Option<u32> {
        if !valid_id(id) {
            return None;
        }
        // (the three columns it reads, one by one: `Store::cols` splits out eleven, and every
        // call by id, `settle` and the rest pass here)
        let st = &self.store;
        let s = index::find(st.col(Col::Index), id)? as usize;
        let buckets: &[Bucket] = st.col(Col::Buckets);
        let ids: &[u64] = st.col(Col::Ids);
        // A damaged index never sends a caller to another customer's record (`check` reports it).
        (s < buckets.len() && buckets[s].active() && ids[s] == id).then_some(s as u32)
    }

    /// Resolves ids to slots in parallel; unknown ids give [`crate::NO_SLOT`].
    ///
    /// It trusts the store's index, as the batch path does (checking each slot found against the
    /// ids column took a 1M-id resolve from 6.5-6.8 to 10.6-11.0 ms, uniform ids, two alternated
    /// runs); [`Engine::check`] finds a damaged index, and [`Engine::slot_of`] checks the slot it
    /// returns.
    ///
    /// ```
    /// # use shadowbucket::{Contract, CreateOptions, Engine, EngineConfig, Rate, NO_SLOT};
    /// # let dir = std::env::temp_dir().join(format!("sb-resolve-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let cfg = EngineConfig::new(1_000, Rate::tokens_per_sec(100));
    /// let mut eng = Engine::create(dir.join("r.sb"), CreateOptions::new(10, cfg).without_model())?;
    /// let slot = eng.add_customer(42, Contract::new(10, Rate::tokens_per_sec(1)), 0)?;
    /// let mut out = [0u32; 2];
    /// eng.resolve(&[42, 7], &mut out)?;
    /// assert_eq!(out, [slot, NO_SLOT]);
    /// # std::fs::remove_dir_all(&dir).ok();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] when `out` is not as long as `ids`.
    pub fn resolve(&self, ids: &[u64], out: &mut [u32]) -> Result<()> {
        if out.len() != ids.len() {
            return Err(Error::LengthMismatch {
                what: "out",
                got: out.len(),
                expected: ids.len(),
            });
        }
        let table = self.store.cols().index;
        let cap = self.capacity();
        out.par_chunks_mut(RESOLVE_CHUNK)
            .zip(ids.par_chunks(RESOLVE_CHUNK))
            .for_each(|(out, ids)| {
                // Each lookup is a cache miss in a large index, so the loop below starts each
                // line's load well ahead. Working out every home entry first, in a loop of its
                // own, keeps that loop short: hashing each id twice (to prefetch 16 ahead, then
                // to search) took 7.0-7.3 ns per id, this 5.6-5.7 (1M customers).
                let mut homes = [0u32; RESOLVE_CHUNK];
                let homes = &mut homes[..ids.len()];
                for (h, &id) in homes.iter_mut().zip(ids) {
                    // below the index's capacity, a power of two far below `u32::MAX`
                    *h = index::home(table, id) as u32;
                }
                for (k, (o, &id)) in out.iter_mut().zip(ids).enumerate() {
                    if let Some(&h) = homes.get(k + RESOLVE_AHEAD) {
                        batch::prefetch(&table[h as usize]);
                    }
                    *o = if valid_id(id) {
                        match index::find_from(table, id, homes[k] as usize) {
                            Some(s) if s < cap => s as u32,
                            _ => NO_SLOT,
                        }
                    } else {
                        NO_SLOT
                    }
                }
            });
        Ok(())
    }

    /// Adds a customer with a full standard bucket and no reservation. Returns its slot.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a reserved id (`u64::MAX`, `u64::MAX - 1`) or a bad
    /// contract; [`Error::DuplicateCustomer`]; [`Error::StoreFull`]; [`Error::ReadOnly`].
    pub fn add_customer(&mut self, id: u64, contract: Contract, now: u64) -> Result<u32> {
        Ok(self.add_customers(&[(id, contract)], now)?[0])
    }

    /// Adds many customers in one transaction (all or none), each with a full standard bucket
    /// and no reservation. Returns their slots, in order. Much faster than one
    /// [`Engine::add_customer`] call each when loading a store.
    ///
    /// # Errors
    /// As [`Engine::add_customer`], for the first customer that fails (nothing is added), and
    /// [`Error::DuplicateCustomer`] for an id listed twice.
    pub fn add_customers(&mut self, customers: &[(u64, Contract)], now: u64) -> Result<Vec<u32>> {
        self.device_state_changing()?;
        let mut seen = std::collections::HashSet::with_capacity(customers.len());
        for &(id, contract) in customers {
            if !valid_id(id) {
                return Err(Error::invalid(format!(
                    "customer id {id} is reserved (ids must be below {})",
                    INDEX_TOMBSTONE
                )));
            }
            contract.validate()?;
            if !seen.insert(id) || self.slot_of(id).is_some() {
                return Err(Error::DuplicateCustomer(id));
            }
        }
        let cap = self.capacity();
        let dims = self.store.header.dims();
        let path = self.store.path.clone();
        let mut c = self.store.cols_mut()?;
        let top = c.state.globals.free_top as usize;
        if top < customers.len() {
            return Err(Error::StoreFull {
                capacity: cap,
                suggested: (cap + customers.len() as u64)
                    .max(cap.saturating_mul(2))
                    .min(u32::MAX as u64 - 1),
            });
        }
        for &slot in &c.free[top - customers.len()..top] {
            let slot = slot as usize;
            if slot as u64 >= cap || c.buckets[slot].active() {
                return Err(Error::bad_file(
                    &path,
                    format!("free-slot stack names slot {slot}, which is not free"),
                ));
            }
        }
        let txn = Txn::begin(c.state, txn_kind::ADMIN);
        let now = advance(&mut c.state.globals, now);
        let mut slots = Vec::with_capacity(customers.len());
        for &(id, contract) in customers {
            let slot = c.free[c.state.globals.free_top as usize - 1] as usize;
            journal_slot(&mut c.slot_cols(), slot, txn.seq);
            let g = &mut c.state.globals;
            let b = &mut c.buckets[slot];
            c.ids[slot] = id;
            c.settled[slot] = Settled::default();
            c.closed[slot] = Closed::default();
            zero_model(c.model_state, slot, dims.state_dim);
            zero_model(c.forecast, slot, dims.forecast_dim);
            zero_model(c.scenario, slot, dims.scenario_dim);
            zero_model(c.scale, slot, dims.scale_dim);
            *b = Bucket {
                std: femto(contract.burst),
                shadow: 0,
                last_ns: now,
                rate: contract.rate.micros(),
                burst: contract.burst,
                rho: 0,
                sigma: 0,
                outstanding: 0,
                granted_shadow: 0,
                granted_pool: 0,
                requests: 0,
                fallbacks: 0,
                denied_customer: 0,
                denied_pool: 0,
                epoch: txn.seq,
                weight: contract.weight,
                flags: FLAG_ACTIVE,
                streak: 0,
                _pad: 0,
            };
            g.free_top -= 1;
            g.customers += 1;
            if index::insert(c.index, id, slot as u64) {
                g.tombstones -= 1;
            }
            slots.push(slot as u32);
        }
        let g = &c.state.globals;
        if (g.customers + g.tombstones) * 4 > c.index.len() as u64 * 3 {
            store::rebuild_index(&mut c);
        }
        txn.commit(c.state);
        Ok(slots)
    }

    /// Changes a customer's contract, keeping its tokens (capped at the new burst).
    ///
    /// # Errors
    /// [`Error::UnknownCustomer`]; [`Error::InvalidArgument`] for a bad contract;
    /// [`Error::ReadOnly`].
    pub fn update_contract(&mut self, id: u64, contract: Contract, now: u64) -> Result<()> {
        contract.validate()?;
        let slot = self.slot_of(id).ok_or(Error::UnknownCustomer(id))? as usize;
        let c = self.store.alloc_cols_mut()?;
        let txn = Txn::begin(c.state, txn_kind::ALLOCATE);
        let g = &mut c.state.globals;
        let now = advance(g, now);
        let b = &mut c.buckets[slot];
        journal_bucket(b, &mut c.journal[slot], txn.seq);
        let over = refill_bucket(b, now, g.pool.full_at_ns);
        credit_overflow(g, over);
        b.rate = contract.rate.micros();
        b.burst = contract.burst;
        b.weight = contract.weight;
        b.std = b.std.min(femto(contract.burst));
        txn.commit(c.state);
        Ok(())
    }

    /// Removes a customer: its shadow balance goes back to the pool and its reservation is
    /// released.
    ///
    /// # Errors
    /// [`Error::UnknownCustomer`]; [`Error::ReadOnly`].
    pub fn remove_customer(&mut self, id: u64, now: u64) -> Result<()> {
        self.device_state_changing()?;
        let slot = self.slot_of(id).ok_or(Error::UnknownCustomer(id))? as usize;
        let mut c = self.store.cols_mut()?;
        let txn = Txn::begin(c.state, txn_kind::ADMIN);
        let now = advance(&mut c.state.globals, now);
        touch_full(&mut c.slot_cols(), slot, txn.seq, now);
        let g = &mut c.state.globals;
        let b = &mut c.buckets[slot];
        g.pool.rho_sum -= b.rho;
        g.pool.sigma_sum -= b.sigma;
        let shadow = b.shadow;
        if b.flags & FLAG_CONTENDED != 0 {
            g.stats.flagged -= 1;
        }
        b.shadow = 0;
        b.rho = 0;
        b.sigma = 0;
        b.flags = 0;
        credit_pool(g, shadow);
        index::remove(c.index, id);
        g.tombstones += 1;
        c.free[g.free_top as usize] = slot as u32;
        g.free_top += 1;
        g.customers -= 1;
        txn.commit(c.state);
        Ok(())
    }

    /// Moves the store to a new file with room for `new_capacity` customers (slots are kept),
    /// replacing the old file atomically (write a temporary file, fsync, rename; the temporary
    /// file is removed on an error).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `new_capacity` is not larger; [`Error::Io`];
    /// [`Error::ReadOnly`].
    pub fn grow(&mut self, new_capacity: u64) -> Result<()> {
        self.device_state_changing()?;
        let old_cap = self.capacity();
        if self.store.read_only() {
            return Err(Error::ReadOnly);
        }
        if new_capacity <= old_cap || new_capacity >= u32::MAX as u64 {
            return Err(Error::invalid(format!(
                "new capacity must be above {old_cap} and below {}, got {new_capacity}",
                u32::MAX
            )));
        }
        let path = self.store.path.clone();
        let mut dims = self.store.header.dims();
        dims.capacity = new_capacity;
        let old = self.store.cols();
        let (next, ()) = Store::replace(&path, ".grow-tmp", dims, |next| {
            let mut n = next.cols_mut()?;
            let oc = old_cap as usize;
            n.buckets[..oc].copy_from_slice(old.buckets);
            n.ids[..oc].copy_from_slice(old.ids);
            n.closed[..oc].copy_from_slice(old.closed);
            n.model_state[..old.model_state.len()].copy_from_slice(old.model_state);
            n.forecast[..old.forecast.len()].copy_from_slice(old.forecast);
            n.scenario[..old.scenario.len()].copy_from_slice(old.scenario);
            n.scale[..old.scale.len()].copy_from_slice(old.scale);
            n.state.globals = old.state.globals;
            n.state.txn = old.state.txn;
            n.state.txn.active = 0;
            n.settled[..oc].copy_from_slice(old.settled);
            // slots are kept; the index and the free-slot stack are rebuilt for the new size
            store::rebuild_index(&mut n);
            store::rebuild_free(&mut n);
            Ok(())
        })?;
        self.store = next;
        Ok(())
    }

    // ---- allocation --------------------------------------------------------------------------

    /// One request for `n` tokens by customer `id` at `now`.
    ///
    /// # Errors
    /// [`Error::ReadOnly`]. An unknown customer or zero tokens is an outcome, not an error.
    pub fn allocate(&mut self, id: u64, n: u64, now: u64) -> Result<Decision> {
        let slot = self.slot_of(id).unwrap_or(NO_SLOT);
        self.allocate_slot(slot, n, now)
    }

    /// One request by slot.
    ///
    /// # Errors
    /// [`Error::ReadOnly`].
    pub fn allocate_slot(&mut self, slot: u32, n: u64, now: u64) -> Result<Decision> {
        let mut o = [Outcome::InvalidInput];
        let mut r = [0u64];
        // a batch of one, without `allocate_batch_into`'s checks of the arrays
        self.run_batch(&[slot], &[n], now, &mut o, &mut r)?;
        Ok(Decision {
            outcome: o[0],
            retry_after_ns: r[0],
        })
    }

    /// A batch of requests at `now`: `tokens[i]` for `keys[i]`. The outcomes and end state are
    /// exactly those of the requests applied one at a time in order.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`]; [`Error::InvalidArgument`] for more than [`MAX_BATCH`]
    /// requests; [`Error::ReadOnly`].
    pub fn allocate_batch(
        &mut self,
        keys: Keys<'_>,
        tokens: &[u64],
        now: u64,
    ) -> Result<BatchOutcome> {
        let mut out = BatchOutcome {
            outcomes: vec![Outcome::InvalidInput; tokens.len()],
            retry_after_ns: vec![0; tokens.len()],
        };
        self.allocate_batch_into(
            keys,
            tokens,
            now,
            &mut out.outcomes,
            &mut out.retry_after_ns,
        )?;
        Ok(out)
    }

    /// [`Engine::allocate_batch`] into caller-owned arrays (no allocation for the outputs).
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] when the arrays differ in length, [`Error::InvalidArgument`] for
    /// a batch of more than [`MAX_BATCH`] requests (nothing is changed); [`Error::ReadOnly`].
    pub fn allocate_batch_into(
        &mut self,
        keys: Keys<'_>,
        tokens: &[u64],
        now: u64,
        outcomes: &mut [Outcome],
        retry_after_ns: &mut [u64],
    ) -> Result<()> {
        let n = tokens.len();
        let klen = match keys {
            Keys::Ids(x) => x.len(),
            Keys::Slots(x) => x.len(),
        };
        for (what, got) in [
            ("keys", klen),
            ("outcomes", outcomes.len()),
            ("retry_after_ns", retry_after_ns.len()),
        ] {
            if got != n {
                return Err(Error::LengthMismatch {
                    what,
                    got,
                    expected: n,
                });
            }
        }
        if n > MAX_BATCH {
            return Err(Error::invalid(format!(
                "a batch holds at most {MAX_BATCH} requests, got {n}: split it"
            )));
        }
        if self.store.read_only() {
            return Err(Error::ReadOnly);
        }
        // Slots at or past the capacity are unknown customers: the batch path checks.
        // The resolved slots' buffer is reused from batch to batch (`resolve` writes every one).
        let mut resolved = std::mem::take(&mut self.resolved);
        let slots: &[u32] = match keys {
            Keys::Ids(ids) => {
                resolved.resize(n, NO_SLOT);
                self.resolve(ids, &mut resolved[..n])?;
                &resolved[..n]
            }
            Keys::Slots(s) => s,
        };
        self.run_batch(slots, tokens, now, outcomes, retry_after_ns)?;
        self.resolved = resolved;
        Ok(())
    }

    /// Applies a batch (`slots` resolved, the arrays checked) in a transaction of its own and
    /// commits it, taking the column views once.
    fn run_batch(
        &mut self,
        slots: &[u32],
        tokens: &[u64],
        now: u64,
        outcomes: &mut [Outcome],
        retry_after_ns: &mut [u64],
    ) -> Result<()> {
        let mut c = self.store.alloc_cols_mut()?;
        let txn = apply_batch(
            &mut c,
            &mut self.scratch,
            slots,
            tokens,
            now,
            outcomes,
            retry_after_ns,
        );
        txn.commit(c.state);
        Ok(())
    }

    /// Wall time of each phase of the last batch call (all zero when it was short enough to run
    /// sequentially): for profiling, see `examples/batch_profile.rs`.
    pub fn last_batch_phases(&self) -> batch::PhaseTimes {
        self.scratch.phases
    }

    /// Reports what a granted request actually used. `granted` tokens were admitted by `path`;
    /// `used` were consumed. Unused tokens go back at once (to the standard bucket, and to the
    /// shadow bucket or pool that paid); extra use is charged as debt to both.
    ///
    /// # Errors
    /// [`Error::UnknownCustomer`]; [`Error::InvalidArgument`] when `granted` is zero or more than
    /// the customer's grants not yet settled, or `used` is absurd; [`Error::ReadOnly`].
    pub fn settle(
        &mut self,
        id: u64,
        granted: u64,
        used: u64,
        path: GrantPath,
        now: u64,
    ) -> Result<()> {
        let slot = self.slot_of(id).ok_or(Error::UnknownCustomer(id))? as usize;
        if granted == 0 {
            return Err(Error::invalid("settle: granted must be positive"));
        }
        if used > MAX_BURST_TOKENS {
            return Err(Error::invalid(format!("settle: used {used} is absurd")));
        }
        let mut c = self.store.slot_cols_mut()?;
        if granted > c.buckets[slot].outstanding {
            return Err(Error::invalid(format!(
                "settle: {granted} tokens is more than customer {id} has outstanding ({})",
                c.buckets[slot].outstanding
            )));
        }
        let txn = Txn::begin(c.state, txn_kind::SETTLE);
        let now = advance(&mut c.state.globals, now);
        touch_full(&mut c, slot, txn.seq, now);
        let g = &mut c.state.globals;
        let b = &mut c.buckets[slot];
        let st = &mut c.settled[slot];
        if used < granted {
            let back = granted - used;
            let f = femto(back);
            b.std = (b.std + f).min(femto(b.burst));
            match path {
                GrantPath::Shadow => {
                    let s = b.shadow + f;
                    let scap = femto(b.sigma);
                    if s > scap {
                        b.shadow = scap.max(b.shadow);
                        // the part above sigma goes on to the pool
                        credit_pool(g, s - b.shadow);
                    } else {
                        b.shadow = s;
                    }
                }
                GrantPath::Pool => {
                    g.pool.level += f;
                    clamp_pool(g);
                }
            }
            st.refunded += back;
            g.stats.tokens_refunded += back;
        } else if used > granted {
            let extra = used - granted;
            let f = femto(extra);
            b.std -= f;
            match path {
                GrantPath::Shadow => b.shadow -= f,
                GrantPath::Pool => g.pool.level -= f,
            }
            st.debt += extra;
            g.stats.tokens_debt += extra;
        }
        b.outstanding -= granted;
        g.stats.settles += 1;
        txn.commit(c.state);
        Ok(())
    }

    // ---- tick --------------------------------------------------------------------------------

    /// The tick: brings every customer and the pool to `now`, closes each customer's interval
    /// counters (see [`Engine::customer`]'s `last_interval`), updates contention flags, releases
    /// the old reservations and sets the new ones (customers not listed get none), cut back to
    /// the reservable budget by weight, then proportionally.
    ///
    /// A shadow bucket keeps its balance up to its new capacity; the rest (or a debt) goes back to
    /// the pool.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a slot that holds no customer, a slot listed twice, or an
    /// absurd rate or capacity (nothing is changed); [`Error::ReadOnly`].
    pub fn tick_with(&mut self, now: u64, reservations: &[Reservation]) -> Result<TickReport> {
        let cap = self.capacity();
        let mut res: Vec<Reservation> = reservations.to_vec();
        res.sort_by_key(|r| r.slot);
        {
            let cols = self.store.cols();
            for w in res.windows(2) {
                if w[0].slot == w[1].slot {
                    return Err(Error::invalid(format!(
                        "tick: slot {} listed twice",
                        w[0].slot
                    )));
                }
            }
            for r in &res {
                if r.slot as u64 >= cap || !cols.buckets[r.slot as usize].active() {
                    return Err(Error::invalid(format!(
                        "tick: slot {} holds no customer",
                        r.slot
                    )));
                }
                if r.rate.micros() > MAX_RATE_MICROS || r.capacity > MAX_BURST_TOKENS {
                    return Err(Error::invalid(format!(
                        "tick: reservation for slot {} is absurd",
                        r.slot
                    )));
                }
            }
        }
        if self.store.read_only() {
            return Err(Error::ReadOnly);
        }
        // Cut back the asks to the budget.
        let c = self.store.cols();
        let asks_rate: Vec<(u64, u16)> = res
            .iter()
            .map(|r| (r.rate.micros(), c.buckets[r.slot as usize].weight))
            .collect();
        let asks_cap: Vec<(u64, u16)> = res
            .iter()
            .map(|r| (r.capacity, c.buckets[r.slot as usize].weight))
            .collect();
        let asked_rate: u128 = asks_rate.iter().map(|a| a.0 as u128).sum();
        let asked_cap: u128 = asks_cap.iter().map(|a| a.0 as u128).sum();
        let cfg_pub = config_from_raw(&c.state.globals.config);
        let rates = cut_back(&asks_rate, cfg_pub.rate_budget());
        let caps = cut_back(&asks_cap, cfg_pub.capacity_budget());
        let slots_sorted: Vec<u32> = res.iter().map(|r| r.slot).collect();
        let grants = Grants::Sparse {
            slots: &slots_sorted,
            rates: &rates,
            caps: &caps,
        };
        self.commit_tick(now, grants, asked_rate, asked_cap)
    }

    /// [`Engine::tick_with`] for the predictive tick's own reservations: `rates[slot]` and
    /// `caps[slot]` for the slots `0..rates.len()` (both 0 for none), which the caller guarantees
    /// to be for active customers only and within [`MAX_RATE_MICROS`] and [`MAX_BURST_TOKENS`]
    /// (the checks `tick_with` makes on a caller's list). The same result as `tick_with` with
    /// the list of the slots whose rate is not 0: cutting back by weight then proportionally
    /// grants 0 to a 0 ask and leaves the other grants as they are. No sorting, no copies, and
    /// when the asks fit the budget (the usual case) no per-slot allocation at all.
    pub(crate) fn tick_dense(
        &mut self,
        now: u64,
        rates: &[u64],
        caps: &[u64],
    ) -> Result<TickReport> {
        if self.store.read_only() {
            return Err(Error::ReadOnly);
        }
        assert_eq!(rates.len(), caps.len());
        assert!(rates.len() as u64 <= self.capacity());
        let c = self.store.cols();
        let (asked_rate, asked_cap) = rates
            .par_iter()
            .zip(caps.par_iter())
            .with_min_len(SHARD_SLOTS)
            .map(|(&r, &k)| (r as u128, k as u128))
            .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        let cfg_pub = config_from_raw(&c.state.globals.config);
        let with_weights = |asks: &[u64]| -> Vec<(u64, u16)> {
            asks.iter()
                .zip(c.buckets.iter())
                .map(|(&a, b)| (a, b.weight))
                .collect()
        };
        let cut_rates = (asked_rate > cfg_pub.rate_budget() as u128)
            .then(|| cut_back(&with_weights(rates), cfg_pub.rate_budget()));
        let cut_caps = (asked_cap > cfg_pub.capacity_budget() as u128)
            .then(|| cut_back(&with_weights(caps), cfg_pub.capacity_budget()));
        let grants = Grants::Dense {
            rates: cut_rates.as_deref().unwrap_or(rates),
            caps: cut_caps.as_deref().unwrap_or(caps),
        };
        self.commit_tick(now, grants, asked_rate, asked_cap)
    }

    /// The tick's transaction, for grants already cut back to the budget.
    fn commit_tick(
        &mut self,
        now: u64,
        grants: Grants<'_>,
        asked_rate: u128,
        asked_cap: u128,
    ) -> Result<TickReport> {
        let c = self.store.cols_mut()?;
        let cfg_pub = config_from_raw(&c.state.globals.config);
        let cut = asked_rate > cfg_pub.rate_budget() as u128
            || asked_cap > cfg_pub.capacity_budget() as u128;
        let txn = Txn::begin(c.state, txn_kind::TICK);
        let seq = txn.seq;
        let g = &mut c.state.globals;
        let now = advance(g, now);
        let cfg = g.config;
        let full_at = g.pool.full_at_ns;

        // Close intervals, update flags, set reservations: shards in parallel.
        #[derive(Default, Clone, Copy)]
        struct Acc {
            overflow: Overflow,
            released: i128,
            rho: u64,
            sigma: u64,
            customers: u64,
            flagged: u64,
        }
        let acc = c
            .buckets
            .par_chunks_mut(SHARD_SLOTS)
            .zip(c.journal.par_chunks_mut(SHARD_SLOTS))
            .zip(c.journal_aux.par_chunks_mut(SHARD_SLOTS))
            .zip(c.settled.par_chunks_mut(SHARD_SLOTS))
            .zip(c.closed.par_chunks_mut(SHARD_SLOTS))
            .enumerate()
            .map(|(s, ((((bk, jn), ja), st), cl))| {
                let base = (s * SHARD_SLOTS) as u32;
                let (mut k, hi) = match grants {
                    Grants::Sparse { slots, .. } => (
                        slots.partition_point(|&x| x < base),
                        slots.partition_point(|&x| x < base + bk.len() as u32),
                    ),
                    Grants::Dense { .. } => (0, 0),
                };
                let mut a = Acc::default();
                for (i, b) in bk.iter_mut().enumerate() {
                    if !b.active() {
                        continue;
                    }
                    journal_full(b, &mut jn[i], &mut ja[i], &st[i], &cl[i], seq);
                    a.overflow = a.overflow + refill_bucket(b, now, full_at);
                    cl[i] = b.interval_usage(&st[i]);
                    update_flag(b, &cfg);
                    b.reset_interval();
                    st[i] = Settled::default();
                    let slot = base as usize + i;
                    let (rho, sigma) = match grants {
                        Grants::Sparse { slots, rates, caps } => {
                            if k < hi && slots[k] as usize == slot {
                                k += 1;
                                (rates[k - 1], caps[k - 1])
                            } else {
                                (0, 0)
                            }
                        }
                        Grants::Dense { rates, caps } if slot < rates.len() => {
                            (rates[slot], caps[slot])
                        }
                        Grants::Dense { .. } => (0, 0),
                    };
                    let keep = b.shadow.clamp(0, femto(sigma));
                    a.released += b.shadow - keep;
                    b.shadow = keep;
                    b.rho = rho;
                    b.sigma = sigma;
                    a.rho += rho;
                    a.sigma += sigma;
                    a.customers += 1;
                    a.flagged += (b.flags & FLAG_CONTENDED != 0) as u64;
                }
                a
            })
            .reduce(Acc::default, |x, y| Acc {
                overflow: x.overflow + y.overflow,
                released: x.released + y.released,
                rho: x.rho + y.rho,
                sigma: x.sigma + y.sigma,
                customers: x.customers + y.customers,
                flagged: x.flagged + y.flagged,
            });
        let g = &mut c.state.globals;
        // Overflow accrued under the old reservations, against the old cap.
        credit_overflow(g, acc.overflow);
        g.pool.rho_sum = acc.rho;
        g.pool.sigma_sum = acc.sigma;
        // The released balances return against the new cap (which also trims a pool above it).
        g.pool.level += acc.released;
        g.stats.femto_returned += acc.released;
        clamp_pool(g);
        g.stats.flagged = acc.flagged;
        g.stats.ticks += 1;
        g.last_tick_ns = now;
        txn.commit(c.state);
        Ok(TickReport {
            customers: acc.customers,
            asked_rate_micros: asked_rate,
            reserved_rate_micros: acc.rho,
            reserved_capacity: acc.sigma,
            cut_back: cut,
            flagged: acc.flagged,
        })
    }

    // ---- queries -----------------------------------------------------------------------------

    /// A customer as of the last time the engine touched it.
    ///
    /// # Errors
    /// [`Error::UnknownCustomer`].
    pub fn customer(&self, id: u64) -> Result<CustomerView> {
        self.customer_view(id, None)
    }

    /// A customer as it would be at `now` (levels refilled; nothing is written).
    ///
    /// # Errors
    /// [`Error::UnknownCustomer`].
    pub fn customer_at(&self, id: u64, now: u64) -> Result<CustomerView> {
        self.customer_view(id, Some(now))
    }

    fn customer_view(&self, id: u64, now: Option<u64>) -> Result<CustomerView> {
        let slot = self.slot_of(id).ok_or(Error::UnknownCustomer(id))? as usize;
        let c = self.store.cols();
        let mut b = c.buckets[slot];
        if let Some(t) = now {
            let g = &c.state.globals;
            refill_bucket(&mut b, t.max(g.pool.last_ns), g.pool.full_at_ns);
        }
        let d = self.store.header.dims();
        let pick =
            |col: &[f32], dim: u32| col[slot * dim as usize..(slot + 1) * dim as usize].to_vec();
        Ok(CustomerView {
            id,
            slot: slot as u32,
            contract: Contract {
                burst: b.burst,
                rate: Rate::from_micros_per_sec(b.rate),
                weight: b.weight,
            },
            std_femto: b.std,
            shadow_femto: b.shadow,
            reserved_rate: Rate::from_micros_per_sec(b.rho),
            shadow_capacity: b.sigma,
            flagged: b.flags & FLAG_CONTENDED != 0,
            outstanding: b.outstanding,
            last_interval: c.closed[slot],
            this_interval: b.interval_usage(&c.settled[slot]),
            forecast: pick(c.forecast, d.forecast_dim),
            scenarios: pick(c.scenario, d.scenario_dim),
        })
    }

    /// Engine-wide counters and pool state.
    pub fn stats(&self) -> Stats {
        let s = self.store.cols().state;
        Stats {
            counters: s.globals.stats,
            customers: s.globals.customers,
            capacity: self.capacity(),
            pool_femto: s.globals.pool.level,
            reserved_rate_micros: s.globals.pool.rho_sum,
            reserved_capacity: s.globals.pool.sigma_sum,
            last_committed: s.txn.last_committed,
            last_rolled_back: s.txn.last_rolled_back,
        }
    }

    /// Ids of the customers whose contention flag is raised, in slot order.
    pub fn flagged(&self) -> Vec<u64> {
        let c = self.store.cols();
        c.buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| b.active() && b.flags & FLAG_CONTENDED != 0)
            .map(|(i, _)| c.ids[i])
            .collect()
    }

    /// Ids of all customers, in slot order.
    pub fn customer_ids(&self) -> Vec<u64> {
        let c = self.store.cols();
        c.buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| b.active())
            .map(|(i, _)| c.ids[i])
            .collect()
    }

    /// Where the pool's supply is at `now` (semantics I4), computed without writing anything:
    /// as if every customer and the pool were brought up to `now`.
    pub fn ledger(&self, now: u64) -> Ledger {
        let c = self.store.cols();
        let mut g = c.state.globals;
        let now = advance(&mut g, now);
        let full_at = g.pool.full_at_ns;
        let (overflow, shadows) = c
            .buckets
            .par_iter()
            .with_min_len(4096)
            .filter(|b| b.active())
            .map(|b| {
                let mut b = *b;
                let o = refill_bucket(&mut b, now, full_at);
                (o, b.shadow)
            })
            .reduce(|| (Overflow::default(), 0), |a, b| (a.0 + b.0, a.1 + b.1));
        credit_overflow(&mut g, overflow);
        let s = &g.stats;
        let granted = s.tokens_shadow as i128 + s.tokens_pool as i128 + s.tokens_debt as i128
            - s.tokens_refunded as i128;
        let created = self.created_ns();
        Ledger {
            supplied: femto(g.config.pool_burst)
                + accrual(g.config.pool_rate, now.saturating_sub(created)),
            in_pool: g.pool.level,
            in_shadows: shadows,
            granted_net: granted * FEMTO_PER_TOKEN,
            lost_at_cap: s.femto_lost_at_cap,
        }
    }

    fn created_ns(&self) -> u64 {
        self.store.cols().state.globals.created_ns
    }

    /// Checks the store's internal consistency: every record within its bounds, the index and
    /// the records agreeing, the sums of reservations matching, the pool within its cap.
    ///
    /// # Errors
    /// [`Error::BadFile`] describing the first problem found.
    pub fn check(&self) -> Result<()> {
        let c = self.store.cols();
        let bad = |r: String| Err(Error::bad_file(&self.store.path, r));
        let g = &c.state.globals;
        let (mut rho, mut sigma, mut n, mut flagged) = (0u64, 0u64, 0u64, 0u64);
        for (i, b) in c.buckets.iter().enumerate() {
            if !b.active() {
                continue;
            }
            n += 1;
            rho += b.rho;
            sigma += b.sigma;
            flagged += (b.flags & FLAG_CONTENDED != 0) as u64;
            if b.std > femto(b.burst) {
                return bad(format!("slot {i}: standard bucket above its burst"));
            }
            if b.shadow > femto(b.sigma) {
                return bad(format!("slot {i}: shadow bucket above its capacity"));
            }
            if b.burst == 0 || b.rate == 0 {
                return bad(format!("slot {i}: empty contract"));
            }
            if index::find(c.index, c.ids[i]) != Some(i as u64) {
                return bad(format!("slot {i}: index does not map id {} here", c.ids[i]));
            }
        }
        if n != g.customers {
            return bad(format!(
                "{n} active records but {} customers counted",
                g.customers
            ));
        }
        // and the other way: every index entry names the slot of its own customer (a stray
        // entry would send `resolve`, which trusts the index, to another customer's record)
        let mut entries = 0u64;
        for e in c.index.iter().filter(|e| valid_id(e.id)) {
            entries += 1;
            let s = e.slot as usize;
            if s >= c.buckets.len() || !c.buckets[s].active() || c.ids[s] != e.id {
                return bad(format!(
                    "index entry for id {} names slot {s}, which does not hold it",
                    e.id
                ));
            }
        }
        if entries != n {
            return bad(format!("{entries} index entries for {n} customers"));
        }
        let top = g.free_top as usize;
        if top as u64 + n != self.capacity() {
            return bad(format!(
                "{top} free slots and {n} customers do not fill the capacity"
            ));
        }
        let mut seen = vec![false; c.buckets.len()];
        for &f in &c.free[..top] {
            let f = f as usize;
            if f >= c.buckets.len()
                || c.buckets[f].active()
                || std::mem::replace(&mut seen[f], true)
            {
                return bad(format!("free-slot stack entry {f} is not a free slot"));
            }
        }
        if rho != g.pool.rho_sum || sigma != g.pool.sigma_sum {
            return bad("reservation sums do not match the records".into());
        }
        if flagged != g.stats.flagged {
            return bad("flagged count does not match the records".into());
        }
        if g.pool.level > pool_cap(&g.pool, &g.config) {
            return bad("pool above its cap".into());
        }
        let cfg = config_from_raw(&g.config);
        if rho > cfg.rate_budget() || sigma > cfg.capacity_budget() {
            return bad("reservations above the budget".into());
        }
        if c.state.txn.active != 0 && !self.store.read_only() {
            return bad("a transaction is still active".into());
        }
        Ok(())
    }
}

/// Begins a batch's transaction and applies the batch (`slots` resolved, the arrays checked);
/// the caller commits it. A transaction never committed is what a killed process leaves.
fn apply_batch(
    c: &mut store::AllocCols<'_>,
    scratch: &mut batch::Scratch,
    slots: &[u32],
    tokens: &[u64],
    now: u64,
    outcomes: &mut [Outcome],
    retry_after_ns: &mut [u64],
) -> Txn {
    let txn = Txn::begin(c.state, txn_kind::ALLOCATE);
    batch::run(
        c.buckets,
        c.journal,
        c.log_heads,
        &mut c.state.globals,
        txn.seq,
        slots,
        tokens,
        now,
        outcomes,
        retry_after_ns,
        scratch,
    );
    c.state.globals.stats.batches += 1;
    txn
}

/// Saves slot `slot`'s full pre-image for transaction `seq` (once per transaction).
fn journal_slot(c: &mut store::SlotCols<'_>, slot: usize, seq: u64) {
    journal_full(
        &mut c.buckets[slot],
        &mut c.journal[slot],
        &mut c.journal_aux[slot],
        &c.settled[slot],
        &c.closed[slot],
        seq,
    );
}

/// Journals slot `slot` in full for transaction `seq`, brings it to `now` and credits its shadow
/// overflow to the pool (already brought to `now`).
fn touch_full(c: &mut store::SlotCols<'_>, slot: usize, seq: u64, now: u64) {
    journal_slot(c, slot, seq);
    let b = &mut c.buckets[slot];
    let over = refill_bucket(b, now, c.state.globals.pool.full_at_ns);
    credit_overflow(&mut c.state.globals, over);
}

fn zero_model(col: &mut [f32], slot: usize, dim: u32) {
    let d = dim as usize;
    col[slot * d..(slot + 1) * d].fill(0.0);
}

/// Contention flag with hysteresis, from the interval's counters (before they are reset).
/// The tick's grants, already cut back to the budget.
#[derive(Clone, Copy)]
enum Grants<'a> {
    /// For the slots listed (ascending), each once.
    Sparse {
        slots: &'a [u32],
        rates: &'a [u64],
        caps: &'a [u64],
    },
    /// Per slot from 0 (0 for none); slots past the end get none.
    Dense { rates: &'a [u64], caps: &'a [u64] },
}

fn update_flag(b: &mut Bucket, cfg: &ConfigRaw) {
    let req = b.requests as u64;
    if req < cfg.contention_min_requests as u64 || req == 0 {
        return;
    }
    let contended = b.fallbacks as u64 + b.denied_pool as u64;
    let share_ppm = contended * 1_000_000 / req;
    let flagged = b.flags & FLAG_CONTENDED != 0;
    let toward = if flagged {
        share_ppm < cfg.contention_low_ppm as u64
    } else {
        share_ppm > cfg.contention_high_ppm as u64
    };
    if toward {
        b.streak = b.streak.saturating_add(1);
        if b.streak as u32 >= cfg.contention_ticks {
            b.flags ^= FLAG_CONTENDED;
            b.streak = 0;
        }
    } else {
        b.streak = 0;
    }
}

#[cfg(test)]
mod recovery_tests;
