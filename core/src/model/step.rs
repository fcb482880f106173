//! One model step: the plain reference for one customer, the batched CPU step, and decoding.
//!
//! [`step_one`] is the definition (std `exp`/`tanh`, straightforward loops). [`step_batch`] is
//! the same math for many customers: the gate pre-activations are two matrix products per layer
//! (`X · W_ihᵀ` and `H · W_hhᵀ`, read in place from the feature and state columns through
//! strides, by `matrixmultiply`'s packed SGEMM) and the gates are applied with a branch-free
//! rational `tanh` that vectorizes; rows are split into chunks run in parallel with rayon. The
//! two agree within 1e-5 absolute on every output of one step from the same state (see the
//! tests); over a long stream, rounding builds up through the recurrence and they drift apart
//! slowly.

use rayon::prelude::*;

use super::fast::{fast_exp, fast_expm1, fast_softplus};
use super::spec::{CUSTOMER_FEATURES, FORECAST_PER_HORIZON, HEAD_PER_HORIZON, SCENARIOS};
use super::weights::LstmModel;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

/// One step for one customer: the definition of the model's math.
///
/// `x` holds the raw (un-normalized) features, `model.spec.input_dim()` of them; `state` the
/// customer's `[h_0, c_0, h_1, c_1, ...]`, advanced in place; `out` receives the
/// `model.spec.head_dim()` head outputs.
///
/// # Panics
/// If a slice has the wrong length (a bug in the caller).
pub fn step_one(model: &LstmModel, x: &[f32], state: &mut [f32], out: &mut [f32]) {
    let s = &model.spec;
    let hd = s.hidden;
    assert_eq!(x.len(), s.input_dim());
    assert_eq!(state.len(), s.state_dim());
    assert_eq!(out.len(), s.head_dim());
    let mut input: Vec<f32> = x
        .iter()
        .zip(&model.scaling.mean)
        .zip(&model.scaling.std)
        .map(|((&v, &m), &sd)| (v - m) / sd)
        .collect();
    let mut z = vec![0f32; 4 * hd];
    for (l, w) in model.layers.iter().enumerate() {
        let (h, c) = state[2 * l * hd..2 * (l + 1) * hd].split_at_mut(hd);
        let k = input.len();
        for (r, zr) in z.iter_mut().enumerate() {
            let mut acc = w.b_ih[r] + w.b_hh[r];
            for (a, b) in w.w_ih[r * k..(r + 1) * k].iter().zip(&input) {
                acc += a * b;
            }
            for (a, b) in w.w_hh[r * hd..(r + 1) * hd].iter().zip(h.iter()) {
                acc += a * b;
            }
            *zr = acc;
        }
        for j in 0..hd {
            let i = sigmoid(z[j]);
            let f = sigmoid(z[hd + j]);
            let g = z[2 * hd + j].tanh();
            let o = sigmoid(z[3 * hd + j]);
            c[j] = f * c[j] + i * g;
            h[j] = o * c[j].tanh();
        }
        input = h.to_vec();
    }
    for (r, o) in out.iter_mut().enumerate() {
        let mut acc = model.head_b[r];
        for (a, b) in model.head_w[r * hd..(r + 1) * hd].iter().zip(&input) {
            acc += a * b;
        }
        *o = acc;
    }
}

/// A customer's decoded forecast.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// Per horizon: `[mean, p50, p90, p99]`, in tokens per interval.
    pub forecast: Vec<f32>,
    /// Probabilities of low, medium, high, spike (they sum to 1).
    pub scenario: [f32; 4],
}

