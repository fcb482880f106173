//! The batch allocation path: millions of requests per call, in parallel, with exactly the
//! outcomes and end state of applying them one at a time in order (semantics I5).
//!
//! 1. **Bucket by shard.** Slots are cut into ranges of [`SHARD_SLOTS`] consecutive slots (2 MiB
//!    of records), each a shard, and the batch into chunks of [`POOL_CHUNK`] requests. A range
//!    that holds too large a share of the batch's requests for one thread is cut into pieces,
//!    each a shard (`batch/shards.rs`). A parallel counting sort packs each request (its slot
//!    within its range, its index within its chunk and its size, in 8 bytes) into its shard's
//!    list, in batch order; a table says where each chunk's part of each shard starts.
//! 2. **Customer-local phase, shards in parallel.** A request whose outcome depends only on its
//!    customer (a shadow grant, a contract denial, exceeds-burst, invalid) is decided at once.
//!    The first request of a customer that needs the pool is left *pending*, and every later
//!    request of that customer is *deferred*, because its state now depends on the pool. A
//!    customer's first touch may return shadow overflow to the pool: a *credit* event at that
//!    request's position. Results stay in shard order: a code byte per request (outcome, how its
//!    retry-after is stored, credit and pool marks), and each shard's few listed retry-afters and
//!    credits in its own lists, in order.
//! 3. **Gather and replay, chunk by chunk.** A chunk's *gather* first puts the chunk's codes in
//!    batch order, in a buffer of its own: each shard's part of the chunk, read in order, goes to
//!    the places its requests carry. It then walks them eight at a time, writing the outcomes and
//!    retry-afters the codes hold, and for the few others reads the listed retry-afters and
//!    credits from where the table says the chunk's part of each shard's lists starts. It lists
//!    the pending and deferred requests and sums the credits between them (a run of credits with
//!    no pool request between them acts on the pool exactly as one credit of their sums). The
//!    *replay* then applies each run's credit and decides each listed request against the pool,
//!    one chunk after another in batch order.
//!    Chunks are gathered in parallel, and the replay of gathered chunks overlaps the gathers of
//!    later ones. Everything phase 2 decided commutes with the replay: it touched no shared
//!    state, and no state it read depends on the pool.
//!
//! So the pool sees its events in exactly the order a one-at-a-time loop would, and the parallel
//! phases do the bulk of the work when most traffic is predicted.
//!
//! Memory sets most of the pace, so every phase reads and writes sequentially except for the
//! records themselves: each first touch of a customer misses the cache (its record). No two
//! threads write to one cache line: each writes its own shards' records, journal, codes and
//! lists, and its own chunks' outputs. The rest is instructions: phase 2 spends about a third of
//! its time on the decisions themselves (a build with trivial decisions ran it in two thirds), so
//! its loop carries no bounds checks or reloads it can avoid. Phase 2 prefetches records
//! [`AHEAD`] requests in advance (and into the second-level cache further ahead), and the replay
//! its records and outputs. Each shard appends its pre-images (a record's first cache line when
//! the batch first touches it, its second line only before the batch changes that) to its own
//! journal log (`store::JournalLog`) with non-temporal stores: sequential streams, written whole
//! and never read back. Writing outputs in shard order and gathering them (rather than writing
//! each output at its batch index from phase 2, a random write of 9 bytes per request into 9 MiB
//! per million requests) took the uniform 1M bench from 33.7 to 23.5 ms per batch (side by
//! side); packing requests in 8 bytes instead of 16 took it from 21 to 17.5-19 ms. Putting each
//! chunk's codes in batch order before the gather reads them (rather than a cursor per shard and
//! a read through it per request) took the gather and replay from 4.7-4.8 to 3.9-4.0 ms. Phase 2
//! writing each code straight to its place in the batch was cheaper still when it was fast, but
//! both threads then wrote into the same lines, and whole runs went into a mode where phase 2
//! took 16 ms instead of 9 (figures and the other steps in the README). The
//! buffers are reused from batch to batch, and [`PhaseTimes`] says where the last batch's time
//! went.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::kernel::{
    Decision, Local, Outcome, Overflow, advance, credit_overflow, decide_local, decide_local_with,
    decide_pool, refill_bucket_with,
};
use crate::layout::{Bucket, Globals, LogHead, StatsRaw};
use crate::store::{FIRST_LINE, JournalLog, SECOND_LINE, journal_bucket, stream_fence};

mod shards;

use shards::{Even, ShardOf, for_each_blocked, histogram};

/// Slots per shard (the default; see [`tuning`]).
pub const SHARD_SLOTS: usize = 16384;
/// Requests per chunk of the batch, for the bucketing, the gather and the replay (the default;
/// see [`tuning`]).
pub const POOL_CHUNK: usize = 1 << 15;
/// Marker for a request whose id resolved to no customer.
pub const NO_SLOT: u32 = u32::MAX;

/// Process-wide knobs of the batch path, for tests and benchmarks that need the parallel
/// algorithm on small inputs. Outcomes never depend on them (I5); only speed does.
pub mod tuning {
    use std::sync::atomic::{AtomicUsize, Ordering};

    static PARALLEL_MIN: AtomicUsize = AtomicUsize::new(8192);
    static SHARD_SLOTS: AtomicUsize = AtomicUsize::new(super::SHARD_SLOTS);
    static POOL_CHUNK: AtomicUsize = AtomicUsize::new(super::POOL_CHUNK);
    static SPLIT: AtomicUsize = AtomicUsize::new(0);

    /// Batches shorter than `parallel_min` (and an empty one) run sequentially; shards hold
    /// `shard_slots` slots (rounded to a power of two in `64..=16384`).
    pub fn set(parallel_min: usize, shard_slots: usize) {
        PARALLEL_MIN.store(parallel_min, Ordering::Relaxed);
        let s = shard_slots
            .clamp(crate::layout::MIN_SHARD_SLOTS as usize, super::SHARD_SLOTS)
            .next_power_of_two();
        SHARD_SLOTS.store(s.min(super::SHARD_SLOTS), Ordering::Relaxed);
    }

