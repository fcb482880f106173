//! Training the streaming LSTM on the CPU.
//!
//! [`train`] fits an [`LstmModel`] to a [`UsageHistory`] (a trace), [`train_dataset`] to any
//! [`Dataset`] (also built from the engine's own closed intervals,
//! [`Dataset::from_intervals`]). The model's math is [`step_one`](crate::model::step_one)'s, in
//! f64 (`net`), with the same feature normalization; the saved model runs in the engine as is.
//!
//! **Data.** Every customer is one sequence of closed intervals. The last
//! [`TrainConfig::validation_fraction`] of the intervals are held out for early stopping: no
//! training step sees a target there. The feature mean and standard deviation (stored in the
//! model's [`FeatureScaling`](crate::model::weights::FeatureScaling)) come from the training part.
//!
//! **Loss** per step `t` and horizon `h` (see [`Dataset`] for the targets, all in units of the
//! customer's scale `s_t`), weighted by [`LossWeights`]:
//! - pinball loss at 0.5, 0.9 and 0.99 of `z = ln(1 + u_{t+h}/s_t)` against the head's
//!   `z50 = x_u + y1`, `z90 = z50 + softplus(y2)`, `z99 = z90 + softplus(y3)`, where
//!   `x_u = ln(1 + u_t/s_t)` is step `t`'s raw usage feature (the residual head
//!   [`decode`](crate::model::decode) reads), times [`LossWeights::quantile`];
//! - Huber loss (threshold [`LossWeights::huber_delta`]) of `expm1(x_u + y0)` (the mean before
//!   decode's floor at 0) against `u_{t+h}/s_t`, times [`LossWeights::mean`];
//! - cross-entropy of the scenario logits against `scenario_of(u_{t+1}, s_t)`, times
//!   [`LossWeights::scenario`].
//!
//! Each step's terms are summed and weighted by `(s_t / mean s)^size_exponent`
//! ([`LossWeights::size_exponent`]: 0 weighs every customer-interval alike, 1 by its size in
//! tokens); the reported loss is the weighted mean per step.
//!
//! **Optimization.** Truncated backpropagation through time over [`TrainConfig::bptt`] steps:
//! each epoch starts every customer from the zero state and walks the training intervals in
//! chunks, carrying the state (but no gradient) from chunk to chunk. Within a chunk, customers are
//! taken in mini-batches of [`TrainConfig::batch_customers`] (shuffled per epoch), processed in
//! parallel with rayon; their gradients are summed in customer order, so a seed gives the same
//! model whatever the thread count. Each mini-batch chunk is one Adam step (betas 0.9, 0.999)
//! after clipping the gradient's global norm to [`CLIP_NORM`]. After each epoch the validation
//! loss decides: the best epoch's weights are returned, and training stops after
//! [`TrainConfig::patience`] epochs without improvement.
//!
//! **Initialization.** PyTorch's (uniform `±1/sqrt(H)`, from the seed), with the forget gates'
//! bias raised by 1, the head's weights scaled by 0.1, and its biases set so that training starts
//! from persistence: the mean's correction 0 (it forecasts `u_t`), the p50's the median of the
//! training residuals `z - x_u`, the p90 and p99 increments from their 0.9 and 0.99 quantiles.

mod dataset;
mod net;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

pub use dataset::Dataset;

use crate::error::{Error, Result};
use crate::forecast::UsageHistory;
use crate::model::spec::HEAD_PER_HORIZON;
use crate::model::{LstmModel, ModelSpec};
use net::{Layout, softplus_inv};

/// The global gradient norm is clipped to this before each Adam step.
pub const CLIP_NORM: f64 = 1.0;

/// The weights of the loss terms (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq)]
pub struct LossWeights {
    /// The three pinball losses in z (default 1).
    pub quantile: f64,
    /// The Huber loss of the mean head (default 0.25).
    pub mean: f64,
    /// The Huber threshold, in units of the scale (default 1).
    pub huber_delta: f64,
    /// The scenario cross-entropy (default 0.1).
    pub scenario: f64,
    /// Steps are weighted by `(s_t / mean s)^size_exponent` (default 1: by size in tokens, as
    /// reservations and token-valued metrics count them; on the ServeGen trace 1 did better than
    /// 0.5 on every token metric).
    pub size_exponent: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            quantile: 1.0,
            mean: 0.25,
            huber_delta: 1.0,
            scenario: 0.1,
            size_exponent: 1.0,
        }
    }
}

