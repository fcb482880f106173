//! The store's on-disk format: a static header, a state page, and aligned columns.
//!
//! ```text
//! offset 0      FileHeader   static: magic, version, capacity, model dimensions, column table,
//!                            CRC-32 of all of it. Written once at create (and by grow and the
//!                            upgrade of an older version, which replace the whole file
//!                            atomically).
//! offset 4096   StatePage    dynamic: transaction state, then Globals (config, pool, counters)
//!                            and the undo copy of Globals for the transaction in flight.
//! offset 8192.. columns      each starting on a 4096-byte boundary, `capacity` elements each
//!                            (the index has `index_capacity`).
//! ```
//!
//! The hot path touches one column only: [`Bucket`], a 128-byte record that groups every field a
//! request reads or writes, so a random request costs one pair of adjacent cache lines instead of
//! one miss per field (the `layout` bench measures this against one column per field), and a shadow
//! grant writes only the first of the two. The other columns (ids, interval history, settle
//! counters, forecaster state, the batch logs' heads) are one field each.

use bytemuck::{Pod, Zeroable};

/// First bytes of every store file.
pub const MAGIC: [u8; 8] = *b"SHDWBKT\0";
/// Format version written by this build. Versions 1 and 2 are also read (version 1 batches
/// journaled each record at its own slot; version 2 batches appended whole records to a log per
/// shard; version 3 orders a record's fields so that a shadow grant changes one cache line, and
/// its batch logs hold single lines, counted in a column of log heads): opening one for writing
/// recovers it as its own version and rewrites it as version 3 (a new file, renamed over the
/// old one). Others are refused.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest format version this build reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// Size of the static header page.
pub const HEADER_BYTES: u64 = 4096;
/// Size of the state page.
pub const STATE_BYTES: u64 = 4096;
/// Column alignment in the file.
pub const COLUMN_ALIGN: u64 = 4096;
/// Number of entries in the column table.
pub const MAX_COLUMNS: usize = 16;

/// `Bucket::flags`: the slot holds a customer.
pub const FLAG_ACTIVE: u8 = 1;
/// `Bucket::flags`: the customer's contention flag is raised.
pub const FLAG_CONTENDED: u8 = 2;

/// Everything a request touches for one customer, in one 128-byte record of two cache lines.
///
/// The first line holds every field a shadow grant writes; the second the contract, the
/// reservation and the fields that only the other outcomes (and settles, ticks and customer
/// changes) write. A batch that grants from shadow buckets leaves the second lines clean, so they
/// are never written back, and journals only the first (`store::JournalLog`).
#[repr(C, align(128))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Bucket {
    // ---- line 0: what a shadow grant changes
    /// Standard bucket level, femto-tokens (negative after settlement debt).
    pub std: i128,
    /// Shadow bucket level, femto-tokens (at most `sigma` tokens; negative after debt).
    pub shadow: i128,
    /// Time both levels were last brought up to, ns.
    pub last_ns: u64,
    /// Tokens granted and not yet settled (bounds what a settle may refund).
    pub outstanding: u64,
    /// This interval: tokens granted from the shadow bucket.
    pub granted_shadow: u64,
    /// This interval: requests decided (all outcomes but unknown/invalid).
    pub requests: u32,
    /// Reserved, zero. In a batch log's first-line entry: the slot whose line it holds.
    pub _pad: u32,
    // ---- line 1: the contract, the reservation, the other outcomes' counters
    /// Contract rate, micro-tokens/s.
    pub rate: u64,
    /// Contract burst, tokens.
    pub burst: u64,
    /// Reserved rate `rho`, micro-tokens/s.
    pub rho: u64,
    /// Shadow capacity `sigma`, tokens.
    pub sigma: u64,
    /// This interval: tokens granted from the pool.
    pub granted_pool: u64,
    /// This interval: pool grants (deviations from the reservation).
    pub fallbacks: u32,
    /// This interval: `CustomerLimit` denials.
    pub denied_customer: u32,
    /// This interval: `PoolExhausted` denials.
    pub denied_pool: u32,
    /// Tier for reservation cut-back.
    pub weight: u16,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Consecutive ticks counting toward flipping the contention flag.
    pub streak: u8,
    /// Sequence number of the last transaction that journaled this record at its own slot (0
    /// after recovery restored it). In a batch log's second-line entry: the slot whose line it
    /// holds.
    pub epoch: u64,
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 128);
const _: () = assert!(
    std::mem::offset_of!(Bucket, _pad) == 60
        && std::mem::offset_of!(Bucket, rate) == 64
        && std::mem::offset_of!(Bucket, epoch) == 120
);