    /// The batch is cut into chunks of `requests` (clamped to `1..=`[`super::POOL_CHUNK`]) for
    /// the bucketing, the gather and the replay.
    pub fn set_pool_chunk(requests: usize) {
        POOL_CHUNK.store(requests.clamp(1, super::POOL_CHUNK), Ordering::Relaxed);
    }

    /// A range of shard slots holding more than `requests` of a batch's requests is cut into
    /// pieces of about `requests` each (see `batch/shards.rs`: the cuts are placed from a sample
    /// of every 16th request, a slot with more is a piece of its own, and the target is raised
    /// for a range that would need more pieces than it has log heads); 0 (the default) sets both
    /// figures from the batch and the number of threads: more than `1 / (2 * threads)` of its
    /// requests, pieces of `1 / (4 * threads)`, and no cuts on one thread. `usize::MAX` never
    /// cuts.
    pub fn set_split(requests: usize) {
        SPLIT.store(requests, Ordering::Relaxed);
    }

    /// Back to the defaults.
    pub fn reset() {
        set(8192, super::SHARD_SLOTS);
        set_pool_chunk(super::POOL_CHUNK);
        set_split(0);
    }

    pub(crate) fn split() -> usize {
        SPLIT.load(Ordering::Relaxed)
    }

    pub(crate) fn pool_chunk() -> usize {
        POOL_CHUNK.load(Ordering::Relaxed)
    }

    pub(crate) fn parallel_min() -> usize {
        PARALLEL_MIN.load(Ordering::Relaxed)
    }

    pub(crate) fn shard_slots() -> usize {
        SHARD_SLOTS.load(Ordering::Relaxed)
    }
}

/// A raw pointer that lets parallel shards write disjoint elements of one output array.
#[derive(Clone, Copy)]
struct Out<T>(*mut T);
// SAFETY: every index is written by exactly one shard (each request belongs to one shard), so no
// two threads ever write the same element, and nobody reads the array until the phase ends.
unsafe impl<T> Send for Out<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Out<T> {}

impl<T> Out<T> {
    /// Prefetches element `i` (a hint; never faults, so any `i` is harmless).
    #[inline(always)]
    fn prefetch(self, i: usize) {
        prefetch_ptr::<HINT_L1, T>(self.0.wrapping_add(i));
    }

    /// The elements `start..start + len` as a slice.
    ///
    /// # Safety
    /// The range is in bounds, and nothing else reads or writes it while the slice lives.
    #[inline(always)]
    unsafe fn slice_mut<'a>(self, start: usize, len: usize) -> &'a mut [T] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }

    /// # Safety
    /// `i` is in bounds and no other thread writes index `i` concurrently.
    #[inline(always)]
    unsafe fn write(self, i: usize, v: T) {
        // SAFETY: guaranteed by the caller.
        unsafe { self.0.add(i).write(v) }
    }
}

/// One pool-phase request: its batch index, slot and size (copied here by the gather, so the
/// replay reads nothing at random but the customer's record and outputs), and the shadow
/// overflow credited since the previous pool-phase request (its own refill's included), summed.
#[derive(Clone, Copy, Default)]
struct Pending {
    idx: u32,
    slot: u32,
    tokens: u64,
    credit_before: Overflow,
}

/// One chunk of the batch as the pool phase replays it: its pool-phase requests in batch order,
/// and the overflow credited after the last of them.
struct Segment {
    pending: Vec<Pending>,
    credit_after: Overflow,
    /// While the gather runs, the chunk's result codes in batch order (the first as many as the
    /// chunk has requests). An array of the largest chunk's size, so that a request's index (15
    /// bits) needs no bounds check in it.
    codes: Box<[u8; POOL_CHUNK]>,
    /// Per shard, while the gather runs: the next listed retry-after and credit to read.
    cursors: Vec<[u32; 2]>,
    /// While the gather of a batch with cut ranges runs, each request's shard, as `codes` (made
    /// on the first such batch; a cut plan has at most 65536 shards).
    shards: Option<Box<[u16; POOL_CHUNK]>>,
}

impl Default for Segment {
    fn default() -> Self {
        Segment {
            pending: Vec::new(),
            credit_after: Overflow::default(),
            codes: Box::new([UNKNOWN; POOL_CHUNK]),
            cursors: Vec::new(),
            shards: None,
        }
    }
}

/// Wall time of each phase of the last parallel batch (zero for a batch short enough to run
/// sequentially), for profiling: [`crate::Engine::last_batch_phases`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseTimes {
    /// Packing the requests by shard.
    pub bucket: std::time::Duration,
    /// The customer-local decisions, shards in parallel.
    pub local: std::time::Duration,
    /// Phase 3 as a whole: gathering the chunks into batch order (in parallel) and replaying
    /// them against the pool, which overlap.
    pub gather: std::time::Duration,
    /// The part of `gather` spent in the sequential replay against the pool (its busy time, on
    /// whichever threads ran it).
    pub pool: std::time::Duration,
    /// Shards of the customer-local phase: one per range of shard slots (16384 unless
    /// [`tuning::set`] says otherwise), more when crowded ranges were cut into pieces
    /// ([`tuning::set_split`]); 0 for a batch run sequentially.
    pub shards: usize,
    /// Whether the batch kept the last batch's cut of crowded ranges, which still fitted its
    /// requests (planning skipped: see `batch/shards.rs`).
    pub kept_cut: bool,
}