/// How to train.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// The model's shape (default [`ModelSpec::default`]).
    pub spec: ModelSpec,
    /// Most passes over the training data (default 30).
    pub epochs: usize,
    /// Customers per mini-batch (default 16).
    pub batch_customers: usize,
    /// Steps per truncated-backpropagation chunk (default 48).
    pub bptt: usize,
    /// Adam's step size (default 3e-3).
    pub learning_rate: f64,
    /// Seeds the initial weights and the batch shuffles (default 0).
    pub seed: u64,
    /// The share of the last intervals held out for validation, in `[0, 1)` (default 0.1; 0
    /// disables validation and early stopping).
    pub validation_fraction: f64,
    /// Epochs without a better validation loss before stopping (default 5; 0 never stops early).
    pub patience: usize,
    /// Half-life of the customer scale, in intervals (default 1,440: a day of one-minute
    /// intervals; use 144 for 10-minute windows).
    pub scale_half_life: f32,
    /// The loss terms' weights.
    pub loss: LossWeights,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            spec: ModelSpec::default(),
            epochs: 30,
            batch_customers: 16,
            bptt: 48,
            learning_rate: 3e-3,
            seed: 0,
            validation_fraction: 0.1,
            patience: 5,
            scale_half_life: 1440.0,
            loss: LossWeights::default(),
        }
    }
}

impl TrainConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the field out of range.
    pub fn validate(&self) -> Result<()> {
        self.spec.validate()?;
        if self.epochs == 0 || self.batch_customers == 0 || self.bptt == 0 {
            return Err(Error::invalid(
                "train: epochs, batch_customers and bptt must be at least 1",
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::invalid(format!(
                "train: learning_rate must be finite and > 0, got {}",
                self.learning_rate
            )));
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return Err(Error::invalid(format!(
                "train: validation_fraction must be in [0, 1), got {}",
                self.validation_fraction
            )));
        }
        if !(self.scale_half_life.is_finite() && self.scale_half_life >= 1.0) {
            return Err(Error::invalid(format!(
                "train: scale_half_life must be at least 1 interval, got {}",
                self.scale_half_life
            )));
        }
        let l = &self.loss;
        let weights = [l.quantile, l.mean, l.scenario, l.size_exponent];
        if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0))
            || !(l.huber_delta.is_finite() && l.huber_delta > 0.0)
        {
            return Err(Error::invalid(format!(
                "train: loss weights must be finite and >= 0 (huber_delta > 0), got {l:?}"
            )));
        }
        Ok(())
    }
}

/// Where training is, reported after every mini-batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// The current epoch, from 1.
    pub epoch: usize,
    /// [`TrainConfig::epochs`].
    pub epochs: usize,
    /// Mini-batch steps done in this epoch, from 1.
    pub batch: usize,
    /// Mini-batch steps per epoch (chunks times batches).
    pub batches: usize,
    /// The mean training loss of this epoch so far.
    pub train_loss: f64,
    /// The last finished epoch's validation loss (`None` before the first, or without
    /// validation).
    pub val_loss: Option<f64>,
}

/// What training produced.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// The best epoch's model (by validation loss; the last epoch's without validation).
    pub model: LstmModel,
    /// Epochs run (fewer than asked when stopped early).
    pub epochs_run: usize,
    /// The epoch (from 1) whose weights `model` holds.
    pub best_epoch: usize,
    /// Mean training loss per epoch.
    pub train_losses: Vec<f64>,
    /// Validation loss per epoch (empty without validation).
    pub val_losses: Vec<f64>,
}

/// Trains on a usage history ([`Dataset::from_history`] with the config's spec and half-life).
///
/// # Errors
/// As [`train_dataset`].
pub fn train(
    history: &UsageHistory,
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainReport> {
    cfg.validate()?;
    let ds = Dataset::from_history(history, &cfg.spec, cfg.scale_half_life)?;
    train_dataset(&ds, cfg, progress)
}

/// Adam's state.
struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    const B1: f64 = 0.9;
    const B2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    fn new(n: usize) -> Self {
        Adam {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    fn step(&mut self, p: &mut [f64], g: &[f64], lr: f64) {
        self.t += 1;
        let c1 = 1.0 - Self::B1.powi(self.t);
        let c2 = 1.0 - Self::B2.powi(self.t);
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(&mut self.m).zip(&mut self.v) {
            *m = Self::B1 * *m + (1.0 - Self::B1) * g;
            *v = Self::B2 * *v + (1.0 - Self::B2) * g * g;
            *p -= lr * (*m / c1) / ((*v / c2).sqrt() + Self::EPS);
        }
    }
}

/// What the training loop needs besides the weights.
struct Ctx<'a> {
    lay: Layout,
    norm: Vec<(f64, f64)>,
    ds: &'a Dataset,
    cfg: &'a TrainConfig,
    /// Intervals used for training targets (`0..fit`); validation is `fit..windows`.
    fit: usize,
    size_norm: f64,
}

impl Ctx<'_> {
    /// Weighted loss and weight of the validation intervals, from the zero state (the training
    /// part is run to build the state).
    fn validation_loss(&self, p: &[f64]) -> f64 {
        let sums: Vec<(f64, f64)> = self
            .ds
            .seqs
            .par_iter()
            .map(|seq| {
                let mut st = vec![0f64; self.lay.state_dim()];
                let r = net::run_chunk(
                    &self.lay,
                    p,
                    &self.norm,
                    seq,
                    (0, self.fit, self.ds.windows),
                    self.ds.windows,
                    &self.cfg.loss,
                    self.size_norm,
                    &mut st,
                    false,
                );
                (r.loss, r.weight)
            })
            .collect();
        let (l, w) = sums
            .iter()
            .fold((0.0, 0.0), |(a, b), (l, w)| (a + l, b + w));
        l / w.max(f64::MIN_POSITIVE)
    }
}

