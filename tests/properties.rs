//! Property tests of the allocation invariants I1-I6 (`docs/semantics.md`) against a plain,
//! sequential reference model written in this file from `docs/engine.md`, independently of the
//! engine's kernel (`BTreeMap`s, `i128` femto-token arithmetic, one request at a time).
//!
//! - [`batch_matches_model_and_one_at_a_time`] (I5, with I1, I2, I4): random configurations,
//!   contracts, reservations (set through `Engine::tick`), clocks that also step backwards,
//!   batches with duplicates, unknown ids and slots, zero-token and over-burst requests, settles
//!   of granted requests (refunds and debt), customers added, removed and re-contracted. Engine A
//!   runs every batch through `allocate_batch` (the parallel algorithm, over many small shards),
//!   engine B one request at a time; both must equal the model after every step: outcomes,
//!   retry-afters, customer views (`customer`, `customer_at`), stats, ledgers, flags. After every
//!   step: I1 per customer over every span, I2 over all customers over every span (allowing for
//!   shadow overflow not yet credited, see [`PoolSpans`]), I4 (`ledger(..).balanced()`).
//! - [`refilling_in_small_steps_equals_one_step`] (I6): an engine whose customers are touched at
//!   many intermediate (and out-of-order) times has exactly the levels of one brought over the
//!   span in one step, which are the closed form `min(level + rate * span, cap)`, the same ledger,
//!   and after a tick at the end of the span the same state and the same answers.
//! - [`steady_customers_are_never_pool_denied`] and [`reservations_protect_steady_customers`]
//!   (I3): customers within their contract and reservation never see `DeniedPoolExhausted`,
//!   whatever noisy neighbours do (with a control customer, same demand but no reservation, that
//!   does get pool denials, so the test can fail).
//! - Hand-checked cases: [`refill_is_exact_hand_checked`], [`small_batch_hand_checked`].
//! - Ignored, reported discrepancies with the docs: [`grants_at_one_instant_never_exceed_pool_burst`]
//!   (I2 as literally stated) and [`an_idle_interval_resets_the_contention_streak`].
//!
//! The batch path only runs its parallel algorithm above a size threshold, over shards of 16384
//! slots, and cuts the batch into chunks of 32768 requests (bucketed, gathered and replayed chunk
//! by chunk); every test here first calls
//! `tuning::set(1, 64)` and `tuning::set_pool_chunk(11)` (process-global, identical in every test
//! of this file) so that small batches exercise it across several shards and several chunks.
//!
//! Two readings of `docs/engine.md` the model makes where the text leaves room (both are what the
//! engine does): a zero-token request still touches its customer (its shadow overflow goes to the
//! pool: "when the customer is next touched (any request, ...)"), and an interval with fewer than
//! `contention_min_requests` requests leaves the contention streak as it is (the doc comment of
//! `EngineConfig::contention_min_requests`).

mod common;

use std::collections::BTreeMap;

use proptest::collection::vec;
use proptest::prelude::*;

use common::TempDir;
use proptest::test_runner::TestCaseError;
use shadowbucket::fixed::MAX_BURST_TOKENS;
use shadowbucket::layout::{Closed, StatsRaw};
use shadowbucket::{
    BatchOutcome, Contract, CreateOptions, CustomerView, Engine, EngineConfig, GrantPath, Keys,
    Ledger, NO_SLOT, Outcome, Rate, Reservation, Stats, TickReport,
};

/// Femto-tokens per token.
const F: i128 = 1_000_000_000_000_000;
/// Retry-after meaning "never".
const NEVER: u64 = u64::MAX;
/// Slots per store: five shards of 64 slots under the test tuning.
const CAP: u64 = 320;
/// Creation time of every store (leaves room for clocks that step back before it).
const T0: u64 = 1_000_000_000_000;
/// Seconds, in ns.
const SEC: u64 = 1_000_000_000;
/// First id used for filler customers (added then removed to spread slots over shards).
const FILLER_BASE: u64 = 1 << 40;
/// Ids at or above this are never given to a customer.
const STRANGER_BASE: u64 = 1 << 62;

fn femto(tokens: u64) -> i128 {
    tokens as i128 * F
}

/// The batch tuning every test of this file uses.
fn tune() {
    shadowbucket::batch::tuning::set(1, 64);
    // chunks of 11 requests: the pool phase's runs of credits cross chunk boundaries, and the
    // gather reads each chunk as a word of eight codes and three more one by one
    shadowbucket::batch::tuning::set_pool_chunk(11);
}

fn cfg_cases(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- temporary stores ------------------------------------------------------------------------

/// Creates the test's stores.
trait Stores {
    fn engine(&self, name: &str, cfg: EngineConfig, now: u64) -> Engine;
}

impl Stores for TempDir {
    fn engine(&self, name: &str, cfg: EngineConfig, now: u64) -> Engine {
        let opts = CreateOptions::new(CAP, cfg).without_model().at(now);
        Engine::create(self.join(name), opts).expect("create store")
    }
}

// ---- the reference model ---------------------------------------------------------------------

/// Nanoseconds until a level growing at `rate` femto-tokens/ns covers `deficit`.
fn wait_ns(deficit: i128, rate: u64) -> u64 {
    if deficit <= 0 {
        0
    } else if rate == 0 {
        NEVER
    } else {
        let r = rate as i128;
        u64::try_from((deficit + r - 1) / r).unwrap_or(NEVER)
    }
}

/// Cut-back by weight, then proportionally (rounded down), written from `docs/engine.md`.
fn cut_back_model(asks: &[(u64, u16)], budget: u64) -> Vec<u64> {
    let total: u128 = asks.iter().map(|a| a.0 as u128).sum();
    if total <= budget as u128 {
        return asks.iter().map(|a| a.0).collect();
    }
    let mut tiers: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, a) in asks.iter().enumerate() {
        tiers.entry(a.1).or_default().push(i);
    }
    let mut out = vec![0; asks.len()];
    let mut left = budget as u128;
    for members in tiers.values().rev() {
        let tier: u128 = members.iter().map(|&i| asks[i].0 as u128).sum();
        if tier <= left {
            for &i in members {
                out[i] = asks[i].0;
            }
            left -= tier;
        } else {
            for &i in members {
                out[i] = (asks[i].0 as u128 * left / tier) as u64;
            }
            break;
        }
    }
    out
}

/// I1 over every span of one customer's history: for every pair of points `i <= j` (after each
/// event that touched it, at its clock `t`), `net(i..j] + level_j <= burst + rate * (t_j - t_i)`,
/// where `net` counts grants and settlement debt and subtracts refunds. With `level_j >= 0` (after
/// any grant) that is the contract's bound; in general it also charges a debt still owed.
#[derive(Clone, Debug)]
struct SpanCheck {
    burst: i128,
    rate: i128,
    net: i128,
    min_start: i128,
}

impl SpanCheck {
    fn new(burst: u64, rate: u64, t: u64, level: i128) -> (SpanCheck, bool) {
        let mut s = SpanCheck {
            burst: femto(burst),
            rate: rate as i128,
            net: 0,
            min_start: i128::MAX,
        };
        let ok = s.point(t, level);
        (s, ok)
    }

    fn point(&mut self, t: u64, level: i128) -> bool {
        let here = self.net - self.rate * t as i128;
        self.min_start = self.min_start.min(here);
        self.net + level - self.rate * t as i128 <= self.burst + self.min_start
    }
}

#[derive(Clone, Debug)]
struct MCust {
    burst: u64,
    rate: u64,
    weight: u16,
    std: i128,
    shadow: i128,
    last: u64,
    rho: u64,
    sigma: u64,
    outstanding: u64,
    cur: Closed,
    closed: Closed,
    flagged: bool,
    streak: u32,
}

impl MCust {
    fn new(c: Contract, now: u64) -> MCust {
        MCust {
            burst: c.burst,
            rate: c.rate.micros(),
            weight: c.weight,
            std: femto(c.burst),
            shadow: 0,
            last: now,
            rho: 0,
            sigma: 0,
            outstanding: 0,
            cur: Closed::default(),
            closed: Closed::default(),
            flagged: false,
            streak: 0,
        }
    }

