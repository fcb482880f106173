//! The simulation report: one self-contained HTML file (styles and SVG plots inline, no script,
//! nothing fetched), written atomically (a temporary file beside it, then a rename), so a failed
//! run never leaves half a report or clobbers the last one.

pub mod plots;

use std::io::Write;
use std::path::Path;

use plots::Line;

use crate::sim::{SimResult, table};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Builds the report's HTML.
///
/// # Errors
/// A message when a plot cannot be drawn.
pub fn html(r: &SimResult, command: &str) -> Result<String, String> {
    let s = &r.series;
    let hours =
        |v: &[f64]| -> Vec<(f64, f64)> { s.hours.iter().copied().zip(v.iter().copied()).collect() };
    let mut figs = Vec::new();
    figs.push(plots::lines(
        "Shadow hit rate: share of grants from shadow buckets, per interval",
        "hit rate",
        &[Line {
            name: "shadow buckets",
            xy: hours(&s.hit_rate),
            colour: 1,
        }],
        (900, 300),
    )?);
    figs.push(plots::lines(
        "Pool utilization: tokens granted over the pool's supply, per interval",
        "utilization",
        &[
            Line {
                name: "plain buckets",
                xy: hours(&s.utilization[0]),
                colour: 0,
            },
            Line {
                name: "shadow buckets",
                xy: hours(&s.utilization[1]),
                colour: 1,
            },
        ],
        (900, 300),
    )?);
    let pd = |k: usize| {
        s.pool_denials[k]
            .iter()
            .map(|&v| v as f64)
            .collect::<Vec<_>>()
    };
    figs.push(plots::lines(
        "Pool denials (503) per interval",
        "requests",
        &[
            Line {
                name: "plain buckets",
                xy: hours(&pd(0)),
                colour: 0,
            },
            Line {
                name: "shadow buckets",
                xy: hours(&pd(1)),
                colour: 1,
            },
        ],
        (900, 300),
    )?);
    let [p, h] = &r.tally;
    figs.push(plots::bars(
        "Denials by reason",
        &[
            "customer limit (429)",
            "pool exhausted (503)",
            "exceeds burst",
        ],
        &[
            [p.outcomes[2], h.outcomes[2]],
            [p.outcomes[3], h.outcomes[3]],
            [p.outcomes[4], h.outcomes[4]],
        ],
        (900, 320),
    )?);
    let mut customer_figs = Vec::new();
    for c in &r.plotted {
        let xy = |v: &[f64]| {
            c.hours
                .iter()
                .copied()
                .zip(v.iter().copied())
                .collect::<Vec<_>>()
        };
        customer_figs.push(plots::lines(
            &format!("Customer {} ({}): tokens per interval", c.id, c.class),
            "tokens",
            &[
                Line {
                    name: "actual (asked)",
                    xy: xy(&c.actual),
                    colour: 3,
                },
                Line {
                    name: "forecast mean",
                    xy: xy(&c.mean),
                    colour: 1,
                },
                Line {
                    name: "forecast p90",
                    xy: xy(&c.p90),
                    colour: 2,
                },
            ],
            (445, 260),
        )?);
    }

    let mut o = String::new();
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    o.push_str("<title>shadowbucket simulate report</title>\n<style>\n");
    o.push_str(
        "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222;padding:0 1em}\n\
         pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:13px}\n\
         .grid{display:flex;flex-wrap:wrap;gap:10px}\n\
         .note{color:#555;font-size:14px}\nsvg{max-width:100%;height:auto}\n",
    );
    o.push_str("</style></head><body>\n<h1>shadowbucket simulate</h1>\n");
    o.push_str(&format!(
        "<p class=\"note\"><code>{}</code></p>\n",
        esc(command)
    ));
    if r.interrupted {
        o.push_str(&format!(
            "<p><strong>Interrupted</strong> after {} of {} steps: the figures cover what was simulated.</p>\n",
            r.steps_done, r.steps_total
        ));
    }
    o.push_str(&format!(
        "<p>{}<br>pool {} tokens/s; {:.1} simulated hours; predictor <code>{}</code>; {:.1} s of wall time.</p>\n",
        esc(&r.workload),
        r.pool_rate,
        r.simulated_s as f64 / 3600.0,
        esc(&r.predictor),
        r.wall_s
    ));
    o.push_str("<h2>Plain buckets against shadow buckets</h2>\n<pre>");
    o.push_str(&esc(&table(r)));
    o.push_str("</pre>\n<p class=\"note\">Plain buckets: every customer's token bucket, all sharing the pool first come, first served. \
                Shadow buckets: the same contracts and pool, with reservations set from the predictor's forecast at every tick. \
                Steady customers are the ones whose use stays within their contract and forecast: what reservations protect. \
                Slack is idle reserved capacity over the tokens used; the exceed-rate is the share of customer-intervals that used more than their reservation.</p>\n");
    o.push_str("<h2>Over time</h2>\n");
    for f in &figs {
        o.push_str("<div>");
        o.push_str(f);
        o.push_str("</div>\n");
    }
    o.push_str("<h2>Predicted against actual, a few customers</h2>\n<p class=\"note\">The forecast made at each tick for the next interval, against what the customer asked in it.</p>\n<div class=\"grid\">\n");
    for f in &customer_figs {
        o.push_str("<div>");
        o.push_str(f);
        o.push_str("</div>\n");
    }
    o.push_str("</div>\n");
    o.push_str(&format!(
        "<p class=\"note\">Both stores passed their consistency check and balanced their ledgers: plain {}, shadow {}.</p>\n",
        if p.consistent { "yes" } else { "NO" },
        if h.consistent { "yes" } else { "NO" }
    ));
    o.push_str("</body></html>\n");
    Ok(o)
}

/// Writes `contents` to `path` atomically: a temporary file in the same folder, synced, then
/// renamed over `path`.
///
/// # Errors
/// A message naming the path.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), String> {
    write_all_atomic(&[(path, contents)])
}

/// Writes several files as [`write_atomic`] does, all or none: every temporary file is
/// written and synced before the first is renamed, so a failure (say, the last file's folder
/// refuses it) leaves every path as it was.
///
/// # Errors
/// A message naming the path.
pub fn write_all_atomic(files: &[(&Path, &[u8])]) -> Result<(), String> {
    let mut tmps: Vec<std::path::PathBuf> = Vec::with_capacity(files.len());
    let result = (|| {
        for (k, &(path, contents)) in files.iter().enumerate() {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => std::path::PathBuf::from("."),
            };
            let name = path
                .file_name()
                .ok_or_else(|| format!("{}: not a file name", path.display()))?;
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(".tmp-{}-{k}", std::process::id()));
            let tmp = dir.join(tmp_name);
            tmps.push(tmp.clone());
            (|| {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(contents)?;
                f.sync_all()
            })()
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        for (&(path, _), tmp) in files.iter().zip(&tmps) {
            std::fs::rename(tmp, path)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for tmp in &tmps {
            let _ = std::fs::remove_file(tmp);
        }
    }
    result
}

/// Checks early that `path` can be written (its folder exists, it is not a folder), so a long
/// run does not fail at the end.
///
/// # Errors
/// A message naming the problem.
pub fn check_writable(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!("{} is a folder, not a file", path.display()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "cannot write {}: folder {} does not exist",
            path.display(),
            dir.display()
        ));
    }
    Ok(())
}
