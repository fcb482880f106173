//! The built-in synthetic workload: seeded, deterministic, and shaped like an LLM API's traffic.
//!
//! Customers come in five kinds ([`Class`]): steady ones (flat use, well inside their contract:
//! what reservations are for), rhythmic ones (a strong daily rhythm, quieter weekends, their
//! peak shifted by up to three hours), campaign customers (rhythmic, plus campaigns of one to four
//! hours at three to six times their usual use, announced to the engine as events), spiky ones
//! (a few sudden spikes a day at 8-25x, announced to nobody) and noisy neighbours (large,
//! jittery, with heavy-tailed requests and frequent short bursts). Every customer's use also
//! wanders minute to minute (a log-normal AR(1) factor). Request sizes are log-normal per
//! customer (heavy-tailed: a noisy neighbour's largest requests are hundreds of times its median).
//!
//! The pool is sized at `pool_factor` (default 1.1) times the expected average total demand of a
//! weekday, without spikes and campaigns, so the daily peak and the bursts contend for it.
//!
//! Every draw is keyed by (seed, customer, step) ([`super::rng`]), so the requests do not depend
//! on evaluation order.

use shadowbucket::{Contract, Rate};

use super::rng::Rng;
use super::{Announced, Batch, Class, CustomerInfo, DAY_S, Pool, Workload};

/// Parameters of the synthetic workload.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticConfig {
    /// Customers.
    pub customers: usize,
    /// Simulated days (fractions allowed).
    pub days: f64,
    /// Day of the week the run starts (0 = Monday .. 6 = Sunday), at 00:00.
    pub start_day: u64,
    /// Seed of every random draw.
    pub seed: u64,
    /// Seconds per step (requests are decided in one batch per step).
    pub step_s: u64,
    /// Pool rate as a multiple of the expected average weekday demand.
    pub pool_factor: f64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            customers: 5_000,
            days: 1.0,
            start_day: 4,
            seed: 7,
            step_s: 10,
            pool_factor: 1.1,
        }
    }
}

/// A per-customer window of changed use (a spike or a campaign), in workload seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Window {
    start_s: u64,
    end_s: u64,
    mult: f32,
}

#[derive(Clone, Copy, Debug)]
struct Params {
    /// Mean use, tokens per second, before the rhythm.
    mean: f32,
    /// Median request size, tokens.
    size_median: f32,
    /// Log-normal shape of request sizes.
    size_sigma: f32,
    /// Daily rhythm amplitude.
    amp: f32,
    /// Weekend multiplier.
    weekend: f32,
    /// Peak shift, hours (-3 ..= 3).
    phase: i8,
    /// Log-normal AR(1) noise: stationary standard deviation.
    noise: f32,
}

/// The synthetic workload (see the module docs).
pub struct Synthetic {
    cfg: SyntheticConfig,
    customers: Vec<CustomerInfo>,
    params: Vec<Params>,
    /// Per customer: spikes and campaigns, sorted, not overlapping.
    windows: Vec<Vec<Window>>,
    cursor: Vec<u32>,
    announced: Vec<Announced>,
    pool: Pool,
    /// Per customer: the AR(1) log-noise of the current minute.
    z: Vec<f32>,
    minute: u64,
}

/// The daily shape at hour-of-day `h` for a customer whose peak is shifted by `phase` hours.
fn day_wave(h: f64, phase: i8) -> f64 {
    (std::f64::consts::TAU * (h - 14.0 - phase as f64) / 24.0).cos()
}

fn weekend(t_s: u64) -> bool {
    (t_s / DAY_S) % 7 >= 5
}

