//! The store file: create, open and validate, column access, transactions and recovery.
//!
//! Durability (semantics I7) comes from an undo journal. A transaction (a batch, a settle, a tick,
//! one customer change) first copies the engine-wide state to an undo area and marks itself
//! active; before it first writes a slot it saves what it may change there; it commits by
//! recording its number as the last committed one. Most transactions copy the slot's record into
//! the slot's own journal entry and stamp the record with the transaction's sequence number; the
//! parallel batch path appends the record's cache lines to its shard's log instead, each only
//! before the batch may change it, and counts them in the shard's log head ([`JournalLog`]). A
//! process killed at any instant leaves either no active transaction or one whose every change
//! still has its pre-image: opening the store for writing restores them, so every transaction is
//! all or nothing, and the store says which was the last one completed and which one was rolled
//! back.
//!
//! All of this protects against the process dying (its writes to the shared mapping are already in
//! the page cache); [`Store::flush`] makes them durable against the machine dying too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{Ordering, compiler_fence};

use crate::error::{Error, Result};
use crate::index;
use crate::layout::*;
use crate::mmap::{self, Mapping};
use rayon::prelude::*;

/// Mutable views of every column and the state page, split out of one mapping.
pub(crate) struct ColsMut<'a> {
    pub state: &'a mut StatePage,
    pub buckets: &'a mut [Bucket],
    pub journal: &'a mut [Bucket],
    pub journal_aux: &'a mut [JournalAux],
    pub ids: &'a mut [u64],
    pub settled: &'a mut [Settled],
    pub closed: &'a mut [Closed],
    pub free: &'a mut [u32],
    pub index: &'a mut [IndexEntry],
    pub model_state: &'a mut [f32],
    pub forecast: &'a mut [f32],
    pub scenario: &'a mut [f32],
    pub scale: &'a mut [f32],
    pub log_heads: &'a mut [LogHead],
}

/// Mutable views of the state page and the columns an allocation touches. (Splitting out every
/// column, [`ColsMut`], twice per call took a single request on cached records about twice the
/// time of its decision, in a profile.)
pub(crate) struct AllocCols<'a> {
    pub state: &'a mut StatePage,
    pub buckets: &'a mut [Bucket],
    pub journal: &'a mut [Bucket],
    pub log_heads: &'a mut [LogHead],
}

/// Mutable views of the state page and the columns a single customer's change touches: its
/// record and its full pre-image (`journal_full`).
pub(crate) struct SlotCols<'a> {
    pub state: &'a mut StatePage,
    pub buckets: &'a mut [Bucket],
    pub journal: &'a mut [Bucket],
    pub settled: &'a mut [Settled],
    pub closed: &'a mut [Closed],
    pub journal_aux: &'a mut [JournalAux],
}

impl ColsMut<'_> {
    /// The [`SlotCols`] part of these views.
    pub(crate) fn slot_cols(&mut self) -> SlotCols<'_> {
        SlotCols {
            state: self.state,
            buckets: self.buckets,
            journal: self.journal,
            settled: self.settled,
            closed: self.closed,
            journal_aux: self.journal_aux,
        }
    }
}

/// Shared views of every column and the state page.
pub(crate) struct Cols<'a> {
    pub state: &'a StatePage,
    pub buckets: &'a [Bucket],
    pub ids: &'a [u64],
    pub closed: &'a [Closed],
    pub settled: &'a [Settled],
    pub free: &'a [u32],
    pub index: &'a [IndexEntry],
    pub model_state: &'a [f32],
    pub forecast: &'a [f32],
    pub scenario: &'a [f32],
    pub scale: &'a [f32],
}

/// An open store file.
pub(crate) struct Store {
    pub path: PathBuf,
    pub header: FileHeader,
    map: Mapping,
}

fn split_cols<'a>(bytes: &'a mut [u8], h: &'a FileHeader) -> ColsMut<'a> {
    let (state, mut s) = Splitter::new(bytes, h);
    // (taken in the file's order)
    ColsMut {
        state,
        buckets: s.take(Col::Buckets),
        journal: s.take(Col::Journal),
        ids: s.take(Col::Ids),
        settled: s.take(Col::Settled),
        closed: s.take(Col::Closed),
        free: s.take(Col::FreeStack),
        index: s.take(Col::Index),
        model_state: s.take(Col::ModelState),
        forecast: s.take(Col::Forecast),
        scenario: s.take(Col::Scenario),
        scale: s.take(Col::Scale),
        journal_aux: s.take(Col::JournalAux),
        log_heads: s.take(Col::LogHeads),
    }
}

/// [`AllocCols`] out of one mapping.
fn split_alloc_cols<'a>(bytes: &'a mut [u8], h: &'a FileHeader) -> AllocCols<'a> {
    let (state, mut s) = Splitter::new(bytes, h);
    AllocCols {
        state,
        buckets: s.take(Col::Buckets),
        journal: s.take(Col::Journal),
        log_heads: s.take(Col::LogHeads),
    }
}

/// [`SlotCols`] out of one mapping.
fn split_slot_cols<'a>(bytes: &'a mut [u8], h: &'a FileHeader) -> SlotCols<'a> {
    let (state, mut s) = Splitter::new(bytes, h);
    SlotCols {
        state,
        buckets: s.take(Col::Buckets),
        journal: s.take(Col::Journal),
        settled: s.take(Col::Settled),
        closed: s.take(Col::Closed),
        journal_aux: s.take(Col::JournalAux),
    }
}

/// Mutable column views split off a writable mapping, one after another in the file's order.
struct Splitter<'a> {
    header: &'a FileHeader,
    /// The mapping's bytes from file offset `pos` on.
    rest: &'a mut [u8],
    pos: u64,
}

impl<'a> Splitter<'a> {
    /// The state page, and a splitter for the columns after it.
    fn new(bytes: &'a mut [u8], header: &'a FileHeader) -> (&'a mut StatePage, Splitter<'a>) {
        let (_, rest) = bytes.split_at_mut(HEADER_BYTES as usize);
        let (state, rest) = rest.split_at_mut(STATE_BYTES as usize);
        let state = bytemuck::from_bytes_mut(&mut state[..std::mem::size_of::<StatePage>()]);
        let pos = HEADER_BYTES + STATE_BYTES;
        (state, Splitter { header, rest, pos })
    }

    /// Column `c`'s view (a column after every one taken before).
    fn take<T: bytemuck::Pod>(&mut self, c: Col) -> &'a mut [T] {
        let d = self.header.columns[c as usize];
        let (_, r) = std::mem::take(&mut self.rest).split_at_mut((d.offset - self.pos) as usize);
        let (col, r) = r.split_at_mut(d.len as usize);
        self.rest = r;
        self.pos = d.offset + d.len;
        bytemuck::cast_slice_mut(col)
    }
}

