//! `shadowbucket simulate`: build the workload, run both strategies with a progress bar, stop
//! cleanly on Ctrl-C, print the comparison, write the report.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use shadowbucket::forecast::QuantileLevel;

use crate::args::{ReserveTarget, SimulateArgs};
use crate::out::{out, outln};
use shadowbucket::predict::Target;

use crate::predictor::Choice;
use crate::sim::{self, SimOptions, SimResult};
use crate::trace::{Trace, TraceOptions};
use crate::workload::Workload;
use crate::workload::synthetic::{Synthetic, SyntheticConfig};
use crate::{CliError, CmdResult, report};

/// The longest simulation, in days (`--days`, and the span of a trace).
pub const MAX_DAYS: u64 = 366;

/// Runs `simulate`.
pub fn run(a: SimulateArgs) -> CmdResult {
    // Everything that can be refused is checked before anything runs or is written.
    let predictor = Choice::parse(&a.predictor).map_err(CliError::Usage)?;
    if let Choice::Lstm(Some(p)) = &predictor
        && !p.is_file()
    {
        return Err(CliError::Failed(format!(
            "cannot read model {}: no such file",
            p.display()
        )));
    }
    if let Some(d) = a.days
        && !(d > 0.0 && d <= MAX_DAYS as f64)
    {
        return Err(CliError::Usage(format!(
            "--days must be in (0, {MAX_DAYS}], got {d}"
        )));
    }
    // The engine's clock is in nanoseconds (u64).
    let max_interval = u64::MAX / 1_000_000_000;
    if a.interval == 0 || !a.interval.is_multiple_of(a.step) || a.interval > max_interval {
        return Err(CliError::Usage(format!(
            "--interval ({} s) must be a positive multiple of --step ({} s), at most {max_interval} s",
            a.interval, a.step
        )));
    }
    if !(0.0..=1.0).contains(&a.alpha) {
        return Err(CliError::Usage(format!(
            "--alpha must be in [0, 1], got {}",
            a.alpha
        )));
    }
    if !(a.headroom.is_finite() && a.headroom >= 0.0 && a.headroom <= 100.0) {
        return Err(CliError::Usage(format!(
            "--headroom must be in [0, 100], got {}",
            a.headroom
        )));
    }
    report::check_writable(&a.report).map_err(CliError::Usage)?;
    if let Some(j) = &a.json {
        report::check_writable(j).map_err(CliError::Usage)?;
    }
    let mut workload: Box<dyn Workload> = match &a.trace {
        Some(path) => Box::new(Trace::load(
            path,
            &TraceOptions {
                step_s: a.step,
                pool_factor: a.pool_factor,
                tenants: a.tenants,
                seed: a.seed,
                days: a.days,
            },
        )?),
        None => Box::new(
            Synthetic::new(SyntheticConfig {
                customers: a.customers,
                days: a.days.unwrap_or(1.0),
                start_day: a.start_day as u64,
                seed: a.seed,
                step_s: a.step,
                pool_factor: a.pool_factor,
            })
            .map_err(CliError::Usage)?,
        ),
    };

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C ends the process at once.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }
    let bar = crate::progress_bar(
        a.quiet,
        Some(workload.steps()),
        "{spinner} simulating [{bar:30}] {percent:>3}% {msg} (eta {eta}; Ctrl-C stops and reports)",
    );
    outln!("shadowbucket simulate: {}", workload.describe());
    let pool = workload.pool();
    outln!(
        "pool {} tokens/s (burst {}), alpha {}, tick every {} s, step {} s",
        pool.rate,
        pool.burst,
        a.alpha,
        a.interval,
        a.step
    );
    let opts = SimOptions {
        predictor,
        interval_s: a.interval,
        alpha: a.alpha,
        headroom: a.headroom,
        target: match a.reserve {
            ReserveTarget::Mean => Target::Mean,
            ReserveTarget::P50 => Target::Quantile(QuantileLevel::P50),
            ReserveTarget::P90 => Target::Quantile(QuantileLevel::P90),
            ReserveTarget::P99 => Target::Quantile(QuantileLevel::P99),
        },
        sample: a.sample,
        plotted: a.plot_customers,
        store_dir: a.store_dir.clone(),
    };
    let step_s = workload.step_s();
    let result = sim::run(workload.as_mut(), &opts, &stop, &mut |done, _| {
        if done % 64 == 0 {
            bar.set_position(done);
            bar.set_message(format!("day {:.2}", (done * step_s) as f64 / 86_400.0));
        }
    });
    bar.finish_and_clear();
    let r = result?;
    print_result(&r);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let html = report::html(&r, &command)?;
    let figures = a.json.as_ref().map(|j| (j, json(&r).to_string()));
    // Both or neither: a JSON that cannot be written leaves the old report too.
    let mut files = vec![(a.report.as_path(), html.as_bytes())];
    if let Some((j, text)) = &figures {
        files.push((j.as_path(), text.as_bytes()));
    }
    report::write_all_atomic(&files)?;
    if let Some((j, _)) = &figures {
        outln!("figures (JSON): {}", j.display());
    }
    if let Some(d) = &r.stores {
        outln!("stores kept: {}", d.display());
    }
    let shown = std::fs::canonicalize(&a.report).unwrap_or(a.report.clone());
    outln!("report: {}", shown.display());
    Ok(if r.interrupted { 130 } else { 0 })
}

