//! The batch allocation path: millions of requests per call, in parallel, with exactly the
//! outcomes and end state of applying them one at a time in order (semantics I5).
//!
//! 1. **Bucket by shard.** Slots are cut into shards of [`SHARD_SLOTS`] consecutive slots (2 MiB
//!    of records). A parallel counting sort packs each request with its slot and size into its
//!    shard's list, in batch order.
//! 2. **Customer-local phase, shards in parallel.** A request whose outcome depends only on its
//!    customer (a shadow grant, a contract denial, exceeds-burst, invalid) is decided at once.
//!    The first request of a customer that needs the pool is left *pending*, and every later
//!    request of that customer is *deferred*, because its state now depends on the pool. A
//!    customer's first touch may return shadow overflow to the pool: that is a *credit* event at
//!    that request's position. Both are marked in a byte per request, and credits are stored by
//!    batch index.
//! 3. **Pool phase, in batch order.** Chunks of the marks are scanned in parallel: each lists its
//!    pending and deferred requests and sums the credits between them (a run of credits with no
//!    pool request between them acts on the pool exactly as one credit of their sums). Then one
//!    sequential pass applies each run's credit and decides each listed request against the pool.
//!    Everything the first phase decided commutes with them: it touched no shared state, and no
//!    state it read depends on the pool.
//!
//! So the pool sees its events in exactly the order a one-at-a-time loop would, and the parallel
//! phase does the bulk of the work when most traffic is predicted.
//!
//! Memory, not arithmetic, sets the pace: each request's first touch of a customer misses the
//! cache (its record, its journal entry, its output slot). Both phases prefetch the record and
//! output lines [`AHEAD`] requests in advance so the misses overlap (the `allocate_batch` bench
//! measured the batch path at 71 ns per request before prefetching and 43-51 after, on 1M
//! customers). The journal's pre-images are written with non-temporal stores and not prefetched:
//! they are written whole and never read back, so they need no cache line fetch (with huge pages
//! this took the customer-local phase from 21-24 ms to 19 ms per 1M-request batch). The pool
//! phase's list carries each request's slot and size, so its only random read is the record it
//! prefetched. On the uniform 1M bench that and the merged credits took the sequential pool phase
//! from 17-23 ms to about 10 ms per batch, and mapping the store with huge pages where the kernel
//! allows (see `docs/engine.md`) to about 4 ms. The buffers are reused from batch to batch.

use rayon::prelude::*;

use crate::kernel::{
    Decision, Local, Outcome, Overflow, advance, credit_overflow, decide_local, decide_pool,
    refill_bucket,
};
use crate::layout::{Bucket, Globals, StatsRaw};
use crate::store::{journal_bucket, journal_bucket_streaming, stream_fence};

/// Slots per shard (the default; see [`tuning`]).
pub const SHARD_SLOTS: usize = 16384;
/// Requests per chunk of the pool phase's parallel scan (the default; see [`tuning`]).
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

    /// Batches shorter than `parallel_min` run sequentially; shards hold `shard_slots` slots
    /// (rounded to a power of two in `64..=16384`).
    pub fn set(parallel_min: usize, shard_slots: usize) {
        PARALLEL_MIN.store(parallel_min, Ordering::Relaxed);
        let s = shard_slots
            .clamp(64, super::SHARD_SLOTS)
            .next_power_of_two();
        SHARD_SLOTS.store(s.min(super::SHARD_SLOTS), Ordering::Relaxed);
    }

    /// The pool phase's parallel scan cuts the batch into chunks of `requests` (at least 1).
    pub fn set_pool_chunk(requests: usize) {
        POOL_CHUNK.store(requests.max(1), Ordering::Relaxed);
    }

    /// Back to the defaults.
    pub fn reset() {
        set(8192, super::SHARD_SLOTS);
        set_pool_chunk(super::POOL_CHUNK);
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
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // SAFETY: prefetching never faults, whatever the address; `wrapping_add` makes no
            // claim that the address is in bounds.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(self.0.wrapping_add(i) as *const i8) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }

    /// # Safety
    /// `i` is in bounds and no other thread writes index `i` concurrently.
    #[inline(always)]
    unsafe fn write(self, i: usize, v: T) {
        // SAFETY: guaranteed by the caller.
        unsafe { self.0.add(i).write(v) }
    }
}