fn col<'a, T: bytemuck::Pod>(bytes: &'a [u8], h: &FileHeader, c: Col) -> &'a [T] {
    let d = h.columns[c as usize];
    bytemuck::cast_slice(&bytes[d.offset as usize..(d.offset + d.len) as usize])
}

/// Whether `h` is the header of a version 1 store that a killed process was marking as version
/// 2 in place (as version 2 builds did): one of the two changed fields (the version and the
/// checksum) written, the other not yet. The header is whole otherwise (the two versions share a
/// layout), and the next open for writing upgrades the store.
fn torn_upgrade(h: &FileHeader) -> bool {
    h.version <= 2
        && (1..=2).any(|version| {
            let other = FileHeader { version, ..*h };
            other.checksum == other.compute_checksum()
        })
}

/// Checks a header read from `path` whose file is `actual_len` bytes long.
fn validate_header(path: &Path, bytes: &[u8]) -> Result<FileHeader> {
    let bad = |r: String| Error::bad_file(path, r);
    let h: FileHeader = bytemuck::pod_read_unaligned(&bytes[..std::mem::size_of::<FileHeader>()]);
    if h.magic != MAGIC {
        return Err(bad("wrong magic (not a store file)".into()));
    }
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&h.version) {
        return Err(bad(format!(
            "unknown format version {} (this build reads versions {OLDEST_FORMAT_VERSION} to \
             {FORMAT_VERSION})",
            h.version
        )));
    }
    if h.checksum != h.compute_checksum() && !torn_upgrade(&h) {
        return Err(bad(
            "header checksum mismatch (the header is corrupt)".into()
        ));
    }
    if h.header_len as usize != std::mem::size_of::<FileHeader>() {
        return Err(bad(format!("header length {} is wrong", h.header_len)));
    }
    if h.capacity == 0 || h.capacity >= u32::MAX as u64 {
        return Err(bad(format!("capacity {} out of range", h.capacity)));
    }
    let dims = h.dims();
    let Some((cols, len)) = dims.layout_of(h.version) else {
        return Err(bad("dimensions overflow".into()));
    };
    if h.index_capacity != dims.index_capacity() {
        return Err(bad("index capacity does not match the capacity".into()));
    }
    for (i, (got, want)) in h.columns.iter().zip(cols.iter()).enumerate() {
        if got != want {
            return Err(bad(format!(
                "column {i} out of bounds: at {}+{}, expected {}+{}",
                got.offset, got.len, want.offset, want.len
            )));
        }
    }
    if h.file_len != len {
        return Err(bad(format!("file length field {} is wrong", h.file_len)));
    }
    if (bytes.len() as u64) < len {
        return Err(bad(format!(
            "truncated: {} bytes, the header says {len}",
            bytes.len()
        )));
    }
    Ok(h)
}

fn validate_state(path: &Path, h: &FileHeader, s: &StatePage) -> Result<()> {
    let bad = |r: &str| Err(Error::bad_file(path, r));
    let g = &s.globals;
    if g.customers > h.capacity || g.free_top > h.capacity || g.customers + g.free_top != h.capacity
    {
        return bad("customer count and free list do not add up to the capacity");
    }
    if g.config.pool_burst == 0 || g.config.pool_rate == 0 || g.config.interval_ns == 0 {
        return bad("engine configuration is zero");
    }
    let t = &s.txn;
    if t.active != 0
        && t.active <= t.last_committed.max(t.last_rolled_back)
        && t.active != t.last_committed
    {
        return bad("transaction state is inconsistent");
    }
    Ok(())
}

impl Store {
    /// Creates a new store file of these dimensions, with zeroed columns.
    pub(crate) fn create(path: &Path, dims: Dims) -> Result<Store> {
        if dims.capacity == 0 || dims.capacity >= u32::MAX as u64 {
            return Err(Error::invalid(format!(
                "capacity must be 1..{}, got {}",
                u32::MAX,
                dims.capacity
            )));
        }
        let limits = [
            ("state", dims.state_dim, 1 << 16),
            ("forecast", dims.forecast_dim, 1 << 10),
            ("scenario", dims.scenario_dim, 64),
            ("scale", dims.scale_dim, 64),
        ];
        if let Some((name, got, most)) = limits.into_iter().find(|&(_, got, most)| got > most) {
            return Err(Error::invalid(format!(
                "model dimensions too large: {name} {got}, at most {most}"
            )));
        }
        let header = FileHeader::new(dims).ok_or_else(|| Error::invalid("store too large"))?;
        let mut map = mmap::create(path, header.file_len)?;
        let bytes = map.bytes_mut().expect("writable");
        bytes[..std::mem::size_of::<FileHeader>()].copy_from_slice(bytemuck::bytes_of(&header));
        let mut store = Store {
            path: path.to_path_buf(),
            header,
            map,
        };
        let c = store.cols_mut().expect("writable");
        for (i, f) in c.free.iter_mut().enumerate() {
            *f = (dims.capacity as usize - 1 - i) as u32;
        }
        c.index.fill(IndexEntry {
            id: INDEX_EMPTY,
            slot: 0,
        });
        c.state.globals.free_top = dims.capacity;
        Ok(store)
    }

    /// Opens and validates an existing store; for writing, recovers an interrupted transaction
    /// (and upgrades an older version's store, see [`FORMAT_VERSION`]).
    pub(crate) fn open(path: &Path, write: bool) -> Result<(Store, Option<u64>)> {
        let min = HEADER_BYTES + STATE_BYTES;
        let map = if write {
            mmap::open_write(path, min)?
        } else {
            mmap::open_read(path, min)?
        };
        let header = validate_header(path, map.bytes())?;
        let state: StatePage = bytemuck::pod_read_unaligned(
            &map.bytes()
                [HEADER_BYTES as usize..HEADER_BYTES as usize + std::mem::size_of::<StatePage>()],
        );
        validate_state(path, &header, &state)?;
        if header.version < FORMAT_VERSION {
            if !write {
                return Err(Error::bad_file(
                    path,
                    format!(
                        "format version {} is read only to upgrade it: open the store for \
                         writing once, which rewrites it as version {FORMAT_VERSION}",
                        header.version
                    ),
                ));
            }
            return Store::upgrade(path, &header, map);
        }
        let mut store = Store {
            path: path.to_path_buf(),
            header,
            map,
        };
        // (only now that the file is known to be a store: a bad file is left as it was)
        store.map.allocate(path)?;
        let recovered = if write { store.recover(false) } else { None };
        Ok((store, recovered))
    }

