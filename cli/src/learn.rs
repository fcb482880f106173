//! `shadowbucket train` and `shadowbucket evaluate`: the forecaster's trainer and its scores,
//! from CSV (or, for training, from the synthetic workload's demand).

use serde_json::json;
use shadowbucket::forecast::{
    Autopilot, Ewma, Forecaster, LastValue, QuantileLevel, Report, SeasonalNaive, UsageHistory,
    evaluate_with, format_reports,
};

use shadowbucket::forecast::LstmForecaster;
use shadowbucket::model::ModelSpec;
use shadowbucket::train::TrainConfig;

use crate::args::{EvaluateArgs, Quantile, TrainArgs};
use crate::out::{out, outln};
use crate::workload::demand_history;
use crate::workload::synthetic::{Synthetic, SyntheticConfig};
use crate::{CliError, CmdResult, report};

fn load_csv(path: &std::path::Path) -> Result<UsageHistory, CliError> {
    if !path.is_file() {
        return Err(CliError::Failed(format!(
            "cannot read {}: no such file",
            path.display()
        )));
    }
    UsageHistory::from_servegen_csv(path)
        .map_err(|e| CliError::Failed(format!("cannot load {}: {e}", path.display())))
}

/// Runs `train`.
pub fn train(a: TrainArgs) -> CmdResult {
    if a.epochs == 0 || a.batch_customers == 0 || a.bptt == 0 {
        return Err(CliError::Usage(
            "--epochs, --batch-customers and --bptt must be at least 1".into(),
        ));
    }
    if a.hidden == 0 || a.hidden > ModelSpec::MAX_HIDDEN {
        return Err(CliError::Usage(format!(
            "--hidden must be 1..={}, got {}",
            ModelSpec::MAX_HIDDEN,
            a.hidden
        )));
    }
    if !(a.learning_rate.is_finite() && a.learning_rate > 0.0) {
        return Err(CliError::Usage(format!(
            "--learning-rate must be positive, got {}",
            a.learning_rate
        )));
    }
    if !(0.0..1.0).contains(&a.validation_fraction) {
        return Err(CliError::Usage(format!(
            "--validation-fraction must be in [0, 1), got {}",
            a.validation_fraction
        )));
    }
    report::check_writable(&a.out).map_err(CliError::Usage)?;
    let history = match &a.csv {
        Some(csv) => load_csv(csv)?,
        None => {
            if a.window == 0 || !a.window.is_multiple_of(10) {
                return Err(CliError::Usage(format!(
                    "--window must be a positive multiple of 10 s, got {}",
                    a.window
                )));
            }
            let mut w = Synthetic::new(SyntheticConfig {
                customers: a.customers,
                days: a.days,
                start_day: 0,
                seed: a.seed,
                step_s: 10,
                pool_factor: 1.1,
            })
            .map_err(CliError::Usage)?;
            let windows = (a.days * 86_400.0 / a.window as f64) as usize;
            if !a.quiet {
                eprintln!(
                    "generating {windows} windows of demand for {} customers",
                    a.customers
                );
            }
            demand_history(&mut w, a.window, windows)?
        }
    };
    let cfg = TrainConfig {
        spec: ModelSpec {
            hidden: a.hidden,
            ..ModelSpec::default()
        },
        epochs: a.epochs,
        batch_customers: a.batch_customers,
        bptt: a.bptt,
        learning_rate: a.learning_rate,
        seed: a.seed,
        validation_fraction: a.validation_fraction,
        patience: a.patience,
        // a day of windows
        scale_half_life: (86_400 / history.window_s()).max(1) as f32,
        ..TrainConfig::default()
    };
    outln!(
        "training an LSTM (hidden {}) on {} customers x {} windows of {} s",
        a.hidden,
        history.num_customers(),
        history.num_windows(),
        history.window_s()
    );
    let bar = crate::progress_bar(
        a.quiet,
        None,
        "{spinner} epoch {msg} [{bar:30}] {pos}/{len} (eta {eta})",
    );
    let t = std::time::Instant::now();
    let rep = shadowbucket::train::train(&history, &cfg, &mut |p| {
        bar.set_length((p.epochs * p.batches) as u64);
        bar.set_position(((p.epoch - 1) * p.batches + p.batch) as u64);
        bar.set_message(format!(
            "{}/{}: train loss {:.4}{}",
            p.epoch,
            p.epochs,
            p.train_loss,
            p.val_loss
                .map(|v| format!(", validation {v:.4}"))
                .unwrap_or_default()
        ));
    })
    .map_err(|e| CliError::Failed(format!("training failed: {e}")))?;
    bar.finish_and_clear();
    let bytes = rep
        .model
        .to_safetensors_bytes()
        .map_err(|e| CliError::Failed(e.to_string()))?;
    report::write_atomic(&a.out, &bytes)?;
    for (k, l) in rep.train_losses.iter().enumerate() {
        let v = rep
            .val_losses
            .get(k)
            .map(|v| format!("  validation {v:.5}"))
            .unwrap_or_default();
        outln!("epoch {:>3}  train {l:.5}{v}", k + 1);
    }
    outln!(
        "{} epochs in {:.1} s; kept epoch {}",
        rep.epochs_run,
        t.elapsed().as_secs_f64(),
        rep.best_epoch
    );
    outln!("model: {}", a.out.display());
    Ok(0)
}

