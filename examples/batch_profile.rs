//! Runs `allocate_batch` on a large store in a loop, for profilers (`perf record`) and quick
//! timing: `cargo run --release --example batch_profile -- [customers] [batch] [iterations]
//! [reserved tokens/s]`. Prints the best wall time per decision and the mean CPU time per decision
//! (all threads; less disturbed than wall time when the machine is shared). With `SB_SNAPSHOT=PATH`
//! in the environment it then takes a snapshot of the store to `PATH` (`Engine::snapshot`) and
//! prints how long it took; with `SB_SNAPSHOT_CAPTURE=1` as well, it instead captures the store
//! (`Engine::capture_snapshot`), writes the capture to `PATH` on another thread while it runs the
//! batches again, captures again into the same memory (`Engine::capture_snapshot_into`) and
//! writes that, and prints how long each capture held the engine, how long each write took and
//! the batches' times meanwhile. The store lives under `TMPDIR`.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shadowbucket::{
    Contract, CreateOptions, Engine, EngineConfig, Keys, Outcome, PhaseTimes, Rate, Reservation,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let n = *args.first().unwrap_or(&1_000_000);
    let batch = *args.get(1).unwrap_or(&1_000_000) as usize;
    let iters = *args.get(2).unwrap_or(&20);
    let reserved = *args.get(3).unwrap_or(&2);
    let dir = std::env::temp_dir().join(format!("sb-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = EngineConfig::new(n * 50, Rate::tokens_per_sec(n * 3));
    let mut eng = Engine::create(dir.join("p.sb"), CreateOptions::new(n, cfg).without_model())?;
    let all: Vec<(u64, Contract)> = (0..n)
        .map(|id| (id, Contract::new(200, Rate::tokens_per_sec(4))))
        .collect();
    let res: Vec<Reservation> = eng
        .add_customers(&all, 0)?
        .into_iter()
        .map(|slot| Reservation {
            slot,
            rate: Rate::tokens_per_sec(reserved),
            capacity: 40,
        })
        .collect();
    eng.tick_with(0, &res)?;
    let mut rng = StdRng::seed_from_u64(1);
    let slots: Vec<u32> = (0..batch).map(|_| rng.random_range(0..n as u32)).collect();
    let tokens: Vec<u64> = (0..batch).map(|_| rng.random_range(1..8)).collect();
    let mut o = vec![Outcome::InvalidInput; batch];
    let mut r = vec![0u64; batch];
    let mut now = 1_000_000_000u64;
    let mut best = f64::MAX;
    let mut total = 0.0;
    // each phase's own minimum over the batches, ms
    let mut phases_min = [f64::MAX; 4];
    let cpu0 = cpu_seconds();
    for _ in 0..iters {
        now += 1_000_000_000;
        let t = Instant::now();
        eng.allocate_batch_into(Keys::Slots(&slots), &tokens, now, &mut o, &mut r)?;
        let took = t.elapsed().as_secs_f64();
        best = best.min(took);
        total += took;
        for (m, d) in phases_min
            .iter_mut()
            .zip(eng.last_batch_phases().durations())
        {
            *m = m.min(d.as_secs_f64() * 1e3);
        }
    }
    let cpu = cpu_seconds() - cpu0;
    let mut mix = [0u64; 7];
    o.iter().for_each(|x| mix[*x as usize] += 1);
    println!(
        "{n} customers, batch {batch}: best {:.1} ms, {:.1} ns/decision; mean {:.1} ns/decision; CPU {:.1} ns/decision; mix {mix:?}",
        best * 1e3,
        best * 1e9 / batch as f64,
        total * 1e9 / (batch as f64 * iters as f64),
        cpu * 1e9 / (batch as f64 * iters as f64)
    );
    let minima: Vec<String> = PhaseTimes::NAMES
        .iter()
        .zip(phases_min)
        .map(|(name, ms)| format!("{name} {ms:.2}"))
        .collect();
    println!("phase minima, ms: {}", minima.join(", "));
    if let Some(dest) = std::env::var_os("SB_SNAPSHOT") {
        if std::env::var_os("SB_SNAPSHOT_CAPTURE").is_some_and(|v| v == "1") {
            let mut capture = None;
            for round in ["new memory", "the same memory"] {
                let t = Instant::now();
                let c = match capture.take() {
                    None => eng.capture_snapshot()?,
                    Some(mut c) => {
                        eng.capture_snapshot_into(&mut c)?;
                        c
                    }
                };
                let held = t.elapsed().as_secs_f64();
                println!(
                    "capture into {round}: held the engine {:.1} ms ({} MB of {} MB)",
                    held * 1e3,
                    c.held() >> 20,
                    c.bytes() >> 20
                );
                // the capture is written on another thread while the batches go on
                let t = Instant::now();
                let dest = dest.clone();
                let writer = std::thread::spawn(move || {
                    let snap = c.write(&dest);
                    (snap, c, Instant::now())
                });
                let (mut n, mut sum, mut worst) = (0u32, 0.0f64, 0.0f64);
                while !writer.is_finished() {
                    now += 1_000_000_000;
                    let b = Instant::now();
                    eng.allocate_batch_into(Keys::Slots(&slots), &tokens, now, &mut o, &mut r)?;
                    let took = b.elapsed().as_secs_f64();
                    (n, sum, worst) = (n + 1, sum + took, worst.max(took));
                }
                let (snap, c, done) = writer.join().map_err(|_| "snapshot writer panicked")?;
                let snap = snap?;
                println!(
                    "  written to {} in {:.2} s ({} MB written); meanwhile {n} batches, mean {:.1} ms, worst {:.1} ms",
                    snap.path.display(),
                    (done - t).as_secs_f64(),
                    snap.written >> 20,
                    sum * 1e3 / f64::from(n.max(1)),
                    worst * 1e3
                );
                capture = Some(c);
            }
        } else {
            let t = Instant::now();
            let snap = eng.snapshot(&dest)?;
            println!(
                "snapshot to {}: {:.2} s, {} MB ({} MB written)",
                snap.path.display(),
                t.elapsed().as_secs_f64(),
                snap.bytes >> 20,
                snap.written >> 20
            );
        }
    }
    drop(eng);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// User plus system CPU time of this process (all threads), seconds, from `/proc/self/stat`
/// (0 where that file does not exist).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // fields after the command name (which may hold spaces) start after the last ')'
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line, 11 and 12 after the name
    (ticks(11) + ticks(12)) / 100.0
}