/// Trains on a dataset.
///
/// # Errors
/// [`Error::InvalidArgument`]: an invalid config, a dataset built for another input width or
/// half-life, or too few intervals (the training part needs more than the largest horizon, and
/// validation at least two: its first interval is the first scored step, whose nearest target is
/// the next interval).
pub fn train_dataset(
    ds: &Dataset,
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainReport> {
    cfg.validate()?;
    if ds.input_dim != cfg.spec.input_dim() || ds.scale_half_life != cfg.scale_half_life {
        return Err(Error::invalid(format!(
            "train: the dataset was built for {} features and half-life {}, the config has {} \
             and {}",
            ds.input_dim,
            ds.scale_half_life,
            cfg.spec.input_dim(),
            cfg.scale_half_life
        )));
    }
    let n = ds.windows;
    let val = (n as f64 * cfg.validation_fraction).round() as usize;
    let fit = n - val;
    let max_h = *cfg.spec.horizons.last().unwrap_or(&1) as usize;
    // Validation scores the steps `fit..n` on targets inside `0..n`: with one interval its only
    // step has none, and its loss would be 0 every epoch.
    if fit <= max_h || (cfg.validation_fraction > 0.0 && val < 2) {
        return Err(Error::invalid(format!(
            "train: {n} intervals are too few: the training part ({fit}) must exceed the largest \
             horizon ({max_h}) and validation ({:.3} of them) must hold at least two",
            cfg.validation_fraction
        )));
    }

    let mut model = LstmModel::random(cfg.spec.clone(), cfg.seed)?;
    model.scaling = ds.feature_scaling(fit);
    let lay = Layout::new(&cfg.spec);
    let norm: Vec<(f64, f64)> = model
        .scaling
        .mean
        .iter()
        .zip(&model.scaling.std)
        .map(|(&m, &s)| (f64::from(m), f64::from(s)))
        .collect();
    let scales: Vec<f64> = ds
        .seqs
        .iter()
        .flat_map(|s| s.scale[..fit].iter().map(|&x| f64::from(x)))
        .collect();
    let size_norm = scales.iter().sum::<f64>() / scales.len().max(1) as f64;
    let ctx = Ctx {
        lay,
        norm,
        ds,
        cfg,
        fit,
        size_norm,
    };
    let mut p = ctx.lay.flatten(&model);
    init(&ctx, &mut p);

    let mut adam = Adam::new(p.len());
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x5eed_ba7c);
    let nc = ds.seqs.len();
    let chunks = fit.div_ceil(cfg.bptt);
    let nb = nc.div_ceil(cfg.batch_customers);
    let batches = chunks * nb;
    let mut order: Vec<usize> = (0..nc).collect();
    let mut report = TrainReport {
        model: model.clone(),
        epochs_run: 0,
        best_epoch: 0,
        train_losses: Vec::new(),
        val_losses: Vec::new(),
    };
    let mut best = (f64::INFINITY, p.clone());
    let mut since_best = 0;
    for epoch in 1..=cfg.epochs {
        order.shuffle(&mut rng);
        let mut states = vec![vec![0f64; ctx.lay.state_dim()]; nc];
        let (mut loss_sum, mut weight_sum) = (0.0, 0.0);
        let mut done = 0;
        for k in 0..chunks {
            let range = (k * cfg.bptt, k * cfg.bptt, ((k + 1) * cfg.bptt).min(fit));
            for batch in order.chunks(cfg.batch_customers) {
                let mut members: Vec<(usize, Vec<f64>)> = batch
                    .iter()
                    .map(|&c| (c, std::mem::take(&mut states[c])))
                    .collect();
                let results: Vec<net::ChunkResult> = members
                    .par_iter_mut()
                    .map(|(c, st)| {
                        net::run_chunk(
                            &ctx.lay,
                            &p,
                            &ctx.norm,
                            &ds.seqs[*c],
                            range,
                            fit,
                            &cfg.loss,
                            size_norm,
                            st,
                            true,
                        )
                    })
                    .collect();
                for (c, st) in members {
                    states[c] = st;
                }
                let mut g = vec![0f64; p.len()];
                let (mut l, mut w) = (0.0, 0.0);
                for r in &results {
                    l += r.loss;
                    w += r.weight;
                    for (a, b) in g.iter_mut().zip(&r.grad) {
                        *a += b;
                    }
                }
                done += 1;
                if w > 0.0 {
                    let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt() / w;
                    let k = if norm > CLIP_NORM {
                        CLIP_NORM / norm
                    } else {
                        1.0
                    } / w;
                    g.iter_mut().for_each(|x| *x *= k);
                    adam.step(&mut p, &g, cfg.learning_rate);
                    loss_sum += l;
                    weight_sum += w;
                }
                if p.iter().any(|x| !x.is_finite()) {
                    return Err(Error::invalid(format!(
                        "train: the weights diverged in epoch {epoch} (try a smaller learning rate)"
                    )));
                }
                progress(&Progress {
                    epoch,
                    epochs: cfg.epochs,
                    batch: done,
                    batches,
                    train_loss: loss_sum / weight_sum.max(f64::MIN_POSITIVE),
                    val_loss: report.val_losses.last().copied(),
                });
            }
        }
        report.epochs_run = epoch;
        report
            .train_losses
            .push(loss_sum / weight_sum.max(f64::MIN_POSITIVE));
        let score = if val > 0 {
            let v = ctx.validation_loss(&p);
            report.val_losses.push(v);
            v
        } else {
            // Without validation the last epoch is the best.
            f64::NEG_INFINITY
        };
        if score < best.0 || val == 0 {
            best = (score, p.clone());
            report.best_epoch = epoch;
            since_best = 0;
        } else {
            since_best += 1;
            if cfg.patience > 0 && since_best >= cfg.patience {
                break;
            }
        }
    }
    ctx.lay.unflatten(&best.1, &mut report.model);
    report.model.validate()?;
    Ok(report)
}

