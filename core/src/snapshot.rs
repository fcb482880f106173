//! Snapshots: a consistent copy of a store, taken between transactions and written so that its
//! destination always holds either the previous snapshot or the new one.
//!
//! A store on a RAM-backed file system (tmpfs) is never written back to a disk by the kernel, so
//! large stores run there without the writeback stalls a disk-backed mapping gets; snapshots are
//! how such a store reaches a disk (see `docs/engine.md`, "Snapshots").
//!
//! [`Engine::snapshot`] copies the store straight to the file, and so holds the engine for as long
//! as the disk takes. [`Engine::capture_snapshot`] holds it only while it copies the store into
//! memory; the [`SnapshotCapture`] is then written to the file ([`SnapshotCapture::write`]) while
//! the engine goes on, at the price of memory for the copy.

use std::path::{Path, PathBuf};

use crate::engine::Engine;
use crate::error::Result;
use crate::store::Captured;

/// What [`Engine::snapshot`] or [`SnapshotCapture::write`] wrote.
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
    /// [`crate::Error::InvalidArgument`] when `dest` is the store itself or its events file, or
    /// `dest`'s events file is the store, or (read-only engine) when the store's path now holds
    /// another file (grown or upgraded since the engine opened it: open it again);
    /// [`crate::Error::Locked`] when a writer has `dest` (or `dest`'s events file) open as a
    /// store, or (read-only engine) has this store open; [`crate::Error::Io`] writing the copy
    /// (`dest` is then unchanged), or from a device backend's state write-back.
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
            last_committed = self.store.last_committed();
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

/// A consistent copy of a store held in memory ([`Engine::capture_snapshot`]), to be written to
/// a snapshot file ([`SnapshotCapture::write`]) without holding the engine.
///
/// It holds the store file's bytes (its runs of zeros left out) and its events and signals, as
/// they were when it was captured; nothing that happens to the engine or its store afterwards
/// changes it, and it may be written after the engine is gone, from any thread, and to several
/// destinations. Dropping it frees the memory.
pub struct SnapshotCapture {
    store: Captured,
    /// The events file's text.
    sidecar: String,
}

impl std::fmt::Debug for SnapshotCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotCapture")
            .field("bytes", &self.bytes())
            .field("held", &self.held())
            .field("last_committed", &self.last_committed())
            .finish_non_exhaustive()
    }
}

impl SnapshotCapture {
    /// The store file's length in bytes (a snapshot written from it has this length).
    pub fn bytes(&self) -> u64 {
        self.store.len()
    }

    /// Bytes of memory the copy holds: the store file's, less its runs of zeros (unused
    /// capacity, columns never written).
    pub fn held(&self) -> u64 {
        self.store.held()
    }

    /// The last transaction the copy holds ([`crate::Stats::last_committed`] when it was
    /// captured).
    pub fn last_committed(&self) -> u64 {
        self.store.last_committed()
    }

    /// Writes the copy to `dest` exactly as [`Engine::snapshot`] would have written the store
    /// when the copy was captured: the events file beside it, a new file beside `dest` (its name
    /// with `.snapshot-tmp` added) synced to the disk and renamed over `dest`, so that a process
    /// killed at any instant leaves `dest` as it was or as the complete new snapshot. Writes to
    /// one destination from several threads of this process at once take turns.
    ///
    /// ```
    /// # use shadowbucket::{Contract, CreateOptions, Engine, EngineConfig, Keys, Rate};
    /// # let dir = std::env::temp_dir().join(format!("sb-doc-capture-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// let config = EngineConfig::new(1_000, Rate::tokens_per_sec(100));
    /// let mut live = Engine::create(dir.join("live.sb"), CreateOptions::new(1_000, config))?;
    /// live.add_customer(7, Contract::new(50, Rate::tokens_per_sec(5)), 0)?;
    /// let capture = live.capture_snapshot()?; // holds `live` only for an in-memory copy
    /// let writer = std::thread::spawn({
    ///     let dest = dir.join("snap.sb");
    ///     move || capture.write(dest)
    /// });
    /// live.allocate_batch(Keys::Ids(&[7, 7]), &[10, 10], 1_000)?; // meanwhile, the engine goes on
    /// let snap = writer.join().unwrap()?;
    /// let copy = Engine::open(&snap.path)?;
    /// // the copy is the store as it was when captured
    /// assert_eq!(copy.stats().counters.requests, 0);
    /// assert_eq!(live.stats().counters.requests, 2);
    /// # drop((live, copy));
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), shadowbucket::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] when `dest` (or `dest`'s events file) is the file the
    /// copy was captured from, while that file is still at the store's path (a store grown or
    /// replaced since is another file), or when `dest` is the events file of the store's path;
    /// [`crate::Error::Locked`] when a writer has `dest` (or `dest`'s events file) open as a
    /// store; [`crate::Error::Io`] writing the copy (`dest` is then unchanged).
    pub fn write(&self, dest: impl AsRef<Path>) -> Result<Snapshot> {
        self.write_with(dest, |_, _| {})
    }

    /// [`SnapshotCapture::write`], calling `progress(bytes_done, total_bytes)` as it goes (bytes of
    /// the file done so far, its runs of zeros included).
    ///
    /// # Errors
    /// As [`SnapshotCapture::write`].
    pub fn write_with(
        &self,
        dest: impl AsRef<Path>,
        progress: impl FnMut(u64, u64),
    ) -> Result<Snapshot> {
        let dest = dest.as_ref();
        let written = self.store.write_to(dest, progress, || {
            crate::predict::sidecar::save_text(
                &crate::predict::sidecar::path_for(dest),
                &self.sidecar,
            )
        })?;
        Ok(Snapshot {
            path: dest.to_path_buf(),
            bytes: self.store.len(),
            written,
            last_committed: self.last_committed(),
        })
    }
}

