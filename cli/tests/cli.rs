//! The `shadowbucket` command, run as a user runs it: the built binary, on small inputs in
//! temporary folders, checking outputs, files and exit codes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_shadowbucket");

/// A fresh folder for one test.
fn dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small per-window trace: 4 customers, 2 hours of 10-minute windows.
fn servegen_csv(d: &Path) -> PathBuf {
    let p = d.join("windows.csv");
    let mut t = String::from("customer,window_start_s,requests,input_tokens,output_tokens\n");
    for c in 0..4u64 {
        for w in 0..12u64 {
            let req = if c == 3 && w % 4 != 0 {
                0
            } else {
                30 + 10 * c + w
            };
            t.push_str(&format!(
                "{c},{},{req},{},{}\n",
                w * 600,
                req * 400,
                req * 100
            ));
        }
    }
    std::fs::write(&p, t).unwrap();
    p
}

/// A small per-request trace in Azure's format: 300 requests over 5 minutes.
fn azure_csv(d: &Path) -> PathBuf {
    let p = d.join("requests.csv");
    let mut t = String::from("TIMESTAMP,ContextTokens,GeneratedTokens\n");
    for k in 0..300u64 {
        let sec = k; // one a second
        t.push_str(&format!(
            "2023-11-16 18:{:02}:{:02}.{:07},{},{}\n",
            17 + sec / 60,
            sec % 60,
            k * 7919 % 10_000_000,
            200 + k * 37 % 3000,
            10 + k % 50
        ));
    }
    std::fs::write(&p, t).unwrap();
    p
}

fn small_sim(d: &Path, extra: &[&str]) -> Output {
    let report = d.join("report.html");
    let json = d.join("figures.json");
    let mut args = vec![
        "simulate",
        "--customers",
        "300",
        "--days",
        "0.05",
        "--quiet",
    ];
    if !extra.contains(&"--predictor") {
        args.extend(["--predictor", "ewma"]);
    }
    args.extend(["--report", s(&report), "--json", s(&json)]);
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn simulate_prints_the_table_and_writes_the_report() {
    let d = dir("simulate");
    let o = small_sim(&d, &[]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for row in [
        "plain buckets",
        "shadow buckets",
        "granted from shadow bucket",
        "denied: pool exhausted (503)",
        "steady customers' requests denied by pool",
        "pool utilization",
        "reservation slack",
        "reservation exceed-rate",
        "contention flags",
        "decisions per second",
        "ms per tick",
        "both stores pass their consistency check",
    ] {
        assert!(out.contains(row), "missing `{row}` in:\n{out}");
    }
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("report: ") && last.ends_with("report.html"),
        "{last}"
    );

    let html = std::fs::read_to_string(d.join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.matches("<svg").count() >= 5, "plots missing");
    for title in [
        "Shadow hit rate",
        "Pool utilization",
        "Denials by reason",
        "Customer ",
    ] {
        assert!(html.contains(title), "missing plot `{title}`");
    }
    // Self-contained: nothing is fetched.
    assert!(!html.contains("src=\"http") && !html.contains("<script"));

    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("figures.json")).unwrap()).unwrap();
    assert_eq!(v["customers"], 300);
    assert_eq!(v["interrupted"], false);
    assert_eq!(v["steps_done"], v["steps_total"]);
    // Plain buckets reserve nothing; shadow buckets take most grants on the fast path.
    assert_eq!(v["plain"]["granted_shadow"], 0);
    let sh = &v["shadow"];
    assert!(sh["granted_shadow"].as_u64().unwrap() > sh["granted_pool"].as_u64().unwrap());
    assert_eq!(v["plain"]["consistent"], true);
    assert_eq!(sh["consistent"], true);
    // Same workload for both: the same requests were decided.
    let total = |k: &str| -> u64 {
        [
            "granted_shadow",
            "granted_pool",
            "denied_customer_limit",
            "denied_pool_exhausted",
            "exceeds_burst",
        ]
        .iter()
        .map(|f| v[k][f].as_u64().unwrap())
        .sum()
    };
    assert_eq!(total("plain"), total("shadow"));
    assert!(total("plain") > 1000);
}