/// One cache line of a [`Bucket`] (the unit of the batch logs).
pub type Line = [u64; 8];

/// Where one shard's batch log stands: which transaction wrote it, the shard it covers, and how
/// many first-line and second-line entries it holds (`store::JournalLog`).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct LogHead {
    /// Sequence number of the transaction that wrote the log.
    pub seq: u64,
    /// The shard's first slot.
    pub first_slot: u32,
    /// The shard's slots (its range of the journal column holds twice as many lines).
    pub slots: u32,
    /// Entries of each kind: first lines (from the start of the range), then second lines
    /// (from the end of the range backwards).
    pub entries: [u32; 2],
    /// Reserved, zero.
    pub _pad: [u32; 10],
}

const _: () = assert!(std::mem::size_of::<LogHead>() == 64);

/// The smallest shard the batch path uses: the log heads column has one head per this many
/// slots.
pub const MIN_SHARD_SLOTS: u64 = 64;

/// A record as versions 1 and 2 laid it out (the same fields in another order), read only to
/// upgrade such a store.
#[repr(C, align(128))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct BucketV2 {
    pub std: i128,
    pub shadow: i128,
    pub last_ns: u64,
    pub rate: u64,
    pub burst: u64,
    pub rho: u64,
    pub sigma: u64,
    pub outstanding: u64,
    pub granted_shadow: u64,
    pub granted_pool: u64,
    pub requests: u32,
    pub fallbacks: u32,
    pub denied_customer: u32,
    pub denied_pool: u32,
    pub epoch: u64,
    pub weight: u16,
    pub flags: u8,
    pub streak: u8,
    pub _pad: u32,
}

const _: () = assert!(std::mem::size_of::<BucketV2>() == 128);

impl From<BucketV2> for Bucket {
    fn from(b: BucketV2) -> Bucket {
        Bucket {
            std: b.std,
            shadow: b.shadow,
            last_ns: b.last_ns,
            outstanding: b.outstanding,
            granted_shadow: b.granted_shadow,
            requests: b.requests,
            _pad: b._pad,
            rate: b.rate,
            burst: b.burst,
            rho: b.rho,
            sigma: b.sigma,
            granted_pool: b.granted_pool,
            fallbacks: b.fallbacks,
            denied_customer: b.denied_customer,
            denied_pool: b.denied_pool,
            weight: b.weight,
            flags: b.flags,
            streak: b.streak,
            epoch: b.epoch,
        }
    }
}

impl Bucket {
    /// Whether the slot holds a customer.
    #[inline(always)]
    pub fn active(&self) -> bool {
        self.flags & FLAG_ACTIVE != 0
    }

    /// The current interval's usage: this record's counters and the slot's settle counters.
    pub fn interval_usage(&self, settled: &Settled) -> Closed {
        Closed {
            granted_shadow: self.granted_shadow,
            granted_pool: self.granted_pool,
            requests: self.requests as u64,
            fallbacks: self.fallbacks as u64,
            denied_customer: self.denied_customer as u64,
            denied_pool: self.denied_pool as u64,
            refunded: settled.refunded,
            debt: settled.debt,
        }
    }

    /// Zeroes this record's interval counters (the tick, after closing the interval).
    pub fn reset_interval(&mut self) {
        self.granted_shadow = 0;
        self.granted_pool = 0;
        self.requests = 0;
        self.fallbacks = 0;
        self.denied_customer = 0;
        self.denied_pool = 0;
    }
}