    /// Rewrites a version 1 or 2 store (`old`, mapped for writing, its header `h` validated) as
    /// this version, through [`Store::replace`] as [`crate::Engine::grow`] replaces a store: the
    /// columns copied (each record's fields reordered), the interrupted transaction, if any,
    /// rolled back as the old version journaled it.
    fn upgrade(path: &Path, h: &FileHeader, old: Mapping) -> Result<(Store, Option<u64>)> {
        let bytes = old.bytes();
        // (validated: the header's column table is the old version's layout)
        let column = |c: Col| col::<u8>(bytes, h, c);
        let convert = |to: &mut [Bucket], c: Col| {
            // (the column starts on a page boundary of the mapping, so it is aligned)
            for (t, &b) in to
                .iter_mut()
                .zip(bytemuck::cast_slice::<u8, BucketV2>(column(c)))
            {
                *t = Bucket::from(b);
            }
        };
        Store::replace(path, ".upgrade-tmp", h.dims(), |next| {
            {
                let n = next.cols_mut()?;
                let s = HEADER_BYTES as usize;
                *n.state =
                    bytemuck::pod_read_unaligned(&bytes[s..s + std::mem::size_of::<StatePage>()]);
                convert(n.buckets, Col::Buckets);
                convert(n.journal, Col::Journal);
                for (to, c) in [
                    (bytemuck::cast_slice_mut::<_, u8>(n.ids), Col::Ids),
                    (bytemuck::cast_slice_mut(n.settled), Col::Settled),
                    (bytemuck::cast_slice_mut(n.closed), Col::Closed),
                    (bytemuck::cast_slice_mut(n.free), Col::FreeStack),
                    (bytemuck::cast_slice_mut(n.index), Col::Index),
                    (bytemuck::cast_slice_mut(n.model_state), Col::ModelState),
                    (bytemuck::cast_slice_mut(n.forecast), Col::Forecast),
                    (bytemuck::cast_slice_mut(n.scenario), Col::Scenario),
                    (bytemuck::cast_slice_mut(n.scale), Col::Scale),
                    (bytemuck::cast_slice_mut(n.journal_aux), Col::JournalAux),
                ] {
                    to.copy_from_slice(column(c));
                }
            }
            Ok(next.recover(true))
        })
    }

    /// Replaces the store file at `path` with a new one of shape `dims`: creates it beside
    /// `path` (its name with `suffix` added), lets `fill` write it, flushes it and renames it
    /// over `path` ([`write_beside`]).
    pub(crate) fn replace<T>(
        path: &Path,
        suffix: &str,
        dims: Dims,
        fill: impl FnOnce(&mut Store) -> Result<T>,
    ) -> Result<(Store, T)> {
        let (mut next, out) = write_beside(path, suffix, |tmp| {
            let mut next = Store::create(tmp, dims)?;
            let out = fill(&mut next)?;
            next.flush()?;
            Ok((next, out))
        })?;
        next.path = path.to_path_buf();
        Ok((next, out))
    }

    /// Writes a copy of the store file to `dest` (see [`crate::Engine::snapshot`]) through
    /// [`write_snapshot`]: to `dest` with `.snapshot-tmp` added (runs of zeros left as holes),
    /// synced to disk, then `before_rename`, then renamed over `dest`.
    /// `progress` gets the bytes copied so far and the total after each chunk. Returns the bytes
    /// written (the rest are holes). On an error the new file is removed and `dest` is as it was.
    pub(crate) fn snapshot_to(
        &self,
        dest: &Path,
        progress: impl FnMut(u64, u64),
        before_rename: impl FnOnce() -> Result<()>,
    ) -> Result<u64> {
        let _still = self.hold_still_current()?;
        check_snapshot_dest(dest, &self.path, self.map.id(&self.path).as_ref())?;
        let bytes = self.map.bytes();
        let chunks = bytes.chunks(SNAPSHOT_CHUNK).map(|c| {
            if all_zero(c) {
                Chunk::Zeros(c.len())
            } else {
                Chunk::Data(c)
            }
        });
        write_snapshot(dest, bytes.len() as u64, chunks, progress, before_rename)
    }

    /// Copies the store file into new memory (see [`crate::Engine::capture_snapshot`]), as
    /// [`Store::capture_into`] does.
    ///
    /// # Errors
    /// As [`Store::capture_into`].
    pub(crate) fn capture(&self) -> Result<Captured> {
        let mut c = Captured {
            copy: mmap::anonymous(self.map.bytes().len(), &self.path)?,
            data: Vec::new(),
            source: self.source(),
            last_committed: 0,
        };
        self.capture_into(&mut c)?;
        Ok(c)
    }

    /// Copies the store file into memory, in parallel, chunks of zeros left out: into `into`'s
    /// memory when it is as long as the file (a copy of the same store, captured before: none of
    /// its pages is faulted in again), else into new memory. Nobody changes the store meanwhile:
    /// a writer's caller holds it (`&self` of its only handle), and a read-only store is held
    /// still ([`Mapping::hold_still`]) until the copy is made.
    ///
    /// # Errors
    /// As [`Store::snapshot_to`] before it writes (a read-only store that a writer has open, or
    /// whose path now names another file); [`Error::Io`] (`OutOfMemory`) when the system refuses
    /// the memory for the copy. `into` is then unchanged.
    pub(crate) fn capture_into(&self, into: &mut Captured) -> Result<()> {
        let _still = self.hold_still_current()?;
        let bytes = self.map.bytes();
        let reused = into.copy.len() == bytes.len();
        if !reused {
            into.copy = mmap::anonymous(bytes.len(), &self.path)?;
        }
        let data = copy_data(bytes, &mut into.copy);
        if reused {
            release_stale(&mut into.copy, &into.data, &data);
        }
        into.data = data;
        into.source = self.source();
        into.last_committed = self.last_committed();
        Ok(())
    }

    /// The last committed transaction; read while the store is held still, that of its copy.
    pub(crate) fn last_committed(&self) -> u64 {
        self.cols().state.txn.last_committed
    }

    /// The store's path and its file, for a copy of it ([`Captured::source`]).
    fn source(&self) -> (PathBuf, Option<mmap::FileId>) {
        (self.path.clone(), self.map.id(&self.path))
    }

