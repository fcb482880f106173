//! `shadowbucket snapshot STORE DEST`: a consistent copy of a store that no process has open for
//! writing (`Engine::snapshot` through a read-only open, which holds a shared lock on the store
//! while it copies, so no writer opens it meanwhile). The store is not changed.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use shadowbucket::{Engine, Error};

use crate::args::SnapshotArgs;
use crate::{CliError, CmdResult};

/// Runs `snapshot`.
pub fn run(a: SnapshotArgs) -> CmdResult {
    if !a.store.exists() {
        return Err(CliError::Failed(format!(
            "cannot open {}: no such file",
            a.store.display()
        )));
    }
    let mut e = Engine::open_read_only(&a.store)
        .map_err(|e| CliError::Failed(format!("cannot open {}: {e}", a.store.display())))?;
    let bar = if a.quiet || a.json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template("{spinner} snapshot [{bar:30}] {bytes}/{total_bytes}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b
    };
    let t = std::time::Instant::now();
    let snap = e
        .snapshot_with(&a.dest, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .map_err(|err| {
            bar.abandon();
            CliError::Failed(match err {
                Error::Locked(p) if p == a.store => format!(
                    "{} is open for writing in another process: take the snapshot through that \
                     process (Engine::snapshot, sb_engine_snapshot, Engine.snapshot in Python)",
                    p.display()
                ),
                err => format!(
                    "snapshot of {} to {}: {err}",
                    a.store.display(),
                    a.dest.display()
                ),
            })
        })?;
    bar.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    if a.json {
        let v = json!({
            "store": a.store,
            "snapshot": snap.path,
            "bytes": snap.bytes,
            "written": snap.written,
            "last_committed": snap.last_committed,
            "seconds": secs,
        });
        println!("{v}");
    } else {
        println!(
            "snapshot of {} written to {} in {secs:.2} s: {} bytes ({} written, the rest holes), \
             last committed transaction {}",
            a.store.display(),
            snap.path.display(),
            snap.bytes,
            snap.written,
            snap.last_committed
        );
    }
    Ok(0)
}
