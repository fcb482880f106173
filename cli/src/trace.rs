//! Real traces as workloads.
//!
//! Two CSV formats, told apart by their header:
//! - **per-window** (ServeGen's, `shared/data/servegen/`): `customer,window_start_s,requests,
//!   input_tokens,output_tokens`, one row per customer and window. Within a window, a customer's
//!   requests are spread evenly over the steps (a fractional request carried by a seeded draw)
//!   and its tokens over its requests, with log-normal sizes (shape 0.8) around the window's mean
//!   size. A window with tokens and no requests counts as one request.
//! - **per-request** (the Azure LLM inference trace's, `shared/data/azure-llm-2023/`):
//!   `TIMESTAMP,ContextTokens,GeneratedTokens`, one row per request; the timestamp is
//!   `YYYY-MM-DD HH:MM:SS[.fraction]` or a number of seconds. A request's tokens are context plus
//!   generated. When the file has a `customer` column it names the requester; otherwise (Azure's
//!   trace has no tenant) each request is given to one of `tenants` customers, drawn by a seeded
//!   Zipf(1.1) law, so a few tenants are large and many are small.
//!
//! Contracts come from the trace: a customer's rate is twice its mean use or its 90th-percentile
//! window rate, whichever is larger, with a minute of it as burst (and at least twice its largest
//! request). Customers active in at least 90% of the windows whose window use varies by at most
//! half its mean (coefficient of variation) count as steady; the rest are [`Class::Trace`]. The
//! pool is `pool_factor` times the trace's mean total use.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use shadowbucket::{Contract, Rate};

use crate::workload::rng::Rng;
use crate::workload::{Announced, Batch, Class, CustomerInfo, Pool, Workload};

/// How to turn a trace into a workload.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceOptions {
    /// Seconds per step.
    pub step_s: u64,
    /// Pool rate as a multiple of the trace's mean total use.
    pub pool_factor: f64,
    /// Customers to spread a per-request trace without a customer column over.
    pub tenants: usize,
    /// Seed of the draws (request spreading, sizes, tenants).
    pub seed: u64,
    /// Use at most this many days from the trace's start (None: all of it).
    pub days: Option<f64>,
}

/// A trace loaded as a workload.
pub struct Trace {
    desc: String,
    customers: Vec<CustomerInfo>,
    pool: Pool,
    start_s: u64,
    step_s: u64,
    steps: u64,
    seed: u64,
    source: Source,
}

enum Source {
    /// Per window: window length, and per customer per window (requests, tokens).
    Windows {
        window_s: u64,
        data: Vec<Vec<(f64, f64)>>,
    },
    /// Per request, sorted by time: (seconds since start, customer index, tokens).
    Requests {
        rows: Vec<(f64, u32, u64)>,
        next: usize,
    },
}

/// The longest stretch of a trace simulated: the most `--days` takes.
const MAX_SPAN_S: u64 = crate::simulate::MAX_DAYS * 86_400;

/// The error for a trace (or its `--days`) longer than [`MAX_SPAN_S`].
fn too_long(path: &Path, span_s: f64) -> String {
    format!(
        "{}: the trace spans {:.1} days (is a time or window start mistyped?); at most {} are \
         simulated: choose them with --days",
        path.display(),
        span_s / 86_400.0,
        MAX_SPAN_S / 86_400
    )
}

fn io_err(path: &Path, e: std::io::Error) -> String {
    format!("cannot read {}: {e}", path.display())
}

/// The trimmed fields of data line `no` of `path` (None for a blank line), or an error when it
/// has not as many fields as the header.
fn csv_fields<'l>(
    path: &Path,
    no: usize,
    line: &'l str,
    ncols: usize,
) -> Result<Option<Vec<&'l str>>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let f: Vec<&str> = line.split(',').map(str::trim).collect();
    if f.len() != ncols {
        return Err(format!(
            "{}:{no}: {} fields, the header has {ncols}",
            path.display(),
            f.len(),
        ));
    }
    Ok(Some(f))
}

