//! The shadow engine's forecaster, as the command line chooses it: every use of the engine's
//! predictive API is here.

use std::path::PathBuf;

use shadowbucket::forecast::{
    Autopilot, Ewma, Forecaster, LastValue, QuantileLevel, Quantiles, SeasonalNaive,
};
use shadowbucket::{Engine, Rate, Reservation, TickReport};

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

/// What of the forecast becomes the reservation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// The expected use.
    Mean,
    /// A quantile of the use.
    Quantile(QuantileLevel),
}

/// Drives the shadow engine's reservations at every tick and answers for its forecasts.
pub struct Shadow {
    forecaster: Box<dyn Forecaster + Send>,
    ids: Vec<u64>,
    slots: Vec<u32>,
    announced: Vec<Announced>,
    interval_s: u64,
    headroom: f64,
    target: Target,
}

impl Shadow {
    /// Sets the predictor up for `engine`, whose customers are `ids` (in workload order), and
    /// tells it about `announced` events (workload seconds).
    ///
    /// # Errors
    /// A message when the predictor cannot be set (a model that cannot be read).
    pub fn install(
        engine: &mut Engine,
        choice: &Choice,
        target: Target,
        headroom: f64,
        ids: &[u64],
        announced: &[Announced],
    ) -> Result<Shadow, String> {
        let forecaster: Box<dyn Forecaster + Send> = match choice {
            Choice::Lstm(_) => {
                return Err("the LSTM predictor needs the predictive engine (not merged yet)".into());
            }
            Choice::LastValue => Box::new(LastValue::new()),
            Choice::Ewma(a) => Box::new(Ewma::new(*a).map_err(|e| e.to_string())?),
            Choice::SeasonalNaive(p) => Box::new(SeasonalNaive::new(*p).map_err(|e| e.to_string())?),
            Choice::Autopilot(h) => Box::new(Autopilot::new(*h).map_err(|e| e.to_string())?),
        };
        let mut slots = vec![0u32; ids.len()];
        engine.resolve(ids, &mut slots).map_err(|e| e.to_string())?;
        Ok(Shadow {
            forecaster,
            ids: ids.to_vec(),
            slots,
            announced: announced.to_vec(),
            interval_s: engine.config().interval_ns / SEC,
            headroom,
            target,
        })
    }

    /// The predictor's name, for reports.
    pub fn name(&self) -> String {
        self.forecaster.name()
    }

    /// The tick at `now` (ns): closes the intervals and sets the next reservations.
    ///
    /// # Errors
    /// The engine's.
    pub fn tick(&mut self, engine: &mut Engine, now: u64) -> Result<TickReport, String> {
        let mut res = Vec::with_capacity(self.ids.len());
        for (i, &id) in self.ids.iter().enumerate() {
            let u = engine
                .customer(id)
                .map_err(|e| e.to_string())?
                .this_interval;
            self.forecaster
                .observe(i, (u.granted_shadow + u.granted_pool) as f64);
            let f = self.forecaster.forecast(i, 1);
            let mut q = match self.target {
                Target::Mean => f.mean,
                Target::Quantile(l) => f.get(l),
            } * self.headroom;
            let t = now / SEC;
            for a in self.announced.iter().filter(|a| a.customer == i) {
                if a.start_s <= t + self.interval_s && t < a.end_s {
                    q *= a.intensity as f64;
                }
            }
            let rate = q / self.interval_s as f64;
            res.push(Reservation {
                slot: self.slots[i],
                rate: Rate::from_micros_per_sec((rate * 1e6) as u64),
                capacity: q.ceil() as u64,
            });
        }
        let r = engine.tick(now, &res).map_err(|e| e.to_string())?;
        if std::env::var("SB_DEBUG").is_ok() && (now / SEC) % 3600 == 0 {
            let v = engine.customer(self.ids[0]).unwrap();
            eprintln!("t={}h asked={} set={} budget={} cut={} c0 f={:?} rho={} sigma={} last={:?}", now/SEC/3600, r.asked_rate_micros/1_000_000, r.reserved_rate_micros/1_000_000, engine.config().rate_budget()/1_000_000, r.cut_back, self.forecaster.forecast(0,1), v.reserved_rate.as_tokens_per_sec_f64()*60.0, v.shadow_capacity, v.last_interval);
        }
        Ok(r)
    }

    /// Customer `i`'s forecast of its use in the next interval, tokens.
    pub fn forecast(&self, _engine: &Engine, i: usize) -> Option<Quantiles> {
        Some(self.forecaster.forecast(i, 1))
    }
}