    /// Brings both buckets to `now`; returns what the shadow bucket accrued beyond `sigma` after
    /// `full_at` (the last instant the pool was at its cap) and up to it.
    fn refill(&mut self, now: u64, full_at: u64) -> (i128, i128) {
        if now <= self.last {
            return (0, 0);
        }
        let dt = (now - self.last) as i128;
        let keep = femto(self.sigma).max(self.shadow);
        // what had overflowed by `full_at` was lost with the pool at its cap
        let stale = if full_at > self.last {
            let by = self.shadow + self.rho as i128 * (full_at.min(now) - self.last) as i128;
            (by - keep).max(0)
        } else {
            0
        };
        self.last = now;
        self.std = (self.std + self.rate as i128 * dt).min(femto(self.burst));
        let s = self.shadow + self.rho as i128 * dt;
        self.shadow = s.min(keep);
        let over = s - self.shadow;
        (over - stale.min(over), stale.min(over))
    }
}

/// The engine as `docs/engine.md` describes it, one event at a time.
#[derive(Clone, Debug)]
struct Model {
    cfg: EngineConfig,
    created: u64,
    /// The engine's clock: the latest `now` seen, which is also the pool's clock.
    clock: u64,
    pool: i128,
    /// Shadow overflow the pool may still take in (`docs/engine.md`, the overflow allowance).
    allow: i128,
    /// The last instant the pool was at its cap.
    full_at: u64,
    custs: BTreeMap<u64, MCust>,
    st: StatsRaw,
    i1: BTreeMap<u64, SpanCheck>,
    violations: Vec<String>,
}

impl Model {
    fn new(cfg: EngineConfig, now: u64) -> Model {
        Model {
            cfg,
            created: now,
            clock: now,
            pool: femto(cfg.pool_burst),
            allow: 0,
            full_at: 0,
            custs: BTreeMap::new(),
            st: StatsRaw::default(),
            i1: BTreeMap::new(),
            violations: Vec::new(),
        }
    }

    fn rho_sum(&self) -> u64 {
        self.custs.values().map(|c| c.rho).sum()
    }

    fn sigma_sum(&self) -> u64 {
        self.custs.values().map(|c| c.sigma).sum()
    }

    fn rate_budget(&self) -> u64 {
        (self.cfg.pool_rate.micros() as u128 * self.cfg.alpha_ppm as u128 / 1_000_000) as u64
    }

    fn cap_budget(&self) -> u64 {
        (self.cfg.pool_burst as u128 * self.cfg.alpha_ppm as u128 / 1_000_000) as u64
    }

    /// The pool's cap: its burst less the carved-out shadow capacity.
    fn cap(&self) -> i128 {
        femto(self.cfg.pool_burst.saturating_sub(self.sigma_sum()))
    }

    fn clamp(&mut self) {
        let cap = self.cap();
        if self.pool >= cap {
            self.st.femto_lost_at_cap += self.pool - cap;
            self.pool = cap;
            self.full_at = self.clock;
        }
        self.allow = self.allow.min(cap - self.pool).max(0);
    }

    /// Shadow overflow going back to the pool: what accrued before the pool was last at its cap
    /// is lost; the rest within the allowance, and what the allowance cannot take is lost.
    fn credit_overflow(&mut self, (fresh, stale): (i128, i128)) {
        if fresh == 0 && stale == 0 {
            return;
        }
        let take = fresh.min(self.allow.max(0));
        self.allow -= take;
        self.pool += take;
        self.st.femto_returned += fresh + stale;
        self.st.femto_lost_at_cap += stale + fresh - take;
        self.clamp();
    }

    /// Shadow tokens (or debt) going back to the pool.
    fn credit(&mut self, f: i128) {
        self.pool += f;
        self.st.femto_returned += f;
        self.clamp();
    }

    /// Moves the engine clock to `now` if it is later, refilling the pool; returns the clock.
    fn advance(&mut self, now: u64) -> u64 {
        if now > self.clock {
            let rate = self.cfg.pool_rate.micros() - self.rho_sum();
            self.pool += rate as i128 * (now - self.clock) as i128;
            self.allow += self.rho_sum() as i128 * (now - self.clock) as i128;
            self.clock = now;
            self.clamp();
        }
        self.clock
    }

    /// Brings a customer to the clock, crediting its overflow to the pool.
    fn touch(&mut self, id: u64) {
        let now = self.clock;
        let full_at = self.full_at;
        let over = self
            .custs
            .get_mut(&id)
            .expect("customer")
            .refill(now, full_at);
        self.credit_overflow(over);
    }

    fn i1_start(&mut self, id: u64) {
        let c = &self.custs[&id];
        let (s, ok) = SpanCheck::new(c.burst, c.rate, c.last, c.std);
        if !ok {
            self.violations
                .push(format!("I1: customer {id} starts above its burst"));
        }
        self.i1.insert(id, s);
    }

    fn i1_point(&mut self, id: u64, net_tokens: i128) {
        let c = &self.custs[&id];
        let (t, level) = (c.last, c.std);
        let s = self.i1.get_mut(&id).expect("span check");
        s.net += net_tokens * F;
        if !s.point(t, level) {
            self.violations.push(format!(
                "I1: customer {id} was given more than its contract at {t}"
            ));
        }
    }

    fn add(&mut self, id: u64, c: Contract, now: u64) {
        let now = self.advance(now);
        self.custs.insert(id, MCust::new(c, now));
        self.i1_start(id);
    }

    fn remove(&mut self, id: u64, now: u64) {
        self.advance(now);
        self.touch(id);
        let c = self.custs.remove(&id).expect("customer");
        self.i1.remove(&id);
        if c.flagged {
            self.st.flagged -= 1;
        }
        // The reservation is released first, so the balance returns under the new cap.
        self.credit(c.shadow);
    }

    fn update_contract(&mut self, id: u64, k: Contract, now: u64) {
        self.advance(now);
        self.touch(id);
        let c = self.custs.get_mut(&id).expect("customer");
        c.burst = k.burst;
        c.rate = k.rate.micros();
        c.weight = k.weight;
        c.std = c.std.min(femto(k.burst));
        // I1 is stated per contract: spans start again.
        self.i1_start(id);
    }

    fn batch(&mut self, ids: &[Option<u64>], tokens: &[u64], now: u64) -> BatchOutcome {
        self.advance(now);
        self.st.batches += 1;
        let mut out = BatchOutcome::default();
        for (&id, &n) in ids.iter().zip(tokens) {
            let (o, r) = self.request(id, n);
            out.outcomes.push(o);
            out.retry_after_ns.push(r);
        }
        out
    }

    /// One request at the clock (`docs/engine.md`, "A request for `n` tokens").
    fn request(&mut self, id: Option<u64>, n: u64) -> (Outcome, u64) {
        self.st.requests += 1;
        let id = match id {
            Some(id) if self.custs.contains_key(&id) => id,
            _ => {
                self.st.unknown += 1;
                return (Outcome::UnknownCustomer, NEVER);
            }
        };
        // Every request of a customer touches it, a zero-token one included ("when the customer
        // is next touched (any request, ...)"): its shadow overflow goes to the pool here.
        self.touch(id);
        if n == 0 {
            self.st.invalid += 1;
            return (Outcome::InvalidInput, NEVER);
        }
        let nf = femto(n);
        let cap = self.cap();
        let pool_rate = self.cfg.pool_rate.micros() - self.rho_sum();
        let c = self.custs.get_mut(&id).expect("customer");
        c.cur.requests += 1;
        let mut granted = 0;
        let decision = if n > c.burst {
            self.st.exceeds_burst += 1;
            (Outcome::ExceedsBurst, NEVER)
        } else if c.shadow >= nf && c.std >= nf {
            c.std -= nf;
            c.shadow -= nf;
            c.outstanding += n;
            c.cur.granted_shadow += n;
            self.st.shadow_grants += 1;
            self.st.tokens_shadow += n;
            granted = n;
            (Outcome::GrantedShadow, 0)
        } else if c.std < nf {
            c.cur.denied_customer += 1;
            self.st.denied_customer += 1;
            (Outcome::DeniedCustomerLimit, wait_ns(nf - c.std, c.rate))
        } else if self.pool >= nf {
            self.pool -= nf;
            c.std -= nf;
            c.outstanding += n;
            c.cur.granted_pool += n;
            c.cur.fallbacks += 1;
            self.st.pool_grants += 1;
            self.st.tokens_pool += n;
            granted = n;
            (Outcome::GrantedPool, 0)
        } else {
            c.cur.denied_pool += 1;
            self.st.denied_pool += 1;
            let t_pool = if nf > cap {
                NEVER
            } else {
                wait_ns(nf - self.pool, pool_rate)
            };
            let t_shadow = if c.sigma >= n {
                wait_ns(nf - c.shadow, c.rho)
            } else {
                NEVER
            };
            (Outcome::DeniedPoolExhausted, t_pool.min(t_shadow))
        };
        if decision.0 == Outcome::GrantedPool {
            self.bump(id, n);
        }
        self.i1_point(id, granted as i128);
        decision
    }