    /// [`Mapping::hold_still`], after making sure that a read-only store's path still names the
    /// file it mapped: a store grown or upgraded since is a new file at the same path, and this
    /// one would be a stale copy of it.
    fn hold_still_current(&self) -> Result<mmap::StillGuard<'_>> {
        let still = self.map.hold_still(&self.path)?;
        if self.read_only() {
            let current = mmap::open_existing(&self.path)?;
            if !current.is_some_and(|f| self.map.is_same_file(&self.path, &f, &self.path)) {
                return Err(Error::invalid(format!(
                    "{} is no longer the file this engine opened (the store was grown, upgraded \
                     or removed since): open it again",
                    self.path.display()
                )));
            }
        }
        Ok(still)
    }

    /// The store file's length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.map.bytes().len() as u64
    }

    /// Whether the store was opened read-only.
    pub(crate) fn read_only(&self) -> bool {
        matches!(self.map, Mapping::Read { .. })
    }

    /// The writable mapping's bytes and the header; [`Error::ReadOnly`] for a read-only store.
    fn writable(&mut self) -> Result<(&mut [u8], &FileHeader)> {
        // (`ok_or(Error::ReadOnly)` built the error, and dropped it with a call, on every success)
        match self.map.bytes_mut() {
            Some(bytes) => Ok((bytes, &self.header)),
            None => Err(Error::ReadOnly),
        }
    }

    pub(crate) fn cols_mut(&mut self) -> Result<ColsMut<'_>> {
        let (bytes, h) = self.writable()?;
        Ok(split_cols(bytes, h))
    }

    pub(crate) fn alloc_cols_mut(&mut self) -> Result<AllocCols<'_>> {
        let (bytes, h) = self.writable()?;
        Ok(split_alloc_cols(bytes, h))
    }

    pub(crate) fn slot_cols_mut(&mut self) -> Result<SlotCols<'_>> {
        let (bytes, h) = self.writable()?;
        Ok(split_slot_cols(bytes, h))
    }

    /// One column's shared view (what [`Store::cols`] gives for it, without splitting out the
    /// others).
    pub(crate) fn col<T: bytemuck::Pod>(&self, c: Col) -> &[T] {
        col(self.map.bytes(), &self.header, c)
    }

    pub(crate) fn cols(&self) -> Cols<'_> {
        let b = self.map.bytes();
        let h = &self.header;
        let s = HEADER_BYTES as usize;
        Cols {
            state: bytemuck::from_bytes(&b[s..s + std::mem::size_of::<StatePage>()]),
            buckets: col(b, h, Col::Buckets),
            ids: col(b, h, Col::Ids),
            closed: col(b, h, Col::Closed),
            settled: col(b, h, Col::Settled),
            free: col(b, h, Col::FreeStack),
            index: col(b, h, Col::Index),
            model_state: col(b, h, Col::ModelState),
            forecast: col(b, h, Col::Forecast),
            scenario: col(b, h, Col::Scenario),
            scale: col(b, h, Col::Scale),
        }
    }

    pub(crate) fn flush(&self) -> Result<()> {
        self.map.flush(&self.path)
    }

    /// Rolls back a transaction left active by a killed process. Returns its sequence number.
    /// `legacy`: the journal is a version 1 or 2 store's (converted to this version's records),
    /// whose batch logs held whole records tagged in `epoch` and `_pad`, the records they
    /// covered stamped with the transaction.
    fn recover(&mut self, legacy: bool) -> Option<u64> {
        let mut c = self.cols_mut().expect("writable");
        let txn = c.state.txn;
        if txn.active == 0 {
            return None;
        }
        if txn.active == txn.last_committed {
            c.state.txn.active = 0;
            return None;
        }
        let seq = txn.active;
        if txn.kind == txn_kind::ALLOCATE && !legacy {
            restore_logs(&mut c, seq);
        } else if txn.kind == txn_kind::ALLOCATE {
            // Version 2's batch logs: entries tagged with this transaction, each naming its
            // slot. The per-slot pass below then finds no record of those left stamped with it.
            for e in c.journal.iter() {
                if e.epoch != seq {
                    continue;
                }
                if let Some(b) = c.buckets.get_mut(e._pad as usize)
                    && b.epoch == seq
                {
                    *b = Bucket {
                        epoch: 0,
                        _pad: 0,
                        ..*e
                    };
                }
            }
        }
        for (i, b) in c.buckets.iter_mut().enumerate() {
            if b.epoch != seq {
                continue;
            }
            *b = c.journal[i];
            if txn.kind >= txn_kind::SETTLE {
                c.settled[i] = c.journal_aux[i].settled;
            }
            if txn.kind >= txn_kind::TICK {
                c.closed[i] = c.journal_aux[i].closed;
            }
        }
        c.state.globals = c.state.undo;
        if txn.kind == txn_kind::ADMIN {
            rebuild_index(&mut c);
        }
        c.state.txn.last_rolled_back = seq;
        compiler_fence(Ordering::SeqCst);
        c.state.txn.active = 0;
        Some(seq)
    }
}

/// Rebuilds the index from the records (dropping its tombstones).
///
/// The free-slot stack needs no rebuild: customer changes only push past its top or move the top,
/// and the top is restored with the rest of the globals, so after a rollback the stack is exactly
/// what it was (and the next customer gets the slot it would have got without the crash).
pub(crate) fn rebuild_index(c: &mut ColsMut<'_>) {
    let live = c
        .buckets
        .iter()
        .enumerate()
        .filter(|(_, b)| b.active())
        .map(|(i, _)| (c.ids[i], i as u64));
    index::rebuild(c.index, live);
    c.state.globals.tombstones = 0;
}

/// Rebuilds the free-slot stack from the records (lowest slot on top); used by `grow`.
pub(crate) fn rebuild_free(c: &mut ColsMut<'_>) {
    let mut top = 0usize;
    for i in (0..c.buckets.len()).rev() {
        if !c.buckets[i].active() {
            c.free[top] = i as u32;
            top += 1;
        }
    }
    c.state.globals.free_top = top as u64;
}

/// A transaction in flight: begun on construction, committed by [`Txn::commit`]. Dropping it
/// without committing (an early return) leaves it active, exactly like a crash, and the next
/// writer's open rolls it back; callers validate before they begin, so that never happens on
/// bad input.
pub(crate) struct Txn {
    pub seq: u64,
}

impl Txn {
    pub(crate) fn begin(state: &mut StatePage, kind: u64) -> Txn {
        let seq = state.txn.last_committed.max(state.txn.last_rolled_back) + 1;
        state.undo = state.globals;
        state.txn.kind = kind;
        compiler_fence(Ordering::SeqCst);
        state.txn.active = seq;
        compiler_fence(Ordering::SeqCst);
        Txn { seq }
    }

    pub(crate) fn commit(self, state: &mut StatePage) {
        compiler_fence(Ordering::SeqCst);
        state.txn.last_committed = self.seq;
        compiler_fence(Ordering::SeqCst);
        state.txn.active = 0;
    }
}