/// Runs `evaluate`.
pub fn evaluate(a: EvaluateArgs) -> CmdResult {
    if !(a.train_fraction > 0.0 && a.train_fraction < 1.0) {
        return Err(CliError::Usage(format!(
            "--train-fraction must be in (0, 1), got {}",
            a.train_fraction
        )));
    }
    if a.horizons.is_empty() || a.horizons.contains(&0) {
        return Err(CliError::Usage("--horizons must be positive".into()));
    }
    if let Some(j) = &a.json {
        report::check_writable(j).map_err(CliError::Usage)?;
    }
    if let Some(m) = &a.model
        && !m.is_file()
    {
        return Err(CliError::Failed(format!(
            "cannot read model {}: no such file",
            m.display()
        )));
    }
    let h = load_csv(&a.csv)?;
    let train_windows = ((h.num_windows() as f64 * a.train_fraction) as usize)
        .clamp(1, h.num_windows().saturating_sub(1).max(1));
    if h.num_windows() < 2 {
        return Err(CliError::Failed(format!(
            "{}: need at least two windows",
            a.csv.display()
        )));
    }
    let reserve = match a.reserve {
        Quantile::P50 => QuantileLevel::P50,
        Quantile::P90 => QuantileLevel::P90,
        Quantile::P99 => QuantileLevel::P99,
    };
    let day = (86_400 / h.window_s()).max(1) as usize;
    let mut forecasters: Vec<Box<dyn Forecaster>> = vec![
        Box::new(LastValue::new()),
        Box::new(Ewma::new(0.5).map_err(|e| e.to_string())?),
        Box::new(SeasonalNaive::new(day).map_err(|e| e.to_string())?),
        Box::new(Autopilot::new(6.0).map_err(|e| e.to_string())?),
    ];
    if let Some(m) = &a.model {
        let model = crate::predictor::load_model(m)?;
        forecasters.push(Box::new(
            LstmForecaster::for_history(model, &h).map_err(|e| e.to_string())?,
        ));
    }
    let mut reports: Vec<Report> = Vec::new();
    for f in &mut forecasters {
        reports.push(
            evaluate_with(&h, f.as_mut(), train_windows, &a.horizons, reserve)
                .map_err(|e| e.to_string())?,
        );
    }
    outln!(
        "{}: {} customers, {} windows of {} s; {} warm-up windows, {} scored; reservation = {}",
        a.csv.display(),
        h.num_customers(),
        h.num_windows(),
        h.window_s(),
        train_windows,
        h.num_windows() - train_windows,
        reserve.name()
    );
    outln!();
    out!("{}", format_reports(&reports));
    if let Some(j) = &a.json {
        let v: Vec<_> = reports
            .iter()
            .map(|r| {
                json!({
                    "forecaster": r.forecaster,
                    "horizons": r.horizons.iter().map(|h| json!({
                        "horizon": h.horizon,
                        "samples": h.metrics.samples,
                        "mae": h.metrics.mae,
                        "pinball_p50": h.metrics.pinball_p50,
                        "pinball_p90": h.metrics.pinball_p90,
                        "pinball_p99": h.metrics.pinball_p99,
                        "coverage_p90": h.metrics.coverage_p90,
                        "coverage_p99": h.metrics.coverage_p99,
                        "slack": h.metrics.slack,
                        "over_reserved": h.metrics.over_reserved,
                        "exceed_rate": h.metrics.exceed_rate,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&json!({
            "csv": a.csv.display().to_string(),
            "train_windows": train_windows,
            "reports": v,
        }))
        .map_err(|e| e.to_string())?;
        report::write_atomic(j, text.as_bytes())?;
        outln!("\nscores (JSON): {}", j.display());
    }
    Ok(0)
}