fn header_index(cols: &[String], names: &[&str]) -> Option<usize> {
    cols.iter()
        .position(|c| names.iter().any(|n| c.eq_ignore_ascii_case(n)))
}

impl Trace {
    /// Loads `path`, telling the format from its header.
    ///
    /// # Errors
    /// A message naming the file (and the line) when it cannot be read or is not one of the two
    /// formats.
    pub fn load(path: &Path, opts: &TraceOptions) -> Result<Trace, String> {
        if opts.step_s == 0 || 60 % opts.step_s != 0 {
            return Err(format!("step must divide 60 seconds, got {}", opts.step_s));
        }
        if opts.tenants == 0 || opts.tenants > 10_000_000 {
            return Err(format!(
                "tenants must be 1..=10000000, got {}",
                opts.tenants
            ));
        }
        if !(opts.pool_factor > 0.0 && opts.pool_factor <= 1000.0) {
            return Err(format!(
                "pool factor must be in (0, 1000], got {}",
                opts.pool_factor
            ));
        }
        let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
        let mut lines = BufReader::new(file).lines();
        let header = match lines.next() {
            None => return Err(format!("{}: empty file, no header", path.display())),
            Some(l) => l.map_err(|e| io_err(path, e))?,
        };
        let cols: Vec<String> = header
            .trim()
            .trim_start_matches('\u{feff}')
            .split(',')
            .map(|s| s.trim().to_string())
            .collect();
        if header_index(&cols, &["window_start_s"]).is_some() {
            Self::load_windows(path, &cols, lines, opts)
        } else if header_index(&cols, &["timestamp", "time", "t"]).is_some() {
            Self::load_requests(path, &cols, lines, opts)
        } else {
            Err(format!(
                "{}: unknown trace format (header `{}`): expected ServeGen's \
                 `customer,window_start_s,requests,input_tokens,output_tokens` or a per-request \
                 `TIMESTAMP,ContextTokens,GeneratedTokens`",
                path.display(),
                header.trim()
            ))
        }
    }