/// Saves a bucket's pre-image once per transaction.
///
/// The pre-image is stored before the stamp that tells recovery to put it back, and the stamp
/// before the caller's first change to the record (both orders held against the compiler too: a
/// change moved above the stamp would, if the process were killed between the two, survive the
/// transaction's rollback).
#[inline(always)]
pub(crate) fn journal_bucket(b: &mut Bucket, j: &mut Bucket, seq: u64) {
    if b.epoch != seq {
        *j = *b;
        compiler_fence(Ordering::SeqCst);
        b.epoch = seq;
        compiler_fence(Ordering::SeqCst);
    }
}

/// Makes a new file at `path` the safe way: `make` creates and fills it under a temporary name
/// beside `path` (`path` with `suffix` added; a file left there by a killed process is removed
/// first) and makes it durable, then it is renamed over `path` and the directory synced. A process
/// killed before the rename leaves `path` as it was; an error removes the temporary file.
pub(crate) fn write_beside<T>(
    path: &Path,
    suffix: &str,
    make: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(suffix);
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let made = make(&tmp).and_then(|out| {
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        Ok(out)
    });
    let out = made.inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    sync_parent_dir(path);
    Ok(out)
}

/// Bytes of the store a snapshot copies at a time (and between two progress reports).
const SNAPSHOT_CHUNK: usize = 4 << 20;

/// A store file copied into memory ([`Store::capture`]).
pub(crate) struct Captured {
    /// The copy, as long as the file. Its chunks of zeros are not written: they hold no memory
    /// (in memory reused from an earlier copy, what that copy had there is given back:
    /// [`release_stale`]).
    copy: memmap2::MmapMut,
    /// Per [`SNAPSHOT_CHUNK`] of the file, in order: whether it holds anything but zeros.
    data: Vec<bool>,
    /// The store's path and which file it was when copied, so that the copy is never written
    /// over it (or its events file).
    source: (PathBuf, Option<mmap::FileId>),
    /// The last transaction the copy holds (read before the store was let go: through a
    /// read-only engine, a writer may commit more the moment it is).
    last_committed: u64,
}

impl Captured {
    /// The store file's length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.copy.len() as u64
    }

    /// The last transaction the copy holds.
    pub(crate) fn last_committed(&self) -> u64 {
        self.last_committed
    }

    /// Bytes of the file the copy holds (its chunks that are not all zeros).
    pub(crate) fn held(&self) -> u64 {
        self.chunks()
            .map(|c| match c {
                Chunk::Data(b) => b.len() as u64,
                Chunk::Zeros(_) => 0,
            })
            .sum()
    }

    fn chunks(&self) -> impl Iterator<Item = Chunk<'_>> {
        self.copy
            .chunks(SNAPSHOT_CHUNK)
            .zip(&self.data)
            .map(|(c, &data)| {
                if data {
                    Chunk::Data(c)
                } else {
                    Chunk::Zeros(c.len())
                }
            })
    }

    /// Writes the copy to `dest` as [`Store::snapshot_to`] writes the store itself.
    pub(crate) fn write_to(
        &self,
        dest: &Path,
        progress: impl FnMut(u64, u64),
        before_rename: impl FnOnce() -> Result<()>,
    ) -> Result<u64> {
        // Only while the file is still at its path is its id its own: a file removed since (a
        // store grown, upgraded or deleted) may have left its inode number to any new file, the
        // destination included.
        let (path, id) = &self.source;
        let id = id.as_ref().filter(|id| {
            let there = mmap::open_existing(path).ok().flatten();
            there.is_some_and(|f| mmap::file_id(&f, path).as_ref() == Some(id))
        });
        check_snapshot_dest(dest, path, id)?;
        write_snapshot(dest, self.len(), self.chunks(), progress, before_rename)
    }
}

/// Copies each [`SNAPSHOT_CHUNK`] of `from` that is not all zeros to the same place in `to` (as
/// long), in parallel; says which were copied. A chunk of zeros is not written: in new memory its
/// pages never take any.
fn copy_data(from: &[u8], to: &mut [u8]) -> Vec<bool> {
    to.par_chunks_mut(SNAPSHOT_CHUNK)
        .zip(from.par_chunks(SNAPSHOT_CHUNK))
        .map(|(to, from)| {
            let data = !all_zero(from);
            if data {
                to.copy_from_slice(from);
            }
            data
        })
        .collect()
}

/// Gives back the memory of each [`SNAPSHOT_CHUNK`] of `copy` that held data in the copy it
/// held before (`was`) and is a chunk of zeros in the one it holds now (`now`), so that it holds
/// no more than the chunks it says ([`Captured::held`]). (Unix; elsewhere such a chunk keeps its
/// memory, and its old bytes, which are never read: a chunk of zeros is written as a hole.)
fn release_stale(copy: &mut memmap2::MmapMut, was: &[bool], now: &[bool]) {
    for (i, (&was, &now)) in was.iter().zip(now).enumerate() {
        if !was || now {
            continue;
        }
        let at = i * SNAPSHOT_CHUNK;
        let len = SNAPSHOT_CHUNK.min(copy.len() - at);
        #[cfg(unix)]
        // SAFETY: `copy` is private anonymous memory borrowed mutably here, so nothing else
        // refers to it; its pages in the range read as zeros afterwards, and nobody reads them
        // (the chunk is written as a hole).
        let _ = unsafe { copy.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, at, len) };
        #[cfg(not(unix))]
        let _ = (copy.len(), at, len);
    }
}

/// A piece of a store file to write: its bytes, or the length of a run of zeros (a hole).
enum Chunk<'a> {
    Data(&'a [u8]),
    Zeros(usize),
}

/// Refuses a snapshot's destination that names no file, that is the store itself (`source`, the
/// file of the store at `store`) or its events file, a store a writer has open (renaming a new
/// file over it would leave that writer changing a file nobody can open again), or a folder; and
/// one whose events file (which the snapshot replaces too) is the store itself or a store a
/// writer has open.
fn check_snapshot_dest(dest: &Path, store: &Path, source: Option<&mmap::FileId>) -> Result<()> {
    if dest.file_name().is_none() {
        // ("" or a path ending in "..": the temporary and events files would land beside it,
        // under names of their own)
        return Err(Error::invalid(format!(
            "{:?} names no file: a snapshot goes to a file's path",
            dest.display().to_string()
        )));
    }
    let events = crate::predict::sidecar::path_for(dest);
    if place(dest).is_some_and(|p| place(&crate::predict::sidecar::path_for(store)) == Some(p)) {
        return Err(Error::invalid(format!(
            "{} is the store's events file: a snapshot goes to another path",
            dest.display()
        )));
    }
    for path in [dest, &events] {
        let Some(file) = mmap::open_existing(path)? else {
            continue;
        };
        if source.is_some_and(|s| mmap::file_id(&file, path).as_ref() == Some(s)) {
            return Err(Error::invalid(format!(
                "{} is the store itself: a snapshot goes to another path",
                path.display()
            )));
        }
        if mmap::writer_holds(&file, path)? {
            return Err(Error::Locked(path.to_path_buf()));
        }
        if path == dest && file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(Error::io(
                dest,
                std::io::Error::from(std::io::ErrorKind::IsADirectory),
            ));
        }
    }
    Ok(())
}

