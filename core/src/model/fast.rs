//! Branch-free `exp`, `expm1`, `softplus` for the batched decode: plain float arithmetic and bit
//! manipulation (no library calls, no table lookups), so that loops over them vectorize.
//!
//! Error bounds against std (tested in this module over the ranges given):
//! - [`fast_exp`]: relative error < 3e-7 wherever std's result is a normal float (`x` in
//!   about `[-87.3, 88.7]`); below that the result is subnormal or 0 and the absolute error is
//!   under 1e-44; `+inf` from `x > 88.73` on, as std; NaN in, NaN out.
//! - [`fast_expm1`]: relative error < 5e-7 on `[-100, 88.7]`.
//! - [`fast_softplus`]: relative error < 5e-7 on all of `f32` where the result is a normal float
//!   (absolute under 1e-44 below), and exactly `x` for `x > 20` (as [`super::step`]'s reference).
//!
//! Plain multiply-adds (not `f32::mul_add`, a library call on targets built without FMA), as in
//! [`super::step::fast_tanh`].

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split so that `n * LN2_HI` is exact for the `n` that occur (|n| <= 150).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `1.5 * 2^23`: adding and subtracting it rounds a float of magnitude below 2^22 to an integer.
const ROUND: f32 = 12_582_912.0;

/// `e^x`: Cody–Waite reduction `x = n ln2 + r`, `|r| <= ln2/2`, Cephes' degree-7 polynomial for
/// `e^r`, then the result scaled by `2^n` in two halves (so that `n` from -150 to 129 stays in
/// the exponent's range and overflow and underflow round as the product does).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-104.0, 89.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let p = p * (r * r) + r + 1.0;
    let ni = n as i32;
    let n1 = ni >> 1;
    let n2 = ni - n1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n2 + 127) as u32) << 23);
    p * s1 * s2
}

/// `e^x - 1`: a Taylor polynomial (to `x^9/9!`) for `|x| < 0.5`, where subtracting 1 would cancel,
/// else [`fast_exp`]` - 1`.
#[inline(always)]
pub fn fast_expm1(x: f32) -> f32 {
    let mut p = 1.0 / 362_880.0f32;
    p = p * x + 1.0 / 40_320.0;
    p = p * x + 1.0 / 5_040.0;
    p = p * x + 1.0 / 720.0;
    p = p * x + 1.0 / 120.0;
    p = p * x + 1.0 / 24.0;
    p = p * x + 1.0 / 6.0;
    p = p * x + 0.5;
    p = p * x + 1.0;
    let small = p * x;
    let big = fast_exp(x) - 1.0;
    if x.abs() < 0.5 { small } else { big }
}

/// `ln(1 + e^x)` as `max(x, 0) + ln(1 + e^-|x|)`, the logarithm of `1 + e` (`e` in `(0, 1]`) as
/// `2 atanh(t)`, `t = e / (2 + e)` (at most 1/3), by its series to `t^13`.
#[inline(always)]
pub fn fast_softplus(x: f32) -> f32 {
    let e = fast_exp(-x.abs());
    let t = e / (2.0 + e);
    let w = t * t;
    let mut p = 1.0 / 13.0f32;
    p = p * w + 1.0 / 11.0;
    p = p * w + 1.0 / 9.0;
    p = p * w + 1.0 / 7.0;
    p = p * w + 1.0 / 5.0;
    p = p * w + 1.0 / 3.0;
    p = p * w + 1.0;
    x.max(0.0) + 2.0 * t * p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `step`-th float in `[lo, hi]` by bit pattern, plus the ends (a dense sweep of all
    /// exponents in the range).
    fn sweep(lo: f32, hi: f32, step: u32) -> Vec<f32> {
        let mut v = Vec::new();
        let mut push_run = |a: f32, b: f32| {
            // a and b of the same sign, |a| <= |b|
            let (mut i, j) = (a.to_bits(), b.to_bits());
            while i < j {
                v.push(f32::from_bits(i));
                i = i.saturating_add(step);
            }
            v.push(b);
        };
        if lo < 0.0 {
            push_run(-0.0, lo);
        }
        if hi > 0.0 {
            push_run(0.0, hi);
        }
        v
    }

    fn rel(a: f32, b: f32) -> f64 {
        if a == b {
            return 0.0;
        }
        ((a as f64 - b as f64) / (b as f64).abs()).abs()
    }

    #[test]
    fn exp_within_bound() {
        let mut worst = 0f64;
        for x in sweep(-110.0, 100.0, 97) {
            let (a, b) = (fast_exp(x), x.exp());
            if b.is_infinite() || a.is_infinite() {
                // both overflow, except within a few ulps of ln(f32::MAX)
                assert!(a == b || (x - 88.722_84).abs() < 1e-4, "x={x}: {a} vs {b}");
            } else if b >= f32::MIN_POSITIVE {
                worst = worst.max(rel(a, b));
            } else {
                assert!((a - b).abs() < 1e-44, "x={x}: {a} vs {b}");
            }
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(fast_exp(f32::NAN).is_nan());
        assert_eq!(fast_exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(fast_exp(0.0), 1.0);
    }

    #[test]
    fn expm1_within_bound() {
        let mut worst = 0f64;
        for x in sweep(-100.0, 88.7, 97) {
            worst = worst.max(rel(fast_expm1(x), x.exp_m1()));
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(fast_expm1(0.0), 0.0);
        assert_eq!(fast_expm1(100.0), f32::INFINITY);
    }

    #[test]
    fn softplus_within_bound() {
        let reference = |x: f32| if x > 20.0 { x } else { x.exp().ln_1p() };
        let mut worst = 0f64;
        for x in sweep(-f32::MAX, f32::MAX, 997) {
            let (a, b) = (fast_softplus(x), reference(x));
            if x > 20.0 {
                assert_eq!(a, b, "x={x}");
            } else if b >= f32::MIN_POSITIVE {
                worst = worst.max(rel(a, b));
            } else {
                assert!((a - b).abs() < 1e-44, "x={x}: {a} vs {b}");
            }
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
    }
}