    /// The immediate reservation bump after a fallback of `n` tokens.
    fn bump(&mut self, id: u64, n: u64) {
        let want = (n as u128 * 1_000_000_000_000_000 / self.cfg.interval_ns as u128)
            .min(u64::MAX as u128) as u64;
        let d_rate = want.min(self.rate_budget().saturating_sub(self.rho_sum()));
        let d_cap = n.min(self.cap_budget().saturating_sub(self.sigma_sum()));
        if d_rate > 0 || d_cap > 0 {
            let c = self.custs.get_mut(&id).expect("customer");
            c.rho += d_rate;
            c.sigma += d_cap;
            self.st.bumps += 1;
            self.clamp();
        }
    }

    /// A settle; `false` when the engine must refuse it (and nothing changes).
    fn settle(&mut self, id: u64, granted: u64, used: u64, path: GrantPath, now: u64) -> bool {
        match self.custs.get(&id) {
            Some(c) if granted > 0 && used <= 1 << 50 && granted <= c.outstanding => {}
            _ => return false,
        }
        self.advance(now);
        self.touch(id);
        let c = self.custs.get_mut(&id).expect("customer");
        let (mut to_pool, mut shadow_back) = (0i128, 0i128);
        let net: i128;
        if used < granted {
            let back = granted - used;
            let f = femto(back);
            c.std = (c.std + f).min(femto(c.burst));
            match path {
                GrantPath::Shadow => {
                    let s = c.shadow + f;
                    c.shadow = s.min(femto(c.sigma).max(c.shadow));
                    shadow_back = s - c.shadow;
                }
                GrantPath::Pool => to_pool = f,
            }
            c.cur.refunded += back;
            self.st.tokens_refunded += back;
            net = -(back as i128);
        } else {
            let extra = used - granted;
            let f = femto(extra);
            c.std -= f;
            match path {
                GrantPath::Shadow => c.shadow -= f,
                GrantPath::Pool => to_pool = -f,
            }
            c.cur.debt += extra;
            self.st.tokens_debt += extra;
            net = extra as i128;
        }
        c.outstanding -= granted;
        self.st.settles += 1;
        if shadow_back != 0 {
            self.credit(shadow_back);
        }
        if to_pool != 0 {
            self.pool += to_pool;
            self.clamp();
        }
        self.i1_point(id, net);
        true
    }

    /// The tick (`docs/engine.md`, "The tick"); `asks` are `(id, rate micros, capacity)`.
    fn tick(&mut self, now: u64, asks: &[(u64, u64, u64)]) -> TickReport {
        let now = self.advance(now);
        let mut over = (0, 0);
        let full_at = self.full_at;
        for c in self.custs.values_mut() {
            let (f, st) = c.refill(now, full_at);
            over = (over.0 + f, over.1 + st);
        }
        let cfg = self.cfg;
        for c in self.custs.values_mut() {
            c.closed = c.cur;
            c.cur = Closed::default();
            let req = c.closed.requests;
            // Intervals with no requests, or fewer than `contention_min_requests`, leave the
            // streak as it is (see `EngineConfig::contention_min_requests`).
            if req > 0 && req >= cfg.contention_min_requests as u64 {
                let share = (c.closed.fallbacks + c.closed.denied_pool) * 1_000_000 / req;
                let toward = if c.flagged {
                    share < cfg.contention_low_ppm as u64
                } else {
                    share > cfg.contention_high_ppm as u64
                };
                if toward {
                    c.streak += 1;
                    if c.streak >= cfg.contention_ticks as u32 {
                        c.flagged = !c.flagged;
                        c.streak = 0;
                    }
                } else {
                    c.streak = 0;
                }
            }
        }
        let rate_asks: Vec<(u64, u16)> = asks
            .iter()
            .map(|a| (a.1, self.custs[&a.0].weight))
            .collect();
        let cap_asks: Vec<(u64, u16)> = asks
            .iter()
            .map(|a| (a.2, self.custs[&a.0].weight))
            .collect();
        let rates = cut_back_model(&rate_asks, self.rate_budget());
        let caps = cut_back_model(&cap_asks, self.cap_budget());
        let asked_rate: u128 = asks.iter().map(|a| a.1 as u128).sum();
        let asked_cap: u128 = asks.iter().map(|a| a.2 as u128).sum();
        let cut = asked_rate > self.rate_budget() as u128 || asked_cap > self.cap_budget() as u128;
        // Overflow accrued under the old reservations goes back under the old cap.
        self.credit_overflow(over);
        let set: BTreeMap<u64, (u64, u64)> = asks
            .iter()
            .enumerate()
            .map(|(i, a)| (a.0, (rates[i], caps[i])))
            .collect();
        let mut released = 0;
        for (id, c) in self.custs.iter_mut() {
            let (rho, sigma) = set.get(id).copied().unwrap_or((0, 0));
            let keep = c.shadow.clamp(0, femto(sigma));
            released += c.shadow - keep;
            c.shadow = keep;
            c.rho = rho;
            c.sigma = sigma;
        }
        // The released balances (or debts) go back under the new cap.
        self.credit(released);
        let flagged = self.custs.values().filter(|c| c.flagged).count() as u64;
        self.st.flagged = flagged;
        self.st.ticks += 1;
        let ids: Vec<u64> = self.custs.keys().copied().collect();
        for id in ids {
            self.i1_point(id, 0);
        }
        TickReport {
            customers: self.custs.len() as u64,
            asked_rate_micros: asked_rate,
            reserved_rate_micros: self.rho_sum(),
            reserved_capacity: self.sigma_sum(),
            cut_back: cut,
            flagged,
        }
    }

    /// Where the pool's supply is at `now`, as if everything were brought there.
    fn ledger(&self, now: u64) -> Ledger {
        let mut m = self.clone();
        let now = m.advance(now);
        let ids: Vec<u64> = m.custs.keys().copied().collect();
        for id in ids {
            m.touch(id);
        }
        let s = &m.st;
        let granted = s.tokens_shadow as i128 + s.tokens_pool as i128 + s.tokens_debt as i128
            - s.tokens_refunded as i128;
        Ledger {
            supplied: femto(m.cfg.pool_burst)
                + m.cfg.pool_rate.micros() as i128 * (now - m.created) as i128,
            in_pool: m.pool,
            in_shadows: m.custs.values().map(|c| c.shadow).sum(),
            granted_net: granted * F,
            lost_at_cap: s.femto_lost_at_cap,
        }
    }

    /// Supply not yet spent at the clock (`unspent`): the pool, every shadow bucket brought to
    /// the clock, and the part of their overflow that the pool can still take in (what accrued
    /// since the pool was last at its cap, within the overflow allowance; the rest will be lost
    /// at the cap). The second value is the slack the
    /// I2 check allows for overflow not yet credited: none, since the allowance covers it.
    fn unspent_and_pending(&self) -> (i128, i128) {
        let mut unspent = self.pool;
        let mut pending = 0;
        for c in self.custs.values() {
            let mut c = c.clone();
            let (fresh, _stale) = c.refill(self.clock, self.full_at);
            unspent += c.shadow;
            pending += fresh;
        }
        (unspent + pending.min(self.allow), 0)
    }

    fn check_stats(&self, s: &Stats, batches: u64) -> Result<(), TestCaseError> {
        let mut want = self.st;
        want.batches = batches;
        prop_assert_eq!(s.counters, want);
        prop_assert_eq!(s.customers, self.custs.len() as u64);
        prop_assert_eq!(s.capacity, CAP);
        prop_assert_eq!(s.pool_femto, self.pool);
        prop_assert_eq!(s.reserved_rate_micros, self.rho_sum());
        prop_assert_eq!(s.reserved_capacity, self.sigma_sum());
        Ok(())
    }