/// Decodes head outputs `y` with the customer's scale `s` and `usage_z`, the raw (un-normalized)
/// usage feature of the step that produced `y` (feature 0, `ln(1 + u_t/s)`), into `forecast`
/// (the store's forecast column layout: `[mean, p50, p90, p99]` per horizon, tokens) and
/// `scenario` (probabilities). The head is residual: `usage_z + y[4j]` and `usage_z + y[4j+1]`
/// are the mean's and the p50's `z` (see the [module docs](super)).
///
/// # Panics
/// If the slices disagree in length (a bug in the caller).
pub fn decode(y: &[f32], s: f32, usage_z: f32, forecast: &mut [f32], scenario: &mut [f32]) {
    let nh = (y.len() - SCENARIOS.len()) / HEAD_PER_HORIZON;
    assert_eq!(forecast.len(), nh * FORECAST_PER_HORIZON);
    assert_eq!(scenario.len(), SCENARIOS.len());
    for (j, f) in forecast.chunks_exact_mut(FORECAST_PER_HORIZON).enumerate() {
        let y = &y[j * HEAD_PER_HORIZON..(j + 1) * HEAD_PER_HORIZON];
        let z50 = usage_z + y[1];
        let z90 = z50 + softplus(y[2]);
        let z99 = z90 + softplus(y[3]);
        f[0] = s * (usage_z + y[0]).max(0.0).exp_m1();
        f[1] = s * z50.max(0.0).exp_m1();
        f[2] = s * z90.max(0.0).exp_m1();
        f[3] = s * z99.max(0.0).exp_m1();
    }
    let logits = &y[nh * HEAD_PER_HORIZON..];
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for (p, &l) in scenario.iter_mut().zip(logits) {
        *p = (l - m).exp();
        sum += *p;
    }
    for p in scenario.iter_mut() {
        *p /= sum;
    }
}

/// [`decode`] for a block of customers, with [`fast_softplus`], [`fast_expm1`] and [`fast_exp`]
/// in place of std's `exp`/`ln_1p`/`exp_m1` (vectorized; AVX2+FMA when the CPU has them).
///
/// `y` holds `rows x head_dim` head outputs, `scales` the `rows` scales, `forecast` and
/// `scenario` are `rows x fd` and `rows x sd` (the store's columns, `fd` at least the model's
/// forecast floats, `sd` at least 4); rows whose `active` flag is false are left as they are.
/// `scratch` is reused between calls.
///
/// Agrees with [`decode`] (tests below): scenario probabilities within a relative `eps`, and
/// each forecast `v` within `eps·(s + |v|)`, i.e. as if the log-domain `z` of `s·expm1(z)` (or
/// the softplus of the mean) were off by at most `eps` — with `eps = 2e-6` for head outputs in
/// `[-5, 5]` and `1e-5` in `[-30, 30]`, where `z` nears the overflow edge 88 and its own float
/// rounding in the reference (an ulp of 7.6e-6) is of that order. An absolute bound in `z` is
/// the right measure: `z99 = z90 + softplus(..)` may cancel to near 0 in either version. Both
/// give `+inf` where the product overflows (but for rounding within 0.1% of `f32::MAX`).
///
/// # Panics
/// If the slices disagree in length (a bug in the caller).
#[allow(clippy::too_many_arguments)]
pub fn decode_block(
    y: &[f32],
    head_dim: usize,
    scales: &[f32],
    usage_z: &[f32],
    active: &[bool],
    forecast: &mut [f32],
    fd: usize,
    scenario: &mut [f32],
    sd: usize,
    scratch: &mut Vec<f32>,
) {
    let rows = scales.len();
    let nh = (head_dim - SCENARIOS.len()) / HEAD_PER_HORIZON;
    assert!(nh * FORECAST_PER_HORIZON <= fd && SCENARIOS.len() <= sd);
    assert_eq!(y.len(), rows * head_dim);
    assert_eq!(active.len(), rows);
    assert_eq!(usage_z.len(), rows);
    assert_eq!(forecast.len(), rows * fd);
    assert_eq!(scenario.len(), rows * sd);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above), the only requirement of
        // a `#[target_feature]` function; `decode_block_avx2` is otherwise safe code.
        unsafe {
            decode_block_avx2(
                y, head_dim, nh, scales, usage_z, active, forecast, fd, scenario, sd, scratch,
            )
        };
        return;
    }
    decode_block_portable(
        y, head_dim, nh, scales, usage_z, active, forecast, fd, scenario, sd, scratch,
    );
}