#[test]
fn simulate_is_deterministic() {
    let counts = |d: &Path| {
        let o = small_sim(d, &["--seed", "11"]);
        assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("figures.json")).unwrap())
                .unwrap();
        let mut keep = Vec::new();
        for k in ["plain", "shadow"] {
            for f in [
                "granted_shadow",
                "granted_pool",
                "denied_customer_limit",
                "denied_pool_exhausted",
                "tokens_granted",
                "steady_denied_pool",
            ] {
                keep.push(v[k][f].as_u64().unwrap());
            }
        }
        (keep, v["tokens_asked"].as_u64().unwrap())
    };
    let a = counts(&dir("det-a"));
    let b = counts(&dir("det-b"));
    assert_eq!(a, b);
    let c = {
        let d = dir("det-c");
        let o = small_sim(&d, &["--seed", "12"]);
        assert_eq!(o.status.code(), Some(0));
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("figures.json")).unwrap())
                .unwrap();
        v["tokens_asked"].as_u64().unwrap()
    };
    assert_ne!(a.1, c, "another seed gives another workload");
}

#[test]
fn simulate_reads_both_trace_formats() {
    let d = dir("traces");
    for (csv, customers) in [(servegen_csv(&d), 4), (azure_csv(&d), 5)] {
        let report = d.join("trace.html");
        let json = d.join("trace.json");
        let o = run(&[
            "simulate",
            "--trace",
            s(&csv),
            "--predictor",
            "last",
            "--tenants",
            "5",
            "-q",
            "--report",
            s(&report),
            "--json",
            s(&json),
        ]);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
        assert!(out.contains(&format!("trace {}", csv.display())), "{out}");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(v["customers"], customers, "{csv:?}");
        assert!(
            v["shadow"]["granted_shadow"].as_u64().unwrap() > 0,
            "{csv:?}"
        );
        assert!(std::fs::read_to_string(&report).unwrap().contains("<svg"));
    }
}

/// Asserts a refused command: exit `code`, `needle` in the message, the old report intact.
fn refused(d: &Path, args: &[&str], code: i32, needle: &str) {
    let report = d.join("report.html");
    std::fs::write(&report, "old report").unwrap();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--report", s(&report)]);
    let o = run(&all);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}\n{out}\n{err}");
    assert!(err.contains(needle), "{args:?}: `{needle}` not in:\n{err}");
    assert_eq!(std::fs::read_to_string(&report).unwrap(), "old report");
}