    /// Compares an engine view with the model's customer, brought to `at` (or as it is).
    fn check_view(&self, v: &CustomerView, at: Option<u64>) -> Result<(), TestCaseError> {
        let mut c = self.custs[&v.id].clone();
        if let Some(t) = at {
            c.refill(t.max(self.clock), self.full_at);
        }
        let contract =
            Contract::new(c.burst, Rate::from_micros_per_sec(c.rate)).with_weight(c.weight);
        prop_assert_eq!(v.contract, contract, "customer {}", v.id);
        prop_assert_eq!(v.std_femto, c.std, "customer {} standard bucket", v.id);
        prop_assert_eq!(v.shadow_femto, c.shadow, "customer {} shadow bucket", v.id);
        prop_assert_eq!(v.reserved_rate.micros(), c.rho, "customer {} rho", v.id);
        prop_assert_eq!(v.shadow_capacity, c.sigma, "customer {} sigma", v.id);
        prop_assert_eq!(v.flagged, c.flagged, "customer {} flag", v.id);
        prop_assert_eq!(
            v.outstanding,
            c.outstanding,
            "customer {} outstanding",
            v.id
        );
        prop_assert_eq!(v.last_interval, c.closed, "customer {} last interval", v.id);
        prop_assert_eq!(v.this_interval, c.cur, "customer {} this interval", v.id);
        Ok(())
    }
}

// ---- the harness: engine A (batches), engine B (one at a time), the model ---------------------

/// I2 over every span of the whole engine: for checkpoints `i <= j` (after each step, at the
/// engine clock `T`), `net(i..j] + unspent_j <= pool_burst + pool_rate * (T_j - T_i) + pending_i`,
/// where `net` counts grants and debt less refunds over all customers (from the engine's own
/// outcomes), `unspent` is the supply not yet granted nor lost and `pending` the shadow overflow
/// not yet credited to the pool (the engine credits it when the customer is next touched,
/// `docs/engine.md`). With `unspent_j >= 0` and nothing pending, that is the contract's bound.
struct PoolSpans {
    burst: i128,
    rate: i128,
    min_start: i128,
}

impl PoolSpans {
    fn point(&mut self, t: u64, net: i128, unspent: i128, pending: i128) -> bool {
        let r = self.rate * t as i128;
        self.min_start = self.min_start.min(net + pending - r);
        net + unspent - r <= self.burst + self.min_start
    }
}

#[derive(Clone, Debug)]
enum Who {
    Live(usize),
    Gone(usize),
    Stranger(u64),
}

#[derive(Clone, Copy, Debug)]
enum Used {
    Exact,
    Zero,
    Part(u32),
    Over(u64),
}

#[derive(Clone, Debug)]
enum Op {
    Batch {
        reqs: Vec<(Who, u64)>,
        by_slot: bool,
    },
    Tick {
        res: Vec<(usize, u64, u64)>,
    },
    Settle {
        pick: usize,
        used: Used,
    },
    Remove {
        pick: usize,
    },
    Add {
        contract: Contract,
    },
    Update {
        pick: usize,
        contract: Contract,
    },
}

#[derive(Clone, Copy, Debug)]
enum Clock {
    Same,
    Fwd(u64),
    Back(u64),
}

struct Harness {
    a: Engine,
    b: Engine,
    m: Model,
    live: Vec<u64>,
    gone: Vec<u64>,
    /// Slot each id was given (kept after removal).
    slot: BTreeMap<u64, u32>,
    /// Current occupant of each slot.
    occupant: BTreeMap<u32, u64>,
    /// Granted requests not yet settled: `(id, tokens, path)`.
    grants: Vec<(u64, u64, GrantPath)>,
    next_id: u64,
    now: u64,
    b_batches: u64,
    /// Grants plus debt less refunds, tokens, from the engine's outcomes.
    net: i128,
    i2: PoolSpans,
    balanced_checks: u64,
    _dir: TempDir,
}

impl Harness {
    fn new(cfg: EngineConfig, custs: &[(Contract, usize)]) -> Result<Harness, TestCaseError> {
        let dir = TempDir::new("model");
        let a = dir.engine("a.sb", cfg, T0);
        let b = dir.engine("b.sb", cfg, T0);
        let mut h = Harness {
            a,
            b,
            m: Model::new(cfg, T0),
            live: Vec::new(),
            gone: Vec::new(),
            slot: BTreeMap::new(),
            occupant: BTreeMap::new(),
            grants: Vec::new(),
            next_id: 1,
            now: T0,
            b_batches: 0,
            net: 0,
            i2: PoolSpans {
                burst: femto(cfg.pool_burst),
                rate: cfg.pool_rate.micros() as i128,
                min_start: i128::MAX,
            },
            balanced_checks: 0,
            _dir: dir,
        };
        // Spread the customers over the shards: fillers take slots, then leave (as many as leave
        // room for the customers still to come).
        let mut filler = FILLER_BASE;
        let mut fillers = Vec::new();
        for &(c, n) in custs {
            let room = CAP as usize - fillers.len() - custs.len();
            for _ in 0..n.min(room) {
                h.add(filler, Contract::new(1, Rate::from_micros_per_sec(1)))?;
                fillers.push(filler);
                filler += 1;
            }
            let id = h.next_id;
            h.next_id += 1;
            h.add(id, c)?;
        }
        for f in fillers {
            let i = h.live.iter().position(|&x| x == f).expect("filler");
            h.live.swap_remove(i);
            h.remove(f)?;
        }
        h.check()?;
        Ok(h)
    }

    fn add(&mut self, id: u64, c: Contract) -> Result<(), TestCaseError> {
        let sa = self.a.add_customer(id, c, self.now).expect("add A");
        let sb = self.b.add_customer(id, c, self.now).expect("add B");
        prop_assert_eq!(sa, sb);
        self.m.add(id, c, self.now);
        self.live.push(id);
        self.slot.insert(id, sa);
        self.occupant.insert(sa, id);
        Ok(())
    }

    fn remove(&mut self, id: u64) -> Result<(), TestCaseError> {
        self.a.remove_customer(id, self.now).expect("remove A");
        self.b.remove_customer(id, self.now).expect("remove B");
        self.m.remove(id, self.now);
        self.occupant.remove(&self.slot[&id]);
        self.gone.push(id);
        Ok(())
    }

    /// The id (id mode) or slot (slot mode) a request names, and the customer it names now.
    fn key(&self, who: &Who, by_slot: bool) -> (u64, u32, Option<u64>) {
        let id = match *who {
            Who::Live(i) if !self.live.is_empty() => Some(self.live[i % self.live.len()]),
            Who::Gone(i) if !self.gone.is_empty() => Some(self.gone[i % self.gone.len()]),
            _ => None,
        };
        if by_slot {
            let slot = match (id, who) {
                (Some(id), _) => self.slot[&id],
                (None, Who::Stranger(x)) => match x % 3 {
                    0 => NO_SLOT,
                    // any slot, in range or not, free or taken
                    _ => (x / 3 % (CAP + 64)) as u32,
                },
                (None, _) => NO_SLOT,
            };
            (0, slot, self.occupant.get(&slot).copied())
        } else {
            let id = match (id, who) {
                (Some(id), _) => id,
                // reserved ids (index markers) and ids nobody has
                (None, Who::Stranger(x)) if x % 4 == 0 => u64::MAX - (x / 4 % 2),
                (None, Who::Stranger(x)) => STRANGER_BASE + x / 4,
                (None, _) => STRANGER_BASE,
            };
            (id, 0, Some(id))
        }
    }