/// Settle counters of the current interval (cold: only settle and tick touch them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Settled {
    /// Tokens refunded by settles this interval.
    pub refunded: u64,
    /// Tokens charged as debt by settles this interval.
    pub debt: u64,
}

/// One customer's usage over the last closed interval: the predictor's input.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Closed {
    /// Tokens granted from the shadow bucket.
    pub granted_shadow: u64,
    /// Tokens granted from the pool.
    pub granted_pool: u64,
    /// Requests decided.
    pub requests: u64,
    /// Pool grants (deviations).
    pub fallbacks: u64,
    /// `CustomerLimit` denials.
    pub denied_customer: u64,
    /// `PoolExhausted` denials.
    pub denied_pool: u64,
    /// Tokens refunded by settles.
    pub refunded: u64,
    /// Tokens charged as settlement debt.
    pub debt: u64,
}

/// The rest of a slot's pre-image, for the transactions that touch more than its bucket (settle,
/// tick, customer changes). The bucket's own pre-image is in the journal column, a `Bucket` per
/// slot (at the slot's own entry, or appended to its shard's log by a parallel batch), so an
/// allocation batch writes 128 bytes of journal per customer it touches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct JournalAux {
    /// The settle counters as they were.
    pub settled: Settled,
    /// The closed interval as it was.
    pub closed: Closed,
}

const _: () = assert!(std::mem::size_of::<JournalAux>() == 80);

/// One slot of the id index (open addressing, linear probing).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct IndexEntry {
    /// Customer id, or [`INDEX_EMPTY`] / [`INDEX_TOMBSTONE`].
    pub id: u64,
    /// The customer's slot.
    pub slot: u64,
}

/// Index marker: never used.
pub const INDEX_EMPTY: u64 = u64::MAX;
/// Index marker: used, then removed.
pub const INDEX_TOMBSTONE: u64 = u64::MAX - 1;

/// One entry of the column table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ColumnDesc {
    /// Byte offset in the file.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
}

/// The static header. Checksummed; never written after create.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct FileHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// Size of this struct, for readers of later versions.
    pub header_len: u32,
    /// Customer slots.
    pub capacity: u64,
    /// Index slots (a power of two, at least twice `capacity`).
    pub index_capacity: u64,
    /// Floats of recurrent state per customer (the forecaster's hidden and cell state).
    pub state_dim: u32,
    /// Floats of forecast per customer.
    pub forecast_dim: u32,
    /// Scenario probabilities per customer.
    pub scenario_dim: u32,
    /// Floats of per-customer feature scaling.
    pub scale_dim: u32,
    /// Total file length in bytes.
    pub file_len: u64,
    /// Column table, indexed by [`Col`].
    pub columns: [ColumnDesc; MAX_COLUMNS],
    /// CRC-32 of every byte above.
    pub checksum: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// The columns, in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Col {
    /// [`Bucket`] per slot.
    Buckets = 0,
    /// [`Bucket`] pre-image per slot.
    Journal,
    /// `u64` customer id per slot.
    Ids,
    /// [`Settled`] per slot.
    Settled,
    /// [`Closed`] per slot.
    Closed,
    /// `u32` free-slot stack.
    FreeStack,
    /// [`IndexEntry`] per index slot.
    Index,
    /// `f32 * state_dim` per slot.
    ModelState,
    /// `f32 * forecast_dim` per slot.
    Forecast,
    /// `f32 * scenario_dim` per slot.
    Scenario,
    /// `f32 * scale_dim` per slot.
    Scale,
    /// [`JournalAux`] per slot.
    JournalAux,
    /// [`LogHead`] per [`MIN_SHARD_SLOTS`] slots (since version 3).
    LogHeads,
}

/// Number of columns in use.
pub const NUM_COLUMNS: usize = 13;

/// Shape of a store, from which every offset follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Customer slots.
    pub capacity: u64,
    /// Floats of recurrent state per customer.
    pub state_dim: u32,
    /// Floats of forecast per customer.
    pub forecast_dim: u32,
    /// Scenario probabilities per customer.
    pub scenario_dim: u32,
    /// Floats of feature scaling per customer.
    pub scale_dim: u32,
}