impl PhaseTimes {
    /// The fields' names, in the order of [`PhaseTimes::durations`].
    pub const NAMES: [&'static str; 4] = ["bucket", "local", "gather", "pool"];

    /// `[bucket, local, gather, pool]`.
    pub fn durations(&self) -> [std::time::Duration; 4] {
        [self.bucket, self.local, self.gather, self.pool]
    }
}

/// Buffers a batch reuses from the previous one (no page faults, no allocation per batch).
#[derive(Default)]
pub(crate) struct Scratch {
    /// The last batch's phase times.
    pub(crate) phases: PhaseTimes,
    reqs: Vec<Req>,
    /// Result code per request, in shard order.
    codes: Vec<u8>,
    /// Listed retry-afters, each shard's in its own range of the requests' positions, in order.
    retries: Vec<u64>,
    /// Shadow overflow to credit, laid out as the retries.
    credits: Vec<Overflow>,
    /// Where chunk `c`'s requests of shard `s` start in `reqs`, at `c * nshards + s`.
    table: Vec<u32>,
    /// Where chunk `c`'s retry-afters and credits of shard `s` start, laid out as `table`.
    side: Vec<[u32; 2]>,
    segments: Vec<Mutex<Segment>>,
    /// The last batch's shards.
    plan: shards::Plan,
}

/// How many requests ahead the loops prefetch their customer's record.
pub const AHEAD: usize = 16;
/// How many requests ahead the loops prefetch their customer's record into the second-level cache.
const FAR: usize = 64;

/// Asks the CPU to start loading the cache lines of `*p` (at most 128 bytes) now. A hint only:
/// it never faults and changes nothing.
#[inline(always)]
pub(crate) fn prefetch<T>(p: &T) {
    prefetch_ptr::<HINT_L1, T>(p);
}

/// `_MM_HINT_T0`: into every cache level.
const HINT_L1: i32 = 3;
/// `_MM_HINT_T1`: into the second level and below.
const HINT_L2: i32 = 2;
#[cfg(target_arch = "x86_64")]
const _: () =
    assert!(HINT_L1 == std::arch::x86_64::_MM_HINT_T0 && HINT_L2 == std::arch::x86_64::_MM_HINT_T1);

/// Prefetches the lines of `*p` (at most 128 bytes) with hint `HINT`; `p` need not be valid
/// (prefetching never faults).
#[inline(always)]
fn prefetch_ptr<const HINT: i32, T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        let a = p as *const i8;
        // SAFETY: prefetching is a hint that never faults and changes nothing, whatever the
        // address; `wrapping_add` makes no claim that it is in bounds.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<HINT>(a);
            if std::mem::size_of::<T>() > 64 {
                std::arch::x86_64::_mm_prefetch::<HINT>(a.wrapping_add(64));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`prefetch`] of `v[i]`, if there is such an element.
#[inline(always)]
fn prefetch_at<T>(v: &[T], i: usize) {
    if let Some(x) = v.get(i) {
        prefetch(x);
    }
}

/// A request as the shard phase reads it, in shard order, packed in 8 bytes: its slot within
/// its range of shard slots (14 bits; a shard that is a piece of a cut range starts some way into
/// it), its index within its chunk of the batch (15 bits: where its result code
/// goes) and its size (35 bits; [`Req::BIG`] for any size that does not fit).
#[derive(Clone, Copy, Default)]
struct Req(u64);

const _: () = assert!(SHARD_SLOTS <= 1 << Req::SLOT_BITS && POOL_CHUNK <= 1 << Req::INDEX_BITS);

/// Packed requests per 64-byte cache line.
const REQS_PER_LINE: usize = 64 / std::mem::size_of::<Req>();

impl Req {
    const SLOT_BITS: u32 = 14;
    const INDEX_BITS: u32 = 15;
    const SIZE_BITS: u32 = 64 - Req::SLOT_BITS - Req::INDEX_BITS;
    /// The size field of a request of `BIG` tokens (about 34 billion) or more. Such a request is
    /// decided in the pool phase, which reads its exact size (bursts go up to
    /// [`crate::fixed::MAX_BURST_TOKENS`], so it could still be granted).
    const BIG: u64 = (1 << Req::SIZE_BITS) - 1;

    #[inline(always)]
    fn new(local: usize, index: usize, tokens: u64) -> Req {
        let key = ((local as u64) << Req::INDEX_BITS) | index as u64;
        Req((key << Req::SIZE_BITS) | tokens.min(Req::BIG))
    }

    /// The slot within its range.
    #[inline(always)]
    fn local(self) -> usize {
        (self.0 >> (Req::SIZE_BITS + Req::INDEX_BITS)) as usize
    }

    /// The index within its chunk of the batch.
    #[inline(always)]
    fn index(self) -> usize {
        (self.0 >> Req::SIZE_BITS) as usize & ((1 << Req::INDEX_BITS) - 1)
    }

