use super::*;
use crate::model::step_one;
use rand::RngExt;

fn periodic_history(customers: usize, windows: usize, noise: f64, seed: u64) -> UsageHistory {
    let mut rng = StdRng::seed_from_u64(seed);
    let series = (0..customers)
        .map(|c| {
            let base = 10f64.powi(1 + c as i32 % 5);
            let phase = c as f64;
            (0..windows)
                .map(|t| {
                    let day = std::f64::consts::TAU * t as f64 / 24.0;
                    let v = base * (1.0 + 0.8 * (day + phase).sin());
                    (v * (1.0 + noise * rng.random_range(-1.0..1.0))).max(0.0)
                })
                .collect()
        })
        .collect();
    UsageHistory::new((0..customers as u64).collect(), 0, 3600, series).unwrap()
}

fn small_cfg(hidden: usize, layers: usize) -> TrainConfig {
    TrainConfig {
        spec: ModelSpec {
            hidden,
            layers,
            horizons: vec![1, 2],
            feeds: vec![],
        },
        epochs: 6,
        batch_customers: 3,
        bptt: 24,
        learning_rate: 1e-2,
        seed: 11,
        validation_fraction: 0.2,
        patience: 0,
        scale_half_life: 24.0,
        loss: LossWeights::default(),
    }
}

/// The f64 forward pass is step_one's math: the same head outputs, step by step.
#[test]
fn forward_matches_step_one() {
    let cfg = small_cfg(5, 2);
    let ds = Dataset::from_history(&periodic_history(2, 30, 0.2, 1), &cfg.spec, 24.0).unwrap();
    let mut model = LstmModel::random(cfg.spec.clone(), 3).unwrap();
    model.scaling = ds.feature_scaling(30);
    let lay = Layout::new(&cfg.spec);
    let p = lay.flatten(&model);
    let norm: Vec<(f64, f64)> = model
        .scaling
        .mean
        .iter()
        .zip(&model.scaling.std)
        .map(|(&m, &s)| (f64::from(m), f64::from(s)))
        .collect();
    let seq = &ds.seqs[1];
    let mut st32 = vec![0f32; cfg.spec.state_dim()];
    let mut st64 = vec![0f64; cfg.spec.state_dim()];
    let mut out = vec![0f32; cfg.spec.head_dim()];
    let n = ds.input_dim();
    for t in 0..30 {
        step_one(&model, &seq.x[t * n..(t + 1) * n], &mut st32, &mut out);
        net::run_chunk(
            &lay,
            &p,
            &norm,
            seq,
            (t, t, t + 1),
            30,
            &cfg.loss,
            1.0,
            &mut st64,
            false,
        );
    }
    for (a, b) in st32.iter().zip(&st64) {
        assert!((f64::from(*a) - b).abs() < 1e-4, "state {a} vs {b}");
    }
    let mut back = model.clone();
    lay.unflatten(&p, &mut back);
    assert_eq!(back, model);
}

/// Backpropagation through time against central finite differences, every parameter.
#[test]
fn gradient_matches_finite_differences() {
    let mut cfg = small_cfg(3, 2);
    cfg.loss.mean = 0.7;
    cfg.loss.scenario = 0.3;
    cfg.loss.huber_delta = 0.5;
    let ds = Dataset::from_history(&periodic_history(1, 14, 0.5, 2), &cfg.spec, 2.0).unwrap();
    let mut model = LstmModel::random(cfg.spec.clone(), 5).unwrap();
    model.scaling = ds.feature_scaling(14);
    let lay = Layout::new(&cfg.spec);
    let mut p = lay.flatten(&model);
    let mut rng = StdRng::seed_from_u64(9);
    for v in &mut p {
        *v = rng.random_range(-0.8..0.8);
    }
    let norm: Vec<(f64, f64)> = model
        .scaling
        .mean
        .iter()
        .zip(&model.scaling.std)
        .map(|(&m, &s)| (f64::from(m), f64::from(s)))
        .collect();
    let st0: Vec<f64> = (0..lay.state_dim())
        .map(|_| rng.random_range(-0.5..0.5))
        .collect();
    let seq = &ds.seqs[0];
    let run = |p: &[f64], grad: bool| {
        let mut st = st0.clone();
        net::run_chunk(
            &lay,
            p,
            &norm,
            seq,
            (2, 3, 10),
            13,
            &cfg.loss,
            7.0,
            &mut st,
            grad,
        )
    };
    let analytic = run(&p, true);
    assert!(analytic.weight > 0.0);
    let eps = 1e-6;
    let mut worst = 0f64;
    for i in 0..p.len() {
        let keep = p[i];
        p[i] = keep + eps;
        let up = run(&p, false).loss;
        p[i] = keep - eps;
        let down = run(&p, false).loss;
        p[i] = keep;
        let numeric = (up - down) / (2.0 * eps);
        let err = (analytic.grad[i] - numeric).abs() / (1e-6 + numeric.abs().max(1e-3));
        worst = worst.max(err);
        assert!(
            err < 1e-4,
            "parameter {i}: analytic {} vs numeric {numeric}",
            analytic.grad[i]
        );
    }
    assert!(
        analytic.grad.iter().any(|g| g.abs() > 1e-3),
        "the gradient is trivially zero"
    );
    assert!(worst.is_finite());
}