/// `path` with its folder's canonical path (the same for every spelling of one place), if the
/// folder exists.
fn place(path: &Path) -> Option<PathBuf> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new(".")).canonicalize().ok()?;
    Some(dir.join(path.file_name()?))
}

/// Writes `chunks` (`total` bytes in all) to a new file beside `dest` (its name with
/// `.snapshot-tmp` added; runs of zeros as holes), syncs it, calls `before_rename` and renames
/// it over `dest` ([`write_beside`]). Returns the bytes written.
fn write_snapshot<'a>(
    dest: &Path,
    total: u64,
    chunks: impl Iterator<Item = Chunk<'a>>,
    mut progress: impl FnMut(u64, u64),
    before_rename: impl FnOnce() -> Result<()>,
) -> Result<u64> {
    use std::io::{Seek, SeekFrom, Write};
    let _turn = SnapshotTurn::take(dest);
    write_beside(dest, ".snapshot-tmp", |tmp| {
        let copy = || -> std::io::Result<u64> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(tmp)?;
            let (mut done, mut written) = (0, 0);
            for chunk in chunks {
                let n = match chunk {
                    Chunk::Zeros(n) => {
                        f.seek(SeekFrom::Current(n as i64))?;
                        n
                    }
                    Chunk::Data(b) => {
                        f.write_all(b)?;
                        written += b.len() as u64;
                        b.len()
                    }
                };
                done += n as u64;
                progress(done, total);
            }
            f.set_len(total)?;
            f.sync_all()?;
            Ok(written)
        };
        let written = copy().map_err(|e| Error::io(tmp, e))?;
        before_rename()?;
        Ok(written)
    })
}

/// A snapshot being written by this process to a destination: its turn at the destination's
/// temporary file. Two writes to one destination at once (a capture's writes may run on any
/// threads) would share that file, each removing the other's and one renaming the other's
/// unfinished copy over the destination; so the second waits until the first is done.
struct SnapshotTurn(PathBuf);

/// The destinations being written ([`SnapshotTurn`]), and a wake-up for those waiting for one.
static SNAPSHOT_TURNS: (std::sync::Mutex<Vec<PathBuf>>, std::sync::Condvar) =
    (std::sync::Mutex::new(Vec::new()), std::sync::Condvar::new());

impl SnapshotTurn {
    /// Waits until no other write of this process is writing to `dest` (under any spelling of
    /// its folder), then takes its turn.
    fn take(dest: &Path) -> SnapshotTurn {
        let key = place(dest).unwrap_or_else(|| dest.to_path_buf());
        let (turns, wake) = &SNAPSHOT_TURNS;
        let mut busy = turns.lock().unwrap_or_else(|e| e.into_inner());
        while busy.contains(&key) {
            busy = wake.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        busy.push(key.clone());
        SnapshotTurn(key)
    }
}

impl Drop for SnapshotTurn {
    fn drop(&mut self) {
        let (turns, wake) = &SNAPSHOT_TURNS;
        let mut busy = turns.lock().unwrap_or_else(|e| e.into_inner());
        busy.retain(|k| k != &self.0);
        wake.notify_all();
    }
}

/// Whether `b` holds only zero bytes (a run a snapshot leaves as a hole).
fn all_zero(b: &[u8]) -> bool {
    let (head, words, tail) = bytemuck::pod_align_to::<u8, u64>(b);
    head.iter().chain(tail).all(|&x| x == 0)
        && words
            .chunks(64)
            .all(|c| c.iter().fold(0, |acc, &w| acc | w) == 0)
}

/// Makes a rename in `path`'s directory durable (best effort: some file systems refuse to sync a
/// directory).
fn sync_parent_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Rolls back the batch logs ([`JournalLog`]) that transaction `seq` wrote: every log head
/// stamped with it names its shard and how many entries of each kind it holds.
fn restore_logs(c: &mut ColsMut<'_>, seq: u64) {
    let capacity = c.buckets.len();
    let journal: &[Line] = bytemuck::cast_slice(&*c.journal);
    let buckets: &mut [Line] = bytemuck::cast_slice_mut(&mut *c.buckets);
    for h in c.log_heads.iter().filter(|h| h.seq == seq) {
        let (first, slots) = (h.first_slot as usize, h.slots as usize);
        let [n0, n1] = h.entries.map(|n| n as usize);
        // A head is written by this build only, for a shard inside the store; anything else
        // would be a damaged file, whose entries are not trusted.
        if first + slots > capacity || n0 + n1 > 2 * slots {
            continue;
        }
        let lines = &journal[2 * first..2 * (first + slots)];
        restore_entries::<FIRST_LINE>(lines, n0, first..first + slots, buckets);
        restore_entries::<SECOND_LINE>(lines, n1, first..first + slots, buckets);
    }
}

/// Puts the `n` entries of kind `L` of a shard's log `lines` back into the records (as lines),
/// each in its slot when that lies in the shard's range.
fn restore_entries<const L: usize>(
    lines: &[Line],
    n: usize,
    shard: std::ops::Range<usize>,
    buckets: &mut [Line],
) {
    for k in 0..n {
        let (slot, line) = untag::<L>(lines[at::<L>(lines.len(), k)]);
        if shard.contains(&slot) {
            buckets[2 * slot + L] = line;
        }
    }
}

/// A log entry holding a record's first line ([`JournalLog`]).
pub(crate) const FIRST_LINE: usize = 0;
/// A log entry holding a record's second line.
pub(crate) const SECOND_LINE: usize = 1;

/// Where entry `k` of kind `L` lies in a log of `len` lines: first lines from the start, second
/// lines from the end backwards.
#[inline(always)]
fn at<const L: usize>(len: usize, k: usize) -> usize {
    if L == FIRST_LINE { k } else { len - 1 - k }
}

/// Line `L` of a record as a log entry: the slot goes in a field that the restore sets to a
/// known value, `_pad` (the first line's last four bytes) or `epoch` (the second line's last
/// eight; offsets asserted in `layout`).
#[inline(always)]
fn tag<const L: usize>(mut line: Line, slot: usize) -> Line {
    line[7] = if L == FIRST_LINE {
        (line[7] & u32::MAX as u64) | (slot as u64) << 32
    } else {
        slot as u64
    };
    line
}

/// [`tag`] undone: the slot, and the line as it was (`_pad` zero, `epoch` reset to zero).
#[inline(always)]
fn untag<const L: usize>(mut e: Line) -> (usize, Line) {
    let slot = if L == FIRST_LINE { e[7] >> 32 } else { e[7] };
    e[7] = if L == FIRST_LINE {
        e[7] & u32::MAX as u64
    } else {
        0
    };
    (slot as usize, e)
}

/// A shard's journal for the batch path: a log in the shard's own range of the journal column
/// (two 64-byte lines per slot), with a head in the log heads column.
///
/// The first time a batch touches a record, the record's first line (everything a shadow grant
/// changes) is appended from the start of the range; before the batch first changes the record's
/// second line (a denial's or a pool request's counters, the reservation a fallback raises), that
/// line is appended from the end of the range backwards. Each entry names its slot in a field
/// that the line restores to a known value (`_pad`, `epoch`), and the head counts the entries, so
/// recovery ([`Store::recover`]) restores exactly the lines a killed batch may have changed. A
/// batch of shadow grants thus writes 64 bytes of journal per customer, and never dirties (nor
/// writes back) the records' second lines: the uniform 1M bench's customer-local phase took
/// 9.28-9.34 ms against 9.80-9.84 with whole records logged and stamped (format version 2; see
/// the README).
pub(crate) struct JournalLog<'a> {
    lines: &'a mut [Line],
    /// The shard and its entries so far, as recovery reads them.
    head: &'a mut LogHead,
    /// The slot that callers' `local` slots count from (the shard's first slot, or the first of
    /// the range it was cut from), and the entries of each kind so far: the head's, kept here too
    /// so that the hot loop need not read them back from the mapping. (Read from the head
    /// instead, the uniform 1M bench's customer-local phase took 9.42-9.46 ms against 9.17, two
    /// alternated runs.)
    origin: usize,
    entries: [usize; 2],
    /// Per kind, the shard's slots whose line is logged.
    logged: [[u64; crate::batch::SHARD_SLOTS / 64]; 2],
}

