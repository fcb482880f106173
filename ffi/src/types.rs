//! The plain C structs and enums of the ABI, and their conversions from the engine's types.
//!
//! Token counts are whole tokens (`uint64_t`), rates micro-tokens per second (`uint64_t`: one
//! token/s is 1,000,000), times nanoseconds on the caller's monotonic clock. Bucket levels are
//! exact femto-token counts (10^-15 token, an `i128` inside the engine): they are given both as
//! whole tokens (`int64_t`, rounded toward negative infinity, saturating) and exactly as an
//! [`sb_femto`].

use engine::forecast::QuantileLevel;
use engine::layout::Closed;
use engine::{
    Contract, EngineConfig, Event, Forecast, Outcome, Rate, ReservationPolicy, Stats, Target,
    TickReport,
};

use crate::boundary::{Fail, FfiResult};

/// What happened to one request; the values match the engine's `Outcome`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum sb_outcome {
    /// Granted from the customer's shadow bucket (the fast path).
    GrantedShadow = 0,
    /// Granted from the pool (a fallback: the reservation did not cover it).
    GrantedPool = 1,
    /// Denied: the customer's contract is exhausted (an API answers 429).
    DeniedCustomerLimit = 2,
    /// Denied: the shared pool is exhausted (an API sheds load, 503).
    DeniedPoolExhausted = 3,
    /// The request is larger than the customer's burst and can never pass.
    ExceedsBurst = 4,
    /// No such customer (or slot).
    UnknownCustomer = 5,
    /// The request itself is invalid (zero tokens).
    InvalidInput = 6,
}

impl From<Outcome> for sb_outcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::GrantedShadow => sb_outcome::GrantedShadow,
            Outcome::GrantedPool => sb_outcome::GrantedPool,
            Outcome::DeniedCustomerLimit => sb_outcome::DeniedCustomerLimit,
            Outcome::DeniedPoolExhausted => sb_outcome::DeniedPoolExhausted,
            Outcome::ExceedsBurst => sb_outcome::ExceedsBurst,
            Outcome::UnknownCustomer => sb_outcome::UnknownCustomer,
            Outcome::InvalidInput => sb_outcome::InvalidInput,
        }
    }
}

/// An exact signed 128-bit count of femto-tokens (10^-15 token): the value is
/// `hi * 2^64 + lo` (two's complement, as `((__int128)hi << 64) | lo` in GCC and Clang).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct sb_femto {
    /// The high 64 bits, signed.
    pub hi: i64,
    /// The low 64 bits.
    pub lo: u64,
}

impl From<i128> for sb_femto {
    fn from(v: i128) -> Self {
        sb_femto {
            hi: (v >> 64) as i64,
            lo: v as u64,
        }
    }
}

/// Whole tokens in a femto-token level, rounded toward negative infinity, saturating at the
/// `int64_t` range.
pub(crate) fn whole_tokens(level: i128) -> i64 {
    engine::fixed::whole_tokens(level).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// Engine-wide settings (the engine's `EngineConfig`). Fill with `sb_config_default` and change
/// what you need.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct sb_config {
    /// Pool capacity in tokens.
    pub pool_burst: u64,
    /// Pool refill rate, micro-tokens per second.
    pub pool_rate_micros: u64,
    /// Share of the pool that reservations may take, parts per million (default 800000).
    pub alpha_ppm: u32,
    /// Contended share above which a customer's contention streak grows, ppm (default 500000).
    pub contention_high_ppm: u32,
    /// Tick interval, ns (default 60 s).
    pub interval_ns: u64,
    /// Contended share below which a raised flag's streak grows, ppm (default 200000).
    pub contention_low_ppm: u32,
    /// Consecutive ticks that raise or clear the flag, 1..=255 (default 3).
    pub contention_ticks: u32,
    /// Intervals with fewer requests leave the streak unchanged (default 1).
    pub contention_min_requests: u32,
}

impl From<EngineConfig> for sb_config {
    fn from(c: EngineConfig) -> Self {
        sb_config {
            pool_burst: c.pool_burst,
            pool_rate_micros: c.pool_rate.micros(),
            alpha_ppm: c.alpha_ppm,
            contention_high_ppm: c.contention_high_ppm,
            interval_ns: c.interval_ns,
            contention_low_ppm: c.contention_low_ppm,
            contention_ticks: c.contention_ticks as u32,
            contention_min_requests: c.contention_min_requests,
        }
    }
}

