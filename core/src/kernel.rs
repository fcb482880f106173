//! The allocation kernel: one request against one customer and the pool, exactly as
//! `semantics.md` defines it. The batch path, the single-request path and the tick all call these
//! functions, so there is one definition of the arithmetic.

use crate::config::ppm_share;
use crate::fixed::{accrual, femto, time_to_cover};
use crate::layout::{Bucket, ConfigRaw, Globals, PoolRaw, StatsRaw};

/// What happened to one request.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Granted from the customer's shadow bucket (the fast path; no shared state touched).
    GrantedShadow = 0,
    /// Granted from the pool (a fallback: the reservation did not cover it).
    GrantedPool = 1,
    /// Denied: the customer's contract (standard bucket) is exhausted. An API answers 429.
    DeniedCustomerLimit = 2,
    /// Denied: the shared pool is exhausted. An API sheds load (503).
    DeniedPoolExhausted = 3,
    /// The request is larger than the customer's burst and can never pass.
    ExceedsBurst = 4,
    /// No such customer (or slot).
    UnknownCustomer = 5,
    /// The request itself is invalid (zero tokens).
    InvalidInput = 6,
}

impl Outcome {
    /// Whether the request was granted.
    pub fn granted(self) -> bool {
        matches!(self, Outcome::GrantedShadow | Outcome::GrantedPool)
    }

    /// Every outcome, in the order of their numeric codes (`Outcome::ALL[c as usize] as u8 == c`).
    pub const ALL: [Outcome; 7] = [
        Outcome::GrantedShadow,
        Outcome::GrantedPool,
        Outcome::DeniedCustomerLimit,
        Outcome::DeniedPoolExhausted,
        Outcome::ExceedsBurst,
        Outcome::UnknownCustomer,
        Outcome::InvalidInput,
    ];

    /// The outcome with this numeric code.
    pub fn from_code(code: u8) -> Option<Outcome> {
        Outcome::ALL.get(code as usize).copied()
    }
}

const _: () = {
    let mut i = 0;
    while i < Outcome::ALL.len() {
        assert!(Outcome::ALL[i] as usize == i);
        i += 1;
    }
};

/// A request's outcome and, for denials, the nanoseconds until the same request would pass if
/// nothing else happened (`u64::MAX`: never; 0 for grants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The outcome.
    pub outcome: Outcome,
    /// Retry-after, ns.
    pub retry_after_ns: u64,
}

/// Shadow overflow returned by a refill, split by when it accrued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Overflow {
    /// Femto-tokens that accrued after the pool was last at its cap: the pool may take them in.
    pub fresh: i128,
    /// Femto-tokens that accrued while the pool was still to be at its cap, no later than
    /// `full_at`: a pool at its cap loses them, so they are lost at the cap.
    pub stale: i128,
}

impl std::ops::Add for Overflow {
    type Output = Overflow;
    fn add(self, o: Overflow) -> Overflow {
        Overflow {
            fresh: self.fresh + o.fresh,
            stale: self.stale + o.stale,
        }
    }
}

/// Brings a customer's standard and shadow buckets up to `now`. Returns the femto-tokens that
/// accrued in the shadow bucket beyond `sigma`, which belong to the pool, split at `full_at`, the
/// last instant the pool was at its cap. Time that goes backwards changes nothing.
#[inline(always)]
pub(crate) fn refill_bucket(b: &mut Bucket, now: u64, full_at: u64) -> Overflow {
    let mut ov = Overflow::default();
    refill_bucket_with(b, now, full_at, |o| ov = o);
    ov
}

/// [`refill_bucket`] that hands the overflow, when there is any (it is then positive), to
/// `overflowed`, inside the branch that found it: the batch path stores it there, so its value
/// is not kept live (in registers, or spilled) through the rest of the request.
#[inline(always)]
pub(crate) fn refill_bucket_with(
    b: &mut Bucket,
    now: u64,
    full_at: u64,
    overflowed: impl FnOnce(Overflow),
) {
    if now <= b.last_ns {
        return;
    }
    let last = b.last_ns;
    let dt = now - last;
    b.last_ns = now;
    let cap = femto(b.burst);
    if b.std < cap {
        b.std = (b.std + accrual(b.rate, dt)).min(cap);
    }
    if b.rho == 0 {
        return;
    }
    let scap = femto(b.sigma).max(b.shadow);
    let s = b.shadow + accrual(b.rho, dt);
    if s <= scap {
        b.shadow = s;
        return;
    }
    let over = s - scap;
    let stale = if full_at > last {
        (b.shadow + accrual(b.rho, full_at.min(now) - last) - scap).clamp(0, over)
    } else {
        0
    };
    b.shadow = scap;
    overflowed(Overflow {
        fresh: over - stale,
        stale,
    });
}