impl Synthetic {
    /// Builds the customers, their contracts, spikes and campaigns, and the pool.
    ///
    /// # Errors
    /// A message for a configuration out of range.
    pub fn new(cfg: SyntheticConfig) -> Result<Self, String> {
        if cfg.customers == 0 || cfg.customers > 50_000_000 {
            return Err(format!(
                "customers must be 1..=50000000, got {}",
                cfg.customers
            ));
        }
        if !(cfg.days > 0.0 && cfg.days <= 366.0) {
            return Err(format!("days must be in (0, 366], got {}", cfg.days));
        }
        if cfg.step_s == 0 || 60 % cfg.step_s != 0 {
            return Err(format!(
                "step must divide 60 seconds (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60), got {}",
                cfg.step_s
            ));
        }
        if !(cfg.pool_factor > 0.0 && cfg.pool_factor <= 1000.0) {
            return Err(format!(
                "pool factor must be in (0, 1000], got {}",
                cfg.pool_factor
            ));
        }
        if cfg.start_day > 6 {
            return Err(format!(
                "start day must be 0 (Monday) ..= 6 (Sunday), got {}",
                cfg.start_day
            ));
        }
        let n = cfg.customers;
        let start = cfg.start_day * DAY_S;
        let end = start + (cfg.days * DAY_S as f64) as u64;
        let mut customers = Vec::with_capacity(n);
        let mut params = Vec::with_capacity(n);
        let mut windows = Vec::with_capacity(n);
        let mut announced = Vec::new();
        for i in 0..n {
            let mut r = Rng::new(cfg.seed, i as u64, u64::MAX);
            let u = r.uniform();
            let class = match u {
                _ if u < 0.40 => Class::Steady,
                _ if u < 0.65 => Class::Rhythmic,
                _ if u < 0.75 => Class::Campaign,
                _ if u < 0.90 => Class::Spiky,
                _ => Class::Noisy,
            };
            let mut mean = 10f64.powf(r.range(0.5, 2.5)) as f32;
            let phase = (r.uniform() * 7.0) as i8 - 3;
            // (daily amplitude, weekend multiplier, size shape, minute noise, contract multiple,
            // requests per 10 s)
            let (amp, wkend, sigma, noise, contract_x, per10) = match class {
                Class::Steady => (0.05, 1.0, 0.3, 0.05, 2.0, r.range(1.0, 3.0)),
                Class::Rhythmic => (0.6, 0.4, 0.7, 0.15, 2.0, r.range(0.5, 3.0)),
                Class::Campaign => (0.4, 0.6, 0.7, 0.15, 7.0, r.range(0.5, 3.0)),
                Class::Spiky => (0.2, 0.8, 0.8, 0.2, 6.0, r.range(0.3, 2.0)),
                Class::Noisy | Class::Trace => {
                    mean *= 4.0;
                    (0.3, 0.8, 1.3, 0.6, 12.0, r.range(1.0, 4.0))
                }
            };
            // Request sizes: log-normal with the median that gives `per10` requests per 10 s
            // on average.
            let size_median =
                (mean as f64 * 10.0 / per10 / (0.5f64 * sigma * sigma).exp()).max(1.0) as f32;
            let p = Params {
                mean,
                size_median,
                size_sigma: sigma as f32,
                amp: amp as f32,
                weekend: wkend as f32,
                phase,
                noise: noise as f32,
            };
            let mut w = Vec::new();
            match class {
                Class::Campaign => {
                    let mut day = start / DAY_S;
                    while day * DAY_S < end {
                        if r.uniform() < 0.6 {
                            let s = day * DAY_S + (r.range(8.0, 18.0) * 3600.0) as u64;
                            let d = (r.range(1.0, 4.0) * 3600.0) as u64;
                            let mult = r.range(3.0, 6.0) as f32;
                            if s < end {
                                w.push(Window {
                                    start_s: s,
                                    end_s: s + d,
                                    mult,
                                });
                                announced.push(Announced {
                                    customer: i,
                                    start_s: s,
                                    end_s: s + d,
                                    intensity: mult,
                                });
                            }
                        }
                        day += 1;
                    }
                }
                Class::Spiky | Class::Noisy => {
                    let (every_h, dur_min, mult) = if class == Class::Spiky {
                        (12.0, (5.0, 30.0), (8.0, 25.0))
                    } else {
                        (4.0, (2.0, 10.0), (3.0, 8.0))
                    };
                    let mut t = start as f64 + r.exponential(every_h * 3600.0);
                    while (t as u64) < end {
                        let d = r.range(dur_min.0, dur_min.1) * 60.0;
                        w.push(Window {
                            start_s: t as u64,
                            end_s: (t + d) as u64,
                            mult: r.range(mult.0, mult.1) as f32,
                        });
                        t += d + r.exponential(every_h * 3600.0);
                    }
                }
                _ => {}
            }
            // Contract: a multiple of the customer's rhythmic peak; a minute of it as burst, and
            // room for all but the rarest of its requests.
            let rate = (contract_x * mean as f64 * (1.0 + amp)).ceil() as u64;
            let big = size_median as f64 * (3.0 * sigma).exp();
            let burst = (rate * 60).max(big.ceil() as u64);
            customers.push(CustomerInfo {
                id: 10_000 + i as u64,
                class,
                contract: Contract::new(burst, Rate::tokens_per_sec(rate.max(1)))
                    .with_weight(if class == Class::Steady { 2 } else { 1 }),
            });
            params.push(p);
            windows.push(w);
        }
        // Pool: the expected average demand of a weekday (every half hour of day 0).
        let mut avg = 0.0;
        for k in 0..48 {
            let h = k as f64 * 0.5;
            let tot: f64 = params
                .iter()
                .map(|p| {
                    let noise_mean = (0.5 * (p.noise as f64).powi(2)).exp();
                    p.mean as f64 * (1.0 + p.amp as f64 * day_wave(h, p.phase)) * noise_mean
                })
                .sum();
            avg += tot / 48.0;
        }
        let pool_rate = (avg * cfg.pool_factor).ceil().max(1.0) as u64;
        // A minute of supply as burst: room for a tick's worth of shadow capacity.
        let pool = Pool {
            burst: pool_rate * 60,
            rate: pool_rate,
        };
        Ok(Synthetic {
            cursor: vec![0; n],
            z: vec![0.0; n],
            minute: u64::MAX,
            cfg,
            customers,
            params,
            windows,
            announced,
            pool,
        })
    }