#[test]
fn simulate_refuses_bad_arguments_and_overwrites_nothing() {
    let d = dir("bad-args");
    refused(
        &d,
        &["simulate", "--predictor", "crystal-ball"],
        2,
        "unknown predictor",
    );
    refused(&d, &["simulate", "--customers", "many"], 2, "invalid value");
    refused(
        &d,
        &["simulate", "--customers", "0"],
        2,
        "customers must be",
    );
    refused(&d, &["simulate", "--step", "7"], 2, "--interval");
    // Its nanoseconds would not fit the clock.
    refused(
        &d,
        &["simulate", "--interval", "18446744073709551610"],
        2,
        "--interval",
    );
    refused(&d, &["simulate", "--alpha", "1.5"], 2, "--alpha");
    refused(&d, &["simulate", "--days=0"], 2, "--days");
    refused(
        &d,
        &["simulate", "--no-such-option"],
        2,
        "unexpected argument",
    );
    let nowhere = d.join("missing-folder").join("r.html");
    let o = run(&["simulate", "--report", s(&nowhere)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("does not exist"));
}

/// The smallest `simulate` run: 20 customers for about a quarter of an hour, quiet.
const TINY_SIM: [&str; 8] = [
    "simulate",
    "--customers",
    "20",
    "--days",
    "0.01",
    "--predictor",
    "ewma",
    "-q",
];

/// A run whose JSON cannot be written at the end fails, and writes no report either.
#[cfg(target_os = "linux")]
#[test]
fn simulate_that_cannot_write_its_json_writes_no_report() {
    let d = dir("json-unwritable");
    // /proc is a folder (so the early check passes) in which no file can be created.
    let json = format!("/proc/shadowbucket-{}.json", std::process::id());
    let args = [&TINY_SIM[..], &["--json", &json]].concat();
    refused(&d, &args, 1, "cannot write /proc/");
}

/// Output into a pipe whose reader has gone (`simulate | head -1`) ends quietly: the run carries
/// on, writes its report and exits 0, with no panic; output that fails for any other reason (a
/// full device) fails the command with a clear error, its files still written.
#[cfg(target_os = "linux")]
#[test]
fn simulate_into_a_closed_pipe_or_a_full_device() {
    let d = dir("closed-stdout");
    let report = d.join("report.html");
    let args = [&TINY_SIM[..], &["--report", s(&report)]].concat();
    let mut child = Command::new(BIN)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(report.exists(), "no report after a closed pipe");

    std::fs::remove_file(&report).unwrap();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = Command::new(BIN).args(args).stdout(full).output().unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot write to standard output") && !err.contains("panicked"),
        "{err}"
    );
    assert!(report.exists(), "no report after a failed output");
}

#[test]
fn simulate_refuses_unreadable_traces_and_overwrites_nothing() {
    let d = dir("bad-trace");
    let missing = d.join("nope.csv");
    refused(&d, &["simulate", "--trace", s(&missing)], 1, "cannot read");

    let bad = d.join("bad.csv");
    std::fs::write(
        &bad,
        "customer,window_start_s,requests,input_tokens,output_tokens\n0,0,1,10,10\n0,600,x,10,10\n",
    )
    .unwrap();
    refused(&d, &["simulate", "--trace", s(&bad)], 1, "bad.csv:3");

    let unknown = d.join("unknown.csv");
    std::fs::write(&unknown, "a,b,c\n1,2,3\n").unwrap();
    refused(
        &d,
        &["simulate", "--trace", s(&unknown)],
        1,
        "unknown trace format",
    );

    let empty = d.join("empty.csv");
    std::fs::write(&empty, "").unwrap();
    refused(&d, &["simulate", "--trace", s(&empty)], 1, "empty file");

    // One far-off time (a typo) would make the trace centuries long: refused, not allocated.
    let far = d.join("far.csv");
    std::fs::write(
        &far,
        "customer,window_start_s,requests,input_tokens,output_tokens\n\
         0,0,1,10,10\n0,600,1,10,10\n0,60000000000000,1,10,10\n",
    )
    .unwrap();
    refused(&d, &["simulate", "--trace", s(&far)], 1, "--days");
    let far = d.join("far-requests.csv");
    std::fs::write(
        &far,
        "TIMESTAMP,ContextTokens,GeneratedTokens\n0,10,10\n1,10,10\n1e12,5,5\n",
    )
    .unwrap();
    refused(&d, &["simulate", "--trace", s(&far)], 1, "--days");

    let folder = d.join("a-folder");
    std::fs::create_dir_all(&folder).unwrap();
    refused(&d, &["simulate", "--trace", s(&folder)], 1, "cannot read");

    let model = d.join("no-model.safetensors");
    let arg = format!("lstm:{}", model.display());
    refused(
        &d,
        &["simulate", "--predictor", &arg],
        1,
        "no-model.safetensors",
    );
}

