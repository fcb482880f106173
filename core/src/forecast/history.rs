//! Per-customer usage histories: one dense series of token counts per customer, in fixed windows.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::error::{Error, Result};

/// The usage of a set of customers over the same consecutive windows.
///
/// Customer `c` (an index in `0..num_customers()`) has `series(c)[t]` tokens in window `t`, which
/// covers `[start_s + t * window_s, start_s + (t + 1) * window_s)` seconds. Every customer has a value
/// for every window (the series are dense and all the same length); values are finite and `>= 0`.
///
/// A history may also carry request counts per customer and window ([`UsageHistory::requests`]),
/// with the same shape; the ServeGen loader fills them from the trace's `requests` column.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageHistory {
    customers: Vec<u64>,
    start_s: u64,
    window_s: u64,
    series: Vec<Vec<f64>>,
    requests: Option<Vec<Vec<f64>>>,
}

impl UsageHistory {
    /// A history from its parts: `series[c]` is the usage of the customer with id `customers[c]`.
    ///
    /// Refuses (with [`Error::InvalidArgument`]) a zero `window_s`, no customers, duplicate ids, series
    /// of different lengths or of length zero, and values that are negative or not finite.
    pub fn new(
        customers: Vec<u64>,
        start_s: u64,
        window_s: u64,
        series: Vec<Vec<f64>>,
    ) -> Result<Self> {
        if window_s == 0 {
            return Err(Error::invalid("usage history: window length must be > 0 s"));
        }
        if customers.is_empty() {
            return Err(Error::invalid("usage history: no customers"));
        }
        if customers.len() != series.len() {
            return Err(Error::LengthMismatch {
                what: "series",
                got: series.len(),
                expected: customers.len(),
            });
        }
        let mut sorted = customers.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::invalid(format!(
                "usage history: customer {} appears twice",
                w[0]
            )));
        }
        let len = series[0].len();
        if len == 0 {
            return Err(Error::invalid("usage history: series have no windows"));
        }
        for (id, s) in customers.iter().zip(&series) {
            if s.len() != len {
                return Err(Error::invalid(format!(
                    "usage history: ragged series: customer {id} has {} windows, customer {} has {len}",
                    s.len(),
                    customers[0]
                )));
            }
            if let Some((t, v)) = s
                .iter()
                .enumerate()
                .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
            {
                return Err(Error::invalid(format!(
                    "usage history: customer {id}, window {t}: usage {v} is not a finite value >= 0"
                )));
            }
        }
        let end = (len as u128) * u128::from(window_s) + u128::from(start_s);
        if end > u128::from(u64::MAX) {
            return Err(Error::invalid(
                "usage history: windows run past u64::MAX seconds",
            ));
        }
        Ok(UsageHistory {
            customers,
            start_s,
            window_s,
            series,
            requests: None,
        })
    }

    /// The same history with request counts: `requests[c][t]` requests of customer index `c` in
    /// window `t`.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] or [`Error::InvalidArgument`] when the shape differs from the
    /// token series' or a count is negative or not finite.
    pub fn with_requests(mut self, requests: Vec<Vec<f64>>) -> Result<Self> {
        if requests.len() != self.series.len() {
            return Err(Error::LengthMismatch {
                what: "requests",
                got: requests.len(),
                expected: self.series.len(),
            });
        }
        for (c, r) in requests.iter().enumerate() {
            if r.len() != self.num_windows() {
                return Err(Error::invalid(format!(
                    "usage history: customer {} has {} request windows, expected {}",
                    self.customers[c],
                    r.len(),
                    self.num_windows()
                )));
            }
            if let Some((t, v)) = r
                .iter()
                .enumerate()
                .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
            {
                return Err(Error::invalid(format!(
                    "usage history: customer {}, window {t}: requests {v} is not a finite value >= 0",
                    self.customers[c]
                )));
            }
        }
        self.requests = Some(requests);
        Ok(self)
    }

    /// Loads a ServeGen per-tenant trace (`/work/shared/data/servegen/*.csv` in this project).
    ///
    /// The file is a CSV with a header naming at least the columns `customer`, `window_start_s`,
    /// `input_tokens` and `output_tokens` (in any order; other columns are ignored, except an
    /// optional `requests`, which becomes [`UsageHistory::requests`]).
    /// A customer's usage in a window is `input_tokens + output_tokens`. Rows may come in any order;
    /// customers are sorted by id (customer index `c` is the `c`-th smallest id). The window length
    /// is the smallest gap between distinct window starts, and the history starts at the smallest one.
    ///
    /// Errors: [`Error::Io`] when the file cannot be opened or read; [`Error::InvalidArgument`] (with
    /// the path and line) for an empty file, a missing column, a row with the wrong number of fields,
    /// a field that is not a number (ids and starts: whole numbers; tokens: finite numbers `>= 0`),
    /// fewer than two distinct window starts, starts off the window grid, a customer with the same
    /// window twice, and ragged customers (one lacks a window that another has).
    pub fn from_servegen_csv(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Self::from_servegen_reader(BufReader::new(file), path)
    }

    /// [`UsageHistory::from_servegen_csv`] on any reader; `source` names it in errors (and in
    /// [`Error::Io`]).
    pub fn from_servegen_reader(reader: impl BufRead, source: &Path) -> Result<Self> {
        let what = source.display();
        let bad = |line: usize, msg: String| Error::invalid(format!("{what}:{line}: {msg}"));
        let mut lines = reader.lines().enumerate();

        // Header.
        let header = loop {
            match lines.next() {
                None => return Err(Error::invalid(format!("{what}: empty file, no header"))),
                Some((_, Err(e))) => return Err(Error::io(source, e)),
                Some((_, Ok(l))) if l.trim().is_empty() => continue,
                Some((i, Ok(l))) => break (i + 1, l),
            }
        };
        let names: Vec<String> = header
            .1
            .trim_start_matches('\u{feff}')
            .split(',')
            .map(|s| s.trim().to_string())
            .collect();
        let col = |name: &str| {
            names.iter().position(|n| n == name).ok_or_else(|| {
                bad(
                    header.0,
                    format!("missing column `{name}` (header has: {})", names.join(", ")),
                )
            })
        };
        let (c_cust, c_start, c_in, c_out) = (
            col("customer")?,
            col("window_start_s")?,
            col("input_tokens")?,
            col("output_tokens")?,
        );
        let c_req = names.iter().position(|n| n == "requests");

        // Rows: (customer, start) -> (tokens, requests), with duplicate detection.
        let mut rows: BTreeMap<u64, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
        for (i, line) in lines {
            let line_no = i + 1;
            let line = line.map_err(|e| Error::io(source, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() != names.len() {
                return Err(bad(
                    line_no,
                    format!("{} fields, the header has {}", fields.len(), names.len()),
                ));
            }
            let whole = |c: usize| {
                fields[c].parse::<u64>().map_err(|_| {
                    bad(
                        line_no,
                        format!(
                            "column `{}`: `{}` is not a whole number",
                            names[c], fields[c]
                        ),
                    )
                })
            };
            let tokens = |c: usize| match fields[c].parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                _ => Err(bad(
                    line_no,
                    format!(
                        "column `{}`: `{}` is not a finite number >= 0",
                        names[c], fields[c]
                    ),
                )),
            };
            let (customer, start) = (whole(c_cust)?, whole(c_start)?);
            let used = tokens(c_in)? + tokens(c_out)?;
            let reqs = match c_req {
                Some(c) => tokens(c)?,
                None => 0.0,
            };
            if rows
                .entry(customer)
                .or_default()
                .insert(start, (used, reqs))
                .is_some()
            {
                return Err(bad(
                    line_no,
                    format!("customer {customer} has window_start_s {start} twice"),
                ));
            }
        }
        if rows.is_empty() {
            return Err(Error::invalid(format!("{what}: no data rows")));
        }

        // The window grid.
        let mut starts: Vec<u64> = rows.values().flat_map(|m| m.keys().copied()).collect();
        starts.sort_unstable();
        starts.dedup();
        if starts.len() < 2 {
            return Err(Error::invalid(format!(
                "{what}: need at least two distinct window starts to infer the window length"
            )));
        }
        let first = starts[0];
        let window_s = starts.windows(2).map(|w| w[1] - w[0]).min().unwrap_or(1);
        if let Some(s) = starts
            .iter()
            .find(|&&s| !(s - first).is_multiple_of(window_s))
        {
            return Err(Error::invalid(format!(
                "{what}: window_start_s {s} is not on the grid of {window_s} s windows from {first}"
            )));
        }
        let last = starts[starts.len() - 1];
        let num_windows = usize::try_from((last - first) / window_s + 1)
            .map_err(|_| Error::invalid(format!("{what}: too many windows")))?;

        // Dense series; every customer must have every window from first to last.
        let mut customers = Vec::with_capacity(rows.len());
        let mut series = Vec::with_capacity(rows.len());
        let mut requests = Vec::with_capacity(rows.len());
        for (customer, m) in rows {
            // Its starts are on the grid, so fewer than the grid's means one is lacking: the
            // first gap in its own (sorted) starts, found before anything grid-sized is
            // allocated (one far-off start, a typo, would make the grid huge). With all of
            // them, its windows in key order are the grid's.
            if m.len() != num_windows {
                let t = m
                    .keys()
                    .zip(0u64..)
                    .find(|&(&k, t)| k != first + t * window_s)
                    .map_or(m.len() as u64, |(_, t)| t);
                return Err(Error::invalid(format!(
                    "{what}: ragged customers: customer {customer} has {} windows and lacks \
                     window_start_s {} (the trace spans {num_windows} windows of {window_s} s \
                     from {first})",
                    m.len(),
                    first + t * window_s
                )));
            }
            let (s, r): (Vec<f64>, Vec<f64>) = m.into_values().unzip();
            customers.push(customer);
            series.push(s);
            requests.push(r);
        }
        let h = Self::new(customers, first, window_s, series)?;
        if c_req.is_some() {
            h.with_requests(requests)
        } else {
            Ok(h)
        }
    }

    /// The number of customers.
    pub fn num_customers(&self) -> usize {
        self.customers.len()
    }

    /// The number of windows (the length of every series).
    pub fn num_windows(&self) -> usize {
        self.series[0].len()
    }

    /// The customers' ids, by customer index.
    pub fn customers(&self) -> &[u64] {
        &self.customers
    }

    /// The start of window 0, in seconds (of the trace's clock).
    pub fn start_s(&self) -> u64 {
        self.start_s
    }

    /// The length of one window, in seconds.
    pub fn window_s(&self) -> u64 {
        self.window_s
    }

    /// The usage of customer index `c`, one value per window, or `None` when `c` is out of range.
    pub fn series(&self, c: usize) -> Option<&[f64]> {
        self.series.get(c).map(Vec::as_slice)
    }

    /// All series, by customer index.
    pub fn all_series(&self) -> &[Vec<f64>] {
        &self.series
    }

    /// The request counts of customer index `c`, one per window, when the history has them
    /// (`None` without request counts or when `c` is out of range).
    pub fn requests(&self, c: usize) -> Option<&[f64]> {
        self.requests.as_ref()?.get(c).map(Vec::as_slice)
    }

    /// Whether the history carries request counts.
    pub fn has_requests(&self) -> bool {
        self.requests.is_some()
    }

    /// Splits into windows `0..k` (train) and `k..` (test), the same customers in both; the second
    /// part starts at `start_s + k * window_s`. Both parts must be non-empty: `0 < k < num_windows()`,
    /// else [`Error::InvalidArgument`].
    pub fn split_at_window(&self, k: usize) -> Result<(UsageHistory, UsageHistory)> {
        let n = self.num_windows();
        if k == 0 || k >= n {
            return Err(Error::invalid(format!(
                "split_at_window({k}): need 0 < k < {n} (the number of windows)"
            )));
        }
        let (head, tail): (Vec<_>, Vec<_>) = self
            .series
            .iter()
            .map(|s| (s[..k].to_vec(), s[k..].to_vec()))
            .unzip();
        let (req_head, req_tail) = match &self.requests {
            Some(r) => {
                let (a, b): (Vec<_>, Vec<_>) =
                    r.iter().map(|s| (s[..k].to_vec(), s[k..].to_vec())).unzip();
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        let tail_start = self.start_s + (k as u64) * self.window_s;
        Ok((
            UsageHistory {
                customers: self.customers.clone(),
                start_s: self.start_s,
                window_s: self.window_s,
                series: head,
                requests: req_head,
            },
            UsageHistory {
                customers: self.customers.clone(),
                start_s: tail_start,
                window_s: self.window_s,
                series: tail,
                requests: req_tail,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<UsageHistory> {
        UsageHistory::from_servegen_reader(text.as_bytes(), Path::new("test.csv"))
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn parses_unordered_rows_and_sums_tokens() {
        let h = parse(
            "customer,window_start_s,requests,input_tokens,output_tokens\n\
             7,600,1,10,5\n\
             3,0,0,0,0\n\
             7,0,2,1,2\n\
             3,600,4,100,1.5\n",
        )
        .unwrap();
        assert_eq!(h.customers(), &[3, 7]);
        assert_eq!(h.window_s(), 600);
        assert_eq!(h.start_s(), 0);
        assert_eq!(h.num_windows(), 2);
        assert_eq!(h.series(0).unwrap(), &[0.0, 101.5]);
        assert_eq!(h.series(1).unwrap(), &[3.0, 15.0]);
        assert!(h.series(2).is_none());
        assert_eq!(h.requests(0).unwrap(), &[0.0, 4.0]);
        assert_eq!(h.requests(1).unwrap(), &[2.0, 1.0]);
        let (a, b) = h.split_at_window(1).unwrap();
        assert_eq!(
            (a.requests(0).unwrap(), b.requests(0).unwrap()),
            (&[0.0][..], &[4.0][..])
        );
    }

    #[test]
    fn column_order_is_free() {
        let h = parse("output_tokens,customer,input_tokens,window_start_s\n1,0,2,60\n4,0,8,120\n")
            .unwrap();
        assert_eq!((h.start_s(), h.window_s()), (60, 60));
        assert_eq!(h.series(0).unwrap(), &[3.0, 12.0]);
        assert!(!h.has_requests() && h.requests(0).is_none());
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        assert!(err("").contains("empty file"));
        assert!(
            err("customer,window_start_s,input_tokens\n0,0,1\n")
                .contains("missing column `output_tokens`")
        );
        let h = "customer,window_start_s,input_tokens,output_tokens\n";
        assert!(err(&format!("{h}0,0,1,x\n")).contains("`x` is not a finite number"));
        assert!(err(&format!("{h}0,0,1,-1\n")).contains("not a finite number >= 0"));
        assert!(err(&format!("{h}0,0,1,NaN\n")).contains("not a finite number >= 0"));
        assert!(err(&format!("{h}a,0,1,1\n")).contains("`a` is not a whole number"));
        assert!(err(&format!("{h}0,0,1\n")).contains("3 fields, the header has 4"));
        assert!(err(h).contains("no data rows"));
        assert!(err(&format!("{h}0,0,1,1\n")).contains("at least two distinct"));
        assert!(err(&format!("{h}0,0,1,1\n0,0,2,2\n")).contains("twice"));
        assert!(err(&format!("{h}0,0,1,1\n0,600,1,1\n0,1000,1,1\n")).contains("not on the grid"));
        let ragged = err(&format!("{h}0,0,1,1\n0,600,1,1\n1,0,1,1\n"));
        assert!(
            ragged.contains("ragged") && ragged.contains("customer 1"),
            "{ragged}"
        );
        // A gap in every customer is also a missing window.
        assert!(err(&format!("{h}0,0,1,1\n0,600,1,1\n0,1800,1,1\n")).contains("lacks window"));
    }

    #[test]
    fn a_far_off_window_start_is_an_error_not_an_allocation() {
        // One mistyped start puts the grid's end 10^13 windows out: every customer lacks most
        // of them, which is said before anything that large is allocated.
        let h = "customer,window_start_s,input_tokens,output_tokens\n";
        let e = err(&format!("{h}0,0,1,1\n0,600,1,1\n0,6000000000000000,1,1\n"));
        assert!(
            e.contains("ragged") && e.contains("lacks window_start_s 1200"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_is_io_error() {
        let e = UsageHistory::from_servegen_csv("/nonexistent/dir/x.csv").unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
    }

    #[test]
    fn new_validates() {
        assert!(UsageHistory::new(vec![1], 0, 0, vec![vec![1.0]]).is_err());
        assert!(UsageHistory::new(vec![1, 1], 0, 1, vec![vec![1.0], vec![1.0]]).is_err());
        assert!(UsageHistory::new(vec![1, 2], 0, 1, vec![vec![1.0], vec![1.0, 2.0]]).is_err());
        assert!(UsageHistory::new(vec![1], 0, 1, vec![vec![f64::INFINITY]]).is_err());
        assert!(UsageHistory::new(vec![1], 0, 1, vec![vec![]]).is_err());
        assert!(UsageHistory::new(vec![1], 0, 1, vec![]).is_err());
        let h = UsageHistory::new(vec![1], 0, 1, vec![vec![1.0, 2.0]]).unwrap();
        assert!(h.clone().with_requests(vec![vec![1.0]]).is_err());
        assert!(h.clone().with_requests(vec![vec![1.0, -1.0]]).is_err());
        assert!(h.clone().with_requests(vec![]).is_err());
        assert_eq!(
            h.with_requests(vec![vec![1.0, 0.0]])
                .unwrap()
                .requests(0)
                .unwrap(),
            &[1.0, 0.0]
        );
    }

    #[test]
    fn split() {
        let h = UsageHistory::new(
            vec![5, 9],
            100,
            10,
            vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]],
        )
        .unwrap();
        let (a, b) = h.split_at_window(2).unwrap();
        assert_eq!(a.all_series(), &[vec![1.0, 2.0], vec![4.0, 5.0]]);
        assert_eq!(b.all_series(), &[vec![3.0], vec![6.0]]);
        assert_eq!((a.start_s(), b.start_s()), (100, 120));
        assert_eq!(b.customers(), &[5, 9]);
        assert!(h.split_at_window(0).is_err());
        assert!(h.split_at_window(3).is_err());
    }
}