impl<'a> JournalLog<'a> {
    /// An empty log of transaction `seq` over `entries` (the journal column's range for the shard
    /// of as many slots from `first_slot`, at most [`crate::batch::SHARD_SLOTS`]), with its head.
    /// Callers name a record by its slot less `origin` (at most `first_slot`, less than
    /// [`crate::batch::SHARD_SLOTS`] below it).
    pub(crate) fn new(
        entries: &'a mut [Bucket],
        head: &'a mut LogHead,
        first_slot: usize,
        origin: usize,
        seq: u64,
    ) -> Self {
        assert!(entries.len() <= crate::batch::SHARD_SLOTS);
        assert!(
            origin <= first_slot
                && first_slot + entries.len() - origin <= crate::batch::SHARD_SLOTS
        );
        begin_log(head, seq, first_slot as u32, entries.len() as u32);
        JournalLog {
            lines: bytemuck::cast_slice_mut(entries),
            head,
            origin,
            entries: [0; 2],
            logged: [[0; crate::batch::SHARD_SLOTS / 64]; 2],
        }
    }

    /// Appends line `L` ([`FIRST_LINE`] or [`SECOND_LINE`]) of the record in slot `local` of
    /// the shard, the first time the transaction touches it (the first line) or is about to
    /// change it (the second).
    ///
    /// Entries are written with non-temporal stores: their lines are not first read into the
    /// cache (each is written once, and nothing reads it unless a crash is rolled back), so they
    /// take no cache line fetch and no room in the cache. A killed process cannot lose or reorder
    /// them against the record's stores: they are retired before the record is written, and the
    /// memory they go to (the file's page) outlives the process. The thread calls
    /// [`stream_fence`] before the transaction commits.
    #[inline(always)]
    pub(crate) fn record<const L: usize>(&mut self, b: &Bucket, local: usize) {
        if self.first_time::<L>(local) {
            self.append::<L>(b, local);
        }
    }

    /// Marks line `L` of slot `local` logged; whether it was not yet. A caller that gets `true`
    /// must [`JournalLog::append`] the line before changing it.
    #[inline(always)]
    pub(crate) fn first_time<const L: usize>(&mut self, local: usize) -> bool {
        first_time(&mut self.logged[L], local)
    }

    /// Appends line `L` of the record in slot `local` (see [`JournalLog::record`]).
    #[inline(always)]
    pub(crate) fn append<const L: usize>(&mut self, b: &Bucket, local: usize) {
        let line = bytemuck::cast_slice::<Bucket, Line>(std::slice::from_ref(b))[L];
        let k = self.entries[L];
        let at = at::<L>(self.lines.len(), k);
        stream_line(&mut self.lines[at], &tag::<L>(line, self.origin + local));
        // The entry before the count that makes recovery read it, and the count before the
        // caller changes the record (`&mut` borrows of different memory would let the compiler
        // reorder these stores; a process killed between them would then restore a line that was
        // never written, or change a record whose pre-image is not counted).
        compiler_fence(Ordering::SeqCst);
        self.entries[L] = k + 1;
        self.head.entries[L] = (k + 1) as u32;
        compiler_fence(Ordering::SeqCst);
    }
}

/// Makes `head` the empty log of transaction `seq` over `slots` slots from `first_slot`. The
/// transaction's number goes in last: until then the head still names the transaction that
/// wrote it before (never the one in flight, which recovery looks for), so a process killed
/// in between never leaves a head naming this transaction with that one's entry counts, whose
/// stale lines recovery would put back.
#[inline]
fn begin_log(head: &mut LogHead, seq: u64, first_slot: u32, slots: u32) {
    head.first_slot = first_slot;
    head.slots = slots;
    head.entries = [0; 2];
    head._pad = [0; 10];
    compiler_fence(Ordering::SeqCst);
    head.seq = seq;
    compiler_fence(Ordering::SeqCst);
}

/// Sets bit `i` of `bits`; whether it was clear.
#[inline(always)]
fn first_time(bits: &mut [u64], i: usize) -> bool {
    let (w, m) = (i / 64, 1u64 << (i % 64));
    let clear = bits[w] & m == 0;
    bits[w] |= m;
    clear
}