impl Engine {
    /// Copies the store into memory, consistently, for a snapshot to be written later
    /// ([`SnapshotCapture::write`]) while the engine goes on.
    ///
    /// [`Engine::snapshot`] holds the engine for as long as the copy takes to reach the disk; this
    /// holds it only for a copy in memory, at the price of memory for the copy
    /// ([`SnapshotCapture::held`]: the store file's size less its runs of zeros). On the
    /// development machine (two cores), a 1M-customer store was held 104-129 ms by a capture into
    /// new memory and 34-38 ms by one into an earlier capture's memory
    /// ([`Engine::capture_snapshot_into`]), against 0.25-1.1 s by a snapshot to ext4; a
    /// 10M-customer store 1.0-6.0 s (depending on what memory the kernel has free) and
    /// 0.36-0.47 s against 2.5-14 s (README, Speed). The copy holds every transaction committed
    /// before the call, as [`Engine::snapshot`]'s does (a device backend's recurrent state is
    /// written back first), and the events and signals.
    ///
    /// Through a read-only engine the capture holds a shared lock on the store only while it
    /// copies into memory.
    ///
    /// # Errors
    /// [`crate::Error::Locked`] (read-only engine) when a writer has this store open;
    /// [`crate::Error::InvalidArgument`] (read-only engine) when the store's path now holds
    /// another file; [`crate::Error::Io`] (`OutOfMemory`) when the memory for the copy cannot be
    /// had, or from a device backend's state write-back.
    pub fn capture_snapshot(&mut self) -> Result<SnapshotCapture> {
        self.write_back_device_state()?;
        let store = self.store.capture()?;
        Ok(SnapshotCapture {
            store,
            sidecar: self.render_sidecar(),
        })
    }

    /// [`Engine::capture_snapshot`] into the memory of an earlier capture, which it replaces: a
    /// service that snapshots on a schedule keeps one capture and writes it after each of these.
    ///
    /// A first copy goes into new memory, and every page of it is a page fault (on the
    /// development machine, 1.0-6.0 s for a 10M-customer store's 3 GB, against 0.36-0.47 s into
    /// a capture's memory); a copy into the memory of a capture of the same store is the copy
    /// alone (README, Speed). A capture of another length (another store, or this one before it
    /// grew) gets new memory.
    ///
    /// ```
    /// # use shadowbucket::{Contract, CreateOptions, Engine, EngineConfig, Rate};
    /// # let dir = std::env::temp_dir().join(format!("sb-doc-recapture-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// # let config = EngineConfig::new(1_000, Rate::tokens_per_sec(100));
    /// let mut live = Engine::create(dir.join("live.sb"), CreateOptions::new(1_000, config))?;
    /// let mut capture = live.capture_snapshot()?;
    /// capture.write(dir.join("snap.sb"))?;
    /// live.add_customer(7, Contract::new(50, Rate::tokens_per_sec(5)), 0)?;
    /// live.capture_snapshot_into(&mut capture)?; // the same memory, the store as it is now
    /// capture.write(dir.join("snap.sb"))?;
    /// assert_eq!(Engine::open(dir.join("snap.sb"))?.customer_ids(), vec![7]);
    /// # drop(live);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), shadowbucket::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Engine::capture_snapshot`]; `capture` is then unchanged.
    pub fn capture_snapshot_into(&mut self, capture: &mut SnapshotCapture) -> Result<()> {
        self.write_back_device_state()?;
        self.store.capture_into(&mut capture.store)?;
        capture.sidecar = self.render_sidecar();
        Ok(())
    }
}
