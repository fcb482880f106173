//! The store file: create, open and validate, column access, transactions and recovery.
//!
//! Durability (semantics I7) comes from an undo journal. A transaction (a batch, a settle, a tick,
//! one customer change) first copies the engine-wide state to an undo area and marks itself
//! active; before it first writes a slot it copies the slot's record into the journal column and
//! stamps the record with the transaction's sequence number; it commits by recording its number
//! as the last committed one. Most transactions put the copy in the slot's own journal entry; the
//! parallel batch path appends it to its shard's log instead, tagged with the sequence number and
//! the slot ([`JournalLog`]). A process killed at any instant leaves either no active
//! transaction or one whose every touched record still has its pre-image: opening the store for
//! writing restores them, so every transaction is all or nothing, and the store says which was
//! the last one completed and which one was rolled back.
//!
//! All of this protects against the process dying (its writes to the shared mapping are already in
//! the page cache); [`Store::flush`] makes them durable against the machine dying too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{Ordering, compiler_fence};

use crate::error::{Error, Result};
use crate::index;
use crate::layout::*;
use crate::mmap::{self, Mapping};

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

fn split_cols<'a>(bytes: &'a mut [u8], h: &FileHeader) -> ColsMut<'a> {
    let (_, mut rest) = bytes.split_at_mut(HEADER_BYTES as usize);
    let (state, after) = rest.split_at_mut(STATE_BYTES as usize);
    rest = after;
    let state: &mut StatePage =
        bytemuck::from_bytes_mut(&mut state[..std::mem::size_of::<StatePage>()]);
    let mut pos = HEADER_BYTES + STATE_BYTES;
    let mut parts: [&'a mut [u8]; NUM_COLUMNS] = Default::default();
    for (part, c) in parts.iter_mut().zip(&h.columns[..NUM_COLUMNS]) {
        let skip = (c.offset - pos) as usize;
        let r = std::mem::take(&mut rest);
        let (_, r) = r.split_at_mut(skip);
        let (col, r) = r.split_at_mut(c.len as usize);
        *part = col;
        rest = r;
        pos = c.offset + c.len;
    }
    let [
        buckets,
        journal,
        ids,
        settled,
        closed,
        free,
        index,
        model_state,
        forecast,
        scenario,
        scale,
        journal_aux,
    ] = parts;
    ColsMut {
        state,
        buckets: bytemuck::cast_slice_mut(buckets),
        journal: bytemuck::cast_slice_mut(journal),
        ids: bytemuck::cast_slice_mut(ids),
        settled: bytemuck::cast_slice_mut(settled),
        closed: bytemuck::cast_slice_mut(closed),
        free: bytemuck::cast_slice_mut(free),
        index: bytemuck::cast_slice_mut(index),
        model_state: bytemuck::cast_slice_mut(model_state),
        forecast: bytemuck::cast_slice_mut(forecast),
        scenario: bytemuck::cast_slice_mut(scenario),
        scale: bytemuck::cast_slice_mut(scale),
        journal_aux: bytemuck::cast_slice_mut(journal_aux),
    }
}

fn col<'a, T: bytemuck::Pod>(bytes: &'a [u8], h: &FileHeader, c: Col) -> &'a [T] {
    let d = h.columns[c as usize];
    bytemuck::cast_slice(&bytes[d.offset as usize..(d.offset + d.len) as usize])
}