impl sb_config {
    pub(crate) fn to_engine(self) -> FfiResult<EngineConfig> {
        let ticks = u8::try_from(self.contention_ticks).map_err(|_| {
            Fail::invalid(format!(
                "contention_ticks must be 1..=255, got {}",
                self.contention_ticks
            ))
        })?;
        let c = EngineConfig {
            pool_burst: self.pool_burst,
            pool_rate: Rate::from_micros_per_sec(self.pool_rate_micros),
            alpha_ppm: self.alpha_ppm,
            interval_ns: self.interval_ns,
            contention_high_ppm: self.contention_high_ppm,
            contention_low_ppm: self.contention_low_ppm,
            contention_ticks: ticks,
            contention_min_requests: self.contention_min_requests,
        };
        c.validate()?;
        Ok(c)
    }
}

/// How to create a store (the engine's `CreateOptions`). Fill with `sb_create_options_default`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct sb_create_options {
    /// Customer slots (grow later with `sb_engine_grow`).
    pub capacity: u64,
    /// The caller's clock at creation, ns: the pool starts full at this instant.
    pub now_ns: u64,
    /// Engine configuration.
    pub config: sb_config,
    /// Floats of forecaster state per customer (default 64, at most 65,536; 0 with the other
    /// three: no model).
    pub state_dim: u32,
    /// Floats of forecast per customer (default 16: four horizons of mean, p50, p90 and p99; at
    /// most 1,024).
    pub forecast_dim: u32,
    /// Scenario probabilities per customer (default 4, at most 64).
    pub scenario_dim: u32,
    /// Floats of feature scaling per customer (default 2, at most 64).
    pub scale_dim: u32,
}

/// The sizes of a store's columns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct sb_dims {
    /// Customer slots.
    pub capacity: u64,
    /// Floats of forecaster state per customer.
    pub state_dim: u32,
    /// Floats of forecast per customer.
    pub forecast_dim: u32,
    /// Scenario probabilities per customer.
    pub scenario_dim: u32,
    /// Floats of feature scaling per customer.
    pub scale_dim: u32,
}

/// What `sb_engine_snapshot` or `sb_snapshot_capture_write` wrote.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct sb_snapshot {
    /// The snapshot's length in bytes (the store file's).
    pub bytes: u64,
    /// Bytes written to the disk; the rest are runs of zeros left as holes.
    pub written: u64,
    /// The last transaction the snapshot holds (`sb_stats.last_committed`).
    pub last_committed: u64,
}

impl From<engine::Snapshot> for sb_snapshot {
    fn from(s: engine::Snapshot) -> Self {
        sb_snapshot {
            bytes: s.bytes,
            written: s.written,
            last_committed: s.last_committed,
        }
    }
}

/// A customer's contract: a standard token bucket and a weight (tier).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct sb_contract {
    /// Bucket capacity, tokens (1 ..= 2^50).
    pub burst: u64,
    /// Refill rate, micro-tokens per second (1 ..= 10^18).
    pub rate_micros: u64,
    /// Served first when reservations are cut back: higher first (use 1 by default).
    pub weight: u16,
}

impl sb_contract {
    pub(crate) fn to_engine(self) -> Contract {
        Contract::new(self.burst, Rate::from_micros_per_sec(self.rate_micros))
            .with_weight(self.weight)
    }
}

impl From<Contract> for sb_contract {
    fn from(c: Contract) -> Self {
        sb_contract {
            burst: c.burst,
            rate_micros: c.rate.micros(),
            weight: c.weight,
        }
    }
}

/// One request's outcome and retry-after.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct sb_decision {
    /// What happened.
    pub outcome: sb_outcome,
    /// For denials, ns until the same request would pass if nothing else happened
    /// (`UINT64_MAX`: never); 0 for grants.
    pub retry_after_ns: u64,
}

/// A reservation set at a tick.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct sb_reservation {
    /// The customer's slot (from `sb_engine_add_customer` or `sb_engine_slot_of`).
    pub slot: u32,
    /// Reserved rate, micro-tokens per second.
    pub rate_micros: u64,
    /// Shadow capacity, tokens.
    pub capacity: u64,
}