    fn apply(&mut self, op: &Op, clock: Clock) -> Result<(), TestCaseError> {
        self.now = match clock {
            Clock::Same => self.now,
            Clock::Fwd(d) => self.now + d,
            Clock::Back(d) => self.now.saturating_sub(d),
        };
        let now = self.now;
        match op {
            Op::Batch { reqs, by_slot } => {
                let tokens: Vec<u64> = reqs.iter().map(|r| r.1).collect();
                let keys: Vec<(u64, u32, Option<u64>)> =
                    reqs.iter().map(|r| self.key(&r.0, *by_slot)).collect();
                let ids: Vec<u64> = keys.iter().map(|k| k.0).collect();
                let slots: Vec<u32> = keys.iter().map(|k| k.1).collect();
                let who: Vec<Option<u64>> = keys.iter().map(|k| k.2).collect();
                let k = if *by_slot {
                    Keys::Slots(&slots)
                } else {
                    Keys::Ids(&ids)
                };
                let out = self.a.allocate_batch(k, &tokens, now).expect("batch A");
                let mut seq = BatchOutcome::default();
                if reqs.is_empty() {
                    self.b
                        .allocate_batch(k, &tokens, now)
                        .expect("empty batch B");
                    self.b_batches += 1;
                }
                for i in 0..reqs.len() {
                    let d = if *by_slot {
                        self.b.allocate_slot(slots[i], tokens[i], now)
                    } else {
                        self.b.allocate(ids[i], tokens[i], now)
                    }
                    .expect("allocate B");
                    seq.outcomes.push(d.outcome);
                    seq.retry_after_ns.push(d.retry_after_ns);
                    self.b_batches += 1;
                }
                let want = self.m.batch(&who, &tokens, now);
                prop_assert_eq!(&out, &want, "batch vs model");
                prop_assert_eq!(&seq, &want, "one at a time vs model");
                for (i, o) in out.outcomes.iter().enumerate() {
                    let path = match o {
                        Outcome::GrantedShadow => GrantPath::Shadow,
                        Outcome::GrantedPool => GrantPath::Pool,
                        _ => continue,
                    };
                    let id = who[i].expect("granted to a customer");
                    self.grants.push((id, tokens[i], path));
                    self.net += tokens[i] as i128;
                }
            }
            Op::Tick { res } => {
                let mut asks: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
                if !self.live.is_empty() {
                    for &(i, r, c) in res {
                        asks.entry(self.live[i % self.live.len()]).or_insert((r, c));
                    }
                }
                // In the order drawn, not by slot.
                let mut list: Vec<(u64, u64, u64)> =
                    asks.iter().map(|(&id, &(r, c))| (id, r, c)).collect();
                list.sort_by_key(|a| (a.1 ^ a.2) % 7);
                let rs: Vec<Reservation> = list
                    .iter()
                    .map(|&(id, r, c)| Reservation {
                        slot: self.slot[&id],
                        rate: Rate::from_micros_per_sec(r),
                        capacity: c,
                    })
                    .collect();
                let ra = self.a.tick_with(now, &rs).expect("tick A");
                let rb = self.b.tick_with(now, &rs).expect("tick B");
                let rm = self.m.tick(now, &list);
                prop_assert_eq!(ra, rm, "tick A vs model");
                prop_assert_eq!(rb, rm, "tick B vs model");
            }
            Op::Settle { pick, used } => {
                if !self.grants.is_empty() {
                    let (id, n, path) = self.grants.swap_remove(pick % self.grants.len());
                    let u = match *used {
                        Used::Exact => n,
                        Used::Zero => 0,
                        Used::Part(ppm) => n * ppm as u64 / 1_000_000,
                        Used::Over(x) => n + x,
                    };
                    let ok = self.m.settle(id, n, u, path, now);
                    let ra = self.a.settle(id, n, u, path, now);
                    let rb = self.b.settle(id, n, u, path, now);
                    prop_assert_eq!(ra.is_ok(), ok, "settle A: {:?}", ra);
                    prop_assert_eq!(rb.is_ok(), ok, "settle B: {:?}", rb);
                    if ok {
                        self.net += u as i128 - n as i128;
                    }
                }
            }
            Op::Remove { pick } => {
                if !self.live.is_empty() {
                    let id = self.live.swap_remove(pick % self.live.len());
                    self.remove(id)?;
                }
            }
            Op::Add { contract } => {
                if self.a.len() < CAP {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.add(id, *contract)?;
                }
            }
            Op::Update { pick, contract } => {
                if !self.live.is_empty() {
                    let id = self.live[pick % self.live.len()];
                    self.a
                        .update_contract(id, *contract, now)
                        .expect("contract A");
                    self.b
                        .update_contract(id, *contract, now)
                        .expect("contract B");
                    self.m.update_contract(id, *contract, now);
                }
            }
        }
        self.check()
    }

    /// Everything the engines show must be what the model says; the invariants must hold.
    fn check(&mut self) -> Result<(), TestCaseError> {
        prop_assert!(self.m.violations.is_empty(), "{:?}", self.m.violations);
        let (sa, sb) = (self.a.stats(), self.b.stats());
        self.m.check_stats(&sa, self.m.st.batches)?;
        self.m.check_stats(&sb, self.b_batches)?;
        let mut ids_a = self.a.customer_ids();
        let mut ids_b = self.b.customer_ids();
        ids_a.sort_unstable();
        ids_b.sort_unstable();
        let ids_m: Vec<u64> = self.m.custs.keys().copied().collect();
        prop_assert_eq!(&ids_a, &ids_m);
        prop_assert_eq!(&ids_b, &ids_m);
        let probes = [self.now, self.m.clock + 777_777_777];
        for &id in &ids_m {
            let va = self.a.customer(id).expect("view A");
            let vb = self.b.customer(id).expect("view B");
            prop_assert_eq!(&va, &vb);
            prop_assert_eq!(Some(va.slot), self.a.slot_of(id));
            self.m.check_view(&va, None)?;
            for t in probes {
                let va = self.a.customer_at(id, t).expect("view A");
                let vb = self.b.customer_at(id, t).expect("view B");
                prop_assert_eq!(&va, &vb);
                self.m.check_view(&va, Some(t))?;
            }
        }
        for &id in &self.gone {
            prop_assert!(self.a.customer(id).is_err() && self.b.customer(id).is_err());
            prop_assert_eq!(self.a.slot_of(id), None);
        }
        let mut fa = self.a.flagged();
        fa.sort_unstable();
        let fm: Vec<u64> = self
            .m
            .custs
            .iter()
            .filter(|c| c.1.flagged)
            .map(|c| *c.0)
            .collect();
        prop_assert_eq!(fa, fm);
        // I4, and the ledger itself.
        for t in probes {
            let (la, lb, lm) = (self.a.ledger(t), self.b.ledger(t), self.m.ledger(t));
            prop_assert_eq!(la, lm, "ledger A at {}", t);
            prop_assert_eq!(lb, lm, "ledger B at {}", t);
            prop_assert!(la.balanced(), "I4: ledger at {} not balanced: {:?}", t, la);
            self.balanced_checks += 1;
        }
        self.a
            .check()
            .map_err(|e| TestCaseError::fail(format!("check A: {e}")))?;
        self.b
            .check()
            .map_err(|e| TestCaseError::fail(format!("check B: {e}")))?;
        // I2 over every span ending here.
        let (unspent, pending) = self.m.unspent_and_pending();
        prop_assert!(
            self.i2.point(self.m.clock, self.net * F, unspent, pending),
            "I2: grants over a span ending at {} exceed the pool's supply",
            self.m.clock
        );
        Ok(())
    }
}

// ---- strategies ------------------------------------------------------------------------------

fn rate_micros() -> impl Strategy<Value = u64> {
    prop_oneof![
        1u64..=2_000_000,
        1u64..=500_000_000,
        (1u64..=500).prop_map(|t| t * 1_000_000),
    ]
}

fn contract() -> impl Strategy<Value = Contract> {
    let burst = prop_oneof![12 => 1u64..=2_000, 1 => Just(MAX_BURST_TOKENS)];
    (burst, rate_micros(), 0u16..=3)
        .prop_map(|(b, r, w)| Contract::new(b, Rate::from_micros_per_sec(r)).with_weight(w))
}

fn config() -> impl Strategy<Value = EngineConfig> {
    (
        prop_oneof![1u64..=300, 1u64..=4_000],
        prop_oneof![1u64..=5_000_000, 1u64..=2_000_000_000],
        prop_oneof![
            Just(0u32),
            Just(800_000u32),
            Just(1_000_000u32),
            0u32..=1_000_000
        ],
        prop_oneof![Just(60 * SEC), SEC / 1000..=10 * SEC],
        (0u32..=1_000_000, 0u32..=1_000_000),
        1u8..=3,
        0u32..=3,
    )
        .prop_map(|(pb, pr, alpha, interval, (x, y), ticks, min_req)| {
            let mut c = EngineConfig::new(pb, Rate::from_micros_per_sec(pr));
            c.alpha_ppm = alpha;
            c.interval_ns = interval;
            c.contention_high_ppm = x.max(y);
            c.contention_low_ppm = x.min(y);
            c.contention_ticks = ticks;
            c.contention_min_requests = min_req;
            c
        })
}

