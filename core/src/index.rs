//! The id index: open addressing with linear probing over a power-of-two table in the file.
//!
//! Writes are ordered so that a process killed between any two stores leaves a table that is
//! still readable (an insert writes the slot before the id that publishes it); after a crash during
//! customer administration the store rebuilds the table from the records anyway.

use crate::layout::{INDEX_EMPTY, INDEX_TOMBSTONE, IndexEntry};
use std::sync::atomic::{Ordering, compiler_fence};

/// SplitMix64 finaliser: a cheap, well-mixed hash for integer keys.
#[inline(always)]
pub(crate) fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Whether `id` may name a customer (two values are reserved as index markers).
#[inline]
pub fn valid_id(id: u64) -> bool {
    id < INDEX_TOMBSTONE
}

/// Where the search for `id` begins: its home entry.
#[inline(always)]
pub(crate) fn home(table: &[IndexEntry], id: u64) -> usize {
    (mix(id) & (table.len() as u64 - 1)) as usize
}

/// The slot of `id`, if present.
#[inline]
pub(crate) fn find(table: &[IndexEntry], id: u64) -> Option<u64> {
    find_from(table, id, home(table, id))
}

/// [`find`], from `id`'s home entry `at` (worked out beforehand by the caller, see
/// `Engine::resolve`). Gives up after one pass over a table with no empty entry (only a damaged
/// one has none).
#[inline(always)]
pub(crate) fn find_from(table: &[IndexEntry], id: u64, at: usize) -> Option<u64> {
    let mask = table.len() - 1;
    let mut i = at;
    for _ in 0..table.len() {
        let e = &table[i];
        if e.id == id {
            return Some(e.slot);
        }
        if e.id == INDEX_EMPTY {
            return None;
        }
        i = (i + 1) & mask;
    }
    None
}

/// Inserts `id` (which must be absent). Returns whether a tombstone was reused.
pub(crate) fn insert(table: &mut [IndexEntry], id: u64, slot: u64) -> bool {
    let mask = table.len() as u64 - 1;
    let mut i = mix(id) & mask;
    loop {
        let e = &mut table[i as usize];
        if e.id == INDEX_EMPTY || e.id == INDEX_TOMBSTONE {
            let reused = e.id == INDEX_TOMBSTONE;
            e.slot = slot;
            compiler_fence(Ordering::SeqCst);
            e.id = id;
            return reused;
        }
        i = (i + 1) & mask;
    }
}

/// Marks `id` removed. Returns whether it was present.
pub(crate) fn remove(table: &mut [IndexEntry], id: u64) -> bool {
    let mask = table.len() as u64 - 1;
    let mut i = mix(id) & mask;
    loop {
        let e = &mut table[i as usize];
        if e.id == id {
            e.id = INDEX_TOMBSTONE;
            return true;
        }
        if e.id == INDEX_EMPTY {
            return false;
        }
        i = (i + 1) & mask;
    }
}

/// Empties the table and inserts every `(id, slot)`.
pub(crate) fn rebuild(table: &mut [IndexEntry], entries: impl Iterator<Item = (u64, u64)>) {
    table.fill(IndexEntry {
        id: INDEX_EMPTY,
        slot: 0,
    });
    for (id, slot) in entries {
        insert(table, id, slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_with_no_empty_entry_ends_the_search() {
        // only a damaged index is full: the search must still end, whatever the id's home
        let t: Vec<IndexEntry> = (0..8u64).map(|i| IndexEntry { id: i, slot: i }).collect();
        for id in 100..120u64 {
            assert_eq!(find(&t, id), None);
        }
        for id in 0..8u64 {
            assert_eq!(find(&t, id), Some(id));
        }
    }

    #[test]
    fn insert_find_remove_reuse() {
        let mut t = vec![
            IndexEntry {
                id: INDEX_EMPTY,
                slot: 0
            };
            16
        ];
        for id in 0..10u64 {
            assert!(!insert(&mut t, id * 7919, id));
        }
        for id in 0..10u64 {
            assert_eq!(find(&t, id * 7919), Some(id));
        }
        assert!(remove(&mut t, 3 * 7919));
        assert!(!remove(&mut t, 3 * 7919));
        assert_eq!(find(&t, 3 * 7919), None);
        // everything else still found across the tombstone
        for id in (0..10u64).filter(|&i| i != 3) {
            assert_eq!(find(&t, id * 7919), Some(id));
        }
        assert_eq!(find(&t, 12345), None);
        // from a home worked out beforehand, the same answers
        for id in (0..10u64).filter(|&i| i != 3) {
            assert_eq!(find_from(&t, id * 7919, home(&t, id * 7919)), Some(id));
        }
        assert!(valid_id(0) && !valid_id(INDEX_EMPTY) && !valid_id(INDEX_TOMBSTONE));
    }
}