    /// Customers of each class, in [`Class::ALL`] order.
    pub fn class_counts(&self) -> [usize; 6] {
        let mut k = [0; 6];
        for c in &self.customers {
            k[Class::ALL.iter().position(|x| *x == c.class).unwrap_or(5)] += 1;
        }
        k
    }

    /// Unannounced spikes and bursts in the run (spiky customers and noisy neighbours).
    pub fn unannounced(&self) -> usize {
        self.windows
            .iter()
            .zip(&self.customers)
            .filter(|(_, c)| matches!(c.class, Class::Spiky | Class::Noisy))
            .map(|(w, _)| w.len())
            .sum()
    }

    fn advance_noise(&mut self, minute: u64) {
        const RHO: f32 = 0.9;
        let k = (1.0 - RHO * RHO).sqrt();
        let seed = self.cfg.seed;
        for (i, (z, p)) in self.z.iter_mut().zip(&self.params).enumerate() {
            let mut r = Rng::new(seed ^ 0xa5a5, i as u64, minute);
            if self.minute == u64::MAX {
                *z = p.noise * r.normal() as f32;
            } else {
                *z = RHO * *z + k * p.noise * r.normal() as f32;
            }
        }
        self.minute = minute;
    }
}

impl Workload for Synthetic {
    fn describe(&self) -> String {
        let k = self.class_counts();
        format!(
            "synthetic workload: {} customers ({} steady, {} rhythmic, {} campaign, {} spiky, {} noisy), \
             {} days from {} 00:00, {} announced campaigns, {} unannounced spikes, seed {}",
            self.customers.len(),
            k[0],
            k[1],
            k[2],
            k[3],
            k[4],
            self.cfg.days,
            [
                "Monday",
                "Tuesday",
                "Wednesday",
                "Thursday",
                "Friday",
                "Saturday",
                "Sunday"
            ][self.cfg.start_day as usize],
            self.announced.len(),
            self.unannounced(),
            self.cfg.seed
        )
    }

    fn customers(&self) -> &[CustomerInfo] {
        &self.customers
    }

    fn announced(&self) -> &[Announced] {
        &self.announced
    }

    fn pool(&self) -> Pool {
        self.pool
    }

    fn start_s(&self) -> u64 {
        self.cfg.start_day * DAY_S
    }

    fn step_s(&self) -> u64 {
        self.cfg.step_s
    }

    fn steps(&self) -> u64 {
        ((self.cfg.days * DAY_S as f64) as u64 / self.cfg.step_s).max(1)
    }