fn tokens() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0u64),
        6 => 1u64..=20,
        3 => 1u64..=300,
        1 => 1u64..=3_000,
        // around where the batch path's packed size field (35 bits) saturates, and the largest
        // burst (a customer with that burst may be granted either)
        1 => prop_oneof![
            Just((1u64 << 35) - 2),
            Just((1u64 << 35) - 1),
            Just(1u64 << 35),
            Just((1u64 << 35) + 1),
            Just(MAX_BURST_TOKENS - 2),
            Just(MAX_BURST_TOKENS - 1),
            Just(MAX_BURST_TOKENS),
            Just(MAX_BURST_TOKENS + 1),
            Just(u64::MAX),
        ],
    ]
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        12 => any::<usize>().prop_map(Who::Live),
        1 => any::<usize>().prop_map(Who::Gone),
        1 => any::<u64>().prop_map(Who::Stranger),
    ]
}

fn clock() -> impl Strategy<Value = Clock> {
    prop_oneof![
        2 => Just(Clock::Same),
        5 => (0u64..=3 * SEC).prop_map(Clock::Fwd),
        1 => (1u64..=1_000).prop_map(Clock::Fwd),
        2 => (0u64..=3 * SEC).prop_map(Clock::Back),
    ]
}

fn used() -> impl Strategy<Value = Used> {
    prop_oneof![
        Just(Used::Exact),
        Just(Used::Zero),
        (0u32..1_000_000).prop_map(Used::Part),
        (1u64..=50).prop_map(Used::Over),
        (1u64..=5_000).prop_map(Used::Over),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (vec((who(), tokens()), 0..24), any::<bool>())
            .prop_map(|(reqs, by_slot)| Op::Batch { reqs, by_slot }),
        3 => vec(
            (
                any::<usize>(),
                prop_oneof![0u64..=5_000_000, 0u64..=2_000_000_000],
                prop_oneof![0u64..=50, 0u64..=3_000],
            ),
            0..12
        )
        .prop_map(|res| Op::Tick { res }),
        4 => (any::<usize>(), used()).prop_map(|(pick, used)| Op::Settle { pick, used }),
        1 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
        1 => contract().prop_map(|contract| Op::Add { contract }),
        1 => (any::<usize>(), contract()).prop_map(|(pick, contract)| Op::Update { pick, contract }),
    ]
}

// ---- I5 (with I1, I2, I4 checked at every step) -----------------------------------------------

proptest! {
    #![proptest_config(cfg_cases(64))]

    /// I5: `allocate_batch` (parallel algorithm, many shards) = the model = the same engine one
    /// request at a time; I1, I2 and I4 after every step.
    #[test]
    fn batch_matches_model_and_one_at_a_time(
        cfg in config(),
        // (customers after a few fillers, or many: every shard of the store is reached)
        custs in vec((contract(), prop_oneof![3 => 0usize..8, 1 => 60usize..120]), 1..16),
        ops in vec((op(), clock()), 1..60),
    ) {
        tune();
        let mut h = Harness::new(cfg, &custs)?;
        for (op, clk) in &ops {
            h.apply(op, *clk)?;
        }
        prop_assert!(h.balanced_checks > 0);
    }
}

// ---- I6 --------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cfg_cases(48))]

    /// I6: an engine whose customers are touched at many intermediate times (some out of order)
    /// ends exactly where an engine brought over the same span in one step does, and the levels
    /// are the closed form `min(level + rate * span, cap)`.
    #[test]
    fn refilling_in_small_steps_equals_one_step(
        cfg in config(),
        contracts in vec(contract(), 1..8),
        res in vec((prop_oneof![0u64..=5_000_000, 0u64..=2_000_000_000], 0u64..=3_000), 8),
        first in vec((0usize..8, tokens()), 0..16),
        d0 in 0u64..=5 * SEC,
        touches in vec((0usize..8, any::<u64>()), 1..40),
        span in 1u64..=20 * SEC,
        last in vec((0usize..8, tokens()), 0..16),
    ) {
        tune();
        let dir = TempDir::new("steps");
        let mut a = dir.engine("a.sb", cfg, T0);
        let mut b = dir.engine("b.sb", cfg, T0);
        let n = contracts.len();
        let mut rs = Vec::new();
        for (i, c) in contracts.iter().enumerate() {
            let id = 100 + i as u64;
            let sa = a.add_customer(id, *c, T0).expect("add");
            prop_assert_eq!(b.add_customer(id, *c, T0).expect("add"), sa);
            rs.push(Reservation { slot: sa, rate: Rate::from_micros_per_sec(res[i].0), capacity: res[i].1 });
        }
        prop_assert_eq!(a.tick_with(T0, &rs).expect("tick"), b.tick_with(T0, &rs).expect("tick"));
        let t1 = T0 + d0;
        let ids: Vec<u64> = first.iter().map(|r| 100 + (r.0 % n) as u64).collect();
        let toks: Vec<u64> = first.iter().map(|r| r.1).collect();
        prop_assert_eq!(
            a.allocate_batch(Keys::Ids(&ids), &toks, t1).expect("batch"),
            b.allocate_batch(Keys::Ids(&ids), &toks, t1).expect("batch")
        );
        let before: Vec<CustomerView> =
            (0..n).map(|i| b.customer_at(100 + i as u64, t1).expect("view")).collect();
        let t2 = t1 + span;
        // A: touched at many times within the span, in any order; B: not at all.
        for &(i, off) in &touches {
            let i = i % n;
            a.update_contract(100 + i as u64, contracts[i], t1 + off % (span + 1)).expect("touch");
        }
        for (i, v0) in before.iter().enumerate() {
            let id = 100 + i as u64;
            let va = a.customer_at(id, t2).expect("view");
            let vb = b.customer_at(id, t2).expect("view");
            prop_assert_eq!(&va, &vb);
            let dt = (t2 - t1) as i128;
            let std = (v0.std_femto + contracts[i].rate.micros() as i128 * dt)
                .min(femto(contracts[i].burst));
            let sh = v0.shadow_femto + v0.reserved_rate.micros() as i128 * dt;
            let sh = sh.min(femto(v0.shadow_capacity).max(v0.shadow_femto));
            prop_assert_eq!(va.std_femto, std, "customer {} standard bucket", id);
            prop_assert_eq!(va.shadow_femto, sh, "customer {} shadow bucket", id);
        }
        let (la, lb) = (a.ledger(t2), b.ledger(t2));
        prop_assert_eq!(la, lb);
        prop_assert!(la.balanced());
        // The tick at the end of the span touches everyone (B's shadow overflow, which A's
        // touches already credited, goes to the pool now): from here the two are identical,
        // and so is what the same batch does to them.
        prop_assert_eq!(a.tick_with(t2, &rs).expect("tick"), b.tick_with(t2, &rs).expect("tick"));
        let same = |a: &Engine, b: &Engine| -> Result<(), TestCaseError> {
            for i in 0..n {
                let id = 100 + i as u64;
                prop_assert_eq!(a.customer(id).expect("view"), b.customer(id).expect("view"));
            }
            let (sa, sb) = (a.stats(), b.stats());
            prop_assert_eq!(sa.counters, sb.counters);
            prop_assert_eq!(sa.pool_femto, sb.pool_femto);
            prop_assert_eq!(a.ledger(t2), b.ledger(t2));
            prop_assert!(a.ledger(t2).balanced());
            Ok(())
        };
        same(&a, &b)?;
        let ids: Vec<u64> = last.iter().map(|r| 100 + (r.0 % n) as u64).collect();
        let toks: Vec<u64> = last.iter().map(|r| r.1).collect();
        prop_assert_eq!(
            a.allocate_batch(Keys::Ids(&ids), &toks, t2).expect("batch"),
            b.allocate_batch(Keys::Ids(&ids), &toks, t2).expect("batch")
        );
        same(&a, &b)?;
    }
}