/// What one shard leaves for the pool phase.
#[derive(Default)]
struct ShardOut {
    stats: StatsRaw,
}

/// One pool-phase request: its batch index, slot and size (copied here by the parallel scan, so
/// the sequential pass reads nothing at random but the customer's record), and the shadow
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
#[derive(Default)]
struct Segment {
    pending: Vec<Pending>,
    credit_after: Overflow,
}

/// Buffers a batch reuses from the previous one (no page faults, no allocation per batch).
#[derive(Default)]
pub(crate) struct Scratch {
    reqs: Vec<Req>,
    marks: Vec<u8>,
    /// Shadow overflow by batch index; valid only where the mark says `CREDIT` (never cleared:
    /// rewriting it every batch would cost more than the batch's own credits).
    credits: Vec<Overflow>,
    segments: Vec<Segment>,
}

/// How many requests ahead the loops prefetch their customer's record.
pub const AHEAD: usize = 16;

/// Asks the CPU to start loading the cache lines of `*p` (at most 128 bytes) now. A hint only:
/// it never faults and changes nothing.
#[inline(always)]
pub(crate) fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let a = p as *const T as *const i8;
        // SAFETY: prefetching is a hint that never faults, whatever the address; `a` and the
        // line after it lie within (or just past) a live reference anyway.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(a);
            if std::mem::size_of::<T>() > 64 {
                _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(64));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A request as the shard phase reads it: packed, in shard order.