/// [`decode_block_portable`] compiled for AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn decode_block_avx2(
    y: &[f32],
    o: usize,
    nh: usize,
    scales: &[f32],
    usage_z: &[f32],
    active: &[bool],
    forecast: &mut [f32],
    fd: usize,
    scenario: &mut [f32],
    sd: usize,
    scratch: &mut Vec<f32>,
) {
    decode_block_portable(
        y, o, nh, scales, usage_z, active, forecast, fd, scenario, sd, scratch,
    );
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn decode_block_portable(
    y: &[f32],
    o: usize,
    nh: usize,
    scales: &[f32],
    usage_z: &[f32],
    active: &[bool],
    forecast: &mut [f32],
    fd: usize,
    scenario: &mut [f32],
    sd: usize,
    scratch: &mut Vec<f32>,
) {
    let rows = scales.len();
    let nz = 4 * nh;
    let ns = SCENARIOS.len();
    scratch.clear();
    scratch.resize(rows * (o + nz + ns), 0.0);
    let (sp, rest) = scratch.split_at_mut(rows * o);
    let (z, e) = rest.split_at_mut(rows * nz);
    // 1. softplus of every head output (flat, vectorized; only the increment lanes are used)
    for (d, &v) in sp.iter_mut().zip(y) {
        *d = fast_softplus(v);
    }
    // 2. per row: the log-domain mean and quantiles (residual on the usage feature), the
    //    shifted scenario logits
    for r in 0..rows {
        let (yr, spr) = (&y[r * o..(r + 1) * o], &sp[r * o..(r + 1) * o]);
        let zr = &mut z[r * nz..(r + 1) * nz];
        let u = usage_z[r];
        for j in 0..nh {
            let h = j * HEAD_PER_HORIZON;
            let z50 = u + yr[h + 1];
            let z90 = z50 + spr[h + 2];
            let z99 = z90 + spr[h + 3];
            zr[4 * j] = (u + yr[h]).max(0.0);
            zr[4 * j + 1] = z50.max(0.0);
            zr[4 * j + 2] = z90.max(0.0);
            zr[4 * j + 3] = z99.max(0.0);
        }
        let logits = &yr[nh * HEAD_PER_HORIZON..];
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (d, &l) in e[r * ns..(r + 1) * ns].iter_mut().zip(logits) {
            *d = l - m;
        }
    }
    // 3. expm1 of the mean and quantiles, exp of the logits (flat, vectorized)
    for v in z.iter_mut() {
        *v = fast_expm1(*v);
    }
    for v in e.iter_mut() {
        *v = fast_exp(*v);
    }
    // 4. scale and store
    for r in 0..rows {
        if !active[r] {
            continue;
        }
        let s = scales[r];
        let f = &mut forecast[r * fd..r * fd + nh * FORECAST_PER_HORIZON];
        for (v, &zv) in f.iter_mut().zip(&z[r * nz..(r + 1) * nz]) {
            *v = s * zv;
        }
        let er = &e[r * ns..(r + 1) * ns];
        let sum: f32 = er.iter().sum();
        for (p, &v) in scenario[r * sd..r * sd + ns].iter_mut().zip(er) {
            *p = v / sum;
        }
    }
}

/// A branch-free rational approximation of `tanh` (max error under 2e-6 over all of `f32`),
/// written so that loops over it vectorize (plain multiply-adds: `f32::mul_add` would be a
/// library call on targets built without FMA).
#[inline(always)]
pub fn fast_tanh(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    const A1: f32 = 4.893_524_6e-3;
    const A3: f32 = 6.372_619_3e-4;
    const A5: f32 = 1.485_722_4e-5;
    const A7: f32 = 5.122_297e-8;
    const A9: f32 = -8.604_672e-11;
    const A11: f32 = 2.000_188e-13;
    const A13: f32 = -2.760_768_5e-16;
    const B0: f32 = 4.893_525e-3;
    const B2: f32 = 2.268_434_6e-3;
    const B4: f32 = 1.185_347e-4;
    const B6: f32 = 1.198_258_4e-6;
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let mut p = x2 * A13 + A11;
    p = p * x2 + A9;
    p = p * x2 + A7;
    p = p * x2 + A5;
    p = p * x2 + A3;
    p = p * x2 + A1;
    p *= x;
    let mut q = x2 * B6 + B4;
    q = q * x2 + B2;
    q = q * x2 + B0;
    p / q
}

#[inline(always)]
fn fast_sigmoid(x: f32) -> f32 {
    0.5 * fast_tanh(0.5 * x) + 0.5
}

/// The gate math for one customer's layer, over slices of equal length: with AVX2 and FMA
/// when the CPU has them (checked once per call, cached by std), else the portable build.
#[inline(always)]
fn gates(h: &mut [f32], c: &mut [f32], zi: &[f32], zf: &[f32], zg: &[f32], zo: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above), the only requirement of
        // a `#[target_feature]` function; `gates_avx2` is otherwise safe code.
        unsafe { gates_avx2(h, c, zi, zf, zg, zo) };
        return;
    }
    gates_portable(h, c, zi, zf, zg, zo);
}