fn print_result(r: &SimResult) {
    outln!();
    if r.interrupted {
        outln!(
            "interrupted: {} of {} steps simulated ({:.2} hours); the figures cover them",
            r.steps_done,
            r.steps_total,
            r.simulated_s as f64 / 3600.0
        );
    }
    outln!(
        "{} customers ({} steady), {:.1} simulated hours, predictor {}, {:.1} s",
        r.customers,
        r.steady_customers,
        r.simulated_s as f64 / 3600.0,
        r.predictor,
        r.wall_s
    );
    outln!();
    out!("{}", sim::table(r));
    outln!();
    let [p, h] = &r.tally;
    if p.consistent && h.consistent {
        outln!("both stores pass their consistency check and balance their ledgers");
    } else {
        outln!(
            "WARNING: consistency check failed (plain: {}, shadow: {})",
            p.consistent,
            h.consistent
        );
    }
}

/// The run's figures as JSON.
pub fn json(r: &SimResult) -> serde_json::Value {
    use serde_json::json;
    let strat = |k: usize| {
        let t = &r.tally[k];
        json!({
            "granted_shadow": t.outcomes[0],
            "granted_pool": t.outcomes[1],
            "denied_customer_limit": t.outcomes[2],
            "denied_pool_exhausted": t.outcomes[3],
            "exceeds_burst": t.outcomes[4],
            "tokens_granted": t.tokens[0] + t.tokens[1],
            "steady_requests": t.steady[0],
            "steady_denied_pool": t.steady[1],
            "steady_denied": t.steady[2],
            "pool_utilization": r.utilization(k),
            "ticks_cut_back": t.cut_back,
            "flagged_end": t.flagged_now,
            "flagged_peak": t.flagged_peak,
            "decisions_per_s": t.decisions_per_s(),
            "ms_per_tick": t.ms_per_tick(),
            "consistent": t.consistent,
        })
    };
    json!({
        "workload": r.workload,
        "customers": r.customers,
        "steady_customers": r.steady_customers,
        "pool_rate": r.pool_rate,
        "predictor": r.predictor,
        "steps_done": r.steps_done,
        "steps_total": r.steps_total,
        "simulated_s": r.simulated_s,
        "interrupted": r.interrupted,
        "wall_s": r.wall_s,
        "tokens_asked": r.tokens_asked,
        "plain": strat(0),
        "shadow": strat(1),
        "reservation_slack": r.slack,
        "reservation_exceed_rate": r.exceed_rate,
        "slack_samples": r.slack_samples,
    })
}