    fn load_windows(
        path: &Path,
        cols: &[String],
        lines: impl Iterator<Item = std::io::Result<String>>,
        opts: &TraceOptions,
    ) -> Result<Trace, String> {
        let need = |names: &[&str]| {
            header_index(cols, names).ok_or_else(|| {
                format!(
                    "{}: missing column `{}`",
                    path.display(),
                    names.join("` or `")
                )
            })
        };
        let ci = need(&["customer"])?;
        let wi = need(&["window_start_s"])?;
        let ri = header_index(cols, &["requests"]);
        let ii = need(&["input_tokens"])?;
        let oi = need(&["output_tokens"])?;
        // customer -> window start -> (requests, tokens)
        let mut rows: BTreeMap<u64, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
        let mut starts = std::collections::BTreeSet::new();
        for (k, line) in lines.enumerate() {
            let line = line.map_err(|e| io_err(path, e))?;
            let no = k + 2;
            let Some(f) = csv_fields(path, no, &line, cols.len())? else {
                continue;
            };
            let int = |i: usize, what: &str| {
                f[i].parse::<u64>().map_err(|_| {
                    format!(
                        "{}:{no}: {what} `{}` is not a whole number",
                        path.display(),
                        f[i]
                    )
                })
            };
            let num = |i: usize, what: &str| match f[i].parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                _ => Err(format!(
                    "{}:{no}: {what} `{}` is not a number >= 0",
                    path.display(),
                    f[i]
                )),
            };
            let c = int(ci, "customer")?;
            let w = int(wi, "window_start_s")?;
            let req = match ri {
                Some(i) => num(i, "requests")?,
                None => 1.0,
            };
            let tok = num(ii, "input_tokens")? + num(oi, "output_tokens")?;
            starts.insert(w);
            if rows.entry(c).or_default().insert(w, (req, tok)).is_some() {
                return Err(format!(
                    "{}:{no}: customer {c} has window {w} twice",
                    path.display()
                ));
            }
        }
        if rows.is_empty() {
            return Err(format!("{}: no rows after the header", path.display()));
        }
        let starts: Vec<u64> = starts.into_iter().collect();
        let window_s = starts
            .windows(2)
            .map(|w| w[1] - w[0])
            .min()
            .unwrap_or(600)
            .max(1);
        if window_s % opts.step_s != 0 {
            return Err(format!(
                "{}: windows of {window_s} s are not a multiple of the {} s step",
                path.display(),
                opts.step_s
            ));
        }
        let start_s = starts[0];
        let mut windows = ((starts[starts.len() - 1] - start_s) / window_s + 1) as usize;
        if let Some(d) = opts.days {
            windows = windows.min(((d * 86_400.0) as u64 / window_s).max(1) as usize);
        }
        let span_s = windows as u128 * u128::from(window_s);
        if span_s > u128::from(MAX_SPAN_S) {
            return Err(too_long(path, span_s as f64));
        }
        let mut data = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        for (id, ws) in rows {
            let mut v = vec![(0.0, 0.0); windows];
            for (w, x) in ws {
                if !(w - start_s).is_multiple_of(window_s) {
                    return Err(format!(
                        "{}: window start {w} is off the {window_s} s grid",
                        path.display()
                    ));
                }
                let k = ((w - start_s) / window_s) as usize;
                if k < windows {
                    v[k] = x;
                }
            }
            ids.push(id);
            data.push(v);
        }
        let per_window_tokens: Vec<Vec<f64>> = data
            .iter()
            .map(|v| v.iter().map(|x| x.1).collect())
            .collect();
        let biggest: Vec<f64> = data
            .iter()
            .map(|v| {
                v.iter()
                    .map(|&(r, t)| t / r.max(1.0) * 4.0)
                    .fold(0.0, f64::max)
            })
            .collect();
        let (customers, pool) = derive_contracts(
            &ids,
            &per_window_tokens,
            &biggest,
            window_s,
            opts.pool_factor,
        );
        let steps = windows as u64 * window_s / opts.step_s;
        Ok(Trace {
            desc: format!(
                "trace {} (per-window): {} customers ({} steady), {} windows of {window_s} s",
                path.display(),
                customers.len(),
                customers
                    .iter()
                    .filter(|c| c.class == Class::Steady)
                    .count(),
                windows
            ),
            customers,
            pool,
            start_s,
            step_s: opts.step_s,
            steps,
            seed: opts.seed,
            source: Source::Windows { window_s, data },
        })
    }

    fn load_requests(
        path: &Path,
        cols: &[String],
        lines: impl Iterator<Item = std::io::Result<String>>,
        opts: &TraceOptions,
    ) -> Result<Trace, String> {
        let ti = header_index(cols, &["timestamp", "time", "t"]).unwrap_or(0);
        let ci = header_index(cols, &["customer", "tenant"]);
        let token_cols: Vec<usize> = [
            &["contexttokens", "input_tokens"][..],
            &["generatedtokens", "output_tokens"][..],
        ]
        .iter()
        .filter_map(|n| header_index(cols, n))
        .collect();
        let token_cols = if token_cols.is_empty() {
            vec![header_index(cols, &["tokens"]).ok_or_else(|| {
                format!(
                    "{}: no token columns (ContextTokens/GeneratedTokens, input_tokens/output_tokens or tokens)",
                    path.display()
                )
            })?]
        } else {
            token_cols
        };
        // Zipf(1.1) over tenants, for traces without a customer column.
        let cdf: Vec<f64> = {
            let mut acc = 0.0;
            let mut v: Vec<f64> = (0..opts.tenants)
                .map(|k| {
                    acc += 1.0 / ((k + 1) as f64).powf(1.1);
                    acc
                })
                .collect();
            let tot = acc;
            v.iter_mut().for_each(|x| *x /= tot);
            v
        };
        let mut ids: Vec<u64> = Vec::new();
        let mut index: BTreeMap<u64, u32> = BTreeMap::new();
        let mut rows = Vec::new();
        for (k, line) in lines.enumerate() {
            let line = line.map_err(|e| io_err(path, e))?;
            let no = k + 2;
            let Some(f) = csv_fields(path, no, &line, cols.len())? else {
                continue;
            };
            let t = parse_time(f[ti]).ok_or_else(|| {
                format!(
                    "{}:{no}: timestamp `{}` is neither `YYYY-MM-DD HH:MM:SS[.f]` nor seconds",
                    path.display(),
                    f[ti]
                )
            })?;
            let mut tokens = 0u64;
            for &i in &token_cols {
                tokens += f[i].parse::<u64>().map_err(|_| {
                    format!(
                        "{}:{no}: `{}` is not a whole number of tokens",
                        path.display(),
                        f[i]
                    )
                })?;
            }
            let id = match ci {
                Some(i) => f[i].parse::<u64>().map_err(|_| {
                    format!(
                        "{}:{no}: customer `{}` is not a whole number",
                        path.display(),
                        f[i]
                    )
                })?,
                None => {
                    let u = Rng::new(opts.seed, k as u64, 17).uniform();
                    cdf.partition_point(|&x| x < u).min(opts.tenants - 1) as u64
                }
            };
            let c = *index.entry(id).or_insert_with(|| {
                ids.push(id);
                (ids.len() - 1) as u32
            });
            rows.push((t, c, tokens.max(1)));
        }
        if rows.is_empty() {
            return Err(format!("{}: no rows after the header", path.display()));
        }
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        let t0 = rows[0].0;
        for r in &mut rows {
            r.0 -= t0;
        }
        if let Some(d) = opts.days {
            let end = d * 86_400.0;
            rows.retain(|r| r.0 < end);
        }
        let span = rows.last().map_or(0.0, |r| r.0);
        if span > MAX_SPAN_S as f64 {
            return Err(too_long(path, span));
        }
        // Contracts from per-minute windows.
        let window_s = 60;
        let windows = (span as u64 / window_s + 1) as usize;
        let mut per = vec![vec![0f64; windows]; ids.len()];
        let mut biggest = vec![0f64; ids.len()];
        for &(t, c, n) in &rows {
            per[c as usize][(t as u64 / window_s) as usize] += n as f64;
            biggest[c as usize] = biggest[c as usize].max(n as f64);
        }
        let (customers, pool) = derive_contracts(&ids, &per, &biggest, window_s, opts.pool_factor);
        let steps = (span as u64 / opts.step_s + 1).max(1);
        Ok(Trace {
            desc: format!(
                "trace {} (per-request): {} requests, {} customers ({} steady){}, {:.1} minutes",
                path.display(),
                rows.len(),
                customers.len(),
                customers
                    .iter()
                    .filter(|c| c.class == Class::Steady)
                    .count(),
                if ci.is_none() {
                    " drawn by Zipf(1.1)"
                } else {
                    ""
                },
                span / 60.0
            ),
            customers,
            pool,
            start_s: 0,
            step_s: opts.step_s,
            steps,
            seed: opts.seed,
            source: Source::Requests { rows, next: 0 },
        })
    }
}

