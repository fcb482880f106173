//! `shadowbucket train` and `shadowbucket evaluate`: the forecaster's trainer and its scores,
//! from CSV (or, for training, from the synthetic workload's demand).

use serde_json::json;
use shadowbucket::forecast::{
    Autopilot, Ewma, Forecaster, LastValue, QuantileLevel, Report, SeasonalNaive, UsageHistory,
    evaluate_with, format_reports,
};

use crate::args::{EvaluateArgs, Quantile, TrainArgs};
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
    report::check_writable(&a.out).map_err(CliError::Usage)?;
    let _ = a;
    Err(CliError::Failed(
        "training needs the trainer (shadowbucket::train), not in this build yet".into(),
    ))
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
        return Err(CliError::Failed(format!(
            "scoring the LSTM {} needs the predictive engine, not in this build yet",
            m.display()
        )));
    }
    let mut reports: Vec<Report> = Vec::new();
    for f in &mut forecasters {
        reports.push(
            evaluate_with(&h, f.as_mut(), train_windows, &a.horizons, reserve)
                .map_err(|e| e.to_string())?,
        );
    }
    println!(
        "{}: {} customers, {} windows of {} s; {} warm-up windows, {} scored; reservation = {}",
        a.csv.display(),
        h.num_customers(),
        h.num_windows(),
        h.window_s(),
        train_windows,
        h.num_windows() - train_windows,
        reserve.name()
    );
    println!();
    print!("{}", format_reports(&reports));
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
        println!("\nscores (JSON): {}", j.display());
    }
    Ok(0)
}
