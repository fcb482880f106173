//! Which shard each slot of a batch falls in.
//!
//! A batch's shards are ranges of consecutive slots. By default every shard is one *range* of
//! [`super::tuning`]'s shard size (16384 slots, 2 MiB of records), and the shard of a slot is a
//! shift of it ([`Even`]). The customer-local phase runs one thread per shard, so a range that
//! holds a large share of a batch's requests (hot customers given neighbouring slots, as when
//! they signed up in order) holds the whole phase back: with Zipf(1.1) ids and the hottest
//! customers in the first 16384 slots, 84% of a batch's requests fall in that range.
//!
//! Such a range is *crowded*: more than `1 / (2 * threads)` of the batch's requests (or the
//! target [`super::tuning::set_split`] sets). [`plan`] cuts each crowded range into consecutive
//! pieces of at most `1 / (4 * threads)` of the requests each (a customer with more is a piece of
//! its own), where a sample of every [`SAMPLE`]th request puts them, and numbers every shard in
//! slot order ([`Split`]). The next batches keep the plan while it fits them
//! ([`Plan::still_fits`]), so it is mostly made once. The store's log heads column has one head per
//! [`crate::layout::MIN_SHARD_SLOTS`] slots, and a shard needs a head of its own, so a range of
//! `n` slots is cut into at most `n / 64` pieces, rounded up (a short last range has a head for
//! its last part-block too), and at most 256 (the piece index is a byte); the target is raised
//! until it is.
//!
//! Nothing else changes: each shard is still decided in batch order by one thread, with its own
//! records, journal log and lists, so outcomes never depend on the plan (I5), and recovery reads
//! each shard's range from its log head.

use rayon::prelude::*;

use crate::layout::MIN_SHARD_SLOTS;

/// Requests a map with [`ShardOf::INDIRECT`] works out at a time before using the results.
pub(super) const BLOCK: usize = 64;

/// The shard of a slot, and the slot's place within its range.
pub(super) trait ShardOf: Copy + Send + Sync {
    /// Whether the map reads tables (so a loop that feeds its result into a write it depends
    /// on works it out for a block of requests first).
    const INDIRECT: bool;

    /// `(shard, slot within its range)` of a slot below the store's capacity. (Within the
    /// range, not the shard: a piece of a cut range starts at an offset within it, which the
    /// customer-local phase takes off.)
    fn of(self, slot: usize) -> (usize, usize);
}

/// Every range a shard of its own: the shard is the slot shifted.
#[derive(Clone, Copy)]
pub(super) struct Even {
    pub(super) shift: u32,
}

impl ShardOf for Even {
    const INDIRECT: bool = false;

    #[inline(always)]
    fn of(self, slot: usize) -> (usize, usize) {
        (slot >> self.shift, slot & ((1 << self.shift) - 1))
    }
}

/// Crowded ranges cut into pieces ([`Plan`]): the shard of a slot is its range's first shard
/// plus the slot's piece within the range, from a byte per slot of each cut range (an uncut
/// range reads a block of zeros), so the map is two loads without a branch.
#[derive(Clone, Copy)]
pub(super) struct Split<'a> {
    shift: u32,
    /// Per range: its first shard, and where its slots' pieces start in `piece`.
    ranges: &'a [[u32; 2]],
    /// The zero block, then per cut range a byte per slot: the slot's piece within the range.
    piece: &'a [u8],
}

impl ShardOf for Split<'_> {
    const INDIRECT: bool = true;

    #[inline(always)]
    fn of(self, slot: usize) -> (usize, usize) {
        let local = slot & ((1 << self.shift) - 1);
        let [first, at] = self.ranges[slot >> self.shift];
        (
            first as usize + self.piece[at as usize + local] as usize,
            local,
        )
    }
}

/// The batch's shards, reused from batch to batch.
#[derive(Default)]
pub(super) struct Plan {
    /// `bounds[s]..bounds[s + 1]` are shard `s`'s slots (`nshards + 1` entries in use).
    pub(super) bounds: Vec<u32>,
    /// Per range, when crowded ranges were cut (empty otherwise): its first shard, and where
    /// its slots' pieces start in `piece` (0, the zero block, for an uncut range).
    ranges: Vec<[u32; 2]>,
    piece: Vec<u8>,
    /// What the plan was made for: the capacity, the range's shift, the split target, and per
    /// cut range the most requests a piece was to hold.
    made_for: (usize, u32, usize),
    piece_target: Vec<usize>,
}

impl Plan {
    /// Shards in the plan.
    pub(super) fn shards(&self) -> usize {
        self.bounds.len() - 1
    }

    /// Whether crowded ranges were cut.
    pub(super) fn split(&self) -> bool {
        !self.ranges.is_empty()
    }