/// The pool's cap: its burst less the shadow capacity carved out for reservations.
#[inline(always)]
pub(crate) fn pool_cap(pool: &PoolRaw, cfg: &ConfigRaw) -> i128 {
    femto(cfg.pool_burst.saturating_sub(pool.sigma_sum))
}

/// The engine's clock: the latest `now` any call has brought, kept as the pool's clock. A call
/// whose `now` is earlier acts at this time instead, so no customer's clock is ever ahead of the
/// pool's and a reservation can never start before the pool stopped paying for it.
///
/// Brings the pool up to that time at `pool_rate - rho_sum` and returns it. The overflow
/// allowance grows by `rho_sum` per ns: no more shadow overflow than that can have accrued.
#[inline]
pub(crate) fn advance(g: &mut Globals, now: u64) -> u64 {
    let p = &mut g.pool;
    if now <= p.last_ns {
        return p.last_ns;
    }
    let dt = now - p.last_ns;
    p.last_ns = now;
    let rate = g.config.pool_rate.saturating_sub(p.rho_sum);
    p.level += accrual(rate, dt);
    p.allowance += accrual(p.rho_sum, dt);
    clamp_pool(g);
    now
}

/// Returns a shadow balance (positive) or moves a debt (negative) to the pool, up to its cap.
#[inline]
pub(crate) fn credit_pool(g: &mut Globals, amount: i128) {
    if amount == 0 {
        return;
    }
    g.pool.level += amount;
    g.stats.femto_returned += amount;
    clamp_pool(g);
}

/// Credits shadow overflow (femto-tokens that accrued beyond `sigma` since the customer was last
/// touched) to the pool.
///
/// Overflow is credited when its customer is next touched, not at the instant it accrued, so two
/// rules keep that lateness from minting capacity (I2) or depending on when customers happen to be
/// touched (I6):
/// - overflow that accrued before the pool was last at its cap (`full_at`) is lost, as it would
///   have been at the instant it accrued;
/// - the rest is taken within the overflow allowance, which grows by at most what all shadow
///   buckets together can overflow (`rho_sum` per ns) and is held to `cap - level`, so the pool
///   plus every credit still to come never exceeds the cap, and the pool plus the shadow buckets
///   never exceed `pool_burst`. What the allowance cannot take is lost at the cap.
#[inline]
pub(crate) fn credit_overflow(g: &mut Globals, ov: Overflow) {
    if ov.fresh <= 0 && ov.stale <= 0 {
        return;
    }
    let take = ov.fresh.min(g.pool.allowance.max(0));
    g.pool.allowance -= take;
    g.pool.level += take;
    // all of it came back to the pool; what the pool could not take is lost at its cap
    g.stats.femto_returned += ov.fresh + ov.stale;
    g.stats.femto_lost_at_cap += ov.stale + ov.fresh - take;
    clamp_pool(g);
}

/// Drops whatever exceeds the pool's cap, counting it as lost at the cap, and holds the overflow
/// allowance to the room left under the cap.
#[inline]
pub(crate) fn clamp_pool(g: &mut Globals) {
    let cap = pool_cap(&g.pool, &g.config);
    if g.pool.level >= cap {
        g.stats.femto_lost_at_cap += g.pool.level - cap;
        g.pool.level = cap;
        g.pool.full_at_ns = g.pool.last_ns;
    }
    g.pool.allowance = g.pool.allowance.min(cap - g.pool.level).max(0);
}

/// Result of the customer-local part of a request.
pub(crate) enum Local {
    /// Decided without the pool.
    Done(Decision),
    /// Standard bucket has the tokens, shadow does not: the pool decides.
    NeedsPool,
}

/// Decides what a request can decide from its customer alone (the bucket already brought up to
/// `now`), applying a shadow grant or counting a denial.
#[inline(always)]
pub(crate) fn decide_local(b: &mut Bucket, n: u64, st: &mut StatsRaw) -> Local {
    decide_local_with(b, n, st, |_| ())
}

/// [`decide_local`], calling `before_line1` with the record just before it changes the record's
/// second line (a contract denial's counter), the only change there it can make: the batch
/// path's journal logs that line then, with no test of its own on the hot path.
#[inline(always)]
pub(crate) fn decide_local_with(
    b: &mut Bucket,
    n: u64,
    st: &mut StatsRaw,
    before_line1: impl FnOnce(&Bucket),
) -> Local {
    if n == 0 {
        st.requests += 1;
        st.invalid += 1;
        return Local::Done(Decision {
            outcome: Outcome::InvalidInput,
            retry_after_ns: u64::MAX,
        });
    }
    if n > b.burst {
        st.requests += 1;
        st.exceeds_burst += 1;
        b.requests = b.requests.saturating_add(1);
        return Local::Done(Decision {
            outcome: Outcome::ExceedsBurst,
            retry_after_ns: u64::MAX,
        });
    }
    let nf = femto(n);
    if b.std >= nf && b.shadow >= nf {
        b.std -= nf;
        b.shadow -= nf;
        b.outstanding = b.outstanding.saturating_add(n);
        b.granted_shadow = b.granted_shadow.saturating_add(n);
        b.requests = b.requests.saturating_add(1);
        st.requests += 1;
        st.shadow_grants += 1;
        st.tokens_shadow += n;
        return Local::Done(Decision {
            outcome: Outcome::GrantedShadow,
            retry_after_ns: 0,
        });
    }
    if b.std < nf {
        before_line1(b);
        b.requests = b.requests.saturating_add(1);
        b.denied_customer = b.denied_customer.saturating_add(1);
        st.requests += 1;
        st.denied_customer += 1;
        return Local::Done(Decision {
            outcome: Outcome::DeniedCustomerLimit,
            retry_after_ns: time_to_cover(nf - b.std, b.rate),
        });
    }
    // `decide_pool` counts it
    Local::NeedsPool
}