    fn fill(&mut self, step: u64, out: &mut Batch) {
        out.clear();
        if step == 0 {
            self.cursor.fill(0);
            self.minute = u64::MAX;
        }
        let t = self.start_s() + step * self.cfg.step_s;
        let minute = t / 60;
        if minute != self.minute {
            self.advance_noise(minute);
        }
        let h = (t % DAY_S) as f64 / 3600.0;
        let wave: [f64; 7] = std::array::from_fn(|k| day_wave(h, k as i8 - 3));
        let is_weekend = weekend(t);
        let step_s = self.cfg.step_s as f64;
        let seed = self.cfg.seed;
        for i in 0..self.customers.len() {
            let p = self.params[i];
            let mut rate = p.mean as f64 * (1.0 + p.amp as f64 * wave[(p.phase + 3) as usize]);
            if is_weekend {
                rate *= p.weekend as f64;
            }
            rate *= (self.z[i] as f64).exp();
            let w = &self.windows[i];
            let cur = &mut self.cursor[i];
            while (*cur as usize) < w.len() && w[*cur as usize].end_s <= t {
                *cur += 1;
            }
            if let Some(win) = w.get(*cur as usize)
                && win.start_s <= t
            {
                rate *= win.mult as f64;
            }
            let sigma = p.size_sigma as f64;
            let mean_size = p.size_median as f64 * (0.5 * sigma * sigma).exp();
            let lambda = rate * step_s / mean_size;
            let mut r = Rng::new(seed, i as u64, step);
            let mut k = lambda.floor() as u64 + (r.uniform() < lambda.fract()) as u64;
            let mut scale = 1.0;
            if k > 32 {
                scale = lambda / 32.0;
                k = 32;
            }
            for _ in 0..k {
                let size = p.size_median as f64 * (sigma * r.normal()).exp() * scale;
                out.push(i, (size.round() as u64).max(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Synthetic {
        Synthetic::new(SyntheticConfig {
            customers: 300,
            days: 0.25,
            ..SyntheticConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn deterministic() {
        let (mut a, mut b) = (small(), small());
        let (mut x, mut y) = (Batch::default(), Batch::default());
        for s in [0, 1, 2, 100, 101] {
            a.fill(s, &mut x);
            b.fill(s, &mut y);
            assert_eq!(x.tokens, y.tokens);
            assert_eq!(x.who, y.who);
        }
        // Replaying from step 0 gives the same requests again.
        a.fill(0, &mut x);
        let mut c = small();
        c.fill(0, &mut y);
        assert_eq!(x.tokens, y.tokens);
    }

    #[test]
    fn every_class_and_a_contended_pool() {
        // A whole day, so that campaigns (8:00-18:00) fall in it.
        let w = Synthetic::new(SyntheticConfig {
            customers: 300,
            ..SyntheticConfig::default()
        })
        .unwrap();
        let k = w.class_counts();
        assert!(k[..5].iter().all(|&n| n > 0), "{k:?}");
        // The pool covers the average, not the sum of the contracts.
        let contracts: u64 = w
            .customers()
            .iter()
            .map(|c| c.contract.rate.micros() / 1_000_000)
            .sum();
        assert!(w.pool().rate < contracts / 2);
        assert!(!w.announced().is_empty());
    }

    #[test]
    fn steady_demand_is_near_its_mean() {
        let mut w = small();
        let mut b = Batch::default();
        let n = w.customers().len();
        let mut asked = vec![0f64; n];
        let steps = 360; // one hour
        for s in 0..steps {
            w.fill(s, &mut b);
            for (&c, &t) in b.who.iter().zip(&b.tokens) {
                asked[c as usize] += t as f64;
            }
        }
        let mut within = 0;
        let mut steady = 0;
        for (i, c) in w.customers().iter().enumerate() {
            if c.class == Class::Steady {
                steady += 1;
                let ratio = asked[i] / (w.params[i].mean as f64 * 3600.0);
                within += (0.6..1.5).contains(&ratio) as usize;
            }
        }
        assert!(within * 10 >= steady * 9, "{within}/{steady}");
    }

    #[test]
    fn bad_config_is_refused() {
        for cfg in [
            SyntheticConfig {
                customers: 0,
                ..SyntheticConfig::default()
            },
            SyntheticConfig {
                step_s: 7,
                ..SyntheticConfig::default()
            },
            SyntheticConfig {
                days: 0.0,
                ..SyntheticConfig::default()
            },
        ] {
            assert!(Synthetic::new(cfg).is_err());
        }
    }
}