    /// The plan's map from slots to shards, when it cut ranges.
    pub(super) fn map(&self, shift: u32) -> Option<Split<'_>> {
        self.split().then_some(Split {
            shift,
            ranges: &self.ranges,
            piece: &self.piece,
        })
    }

    /// Whether the plan cuts ranges of a store of `capacity` slots by `shift` for `target`, so
    /// that a batch may try it ([`Plan::still_fits`]).
    pub(super) fn cuts_for(&self, capacity: usize, shift: u32, target: usize) -> bool {
        self.split() && self.made_for == (capacity, shift, target)
    }

    /// Whether the plan still fits a batch with these requests per shard under it (`table`, as
    /// [`histogram`] left it): no uncut range crowded, every cut range still more than half as
    /// crowded as a range is to be cut, and no piece of more than one slot holding more than
    /// twice its target. (Traffic moves slowly, so a plan mostly serves many batches, and
    /// planning, a count by range and a sample, is skipped.)
    pub(super) fn still_fits(&self, table: &[u32]) -> bool {
        let nshards = self.shards();
        let per_shard = totals(table, nshards);
        let (capacity, shift, target) = self.made_for;
        let Some((crowded_above, _)) = thresholds(per_shard.iter().sum(), target) else {
            return false;
        };
        let mut cut = self.piece_target.iter();
        for (r, &[first, at]) in self.ranges.iter().enumerate() {
            let first = first as usize;
            let end = self.ranges.get(r + 1).map_or(nshards, |x| x[0] as usize);
            let total: usize = per_shard[first..end].iter().sum();
            if at == 0 {
                if crowded(total, crowded_above, range_len(capacity, shift, r)) {
                    return false;
                }
                continue;
            }
            let piece = *cut.next().expect("a target per cut range");
            if total <= crowded_above / 2
                || (first..end)
                    .any(|s| per_shard[s] > 2 * piece && self.bounds[s + 1] - self.bounds[s] > 1)
            {
                return false;
            }
        }
        true
    }

    /// One shard per range of `1 << shift` slots.
    fn even(&mut self, capacity: usize, shift: u32) {
        self.ranges.clear();
        self.bounds.clear();
        self.bounds
            .extend((0..capacity.div_ceil(1 << shift)).map(|r| (r << shift) as u32));
        self.bounds.push(capacity as u32);
    }
}

/// Counts chunk `c`'s requests of each shard into `table[c * nshards + s]` (in parallel over
/// chunks of `chunk` requests); slots at or past `capacity` are in no shard.
pub(super) fn histogram<M: ShardOf>(
    slots: &[u32],
    capacity: usize,
    chunk: usize,
    map: M,
    table: &mut [u32],
) {
    let nshards = table.len() / slots.len().div_ceil(chunk);
    table
        .par_chunks_mut(nshards)
        .zip(slots.par_chunks(chunk))
        .for_each(|(h, c)| {
            h.fill(0);
            if !M::INDIRECT {
                for &s in c {
                    if (s as usize) < capacity {
                        h[map.of(s as usize).0] += 1;
                    }
                }
                return;
            }
            for_each_blocked(c, capacity, map, |_, place| {
                if let Some((shard, _)) = place {
                    h[shard as usize] += 1;
                }
            });
        });
}

/// Calls `f(i, place)` for each slot `i` of `slots` in order, with its `(shard, slot within its
/// range)`, or `None` for a slot at or past `capacity`: a map that reads tables
/// ([`ShardOf::INDIRECT`]) is worked out for a block of [`BLOCK`] slots before `f` runs on any,
/// as `f`'s write may depend on the one before it, and with the shard known only after the map's
/// loads, every write waited on them (the crowded CLI bench's scatter took 3.3 ms against 2.7).
#[inline(always)]
pub(super) fn for_each_blocked<M: ShardOf>(
    slots: &[u32],
    capacity: usize,
    map: M,
    mut f: impl FnMut(usize, Option<(u32, u32)>),
) {
    debug_assert!(M::INDIRECT);
    let mut place = [None; BLOCK];
    for (b, block) in slots.chunks(BLOCK).enumerate() {
        for (p, &s) in place.iter_mut().zip(block) {
            *p = ((s as usize) < capacity).then(|| {
                let (shard, local) = map.of(s as usize);
                (shard as u32, local as u32)
            });
        }
        for (j, &p) in place[..block.len()].iter().enumerate() {
            f(b * BLOCK + j, p);
        }
    }
}