/// What a tick did.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct sb_tick_report {
    /// Customers whose interval was closed.
    pub customers: u64,
    /// Sum of reserved rates asked, micro-tokens/s (saturating at `UINT64_MAX`).
    pub asked_rate_micros: u64,
    /// Sum of reserved rates set after cut-back, micro-tokens/s.
    pub reserved_rate_micros: u64,
    /// Sum of shadow capacities set, tokens.
    pub reserved_capacity: u64,
    /// Customers flagged as contended after this tick.
    pub flagged: u64,
    /// Whether the asks had to be cut back to the reservable budget.
    pub cut_back: bool,
}

impl From<TickReport> for sb_tick_report {
    fn from(t: TickReport) -> Self {
        sb_tick_report {
            customers: t.customers,
            asked_rate_micros: u64::try_from(t.asked_rate_micros).unwrap_or(u64::MAX),
            reserved_rate_micros: t.reserved_rate_micros,
            reserved_capacity: t.reserved_capacity,
            flagged: t.flagged,
            cut_back: t.cut_back,
        }
    }
}

/// A customer's usage over one interval.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct sb_interval {
    /// Tokens granted from the shadow bucket.
    pub granted_shadow: u64,
    /// Tokens granted from the pool.
    pub granted_pool: u64,
    /// Requests decided.
    pub requests: u64,
    /// Pool grants (deviations from the reservation).
    pub fallbacks: u64,
    /// Customer-limit denials.
    pub denied_customer: u64,
    /// Pool-exhausted denials.
    pub denied_pool: u64,
    /// Tokens refunded by settles.
    pub refunded: u64,
    /// Tokens charged as settlement debt.
    pub debt: u64,
}

impl From<Closed> for sb_interval {
    fn from(c: Closed) -> Self {
        sb_interval {
            granted_shadow: c.granted_shadow,
            granted_pool: c.granted_pool,
            requests: c.requests,
            fallbacks: c.fallbacks,
            denied_customer: c.denied_customer,
            denied_pool: c.denied_pool,
            refunded: c.refunded,
            debt: c.debt,
        }
    }
}

/// One customer as the engine sees it. The forecast and scenario probabilities are read with
/// `sb_engine_customer_forecast`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct sb_customer {
    /// Customer id.
    pub id: u64,
    /// Slot in the store.
    pub slot: u32,
    /// Contract.
    pub contract: sb_contract,
    /// Standard bucket level, whole tokens (rounded down; negative after settlement debt).
    pub std_tokens: i64,
    /// Shadow bucket level, whole tokens (rounded down).
    pub shadow_tokens: i64,
    /// Standard bucket level, exact.
    pub std_femto: sb_femto,
    /// Shadow bucket level, exact.
    pub shadow_femto: sb_femto,
    /// Reserved rate, micro-tokens per second.
    pub reserved_rate_micros: u64,
    /// Shadow capacity, tokens.
    pub shadow_capacity: u64,
    /// Tokens granted and not yet settled.
    pub outstanding: u64,
    /// Usage in the last closed interval.
    pub last_interval: sb_interval,
    /// Usage so far in the current interval.
    pub this_interval: sb_interval,
    /// Whether the contention flag is raised.
    pub flagged: bool,
}

impl From<&engine::CustomerView> for sb_customer {
    fn from(v: &engine::CustomerView) -> Self {
        sb_customer {
            id: v.id,
            slot: v.slot,
            contract: v.contract.into(),
            std_tokens: whole_tokens(v.std_femto),
            shadow_tokens: whole_tokens(v.shadow_femto),
            std_femto: v.std_femto.into(),
            shadow_femto: v.shadow_femto.into(),
            reserved_rate_micros: v.reserved_rate.micros(),
            shadow_capacity: v.shadow_capacity,
            outstanding: v.outstanding,
            last_interval: v.last_interval.into(),
            this_interval: v.this_interval.into(),
            flagged: v.flagged,
        }
    }
}