impl Dims {
    /// Index slots for this capacity: the next power of two at or above twice the capacity.
    pub fn index_capacity(&self) -> u64 {
        (self.capacity.max(1) * 2).next_power_of_two()
    }

    fn elem_sizes(&self) -> [(u64, u64); NUM_COLUMNS] {
        let c = self.capacity;
        [
            (c, 128),
            (c, 128),
            (c, 8),
            (c, 16),
            (c, 64),
            (c, 4),
            (self.index_capacity(), 16),
            (c, 4 * self.state_dim as u64),
            (c, 4 * self.forecast_dim as u64),
            (c, 4 * self.scenario_dim as u64),
            (c, 4 * self.scale_dim as u64),
            (c, 80),
            (c.div_ceil(MIN_SHARD_SLOTS), 64),
        ]
    }

    /// The column table and total length, or `None` on overflow.
    pub fn layout(&self) -> Option<([ColumnDesc; MAX_COLUMNS], u64)> {
        self.layout_of(FORMAT_VERSION)
    }

    /// The column table and total length of a store of format `version` (versions 1 and 2 have
    /// no log heads), or `None` on overflow.
    pub fn layout_of(&self, version: u32) -> Option<([ColumnDesc; MAX_COLUMNS], u64)> {
        let used = if version >= 3 {
            NUM_COLUMNS
        } else {
            NUM_COLUMNS - 1
        };
        let mut cols = [ColumnDesc::default(); MAX_COLUMNS];
        let mut off = HEADER_BYTES + STATE_BYTES;
        for (i, (n, size)) in self.elem_sizes()[..used].iter().enumerate() {
            let len = n.checked_mul(*size)?;
            cols[i] = ColumnDesc { offset: off, len };
            off = off
                .checked_add(len)?
                .checked_next_multiple_of(COLUMN_ALIGN)?;
        }
        Some((cols, off))
    }
}

impl FileHeader {
    /// A header for a new store of these dimensions.
    pub fn new(dims: Dims) -> Option<Self> {
        let (columns, file_len) = dims.layout()?;
        let mut h = FileHeader {
            magic: MAGIC,
            version: FORMAT_VERSION,
            header_len: std::mem::size_of::<FileHeader>() as u32,
            capacity: dims.capacity,
            index_capacity: dims.index_capacity(),
            state_dim: dims.state_dim,
            forecast_dim: dims.forecast_dim,
            scenario_dim: dims.scenario_dim,
            scale_dim: dims.scale_dim,
            file_len,
            columns,
            checksum: 0,
            _pad: 0,
        };
        h.checksum = h.compute_checksum();
        Some(h)
    }

    /// CRC-32 of every byte before `checksum`.
    pub fn compute_checksum(&self) -> u32 {
        let bytes = bytemuck::bytes_of(self);
        let end = std::mem::offset_of!(FileHeader, checksum);
        crc32fast::hash(&bytes[..end])
    }

    /// The dimensions this header describes.
    pub fn dims(&self) -> Dims {
        Dims {
            capacity: self.capacity,
            state_dim: self.state_dim,
            forecast_dim: self.forecast_dim,
            scenario_dim: self.scenario_dim,
            scale_dim: self.scale_dim,
        }
    }
}

/// Engine configuration as stored (integers only).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ConfigRaw {
    /// Pool capacity, tokens.
    pub pool_burst: u64,
    /// Pool rate, micro-tokens/s.
    pub pool_rate: u64,
    /// Tick interval, ns.
    pub interval_ns: u64,
    /// Reservable share, ppm.
    pub alpha_ppm: u32,
    /// Contention threshold (raise), ppm.
    pub contention_high_ppm: u32,
    /// Contention threshold (clear), ppm.
    pub contention_low_ppm: u32,
    /// Minimum requests for an interval to count toward the flag.
    pub contention_min_requests: u32,
    /// Ticks to flip the flag.
    pub contention_ticks: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// The pool's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PoolRaw {
    /// Level, femto-tokens (negative after settlement debt).
    pub level: i128,
    /// Time the level was last brought up to, ns.
    pub last_ns: u64,
    /// Sum of all customers' `rho`, micro-tokens/s.
    pub rho_sum: u64,
    /// Sum of all customers' `sigma`, tokens.
    pub sigma_sum: u64,
    /// The last instant the pool was at its cap, ns (shadow overflow from before it is lost).
    pub full_at_ns: u64,
    /// Femto-tokens of shadow overflow the pool may still take in (see `kernel::credit_overflow`).
    pub allowance: i128,
}

