//! The model's math in f64 with its gradient: [`step_one`](crate::model::step_one) unrolled over
//! a chunk of steps for one customer (forward), the loss on the head outputs, and
//! backpropagation through time within the chunk (truncated: the chunk's initial state is a
//! constant).

use crate::model::spec::{HEAD_PER_HORIZON, SCENARIOS};
use crate::model::{LayerWeights, LstmModel, ModelSpec};

use super::LossWeights;
use super::dataset::{Sequence, Targets};

/// Where each tensor lives in the flat parameter vector: per layer `w_ih, w_hh, b_ih, b_hh`, then
/// `head.weight`, `head.bias` (the safetensors order).
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub hidden: usize,
    pub input: usize,
    pub head: usize,
    pub horizons: Vec<u32>,
    /// Per layer: offsets of `w_ih, w_hh, b_ih, b_hh` and that layer's input width.
    pub layers: Vec<([usize; 4], usize)>,
    pub head_w: usize,
    pub head_b: usize,
    pub total: usize,
}

impl Layout {
    pub(crate) fn new(spec: &ModelSpec) -> Self {
        let h = spec.hidden;
        let g = 4 * h;
        let mut off = 0;
        let mut layers = Vec::new();
        for l in 0..spec.layers {
            let k = spec.layer_input_dim(l);
            let o = [
                off,
                off + g * k,
                off + g * k + g * h,
                off + g * k + g * h + g,
            ];
            off += g * k + g * h + 2 * g;
            layers.push((o, k));
        }
        let head_w = off;
        let head_b = off + spec.head_dim() * h;
        Layout {
            hidden: h,
            input: spec.input_dim(),
            head: spec.head_dim(),
            horizons: spec.horizons.clone(),
            layers,
            head_w,
            head_b,
            total: head_b + spec.head_dim(),
        }
    }

    /// Floats of recurrent state: `[h_0, c_0, h_1, c_1, ...]`.
    pub(crate) fn state_dim(&self) -> usize {
        2 * self.hidden * self.layers.len()
    }

    /// The model's weights as a flat f64 vector.
    pub(crate) fn flatten(&self, m: &LstmModel) -> Vec<f64> {
        let mut p = Vec::with_capacity(self.total);
        for w in &m.layers {
            for t in [&w.w_ih, &w.w_hh, &w.b_ih, &w.b_hh] {
                p.extend(t.iter().map(|&x| f64::from(x)));
            }
        }
        p.extend(m.head_w.iter().map(|&x| f64::from(x)));
        p.extend(m.head_b.iter().map(|&x| f64::from(x)));
        debug_assert_eq!(p.len(), self.total);
        p
    }