/// The fallback: grants `n` from the pool (and raises the reservation at once) or denies with
/// `PoolExhausted`. The bucket and the pool are already at `now`, and `decide_local` said
/// `NeedsPool`.
#[inline]
pub(crate) fn decide_pool(b: &mut Bucket, n: u64, g: &mut Globals) -> Decision {
    let nf = femto(n);
    g.stats.requests += 1;
    b.requests = b.requests.saturating_add(1);
    if g.pool.level >= nf {
        g.pool.level -= nf;
        b.std -= nf;
        b.outstanding = b.outstanding.saturating_add(n);
        b.granted_pool = b.granted_pool.saturating_add(n);
        b.fallbacks = b.fallbacks.saturating_add(1);
        g.stats.pool_grants += 1;
        g.stats.tokens_pool += n;
        bump_reservation(b, n, g);
        return Decision {
            outcome: Outcome::GrantedPool,
            retry_after_ns: 0,
        };
    }
    b.denied_pool = b.denied_pool.saturating_add(1);
    g.stats.denied_pool += 1;
    let pool_rate = g.config.pool_rate.saturating_sub(g.pool.rho_sum);
    let t_pool = time_to_cover(nf - g.pool.level, pool_rate);
    let t_pool = if nf > pool_cap(&g.pool, &g.config) {
        u64::MAX
    } else {
        t_pool
    };
    let t_shadow = if b.sigma >= n {
        time_to_cover(nf - b.shadow, b.rho)
    } else {
        u64::MAX
    };
    Decision {
        outcome: Outcome::DeniedPoolExhausted,
        retry_after_ns: t_pool.min(t_shadow),
    }
}

/// The immediate reservation bump after a fallback of `n` tokens (the seed's
/// `update_shadow_bucket`): the reserved rate rises by `n` tokens per interval and the shadow
/// capacity by `n` tokens, each within what the reservable budget has left. (The capacity bump
/// never pushes the pool over its new cap: the grant just took `n` from a pool at or below its cap.)
#[inline]
pub(crate) fn bump_reservation(b: &mut Bucket, n: u64, g: &mut Globals) {
    let cfg = &g.config;
    let rate_budget = ppm_share(cfg.pool_rate, cfg.alpha_ppm);
    let cap_budget = ppm_share(cfg.pool_burst, cfg.alpha_ppm);
    let want_rate = match n.checked_mul(1_000_000 * 1_000_000_000) {
        // one 64-bit division for any request below 18,446 tokens
        Some(micro_ns) => micro_ns / cfg.interval_ns,
        None => (n as u128 * 1_000_000 * 1_000_000_000 / cfg.interval_ns as u128)
            .min(u64::MAX as u128) as u64,
    };
    let d_rate = want_rate.min(rate_budget.saturating_sub(g.pool.rho_sum));
    let d_cap = n.min(cap_budget.saturating_sub(g.pool.sigma_sum));
    if d_rate == 0 && d_cap == 0 {
        return;
    }
    debug_assert!(g.pool.level <= pool_cap(&g.pool, cfg) - femto(d_cap));
    b.rho += d_rate;
    b.sigma += d_cap;
    g.pool.rho_sum += d_rate;
    g.pool.sigma_sum += d_cap;
    g.stats.bumps += 1;
    // the cap came down by `d_cap`: the overflow allowance must fit under it too
    clamp_pool(g);
}

/// One request, start to finish, applied sequentially (the single-request call, and the
/// continuation of the batch path).
#[inline]
pub(crate) fn decide_full(b: &mut Bucket, n: u64, now: u64, g: &mut Globals) -> Decision {
    debug_assert!(now >= g.pool.last_ns);
    let over = refill_bucket(b, now, g.pool.full_at_ns);
    credit_overflow(g, over);
    match decide_local(b, n, &mut g.stats) {
        Local::Done(d) => d,
        Local::NeedsPool => decide_pool(b, n, g),
    }
}