/// Contracts, classes and the pool from per-window use (see the module docs).
fn derive_contracts(
    ids: &[u64],
    per_window: &[Vec<f64>],
    biggest_request: &[f64],
    window_s: u64,
    pool_factor: f64,
) -> (Vec<CustomerInfo>, Pool) {
    let mut total = 0.0;
    let mut customers = Vec::with_capacity(ids.len());
    for (k, (&id, v)) in ids.iter().zip(per_window).enumerate() {
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        total += mean;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let active = v.iter().filter(|&&x| x > 0.0).count() as f64 / n;
        let mut sorted = v.clone();
        sorted.sort_by(f64::total_cmp);
        let p90 = sorted[((sorted.len() - 1) as f64 * 0.9) as usize];
        let rate = ((2.0 * mean).max(p90) / window_s as f64).ceil().max(1.0) as u64;
        let burst = (rate * 60).max((2.0 * biggest_request[k]).ceil() as u64);
        let steady = active >= 0.9 && var.sqrt() <= 0.5 * mean;
        customers.push(CustomerInfo {
            id,
            class: if steady { Class::Steady } else { Class::Trace },
            contract: Contract::new(burst.max(1), Rate::tokens_per_sec(rate)),
        });
    }
    let rate = ((total / window_s as f64) * pool_factor).ceil().max(1.0) as u64;
    (
        customers,
        Pool {
            burst: rate * 60,
            rate,
        },
    )
}

