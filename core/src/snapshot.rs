//! Snapshots: a consistent copy of a store, taken between transactions and written so that its
//! destination always holds either the previous snapshot or the new one.
//!
//! A store on a RAM-backed file system (tmpfs) is never written back to a disk by the kernel, so
//! large stores run there without the writeback stalls a disk-backed mapping gets; snapshots are
//! how such a store reaches a disk (see `docs/engine.md`, "Snapshots").

use std::path::{Path, PathBuf};

use crate::engine::Engine;
use crate::error::Result;

/// What [`Engine::snapshot`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Where the snapshot is.
    pub path: PathBuf,
    /// Its length in bytes (the store file's).
    pub bytes: u64,
    /// Bytes written to the disk; the rest are runs of zeros (unused capacity, columns never
    /// written) left as holes.
    pub written: u64,
    /// The last transaction the snapshot holds ([`crate::Stats::last_committed`]).
    pub last_committed: u64,
}

impl Engine {
    /// Writes a consistent copy of the store to `dest`, which then opens like any store
    /// ([`Engine::open`]; copy it back over a lost store to restore it).
    ///
    /// The copy holds every transaction committed before the call. A device step backend's
    /// recurrent state is written back into the store first (as [`Engine::sync_model_state`]
    /// does), and the store's events and signals are written beside the copy (its `.events`
    /// file). The copy goes to a new file beside `dest` (its name with `.snapshot-tmp` added),
    /// is synced to the disk, and is then renamed over `dest`, so a process killed at any instant
    /// leaves `dest` as it was or as the complete new snapshot (a leftover `.snapshot-tmp` is
    /// removed by the next snapshot); the events file is replaced just before the store.
    ///
    /// Through a read-only engine the snapshot holds a shared lock on the store while it copies:
    /// it fails with [`crate::Error::Locked`] when a writer has the store open (take it through
    /// that writer instead), and a writer opening the store meanwhile gets `Locked`.
    ///
    /// ```
    /// # use shadowbucket::{Contract, CreateOptions, Engine, EngineConfig, Rate};
    /// # let dir = std::env::temp_dir().join(format!("sb-doc-snapshot-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// let config = EngineConfig::new(1_000, Rate::tokens_per_sec(100));
    /// let mut live = Engine::create(dir.join("live.sb"), CreateOptions::new(1_000, config))?;
    /// live.add_customer(7, Contract::new(50, Rate::tokens_per_sec(5)), 0)?;
    /// let snap = live.snapshot(dir.join("snap.sb"))?;
    /// assert_eq!(snap.last_committed, live.stats().last_committed);
    /// let copy = Engine::open(&snap.path)?;
    /// assert_eq!(copy.customer_ids(), vec![7]);
    /// # drop((live, copy));
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), shadowbucket::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] when `dest` is the store itself, or (read-only engine)
    /// when the store's path now holds another file (grown or upgraded since the engine opened
    /// it: open it again);
    /// [`crate::Error::Locked`] when a writer has `dest` open as a store, or (read-only engine)
    /// has this store open; [`crate::Error::Io`] writing the copy (`dest` is then unchanged), or
    /// from a device backend's state write-back.
    pub fn snapshot(&mut self, dest: impl AsRef<Path>) -> Result<Snapshot> {
        self.snapshot_with(dest, |_, _| {})
    }

    /// [`Engine::snapshot`], calling `progress(bytes_copied, total_bytes)` as the copy goes (a
    /// store of several GB takes seconds).
    ///
    /// # Errors
    /// As [`Engine::snapshot`].
    pub fn snapshot_with(
        &mut self,
        dest: impl AsRef<Path>,
        progress: impl FnMut(u64, u64),
    ) -> Result<Snapshot> {
        let dest = dest.as_ref();
        self.write_back_device_state()?;
        let mut last_committed = 0;
        let written = self.store.snapshot_to(dest, progress, || {
            // (the store is held still until the rename: this is the copy's state)
            last_committed = self.stats().last_committed;
            self.save_sidecar_at(dest)
        })?;
        Ok(Snapshot {
            path: dest.to_path_buf(),
            bytes: self.store.len(),
            written,
            last_committed,
        })
    }
}