#[test]
fn refill_is_exact_hand_checked() {
    tune();
    let dir = TempDir::new("hand");
    let cfg = EngineConfig::new(1_000, Rate::tokens_per_sec(100));
    let mut e = dir.engine("e.sb", cfg, T0);
    // 0.333333 tokens/s: one third of a token per second, to the micro-token
    let c = Contract::new(10, Rate::from_micros_per_sec(333_333));
    e.add_customer(1, c, T0).unwrap();
    let d = e.allocate(1, 10, T0).unwrap();
    assert_eq!(d.outcome, Outcome::GrantedPool);
    // the bump: 10 tokens per 60 s interval = 166,666 micro-tokens/s, and 10 tokens of capacity
    let v = e.customer(1).unwrap();
    assert_eq!(v.reserved_rate.micros(), 166_666);
    assert_eq!(v.shadow_capacity, 10);
    assert_eq!(v.std_femto, 0);
    // three one-second steps
    for k in 1..=3 {
        e.update_contract(1, c, T0 + k * SEC).unwrap();
    }
    let v = e.customer(1).unwrap();
    assert_eq!(v.std_femto, 999_999_000_000_000); // 333,333 * 3e9
    assert_eq!(v.shadow_femto, 499_998_000_000_000); // 166,666 * 3e9
    assert_eq!(
        e.customer_at(1, T0 + 3 * SEC + 1).unwrap().std_femto,
        999_999_000_333_333
    );
    // one token is 10^9 femto-tokens away: ceil(10^9 / 333,333) = 3,001 ns
    let d = e.allocate(1, 1, T0 + 3 * SEC).unwrap();
    assert_eq!(d.outcome, Outcome::DeniedCustomerLimit);
    assert_eq!(d.retry_after_ns, 3_001);
    // a clock that steps back acts at the engine's clock: nothing refills, nothing is minted
    e.update_contract(1, c, T0).unwrap();
    assert_eq!(e.customer(1).unwrap().std_femto, 999_999_000_000_000);
    assert!(e.ledger(T0).balanced());
}

#[test]
fn small_batch_hand_checked() {
    tune();
    let dir = TempDir::new("small");
    let cfg = EngineConfig::new(1_000, Rate::tokens_per_sec(100));
    let mut e = dir.engine("e.sb", cfg, T0);
    e.add_customer(42, Contract::new(5_000, Rate::tokens_per_sec(100)), T0)
        .unwrap();
    let out = e
        .allocate_batch(
            Keys::Ids(&[42, 7, 42, 42, 42, 42]),
            &[100, 10, 0, 6_000, 4_900, 1],
            T0,
        )
        .unwrap();
    assert_eq!(
        out.outcomes,
        [
            Outcome::GrantedPool,         // pool 1000 -> 900; sigma 100 (the headroom)
            Outcome::UnknownCustomer,     // no customer 7
            Outcome::InvalidInput,        // zero tokens
            Outcome::ExceedsBurst,        // 6000 > burst 5000
            Outcome::DeniedPoolExhausted, // 4900 > pool 900 (and > its cap 900)
            Outcome::GrantedPool,         // pool 900 -> 899; sigma + 1 (headroom)
        ]
    );
    assert_eq!(out.retry_after_ns, [0, NEVER, NEVER, NEVER, NEVER, 0]);
    let v = e.customer(42).unwrap();
    assert_eq!(v.shadow_capacity, 101);
    // 100 then 1 token per 60 s interval: 1,666,666 + 16,666 micro-tokens/s
    assert_eq!(v.reserved_rate.micros(), 1_683_332);
    assert_eq!(v.outstanding, 101);
    let s = e.stats();
    assert_eq!(s.pool_femto, femto(899));
    assert_eq!(s.counters.requests, 6);
    assert_eq!(s.counters.pool_grants, 2);
    assert_eq!(s.counters.unknown, 1);
    assert_eq!(s.counters.invalid, 1);
    assert_eq!(s.counters.exceeds_burst, 1);
    assert_eq!(s.counters.denied_pool, 1);
    assert!(e.ledger(T0).balanced());
}

// ---- I3 --------------------------------------------------------------------------------------

/// The I3 setting: a pool of 1,000 tokens at 100 tokens/s; four steady customers (weight 3,
/// contract 200 tokens at 50/s, reservation 10 tokens/s with 50 tokens of capacity) and four
/// noisy ones (weight 1, huge contracts, forecast 1 token/s and 5 tokens), plus a control customer
/// with the steady contract and no reservation.
struct Neighbourhood {
    e: Engine,
    res: Vec<Reservation>,
    _dir: TempDir,
}

const STEADY: [u64; 4] = [1, 2, 3, 4];
const NOISY: [u64; 4] = [11, 12, 13, 14];
const CONTROL: u64 = 21;

impl Neighbourhood {
    fn new() -> Neighbourhood {
        let dir = TempDir::new("i3");
        let cfg = EngineConfig::new(1_000, Rate::tokens_per_sec(100));
        let mut e = dir.engine("e.sb", cfg, T0);
        let mut res = Vec::new();
        let mut filler = FILLER_BASE;
        for (k, (&s, &n)) in STEADY.iter().zip(&NOISY).enumerate() {
            // spread over the shards
            for _ in 0..40 + k {
                e.add_customer(filler, Contract::new(1, Rate::tokens_per_sec(1)), T0)
                    .unwrap();
                filler += 1;
            }
            let steady = Contract::new(200, Rate::tokens_per_sec(50)).with_weight(3);
            let slot = e.add_customer(s, steady, T0).unwrap();
            res.push(Reservation {
                slot,
                rate: Rate::tokens_per_sec(10),
                capacity: 50,
            });
            let noisy = Contract::new(100_000, Rate::tokens_per_sec(100_000));
            let slot = e.add_customer(n, noisy, T0).unwrap();
            res.push(Reservation {
                slot,
                rate: Rate::tokens_per_sec(1),
                capacity: 5,
            });
        }
        let control = Contract::new(200, Rate::tokens_per_sec(50)).with_weight(3);
        e.add_customer(CONTROL, control, T0).unwrap();
        for id in FILLER_BASE..filler {
            e.remove_customer(id, T0).unwrap();
        }
        e.tick_with(T0, &res).unwrap();
        Neighbourhood { e, res, _dir: dir }
    }
}

/// Per second `k >= 1` (at `T0 + k s`), steady customers ask for at most the 10 tokens their
/// reservation accrued, in one batch together with `noise(k)`; `extra(k)` are further noisy
/// batches within the second. Returns (steady outcomes, noisy outcomes, control outcomes).
fn run_neighbourhood(
    nb: &mut Neighbourhood,
    seconds: u64,
    steady_ask: impl Fn(u64, usize) -> u64,
    noise: impl Fn(u64) -> Vec<(u64, u64)>,
    extra: impl Fn(u64) -> Vec<(u64, Vec<(u64, u64)>)>,
    settle: impl Fn(u64) -> Vec<(u64, u64)>,
) -> (Vec<Outcome>, Vec<Outcome>, Vec<Outcome>) {
    let (mut steady, mut noisy, mut control) = (Vec::new(), Vec::new(), Vec::new());
    let mut pool_grants: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for k in 1..=seconds {
        let t = T0 + k * SEC;
        if k % 60 == 0 {
            nb.e.tick_with(t, &nb.res).unwrap();
        }
        let mut reqs: Vec<(u64, u64)> = noise(k);
        for (i, &s) in STEADY.iter().enumerate() {
            let pos = (k as usize * 7 + i * 3) % (reqs.len() + 1);
            reqs.insert(pos, (s, steady_ask(k, i)));
        }
        reqs.push((CONTROL, 10));
        let ids: Vec<u64> = reqs.iter().map(|r| r.0).collect();
        let toks: Vec<u64> = reqs.iter().map(|r| r.1).collect();
        let out = nb.e.allocate_batch(Keys::Ids(&ids), &toks, t).unwrap();
        let mut batches = vec![(0, reqs, out)];
        for (off, more) in extra(k) {
            let ids: Vec<u64> = more.iter().map(|r| r.0).collect();
            let toks: Vec<u64> = more.iter().map(|r| r.1).collect();
            let out =
                nb.e.allocate_batch(Keys::Ids(&ids), &toks, t + off)
                    .unwrap();
            batches.push((off, more, out));
        }
        for (_, reqs, out) in batches {
            for ((id, n), o) in reqs.iter().zip(&out.outcomes) {
                if STEADY.contains(id) {
                    steady.push(*o);
                } else if *id == CONTROL {
                    control.push(*o);
                } else {
                    noisy.push(*o);
                    if *o == Outcome::GrantedPool {
                        pool_grants.entry(*id).or_default().push(*n);
                    }
                }
            }
        }
        // noisy customers report more use than they were granted: pool debt
        for (id, extra_used) in settle(k) {
            if let Some(n) = pool_grants.get_mut(&id).and_then(|v| v.pop()) {
                nb.e.settle(id, n, n + extra_used, GrantPath::Pool, t + SEC / 2)
                    .unwrap();
            }
        }
        assert!(nb.e.ledger(t + SEC / 2).balanced());
    }
    (steady, noisy, control)
}