#[derive(Clone, Copy, Default)]
struct Req {
    idx: u32,
    slot: u32,
    tokens: u64,
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
/// `slots`).
#[expect(
    clippy::too_many_arguments,
    reason = "the batch's columns, inputs and outputs, borrowed separately"
)]
pub(crate) fn run(
    buckets: &mut [Bucket],
    journal: &mut [Bucket],
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
    if slots.len() < tuning::parallel_min() {
        run_sequential(
            buckets, journal, g, seq, slots, tokens, now, outcomes, retry,
        );
        return;
    }
    let shard_slots = tuning::shard_slots();
    let out_o = Out(outcomes.as_mut_ptr());
    let out_r = Out(retry.as_mut_ptr());
    let order = bucket_by_shard(
        slots,
        tokens,
        buckets.len(),
        shard_slots,
        out_o,
        out_r,
        &mut scratch.reqs,
    );
    g.stats.requests += order.unknown;
    g.stats.unknown += order.unknown;
    // What the pool phase must do at each request: `CREDIT` (the request's refill returned
    // shadow overflow) and/or `LATER` (the request itself waits for the pool phase).
    let marks = &mut scratch.marks;
    marks.clear();
    marks.resize(slots.len(), 0);
    let out_m = Out(marks.as_mut_ptr());
    if scratch.credits.len() < slots.len() {
        scratch.credits.resize(slots.len(), Overflow::default());
    }
    let out_c = Out(scratch.credits.as_mut_ptr());
    let reqs_all = &scratch.reqs;
    let full_at = g.pool.full_at_ns;

    // Phase 2: customer-local decisions, shards in parallel.
    let shard_outs: Vec<ShardOut> = buckets
        .par_chunks_mut(shard_slots)
        .zip(journal.par_chunks_mut(shard_slots))
        .enumerate()
        .map(|(s, (bk, jn))| {
            let reqs = &reqs_all[order.starts[s]..order.starts[s + 1]];
            let mut out = ShardOut::default();
            if reqs.is_empty() {
                return out;
            }
            let base = s * shard_slots;
            let mut blocked = [0u64; SHARD_SLOTS / 64];
            for (k, r) in reqs.iter().enumerate() {
                if let Some(f) = reqs.get(k + AHEAD) {
                    let l = f.slot as usize - base;
                    prefetch(&bk[l]);
                    // (not the journal entry: it is written whole, with streaming stores)
                    out_r.prefetch(f.idx as usize);
                }
                let ri = r.idx as usize;
                let local = r.slot as usize - base;
                let b = &mut bk[local];
                if !b.active() {
                    out.stats.requests += 1;
                    out.stats.unknown += 1;
                    // SAFETY: request `ri` belongs to this shard only.
                    unsafe {
                        out_o.write(ri, Outcome::UnknownCustomer);
                        out_r.write(ri, u64::MAX);
                    }
                    continue;
                }
                if blocked[local / 64] & (1 << (local % 64)) != 0 {
                    // SAFETY: request `ri` belongs to this shard only.
                    unsafe { out_m.write(ri, LATER) };
                    continue;
                }
                journal_bucket_streaming(b, &mut jn[local], seq);
                let over = refill_bucket(b, now, full_at);
                let mut mark = 0;
                if over != Overflow::default() {
                    // SAFETY: request `ri` belongs to this shard only, and the credits are at
                    // least as long as the batch.
                    unsafe { out_c.write(ri, over) };
                    mark = CREDIT;
                }
                match decide_local(b, r.tokens, &mut out.stats) {
                    Local::Done(d) => {
                        // SAFETY: request `ri` belongs to this shard only.
                        unsafe {
                            out_o.write(ri, d.outcome);
                            out_r.write(ri, d.retry_after_ns);
                        }
                    }
                    Local::NeedsPool => {
                        blocked[local / 64] |= 1 << (local % 64);
                        mark |= LATER;
                    }
                }
                if mark != 0 {
                    // SAFETY: request `ri` belongs to this shard only.
                    unsafe { out_m.write(ri, mark) };
                }
            }
            // the journal's streaming stores, ordered on the thread that made them
            stream_fence();
            out
        })
        .collect();

    for so in &shard_outs {
        add_stats(&mut g.stats, &so.stats);
    }

    // Phase 3a, chunks of the batch in parallel: list the pool-phase requests in batch order and
    // sum the credits between them. Consecutive credits commute into one: every operation leaves
    // the overflow allowance within the room under the cap, so a credit never pushes the pool
    // over its cap, and a run of credits takes `min(sum of fresh, allowance)` in total, exactly
    // as one credit of the sums (see `credit_overflow`).
    let credits = &scratch.credits;
    let segment = tuning::pool_chunk();
    let nseg = slots.len().div_ceil(segment);
    let segments = &mut scratch.segments;
    segments.resize_with(nseg.max(segments.len()), Segment::default);
    segments[..nseg]
        .par_iter_mut()
        .zip(marks.par_chunks(segment))
        .enumerate()
        .for_each(|(c, (seg, ms))| {
            seg.pending.clear();
            let first = c * segment;
            let mut sum = Overflow::default();
            for (k, &m) in ms.iter().enumerate() {
                if m == 0 {
                    continue;
                }
                let ri = first + k;
                if m & CREDIT != 0 {
                    sum = sum + credits[ri];
                }
                if m & LATER != 0 {
                    seg.pending.push(Pending {
                        idx: ri as u32,
                        slot: slots[ri],
                        tokens: tokens[ri],
                        credit_before: sum,
                    });
                    sum = Overflow::default();
                }
            }
            seg.credit_after = sum;
        });

    // Phase 3b: the pool's events in batch order, one credit per run of credits.
    for seg in &segments[..nseg] {
        for (k, p) in seg.pending.iter().enumerate() {
            if let Some(f) = seg.pending.get(k + AHEAD) {
                prefetch(&buckets[f.slot as usize]);
            }
            credit_overflow(g, p.credit_before);
            let ri = p.idx as usize;
            let n = p.tokens;
            let b = &mut buckets[p.slot as usize];
            let d = match decide_local(b, n, &mut g.stats) {
                Local::Done(d) => d,
                Local::NeedsPool => decide_pool(b, n, g),
            };
            outcomes[ri] = d.outcome;
            retry[ri] = d.retry_after_ns;
        }
        credit_overflow(g, seg.credit_after);
    }
}