    /// The size, or [`Req::BIG`].
    #[inline(always)]
    fn tokens(self) -> u64 {
        self.0 & Req::BIG
    }
}

/// Adds the counters of `b` to `a`.
pub(crate) fn add_stats(a: &mut StatsRaw, b: &StatsRaw) {
    a.femto_returned += b.femto_returned;
    a.femto_lost_at_cap += b.femto_lost_at_cap;
    a.requests += b.requests;
    a.shadow_grants += b.shadow_grants;
    a.pool_grants += b.pool_grants;
    a.denied_customer += b.denied_customer;
    a.denied_pool += b.denied_pool;
    a.exceeds_burst += b.exceeds_burst;
    a.unknown += b.unknown;
    a.invalid += b.invalid;
    a.tokens_shadow += b.tokens_shadow;
    a.tokens_pool += b.tokens_pool;
    a.tokens_refunded += b.tokens_refunded;
    a.tokens_debt += b.tokens_debt;
    a.settles += b.settles;
    a.bumps += b.bumps;
}

/// Runs a batch: `slots[i]` names a slot; [`NO_SLOT`], any slot past the capacity and any slot
/// without a customer give `UnknownCustomer`. Writes `outcomes` and `retry` (same length as
/// `slots`, at most `u32::MAX` long).
#[expect(
    clippy::too_many_arguments,
    reason = "the batch's columns, inputs and outputs, borrowed separately"
)]
pub(crate) fn run(
    buckets: &mut [Bucket],
    journal: &mut [Bucket],
    log_heads: &mut [LogHead],
    g: &mut Globals,
    seq: u64,
    slots: &[u32],
    tokens: &[u64],
    now: u64,
    outcomes: &mut [Outcome],
    retry: &mut [u64],
    scratch: &mut Scratch,
) {
    let now = advance(g, now);
    scratch.phases = PhaseTimes::default();
    // (an empty batch too, whatever `parallel_min`: the bucketing's tables have a row per
    // chunk, and it has none)
    if slots.len() < tuning::parallel_min() || slots.is_empty() {
        run_sequential(
            buckets, journal, g, seq, slots, tokens, now, outcomes, retry,
        );
        return;
    }
    let t0 = std::time::Instant::now();
    let shard_slots = tuning::shard_slots();
    let chunk = tuning::pool_chunk();
    let capacity = buckets.len();
    let nchunks = slots.len().div_ceil(chunk);
    let order = bucket_by_shard(slots, tokens, capacity, shard_slots, chunk, scratch);
    let nshards = scratch.plan.shards();
    g.stats.requests += order.unknown;
    g.stats.unknown += order.unknown;
    let t1 = std::time::Instant::now();

    // Phase 2: customer-local decisions, shards in parallel. Each request's result goes to its
    // position in shard order: a code byte, and (rarely) a retry-after or a credit in its
    // shard's own compact list.
    let known = order.starts[nshards];
    let Scratch {
        reqs,
        codes,
        retries,
        credits,
        table,
        side,
        segments,
        plan,
        ..
    } = scratch;
    grow(codes, known);
    grow(retries, known);
    grow(credits, known);
    grow(side, nchunks * nshards);
    let out_code = Out(codes.as_mut_ptr());
    let out_retry = Out(retries.as_mut_ptr());
    let out_credit = Out(credits.as_mut_ptr());
    let out_side = Out(side.as_mut_ptr());
    // (with the `FAR` requests after them that the prefetches may read)
    let reqs_all = &reqs[..known + FAR];
    let table = &table[..nchunks * nshards];
    let starts = &order.starts;
    let full_at = g.pool.full_at_ns;

    // each shard's records, journal range and log head
    let mut parts = Vec::with_capacity(nshards);
    let (mut bk_rest, mut jn_rest, mut heads) =
        (&mut *buckets, &mut *journal, log_heads.iter_mut());
    for w in plan.bounds.windows(2) {
        let len = (w[1] - w[0]) as usize;
        let (bk, b) = std::mem::take(&mut bk_rest).split_at_mut(len);
        let (jn, j) = std::mem::take(&mut jn_rest).split_at_mut(len);
        (bk_rest, jn_rest) = (b, j);
        // (the log heads column has a head per 64 slots, and a range is cut into at most one
        // piece per 64 of its slots)
        let head = heads.next().expect("a log head per shard");
        parts.push((bk, jn, head, w[0] as usize));
    }
    let range_mask = shard_slots - 1;
    let shard_stats: Vec<StatsRaw> = parts
        .into_par_iter()
        .enumerate()
        .map(|(s, (bk, jn, head, first_slot))| {
            // (copied: read through the closure's references, the loop reloaded them per request)
            let (now, full_at, out_code) = (now, full_at, out_code);
            let (lo, hi) = (starts[s], starts[s + 1]);
            let reqs = &reqs_all[lo..hi];
            // this shard's requests and the `FAR` after them, read only to prefetch (the loop
            // also walks `reqs` itself: walking `ahead` alone made the uniform bench's phase
            // 8.88-8.94 ms against 8.71-8.76, two alternated runs)
            let ahead = &reqs_all[lo..hi + FAR];
            // A request carries its slot within its range, and a shard that is a piece of a
            // cut range starts `o` slots into it: the record of `local` is `bk[local - o]`, at
            // `records + local`. The log and the blocked bits take `local` as it is (below
            // 16384 either way).
            let o = first_slot & range_mask;
            let records = bk.as_mut_ptr().wrapping_sub(o);
            let shard_len = bk.len();
            let mut stats = StatsRaw::default();
            let mut blocked = [0u64; SHARD_SLOTS / 64];
            // where the next retry-after and credit of this shard go
            let mut lists = Lists {
                credits: out_credit,
                retries: out_retry,
                nc: lo,
                nr: lo,
            };
            let mut log = JournalLog::new(jn, head, first_slot, first_slot - o, seq);
            for c in 0..nchunks {
                // SAFETY: column `s` of the side table belongs to this shard only, and
                // `c * nshards + s` is in bounds (the table was grown to `nchunks * nshards`).
                unsafe { out_side.write(c * nshards + s, [lists.nr as u32, lists.nc as u32]) };
                // (the same range as the gather's below; a helper shared by both, closure or
                // function, made this phase 8.97-9.09 ms against 8.59-8.65, four alternated runs)
                let a = table[c * nshards + s] as usize - lo;
                let b = if c + 1 < nchunks {
                    table[(c + 1) * nshards + s] as usize - lo
                } else {
                    hi - lo
                };
                // each request with the ones `AHEAD` and `FAR` after it (near the shard's end,
                // the next shard's or padding: their slots within a range, taken as this one's,
                // give prefetches of arbitrary lines of this range or past it, useless but
                // harmless)
                let window = reqs[a..b]
                    .iter()
                    .zip(&ahead[a + AHEAD..b + AHEAD])
                    .zip(&ahead[a + FAR..b + FAR]);
                for (i, ((&r, near), far)) in window.enumerate() {
                    let k = a + i;
                    prefetch_ptr::<HINT_L2, _>(records.wrapping_add(far.local()));
                    // (not the journal entry: it is written whole, with streaming stores)
                    prefetch_ptr::<HINT_L1, _>(records.wrapping_add(near.local()));
                    let local = r.local();
                    debug_assert!(local.wrapping_sub(o) < shard_len);
                    // SAFETY: `records + local` is `bk[local - o]`: `scatter` put the request
                    // in this shard's list because the plan's map gave its slot this shard,
                    // whose slots the plan's bounds hold (a cut plan is checked when made:
                    // `shards::plan`), so `local - o` is below `bk.len()`; the pointer comes
                    // from `bk`, borrowed exclusively by this shard, and no other reference to
                    // the record lives. (Indexed, `bk[local - o]`, the uniform 1M bench's
                    // customer-local phase took 8.78-8.81 ms against 8.50-8.54, two alternated
                    // runs.)
                    let b = unsafe { &mut *records.wrapping_add(local) };
                    // SAFETY: once per request of this shard, whose lists `lists` are.
                    let code = unsafe {
                        decide_first(
                            b,
                            &mut log,
                            &mut blocked,
                            &mut lists,
                            local,
                            r.tokens(),
                            now,
                            full_at,
                            &mut stats,
                        )
                    };
                    // SAFETY: position `lo + k` is this shard's own, and below `known`.
                    unsafe { out_code.write(lo + k, code) };
                }
            }
            // the journal's streaming stores, ordered on the thread that made them
            stream_fence();
            stats
        })
        .collect();

    for st in &shard_stats {
        add_stats(&mut g.stats, st);
    }
    let t2 = std::time::Instant::now();

    // Phase 3, chunks of the batch: each chunk is *gathered* (in parallel) and then *replayed*
    // against the pool (in batch order, one chunk after another), and a chunk's replay overlaps
    // the later chunks' gathers.
    //
    // The gather puts the chunk's codes in batch order, writes each decided request's outcome
    // from its code (reading the listed retry-afters and credits from each shard's lists, from
    // where the chunk's part starts), lists the pool-phase requests and sums the credits between
    // them. Consecutive credits commute into one: every operation leaves the overflow allowance
    // within the room under the cap, so a credit never pushes the pool over its cap, and a run of
    // credits takes `min(sum of fresh, allowance)` in total, exactly as one credit of the sums
    // (see `credit_overflow`).
    //
    // The replay applies each run's credit and decides each listed request against the pool.
    // Every worker gathers the next unclaimed chunk, and before that replays whatever chunks
    // are gathered and next in order, unless another worker is replaying; the caller replays
    // whatever is left at the end.
    let (codes, retries, credits, side) = (&codes[..], &retries[..], &credits[..], &side[..]);
    let shift = shard_slots.trailing_zeros();
    let split = plan.split();
    segments.resize_with(nchunks.max(segments.len()), Default::default);
    let segments = &segments[..nchunks];
    let gathered: Vec<AtomicBool> = (0..nchunks).map(|_| AtomicBool::new(false)).collect();
    let claimed = AtomicUsize::new(0);
    let out_o = Out(outcomes.as_mut_ptr());
    let out_r = Out(retry.as_mut_ptr());
    let replay = Mutex::new(Replay {
        g,
        buckets,
        next: 0,
        busy: std::time::Duration::ZERO,
    });
    let listed = Listed { retries, credits };
    let gather = |c: usize| {
        let mut seg = segments[c].lock().expect("segment lock");
        let seg = &mut *seg;
        seg.cursors.clear();
        seg.cursors
            .extend_from_slice(&side[c * nshards..(c + 1) * nshards]);
        let first = c * chunk;
        let len = chunk.min(slots.len() - first);
        // The chunk's codes into batch order: each shard's part of the chunk (its results in
        // shard order) to the places its requests carry. A request with no slot is in no shard:
        // its code stays `UNKNOWN`.
        // With cut ranges, each request's shard goes beside its code (the slot alone no longer
        // names it, and working it out again per listed result cost the crowded CLI bench's
        // gather 2 ms).
        let buf = &mut *seg.codes;
        buf[..len].fill(UNKNOWN);
        let mut ids = if split {
            let ids = seg.shards.get_or_insert_with(|| {
                vec![0; POOL_CHUNK]
                    .into_boxed_slice()
                    .try_into()
                    .expect("POOL_CHUNK entries")
            });
            Some(&mut **ids)
        } else {
            None
        };
        for s in 0..nshards {
            let a = table[c * nshards + s] as usize;
            let b = if c + 1 < nchunks {
                table[(c + 1) * nshards + s] as usize
            } else {
                starts[s + 1]
            };
            let part = reqs_all[a..b].iter().zip(&codes[a..b]);
            if let Some(ids) = &mut ids {
                for (r, &code) in part {
                    buf[r.index()] = code;
                    ids[r.index()] = s as u16;
                }
            } else {
                for (r, &code) in part {
                    buf[r.index()] = code;
                }
            }
        }
        // SAFETY: chunk `c`'s outputs are `first..first + len`, in bounds; this worker claimed
        // the chunk alone, and the replay touches them only once the chunk is gathered.
        let (co, cr) = unsafe { (out_o.slice_mut(first, len), out_r.slice_mut(first, len)) };
        let range = first..first + len;
        gather_chunk(
            seg,
            first,
            &slots[range.clone()],
            &tokens[range],
            (!split).then_some(shift),
            &listed,
            co,
            cr,
        );
    };
    // Replays the gathered chunks next in order (`all`: every chunk, once all are gathered).
    let replay_ready = |rp: &mut Replay<'_>, all: bool| {
        let t = std::time::Instant::now();
        while rp.next < nchunks && (all || gathered[rp.next].load(Ordering::Acquire)) {
            let seg = segments[rp.next].lock().expect("segment lock");
            replay_chunk(rp, &seg, out_o, out_r);
            rp.next += 1;
        }
        rp.busy += t.elapsed();
    };
    rayon::broadcast(|_| {
        loop {
            if let Ok(mut rp) = replay.try_lock() {
                replay_ready(&mut rp, false);
            }
            let c = claimed.fetch_add(1, Ordering::Relaxed);
            if c >= nchunks {
                break;
            }
            gather(c);
            gathered[c].store(true, Ordering::Release);
        }
    });
    let mut rp = replay.into_inner().expect("replay lock");
    replay_ready(&mut rp, true);
    let busy = rp.busy;
    scratch.phases = PhaseTimes {
        bucket: t1 - t0,
        local: t2 - t1,
        gather: t2.elapsed(),
        pool: busy,
        shards: nshards,
        kept_cut: order.kept,
    };
}