/// Engine-wide counters (since the store was created) and pool state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct sb_stats {
    /// Requests seen (all outcomes).
    pub requests: u64,
    /// Grants from shadow buckets.
    pub shadow_grants: u64,
    /// Grants from the pool (fallbacks).
    pub pool_grants: u64,
    /// Customer-limit denials.
    pub denied_customer: u64,
    /// Pool-exhausted denials.
    pub denied_pool: u64,
    /// Exceeds-burst outcomes.
    pub exceeds_burst: u64,
    /// Unknown-customer outcomes.
    pub unknown: u64,
    /// Invalid-input outcomes.
    pub invalid: u64,
    /// Tokens granted from shadow buckets.
    pub tokens_shadow: u64,
    /// Tokens granted from the pool.
    pub tokens_pool: u64,
    /// Tokens refunded by settles.
    pub tokens_refunded: u64,
    /// Tokens charged as settlement debt.
    pub tokens_debt: u64,
    /// Settles applied.
    pub settles: u64,
    /// Immediate reservation bumps after a fallback.
    pub bumps: u64,
    /// Ticks run.
    pub ticks: u64,
    /// Customers whose contention flag is raised now.
    pub flagged: u64,
    /// Allocation batches committed.
    pub batches: u64,
    /// Customers in the store.
    pub customers: u64,
    /// Customer slots.
    pub capacity: u64,
    /// Sum of reserved rates, micro-tokens/s.
    pub reserved_rate_micros: u64,
    /// Sum of shadow capacities, tokens.
    pub reserved_capacity: u64,
    /// Sequence number of the last completed transaction.
    pub last_committed: u64,
    /// Sequence number of the last transaction rolled back after a crash (0: none).
    pub last_rolled_back: u64,
    /// Pool level, whole tokens (rounded down, saturating).
    pub pool_tokens: i64,
    /// Pool level, exact.
    pub pool_femto: sb_femto,
    /// Femto-tokens that came back to the pool from shadow buckets.
    pub femto_returned: sb_femto,
    /// Femto-tokens of pool supply lost at the pool's cap.
    pub femto_lost_at_cap: sb_femto,
}

impl From<Stats> for sb_stats {
    fn from(s: Stats) -> Self {
        let c = s.counters;
        sb_stats {
            requests: c.requests,
            shadow_grants: c.shadow_grants,
            pool_grants: c.pool_grants,
            denied_customer: c.denied_customer,
            denied_pool: c.denied_pool,
            exceeds_burst: c.exceeds_burst,
            unknown: c.unknown,
            invalid: c.invalid,
            tokens_shadow: c.tokens_shadow,
            tokens_pool: c.tokens_pool,
            tokens_refunded: c.tokens_refunded,
            tokens_debt: c.tokens_debt,
            settles: c.settles,
            bumps: c.bumps,
            ticks: c.ticks,
            flagged: c.flagged,
            batches: c.batches,
            customers: s.customers,
            capacity: s.capacity,
            reserved_rate_micros: s.reserved_rate_micros,
            reserved_capacity: s.reserved_capacity,
            last_committed: s.last_committed,
            last_rolled_back: s.last_rolled_back,
            pool_tokens: whole_tokens(s.pool_femto),
            pool_femto: s.pool_femto.into(),
            femto_returned: c.femto_returned.into(),
            femto_lost_at_cap: c.femto_lost_at_cap.into(),
        }
    }
}

/// Where every femto-token of the pool's supply is at one instant (semantics I4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct sb_ledger {
    /// The pool's initial fill plus its refill since creation.
    pub supplied: sb_femto,
    /// In the pool.
    pub in_pool: sb_femto,
    /// In shadow buckets.
    pub in_shadows: sb_femto,
    /// Granted net of refunds, debt counted as granted.
    pub granted_net: sb_femto,
    /// Lost at the pool's cap.
    pub lost_at_cap: sb_femto,
    /// Whether `supplied` is exactly the sum of the other four.
    pub balanced: bool,
}

impl From<engine::Ledger> for sb_ledger {
    fn from(l: engine::Ledger) -> Self {
        sb_ledger {
            supplied: l.supplied.into(),
            in_pool: l.in_pool.into(),
            in_shadows: l.in_shadows.into(),
            granted_net: l.granted_net.into(),
            lost_at_cap: l.lost_at_cap.into(),
            balanced: l.balanced(),
        }
    }
}