/// Plans the batch's shards from `table`, chunk `c`'s requests per range at
/// `c * nranges + r` ([`histogram`] with [`Even`]): when ranges are crowded, cuts them
/// ([`Plan::split`], where to cut from a sample of the batch), else one shard per range. `target`: [`super::tuning::set_split`]'s (0: from the number of
/// threads).
pub(super) fn plan(
    slots: &[u32],
    capacity: usize,
    chunk: usize,
    shift: u32,
    table: &[u32],
    target: usize,
    plan: &mut Plan,
) {
    plan.even(capacity, shift);
    let nranges = plan.shards();
    let nchunks = slots.len().div_ceil(chunk);
    let per_range = totals(&table[..nchunks * nranges], nranges);
    let known: usize = per_range.iter().sum();
    let Some((crowded_above, piece)) = thresholds(known, target) else {
        return;
    };
    let size = 1usize << shift;
    let len = |r: usize| range_len(capacity, shift, r);
    let crowded: Vec<usize> = (0..nranges)
        .filter(|&r| crowded(per_range[r], crowded_above, len(r)))
        .collect();
    // (the gather keeps a request's shard in 16 bits: a store of more than about 2^30 slots is
    // not cut)
    if crowded.is_empty() || nranges + crowded.len() * 255 > 1 << 16 {
        return;
    }
    let ncut = crowded.len();
    // requests per slot of the crowded ranges, from a sample of the batch
    let counts = sample_slots(slots, capacity, shift, &crowded, nranges);
    let piece = piece.div_ceil(SAMPLE);
    // the cut: pieces in slot order, each range's from its first shard
    plan.piece_target.clear();
    plan.ranges.clear();
    plan.piece.clear();
    plan.piece.resize((1 + ncut) * size, 0);
    plan.bounds.clear();
    for r in 0..nranges {
        let first = r << shift;
        let at = match crowded.binary_search(&r) {
            Ok(k) => (1 + k) * size,
            Err(_) => {
                plan.ranges.push([plan.bounds.len() as u32, 0]);
                plan.bounds.push(first as u32);
                continue;
            }
        };
        plan.ranges.push([plan.bounds.len() as u32, at as u32]);
        let (cuts, target) = cut(
            &counts[at - size..][..len(r)],
            piece,
            len(r).div_ceil(MIN_SHARD_SLOTS as usize),
        );
        plan.piece_target.push(target * SAMPLE);
        for (j, &c) in cuts.iter().enumerate() {
            let end = cuts.get(j + 1).copied().unwrap_or(len(r));
            plan.piece[at + c..at + end].fill(j as u8);
            plan.bounds.push((first + c) as u32);
        }
    }
    plan.bounds.push(capacity as u32);
    plan.made_for = (capacity, shift, target);
    // Every slot's shard holds it: the customer-local phase reaches records by a request's slot
    // within its range without a bounds check, so this is checked, not assumed.
    // (An uncut range's shard is the range: its two bounds; a cut one's, slot by slot.)
    let map = plan.map(shift).expect("a cut plan");
    for (r, &[first, at]) in plan.ranges.iter().enumerate() {
        let range = r << shift..(r << shift) + len(r);
        let s = first as usize;
        if at == 0 {
            let b = (plan.bounds[s] as usize, plan.bounds[s + 1] as usize);
            assert!(
                b == (range.start, range.end),
                "range {r} is shard {s}, {b:?}"
            );
            continue;
        }
        for slot in range {
            let (s, local) = map.of(slot);
            assert!(
                plan.bounds[s] as usize <= slot
                    && slot < plan.bounds[s + 1] as usize
                    && local == slot & (size - 1),
                "the cut plan puts slot {slot} in shard {s} ({}..{})",
                plan.bounds[s],
                plan.bounds[s + 1]
            );
        }
    }
}

/// Requests per shard over the chunks of `table` (`nshards` per chunk).
fn totals(table: &[u32], nshards: usize) -> Vec<usize> {
    let mut t = vec![0usize; nshards];
    for h in table.chunks(nshards) {
        for (t, &n) in t.iter_mut().zip(h) {
            *t += n as usize;
        }
    }
    t
}

/// Slots in range `r` (the last may be short).
fn range_len(capacity: usize, shift: u32, r: usize) -> usize {
    (1usize << shift).min(capacity - (r << shift))
}

/// Whether a range of `len` slots with `requests` of the batch's is to be cut (a range of one
/// log head cannot be).
fn crowded(requests: usize, crowded_above: usize, len: usize) -> bool {
    requests > crowded_above && len as u64 > MIN_SHARD_SLOTS
}

/// A batch of `known` requests: how many a range may hold before it is cut, and how many a piece
/// is to hold; `None` when no range is cut (one thread, and no target set).
fn thresholds(known: usize, target: usize) -> Option<(usize, usize)> {
    let threads = rayon::current_num_threads();
    match target {
        0 if threads < 2 => None,
        0 => Some((known / (2 * threads), known / (4 * threads))),
        t => Some((t, t)),
    }
}

/// One request in this many is sampled to cut crowded ranges.
const SAMPLE: usize = 16;