    /// Writes a flat vector back into `m`'s weights (rounded to f32).
    pub(crate) fn unflatten(&self, p: &[f64], m: &mut LstmModel) {
        let f = |r: &[f64]| r.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let h = self.hidden;
        let g = 4 * h;
        m.layers = self
            .layers
            .iter()
            .map(|&(o, k)| LayerWeights {
                w_ih: f(&p[o[0]..o[0] + g * k]),
                w_hh: f(&p[o[1]..o[1] + g * h]),
                b_ih: f(&p[o[2]..o[2] + g]),
                b_hh: f(&p[o[3]..o[3] + g]),
            })
            .collect();
        m.head_w = f(&p[self.head_w..self.head_b]);
        m.head_b = f(&p[self.head_b..self.total]);
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

pub(crate) fn softplus(x: f64) -> f64 {
    if x > 30.0 { x } else { x.exp().ln_1p() }
}

/// The inverse of softplus (for initial biases), for `y > 0`.
pub(crate) fn softplus_inv(y: f64) -> f64 {
    if y > 30.0 { y } else { y.exp_m1().ln() }
}

/// The quantile levels of the three z heads.
pub(crate) const TAUS: [f64; 3] = [0.5, 0.9, 0.99];

/// The loss of one head output vector `y` at step `t`, whose raw usage feature is `xu` (the
/// residual head's starting point), accumulating `w * dloss/dy` into `dy` (when given). Returns
/// `(loss, weight)`: `weight` is `w` when any target is inside the limit (the step counts),
/// else 0.
#[expect(
    clippy::too_many_arguments,
    reason = "one private hot function; a struct would only rename the arguments"
)]
fn head_loss(
    lay: &Layout,
    y: &[f64],
    xu: f64,
    tg: &Targets<'_>,
    t: usize,
    w: f64,
    lw: &LossWeights,
    mut dy: Option<&mut [f64]>,
) -> (f64, f64) {
    let mut loss = 0.0;
    let mut any = false;
    for (j, &h) in lay.horizons.iter().enumerate() {
        let Some((z, r)) = tg.horizon(t, h) else {
            continue;
        };
        any = true;
        let b = j * HEAD_PER_HORIZON;
        // Mean: Huber (delta) of expm1(xu + y0) against u/s. The loss sees the value before
        // decode's floor at 0, which only moves it toward every target (all >= 0).
        let em = (xu + y[b]).exp();
        let d = em - 1.0 - r;
        let (hl, hg) = if d.abs() <= lw.huber_delta {
            (0.5 * d * d, d)
        } else {
            (
                lw.huber_delta * (d.abs() - 0.5 * lw.huber_delta),
                lw.huber_delta * d.signum(),
            )
        };
        loss += lw.mean * hl;
        // Quantiles in z: q50 = xu + y1, q90 = q50 + softplus(y2), q99 = q90 + softplus(y3).
        let q50 = xu + y[b + 1];
        let q90 = q50 + softplus(y[b + 2]);
        let q99 = q90 + softplus(y[b + 3]);
        let mut gq = [0.0; 3];
        for (k, (&q, &tau)) in [q50, q90, q99].iter().zip(&TAUS).enumerate() {
            let e = z - q;
            if e >= 0.0 {
                loss += lw.quantile * tau * e;
                gq[k] = -lw.quantile * tau;
            } else {
                loss -= lw.quantile * (1.0 - tau) * e;
                gq[k] = lw.quantile * (1.0 - tau);
            }
        }
        if let Some(dy) = dy.as_deref_mut() {
            dy[b] += w * lw.mean * hg * em;
            dy[b + 1] += w * (gq[0] + gq[1] + gq[2]);
            dy[b + 2] += w * (gq[1] + gq[2]) * sigmoid(y[b + 2]);
            dy[b + 3] += w * gq[2] * sigmoid(y[b + 3]);
        }
    }
    if let Some(k) = tg.scenario(t) {
        any = true;
        let b = lay.horizons.len() * HEAD_PER_HORIZON;
        let logits = &y[b..b + SCENARIOS.len()];
        let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = logits.iter().map(|l| (l - m).exp()).sum();
        loss += lw.scenario * (sum.ln() + m - logits[k]);
        if let Some(dy) = dy {
            for (i, l) in logits.iter().enumerate() {
                let p = (l - m).exp() / sum;
                let target = if i == k { 1.0 } else { 0.0 };
                dy[b + i] += w * lw.scenario * (p - target);
            }
        }
    }
    if any { (w * loss, w) } else { (0.0, 0.0) }
}

/// What one customer's chunk gives: summed weighted loss, summed weight, and (when asked) the
/// gradient of the summed weighted loss.
pub(crate) struct ChunkResult {
    pub loss: f64,
    pub weight: f64,
    pub grad: Vec<f64>,
}