/// The baseline forecasters `sb_engine_set_predictor_baseline` can set.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum sb_baseline {
    /// The last interval's use (no parameter).
    LastValue = 0,
    /// An exponentially weighted mean; the parameter is alpha, in (0, 1].
    Ewma = 1,
    /// The use one period earlier; the parameter is the period in intervals.
    SeasonalNaive = 2,
    /// An Autopilot-style decaying histogram; the parameter is the half-life in intervals.
    Autopilot = 3,
}

/// What part of a forecast becomes the reservation (`sb_policy.target`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum sb_target {
    /// The expected use.
    Mean = 0,
    /// The median.
    P50 = 1,
    /// The 90th percentile (the default).
    P90 = 2,
    /// The 99th percentile.
    P99 = 3,
    /// Enough for the scenarios up to cumulative probability `scenario_probability`.
    Scenario = 4,
}

/// How forecasts become reservations: `rho = target * headroom / interval`,
/// `sigma = rho * interval * capacity_intervals`, each capped at the customer's contract.
/// Fill with `sb_policy_default`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct sb_policy {
    /// Index into the predictor's horizons (0: the next interval).
    pub horizon: u32,
    /// One of `sb_target`.
    pub target: u32,
    /// With `SB_TARGET_SCENARIO`: the cumulative probability to cover, in (0, 1].
    pub scenario_probability: f64,
    /// Multiplier on the target (at least 0).
    pub headroom: f64,
    /// Shadow capacity in intervals of the reserved rate (at least 0).
    pub capacity_intervals: f64,
}

impl sb_policy {
    pub(crate) fn to_engine(self) -> FfiResult<ReservationPolicy> {
        let target = match self.target {
            x if x == sb_target::Mean as u32 => Target::Mean,
            x if x == sb_target::P50 as u32 => Target::Quantile(QuantileLevel::P50),
            x if x == sb_target::P90 as u32 => Target::Quantile(QuantileLevel::P90),
            x if x == sb_target::P99 as u32 => Target::Quantile(QuantileLevel::P99),
            x if x == sb_target::Scenario as u32 => Target::Scenario {
                probability: self.scenario_probability,
            },
            x => return Err(Fail::invalid(format!("unknown policy target {x}"))),
        };
        Ok(ReservationPolicy {
            horizon: self.horizon as usize,
            target,
            headroom: self.headroom,
            capacity_intervals: self.capacity_intervals,
        })
    }
}

impl From<ReservationPolicy> for sb_policy {
    fn from(p: ReservationPolicy) -> Self {
        let (target, probability) = match p.target {
            Target::Mean => (sb_target::Mean, 0.0),
            Target::Quantile(QuantileLevel::P50) => (sb_target::P50, 0.0),
            Target::Quantile(QuantileLevel::P90) => (sb_target::P90, 0.0),
            Target::Quantile(QuantileLevel::P99) => (sb_target::P99, 0.0),
            Target::Scenario { probability } => (sb_target::Scenario, probability),
        };
        sb_policy {
            horizon: u32::try_from(p.horizon).unwrap_or(u32::MAX),
            target: target as u32,
            scenario_probability: probability,
            headroom: p.headroom,
            capacity_intervals: p.capacity_intervals,
        }
    }
}

/// An event the forecaster is told about (a campaign, a launch, a season).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct sb_event {
    /// The customer it concerns (ignored when `global` is 1).
    pub customer: u64,
    /// 1: a global event; 0: an event of `customer`.
    pub global: u32,
    /// A caller-defined kind, kept for the caller's bookkeeping.
    pub kind: u32,
    /// How strong (finite; 1.0 is "a typical campaign").
    pub intensity: f32,
    /// Start, ns on the engine's clock (inclusive).
    pub start_ns: u64,
    /// End, ns (exclusive); after `start_ns`.
    pub end_ns: u64,
}

impl sb_event {
    pub(crate) fn to_engine(self) -> FfiResult<Event> {
        let customer = match self.global {
            0 => Some(self.customer),
            1 => None,
            x => {
                return Err(Fail::invalid(format!(
                    "event: global must be 0 or 1, got {x}"
                )));
            }
        };
        Ok(Event {
            customer,
            kind: self.kind,
            intensity: self.intensity,
            start_ns: self.start_ns,
            end_ns: self.end_ns,
        })
    }
}