/// [`gates_portable`] compiled for AVX2 and FMA (8 lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gates_avx2(h: &mut [f32], c: &mut [f32], zi: &[f32], zf: &[f32], zg: &[f32], zo: &[f32]) {
    gates_portable(h, c, zi, zf, zg, zo);
}

#[inline(always)]
fn gates_portable(h: &mut [f32], c: &mut [f32], zi: &[f32], zf: &[f32], zg: &[f32], zo: &[f32]) {
    let n = h.len();
    let (c, zi, zf, zg, zo) = (&mut c[..n], &zi[..n], &zf[..n], &zg[..n], &zo[..n]);
    for j in 0..n {
        let i = fast_sigmoid(zi[j]);
        let f = fast_sigmoid(zf[j]);
        let g = fast_tanh(zg[j]);
        let o = fast_sigmoid(zo[j]);
        let cn = f * c[j] + i * g;
        c[j] = cn;
        h[j] = o * fast_tanh(cn);
    }
}

/// A model rearranged for [`step_batch`]: transposed weights with the feature normalization folded
/// into the first layer, and summed biases.
#[derive(Clone, Debug)]
pub struct StepScratch {
    hidden: usize,
    state_dim: usize,
    head_dim: usize,
    /// Per layer: `W_ihᵀ` (`in x 4H`), normalization folded in for layer 0, where only the
    /// per-customer feature rows are kept.
    w_ih_t: Vec<Vec<f32>>,
    /// Layer 0's weights on the global features (`4H x global`, normalization folded in).
    w_glob: Vec<f32>,
    global: usize,
    /// Per layer: `W_hhᵀ` (`H x 4H`).
    w_hh_t: Vec<Vec<f32>>,
    /// Per layer: `b_ih + b_hh` (minus the folded normalization for layer 0).
    bias: Vec<Vec<f32>>,
    /// `head.weightᵀ` (`H x head_dim`).
    head_t: Vec<f32>,
    head_b: Vec<f32>,
    /// Customers per parallel chunk.
    chunk: usize,
}

fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

impl StepScratch {
    /// Customers per parallel chunk by default.
    pub const DEFAULT_CHUNK: usize = 256;

    /// Prepares `model` (which must be valid) for batched steps.
    pub fn new(model: &LstmModel) -> Self {
        let s = &model.spec;
        let hd = s.hidden;
        let g = 4 * hd;
        let mut w_ih_t = Vec::new();
        let mut w_glob = Vec::new();
        let cf = CUSTOMER_FEATURES;
        let mut w_hh_t = Vec::new();
        let mut bias = Vec::new();
        for (l, w) in model.layers.iter().enumerate() {
            let k = s.layer_input_dim(l);
            let mut wi = w.w_ih.clone();
            let mut b: Vec<f32> = w.b_ih.iter().zip(&w.b_hh).map(|(a, b)| a + b).collect();
            if l == 0 {
                // W (x - m)/sd = (W/sd) x - W m/sd
                for r in 0..g {
                    for c in 0..k {
                        let sd = model.scaling.std[c];
                        let m = model.scaling.mean[c];
                        b[r] -= wi[r * k + c] * m / sd;
                        wi[r * k + c] /= sd;
                    }
                }
            }
            if l == 0 {
                let per_customer: Vec<f32> = (0..g)
                    .flat_map(|r| wi[r * k..r * k + cf].to_vec())
                    .collect();
                w_glob = (0..g)
                    .flat_map(|r| wi[r * k + cf..(r + 1) * k].to_vec())
                    .collect();
                w_ih_t.push(transpose(&per_customer, g, cf));
            } else {
                w_ih_t.push(transpose(&wi, g, k));
            }
            w_hh_t.push(transpose(&w.w_hh, g, hd));
            bias.push(b);
        }
        StepScratch {
            hidden: hd,
            state_dim: s.state_dim(),
            head_dim: s.head_dim(),
            w_ih_t,
            w_glob,
            global: s.global_dim(),
            w_hh_t,
            bias,
            head_t: transpose(&model.head_w, s.head_dim(), hd),
            head_b: model.head_b.clone(),
            chunk: Self::DEFAULT_CHUNK,
        }
    }

