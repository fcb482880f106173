//! The batch allocation path: millions of requests per call, in parallel, with exactly the
//! outcomes and end state of applying them one at a time in order (semantics I5).
//!
//! 1. **Bucket by shard.** Slots are cut into shards of [`SHARD_SLOTS`] consecutive slots (512 KiB
//!    of records, so a shard's records stay in L2 while its requests run). A parallel counting
//!    sort packs each request with its slot and size into its shard's list, in batch order.
//! 2. **Customer-local phase, shards in parallel.** A request whose outcome depends only on its
//!    customer (a shadow grant, a contract denial, exceeds-burst, invalid) is decided at once.
//!    The first request of a customer that needs the pool is left *pending*, and every later
//!    request of that customer is *deferred*, because its state now depends on the pool. A
//!    customer's first touch may return shadow overflow to the pool: that is a *credit* event at
//!    that request's position. Both are marked in a byte per request.
//! 3. **Pool phase, in batch order.** One pass over the marks applies the credits and decides the
//!    pending and deferred requests sequentially against the pool. Everything the first phase
//!    decided commutes with them: it touched no shared state, and no state it read depends on the
//!    pool.
//!
//! So the pool sees its events in exactly the order a one-at-a-time loop would, and the parallel
//! phase does the bulk of the work when most traffic is predicted.
//!
//! Memory, not arithmetic, sets the pace: each request's first touch of a customer misses the
//! cache (its record, its journal entry, its output slot). Both phases prefetch those lines
//! [`AHEAD`] requests in advance so the misses overlap (the `allocate_batch` bench measured the
//! batch path at 71 ns per request before prefetching and 43-51 after, on 1M customers); the
//! buffers are reused from batch to batch.

use rayon::prelude::*;

use crate::kernel::{
    Decision, Local, Outcome, Overflow, advance, credit_overflow, decide_local, decide_pool,
    refill_bucket,
};
use crate::layout::{Bucket, Globals, StatsRaw};
use crate::store::journal_bucket;

/// Slots per shard (the default; see [`tuning`]).
pub const SHARD_SLOTS: usize = 4096;
/// Marker for a request whose id resolved to no customer.
pub const NO_SLOT: u32 = u32::MAX;

/// Process-wide knobs of the batch path, for tests and benchmarks that need the parallel
/// algorithm on small inputs. Outcomes never depend on them (I5); only speed does.
pub mod tuning {
    use std::sync::atomic::{AtomicUsize, Ordering};

    static PARALLEL_MIN: AtomicUsize = AtomicUsize::new(8192);
    static SHARD_SLOTS: AtomicUsize = AtomicUsize::new(super::SHARD_SLOTS);

    /// Batches shorter than `parallel_min` run sequentially; shards hold `shard_slots` slots
    /// (rounded to a power of two in `64..=4096`).
    pub fn set(parallel_min: usize, shard_slots: usize) {
        PARALLEL_MIN.store(parallel_min, Ordering::Relaxed);
        let s = shard_slots
            .clamp(64, super::SHARD_SLOTS)
            .next_power_of_two();
        SHARD_SLOTS.store(s.min(super::SHARD_SLOTS), Ordering::Relaxed);
    }

    /// Back to the defaults.
    pub fn reset() {
        set(8192, super::SHARD_SLOTS);
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
    /// Shadow overflow returned on first touch, in batch order.
    credits: Vec<Overflow>,
    stats: StatsRaw,
}

/// Buffers a batch reuses from the previous one (no page faults, no allocation per batch).
#[derive(Default)]
pub(crate) struct Scratch {
    reqs: Vec<Req>,
    marks: Vec<u8>,
    later: Vec<u32>,
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
                    prefetch(&jn[l]);
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
                journal_bucket(b, &mut jn[local], seq);
                let over = refill_bucket(b, now, full_at);
                let mut mark = 0;
                if over != Overflow::default() {
                    out.credits.push(over);
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
            out
        })
        .collect();

    // Phase 3: the pool's events in batch order: one pass over the marks, each shard's credits
    // taken in order (they were recorded in batch order).
    let mut cursor = vec![0usize; shard_outs.len()];
    for so in &shard_outs {
        add_stats(&mut g.stats, &so.stats);
    }
    let later = &mut scratch.later;
    later.clear();
    later.extend(
        marks
            .iter()
            .enumerate()
            .filter(|(_, m)| **m != 0)
            .map(|(i, _)| i as u32),
    );
    for (k, &ri) in later.iter().enumerate() {
        if let Some(&f) = later.get(k + AHEAD) {
            prefetch(&buckets[slots[f as usize] as usize]);
        }
        let ri = ri as usize;
        let m = marks[ri];
        let slot = slots[ri] as usize;
        if m & CREDIT != 0 {
            // A credit comes first: it happened on this request's refill.
            let s = slot / shard_slots;
            credit_overflow(g, shard_outs[s].credits[cursor[s]]);
            cursor[s] += 1;
        }
        if m & LATER != 0 {
            let b = &mut buckets[slot];
            let d = match decide_local(b, tokens[ri], &mut g.stats) {
                Local::Done(d) => d,
                Local::NeedsPool => decide_pool(b, tokens[ri], g),
            };
            outcomes[ri] = d.outcome;
            retry[ri] = d.retry_after_ns;
        }
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
    reqs.clear();
    reqs.resize(pos, Req::default());
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
