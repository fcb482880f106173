//! Exact fixed-point token arithmetic.
//!
//! Every bucket level is an `i128` count of *femto-tokens* (10^-15 token) and every rate is a
//! `u64` count of *micro-tokens per second*. One micro-token per second is exactly one femto-token
//! per nanosecond, so refilling for `dt` nanoseconds adds `rate * dt` femto-tokens with no division
//! and no remainder: refilling in many small steps gives exactly what one big step gives (I6).
//! No float ever enters bucket state.

/// Femto-tokens in one token.
pub const FEMTO_PER_TOKEN: i128 = 1_000_000_000_000_000;
/// Micro-tokens in one token (the unit of [`Rate`]).
pub const MICRO_PER_TOKEN: u64 = 1_000_000;
/// Nanoseconds in one second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;
/// The largest burst (bucket capacity) accepted, in tokens: 2^50, about 10^15.
pub const MAX_BURST_TOKENS: u64 = 1 << 50;
/// The largest rate accepted, in micro-tokens per second (10^18, a trillion tokens per second).
pub const MAX_RATE_MICROS: u64 = 1_000_000_000_000_000_000;

/// A refill rate, exact to one micro-token per second.
///
/// ```
/// use shadowbucket::Rate;
/// assert_eq!(Rate::tokens_per_sec(5).micros(), 5_000_000);
/// // one token every 4 µs is 250,000 tokens per second, exactly
/// assert_eq!(Rate::per_period(1, 4_000).unwrap(), Rate::tokens_per_sec(250_000));
/// // one token every 3 ns has no exact micro-token rate
/// assert!(Rate::per_period(1, 3).is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rate(u64);

impl Rate {
    /// A rate of `micros` micro-tokens per second.
    pub const fn from_micros_per_sec(micros: u64) -> Self {
        Rate(micros)
    }

    /// A rate of whole tokens per second (saturating).
    pub const fn tokens_per_sec(tokens: u64) -> Self {
        Rate(tokens.saturating_mul(MICRO_PER_TOKEN))
    }

    /// `tokens` every `period_ns` nanoseconds, when that is a whole number of micro-tokens per
    /// second; `None` when it is not exact, or `period_ns` is zero.
    pub fn per_period(tokens: u64, period_ns: u64) -> Option<Self> {
        if period_ns == 0 {
            return None;
        }
        let num = tokens as u128 * MICRO_PER_TOKEN as u128 * NANOS_PER_SEC as u128;
        if !num.is_multiple_of(period_ns as u128) {
            return None;
        }
        u64::try_from(num / period_ns as u128).ok().map(Rate)
    }

    /// The rate in micro-tokens per second (equal to femto-tokens per nanosecond).
    pub const fn micros(self) -> u64 {
        self.0
    }

    /// The rate in tokens per second, for display only.
    pub fn as_tokens_per_sec_f64(self) -> f64 {
        self.0 as f64 / MICRO_PER_TOKEN as f64
    }
}

/// `tokens` as femto-tokens.
#[inline(always)]
pub const fn femto(tokens: u64) -> i128 {
    tokens as i128 * FEMTO_PER_TOKEN
}

/// Whole tokens in a femto-token level, rounded toward negative infinity.
#[inline]
pub fn whole_tokens(level: i128) -> i128 {
    level.div_euclid(FEMTO_PER_TOKEN)
}

/// Femto-tokens accrued at `rate` over `dt` nanoseconds.
#[inline(always)]
pub const fn accrual(rate_micros: u64, dt_ns: u64) -> i128 {
    rate_micros as i128 * dt_ns as i128
}

/// Nanoseconds until a level that grows at `rate_micros` covers `deficit` femto-tokens
/// (0 when there is none); `u64::MAX` when it never will.
#[inline]
pub fn time_to_cover(deficit: i128, rate_micros: u64) -> u64 {
    if deficit <= 0 {
        return 0;
    }
    if rate_micros == 0 {
        return u64::MAX;
    }
    if let Ok(d) = u64::try_from(deficit) {
        // the common case, in one 64-bit division instead of two 128-bit ones
        return d / rate_micros + u64::from(!d.is_multiple_of(rate_micros));
    }
    let r = rate_micros as i128;
    let t = deficit / r + (deficit % r != 0) as i128;
    u64::try_from(t).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_period_is_exact_or_refused() {
        assert_eq!(
            Rate::per_period(1, 1_000).unwrap().micros(),
            1_000_000_000_000
        );
        assert_eq!(
            Rate::per_period(3, 2).unwrap().micros(),
            1_500_000_000_000_000
        );
        assert!(Rate::per_period(1, 7).is_none());
        assert!(Rate::per_period(1, 0).is_none());
    }

    #[test]
    fn time_to_cover_rounds_up() {
        assert_eq!(time_to_cover(0, 5), 0);
        assert_eq!(time_to_cover(-3, 0), 0);
        assert_eq!(time_to_cover(10, 3), 4);
        assert_eq!(time_to_cover(9, 3), 3);
        assert_eq!(time_to_cover(1, 0), u64::MAX);
        assert_eq!(time_to_cover(i128::MAX, 1), u64::MAX);
    }

    /// The 64-bit fast path gives what the 128-bit division gives, on both sides of its limit.
    #[test]
    fn time_to_cover_fast_path_is_the_wide_division() {
        let wide = |d: i128, r: u64| {
            let r = r as i128;
            u64::try_from(d / r + (d % r != 0) as i128).unwrap_or(u64::MAX)
        };
        let mut x = 0x243F_6A88_85A3_08D3u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let edge = u64::MAX as i128;
        for k in 0..20_000 {
            let d = match k % 4 {
                0 => (next() >> (next() % 64)) as i128,
                1 => edge - (next() % 1000) as i128,
                2 => edge + 1 + (next() % 1000) as i128,
                _ => (next() as i128) << (next() % 40),
            };
            let r = (next() >> (next() % 64)).max(1);
            assert_eq!(time_to_cover(d, r), wide(d, r), "deficit {d}, rate {r}");
        }
    }
}
