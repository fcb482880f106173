//! Trains the LSTM on the first 10 days of the ServeGen `m-small` trace and scores it, with the
//! four baselines, on the last 4 days at horizons 1 and 2 (10-minute windows).
//!
//! ```text
//! cargo run --release --example evaluate [-- --hidden 32 --epochs 30 --save model.safetensors]
//! ```
//!
//! Defaults: hidden 16, one layer, horizons `[1, 2]`, 15 epochs, learning rate 1e-2, scale
//! half-life 144 windows (a day), otherwise [`TrainConfig::default`] (`docs/forecast.md` says
//! why).
//!
//! Options (each `--name value`): `hidden`, `layers`, `epochs`, `bptt`, `batch`, `lr`, `seed`,
//! `patience`, `val` (validation fraction), `half-life` (scale, windows), `w-mean`, `w-scenario`,
//! `size-exp` (loss weights), `data` (the CSV), `save` (write the trained model there).

use std::path::PathBuf;
use std::time::Instant;

use shadowbucket::forecast::{
    Autopilot, Ewma, Forecaster, LastValue, LstmForecaster, QuantileLevel, Report, SeasonalNaive,
    UsageHistory, WINDOWS_PER_DAY_10MIN, evaluate_with_scale, format_reports,
};
use shadowbucket::model::ModelSpec;
use shadowbucket::train::{TrainConfig, train};

const TRAIN_WINDOWS: usize = 10 * WINDOWS_PER_DAY_10MIN;
const HORIZONS: [usize; 2] = [1, 2];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut cfg = TrainConfig {
        spec: ModelSpec {
            hidden: 16,
            layers: 1,
            horizons: vec![1, 2],
            feeds: Vec::new(),
        },
        epochs: 15,
        learning_rate: 1e-2,
        scale_half_life: WINDOWS_PER_DAY_10MIN as f32,
        ..TrainConfig::default()
    };
    let mut data =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/servegen/m-small.csv");
    let mut save = None;
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--hidden" => cfg.spec.hidden = value.parse().map_err(|e| bad(&e))?,
            "--layers" => cfg.spec.layers = value.parse().map_err(|e| bad(&e))?,
            "--epochs" => cfg.epochs = value.parse().map_err(|e| bad(&e))?,
            "--bptt" => cfg.bptt = value.parse().map_err(|e| bad(&e))?,
            "--batch" => cfg.batch_customers = value.parse().map_err(|e| bad(&e))?,
            "--lr" => cfg.learning_rate = value.parse().map_err(|e| bad(&e))?,
            "--seed" => cfg.seed = value.parse().map_err(|e| bad(&e))?,
            "--patience" => cfg.patience = value.parse().map_err(|e| bad(&e))?,
            "--val" => cfg.validation_fraction = value.parse().map_err(|e| bad(&e))?,
            "--half-life" => cfg.scale_half_life = value.parse().map_err(|e| bad(&e))?,
            "--w-mean" => cfg.loss.mean = value.parse().map_err(|e| bad(&e))?,
            "--w-scenario" => cfg.loss.scenario = value.parse().map_err(|e| bad(&e))?,
            "--size-exp" => cfg.loss.size_exponent = value.parse().map_err(|e| bad(&e))?,
            "--data" => data = PathBuf::from(value),
            "--save" => save = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown option {flag}").into()),
        }
    }

    let history = UsageHistory::from_servegen_csv(&data)?;
    let (train_part, _) = history.split_at_window(TRAIN_WINDOWS)?;
    eprintln!("training: {cfg:?}");
    let start = Instant::now();
    let report = train(&train_part, &cfg, &mut |p| {
        if p.batch == p.batches {
            eprintln!(
                "epoch {}/{}: train loss {:.4}, last validation loss {}",
                p.epoch,
                p.epochs,
                p.train_loss,
                p.val_loss.map_or("-".into(), |v| format!("{v:.4}"))
            );
        }
    })?;
    eprintln!(
        "trained in {:.1} s: {} epochs, best {} (validation losses {:?})",
        start.elapsed().as_secs_f64(),
        report.epochs_run,
        report.best_epoch,
        report
            .val_losses
            .iter()
            .map(|v| (v * 1e4).round() / 1e4)
            .collect::<Vec<_>>()
    );
    if let Some(path) = &save {
        report.model.save(path)?;
        eprintln!("saved {}", path.display());
    }

    let mut forecasters: Vec<Box<dyn Forecaster>> = vec![
        Box::new(LastValue::new()),
        Box::new(Ewma::new(0.5)?),
        Box::new(SeasonalNaive::new(WINDOWS_PER_DAY_10MIN)?),
        Box::new(Autopilot::default()),
        Box::new(LstmForecaster::for_history(report.model.clone(), &history)?),
    ];
    let reports = forecasters
        .iter_mut()
        .map(|f| {
            evaluate_with_scale(
                &history,
                f.as_mut(),
                TRAIN_WINDOWS,
                &HORIZONS,
                QuantileLevel::P90,
                f64::from(cfg.scale_half_life),
            )
        })
        .collect::<Result<Vec<Report>, _>>()?;
    println!(
        "ServeGen m-small: {} customers; train windows 0..{TRAIN_WINDOWS} (10 days), test {} \
         windows (4 days); tokens per 10-minute window; reservation = p90; scenario scale \
         half-life {} windows",
        history.num_customers(),
        history.num_windows() - TRAIN_WINDOWS,
        cfg.scale_half_life
    );
    print!("{}", format_reports(&reports));
    // The same LSTM reserving its p99 instead of its p90: the other point of its trade-off.
    let mut lstm99 = LstmForecaster::for_history(report.model, &history)?;
    let r99 = evaluate_with_scale(
        &history,
        &mut lstm99,
        TRAIN_WINDOWS,
        &HORIZONS,
        QuantileLevel::P99,
        f64::from(cfg.scale_half_life),
    )?;
    let lstm = &reports[4];
    for (i, h) in HORIZONS.iter().enumerate() {
        let m99 = r99.horizons[i].metrics;
        println!(
            "h={h}: LSTM reserving p99: slack {:.3} at exceed {:.3}",
            m99.slack, m99.exceed_rate
        );
    }
    for (i, h) in HORIZONS.iter().enumerate() {
        let m = |r: &Report| r.horizons[i].metrics;
        let l = m(lstm);
        println!(
            "h={h}: LSTM p50 pinball vs last value {:+.1}%, vs EWMA {:+.1}%; slack {:.3} at \
             exceed {:.3} vs Autopilot slack {:.3} at exceed {:.3}",
            100.0 * (l.pinball_p50 / m(&reports[0]).pinball_p50 - 1.0),
            100.0 * (l.pinball_p50 / m(&reports[1]).pinball_p50 - 1.0),
            l.slack,
            l.exceed_rate,
            m(&reports[3]).slack,
            m(&reports[3]).exceed_rate,
        );
    }
    Ok(())
}
