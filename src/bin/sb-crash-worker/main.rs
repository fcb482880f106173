//! A helper process for the integration tests (not a tool for users).
//!
//! - `sb-crash-worker run PATH SEED MIX K`: opens the store at `PATH` and applies operations
//!   `K`, `K+1`, ... of the deterministic stream of `workload.rs` for `SEED` and `MIX`
//!   (`batches` or `small`), forever, until it is killed (`tests/durability.rs` kills it with
//!   SIGKILL at random instants). Ranges of slots holding more than 4096 of a batch's requests
//!   are cut into pieces (`tuning::set_split`).
//! - `sb-crash-worker snapshot PATH DEST SEED MIX`: opens the store at `PATH` and applies the
//!   stream from its start, taking a snapshot to `DEST` after every operation, until it is killed
//!   (`tests/durability.rs`: a snapshot is whole, whenever the process dies). Every other
//!   snapshot is captured (`Engine::capture_snapshot`) and written on another thread while the
//!   next operation runs.
//! - `sb-crash-worker probe PATH`: tries to open the store for writing and prints `ok`, `locked`,
//!   `badfile` or `io` (`tests/bad_input.rs`: a second writer in another process).
//! - `sb-crash-worker hold PATH`: opens the store for writing, prints `held`, and keeps it open
//!   until its stdin is closed or it is killed.

#[allow(dead_code)]
mod workload;

use std::io::{Read, Write};

use shadowbucket::{Engine, Error};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: sb-crash-worker run PATH SEED MIX K | snapshot PATH DEST SEED MIX | probe PATH | hold PATH";
    match args.get(1).map(String::as_str) {
        Some("run") if args.len() == 6 => {
            let seed: u64 = args[3].parse().expect("SEED");
            let mix = workload::Mix::parse(&args[4]).expect("MIX");
            let k0: u64 = args[5].parse().expect("K");
            // crowded ranges cut into pieces whatever the number of threads (the first range
            // holds about 80% of the stream's requests), so that kills land in batches whose
            // shards are pieces too
            shadowbucket::batch::tuning::set_split(4096);
            let mut eng = Engine::open(&args[2]).expect("open");
            assert_eq!(
                eng.recovered(),
                None,
                "the test recovers the store before a run"
            );
            let mut k = k0;
            loop {
                let op = workload::make_op(seed, mix, k, &eng);
                workload::apply(&mut eng, &op, workload::op_time(seed, k));
                k += 1;
            }
        }
        Some("snapshot") if args.len() == 6 => {
            let seed: u64 = args[4].parse().expect("SEED");
            let mix = workload::Mix::parse(&args[5]).expect("MIX");
            let mut eng = Engine::open(&args[2]).expect("open");
            let mut writing: Option<std::thread::JoinHandle<()>> = None;
            for k in 0.. {
                let op = workload::make_op(seed, mix, k, &eng);
                workload::apply(&mut eng, &op, workload::op_time(seed, k));
                if let Some(w) = writing.take() {
                    w.join().expect("capture written");
                }
                if k % 2 == 0 {
                    eng.snapshot(&args[3]).expect("snapshot");
                } else {
                    let capture = eng.capture_snapshot().expect("capture");
                    let dest = args[3].clone();
                    writing = Some(std::thread::spawn(move || {
                        capture.write(&dest).expect("write the capture");
                    }));
                }
            }
        }
        Some("probe") if args.len() == 3 => {
            let word = match Engine::open(&args[2]) {
                Ok(_) => "ok",
                Err(Error::Locked(_)) => "locked",
                Err(Error::BadFile { .. }) => "badfile",
                Err(Error::Io { .. }) => "io",
                Err(_) => "other",
            };
            println!("{word}");
        }
        Some("hold") if args.len() == 3 => {
            let _eng = Engine::open(&args[2]).expect("open");
            println!("held");
            std::io::stdout().flush().expect("stdout");
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