#[test]
fn kept_stores_can_be_inspected() {
    let d = dir("inspect");
    let stores = d.join("stores");
    let o = small_sim(&d, &["--store-dir", s(&stores)]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert!(text(&o).0.contains("stores kept"));
    let shadow = stores.join("shadow.sb");
    let before = std::fs::read(&shadow).unwrap();

    let o = run(&["inspect", s(&shadow), "--customers", "3"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    for want in [
        "customers     300 in 300 slots",
        "counters",
        "granted from shadow",
        "flagged",
        "check         ok",
    ] {
        assert!(out.contains(want), "`{want}` not in:\n{out}");
    }
    assert_eq!(
        out.lines()
            .filter(|l| l.trim_start().starts_with("100"))
            .count(),
        3,
        "{out}"
    );

    let o = run(&["inspect", s(&shadow), "--json", "--customer", "10000"]);
    assert_eq!(o.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["customers"], 300);
    assert_eq!(v["customer"]["id"], 10000);
    assert!(v["counters"]["shadow_grants"].as_u64().unwrap() > 0);
    assert_eq!(v["check"], "ok");
    // The plain store reserved nothing.
    let o = run(&["inspect", s(&stores.join("plain.sb")), "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["counters"]["shadow_grants"], 0);
    assert_eq!(v["config"]["alpha_ppm"], 0);
    // Inspecting writes nothing.
    assert_eq!(std::fs::read(&shadow).unwrap(), before);

    // A second run into the same folder is refused: the stores are kept as they were.
    let o = small_sim(&d, &["--store-dir", s(&stores)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("already exists"));
    assert_eq!(std::fs::read(&shadow).unwrap(), before);

    // An unknown customer, a file that is not a store, a missing file.
    let o = run(&["inspect", s(&shadow), "--customer", "42"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("42"));
    let junk = d.join("junk.sb");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    let o = run(&["inspect", s(&junk)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("cannot open"), "{:?}", text(&o));
    assert_eq!(std::fs::read(&junk).unwrap(), vec![7u8; 4096]);
    let o = run(&["inspect", s(&d.join("missing.sb"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("no such file"));
    let o = run(&["inspect"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn kept_stores_can_be_snapshotted() {
    let d = dir("snapshot");
    let stores = d.join("stores");
    let o = small_sim(&d, &["--store-dir", s(&stores)]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let shadow = stores.join("shadow.sb");
    let before = std::fs::read(&shadow).unwrap();
    let snap = d.join("snap.sb");

    let o = run(&["snapshot", s(&shadow), s(&snap), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["snapshot"], s(&snap));
    assert_eq!(v["bytes"], before.len() as u64);
    assert!(v["written"].as_u64().unwrap() <= before.len() as u64);
    // the snapshot holds the store's bytes, and the store is unchanged
    assert!(std::fs::read(&snap).unwrap() == before);
    assert!(std::fs::read(&shadow).unwrap() == before);
    // it inspects like the store
    let inspect = |p: &Path| {
        let o = run(&["inspect", s(p), "--json", "--customer", "10000"]);
        assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
        let mut v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_object_mut().unwrap().remove("store");
        v
    };
    let shown = inspect(&snap);
    assert!(
        shown == inspect(&shadow),
        "the snapshot inspects differently"
    );
    assert_eq!(shown["last_committed"], v["last_committed"]);

    // text output, and a second snapshot over the first
    let o = run(&["snapshot", s(&shadow), s(&snap), "--quiet"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        out.contains("written to") && out.contains("last committed transaction"),
        "{out}"
    );

    // a store open for writing in another process, the store itself, a missing store
    let writer = shadowbucket::Engine::open(&shadow).unwrap();
    let o = run(&["snapshot", s(&shadow), s(&d.join("other.sb")), "--quiet"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("open for writing in another process"),
        "{:?}",
        text(&o)
    );
    assert!(!d.join("other.sb").exists());
    drop(writer);
    let o = run(&["snapshot", s(&shadow), s(&shadow), "--quiet"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("the store itself"), "{:?}", text(&o));
    let o = run(&["snapshot", s(&d.join("missing.sb")), s(&snap)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("no such file"));
    let o = run(&["snapshot", s(&shadow)]);
    assert_eq!(o.status.code(), Some(2));

    // paths that are not UTF-8 (JSON shows them with U+FFFD in place of the bad bytes)
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let odd = d.join(std::ffi::OsStr::from_bytes(b"snap-\xff.sb"));
        let o = Command::new(BIN)
            .args([
                "snapshot".as_ref(),
                shadow.as_os_str(),
                odd.as_os_str(),
                "--json".as_ref(),
            ])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            v["snapshot"]
                .as_str()
                .unwrap()
                .ends_with("snap-\u{fffd}.sb"),
            "{v}"
        );
        assert!(std::fs::read(&odd).unwrap() == before);
    }
}

#[test]
fn bench_writes_json_and_refuses_a_missing_gpu() {
    let d = dir("bench");
    let out = d.join("bench.json");
    let o = run(&[
        "bench",
        "--customers",
        "2000",
        "--batch",
        "10000",
        "--iterations",
        "2",
        "--out",
        s(&out),
        "--store-dir",
        s(&d),
    ]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["customers"], 2000);
    assert_eq!(v["batch"], 10000);
    assert!(v["ns_per_decision"]["median"].as_f64().unwrap() > 0.0);
    // a batch this long runs the parallel path, whose phases are timed
    for phase in ["bucket", "local", "gather_and_replay"] {
        let ms = v["phases_ms"][phase]["min"].as_f64().unwrap();
        assert!(ms > 0.0, "{phase}: {ms}");
    }
    // 2,000 customers: one range of slots, holding every request, so crowded and cut into
    // pieces from two threads on
    assert_eq!(v["shards"]["ranges"], 1);
    let shards = v["shards"]["per_batch"]["min"].as_f64().unwrap();
    if v["threads"].as_u64().unwrap() >= 2 {
        assert!(shards > 1.0, "{shards} shards");
    } else {
        assert_eq!(shards, 1.0);
    }
    let shares = &v["outcome_shares"];
    let sum: f64 = [
        "granted_shadow",
        "granted_pool",
        "denied_customer_limit",
        "denied_pool_exhausted",
    ]
    .iter()
    .map(|k| shares[k].as_f64().unwrap())
    .sum();
    assert!((sum - 1.0).abs() < 1e-9, "{sum}");
    // The benchmark's store is removed.
    assert!(
        !std::fs::read_dir(&d).unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "sb"))
    );

    std::fs::write(&out, "old").unwrap();
    let o = run(&["bench", "--device", "gpu", "--out", s(&out)]);
    assert_ne!(o.status.code(), Some(0));
    assert!(text(&o).1.contains("not available"), "{:?}", text(&o));
    let o = run(&["bench", "--batch", "0", "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(2));
    // more than one batch call takes: a usage error, before anything is allocated
    let o = run(&["bench", "--batch", "1000000000000", "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(
        text(&o).1.contains("--batch must be at most"),
        "{:?}",
        text(&o)
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "old");
}

#[test]
fn evaluate_scores_the_baselines() {
    let d = dir("evaluate");
    let csv = servegen_csv(&d);
    let json = d.join("scores.json");
    let o = run(&[
        "evaluate",
        "--csv",
        s(&csv),
        "--horizons",
        "1,2",
        "--json",
        s(&json),
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    for f in ["last", "ewma", "seasonal", "autopilot"] {
        assert!(out.to_lowercase().contains(f), "{f} missing:\n{out}");
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["reports"].as_array().unwrap().len() >= 4);
    assert_eq!(v["reports"][0]["horizons"].as_array().unwrap().len(), 2);

    std::fs::write(&json, "old").unwrap();
    let o = run(&[
        "evaluate",
        "--csv",
        s(&d.join("missing.csv")),
        "--json",
        s(&json),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("cannot read"));
    let o = run(&[
        "evaluate",
        "--csv",
        s(&csv),
        "--train-fraction",
        "1.5",
        "--json",
        s(&json),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&json).unwrap(), "old");
}

#[test]
fn every_command_explains_its_options() {
    for (cmd, options) in [
        (
            "simulate",
            &[
                "--trace",
                "--customers",
                "--days",
                "--predictor",
                "--report",
                "--store-dir",
                "--seed",
            ][..],
        ),
        ("train", &["--csv", "--synthetic", "--out", "--epochs"][..]),
        ("evaluate", &["--csv", "--model", "--horizons"][..]),
        (
            "bench",
            &["--customers", "--batch", "--device", "--out"][..],
        ),
        ("inspect", &["--customers", "--customer", "--json"][..]),
        ("snapshot", &["STORE", "DEST", "--quiet", "--json"][..]),
    ] {
        let o = run(&[cmd, "--help"]);
        assert_eq!(o.status.code(), Some(0));
        let out = String::from_utf8_lossy(&o.stdout);
        for opt in options {
            assert!(out.contains(opt), "`{cmd} --help` lacks {opt}:\n{out}");
        }
    }
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn ctrl_c_stops_cleanly_and_still_reports() {
    let d = dir("ctrl-c");
    let report = d.join("report.html");
    let json = d.join("figures.json");
    let mut child = Command::new(BIN)
        .args([
            "simulate",
            "--customers",
            "2000",
            "--days",
            "60",
            "--predictor",
            "ewma",
            "-q",
            "--report",
            s(&report),
            "--json",
            s(&json),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first line is printed once the Ctrl-C handler is in place.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with("shadowbucket simulate"), "{first}");
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    assert!(rest.contains("report: "), "{rest}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["interrupted"], true);
    assert!(v["steps_done"].as_u64().unwrap() < v["steps_total"].as_u64().unwrap());
    assert!(
        std::fs::read_to_string(&report)
            .unwrap()
            .contains("Interrupted")
    );
}

#[test]
fn train_saves_a_model_that_evaluate_and_simulate_use() {
    let d = dir("train");
    let model = d.join("m.safetensors");
    let o = run(&[
        "train",
        "--synthetic",
        "--customers",
        "40",
        "--days",
        "0.25",
        "--epochs",
        "1",
        "--hidden",
        "8",
        "-q",
        "--out",
        s(&model),
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("epoch   1"), "{out}");
    assert!(
        out.trim_end()
            .ends_with(&format!("model: {}", model.display())),
        "{out}"
    );
    let saved = std::fs::read(&model).unwrap();
    assert!(saved.len() > 1000);

    let csv = servegen_csv(&d);
    let o = run(&["evaluate", "--csv", s(&csv), "--model", s(&model)]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("lstm"), "{out}");

    let arg = format!("lstm:{}", model.display());
    let o = small_sim(&d, &["--predictor", &arg]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("predictor lstm(hidden=8"), "{out}");

    // Refused: nothing is written over the saved model.
    for (args, code, needle) in [
        (
            &["train", "--synthetic", "--epochs", "0"][..],
            2,
            "--epochs",
        ),
        (
            &["train", "--csv", "/nonexistent/trace.csv"][..],
            1,
            "cannot read",
        ),
        (&["train"][..], 2, "--csv"),
        (
            &["train", "--synthetic", "--csv", s(&csv)][..],
            2,
            "cannot be used with",
        ),
    ] {
        let mut all = args.to_vec();
        all.extend(["--out", s(&model)]);
        let o = run(&all);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {:?}", text(&o));
        assert!(text(&o).1.contains(needle), "{args:?}: {:?}", text(&o));
        assert_eq!(std::fs::read(&model).unwrap(), saved);
    }
    // A model file that is not one.
    let junk = d.join("junk.safetensors");
    std::fs::write(&junk, b"not a model").unwrap();
    let arg = format!("lstm:{}", junk.display());
    let o = small_sim(&d, &["--predictor", &arg]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("cannot load model"), "{:?}", text(&o));
}
