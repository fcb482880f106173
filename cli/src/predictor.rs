//! The shadow engine's forecaster, as the command line chooses it: every use of the engine's
//! predictive API is here.

use std::path::PathBuf;

use shadowbucket::forecast::Quantiles;
use shadowbucket::model::LstmModel;
use shadowbucket::predict::{Event, Predictor, ReservationPolicy, Target};
use shadowbucket::{Engine, TickReport};

use crate::workload::{Announced, SEC};

/// A predictor named on the command line.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// The LSTM: the model shipped with the command, or one saved by `shadowbucket train`.
    Lstm(Option<PathBuf>),
    /// Last interval's use.
    LastValue,
    /// EWMA with this weight on the newest interval.
    Ewma(f64),
    /// The use one period (in intervals) earlier.
    SeasonalNaive(usize),
    /// Autopilot-style decaying histogram with this half-life (intervals).
    Autopilot(f64),
}

impl Choice {
    /// Parses `lstm`, `lstm:PATH`, `last`, `ewma[:ALPHA]`, `seasonal[:PERIOD]`,
    /// `autopilot[:HALF_LIFE]`.
    ///
    /// # Errors
    /// A message listing what is accepted.
    pub fn parse(s: &str) -> Result<Choice, String> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let num = |d: f64| -> Result<f64, String> {
            match arg {
                None => Ok(d),
                Some(a) => a
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .ok_or_else(|| format!("`{a}` is not a positive number")),
            }
        };
        Ok(match name {
            "lstm" => Choice::Lstm(arg.map(PathBuf::from)),
            "last" | "last-value" if arg.is_none() => Choice::LastValue,
            "ewma" => {
                let a = num(0.5)?;
                if a > 1.0 {
                    return Err(format!("ewma weight must be in (0, 1], got {a}"));
                }
                Choice::Ewma(a)
            }
            "seasonal" => Choice::SeasonalNaive(num(1440.0)?.round().max(1.0) as usize),
            "autopilot" => Choice::Autopilot(num(60.0)?),
            _ => {
                return Err(format!(
                    "unknown predictor `{s}`: use lstm, lstm:MODEL.safetensors, last, ewma[:ALPHA], \
                     seasonal[:PERIOD], autopilot[:HALF_LIFE]"
                ));
            }
        })
    }
}

/// Event kind given to announced campaigns.
pub const CAMPAIGN: u32 = 1;

/// Reads a model saved by `shadowbucket train`.
///
/// # Errors
/// A message naming the file.
pub fn load_model(path: &std::path::Path) -> Result<LstmModel, String> {
    LstmModel::load(path).map_err(|e| format!("cannot load model {}: {e}", path.display()))
}

/// The predictor a choice names (reading the model file, or the shipped model, for the LSTM).
///
/// # Errors
/// A message when a model cannot be read.
pub fn resolve(choice: &Choice) -> Result<Predictor, String> {
    Ok(match choice {
        Choice::Lstm(Some(path)) => Predictor::Lstm(Box::new(load_model(path)?)),
        Choice::Lstm(None) => Predictor::Lstm(Box::new(crate::model::shipped()?)),
        Choice::LastValue => Predictor::LastValue,
        Choice::Ewma(a) => Predictor::Ewma { alpha: *a },
        Choice::SeasonalNaive(p) => Predictor::SeasonalNaive { period: *p },
        Choice::Autopilot(h) => Predictor::Autopilot { half_life: *h },
    })
}

/// Drives the shadow engine's predictive tick and answers for its forecasts.
pub struct Shadow {
    ids: Vec<u64>,
    /// Events not yet announced, latest first.
    pending: Vec<Announced>,
}

/// How long before its start a campaign is announced to the engine, seconds.
pub const ANNOUNCE_AHEAD_S: u64 = 3600;

impl Shadow {
    /// Sets the predictor and the reservation policy on `engine`, whose customers are `ids`
    /// (in workload order). The `announced` events (workload seconds) are told to the engine
    /// [`ANNOUNCE_AHEAD_S`] before they start, at the tick before (an event's intensity is its
    /// multiple of the customer's usual use over 4.5, the middle of the synthetic campaigns'
    /// range, so a typical campaign is 1.0).
    ///
    /// # Errors
    /// A message when the predictor or policy is refused, or a model cannot be read.
    pub fn install(
        engine: &mut Engine,
        p: Predictor,
        target: Target,
        headroom: f64,
        ids: &[u64],
        announced: &[Announced],
    ) -> Result<Shadow, String> {
        engine.set_predictor(p).map_err(|e| e.to_string())?;
        engine
            .set_policy(ReservationPolicy {
                target,
                headroom,
                ..ReservationPolicy::default()
            })
            .map_err(|e| e.to_string())?;
        let mut pending = announced.to_vec();
        pending.sort_by_key(|a| std::cmp::Reverse(a.start_s));
        Ok(Shadow {
            ids: ids.to_vec(),
            pending,
        })
    }

    /// Tells the engine about the events that start within [`ANNOUNCE_AHEAD_S`] of `now` (ns).
    ///
    /// # Errors
    /// The engine's.
    pub fn announce(&mut self, engine: &mut Engine, now: u64) -> Result<(), String> {
        while let Some(a) = self.pending.last()
            && a.start_s * SEC <= now + ANNOUNCE_AHEAD_S * SEC
        {
            if a.end_s * SEC > now {
                engine
                    .add_event(Event {
                        customer: Some(self.ids[a.customer]),
                        kind: CAMPAIGN,
                        intensity: a.intensity / 4.5,
                        start_ns: a.start_s * SEC,
                        end_ns: a.end_s * SEC,
                    })
                    .map_err(|e| e.to_string())?;
            }
            self.pending.pop();
        }
        Ok(())
    }

    /// The predictive tick at `now` (ns): closes the intervals, forecasts, sets the next
    /// reservations.
    ///
    /// # Errors
    /// The engine's.
    pub fn tick(&mut self, engine: &mut Engine, now: u64) -> Result<TickReport, String> {
        let r = engine.tick(now).map_err(|e| e.to_string())?;
        self.announce(engine, now)?;
        Ok(r)
    }

    /// Customer `i`'s forecast of its use in the next interval, tokens.
    pub fn forecast(&self, engine: &Engine, i: usize) -> Option<Quantiles> {
        engine
            .forecast(self.ids[i])
            .ok()
            .and_then(|f| f.values.first().copied())
    }
}
