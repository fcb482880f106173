//! Runs `allocate_batch` on a large store in a loop, for profilers (`perf record`) and quick
//! timing: `cargo run --release --example batch_profile -- [customers] [batch] [iterations]`.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shadowbucket::{
    Contract, CreateOptions, Engine, EngineConfig, Keys, Outcome, Rate, Reservation,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let n = *args.first().unwrap_or(&1_000_000);
    let batch = *args.get(1).unwrap_or(&1_000_000) as usize;
    let iters = *args.get(2).unwrap_or(&20);
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
            rate: Rate::tokens_per_sec(2),
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
    for _ in 0..iters {
        now += 1_000_000_000;
        let t = Instant::now();
        eng.allocate_batch_into(Keys::Slots(&slots), &tokens, now, &mut o, &mut r)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let mut mix = [0u64; 7];
    o.iter().for_each(|x| mix[*x as usize] += 1);
    println!(
        "{n} customers, batch {batch}: best {:.1} ms, {:.1} ns/decision; mix {mix:?}",
        best * 1e3,
        best * 1e9 / batch as f64
    );
    drop(eng);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
