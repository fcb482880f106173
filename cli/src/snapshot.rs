//! `shadowbucket snapshot STORE DEST`: a consistent copy of a store that no process has open for
//! writing (`Engine::snapshot` through a read-only open, which holds a shared lock on the store
//! while it copies, so no writer opens it meanwhile). The store is not changed.

use serde_json::json;
use shadowbucket::Error;

use crate::args::SnapshotArgs;
use crate::out::outln;
use crate::{CliError, CmdResult};

/// Runs `snapshot`.
pub fn run(a: SnapshotArgs) -> CmdResult {
    let mut e = crate::open_store_read_only(&a.store)?;
    let bar = crate::progress_bar(
        a.quiet || a.json,
        None,
        "{spinner} snapshot [{bar:30}] {bytes}/{total_bytes}",
    );
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
            "store": a.store.display().to_string(),
            "snapshot": snap.path.display().to_string(),
            "bytes": snap.bytes,
            "written": snap.written,
            "last_committed": snap.last_committed,
            "seconds": secs,
        });
        outln!("{v}");
    } else {
        outln!(
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
