//! The command line: every subcommand and option, with the help text `--help` prints.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// shadowbucket: forecast-driven shadow token buckets. Simulate a workload end to end, train and
/// evaluate the forecaster, benchmark the batch path, inspect a store, snapshot it.
#[derive(Parser, Debug)]
#[command(name = "shadowbucket", version, about, long_about = None)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a workload through plain token buckets and shadow buckets on the same clock; print
    /// the comparison and write an HTML report.
    Simulate(SimulateArgs),
    /// Train the LSTM forecaster on a usage trace (CSV) or on the synthetic workload; save it.
    Train(TrainArgs),
    /// Score forecasters (the baselines, and a trained LSTM) on a usage trace (CSV).
    Evaluate(EvaluateArgs),
    /// Benchmark batch decisions and the predictive tick; JSON out.
    Bench(BenchArgs),
    /// Show a store file: header, configuration, counters, customers, flagged customers.
    Inspect(InspectArgs),
    /// Copy a store that no process has open for writing to a snapshot file, consistently and
    /// atomically (a store on tmpfs reaches a disk this way).
    Snapshot(SnapshotArgs),
}

/// Days of the week.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Day {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

/// Options of `simulate`.
#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Read this trace instead of generating the synthetic workload: a per-window CSV
    /// (customer,window_start_s,requests,input_tokens,output_tokens, as ServeGen's) or a
    /// per-request CSV (TIMESTAMP,ContextTokens,GeneratedTokens, as Azure's LLM trace; a
    /// `customer` column, if present, names the requester).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Synthetic customers (up to millions: the run takes longer).
    #[arg(long, default_value_t = 5_000, value_name = "N")]
    pub customers: usize,
    /// Simulated days (fractions allowed). With --trace: use at most this many days of it.
    #[arg(long, value_name = "DAYS")]
    pub days: Option<f64>,
    /// Day of the week the synthetic run starts, at 00:00.
    #[arg(long, value_enum, default_value_t = Day::Fri)]
    pub start_day: Day,
    /// Seed of every random draw: the same seed gives the same run.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Seconds per step: each step's requests are decided in one batch at its end (must divide 60).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub step: u64,
    /// Tick interval, seconds: reservations are set and contention flags updated at every tick
    /// (a multiple of --step).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub interval: u64,
    /// Pool rate as a multiple of the average demand (synthetic: of a weekday without spikes
    /// and campaigns; trace: of the trace's mean). Lower means more contention.
    #[arg(long, default_value_t = 1.1, value_name = "FACTOR")]
    pub pool_factor: f64,
    /// Share of the pool's rate that reservations may take (the engine's alpha), in [0, 1].
    #[arg(long, default_value_t = 0.8)]
    pub alpha: f64,
    /// What of the next interval's forecast becomes the reservation.
    #[arg(long, value_enum, default_value_t = ReserveTarget::Mean)]
    pub reserve: ReserveTarget,
    /// Reservation headroom: the reserved rate is this times the --reserve target.
    #[arg(long, default_value_t = 1.0, value_name = "FACTOR")]
    pub headroom: f64,
    /// The shadow engine's forecaster: lstm (the model shipped with the command), lstm:FILE
    /// (a model saved by `shadowbucket train`), last, ewma[:ALPHA], seasonal[:PERIOD_INTERVALS],
    /// autopilot[:HALF_LIFE_INTERVALS].
    #[arg(long, default_value = "lstm", value_name = "PREDICTOR")]
    pub predictor: String,
    /// Customers to spread a per-request trace over when it has no customer column (Zipf 1.1).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub tenants: usize,
    /// Where to write the HTML report.
    #[arg(long, default_value = "shadowbucket-report.html", value_name = "FILE")]
    pub report: PathBuf,
    /// Also write the figures as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep the two stores (plain.sb, shadow.sb) in this folder, for `shadowbucket inspect`;
    /// it must not hold them already. Default: a temporary folder, removed at the end.
    #[arg(long, value_name = "DIR")]
    pub store_dir: Option<PathBuf>,
    /// Customers whose forecasts are plotted against their use.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub plot_customers: usize,
    /// Customers (at most) on which reservation slack and exceed-rate are measured.
    #[arg(long, default_value_t = 5_000, value_name = "N")]
    pub sample: usize,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// What of a forecast becomes the reservation.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ReserveTarget {
    /// The expected use.
    Mean,
    /// The median.
    P50,
    /// The 90th percentile.
    P90,
    /// The 99th percentile.
    P99,
}

