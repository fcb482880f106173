//! `shadowbucket`: the command line of the shadowbucket engine.
//!
//! - `simulate`: a workload (built-in synthetic, or a trace) through plain token buckets and
//!   shadow buckets on the same clock; a comparison table and a self-contained HTML report.
//! - `train`, `evaluate`: the predictive engine's trainer, and forecasters scored, from CSV.
//! - `bench`: the batch benchmarks, JSON out.
//! - `inspect`: a store file's header, customers, counters and flagged customers.
//! - `snapshot`: a consistent copy of a store that no process has open for writing.
//!
//! Exit codes: 0 success; 1 a failure while running (an unreadable file, an engine error,
//! standard output that cannot be written; a closed pipe is not one: see `out`);
//! 2 bad arguments; 130 a simulation stopped by Ctrl-C (its report is still written).

mod args;
mod bench;
mod device;
mod inspect;
mod learn;
mod model;
mod out;
mod predictor;
mod report;
mod sim;
mod simulate;
mod snapshot;
mod trace;
mod workload;

use clap::Parser;

/// Why a command failed.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments (exit code 2).
    Usage(String),
    /// A failure while running (exit code 1).
    Failed(String),
}

impl From<String> for CliError {
    fn from(s: String) -> Self {
        CliError::Failed(s)
    }
}

/// A command's result: the exit code on success.
pub type CmdResult = Result<i32, CliError>;

/// A progress bar on standard error drawn with `template` (`len` steps, or set later), or a
/// hidden one when `hidden` (`--quiet`).
pub fn progress_bar(hidden: bool, len: Option<u64>, template: &str) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    if hidden {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    b.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b
}

/// Opens the store at `path` read-only (`inspect`, `snapshot`), with the error a user reads.
pub fn open_store_read_only(path: &std::path::Path) -> Result<shadowbucket::Engine, CliError> {
    if !path.exists() {
        return Err(CliError::Failed(format!(
            "cannot open {}: no such file",
            path.display()
        )));
    }
    shadowbucket::Engine::open_read_only(path)
        .map_err(|e| CliError::Failed(format!("cannot open {}: {e}", path.display())))
}

fn main() {
    let cli = args::Cli::parse();
    let result = match cli.command {
        args::Command::Simulate(a) => simulate::run(a),
        args::Command::Train(a) => learn::train(a),
        args::Command::Evaluate(a) => learn::evaluate(a),
        args::Command::Bench(a) => bench::run(a),
        args::Command::Inspect(a) => inspect::run(a),
        args::Command::Snapshot(a) => snapshot::run(a),
    };
    let code = match result {
        // output that could not be written fails a command that otherwise succeeded
        Ok(0) => match out::failure() {
            Some(m) => {
                eprintln!("error: {m}");
                1
            }
            None => 0,
        },
        Ok(code) => code,
        Err(CliError::Usage(m)) => {
            eprintln!("error: {m}");
            eprintln!("\nFor more information, try '--help'.");
            2
        }
        Err(CliError::Failed(m)) => {
            eprintln!("error: {m}");
            1
        }
    };
    std::process::exit(code);
}