/// Phase 2's listed retry-afters and credits, each shard's in its own range, in order.
struct Listed<'a> {
    retries: &'a [u64],
    credits: &'a [Overflow],
}

/// The gather's shard ids when ranges are not cut (never read).
static NO_IDS: [u16; POOL_CHUNK] = [0; POOL_CHUNK];

/// `x` in every byte of a word.
const fn bytes(x: u8) -> u64 {
    u64::from_le_bytes([x; 8])
}

/// Gathers one chunk (batch indices from `first`; `slots`, `tokens` and the outputs are the
/// chunk's own) with `seg.codes` starting with its codes in batch order and `seg.cursors` set to
/// where its part of each shard's listed results starts: writes the outcomes decided in phase 2,
/// and lists the pool-phase requests with the credits between them. A request's shard is its
/// slot shifted by `shift`, or, when ranges were cut (`shift` is `None`), `seg.shards`'.
///
/// Most codes say everything: an outcome and a retry-after of 0 or never. They are written eight
/// at a time, straight from a word of codes; the few others (a listed retry-after or credit, a
/// pool-phase request) are then found in the word and completed one by one, in batch order.
#[expect(
    clippy::too_many_arguments,
    reason = "the chunk's inputs, outputs and the lists it reads, borrowed separately"
)]
fn gather_chunk(
    seg: &mut Segment,
    first: usize,
    slots: &[u32],
    tokens: &[u64],
    shift: Option<u32>,
    listed: &Listed<'_>,
    outcomes: &mut [Outcome],
    retry: &mut [u64],
) {
    let Segment {
        pending,
        cursors,
        codes,
        shards,
        ..
    } = seg;
    let codes = &codes[..outcomes.len()];
    let cursors = &mut cursors[..];
    pending.clear();
    // The lists were written by other cores, and the hardware follows few streams at once:
    // fetch the first lines of each now.
    for &[r, c] in cursors.iter() {
        prefetch_at(listed.retries, r as usize);
        prefetch_at(listed.credits, c as usize);
    }
    // (with `shift`, unused)
    let ids: &[u16; POOL_CHUNK] = shards.as_deref().unwrap_or(&NO_IDS);
    let mut sum = Overflow::default();
    // A code that needs more than its own bits (`RARE`), with its default outputs written.
    let mut complete = |k: usize, code: u8, r: &mut u64| {
        let shard = match shift {
            Some(shift) => slots[k] as usize >> shift,
            None => ids[k] as usize,
        };
        let cur = &mut cursors[shard];
        if code & CREDIT != 0 {
            let at = cur[1] as usize;
            cur[1] += 1;
            sum = sum + listed.credits[at];
            prefetch_at(listed.credits, at + 2);
        }
        if code & LATER != 0 {
            pending.push(Pending {
                idx: (first + k) as u32,
                slot: slots[k],
                tokens: tokens[k],
                credit_before: sum,
            });
            sum = Overflow::default();
        } else if code & RETRY_BITS == RETRY_LISTED {
            let at = cur[0] as usize;
            cur[0] += 1;
            *r = listed.retries[at];
        }
    };
    // SAFETY: `Outcome` is `repr(u8)`, and every byte written through this view is one of its
    // discriminants: a code's `OUTCOME_BITS` always are (every code is an outcome's value with
    // flags above it, `LATER` with none, or `UNKNOWN`; the replay overwrites a `LATER` one).
    let out: &mut [u8] =
        unsafe { std::slice::from_raw_parts_mut(outcomes.as_mut_ptr().cast(), outcomes.len()) };
    let (cw, ct) = codes.as_chunks::<8>();
    let (ow, ot) = out.as_chunks_mut::<8>();
    let (rw, rt) = retry.as_chunks_mut::<8>();
    for (w, ((c, o), r)) in cw.iter().zip(ow).zip(rw).enumerate() {
        put_word(u64::from_le_bytes(*c), 8 * w, o, r, &mut complete);
    }
    // the last few codes, as a word padded with codes that hold everything
    if !ct.is_empty() {
        let n = ct.len();
        let (mut c, mut o, mut r) = ([0u8; 8], [0u8; 8], [0u64; 8]);
        c[..n].copy_from_slice(ct);
        put_word(
            u64::from_le_bytes(c),
            8 * cw.len(),
            &mut o,
            &mut r,
            &mut complete,
        );
        ot.copy_from_slice(&o[..n]);
        rt.copy_from_slice(&r[..n]);
    }
    seg.credit_after = sum;
}