/// Whether `h` is the header of an older version's store that a killed process was marking with
/// this build's version ([`Store::upgrade_header`]): one of the two changed fields (the version
/// and the checksum) written, the other not yet. The header is whole otherwise, and the next open
/// for writing finishes the upgrade.
fn torn_upgrade(h: &FileHeader) -> bool {
    (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).any(|version| {
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
    let Some((cols, len)) = dims.layout() else {
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
        if dims.state_dim > 1 << 16 || dims.forecast_dim > 1 << 10 || dims.scenario_dim > 64 {
            return Err(Error::invalid("model dimensions too large"));
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

    /// Opens and validates an existing store; for writing, recovers an interrupted transaction.
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
        let mut store = Store {
            path: path.to_path_buf(),
            header,
            map,
        };
        let recovered = if write { store.recover() } else { None };
        if write
            && (store.header.version < FORMAT_VERSION
                || store.header.checksum != store.header.compute_checksum())
        {
            store.upgrade_header();
        }
        Ok((store, recovered))
    }

    /// Whether the store was opened read-only.
    pub(crate) fn read_only(&self) -> bool {
        matches!(self.map, Mapping::Read { .. })
    }

    pub(crate) fn cols_mut(&mut self) -> Result<ColsMut<'_>> {
        let bytes = self.map.bytes_mut().ok_or(Error::ReadOnly)?;
        Ok(split_cols(bytes, &self.header))
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

    /// Marks an older version's file (already recovered) as this build's version: the layout is
    /// the same, only what a crashed batch leaves in the journal differs. Only the version and
    /// the checksum change; a process killed between the two leaves a header that
    /// [`torn_upgrade`] recognises, and the next open for writing writes both again.
    fn upgrade_header(&mut self) {
        let mut h = self.header;
        h.version = FORMAT_VERSION;
        h.checksum = h.compute_checksum();
        let bytes = self.map.bytes_mut().expect("writable");
        bytes[..std::mem::size_of::<FileHeader>()].copy_from_slice(bytemuck::bytes_of(&h));
        self.header = h;
    }

    /// Rolls back a transaction left active by a killed process. Returns its sequence number.
    fn recover(&mut self) -> Option<u64> {
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
        if txn.kind == txn_kind::ALLOCATE {
            // The batch path's logs (`JournalLog`): entries tagged with this
            // transaction, each naming its slot. The per-slot pass below then finds no record
            // of those left stamped with it.
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
#[inline(always)]
pub(crate) fn journal_bucket(b: &mut Bucket, j: &mut Bucket, seq: u64) {
    if b.epoch != seq {
        *j = *b;
        compiler_fence(Ordering::SeqCst);
        b.epoch = seq;
    }
}

/// A shard's journal for the batch path: an append-only log in the shard's own range of the
/// journal column, one entry per customer the shard touches, written one after another instead of
/// at random (that took the customer-local phase of the uniform 1M bench from 10.3-10.6 to
/// 9.8-9.9 ms per batch in three of four runs, 10.9 in the fourth; minima, builds alternated). Each entry is a record's pre-image tagged
/// with the transaction (its `epoch` field holds the sequence number) and with its slot (its
/// `_pad` field), so recovery finds it by scanning the column ([`Store::recover`]).
pub(crate) struct JournalLog<'a> {
    entries: &'a mut [Bucket],
    next: usize,
    /// The shard's first slot.
    first_slot: usize,
}

impl<'a> JournalLog<'a> {
    /// An empty log over `entries`, for the shard of as many slots from `first_slot`.
    pub(crate) fn new(entries: &'a mut [Bucket], first_slot: usize) -> Self {
        JournalLog {
            entries,
            next: 0,
            first_slot,
        }
    }

    /// [`journal_bucket`] into the log: the first time transaction `seq` touches the record in
    /// slot `local` of the shard, appends its pre-image and stamps it.
    ///
    /// The entry is written with non-temporal stores: its lines are not first read into the cache
    /// (each entry is written once, and nothing reads it unless a crash is rolled back), so they
    /// take no cache line fetch and no room in the cache. A killed process cannot lose or reorder
    /// them against the record's stores: they are retired before the record is written, and the
    /// memory they go to (the file's page) outlives the process. The thread calls
    /// [`stream_fence`] before the transaction commits.
    ///
    /// # Panics
    /// If the log is full: more distinct records logged than it has entries.
    #[inline(always)]
    pub(crate) fn record(&mut self, b: &mut Bucket, local: usize, seq: u64) {
        if b.epoch == seq {
            return;
        }
        // below the store's capacity, which is below `u32::MAX`
        let slot = (self.first_slot + local) as u32;
        let entry = &mut self.entries[self.next];
        self.next += 1;
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{__m128i, _mm_load_si128, _mm_set_epi64x, _mm_stream_si128};
            // the last lane: `epoch` (the tag), then `weight`, `flags`, `streak` and `_pad` (the
            // slot)
            const _: () = assert!(
                std::mem::offset_of!(Bucket, epoch) == 112
                    && std::mem::offset_of!(Bucket, weight) == 120
                    && std::mem::offset_of!(Bucket, flags) == 122
                    && std::mem::offset_of!(Bucket, streak) == 123
                    && std::mem::offset_of!(Bucket, _pad) == 124
            );
            let hi = b.weight as u64
                | (b.flags as u64) << 16
                | (b.streak as u64) << 24
                | (slot as u64) << 32;
            let src = (b as *const Bucket).cast::<__m128i>();
            let dst = (entry as *mut Bucket).cast::<__m128i>();
            // SAFETY: a `Bucket` is 128 bytes aligned to 128 (asserted in `layout`), so both are
            // eight aligned 16-byte lanes inside live references; `entry` is borrowed
            // exclusively, and SSE2 is part of x86_64's baseline.
            unsafe {
                for i in 0..7 {
                    _mm_stream_si128(dst.add(i), _mm_load_si128(src.add(i)));
                }
                _mm_stream_si128(dst.add(7), _mm_set_epi64x(hi as i64, seq as i64));
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            *entry = Bucket {
                epoch: seq,
                _pad: slot,
                ..*b
            };
        }
        compiler_fence(Ordering::SeqCst);
        b.epoch = seq;
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

/// Saves a slot's full pre-image (bucket, settle counters, closed interval) once per transaction.
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
    }
}
