//! Workloads: who the customers are, what they ask for at each step of the clock, and which
//! events the engine is told about ahead of time.
//!
//! A [`Workload`] is a clock of fixed steps. At each step it fills a [`Batch`] with the requests
//! that arrived during the step; the simulator decides them all at the step's end, through both
//! engines. Two kinds exist: the built-in [`synthetic`] generator and the trace loaders in
//! [`crate::trace`]. Both are deterministic: the same inputs give the same requests.

pub mod rng;
pub mod synthetic;

use shadowbucket::Contract;
use shadowbucket::forecast::UsageHistory;

/// Nanoseconds per second.
pub const SEC: u64 = 1_000_000_000;
/// Seconds per day.
pub const DAY_S: u64 = 86_400;

/// What kind of customer this is, for the report's breakdowns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Flat, predictable use well inside its contract: what reservations protect.
    Steady,
    /// Strong daily and weekly rhythm.
    Rhythmic,
    /// Rhythmic, plus campaigns announced to the engine as events.
    Campaign,
    /// Sudden spikes nobody announced.
    Spiky,
    /// Noisy neighbours: large, jittery, heavy-tailed requests, frequent bursts.
    Noisy,
    /// A customer read from a trace.
    Trace,
}

impl Class {
    /// Every class, in report order.
    pub const ALL: [Class; 6] = [
        Class::Steady,
        Class::Rhythmic,
        Class::Campaign,
        Class::Spiky,
        Class::Noisy,
        Class::Trace,
    ];

    /// A short lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Class::Steady => "steady",
            Class::Rhythmic => "rhythmic",
            Class::Campaign => "campaign",
            Class::Spiky => "spiky",
            Class::Noisy => "noisy",
            Class::Trace => "trace",
        }
    }
}

/// One customer of a workload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CustomerInfo {
    /// The customer's id in the engine.
    pub id: u64,
    /// Its kind.
    pub class: Class,
    /// Its contract (the same in both engines).
    pub contract: Contract,
}

/// An event announced to the engine ahead of time (a campaign), in workload seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Announced {
    /// Index of the customer in [`Workload::customers`].
    pub customer: usize,
    /// First second of the event.
    pub start_s: u64,
    /// Second after its end.
    pub end_s: u64,
    /// How strong it is (the expected multiple of the customer's usual use).
    pub intensity: f32,
}

/// The requests of one step: parallel vectors, one entry per request.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Index of the requesting customer in [`Workload::customers`].
    pub who: Vec<u32>,
    /// Tokens asked.
    pub tokens: Vec<u64>,
}

impl Batch {
    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.who.clear();
        self.tokens.clear();
    }

    /// Adds one request.
    pub fn push(&mut self, who: usize, tokens: u64) {
        self.who.push(who as u32);
        self.tokens.push(tokens);
    }

    /// Requests in the batch.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
}

/// The shared pool every customer draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Capacity, tokens.
    pub burst: u64,
    /// Refill rate, tokens per second.
    pub rate: u64,
}

/// A workload: customers, a pool, and requests step by step.
pub trait Workload: Send {
    /// One line saying what this workload is.
    fn describe(&self) -> String;
    /// The customers, in a fixed order (the index is the customer's number in batches).
    fn customers(&self) -> &[CustomerInfo];
    /// Events the engine is told about (campaigns).
    fn announced(&self) -> &[Announced];
    /// The pool.
    fn pool(&self) -> Pool;
    /// The workload's clock at its first step, in seconds (day 0 starts on a Monday at 00:00).
    fn start_s(&self) -> u64;
    /// Seconds per step.
    fn step_s(&self) -> u64;
    /// Steps in the workload.
    fn steps(&self) -> u64;
    /// Fills `out` (cleared first) with the requests of step `step`, which covers
    /// `start_s + step * step_s .. start_s + (step + 1) * step_s`. Steps are asked in order.
    fn fill(&mut self, step: u64, out: &mut Batch);
}

/// Runs `workload` from its first step for `windows` windows of `window_s` seconds and sums
/// each customer's asked tokens per window: the usage history a forecaster is trained on.
///
/// # Errors
/// When `window_s` is not a multiple of the step, or the history is refused (no windows).
pub fn demand_history(
    workload: &mut dyn Workload,
    window_s: u64,
    windows: usize,
) -> Result<UsageHistory, String> {
    let step = workload.step_s();
    if window_s == 0 || !window_s.is_multiple_of(step) {
        return Err(format!(
            "window of {window_s} s is not a multiple of the workload's {step} s step"
        ));
    }
    let per = window_s / step;
    let steps = (windows as u64 * per).min(workload.steps());
    let windows = (steps / per) as usize;
    let n = workload.customers().len();
    let mut series = vec![vec![0f64; windows]; n];
    let mut batch = Batch::default();
    for s in 0..windows as u64 * per {
        workload.fill(s, &mut batch);
        let w = (s / per) as usize;
        for (&c, &t) in batch.who.iter().zip(&batch.tokens) {
            series[c as usize][w] += t as f64;
        }
    }
    let ids = workload.customers().iter().map(|c| c.id).collect();
    UsageHistory::new(ids, workload.start_s(), window_s, series).map_err(|e| e.to_string())
}