/// Requests per slot of each crowded range (`crowded[k]`'s at `k << shift`) among every
/// [`SAMPLE`]th request of the batch.
fn sample_slots(
    slots: &[u32],
    capacity: usize,
    shift: u32,
    crowded: &[usize],
    nranges: usize,
) -> Vec<u32> {
    let mut which = vec![u32::MAX; nranges];
    for (k, &r) in crowded.iter().enumerate() {
        which[r] = k as u32;
    }
    let mut n = vec![0u32; crowded.len() << shift];
    for &s in slots.iter().step_by(SAMPLE) {
        let s = s as usize;
        if s < capacity {
            let k = which[s >> shift];
            if k != u32::MAX {
                n[((k as usize) << shift) | (s & ((1 << shift) - 1))] += 1;
            }
        }
    }
    n
}

/// Where to cut a range with these requests per slot: the first slot of each piece (the first
/// is 0). A piece ends before the slot that would take it past `piece` requests (a slot with more
/// is a piece of its own); at most `max_pieces` pieces (and 256), `piece` doubled until they fit.
/// Returns the cuts and the target they kept to.
fn cut(counts: &[u32], piece: usize, max_pieces: usize) -> (Vec<usize>, usize) {
    let max_pieces = max_pieces.min(256);
    let mut piece = piece.max(1);
    loop {
        let mut cuts = vec![0];
        let mut held = 0usize;
        for (i, &n) in counts.iter().enumerate() {
            if held > 0 && held + n as usize > piece {
                cuts.push(i);
                held = 0;
            }
            held += n as usize;
        }
        if cuts.len() <= max_pieces {
            return (cuts, piece);
        }
        piece *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_hold_at_most_the_target_unless_one_slot_has_more() {
        let counts = [5, 0, 0, 3, 3, 9, 1, 1, 1, 0];
        assert_eq!(cut(&counts, 6, 10), (vec![0, 3, 5, 6], 6));
        // too many pieces for the heads: the target doubles (6 -> 12)
        assert_eq!(cut(&counts, 6, 3), (vec![0, 5], 12));
        assert_eq!(cut(&counts, 6, 1), (vec![0], 24));
        assert_eq!(cut(&[0; 4], 1, 4), (vec![0], 1));
    }

    #[test]
    fn a_crowded_range_is_cut_and_every_slot_maps_into_its_shard() {
        // 4 ranges of 256 slots (4 log heads each), the last one short; range 1 crowded
        let (capacity, shift, chunk) = (900usize, 8u32, 100usize);
        let mut slots: Vec<u32> = (0..1_600u32).map(|i| 256 + (i % 7) * 30).collect();
        slots.extend((0..200u32).map(|i| (i * 37) % 900));
        slots.push(5_000); // past the capacity: in no shard
        let nchunks = slots.len().div_ceil(chunk);
        let mut table = vec![0u32; nchunks * 4];
        histogram(&slots, capacity, chunk, Even { shift }, &mut table);
        let mut p = Plan::default();
        plan(&slots, capacity, chunk, shift, &table, 300, &mut p);
        assert!(p.split() && p.cuts_for(capacity, shift, 300));
        assert!(!p.cuts_for(capacity, shift, 301) && !p.cuts_for(capacity + 1, shift, 300));
        // range 1 holds 1600 + its share of the rest in 7 hot slots: at most 4 pieces (its
        // heads), at least 2
        assert!((3 + 2..=3 + 4).contains(&p.shards()), "{:?}", p.bounds);
        assert_eq!(p.bounds[..2], [0, 256]);
        assert_eq!(p.bounds[p.shards() - 1..], [768, 900]);
        let m = p.map(shift).unwrap();
        for slot in 0..capacity {
            let (s, local) = m.of(slot);
            assert_eq!(local, slot % 256, "slot {slot}");
            assert!(
                (p.bounds[s]..p.bounds[s + 1]).contains(&(slot as u32)),
                "slot {slot} not in shard {s}"
            );
        }
        // the map's histogram holds every known request, and the plan fits the batch it was
        // made from
        let mut t2 = vec![0u32; nchunks * p.shards()];
        histogram(&slots, capacity, chunk, m, &mut t2);
        assert_eq!(t2.iter().sum::<u32>(), 1_800);
        assert!(p.still_fits(&t2));
        // a batch whose crowd moved to range 2 does not fit it
        let moved: Vec<u32> = slots
            .iter()
            .map(|&s| if s < 900 { (s + 256) % 900 } else { s })
            .collect();
        histogram(&moved, capacity, chunk, m, &mut t2);
        assert!(!p.still_fits(&t2));
        // no target: one shard per range
        plan(&slots, capacity, chunk, shift, &table, usize::MAX, &mut p);
        assert!(!p.split() && p.shards() == 4 && p.map(shift).is_none());
    }
}