    /// Sets the customers per parallel chunk (at least 1).
    pub fn with_chunk(mut self, chunk: usize) -> Self {
        self.chunk = chunk.max(1);
        self
    }

    /// Input features per customer: the per-customer ones ([`CUSTOMER_FEATURES`]).
    pub fn customer_dim(&self) -> usize {
        CUSTOMER_FEATURES
    }

    /// Global input features (the same for every customer at a tick).
    pub fn global_dim(&self) -> usize {
        self.global
    }

    /// State floats per customer.
    pub fn state_dim(&self) -> usize {
        self.state_dim
    }

    /// Head outputs per customer.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
}

/// `c (m x n) += a (m x k, row stride rsa) · b (k x n, row-major)`, by matrixmultiply's SGEMM:
/// the step's matrix products (public so that benchmarks measure the same GEMM).
///
/// # Panics
/// If a slice is too short for its shape.
pub fn gemm_acc(m: usize, k: usize, n: usize, a: &[f32], rsa: usize, b: &[f32], c: &mut [f32]) {
    assert!(m == 0 || a.len() >= (m - 1) * rsa + k);
    assert!(b.len() >= k * n && c.len() >= m * n);
    // SAFETY: the assertions above bound every access: `a` holds
    // rows `0..m` of `k` floats `rsa` apart, `b` is `k x n` and `c` is `m x n`, both row-major
    // and contiguous; `c` is exclusively borrowed and overlaps neither input.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            1.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// One step for `n` customers: `x` is `n x CUSTOMER_FEATURES` raw per-customer features and
/// `glob` the raw global features of this tick (the same for all), `state` is `n x state_dim`
/// (advanced in place), `out` is `n x head_dim` head outputs. Parallel over chunks of customers.
///
/// Equal (within float rounding) to [`step_one`] on each customer's full feature vector
/// `x[r] ++ glob`.
///
/// # Panics
/// If the slice lengths disagree with the prepared model (a bug in the caller).
pub fn step_batch(p: &StepScratch, x: &[f32], glob: &[f32], state: &mut [f32], out: &mut [f32]) {
    let cf = CUSTOMER_FEATURES;
    let n = x.len() / cf;
    assert_eq!(x.len(), n * cf);
    assert_eq!(glob.len(), p.global);
    assert_eq!(state.len(), n * p.state_dim);
    assert_eq!(out.len(), n * p.head_dim);
    // The global features' share of layer 0's pre-activations, once for the tick.
    let mut bias0 = p.bias[0].clone();
    for (r, b) in bias0.iter_mut().enumerate() {
        for (w, v) in p.w_glob[r * p.global..(r + 1) * p.global].iter().zip(glob) {
            *b += w * v;
        }
    }
    let ch = p.chunk;
    x.par_chunks(ch * cf)
        .zip(state.par_chunks_mut(ch * p.state_dim))
        .zip(out.par_chunks_mut(ch * p.head_dim))
        .for_each_init(
            || vec![0f32; ch * 4 * p.hidden],
            |g, ((x, st), out)| {
                let rows = x.len() / cf;
                step_chunk(p, &bias0, rows, x, st, out, g);
            },
        );
}

fn step_chunk(
    p: &StepScratch,
    bias0: &[f32],
    rows: usize,
    x: &[f32],
    st: &mut [f32],
    out: &mut [f32],
    g: &mut [f32],
) {
    let hd = p.hidden;
    let g4 = 4 * hd;
    let sd = p.state_dim;
    let cf = CUSTOMER_FEATURES;
    let g = &mut g[..rows * g4];
    for l in 0..p.bias.len() {
        let bias = if l == 0 { bias0 } else { &p.bias[l][..] };
        for row in g.chunks_exact_mut(g4) {
            row.copy_from_slice(bias);
        }
        let hoff = 2 * l * hd;
        if l == 0 {
            gemm_acc(rows, cf, g4, x, cf, &p.w_ih_t[0], g);
        } else {
            // the layer below's new h, already written to the state
            let below = 2 * (l - 1) * hd;
            gemm_acc(rows, hd, g4, &st[below..], sd, &p.w_ih_t[l], g);
        }
        gemm_acc(rows, hd, g4, &st[hoff..], sd, &p.w_hh_t[l], g);
        for (r, z) in g.chunks_exact(g4).enumerate() {
            let (h, c) = st[r * sd + hoff..r * sd + hoff + 2 * hd].split_at_mut(hd);
            let (zi, rest) = z.split_at(hd);
            let (zf, rest) = rest.split_at(hd);
            let (zg, zo) = rest.split_at(hd);
            gates(h, c, zi, zf, zg, zo);
        }
    }
    let top = 2 * (p.bias.len() - 1) * hd;
    for row in out.chunks_exact_mut(p.head_dim) {
        row.copy_from_slice(&p.head_b);
    }
    gemm_acc(rows, hd, p.head_dim, &st[top..], sd, &p.head_t, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::spec::ModelSpec;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn fast_tanh_is_close() {
        let mut worst = 0f32;
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((fast_tanh(x) - x.tanh()).abs());
        }
        assert!(worst < 2e-6, "worst error {worst}");
        assert!((fast_tanh(1e30) - 1.0).abs() < 1e-6);
        assert!((fast_tanh(-50.0) + 1.0).abs() < 1e-6);
    }

    fn random_case(spec: ModelSpec, n: usize, seed: u64) {
        let mut model = LstmModel::random(spec, seed).unwrap();
        let mut rng = StdRng::seed_from_u64(seed + 1);
        let f = model.spec.input_dim();
        for (m, s) in model.scaling.mean.iter_mut().zip(&mut model.scaling.std) {
            *m = rng.random_range(-1.0..1.0);
            *s = rng.random_range(0.5..2.0);
        }
        let sd = model.spec.state_dim();
        let o = model.spec.head_dim();
        let prep = StepScratch::new(&model).with_chunk(7);
        let mut st_ref: Vec<f32> = (0..n * sd).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut st = st_ref.clone();
        let mut out_ref = vec![0f32; n * o];
        let mut out = vec![0f32; n * o];
        for _step in 0..4 {
            let cf = CUSTOMER_FEATURES;
            let x: Vec<f32> = (0..n * cf).map(|_| rng.random_range(-3.0..3.0)).collect();
            let glob: Vec<f32> = (0..f - cf).map(|_| rng.random_range(-3.0..3.0)).collect();
            for r in 0..n {
                let full: Vec<f32> = x[r * cf..(r + 1) * cf]
                    .iter()
                    .chain(&glob)
                    .copied()
                    .collect();
                step_one(
                    &model,
                    &full,
                    &mut st_ref[r * sd..(r + 1) * sd],
                    &mut out_ref[r * o..(r + 1) * o],
                );
            }
            step_batch(&prep, &x, &glob, &mut st, &mut out);
            for (a, b) in st.iter().zip(&st_ref).chain(out.iter().zip(&out_ref)) {
                assert!((a - b).abs() < 1e-5, "batch {a} vs reference {b}");
            }
        }
    }

    #[test]
    fn batch_matches_reference() {
        random_case(ModelSpec::default(), 33, 1);
        random_case(
            ModelSpec {
                hidden: 8,
                layers: 3,
                horizons: vec![1, 2],
                feeds: vec!["news".into()],
            },
            20,
            2,
        );
    }

    #[test]
    fn decode_block_matches_decode() {
        let mut rng = StdRng::seed_from_u64(4);
        let (nh, o, fd, sd) = (4, 20, 18, 5);
        let rows = 300;
        let mut scratch = Vec::new();
        for (range, rel_tol) in [(1.0f32, 2e-6), (5.0, 2e-6), (30.0, 1e-5)] {
            let mut worst = 0f64;
            let y: Vec<f32> = (0..rows * o)
                .map(|_| rng.random_range(-range..range))
                .collect();
            let scales: Vec<f32> = (0..rows)
                .map(|_| 10f32.powf(rng.random_range(0.0..7.0)))
                .collect();
            let active: Vec<bool> = (0..rows).map(|r| r % 7 != 3).collect();
            let usage: Vec<f32> = (0..rows).map(|_| rng.random_range(0.0..3.0)).collect();
            let mut f = vec![-1f32; rows * fd];
            let mut sc = vec![-1f32; rows * sd];
            decode_block(
                &y,
                o,
                &scales,
                &usage,
                &active,
                &mut f,
                fd,
                &mut sc,
                sd,
                &mut scratch,
            );
            for r in 0..rows {
                let (fr, sr) = (&f[r * fd..(r + 1) * fd], &sc[r * sd..(r + 1) * sd]);
                if !active[r] {
                    assert!(fr.iter().chain(sr).all(|&v| v == -1.0));
                    continue;
                }
                let mut fw = vec![0f32; nh * 4];
                let mut sw = [0f32; 4];
                decode(
                    &y[r * o..(r + 1) * o],
                    scales[r],
                    usage[r],
                    &mut fw,
                    &mut sw,
                );
                // forecasts: an error of at most `rel_tol` in the log-domain `z` (d(s·expm1(z))
                // = (s + value)·dz); scenario probabilities: relative
                let pairs = fr[..nh * 4].iter().zip(&fw).map(|(a, b)| (a, b, scales[r]));
                let pairs = pairs.chain(sr[..4].iter().zip(&sw).map(|(a, b)| (a, b, 0.0)));
                for (&a, &b, s) in pairs {
                    if a == b {
                        continue;
                    }
                    if a.is_infinite() || b.is_infinite() {
                        // overflow: only where the other is within rounding of f32::MAX
                        let fin = if a.is_infinite() { b } else { a };
                        assert!(fin.abs() > f32::MAX * 0.999, "row {r}: {a} vs {b}");
                        continue;
                    }
                    let err = (a as f64 - b as f64).abs();
                    let scale = b.abs() as f64 + s as f64;
                    assert!(err <= rel_tol * scale, "row {r}: {a} vs {b}");
                    worst = worst.max(err / scale);
                }
                assert!(fr[nh * 4..].iter().chain(&sr[4..]).all(|&v| v == -1.0));
            }
            eprintln!("decode_block, y in +-{range}: worst relative error {worst:e}");
        }
    }

    #[test]
    fn decode_is_monotone_and_normalized() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..1000 {
            let y: Vec<f32> = (0..12).map(|_| rng.random_range(-10.0..10.0)).collect();
            let mut f = vec![0f32; 8];
            let mut sc = [0f32; 4];
            let usage_z = rng.random_range(0.0..5.0);
            decode(&y, 37.0, usage_z, &mut f, &mut sc);
            for h in f.chunks(4) {
                assert!(
                    h[0] >= 0.0 && 0.0 <= h[1] && h[1] <= h[2] && h[2] <= h[3],
                    "{h:?}"
                );
            }
            assert!((sc.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn decode_starts_from_persistence() {
        // Zero corrections: mean and p50 are the last window's use (u = s·expm1(usage_z)).
        let (s, u) = (250.0f32, 730.0f32);
        let usage_z = (u / s).ln_1p();
        let mut y = vec![0f32; 8];
        y[2] = -30.0;
        y[3] = -30.0;
        let mut f = vec![0f32; 4];
        let mut sc = [0f32; 4];
        decode(&y, s, usage_z, &mut f, &mut sc);
        for v in &f {
            assert!((v - u).abs() <= 1e-3 * u, "{f:?}");
        }
        // Corrections add in z: p50 = s·expm1(usage_z + y1).
        y[1] = 0.25;
        y[0] = -0.5;
        decode(&y, s, usage_z, &mut f, &mut sc);
        assert!((f[1] - s * (usage_z + 0.25).exp_m1()).abs() <= 1e-3 * f[1]);
        assert!((f[0] - s * (usage_z - 0.5).exp_m1()).abs() <= 1e-3 * f[0]);
        // A correction below zero use floors at 0.
        decode(&y, s, 0.0, &mut f, &mut sc);
        assert_eq!((f[0], f[1] > 0.0), (0.0, true));
    }
}