#[test]
fn steady_customers_are_never_pool_denied() {
    tune();
    let mut nb = Neighbourhood::new();
    let (steady, noisy, control) = run_neighbourhood(
        &mut nb,
        150,
        |_, _| 10,
        // spikes far beyond the forecast, and a stream of small requests that drains the pool
        |k| {
            NOISY
                .iter()
                .flat_map(|&id| [(id, 400 + (k * 37 + id) % 1_600), (id, 20 + (k + id) % 60)])
                .collect()
        },
        |k| {
            vec![
                (SEC / 4, NOISY.iter().map(|&id| (id, 30 + k % 50)).collect()),
                (SEC / 2, vec![(NOISY[0], 2_000), (NOISY[1], 5)]),
                (
                    3 * SEC / 4,
                    NOISY.iter().map(|&id| (id, 10 + k % 20)).collect(),
                ),
            ]
        },
        |k| {
            if k % 10 == 0 {
                vec![(NOISY[2], 500)]
            } else {
                Vec::new()
            }
        },
    );
    assert_eq!(steady.len(), 150 * STEADY.len());
    assert!(
        steady.iter().all(|&o| o == Outcome::GrantedShadow),
        "steady customers: {steady:?}"
    );
    // Sanity: the noise does exhaust the pool, and the same demand without a reservation is
    // pool-denied; so the assertion above can fail.
    let noisy_denied = noisy
        .iter()
        .filter(|&&o| o == Outcome::DeniedPoolExhausted)
        .count();
    assert!(noisy_denied > 100, "noisy pool denials: {noisy_denied}");
    assert!(
        control.contains(&Outcome::DeniedPoolExhausted),
        "control: {control:?}"
    );
}

proptest! {
    #![proptest_config(cfg_cases(24))]

    /// I3 whatever the noisy customers do: random spikes, batches at random instants, debt.
    #[test]
    fn reservations_protect_steady_customers(
        steady_asks in vec(1u64..=10, 64 * 4),
        noise in vec(vec((0usize..4, 1u64..=3_000), 0..8), 64),
        extra in vec(vec((1u64..SEC, vec((0usize..4, 1u64..=3_000), 0..6)), 0..3), 64),
        debts in vec(vec((0usize..4, 1u64..=2_000), 0..2), 64),
        seconds in 10u64..=64,
    ) {
        tune();
        let mut nb = Neighbourhood::new();
        let (steady, _, _) = run_neighbourhood(
            &mut nb,
            seconds,
            |k, i| steady_asks[((k - 1) * 4) as usize + i],
            |k| noise[(k - 1) as usize].iter().map(|&(i, n)| (NOISY[i], n)).collect(),
            |k| {
                extra[(k - 1) as usize]
                    .iter()
                    .map(|(off, reqs)| (*off, reqs.iter().map(|&(i, n)| (NOISY[i], n)).collect()))
                    .collect()
            },
            |k| debts[(k - 1) as usize].iter().map(|&(i, n)| (NOISY[i], n)).collect(),
        );
        prop_assert_eq!(steady.len() as u64, seconds * 4);
        for o in &steady {
            prop_assert_ne!(*o, Outcome::DeniedPoolExhausted);
            prop_assert_eq!(*o, Outcome::GrantedShadow);
        }
    }
}

// ---- discrepancies with the docs (reported; ignored until resolved) ---------------------------

/// I2 as `docs/semantics.md` states it, over a span of zero length: at most `pool_burst` tokens
/// can be granted at one instant. The engine credits a shadow bucket's overflow to the pool only
/// when the customer is next touched (`docs/engine.md`), so overflow that an eager pool would have
/// lost at its cap is still usable later: after the pool is drained, touching a customer whose
/// shadow bucket overflowed for a long time refills the pool at once.
#[test]
fn grants_at_one_instant_never_exceed_pool_burst() {
    tune();
    let dir = TempDir::new("i2-instant");
    let cfg = EngineConfig::new(1_000, Rate::tokens_per_sec(100));
    let mut e = dir.engine("e.sb", cfg, T0);
    e.add_customer(
        1,
        Contract::new(1_000_000, Rate::tokens_per_sec(1_000_000)),
        T0,
    )
    .unwrap();
    let slot = e
        .add_customer(2, Contract::new(1_000, Rate::tokens_per_sec(1_000)), T0)
        .unwrap();
    // customer 2 holds the whole reservable budget: 80 tokens/s, 800 tokens; the pool's cap is 200
    let res = [Reservation {
        slot,
        rate: Rate::tokens_per_sec(80),
        capacity: 800,
    }];
    e.tick_with(T0, &res).unwrap();
    let t = T0 + 100 * SEC;
    let out = e
        .allocate_batch(Keys::Ids(&[1, 2, 1, 2]), &[200, 1, 200, 799], t)
        .unwrap();
    let granted: u64 = out
        .outcomes
        .iter()
        .zip([200, 1, 200, 799])
        .filter(|(o, _)| o.granted())
        .map(|(_, n)| n)
        .sum();
    assert!(e.ledger(t).balanced());
    assert!(
        granted <= cfg.pool_burst,
        "{granted} tokens granted at one instant, pool_burst {}: {:?}",
        cfg.pool_burst,
        out.outcomes
    );
}

/// `docs/engine.md`, the tick, step 3: an interval with fewer than `contention_min_requests`
/// requests leaves the streak as it is; a busy interval that is not contended resets it.
#[test]
fn idle_intervals_keep_and_calm_intervals_reset_the_contention_streak() {
    tune();
    let dir = TempDir::new("streak");
    let mut cfg = EngineConfig::new(1_000_000, Rate::tokens_per_sec(1_000));
    cfg.contention_ticks = 2;
    cfg.contention_min_requests = 1;
    let mut e = dir.engine("e.sb", cfg, T0);
    e.add_customer(1, Contract::new(1_000, Rate::tokens_per_sec(1_000)), T0)
        .unwrap();
    let mut t = T0;
    // (contended, idle, contended): the idle interval does not break the streak
    for busy in [true, false, true] {
        t += SEC;
        if busy {
            // no reservation: a fallback, so the interval's contended share is 100%
            assert_eq!(e.allocate(1, 10, t).unwrap().outcome, Outcome::GrantedPool);
        }
        t += SEC;
        e.tick_with(t, &[]).unwrap();
    }
    assert!(
        e.customer(1).unwrap().flagged,
        "two contended intervals around an idle one"
    );

    // a second customer: (contended, calm, contended) never raises the flag
    e.add_customer(2, Contract::new(1_000, Rate::tokens_per_sec(1_000)), t)
        .unwrap();
    let slot = e.slot_of(2).unwrap();
    for calm in [false, true, false] {
        t += SEC;
        let res = [Reservation {
            slot,
            rate: Rate::tokens_per_sec(100),
            capacity: 100,
        }];
        if calm {
            // a reservation that covers the request: a shadow grant, share 0%
            e.tick_with(t, &res).unwrap();
            t += SEC;
            assert_eq!(
                e.allocate(2, 10, t).unwrap().outcome,
                Outcome::GrantedShadow
            );
        } else {
            e.tick_with(t, &[]).unwrap();
            t += SEC;
            assert_eq!(e.allocate(2, 10, t).unwrap().outcome, Outcome::GrantedPool);
        }
        t += SEC;
        e.tick_with(t, &[]).unwrap();
    }
    assert!(
        !e.customer(2).unwrap().flagged,
        "a calm interval must reset the streak"
    );
}