/// Runs steps `t0..t1` of `seq` from `state` (advanced in place), with normalized inputs
/// `(x - mean) / std`, scoring the steps in `score_from..t1` whose targets lie before `limit`,
/// each with weight `(s_t / size_norm)^size_exponent`. With `grad`, backpropagates through the
/// chunk.
#[expect(
    clippy::too_many_arguments,
    reason = "one private hot function; a struct would only rename the arguments"
)]
pub(crate) fn run_chunk(
    lay: &Layout,
    p: &[f64],
    norm: &[(f64, f64)],
    seq: &Sequence,
    range: (usize, usize, usize),
    limit: usize,
    lw: &LossWeights,
    size_norm: f64,
    state: &mut [f64],
    grad: bool,
) -> ChunkResult {
    let (t0, score_from, t1) = range;
    let hd = lay.hidden;
    let g4 = 4 * hd;
    let nl = lay.layers.len();
    let steps = t1 - t0;
    let tg = Targets::new(seq, limit);
    // Caches, per step and layer: input, h_prev, c_prev, gates (i, f, g, o), c, tanh(c).
    let cache_w = |l: usize| lay.layers[l].1 + 2 * hd + g4 + 2 * hd;
    let per_step: usize = (0..nl).map(cache_w).sum();
    let mut cache = if grad {
        vec![0f64; steps * per_step]
    } else {
        Vec::new()
    };
    let mut tops = if grad {
        vec![0f64; steps * hd]
    } else {
        Vec::new()
    };
    let mut dys = if grad {
        vec![0f64; steps * lay.head]
    } else {
        Vec::new()
    };
    let mut loss = 0.0;
    let mut weight = 0.0;
    let mut input = vec![0f64; lay.input.max(hd)];
    let mut z = vec![0f64; g4];
    let mut y = vec![0f64; lay.head];
    for (si, t) in (t0..t1).enumerate() {
        let row = &seq.x[t * lay.input..(t + 1) * lay.input];
        for (k, (&v, &(m, sd))) in row.iter().zip(norm).enumerate() {
            input[k] = (f64::from(v) - m) / sd;
        }
        let mut coff = si * per_step;
        for (l, &(o, k)) in lay.layers.iter().enumerate() {
            let (h, c) = state[2 * l * hd..2 * (l + 1) * hd].split_at_mut(hd);
            if grad {
                let cw = &mut cache[coff..coff + k + 2 * hd];
                cw[..k].copy_from_slice(&input[..k]);
                cw[k..k + hd].copy_from_slice(h);
                cw[k + hd..k + 2 * hd].copy_from_slice(c);
            }
            for (r, zr) in z.iter_mut().enumerate() {
                let mut acc = p[o[2] + r] + p[o[3] + r];
                let wi = &p[o[0] + r * k..o[0] + (r + 1) * k];
                for (a, b) in wi.iter().zip(&input[..k]) {
                    acc += a * b;
                }
                let wh = &p[o[1] + r * hd..o[1] + (r + 1) * hd];
                for (a, b) in wh.iter().zip(h.iter()) {
                    acc += a * b;
                }
                *zr = acc;
            }
            for j in 0..hd {
                let i = sigmoid(z[j]);
                let f = sigmoid(z[hd + j]);
                let gg = z[2 * hd + j].tanh();
                let og = sigmoid(z[3 * hd + j]);
                z[j] = i;
                z[hd + j] = f;
                z[2 * hd + j] = gg;
                z[3 * hd + j] = og;
                c[j] = f * c[j] + i * gg;
                h[j] = og * c[j].tanh();
            }
            if grad {
                let base = coff + k + 2 * hd;
                cache[base..base + g4].copy_from_slice(&z);
                for j in 0..hd {
                    cache[base + g4 + j] = c[j];
                    cache[base + g4 + hd + j] = c[j].tanh();
                }
            }
            input[..hd].copy_from_slice(h);
            coff += cache_w(l);
        }
        for (r, yr) in y.iter_mut().enumerate() {
            let w = &p[lay.head_w + r * hd..lay.head_w + (r + 1) * hd];
            *yr = p[lay.head_b + r] + w.iter().zip(&input[..hd]).map(|(a, b)| a * b).sum::<f64>();
        }
        if t >= score_from {
            let w = (f64::from(seq.scale[t]) / size_norm).powf(lw.size_exponent);
            let dy = grad.then(|| &mut dys[si * lay.head..(si + 1) * lay.head]);
            let (l, wt) = head_loss(lay, &y, f64::from(row[0]), &tg, t, w, lw, dy);
            loss += l;
            weight += wt;
        }
        if grad {
            tops[si * hd..(si + 1) * hd].copy_from_slice(&input[..hd]);
        }
    }
    if !grad {
        return ChunkResult {
            loss,
            weight,
            grad: Vec::new(),
        };
    }

    // Backward.
    let mut gp = vec![0f64; lay.total];
    // Per layer: dh and dc flowing back from the next step.
    let mut dh_next = vec![0f64; nl * hd];
    let mut dc_next = vec![0f64; nl * hd];
    let mut dh = vec![0f64; hd];
    let mut dz = vec![0f64; g4];
    let mut dx = vec![0f64; lay.input.max(hd)];
    for si in (0..steps).rev() {
        let dy = &dys[si * lay.head..(si + 1) * lay.head];
        let top = &tops[si * hd..(si + 1) * hd];
        // Head.
        dh.iter_mut().for_each(|v| *v = 0.0);
        for (r, &d) in dy.iter().enumerate() {
            if d == 0.0 {
                continue;
            }
            gp[lay.head_b + r] += d;
            let w = lay.head_w + r * hd;
            for j in 0..hd {
                gp[w + j] += d * top[j];
                dh[j] += d * p[w + j];
            }
        }
        let offs: Vec<usize> = (0..nl)
            .scan(si * per_step, |o, l| {
                let here = *o;
                *o += cache_w(l);
                Some(here)
            })
            .collect();
        for l in (0..nl).rev() {
            let (o, k) = lay.layers[l];
            let cb = offs[l];
            let x_in = &cache[cb..cb + k];
            let h_prev = &cache[cb + k..cb + k + hd];
            let c_prev = &cache[cb + k + hd..cb + k + 2 * hd];
            let gates = &cache[cb + k + 2 * hd..cb + k + 2 * hd + g4];
            let tc = &cache[cb + k + 2 * hd + g4 + hd..cb + k + 2 * hd + g4 + 2 * hd];
            for j in 0..hd {
                let dhj = dh[j] + dh_next[l * hd + j];
                let (i, f, gg, og) = (
                    gates[j],
                    gates[hd + j],
                    gates[2 * hd + j],
                    gates[3 * hd + j],
                );
                let dc = dhj * og * (1.0 - tc[j] * tc[j]) + dc_next[l * hd + j];
                dz[j] = dc * gg * i * (1.0 - i);
                dz[hd + j] = dc * c_prev[j] * f * (1.0 - f);
                dz[2 * hd + j] = dc * i * (1.0 - gg * gg);
                dz[3 * hd + j] = dhj * tc[j] * og * (1.0 - og);
                dc_next[l * hd + j] = dc * f;
            }
            dx[..k].iter_mut().for_each(|v| *v = 0.0);
            dh_next[l * hd..(l + 1) * hd]
                .iter_mut()
                .for_each(|v| *v = 0.0);
            for (r, &d) in dz.iter().enumerate() {
                gp[o[2] + r] += d;
                gp[o[3] + r] += d;
                let wi = o[0] + r * k;
                for c in 0..k {
                    gp[wi + c] += d * x_in[c];
                    dx[c] += d * p[wi + c];
                }
                let wh = o[1] + r * hd;
                for c in 0..hd {
                    gp[wh + c] += d * h_prev[c];
                    dh_next[l * hd + c] += d * p[wh + c];
                }
            }
            if l > 0 {
                dh.copy_from_slice(&dx[..hd]);
            }
        }
    }
    ChunkResult {
        loss,
        weight,
        grad: gp,
    }
}