/// The most horizons an `sb_forecast` holds.
pub const SB_FORECAST_MAX_HORIZONS: usize = 16;

/// Forecast use over one interval, tokens.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct sb_quantiles {
    /// Expected use.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// A customer's forecast, as the last tick left it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct sb_forecast {
    /// Horizons used (the first `horizons_len` entries of the two arrays below).
    pub horizons_len: u32,
    /// The horizons, in intervals after the last tick.
    pub horizons: [u32; SB_FORECAST_MAX_HORIZONS],
    /// Per horizon: the forecast use in that interval.
    pub values: [sb_quantiles; SB_FORECAST_MAX_HORIZONS],
    /// Probabilities of the low, medium, high and spike scenarios for the next interval.
    pub scenario: [f32; 4],
    /// The customer's token scale (recent use per interval) the scenarios are defined against.
    pub scale: f32,
}

impl sb_forecast {
    pub(crate) fn from_engine(f: &Forecast) -> FfiResult<Self> {
        let n = f.horizons.len().min(f.values.len());
        if n > SB_FORECAST_MAX_HORIZONS {
            return Err(Fail::new(
                crate::boundary::sb_result::InsufficientSize,
                format!(
                    "the predictor has {n} horizons; sb_forecast holds {SB_FORECAST_MAX_HORIZONS}"
                ),
            ));
        }
        let mut out = sb_forecast {
            horizons_len: n as u32,
            horizons: [0; SB_FORECAST_MAX_HORIZONS],
            values: [sb_quantiles::default(); SB_FORECAST_MAX_HORIZONS],
            scenario: f.scenario,
            scale: f.scale,
        };
        for j in 0..n {
            out.horizons[j] = f.horizons[j];
            let q = &f.values[j];
            out.values[j] = sb_quantiles {
                mean: q.mean,
                p50: q.p50,
                p90: q.p90,
                p99: q.p99,
            };
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn femto_halves_round_trip() {
        for v in [
            0i128,
            1,
            -1,
            i128::MAX,
            i128::MIN,
            5 * 10i128.pow(30),
            -7 * 10i128.pow(20),
        ] {
            let f = sb_femto::from(v);
            assert_eq!(((f.hi as i128) << 64) | f.lo as i128, v);
        }
    }

    #[test]
    fn whole_tokens_round_down_and_saturate() {
        let t = engine::fixed::FEMTO_PER_TOKEN;
        assert_eq!(whole_tokens(3 * t + 1), 3);
        assert_eq!(whole_tokens(-1), -1);
        assert_eq!(whole_tokens(i128::MAX), i64::MAX);
        assert_eq!(whole_tokens(i128::MIN), i64::MIN);
    }

    #[test]
    fn outcomes_keep_the_engine_codes() {
        for code in 0..=6u8 {
            let o = Outcome::from_code(code).unwrap();
            assert_eq!(sb_outcome::from(o) as u32, code as u32);
        }
        assert!(Outcome::from_code(7).is_none());
    }

    #[test]
    fn policies_round_trip() {
        for t in [
            Target::Mean,
            Target::Quantile(QuantileLevel::P50),
            Target::Quantile(QuantileLevel::P90),
            Target::Quantile(QuantileLevel::P99),
            Target::Scenario { probability: 0.7 },
        ] {
            let p = ReservationPolicy {
                target: t,
                horizon: 2,
                ..ReservationPolicy::default()
            };
            assert_eq!(sb_policy::from(p).to_engine().unwrap(), p);
        }
        let mut bad = sb_policy::from(ReservationPolicy::default());
        bad.target = 5;
        assert!(bad.to_engine().is_err());
    }

    #[test]
    fn config_round_trips_and_checks() {
        let c = EngineConfig::new(1000, Rate::tokens_per_sec(10));
        assert_eq!(sb_config::from(c).to_engine().unwrap(), c);
        let mut bad = sb_config::from(c);
        bad.contention_ticks = 256;
        assert!(bad.to_engine().is_err());
        bad.contention_ticks = 3;
        bad.pool_rate_micros = 0;
        assert!(bad.to_engine().is_err());
    }
}