/// Writes the outputs of eight codes, one per byte of `x`: each outcome and each retry-after of 0
/// or never straight from the word, then `complete` with request `first + j`, its code and its
/// retry-after for each code `j` that needs more (`RARE`), in order.
#[inline(always)]
fn put_word(
    x: u64,
    first: usize,
    outcomes: &mut [u8; 8],
    retry: &mut [u64; 8],
    complete: &mut impl FnMut(usize, u8, &mut u64),
) {
    debug_assert!(
        (0..8).all(|j| Outcome::from_code((x >> (8 * j)) as u8 & OUTCOME_BITS).is_some())
    );
    *outcomes = (x & bytes(OUTCOME_BITS)).to_le_bytes();
    for (j, r) in retry.iter_mut().enumerate() {
        *r = ((x >> (8 * j + RETRY_NEVER.trailing_zeros() as usize)) & 1).wrapping_neg();
    }
    // the top bit of each byte whose `RARE` bits are not all clear (no carry crosses bytes: each
    // sum is at most `2 * RARE`, below 256)
    let mut rare = ((x & bytes(RARE)) + bytes(0x80 - RARE_LOW)) & bytes(0x80);
    while rare != 0 {
        let j = rare.trailing_zeros() as usize / 8;
        rare &= rare - 1;
        complete(first + j, (x >> (8 * j)) as u8, &mut retry[j]);
    }
}

/// The pool phase's sequential state: the pool, the records, and the next chunk to replay.
struct Replay<'a> {
    g: &'a mut Globals,
    buckets: &'a mut [Bucket],
    next: usize,
    /// Time spent replaying.
    busy: std::time::Duration,
}

/// Replays one gathered chunk against the pool: its pool-phase requests in batch order, each
/// after the credits before it, then the credits after the last.
fn replay_chunk(rp: &mut Replay<'_>, seg: &Segment, out_o: Out<Outcome>, out_r: Out<u64>) {
    let g = &mut *rp.g;
    for (k, p) in seg.pending.iter().enumerate() {
        if let Some(f) = seg.pending.get(k + AHEAD) {
            prefetch(&rp.buckets[f.slot as usize]);
            out_o.prefetch(f.idx as usize);
            out_r.prefetch(f.idx as usize);
        }
        credit_overflow(g, p.credit_before);
        let n = p.tokens;
        let b = &mut rp.buckets[p.slot as usize];
        let d = match decide_local(b, n, &mut g.stats) {
            Local::Done(d) => d,
            Local::NeedsPool => decide_pool(b, n, g),
        };
        // SAFETY: the request's chunk is gathered (its gather wrote its outputs before the chunk
        // was marked gathered), so no other thread writes this element any more.
        unsafe {
            out_o.write(p.idx as usize, d.outcome);
            out_r.write(p.idx as usize, d.retry_after_ns);
        }
    }
    credit_overflow(g, seg.credit_after);
}