/// Seconds from `YYYY-MM-DD HH:MM:SS[.fraction]` (days since 1970, proleptic Gregorian) or a
/// plain number.
pub fn parse_time(s: &str) -> Option<f64> {
    if let Ok(v) = s.parse::<f64>() {
        return v.is_finite().then_some(v);
    }
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, dd) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.trim_end_matches('Z').split(':');
    let (h, mi) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec = t.next()?.parse::<f64>().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&dd) || h > 23 || mi > 59 || sec >= 61.0 {
        return None;
    }
    // days from civil (Howard Hinnant's algorithm)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60) as f64 + sec)
}

impl Workload for Trace {
    fn describe(&self) -> String {
        self.desc.clone()
    }

    fn customers(&self) -> &[CustomerInfo] {
        &self.customers
    }

    fn announced(&self) -> &[Announced] {
        &[]
    }

    fn pool(&self) -> Pool {
        self.pool
    }

    fn start_s(&self) -> u64 {
        self.start_s
    }

    fn step_s(&self) -> u64 {
        self.step_s
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn fill(&mut self, step: u64, out: &mut Batch) {
        out.clear();
        let step_s = self.step_s;
        match &mut self.source {
            Source::Windows { window_s, data } => {
                let w = (step * step_s / *window_s) as usize;
                let share = step_s as f64 / *window_s as f64;
                for (c, v) in data.iter().enumerate() {
                    let Some(&(req, tok)) = v.get(w) else {
                        continue;
                    };
                    if tok <= 0.0 {
                        continue;
                    }
                    let req = req.max(1.0);
                    let mut r = Rng::new(self.seed, c as u64, step);
                    let lambda = req * share;
                    let mut k = lambda.floor() as u64 + (r.uniform() < lambda.fract()) as u64;
                    let mut size = tok / req;
                    if k > 32 {
                        size *= k as f64 / 32.0;
                        k = 32;
                    }
                    const SIGMA: f64 = 0.8;
                    for _ in 0..k {
                        let x = size * (SIGMA * r.normal() - 0.5 * SIGMA * SIGMA).exp();
                        out.push(c, (x.round() as u64).max(1));
                    }
                }
            }
            Source::Requests { rows, next } => {
                if step == 0 {
                    *next = 0;
                }
                let end = ((step + 1) * step_s) as f64;
                while *next < rows.len() && rows[*next].0 < end {
                    let (_, c, n) = rows[*next];
                    out.push(c as usize, n);
                    *next += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-02 00:00:01"), Some(86_401.0));
        let a = parse_time("2023-11-16 18:17:03.9799600").unwrap();
        let b = parse_time("2023-11-16 18:17:04.0319600").unwrap();
        assert!((b - a - 0.052).abs() < 1e-6);
        assert_eq!(parse_time("12.5"), Some(12.5));
        assert_eq!(parse_time("2023-13-01 00:00:00"), None);
        assert_eq!(parse_time("yesterday"), None);
    }
}