#[test]
fn training_reduces_loss_and_is_seeded() {
    let h = periodic_history(6, 24 * 16, 0.1, 4);
    let cfg = small_cfg(8, 1);
    let mut calls = 0;
    let r = train(&h, &cfg, &mut |p| {
        calls += 1;
        assert!(p.batch <= p.batches && p.epoch <= p.epochs && p.train_loss.is_finite());
    })
    .unwrap();
    assert_eq!(r.epochs_run, 6);
    assert_eq!(r.train_losses.len(), 6);
    assert_eq!(r.val_losses.len(), 6);
    assert_eq!(calls, 6 * 13 * 2); // ceil(307 / 24) chunks x 2 batches per epoch
    let (first, last) = (r.train_losses[0], *r.train_losses.last().unwrap());
    assert!(
        last < 0.6 * first,
        "training loss {first} -> {last}: {:?}",
        r.train_losses
    );
    let best_val = r.val_losses[r.best_epoch - 1];
    assert!(
        best_val < 0.7 * r.val_losses[0],
        "{:?} (best epoch {})",
        r.val_losses,
        r.best_epoch
    );
    r.model.validate().unwrap();
    // Same seed, same model; another seed, another.
    let again = train(&h, &cfg, &mut |_| {}).unwrap();
    assert_eq!(again.model, r.model);
    let other = train(
        &h,
        &TrainConfig {
            seed: 12,
            epochs: 1,
            ..cfg.clone()
        },
        &mut |_| {},
    )
    .unwrap();
    assert_ne!(other.model.head_w, r.model.head_w);
}

#[test]
fn early_stopping_and_bad_configs() {
    let h = periodic_history(2, 60, 0.1, 5);
    let cfg = TrainConfig {
        epochs: 40,
        patience: 1,
        learning_rate: 0.5,
        ..small_cfg(4, 1)
    };
    let r = train(&h, &cfg, &mut |_| {}).unwrap();
    assert!(r.epochs_run < 40, "never stopped: {:?}", r.val_losses);
    assert_eq!(r.epochs_run, r.best_epoch + 1);
    let bad = |f: &dyn Fn(&mut TrainConfig)| {
        let mut c = small_cfg(4, 1);
        f(&mut c);
        train(&h, &c, &mut |_| {}).unwrap_err()
    };
    bad(&|c| c.epochs = 0);
    bad(&|c| c.bptt = 0);
    bad(&|c| c.batch_customers = 0);
    bad(&|c| c.learning_rate = f64::NAN);
    bad(&|c| c.validation_fraction = 1.0);
    bad(&|c| c.scale_half_life = 0.0);
    bad(&|c| c.loss.quantile = -1.0);
    bad(&|c| c.spec.hidden = 0);
    let e = bad(&|c| c.spec.horizons = vec![1, 100]);
    assert!(e.to_string().contains("too few"), "{e}");
    // a validation part of one interval (60 windows, 1%) holds no target: refused rather than a
    // validation loss of 0 every epoch
    let e = bad(&|c| c.validation_fraction = 0.01);
    assert!(e.to_string().contains("too few"), "{e}");
    // A dataset built for another half-life.
    let ds = Dataset::from_history(&h, &small_cfg(4, 1).spec, 10.0).unwrap();
    assert!(train_dataset(&ds, &small_cfg(4, 1), &mut |_| {}).is_err());
}