/// Where one shard's listed credits and retry-afters go: its own range of the lists (from the
/// shard's first position in shard order), and the next free place in each.
struct Lists {
    credits: Out<Overflow>,
    retries: Out<u64>,
    nc: usize,
    nr: usize,
}

impl Lists {
    /// Lists a credit.
    ///
    /// # Safety
    /// Called at most once per request of the shard (so `nc` stays in the shard's own range of
    /// the list, which no other shard writes).
    #[inline(always)]
    unsafe fn credit(&mut self, ov: Overflow) {
        // SAFETY: guaranteed by the caller.
        unsafe { self.credits.write(self.nc, ov) };
        self.nc += 1;
    }

    /// Lists a retry-after.
    ///
    /// # Safety
    /// As for [`Lists::credit`].
    #[inline(always)]
    unsafe fn retry(&mut self, ns: u64) {
        // SAFETY: guaranteed by the caller.
        unsafe { self.retries.write(self.nr, ns) };
        self.nr += 1;
    }
}

/// Phase 2 for one request of `n` tokens ([`Req::BIG`] for a size only the pool phase reads
/// exactly) to the customer in slot `local` of its range: `UnknownCustomer` for an empty slot,
/// `LATER` for a customer already waiting on the pool (`blocked`), otherwise the journal, the
/// refill and the customer-local decision, which blocks the customer if it needs the pool.
/// Returns the request's code; a credit or retry-after that the code lists is listed at once,
/// where it is found. (Returned with the code instead, and listed by the caller, the credit was
/// kept live through the decision: the uniform and Zipf benches' phase took 9.01 and 5.54-5.56 ms
/// against 8.94 and 5.32-5.33.)
///
/// # Safety
/// Called at most once per request of the shard whose lists `lists` are (each call lists at
/// most one credit and one retry-after, which must stay in the shard's own range of the lists).
#[expect(
    clippy::too_many_arguments,
    reason = "the record, the shard's journal, state and lists, and the batch's constants"
)]
#[inline(always)]
unsafe fn decide_first(
    b: &mut Bucket,
    log: &mut JournalLog<'_>,
    blocked: &mut [u64],
    lists: &mut Lists,
    local: usize,
    n: u64,
    now: u64,
    full_at: u64,
    stats: &mut StatsRaw,
) -> u8 {
    if !b.active() {
        stats.requests += 1;
        stats.unknown += 1;
        return UNKNOWN;
    }
    // A customer waiting on the pool was touched (and logged) before, so only a repeat touch
    // needs the test.
    if log.first_time::<FIRST_LINE>(local) {
        log.append::<FIRST_LINE>(b, local);
    } else if blocked[local / 64] & (1 << (local % 64)) != 0 {
        return LATER;
    }
    let mut code = 0;
    refill_bucket_with(b, now, full_at, |ov| {
        // SAFETY: the request's only credit; the caller's contract (# Safety) does the rest.
        unsafe { lists.credit(ov) };
        code = CREDIT;
    });
    // The record's second line changes with a contract denial's counter, or in the pool phase:
    // it is logged just before, inside the decision's own branches. (A test of its own here, a
    // branch mispredicted whenever the decision's is, cost the uniform bench's customer-local
    // phase 0.4 ms: 9.35 against 8.94 ms, both builds logging no second lines.)
    let decided = if n == Req::BIG {
        Local::NeedsPool
    } else {
        decide_local_with(b, n, stats, |b| log.record::<SECOND_LINE>(b, local))
    };
    match decided {
        Local::Done(x) => {
            code |= x.outcome as u8;
            code |= match x.retry_after_ns {
                0 => RETRY_NOW,
                u64::MAX => RETRY_NEVER,
                v => {
                    // SAFETY: the request's only retry-after, as for the credit.
                    unsafe { lists.retry(v) };
                    RETRY_LISTED
                }
            };
        }
        Local::NeedsPool => {
            log.record::<SECOND_LINE>(b, local);
            blocked[local / 64] |= 1 << (local % 64);
            code |= LATER;
        }
    }
    code
}

/// Grows `v` to at least `n` elements (never shrinks it: the buffers are reused and only the
/// first `n` are read, after being written).
fn grow<T: Clone + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

/// A request's result code (phase 2, one byte per request in shard order): the outcome in the
/// low bits, how its retry-after is stored, and the pool-phase marks.
const OUTCOME_BITS: u8 = 0b111;
/// Retry-after 0.
const RETRY_NOW: u8 = 0;
/// Retry-after `u64::MAX` (never).
const RETRY_NEVER: u8 = 1 << 3;
/// Retry-after in the shard's list of retries, in order.
const RETRY_LISTED: u8 = 2 << 3;
const RETRY_BITS: u8 = 3 << 3;
/// The request's refill returned shadow overflow, in the shard's list of credits, in order.
const CREDIT: u8 = 1 << 5;
/// The request is decided in the pool phase.
const LATER: u8 = 1 << 6;
/// The codes whose outputs need more than the code: a listed retry-after, a credit, the pool
/// phase. (Contiguous bits from `RARE_LOW`, below the top bit, as the gather's test needs.)
const RARE: u8 = RETRY_LISTED | CREDIT | LATER;
const RARE_LOW: u8 = RETRY_LISTED;
const _: () = assert!(RARE == 0x70 && RARE_LOW == 0x10 && RETRY_NEVER == 0x08);
/// The code of a request for no customer.
const UNKNOWN: u8 = Outcome::UnknownCustomer as u8 | RETRY_NEVER;

#[expect(
    clippy::too_many_arguments,
    reason = "the batch's columns, inputs and outputs, borrowed separately"
)]
fn run_sequential(
    buckets: &mut [Bucket],
    journal: &mut [Bucket],
    g: &mut Globals,
    seq: u64,
    slots: &[u32],
    tokens: &[u64],
    now: u64,
    outcomes: &mut [Outcome],
    retry: &mut [u64],
) {
    for (i, (&s, &n)) in slots.iter().zip(tokens).enumerate() {
        let d = if s as usize >= buckets.len() || !buckets[s as usize].active() {
            g.stats.requests += 1;
            g.stats.unknown += 1;
            Decision {
                outcome: Outcome::UnknownCustomer,
                retry_after_ns: u64::MAX,
            }
        } else {
            let b = &mut buckets[s as usize];
            journal_bucket(b, &mut journal[s as usize], seq);
            crate::kernel::decide_full(b, n, now, g)
        };
        outcomes[i] = d.outcome;
        retry[i] = d.retry_after_ns;
    }
}