/// Mark: the request's refill returned shadow overflow to credit.
const CREDIT: u8 = 1;
/// Mark: the request is decided in the pool phase.
const LATER: u8 = 2;

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
/// scratch buffer).
struct ShardOrder {
    /// `starts[s]..starts[s + 1]` is shard `s`'s range in the requests.
    starts: Vec<usize>,
    /// Requests with no slot (their outcome is already written).
    unknown: u64,
}

/// Counting sort of the requests by shard, in parallel over chunks of the batch, packing each
/// with its slot and size so the shard phase reads them sequentially. Requests with no slot (or
/// a slot past the capacity) are left out, and their `UnknownCustomer` outcome is written here.
fn bucket_by_shard(
    slots: &[u32],
    tokens: &[u64],
    capacity: usize,
    shard_slots: usize,
    out_o: Out<Outcome>,
    out_r: Out<u64>,
    reqs: &mut Vec<Req>,
) -> ShardOrder {
    let nshards = capacity.div_ceil(shard_slots);
    let chunk = slots
        .len()
        .div_ceil(rayon::current_num_threads() * 4)
        .max(1024);
    let hists: Vec<Vec<u32>> = slots
        .par_chunks(chunk)
        .map(|c| {
            let mut h = vec![0u32; nshards];
            for &s in c {
                if (s as usize) < capacity {
                    h[s as usize / shard_slots] += 1;
                }
            }
            h
        })
        .collect();
    // Offsets: shard-major, chunk-minor, so each shard's requests stay in batch order.
    let mut starts = vec![0usize; nshards + 1];
    let mut offsets: Vec<Vec<usize>> = vec![vec![0; nshards]; hists.len()];
    let mut pos = 0usize;
    for s in 0..nshards {
        starts[s] = pos;
        for (c, h) in hists.iter().enumerate() {
            offsets[c][s] = pos;
            pos += h[s] as usize;
        }
    }
    starts[nshards] = pos;
    // Every position below `pos` is written below; the buffer only ever grows.
    if reqs.len() < pos {
        reqs.resize(pos, Req::default());
    }
    let out = Out(reqs.as_mut_ptr());
    let unknown = slots
        .par_chunks(chunk)
        .zip(tokens.par_chunks(chunk))
        .zip(offsets.par_iter_mut())
        .enumerate()
        .map(|(c, ((cs, ct), off))| {
            let first = c * chunk;
            let mut unknown = 0u64;
            for (k, (&s, &n)) in cs.iter().zip(ct).enumerate() {
                if s as usize >= capacity {
                    unknown += 1;
                    // SAFETY: request `first + k` belongs to this chunk only, and is in bounds.
                    unsafe {
                        out_o.write(first + k, Outcome::UnknownCustomer);
                        out_r.write(first + k, u64::MAX);
                    }
                } else {
                    let sh = s as usize / shard_slots;
                    let r = Req {
                        idx: (first + k) as u32,
                        slot: s,
                        tokens: n,
                    };
                    // SAFETY: the offsets give each (chunk, shard) pair its own range, sized by
                    // the histogram of this very chunk, so the positions are disjoint and in
                    // bounds.
                    unsafe { out.write(off[sh], r) };
                    off[sh] += 1;
                }
            }
            unknown
        })
        .sum();
    ShardOrder { starts, unknown }
}