/// Engine-wide counters (cumulative since create).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct StatsRaw {
    /// Femto-tokens that came back to the pool from shadow buckets (overflow and release).
    pub femto_returned: i128,
    /// Femto-tokens of pool supply lost at the pool's cap.
    pub femto_lost_at_cap: i128,
    /// Requests seen (all outcomes).
    pub requests: u64,
    /// Grants from shadow buckets.
    pub shadow_grants: u64,
    /// Grants from the pool (fallbacks).
    pub pool_grants: u64,
    /// `CustomerLimit` denials.
    pub denied_customer: u64,
    /// `PoolExhausted` denials.
    pub denied_pool: u64,
    /// `ExceedsBurst` outcomes.
    pub exceeds_burst: u64,
    /// `UnknownCustomer` outcomes.
    pub unknown: u64,
    /// `InvalidInput` outcomes.
    pub invalid: u64,
    /// Tokens granted from shadow buckets.
    pub tokens_shadow: u64,
    /// Tokens granted from the pool.
    pub tokens_pool: u64,
    /// Tokens refunded by settles.
    pub tokens_refunded: u64,
    /// Tokens charged as settlement debt.
    pub tokens_debt: u64,
    /// Settles applied.
    pub settles: u64,
    /// Immediate reservation bumps after a fallback.
    pub bumps: u64,
    /// Ticks run.
    pub ticks: u64,
    /// Customers whose contention flag is raised now.
    pub flagged: u64,
    /// Batches (allocation transactions) committed.
    pub batches: u64,
    /// Reserved, zero.
    pub _pad: u64,
}

/// Mutable engine-wide state; its pre-image is kept while a transaction runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Globals {
    /// Pool state.
    pub pool: PoolRaw,
    /// Counters.
    pub stats: StatsRaw,
    /// Configuration.
    pub config: ConfigRaw,
    /// Customers in the store.
    pub customers: u64,
    /// Entries on the free-slot stack.
    pub free_top: u64,
    /// Tombstones in the index.
    pub tombstones: u64,
    /// Time of the last tick, ns.
    pub last_tick_ns: u64,
    /// The caller's clock when the store was created, ns (the origin of the pool's supply).
    pub created_ns: u64,
    /// Reserved, zero.
    pub _pad: u64,
}

/// Kinds of transaction, which decide what recovery restores.
pub mod txn_kind {
    /// Allocation: buckets only.
    pub const ALLOCATE: u64 = 1;
    /// Settle: buckets and settle counters.
    pub const SETTLE: u64 = 2;
    /// Tick: buckets, settle counters and closed intervals.
    pub const TICK: u64 = 3;
    /// Customer administration: everything, then the index and free stack are rebuilt.
    pub const ADMIN: u64 = 4;
}

/// Transaction state, at the start of the state page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TxnState {
    /// Sequence number of the transaction in flight, 0 when none.
    pub active: u64,
    /// Its kind (`txn_kind`).
    pub kind: u64,
    /// Sequence number of the last committed transaction.
    pub last_committed: u64,
    /// Sequence number of the last transaction rolled back by recovery, 0 when none.
    pub last_rolled_back: u64,
}

/// The state page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct StatePage {
    /// Transaction state.
    pub txn: TxnState,
    /// Live globals.
    pub globals: Globals,
    /// Pre-image of `globals` for the transaction in flight.
    pub undo: Globals,
}

const _: () = assert!(std::mem::size_of::<StatePage>() as u64 <= STATE_BYTES);
const _: () = assert!(std::mem::size_of::<FileHeader>() as u64 <= HEADER_BYTES);