/// Writes `src` to `dst` with non-temporal stores.
#[inline(always)]
fn stream_line(dst: &mut Line, src: &Line) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_set_epi64x, _mm_stream_si128};
        let d = (dst as *mut Line).cast::<__m128i>();
        // SAFETY: `dst` is a 64-byte line of the journal column (a `Bucket` column, so aligned to
        // 128), borrowed exclusively: four aligned 16-byte lanes. SSE2 is part of x86_64's
        // baseline.
        unsafe {
            for i in 0..4 {
                let v = _mm_set_epi64x(src[2 * i + 1] as i64, src[2 * i] as i64);
                _mm_stream_si128(d.add(i), v);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        *dst = *src;
    }
}

/// Orders this thread's earlier non-temporal stores ([`JournalLog::record`]) before its
/// later stores.
#[inline]
pub(crate) fn stream_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no preconditions (SSE, part of x86_64's baseline).
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// Saves a slot's full pre-image (bucket, settle counters, closed interval) once per transaction,
/// in the order [`journal_bucket`] keeps.
#[inline]
pub(crate) fn journal_full(
    b: &mut Bucket,
    j: &mut Bucket,
    aux: &mut JournalAux,
    settled: &Settled,
    closed: &Closed,
    seq: u64,
) {
    if b.epoch != seq {
        *j = *b;
        aux.settled = *settled;
        aux.closed = *closed;
        compiler_fence(Ordering::SeqCst);
        b.epoch = seq;
        compiler_fence(Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::{Chunk, Col, Dims, IndexEntry, Store};

    fn dims(capacity: u64) -> Dims {
        Dims {
            capacity,
            state_dim: 0,
            forecast_dim: 0,
            scenario_dim: 0,
            scale_dim: 0,
        }
    }

    /// The views a single call takes (`alloc_cols_mut`, `slot_cols_mut`, `col`) are the very
    /// slices of the full split, on a store whose every column is non-empty.
    #[test]
    fn the_narrow_views_are_the_full_splits_slices() {
        fn at<T>(v: &[T]) -> (usize, usize) {
            (v.as_ptr() as usize, v.len())
        }
        let dir = std::env::temp_dir().join(format!("sb-views-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = Dims {
            capacity: 1000,
            state_dim: 3,
            forecast_dim: 2,
            scenario_dim: 4,
            scale_dim: 5,
        };
        let mut st = Store::create(&dir.join("v.sb"), d).unwrap();
        let full = {
            let c = st.cols_mut().unwrap();
            assert!(c.ids.len() == 1000 && c.model_state.len() == 3000 && !c.log_heads.is_empty());
            [
                (c.state as *const _ as usize, 0),
                at(c.buckets),
                at(c.journal),
                at(c.log_heads),
                at(c.settled),
                at(c.closed),
                at(c.journal_aux),
                at(c.index),
                at(c.ids),
            ]
        };
        let a = st.alloc_cols_mut().unwrap();
        let alloc = [
            (a.state as *const _ as usize, 0),
            at(a.buckets),
            at(a.journal),
            at(a.log_heads),
        ];
        assert_eq!(alloc, full[..4]);
        let s = st.slot_cols_mut().unwrap();
        let slot = [
            (s.state as *const _ as usize, 0),
            at(s.buckets),
            at(s.journal),
            at(s.settled),
            at(s.closed),
            at(s.journal_aux),
        ];
        assert_eq!(slot, [full[0], full[1], full[2], full[4], full[5], full[6]]);
        let index: &[IndexEntry] = st.col(Col::Index);
        let ids: &[u64] = st.col(Col::Ids);
        assert_eq!([at(index), at(ids)], full[7..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The captured file, chunks of zeros as zeros.
    fn bytes_of(c: &super::Captured) -> Vec<u8> {
        c.chunks()
            .flat_map(|ch| match ch {
                Chunk::Data(b) => b.to_vec(),
                Chunk::Zeros(n) => vec![0; n],
            })
            .collect()
    }

    /// Bytes of the copy's memory that are in RAM.
    #[cfg(target_os = "linux")]
    fn resident(c: &super::Captured) -> u64 {
        let page = 4096;
        let mut pages = vec![0u8; c.copy.len().div_ceil(page)];
        // SAFETY: `pages` has a byte for each page of the mapping, which `c` keeps alive.
        let r =
            unsafe { libc::mincore(c.copy.as_ptr() as *mut _, c.copy.len(), pages.as_mut_ptr()) };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        pages.iter().filter(|&&p| p & 1 != 0).count() as u64 * page as u64
    }

    /// `held()` is the memory a capture holds also when it reuses the memory of a capture that
    /// held more (here another store as long, full where this one has runs of zeros).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_capture_into_memory_that_held_more_holds_what_it_says() {
        let dir = std::env::temp_dir().join(format!("sb-capture-held-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut full = Store::create(&dir.join("full.sb"), dims(100_000)).unwrap();
        full.map.bytes_mut().unwrap().fill(1);
        let sparse = Store::create(&dir.join("sparse.sb"), dims(100_000)).unwrap();
        let mut cap = full.capture().unwrap();
        assert_eq!(cap.held(), cap.len());
        sparse.capture_into(&mut cap).unwrap();
        assert!(bytes_of(&cap) == sparse.map.bytes());
        assert!(cap.held() < cap.len() / 2);
        // (a chunk of slack: a huge page may straddle a chunk's edge)
        assert!(
            resident(&cap) <= cap.held() + super::SNAPSHOT_CHUNK as u64,
            "{} bytes in memory, held() says {} (of {})",
            resident(&cap),
            cap.held(),
            cap.len()
        );
        drop((full, sparse));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_capture_into_one_of_the_same_length_reuses_its_memory() {
        let dir = std::env::temp_dir().join(format!("sb-capture-into-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = Store::create(&dir.join("small.sb"), dims(64)).unwrap();
        let big = Store::create(&dir.join("big.sb"), dims(100_000)).unwrap();
        let mut cap = big.capture().unwrap();
        assert!(bytes_of(&cap) == big.map.bytes());
        assert!(cap.held() < cap.len() / 2, "the unused capacity was copied");
        let memory = cap.copy.as_ptr();
        // the same store again: the same memory
        big.capture_into(&mut cap).unwrap();
        assert_eq!(cap.copy.as_ptr(), memory);
        assert!(bytes_of(&cap) == big.map.bytes());
        // another length: new memory, the other store's bytes, and never written over itself
        small.capture_into(&mut cap).unwrap();
        assert_eq!(cap.len(), small.len());
        assert!(bytes_of(&cap) == small.map.bytes());
        let err = cap
            .write_to(&dir.join("small.sb"), |_, _| {}, || Ok(()))
            .unwrap_err();
        assert!(err.to_string().contains("the store itself"), "{err}");
        drop((small, big));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