/// Options of `train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Usage trace to train on (ServeGen's per-window CSV: customer,window_start_s,...,
    /// input_tokens,output_tokens). Mutually exclusive with --synthetic.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "synthetic",
        required_unless_present = "synthetic"
    )]
    pub csv: Option<PathBuf>,
    /// Train on the built-in synthetic workload's demand (per-interval history generated with
    /// --customers, --days and --seed) instead of a CSV.
    #[arg(long)]
    pub synthetic: bool,
    /// Synthetic customers to train on.
    #[arg(long, default_value_t = 300, value_name = "N")]
    pub customers: usize,
    /// Synthetic days of history to train on (from Monday 00:00).
    #[arg(long, default_value_t = 4.0, value_name = "DAYS")]
    pub days: f64,
    /// Synthetic history window, seconds (the engine's tick interval).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub window: u64,
    /// Where to save the model (safetensors). Written only when training succeeds.
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    /// Training passes over the data (at most; early stopping may end sooner).
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// LSTM hidden size.
    #[arg(long, default_value_t = 32)]
    pub hidden: usize,
    /// Customers per mini-batch.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub batch_customers: usize,
    /// Truncated back-propagation length, intervals.
    #[arg(long, default_value_t = 48, value_name = "N")]
    pub bptt: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 3e-3, value_name = "LR")]
    pub learning_rate: f64,
    /// Share of the last windows held out for validation (early stopping; 0: none).
    #[arg(long, default_value_t = 0.1, value_name = "FRACTION")]
    pub validation_fraction: f64,
    /// Epochs without validation improvement before stopping.
    #[arg(long, default_value_t = 2)]
    pub patience: usize,
    /// Seed (synthetic workload, initialization, batching).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Options of `evaluate`.
#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// Usage trace (ServeGen's per-window CSV).
    #[arg(long, value_name = "FILE")]
    pub csv: PathBuf,
    /// Also score this trained LSTM (safetensors, from `shadowbucket train`).
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Share of the windows used only to warm up (the rest are scored), in (0, 1).
    #[arg(long, default_value_t = 10.0 / 14.0, value_name = "FRACTION")]
    pub train_fraction: f64,
    /// Horizons to score, in windows, comma-separated.
    #[arg(
        long,
        default_value = "1,3,6",
        value_delimiter = ',',
        value_name = "H,..."
    )]
    pub horizons: Vec<usize>,
    /// The quantile taken as the reservation for slack and exceed-rate.
    #[arg(long, value_enum, default_value_t = Quantile::P90)]
    pub reserve: Quantile,
    /// Also write the scores as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// A forecast quantile.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Quantile {
    /// The median.
    P50,
    /// The 90th percentile.
    P90,
    /// The 99th percentile.
    P99,
}

/// Where a benchmark runs.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Device {
    /// The CPU (rayon over all cores).
    Cpu,
    /// A GPU through the shadowbucket-gpu crate, where it is built in.
    Gpu,
}

/// Options of `bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Customers in the store.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub customers: u64,
    /// Requests per batch.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub batch: usize,
    /// Batches timed (after one untimed warm-up batch).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub iterations: usize,
    /// Where the predictive tick's LSTM step runs.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Customer ids drawn uniformly instead of Zipf(1.1).
    #[arg(long)]
    pub uniform: bool,
    /// Seed of the request stream.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Write the JSON here instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Folder for the benchmark's store (default: the system's temporary folder).
    #[arg(long, value_name = "DIR")]
    pub store_dir: Option<PathBuf>,
}

/// Options of `inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The store file (opened read-only; nothing is written).
    #[arg(value_name = "STORE")]
    pub store: PathBuf,
    /// Customers to list (in slot order).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub customers: usize,
    /// Show this customer in full.
    #[arg(long, value_name = "ID")]
    pub customer: Option<u64>,
    /// Flagged customers to list.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub flagged: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `snapshot`.
#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// The store file (opened read-only; a process that has it open for writing takes its
    /// snapshots through the library instead).
    #[arg(value_name = "STORE")]
    pub store: PathBuf,
    /// Where to write the snapshot: a new file beside it first, synced, then renamed over it, so
    /// this path always holds the previous snapshot or the new one.
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}
