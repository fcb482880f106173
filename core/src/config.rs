//! Contracts, pool configuration and reservations: the inputs that shape the engine.

use crate::error::{Error, Result};
use crate::fixed::{MAX_BURST_TOKENS, MAX_RATE_MICROS, Rate};

/// A customer's contract: a standard token bucket plus a weight (tier).
///
/// ```
/// use shadowbucket::{Contract, Rate};
/// let c = Contract::new(10_000, Rate::tokens_per_sec(500)).with_weight(2);
/// assert!(c.validate().is_ok());
/// assert!(Contract::new(0, Rate::tokens_per_sec(1)).validate().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contract {
    /// Bucket capacity in tokens (1 ..= 2^50).
    pub burst: u64,
    /// Refill rate (1 micro-token/s ..= 10^12 tokens/s).
    pub rate: Rate,
    /// Tier used when reservations must be cut back: higher is served first (default 1).
    pub weight: u16,
}

impl Contract {
    /// A contract of `burst` tokens refilled at `rate`, weight 1.
    pub const fn new(burst: u64, rate: Rate) -> Self {
        Contract {
            burst,
            rate,
            weight: 1,
        }
    }

    /// The same contract with another weight.
    pub const fn with_weight(mut self, weight: u16) -> Self {
        self.weight = weight;
        self
    }

    /// Checks the ranges documented on the fields.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the field that is out of range.
    pub fn validate(&self) -> Result<()> {
        if self.burst == 0 || self.burst > MAX_BURST_TOKENS {
            return Err(Error::invalid(format!(
                "burst must be 1..={MAX_BURST_TOKENS} tokens, got {}",
                self.burst
            )));
        }
        let r = self.rate.micros();
        if r == 0 || r > MAX_RATE_MICROS {
            return Err(Error::invalid(format!(
                "rate must be 1..={MAX_RATE_MICROS} micro-tokens/s, got {r}"
            )));
        }
        Ok(())
    }
}

/// Engine-wide settings: the pool, the reservable share, the interval and the contention flag.
///
/// Shares are in parts per million so that no float enters the engine's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Pool capacity in tokens.
    pub pool_burst: u64,
    /// Pool refill rate.
    pub pool_rate: Rate,
    /// Share of `pool_rate` (and of `pool_burst`) that reservations may take, in ppm (default
    /// 800,000 = 0.8).
    pub alpha_ppm: u32,
    /// Tick interval in nanoseconds (default 60 s). Used by the reservation bump.
    pub interval_ns: u64,
    /// A customer's contended share (fallbacks plus pool denials over requests) above this, in
    /// ppm, counts toward raising its contention flag (default 500,000).
    pub contention_high_ppm: u32,
    /// ... and below this toward clearing it (default 200,000).
    pub contention_low_ppm: u32,
    /// Consecutive ticks above (below) the threshold that raise (clear) the flag (default 3).
    pub contention_ticks: u8,
    /// Intervals with fewer requests than this leave the streak unchanged (default 1).
    pub contention_min_requests: u32,
}

impl EngineConfig {
    /// Defaults around a pool of `pool_burst` tokens refilled at `pool_rate`.
    pub const fn new(pool_burst: u64, pool_rate: Rate) -> Self {
        EngineConfig {
            pool_burst,
            pool_rate,
            alpha_ppm: 800_000,
            interval_ns: 60_000_000_000,
            contention_high_ppm: 500_000,
            contention_low_ppm: 200_000,
            contention_ticks: 3,
            contention_min_requests: 1,
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the field that is out of range.
    pub fn validate(&self) -> Result<()> {
        if self.pool_burst == 0 || self.pool_burst > MAX_BURST_TOKENS * 1024 {
            return Err(Error::invalid(format!(
                "pool_burst must be 1..={} tokens, got {}",
                MAX_BURST_TOKENS * 1024,
                self.pool_burst
            )));
        }
        let r = self.pool_rate.micros();
        if r == 0 || r > MAX_RATE_MICROS {
            return Err(Error::invalid(format!(
                "pool_rate must be 1..={MAX_RATE_MICROS} micro-tokens/s, got {r}"
            )));
        }
        if self.alpha_ppm > 1_000_000 {
            return Err(Error::invalid(format!(
                "alpha_ppm must be at most 1,000,000, got {}",
                self.alpha_ppm
            )));
        }
        if self.interval_ns == 0 {
            return Err(Error::invalid("interval_ns must be positive"));
        }
        if self.contention_low_ppm > self.contention_high_ppm
            || self.contention_high_ppm > 1_000_000
        {
            return Err(Error::invalid(
                "contention thresholds need low <= high <= 1,000,000 ppm",
            ));
        }
        if self.contention_ticks == 0 {
            return Err(Error::invalid("contention_ticks must be at least 1"));
        }
        Ok(())
    }

    /// The most reserved rate all customers together may hold, in micro-tokens/s.
    pub fn rate_budget(&self) -> u64 {
        ppm_share(self.pool_rate.micros(), self.alpha_ppm)
    }

    /// The most shadow capacity all customers together may hold, in tokens.
    pub fn capacity_budget(&self) -> u64 {
        ppm_share(self.pool_burst, self.alpha_ppm)
    }
}

/// `ppm` parts per million of `value`, rounded down (the reservable budgets).
pub(crate) fn ppm_share(value: u64, ppm: u32) -> u64 {
    if let Some(v) = value.checked_mul(u64::from(ppm)) {
        return v / 1_000_000;
    }
    (value as u128 * ppm as u128 / 1_000_000) as u64
}

/// A reservation asked for one customer at a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The customer's slot (see [`crate::Engine::slot_of`]).
    pub slot: u32,
    /// Reserved rate `rho`.
    pub rate: Rate,
    /// Shadow capacity `sigma`, in tokens.
    pub capacity: u64,
}

#[cfg(test)]
mod tests {
    use super::ppm_share;

    /// The 64-bit fast path gives what the 128-bit product gives, on both sides of its limit.
    #[test]
    fn ppm_share_fast_path_is_the_wide_product() {
        let wide = |v: u64, p: u32| (v as u128 * p as u128 / 1_000_000) as u64;
        for v in [
            0,
            1,
            999_999,
            1 << 40,
            (1 << 44) + 7,
            u64::MAX / 1_000_000,
            u64::MAX,
        ] {
            for p in [0, 1, 500_000, 999_999, 1_000_000, u32::MAX] {
                assert_eq!(ppm_share(v, p), wide(v, p), "{v} ppm {p}");
            }
        }
    }
}