/// Requests grouped by shard, each group in batch order (the requests themselves are in the
/// scratch buffer, and where each chunk's part of each shard starts in its table).
struct ShardOrder {
    /// `starts[s]..starts[s + 1]` is shard `s`'s range in the requests.
    starts: Vec<usize>,
    /// Whether the last batch's cut was kept ([`PhaseTimes::kept_cut`]).
    kept: bool,
    /// Requests with no slot (their outcome is written by the gather).
    unknown: u64,
}

/// Counting sort of the requests by shard, in parallel over chunks of `chunk` requests, packing
/// each with its slot and size so the shard phase reads them sequentially. The shards are
/// `scratch.plan`'s ([`shards::plan`]: ranges of `shard_slots` slots, crowded ones cut into
/// pieces). Requests with no slot (or a slot past the capacity) are left out.
/// `scratch.table[c * nshards + s]` is where chunk `c`'s requests of shard `s` start
/// (shard-major, chunk-minor, so each shard's requests stay in batch order).
fn bucket_by_shard(
    slots: &[u32],
    tokens: &[u64],
    capacity: usize,
    shard_slots: usize,
    chunk: usize,
    scratch: &mut Scratch,
) -> ShardOrder {
    let nranges = capacity.div_ceil(shard_slots);
    let nchunks = slots.len().div_ceil(chunk);
    let even = Even {
        shift: shard_slots.trailing_zeros(),
    };
    let target = tuning::split();
    // the last batch's cut plan, if it still fits
    // Counts each chunk's requests per shard of the plan's cut into `scratch.table`; whether
    // there is a cut.
    let count_cut = |scratch: &mut Scratch| {
        let Some(split) = scratch.plan.map(even.shift) else {
            return false;
        };
        let n = nchunks * scratch.plan.shards();
        grow(&mut scratch.table, n);
        histogram(slots, capacity, chunk, split, &mut scratch.table[..n]);
        true
    };
    let kept = scratch.plan.cuts_for(capacity, even.shift, target)
        && count_cut(scratch)
        && scratch
            .plan
            .still_fits(&scratch.table[..nchunks * scratch.plan.shards()]);
    if !kept {
        grow(&mut scratch.table, nchunks * nranges);
        histogram(
            slots,
            capacity,
            chunk,
            even,
            &mut scratch.table[..nchunks * nranges],
        );
        shards::plan(
            slots,
            capacity,
            chunk,
            even.shift,
            &scratch.table[..nchunks * nranges],
            target,
            &mut scratch.plan,
        );
        count_cut(scratch);
    }
    let table = &mut scratch.table[..nchunks * scratch.plan.shards()];
    let order = match scratch.plan.map(even.shift) {
        Some(split) => scatter(
            slots,
            tokens,
            capacity,
            chunk,
            split,
            table,
            &mut scratch.reqs,
        ),
        None => scatter(
            slots,
            tokens,
            capacity,
            chunk,
            even,
            table,
            &mut scratch.reqs,
        ),
    };
    ShardOrder { kept, ..order }
}

/// The counting sort's second half: `table` holds each chunk's requests per shard (`nshards`
/// per chunk), and becomes where each chunk's part of each shard starts; each request is packed
/// into `reqs` there.
fn scatter<M: ShardOf>(
    slots: &[u32],
    tokens: &[u64],
    capacity: usize,
    chunk: usize,
    map: M,
    table: &mut [u32],
    reqs: &mut Vec<Req>,
) -> ShardOrder {
    let nchunks = slots.len().div_ceil(chunk);
    let nshards = table.len() / nchunks;
    let mut starts = vec![0usize; nshards + 1];
    let mut pos = 0usize;
    for (s, start) in starts[..nshards].iter_mut().enumerate() {
        *start = pos;
        for c in 0..nchunks {
            let h = table[c * nshards + s] as usize;
            table[c * nshards + s] = pos as u32;
            pos += h;
        }
    }
    starts[nshards] = pos;
    // Every position below `pos` is written below; the buffer only ever grows. It holds `FAR`
    // more, so the shard phase's prefetches read ahead without a bounds check.
    grow(reqs, pos + FAR);
    let out = Out(reqs.as_mut_ptr());
    let unknown = slots
        .par_chunks(chunk)
        .zip(tokens.par_chunks(chunk))
        .zip(table.par_chunks(nshards))
        .map(|((cs, ct), start)| {
            // (copied, so the loop keeps them in registers across its writes through `out`)
            let (out, capacity, map) = (out, capacity, map);
            let mut off = start.to_vec();
            let mut unknown = 0u64;
            let mut put = |i: usize, shard: usize, local: usize, n: u64| {
                let o = &mut off[shard];
                let at = *o as usize;
                // Each shard's part is written as one stream: fetch the line after next,
                // so the writes do not wait for their lines. (On every write: whether a
                // write starts a line is random, so a branch on it was mispredicted.)
                out.prefetch(at + 2 * REQS_PER_LINE);
                let r = Req::new(local, i, n);
                // SAFETY: the table gives each (chunk, shard) pair its own range, sized by
                // this very chunk's histogram, so the positions are disjoint and below `pos`.
                unsafe { out.write(at, r) };
                *o += 1;
            };
            if !M::INDIRECT {
                for (i, (&s, &n)) in cs.iter().zip(ct).enumerate() {
                    if s as usize >= capacity {
                        unknown += 1;
                    } else {
                        let (shard, local) = map.of(s as usize);
                        put(i, shard, local, n);
                    }
                }
            } else {
                for_each_blocked(cs, capacity, map, |i, place| match place {
                    Some((shard, local)) => put(i, shard as usize, local as usize, ct[i]),
                    None => unknown += 1,
                });
            }
            unknown
        })
        .sum();
    ShardOrder {
        starts,
        kept: false,
        unknown,
    }
}