/// The initial adjustments of the module docs: forget-gate biases +1, head weights x0.1, head
/// biases from persistence (mean correction 0, quantile corrections at the residuals' quantiles).
fn init(ctx: &Ctx<'_>, p: &mut [f64]) {
    let lay = &ctx.lay;
    let hd = lay.hidden;
    for &(o, _) in &lay.layers {
        for j in hd..2 * hd {
            p[o[2] + j] += 1.0;
        }
    }
    for w in &mut p[lay.head_w..lay.head_b] {
        *w *= 0.1;
    }
    let nh = lay.horizons.len();
    let mut counts = [1.0f64; 4];
    for (j, &h) in lay.horizons.iter().enumerate() {
        // Residuals of the z target from the step's usage feature (what the residual head adds).
        let mut zs = Vec::new();
        for seq in &ctx.ds.seqs {
            let tg = dataset::Targets::new(seq, ctx.fit);
            for t in 0..ctx.fit {
                if let Some((z, _)) = tg.horizon(t, h) {
                    zs.push(z - f64::from(seq.x[t * lay.input]));
                }
                if j == 0
                    && let Some(k) = tg.scenario(t)
                {
                    counts[k] += 1.0;
                }
            }
        }
        if zs.is_empty() {
            continue;
        }
        zs.sort_by(f64::total_cmp);
        let q = |tau: f64| zs[((zs.len() - 1) as f64 * tau) as usize];
        let b = lay.head_b + j * HEAD_PER_HORIZON;
        // The mean starts from persistence, the quantiles from the residuals' quantiles.
        p[b] = 0.0;
        p[b + 1] = q(0.5);
        p[b + 2] = softplus_inv((q(0.9) - q(0.5)).max(1e-2));
        p[b + 3] = softplus_inv((q(0.99) - q(0.9)).max(1e-2));
    }
    let total: f64 = counts.iter().sum();
    for (k, c) in counts.iter().enumerate() {
        p[lay.head_b + nh * HEAD_PER_HORIZON + k] = (c / total).ln();
    }
}

#[cfg(test)]
mod tests;
