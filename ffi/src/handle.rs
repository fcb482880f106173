//! The engine handle and its calls.
//!
//! An `sb_engine` owns one open store behind a read-write lock: queries take the read lock and
//! run concurrently; changes take the write lock and run one at a time. Each function's comment
//! says which it takes.

use std::ffi::c_char;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use engine::{
    CreateOptions, Engine, EngineConfig, GrantPath, Keys, Outcome, Predictor, Rate, Reservation,
    ReservationPolicy,
};

use crate::boundary::{
    Fail, FfiResult, boundary, boundary_void, check_aligned, disjoint, sb_result, span, try_mut,
    try_out, try_out_slice, try_path, try_ref, try_slice, try_slice_mut, try_str,
};
use crate::types::*;

/// An open store: one engine. Opaque; create with `sb_engine_create`, `sb_engine_open` or
/// `sb_engine_open_read_only`, release with `sb_engine_close` or `sb_engine_free`.
pub struct sb_engine {
    _private: [u8; 0],
}

/// What an `sb_engine` pointer points to.
pub(crate) struct Handle {
    pub(crate) engine: RwLock<Engine>,
}

fn into_raw(e: Engine) -> *mut sb_engine {
    Box::into_raw(Box::new(Handle {
        engine: RwLock::new(e),
    }))
    .cast()
}

/// # Safety
/// `p` is NULL or a live handle from this library.
unsafe fn handle<'a>(p: *const sb_engine) -> FfiResult<&'a Handle> {
    // SAFETY: a live handle points to a `Handle` (see `into_raw`); NULL is refused.
    unsafe { try_ref(p.cast::<Handle>(), "engine") }
}

fn poisoned() -> Fail {
    Fail::new(
        sb_result::LockPoisoned,
        "an earlier call panicked while changing this engine: free it and open the store again",
    )
}

pub(crate) fn read(h: &Handle) -> FfiResult<RwLockReadGuard<'_, Engine>> {
    h.engine.read().map_err(|_| poisoned())
}

pub(crate) fn write(h: &Handle) -> FfiResult<RwLockWriteGuard<'_, Engine>> {
    h.engine.write().map_err(|_| poisoned())
}

// ---- configuration -------------------------------------------------------------------------

/// Fills `*out` with the default configuration around a pool of `pool_burst` tokens refilled at
/// `pool_rate_micros` micro-tokens per second (80% reservable, 60 s ticks). The values are
/// checked when a store is created.
///
/// Thread safety: any thread.
///
/// # Safety
/// `out` is NULL or valid for writing an `sb_config`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_config_default(
    pool_burst: u64,
    pool_rate_micros: u64,
    out: *mut sb_config,
) -> sb_result {
    boundary("sb_config_default", || {
        // SAFETY: the caller's contract (# Safety).
        let out = unsafe { try_out(out, "out") }?;
        let c = EngineConfig::new(pool_burst, Rate::from_micros_per_sec(pool_rate_micros));
        out.write(c.into());
        Ok(())
    })
}

/// Fills `*out` with the default creation options: `capacity` customer slots, the default
/// configuration (as `sb_config_default`), created at time 0, the default forecaster columns.
///
/// Thread safety: any thread.
///
/// # Safety
/// `out` is NULL or valid for writing an `sb_create_options`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_create_options_default(
    capacity: u64,
    pool_burst: u64,
    pool_rate_micros: u64,
    out: *mut sb_create_options,
) -> sb_result {
    boundary("sb_create_options_default", || {
        // SAFETY: the caller's contract (# Safety).
        let out = unsafe { try_out(out, "out") }?;
        let cfg = EngineConfig::new(pool_burst, Rate::from_micros_per_sec(pool_rate_micros));
        let o = CreateOptions::new(capacity, cfg);
        out.write(sb_create_options {
            capacity: o.capacity,
            now_ns: o.now_ns,
            config: cfg.into(),
            state_dim: o.state_dim,
            forecast_dim: o.forecast_dim,
            scenario_dim: o.scenario_dim,
            scale_dim: o.scale_dim,
        });
        Ok(())
    })
}

// ---- life cycle ----------------------------------------------------------------------------

/// Creates a new store file at `path` (which must not exist) and opens it for writing. On
/// success `*out` is a new handle that the caller owns and releases with `sb_engine_close` or
/// `sb_engine_free`.
///
/// Errors: `SB_RESULT_INVALID_ARGUMENT` for bad options, `SB_RESULT_ALREADY_EXISTS`,
/// `SB_RESULT_IO`.
///
/// Thread safety: any thread.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `opts` is NULL or points to an
/// `sb_create_options`; `out` is NULL or valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_create(
    path: *const c_char,
    opts: *const sb_create_options,
    out: *mut *mut sb_engine,
) -> sb_result {
    boundary("sb_engine_create", || {
        // SAFETY: the caller's contract (# Safety).
        let (path, o, out) = unsafe {
            (
                try_path(path, "path")?,
                try_ref(opts, "opts")?,
                try_out(out, "out")?,
            )
        };
        let opts = CreateOptions {
            capacity: o.capacity,
            config: o.config.to_engine()?,
            now_ns: o.now_ns,
            state_dim: o.state_dim,
            forecast_dim: o.forecast_dim,
            scenario_dim: o.scenario_dim,
            scale_dim: o.scale_dim,
        };
        let e = Engine::create(path, opts)?;
        out.write(into_raw(e));
        Ok(())
    })
}

/// Opens an existing store for writing (taking its lock: one writer process at a time), rolling
/// back a transaction a killed process left unfinished. On success `*out` is a new handle the
/// caller owns.
///
/// Errors: `SB_RESULT_NOT_FOUND`, `SB_RESULT_LOCKED`, `SB_RESULT_BAD_FILE` (the file is left
/// untouched), `SB_RESULT_IO`.
///
/// Thread safety: any thread.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_open(
    path: *const c_char,
    out: *mut *mut sb_engine,
) -> sb_result {
    boundary("sb_engine_open", || {
        // SAFETY: the caller's contract (# Safety).
        let (path, out) = unsafe { (try_path(path, "path")?, try_out(out, "out")?) };
        out.write(into_raw(Engine::open(path)?));
        Ok(())
    })
}

/// Opens an existing store read-only, without its lock: queries work, changes return
/// `SB_RESULT_READ_ONLY`. On success `*out` is a new handle the caller owns.
///
/// Errors: as `sb_engine_open`, less `SB_RESULT_LOCKED`.
///
/// Thread safety: any thread.
///
/// # Safety
/// As `sb_engine_open`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_open_read_only(
    path: *const c_char,
    out: *mut *mut sb_engine,
) -> sb_result {
    boundary("sb_engine_open_read_only", || {
        // SAFETY: the caller's contract (# Safety).
        let (path, out) = unsafe { (try_path(path, "path")?, try_out(out, "out")?) };
        out.write(into_raw(Engine::open_read_only(path)?));
        Ok(())
    })
}

/// Releases a handle without flushing (the operating system still writes the mapped pages back;
/// call `sb_engine_flush` or use `sb_engine_close` to wait for the disk). NULL is a no-op.
///
/// Thread safety: no other call may use this handle during or after this one.
///
/// # Safety
/// `engine` is NULL or a live handle from this library, not used again afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_free(engine: *mut sb_engine) {
    boundary_void("sb_engine_free", || {
        check_aligned(engine.cast::<Handle>(), "engine")?;
        if !engine.is_null() {
            // SAFETY: a live handle came from `Box::into_raw` in `into_raw` and is given back
            // once (the caller's contract).
            drop(unsafe { Box::from_raw(engine.cast::<Handle>()) });
        }
        Ok(())
    })
}

/// Flushes the store to disk, then releases the handle, whatever the flush returned. NULL is a
/// no-op that returns `SB_RESULT_OK`.
///
/// Errors: `SB_RESULT_IO` (the handle is released anyway), `SB_RESULT_LOCK_POISONED` (released
/// without flushing).
///
/// Thread safety: no other call may use this handle during or after this one.
///
/// # Safety
/// As `sb_engine_free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_close(engine: *mut sb_engine) -> sb_result {
    boundary("sb_engine_close", || {
        check_aligned(engine.cast::<Handle>(), "engine")?;
        if engine.is_null() {
            return Ok(());
        }
        // SAFETY: as in `sb_engine_free`.
        let h = unsafe { Box::from_raw(engine.cast::<Handle>()) };
        match h.engine.into_inner() {
            Ok(e) => Ok(e.flush()?),
            Err(_) => Err(poisoned()),
        }
    })
}

/// Writes everything to disk and waits for it.
///
/// Errors: `SB_RESULT_IO`.
///
/// Thread safety: read lock (runs alongside queries; waits for changes).
///
/// # Safety
/// `engine` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_flush(engine: *const sb_engine) -> sb_result {
    boundary("sb_engine_flush", || {
        // SAFETY: the caller's contract (# Safety).
        let h = unsafe { handle(engine) }?;
        Ok(read(h)?.flush()?)
    })
}

/// Moves the store to a new file with room for `new_capacity` customers (slots are kept),
/// replacing the old file atomically.
///
/// Errors: `SB_RESULT_INVALID_ARGUMENT` when `new_capacity` is not larger, `SB_RESULT_READ_ONLY`,
/// `SB_RESULT_IO`.
///
/// Thread safety: write lock (serialized with every other call on this engine).
///
/// # Safety
/// `engine` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_grow(engine: *mut sb_engine, new_capacity: u64) -> sb_result {
    boundary("sb_engine_grow", || {
        // SAFETY: the caller's contract (# Safety).
        let h = unsafe { handle(engine) }?;
        Ok(write(h)?.grow(new_capacity)?)
    })
}

/// Writes the store's configuration to `*out`.
///
/// Thread safety: read lock.
///
/// # Safety
/// `engine` is NULL or a live handle; `out` is NULL or valid for writing an `sb_config`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_config(
    engine: *const sb_engine,
    out: *mut sb_config,
) -> sb_result {
    boundary("sb_engine_config", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, out) = unsafe { (handle(engine)?, try_out(out, "out")?) };
        out.write(read(h)?.config().into());
        Ok(())
    })
}

/// Writes the sizes of the store's columns to `*out`.
///
/// Thread safety: read lock.
///
/// # Safety
/// `engine` is NULL or a live handle; `out` is NULL or valid for writing an `sb_dims`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_dims(engine: *const sb_engine, out: *mut sb_dims) -> sb_result {
    boundary("sb_engine_dims", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, out) = unsafe { (handle(engine)?, try_out(out, "out")?) };
        let d = read(h)?.dims();
        out.write(sb_dims {
            capacity: d.capacity,
            state_dim: d.state_dim,
            forecast_dim: d.forecast_dim,
            scenario_dim: d.scenario_dim,
            scale_dim: d.scale_dim,
        });
        Ok(())
    })
}

// ---- customers -----------------------------------------------------------------------------

/// Adds customer `id` with a full standard bucket and no reservation; writes its slot to
/// `*slot_out`.
///
/// Errors: `SB_RESULT_INVALID_ARGUMENT` (a reserved id, `UINT64_MAX` or `UINT64_MAX - 1`, or a
/// bad contract), `SB_RESULT_DUPLICATE_CUSTOMER`, `SB_RESULT_STORE_FULL`, `SB_RESULT_READ_ONLY`.
///
/// Thread safety: write lock.
///
/// # Safety
/// `engine` is NULL or a live handle; `contract` is NULL or points to an `sb_contract`;
/// `slot_out` is NULL or valid for writing a `uint32_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_add_customer(
    engine: *mut sb_engine,
    id: u64,
    contract: *const sb_contract,
    now_ns: u64,
    slot_out: *mut u32,
) -> sb_result {
    boundary("sb_engine_add_customer", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, c, out) = unsafe {
            (
                handle(engine)?,
                try_ref(contract, "contract")?,
                try_out(slot_out, "slot_out")?,
            )
        };
        let slot = write(h)?.add_customer(id, c.to_engine(), now_ns)?;
        out.write(slot);
        Ok(())
    })
}

/// Adds `ids_len` customers in one transaction (all or none): `ids[i]` with `contracts[i]`.
/// Writes their slots to `slots_out`. The three lengths must be equal; NULL is accepted for an
/// array of length 0.
///
/// Errors: `SB_RESULT_LENGTH_MISMATCH`, and as `sb_engine_add_customer` for the first customer
/// that fails (nothing is added), including an id listed twice.
///
/// Thread safety: write lock.
///
/// # Safety
/// Each array is NULL or valid for its length (`slots_out` for writing) and does not overlap
/// `slots_out`; `engine` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_add_customers(
    engine: *mut sb_engine,
    ids: *const u64,
    ids_len: usize,
    contracts: *const sb_contract,
    contracts_len: usize,
    now_ns: u64,
    slots_out: *mut u32,
    slots_len: usize,
) -> sb_result {
    boundary("sb_engine_add_customers", || {
        disjoint(
            &[span(slots_out, slots_len, "slots_out")],
            &[
                span(ids, ids_len, "ids"),
                span(contracts, contracts_len, "contracts"),
            ],
        )?;
        // SAFETY: the caller's contract (# Safety); the output overlaps no input (checked).
        let (h, ids, contracts, slots) = unsafe {
            (
                handle(engine)?,
                try_slice(ids, ids_len, "ids")?,
                try_slice(contracts, contracts_len, "contracts")?,
                try_slice_mut(slots_out, slots_len, "slots_out")?,
            )
        };
        for (what, got) in [("contracts", contracts.len()), ("slots_out", slots.len())] {
            if got != ids.len() {
                return Err(engine::Error::LengthMismatch {
                    what,
                    got,
                    expected: ids.len(),
                }
                .into());
            }
        }
        let list: Vec<_> = ids
            .iter()
            .zip(contracts)
            .map(|(&id, c)| (id, c.to_engine()))
            .collect();
        let got = write(h)?.add_customers(&list, now_ns)?;
        slots.copy_from_slice(&got);
        Ok(())
    })
}

/// Changes customer `id`'s contract, keeping its tokens (capped at the new burst).
///
/// Errors: `SB_RESULT_UNKNOWN_CUSTOMER`, `SB_RESULT_INVALID_ARGUMENT`, `SB_RESULT_READ_ONLY`.
///
/// Thread safety: write lock.
///
/// # Safety
/// `engine` is NULL or a live handle; `contract` is NULL or points to an `sb_contract`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_update_customer(
    engine: *mut sb_engine,
    id: u64,
    contract: *const sb_contract,
    now_ns: u64,
) -> sb_result {
    boundary("sb_engine_update_customer", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, c) = unsafe { (handle(engine)?, try_ref(contract, "contract")?) };
        Ok(write(h)?.update_contract(id, c.to_engine(), now_ns)?)
    })
}

/// Removes customer `id`: its shadow balance goes back to the pool, its reservation is released
/// and its slot is freed.
///
/// Errors: `SB_RESULT_UNKNOWN_CUSTOMER`, `SB_RESULT_READ_ONLY`.
///
/// Thread safety: write lock.
///
/// # Safety
/// `engine` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_remove_customer(
    engine: *mut sb_engine,
    id: u64,
    now_ns: u64,
) -> sb_result {
    boundary("sb_engine_remove_customer", || {
        // SAFETY: the caller's contract (# Safety).
        let h = unsafe { handle(engine) }?;
        Ok(write(h)?.remove_customer(id, now_ns)?)
    })
}

/// Writes customer `id`'s slot to `*slot_out`.
///
/// Errors: `SB_RESULT_UNKNOWN_CUSTOMER`.
///
/// Thread safety: read lock.
///
/// # Safety
/// `engine` is NULL or a live handle; `slot_out` is NULL or valid for writing a `uint32_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_slot_of(
    engine: *const sb_engine,
    id: u64,
    slot_out: *mut u32,
) -> sb_result {
    boundary("sb_engine_slot_of", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, out) = unsafe { (handle(engine)?, try_out(slot_out, "slot_out")?) };
        let slot = read(h)?
            .slot_of(id)
            .ok_or(engine::Error::UnknownCustomer(id))?;
        out.write(slot);
        Ok(())
    })
}

/// Resolves `ids` to slots for `sb_engine_allocate_batch_slots`; an unknown id gives
/// `SB_NO_SLOT` (`UINT32_MAX`). The lengths must be equal. A slot stays valid until its customer
/// is removed.
///
/// Errors: `SB_RESULT_LENGTH_MISMATCH`.
///
/// Thread safety: read lock.
///
/// # Safety
/// `ids` is NULL or valid for `ids_len` reads; `slots_out` NULL or valid for `slots_len`
/// writes, not overlapping `ids`; `engine` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_resolve(
    engine: *const sb_engine,
    ids: *const u64,
    ids_len: usize,
    slots_out: *mut u32,
    slots_len: usize,
) -> sb_result {
    boundary("sb_engine_resolve", || {
        disjoint(
            &[span(slots_out, slots_len, "slots_out")],
            &[span(ids, ids_len, "ids")],
        )?;
        // SAFETY: the caller's contract (# Safety).
        let h = unsafe { handle(engine) }?;
        // Before any slice is made: a wrong `slots_len` is an error, and nothing is written.
        if slots_len != ids_len {
            return Err(engine::Error::LengthMismatch {
                what: "slots_out",
                got: slots_len,
                expected: ids_len,
            }
            .into());
        }
        // SAFETY: the caller's contract (# Safety); no overlap (checked).
        let (ids, slots) = unsafe {
            (
                try_slice(ids, ids_len, "ids")?,
                try_slice_mut(slots_out, slots_len, "slots_out")?,
            )
        };
        read(h)?.resolve(ids, slots)?;
        Ok(())
    })
}

/// The slot `sb_engine_resolve` gives an unknown id.
pub const SB_NO_SLOT: u32 = u32::MAX;

// ---- allocation ----------------------------------------------------------------------------

/// One request for `tokens` tokens by customer `id` at `now_ns`; writes the outcome and
/// retry-after to `*out`. An unknown customer or zero tokens is an outcome
/// (`SB_OUTCOME_UNKNOWN_CUSTOMER`, `SB_OUTCOME_INVALID_INPUT`), not an error.
///
/// Errors: `SB_RESULT_READ_ONLY`.
///
/// Thread safety: write lock.
///
/// # Safety
/// `engine` is NULL or a live handle; `out` is NULL or valid for writing an `sb_decision`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_allocate(
    engine: *mut sb_engine,
    id: u64,
    tokens: u64,
    now_ns: u64,
    out: *mut sb_decision,
) -> sb_result {
    boundary("sb_engine_allocate", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, out) = unsafe { (handle(engine)?, try_out(out, "out")?) };
        let d = write(h)?.allocate(id, tokens, now_ns)?;
        out.write(sb_decision {
            outcome: d.outcome.into(),
            retry_after_ns: d.retry_after_ns,
        });
        Ok(())
    })
}

/// The body of both batch entry points: checks that no output overlaps another array, checks
/// every pointer, then runs the batch. `keys` is the key array, its length and its name in errors;
/// `as_keys` says what its elements are (`Keys::Ids` or `Keys::Slots`).
///
/// # Safety
/// As `sb_engine_allocate_batch`.
#[allow(clippy::too_many_arguments)]
unsafe fn allocate_batch<K>(
    engine: *mut sb_engine,
    (keys, keys_len, keys_name): (*const K, usize, &str),
    as_keys: fn(&[K]) -> Keys<'_>,
    tokens: *const u64,
    tokens_len: usize,
    now_ns: u64,
    outcomes_out: *mut sb_outcome,
    outcomes_len: usize,
    retry_after_ns_out: *mut u64,
    retry_after_len: usize,
) -> FfiResult {
    disjoint(
        &[
            span(outcomes_out, outcomes_len, "outcomes_out"),
            span(retry_after_ns_out, retry_after_len, "retry_after_ns_out"),
        ],
        &[
            span(keys, keys_len, keys_name),
            span(tokens, tokens_len, "tokens"),
        ],
    )?;
    // SAFETY: the caller's contract (# Safety).
    let h = unsafe { handle(engine) }?;
    // The engine's length checks, in its order, before the outcomes' scratch is allocated: a
    // wrong (huge) `outcomes_len` is an error, not an allocation failure, which aborts.
    for (what, got) in [
        ("keys", keys_len),
        ("outcomes", outcomes_len),
        ("retry_after_ns", retry_after_len),
    ] {
        if got != tokens_len {
            return Err(engine::Error::LengthMismatch {
                what,
                got,
                expected: tokens_len,
            }
            .into());
        }
    }
    // SAFETY: the caller's contract (# Safety); no output overlaps another array (checked).
    let (keys, tokens, outcomes, retry) = unsafe {
        (
            try_slice(keys, keys_len, keys_name)?,
            try_slice(tokens, tokens_len, "tokens")?,
            try_out_slice(outcomes_out, outcomes_len, "outcomes_out")?,
            try_slice_mut(retry_after_ns_out, retry_after_len, "retry_after_ns_out")?,
        )
    };
    let mut scratch = vec![Outcome::InvalidInput; outcomes_len];
    write(h)?.allocate_batch_into(as_keys(keys), tokens, now_ns, &mut scratch, retry)?;
    outcomes.write_from(scratch.into_iter().map(sb_outcome::from));
    Ok(())
}

/// A batch of requests at `now_ns`: `tokens[i]` for customer `ids[i]`. Writes one outcome and
/// one retry-after (ns; 0 for grants, `UINT64_MAX` for never) per request. The outcomes and the
/// end state are exactly those of the requests applied one at a time, in order. The four
/// lengths must be equal; NULL is accepted for an array of length 0.
///
/// Errors: `SB_RESULT_LENGTH_MISMATCH` (nothing is changed or written), `SB_RESULT_READ_ONLY`,
/// `SB_RESULT_INVALID_ARGUMENT` when an output overlaps another array or the batch holds more
/// than 2^32 - 2 requests.
///
/// Thread safety: write lock; the batch runs in parallel inside (rayon's global pool).
///
/// # Safety
/// Each array is NULL or valid for its length (the outputs for writing); `engine` is NULL or a
/// live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_allocate_batch(
    engine: *mut sb_engine,
    ids: *const u64,
    ids_len: usize,
    tokens: *const u64,
    tokens_len: usize,
    now_ns: u64,
    outcomes_out: *mut sb_outcome,
    outcomes_len: usize,
    retry_after_ns_out: *mut u64,
    retry_after_len: usize,
) -> sb_result {
    boundary("sb_engine_allocate_batch", || {
        // SAFETY: the caller's contract (# Safety), which `allocate_batch` asks for.
        unsafe {
            allocate_batch(
                engine,
                (ids, ids_len, "ids"),
                |k| Keys::Ids(k),
                tokens,
                tokens_len,
                now_ns,
                outcomes_out,
                outcomes_len,
                retry_after_ns_out,
                retry_after_len,
            )
        }
    })
}

/// `sb_engine_allocate_batch` with customers named by slot (from `sb_engine_resolve`), which
/// skips the index lookups. A slot that holds no customer gives `SB_OUTCOME_UNKNOWN_CUSTOMER`.
///
/// Errors and thread safety: as `sb_engine_allocate_batch`.
///
/// # Safety
/// As `sb_engine_allocate_batch`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_allocate_batch_slots(
    engine: *mut sb_engine,
    slots: *const u32,
    slots_len: usize,
    tokens: *const u64,
    tokens_len: usize,
    now_ns: u64,
    outcomes_out: *mut sb_outcome,
    outcomes_len: usize,
    retry_after_ns_out: *mut u64,
    retry_after_len: usize,
) -> sb_result {
    boundary("sb_engine_allocate_batch_slots", || {
        // SAFETY: the caller's contract (# Safety), which `allocate_batch` asks for.
        unsafe {
            allocate_batch(
                engine,
                (slots, slots_len, "slots"),
                |k| Keys::Slots(k),
                tokens,
                tokens_len,
                now_ns,
                outcomes_out,
                outcomes_len,
                retry_after_ns_out,
                retry_after_len,
            )
        }
    })
}

/// Reports what a granted request used: `granted` tokens were admitted with outcome
/// `granted_by` (`SB_OUTCOME_GRANTED_SHADOW` or `SB_OUTCOME_GRANTED_POOL`), `used` were
/// consumed. Unused tokens go back at once; extra use is charged as debt.
///
/// Errors: `SB_RESULT_UNKNOWN_CUSTOMER`; `SB_RESULT_INVALID_ARGUMENT` when `granted_by` is not a
/// grant, `granted` is zero or more than the customer has outstanding, or `used` is absurd;
/// `SB_RESULT_READ_ONLY`.
///
/// Thread safety: write lock.
///
/// # Safety
/// `engine` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_settle(
    engine: *mut sb_engine,
    id: u64,
    granted: u64,
    used: u64,
    granted_by: u32,
    now_ns: u64,
) -> sb_result {
    boundary("sb_engine_settle", || {
        let path = match granted_by {
            x if x == sb_outcome::GrantedShadow as u32 => GrantPath::Shadow,
            x if x == sb_outcome::GrantedPool as u32 => GrantPath::Pool,
            x => {
                return Err(Fail::invalid(format!(
                    "granted_by must be SB_OUTCOME_GRANTED_SHADOW or SB_OUTCOME_GRANTED_POOL, got {x}"
                )));
            }
        };
        // SAFETY: the caller's contract (# Safety).
        let h = unsafe { handle(engine) }?;
        Ok(write(h)?.settle(id, granted, used, path, now_ns)?)
    })
}

/// The tick with reservations given by the caller instead of the predictor: brings every customer and the pool to
/// `now_ns`, closes each customer's interval counters, updates contention flags, releases the
/// old reservations and sets these (customers not listed get none), cut back to the reservable
/// budget by weight, then proportionally. Writes what it did to `*report_out`.
///
/// Errors: `SB_RESULT_INVALID_ARGUMENT` for a slot that holds no customer, a slot listed twice
/// or an absurd reservation (nothing is changed); `SB_RESULT_READ_ONLY`.
///
/// Thread safety: write lock; parallel inside.
///
/// # Safety
/// `reservations` is NULL or valid for `reservations_len` reads; `report_out` is NULL or valid
/// for writing an `sb_tick_report`; `engine` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_tick_with_reservations(
    engine: *mut sb_engine,
    now_ns: u64,
    reservations: *const sb_reservation,
    reservations_len: usize,
    report_out: *mut sb_tick_report,
) -> sb_result {
    boundary("sb_engine_tick_with_reservations", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, res, out) = unsafe {
            (
                handle(engine)?,
                try_slice(reservations, reservations_len, "reservations")?,
                try_out(report_out, "report_out")?,
            )
        };
        let res: Vec<Reservation> = res
            .iter()
            .map(|r| Reservation {
                slot: r.slot,
                rate: Rate::from_micros_per_sec(r.rate_micros),
                capacity: r.capacity,
            })
            .collect();
        let report = write(h)?.tick_with(now_ns, &res)?;
        out.write(report.into());
        Ok(())
    })
}

// ---- the predictive tick -------------------------------------------------------------------

/// The predictive tick at `now_ns`: closes every customer's interval, runs one step of the
/// predictor (`sb_engine_set_predictor_baseline`, `sb_engine_load_model`; an EWMA with alpha 0.5
/// until one is set) for every customer, writes the forecasts into the store, turns them into
/// reservations with the policy (`sb_engine_set_policy`) and sets them within the reservable
/// budget. Writes what it did to `*report_out`.
///
/// The predictor, policy, events and signals live in the handle, not the store: after opening a
/// store again, set them again (the forecaster's state in the store is kept).
///
/// Errors: `SB_RESULT_READ_ONLY`; `SB_RESULT_INVALID_ARGUMENT` for a store created without
/// forecaster columns.
///
/// Thread safety: write lock; parallel inside.
///
/// # Safety
/// `engine` is NULL or a live handle; `report_out` is NULL or valid for writing an
/// `sb_tick_report`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_tick(
    engine: *mut sb_engine,
    now_ns: u64,
    report_out: *mut sb_tick_report,
) -> sb_result {
    boundary("sb_engine_tick", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, out) = unsafe { (handle(engine)?, try_out(report_out, "report_out")?) };
        let report = write(h)?.tick(now_ns)?;
        out.write(report.into());
        Ok(())
    })
}

/// Sets a baseline forecaster as the predictor: `kind` is one of `sb_baseline`, `param` its
/// parameter (EWMA: alpha in (0, 1]; seasonal naive: the period in intervals, a whole number;
/// Autopilot: the half-life in intervals; last value: ignored).
///
/// Errors: `SB_RESULT_INVALID_ARGUMENT` for an unknown kind or a bad parameter, or a store without
/// forecaster columns.
///
/// Thread safety: write lock.
///
/// # Safety
/// `engine` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_set_predictor_baseline(
    engine: *mut sb_engine,
    kind: u32,
    param: f64,
) -> sb_result {
    boundary("sb_engine_set_predictor_baseline", || {
        let p = baseline_predictor(kind, param)?;
        // SAFETY: the caller's contract (# Safety).
        let h = unsafe { handle(engine) }?;
        Ok(write(h)?.set_predictor(p)?)
    })
}

fn baseline_predictor(kind: u32, param: f64) -> FfiResult<Predictor> {
    Ok(match kind {
        x if x == sb_baseline::LastValue as u32 => Predictor::LastValue,
        x if x == sb_baseline::Ewma as u32 => Predictor::Ewma { alpha: param },
        x if x == sb_baseline::SeasonalNaive as u32 => {
            if !(param >= 1.0 && param.fract() == 0.0 && param <= u32::MAX as f64) {
                return Err(Fail::invalid(format!(
                    "seasonal naive: the period must be a whole number of intervals >= 1, got {param}"
                )));
            }
            Predictor::SeasonalNaive {
                period: param as usize,
            }
        }
        x if x == sb_baseline::Autopilot as u32 => Predictor::Autopilot { half_life: param },
        x => return Err(Fail::invalid(format!("unknown baseline kind {x}"))),
    })
}

/// Loads an LSTM model saved in the safetensors format from `path` and sets it as the
/// predictor. The file holds F32 (or F64) tensors named as in a PyTorch `nn.LSTM` state dict
/// (`weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, ... per layer) plus the linear
/// head `head.weight` and `head.bias`, and string metadata (`format` = `shadowbucket-lstm`,
/// `format_version` = `1`, `hidden`, `layers`, `horizons`, `feeds`, `features`, the feature
/// scaling): what the engine's `LstmModel::save` and the trainer write (the engine's `model::io`
/// module documents every field). The store's forecaster columns must fit the model: `state_dim` equal to
/// `2 * hidden * layers`, `forecast_dim` at least `4 * horizons`. The recurrent state in the
/// store is kept (reopening a store and loading the same model resumes where it was); call
/// `sb_engine_reset_model_state` after switching to a different model. On failure the predictor
/// in use is unchanged.
///
/// Errors: `SB_RESULT_NOT_FOUND`, `SB_RESULT_IO`; `SB_RESULT_BAD_FILE` when the file is not a
/// valid model (the message says why: not a safetensors file or a truncated one, an unknown
/// format or `format_version`, missing or unparsable metadata, a missing, extra or wrongly shaped
/// tensor, a non-finite value); `SB_RESULT_INVALID_ARGUMENT` when the store's columns do not fit
/// the model or the store has none.
///
/// Thread safety: write lock (the file is read while it is held).
///
/// # Safety
/// `engine` is NULL or a live handle; `path` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_load_model(
    engine: *mut sb_engine,
    path: *const c_char,
) -> sb_result {
    boundary("sb_engine_load_model", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, path) = unsafe { (handle(engine)?, try_path(path, "path")?) };
        write(h)?.load_model(path).map_err(model_error)
    })
}

/// The engine reports a bad model file as `Error::BadFile` ("not a valid shadowbucket file");
/// say "model file", the more precise word here.
fn model_error(e: engine::Error) -> Fail {
    match e {
        engine::Error::BadFile { path, reason } => Fail::new(
            sb_result::BadFile,
            format!(
                "{}: not a valid model file: {}",
                path.display(),
                reason.strip_prefix("model file: ").unwrap_or(&reason)
            ),
        ),
        e => e.into(),
    }
}

/// Zeroes every customer's recurrent model state (the LSTM's `h` and `c`), as after creating
/// the store; the customer scales and the forecasts of the last tick are kept. Call it after
/// switching to a different model, whose state would otherwise start from the old model's.
///
/// Errors: `SB_RESULT_READ_ONLY`.
///
/// Thread safety: write lock.
///
/// # Safety
/// `engine` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_reset_model_state(engine: *mut sb_engine) -> sb_result {
    boundary("sb_engine_reset_model_state", || {
        // SAFETY: the caller's contract (# Safety).
        let h = unsafe { handle(engine) }?;
        Ok(write(h)?.reset_model_state()?)
    })
}

/// Makes the recurrent model state durable: copies it back from a device step backend, if one
/// runs the LSTM step (a GPU backend keeps the state on the device between ticks and writes it
/// back only every few ticks), into the store, then flushes the store to disk and waits for it.
/// Without a device backend (the C ABI sets none) the state is already in the store and this is
/// `sb_engine_flush` under the write lock. Call it before a planned shutdown.
///
/// On a read-only handle there is nothing to write: it returns `SB_RESULT_OK`.
///
/// Errors: `SB_RESULT_IO` (writing the store, or a device backend failing to copy the state
/// back).
///
/// Thread safety: write lock (the copy back must not race with a tick).
///
/// # Safety
/// `engine` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_sync_model_state(engine: *mut sb_engine) -> sb_result {
    boundary("sb_engine_sync_model_state", || {
        // SAFETY: the caller's contract (# Safety).
        let h = unsafe { handle(engine) }?;
        Ok(write(h)?.sync_model_state()?)
    })
}

/// Writes a consistent copy of the store to `dest`, which then opens like any store (copy it back
/// over a lost store to restore it), and what was written to `*out`.
///
/// The copy holds every transaction committed before the call (a device backend's recurrent
/// state is written back first), with the store's events and signals beside it
/// (`<dest>.events`). It is written to a new file beside `dest` (`<dest>.snapshot-tmp`), synced
/// to the disk and renamed over `dest`, so a process killed at any instant leaves `dest` as it
/// was or as the complete new snapshot. Through a read-only handle the snapshot holds a shared
/// lock on the store while it copies (a writer opening the store meanwhile gets
/// `SB_RESULT_LOCKED`). A store on a RAM-backed file system (tmpfs) is never written back by the
/// kernel: snapshots are how it reaches a disk.
///
/// Errors: `SB_RESULT_INVALID_ARGUMENT` when `dest` (or `<dest>.events`) is the store itself or
/// its events file; `SB_RESULT_LOCKED` when a writer has `dest` (or `<dest>.events`) open as a
/// store, or (read-only handle) has this store open; `SB_RESULT_NOT_FOUND` (no such folder),
/// `SB_RESULT_IO` (`dest` is then unchanged).
///
/// Thread safety: write lock (no change may run during the copy).
///
/// # Safety
/// `engine` is NULL or a live handle; `dest` is NULL or a NUL-terminated string; `out` is NULL
/// or valid for writing an `sb_snapshot`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_snapshot(
    engine: *mut sb_engine,
    dest: *const c_char,
    out: *mut sb_snapshot,
) -> sb_result {
    boundary("sb_engine_snapshot", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, dest, out) = unsafe {
            (
                handle(engine)?,
                try_path(dest, "dest")?,
                try_out(out, "out")?,
            )
        };
        out.write(write(h)?.snapshot(dest)?.into());
        Ok(())
    })
}

/// A consistent copy of a store held in memory, to be written to a snapshot file later without
/// holding the engine. Opaque; made by `sb_engine_capture_snapshot`, written with
/// `sb_snapshot_capture_write`, released with `sb_snapshot_capture_free`.
pub struct sb_snapshot_capture {
    _private: [u8; 0],
}

/// Copies the store into memory, consistently, and a handle to the copy to `*out`, to be written
/// to a snapshot file with `sb_snapshot_capture_write` while the engine goes on.
///
/// `sb_engine_snapshot` holds the engine's write lock for as long as the copy takes to reach the
/// disk (seconds for a store of several GB); this holds it only for a copy in memory (on the
/// development machine, 104-129 ms for a 1M-customer store into the new memory this call takes,
/// 34-38 ms with `sb_engine_capture_snapshot_into`), at the price of memory for the copy: the
/// store file's size less its runs of zeros, until `sb_snapshot_capture_free`. The copy holds
/// every transaction committed before the call (a device backend's recurrent state is written
/// back first) and the events and signals. Through a read-only handle the capture holds a shared
/// lock on the store only while it copies.
///
/// Errors: `SB_RESULT_LOCKED` (read-only handle) when a writer has this store open;
/// `SB_RESULT_INVALID_ARGUMENT` (read-only handle) when the store's path now holds another file;
/// `SB_RESULT_IO` when the memory for the copy cannot be had, or from a device backend's state
/// write-back. `*out` is set only on success.
///
/// Thread safety: write lock (no change may run during the copy).
///
/// # Safety
/// `engine` is NULL or a live handle; `out` is NULL or valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_capture_snapshot(
    engine: *mut sb_engine,
    out: *mut *mut sb_snapshot_capture,
) -> sb_result {
    boundary("sb_engine_capture_snapshot", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, out) = unsafe { (handle(engine)?, try_out(out, "out")?) };
        let capture = write(h)?.capture_snapshot()?;
        out.write(Box::into_raw(Box::new(capture)).cast());
        Ok(())
    })
}

/// `sb_engine_capture_snapshot` into the memory of an earlier capture, which it replaces: a
/// service that snapshots on a schedule keeps one capture and writes it after each of these. A
/// first capture's memory is new, and every page of it is a page fault (1.0-6.0 s for a
/// 10M-customer store's 3 GB on the development machine, depending on what memory the kernel has
/// free; 0.36-0.47 s into a capture's memory); a copy into a capture of the same
/// store is the copy alone. A capture of another length (another store, or this one before it
/// grew) gets new memory.
///
/// Errors: as `sb_engine_capture_snapshot`; `*capture` is then unchanged.
///
/// Thread safety: the engine's write lock; no other call may use `capture` during this one.
///
/// # Safety
/// `engine` is NULL or a live handle; `capture` is NULL or a live capture.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_capture_snapshot_into(
    engine: *mut sb_engine,
    capture: *mut sb_snapshot_capture,
) -> sb_result {
    boundary("sb_engine_capture_snapshot_into", || {
        // SAFETY: the caller's contract (# Safety): a live capture points to a
        // `SnapshotCapture` (see `sb_engine_capture_snapshot`) that no other call uses; NULL is
        // refused.
        let (h, capture) = unsafe {
            (
                handle(engine)?,
                try_mut(capture.cast::<engine::SnapshotCapture>(), "capture")?,
            )
        };
        Ok(write(h)?.capture_snapshot_into(capture)?)
    })
}

/// Writes a captured copy (`sb_engine_capture_snapshot`) to `dest` exactly as
/// `sb_engine_snapshot` would have written the store when it was captured, and what was written
/// to `*out`: the events file beside it, a new file beside `dest` (`<dest>.snapshot-tmp`) synced
/// to the disk and renamed over `dest`, so that a process killed at any instant leaves `dest` as
/// it was or as the complete new snapshot. The same capture may be written more than once, to
/// several destinations, after its engine is closed.
///
/// Errors: `SB_RESULT_INVALID_ARGUMENT` when `dest` (or `<dest>.events`) is the store the copy
/// was captured from or that store's events file; `SB_RESULT_LOCKED` when a writer has `dest`
/// (or `<dest>.events`) open as a store; `SB_RESULT_NOT_FOUND` (no such folder), `SB_RESULT_IO`
/// (`dest` is then unchanged).
///
/// Thread safety: any thread, without the engine; several calls on one capture may run at once
/// (in one process, two to one destination take turns).
///
/// # Safety
/// `capture` is NULL or a live capture; `dest` is NULL or a NUL-terminated string; `out` is NULL
/// or valid for writing an `sb_snapshot`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_snapshot_capture_write(
    capture: *const sb_snapshot_capture,
    dest: *const c_char,
    out: *mut sb_snapshot,
) -> sb_result {
    boundary("sb_snapshot_capture_write", || {
        // SAFETY: the caller's contract (# Safety): a live capture points to a
        // `SnapshotCapture` (see `sb_engine_capture_snapshot`); NULL is refused.
        let (capture, dest, out) = unsafe {
            (
                try_ref(capture.cast::<engine::SnapshotCapture>(), "capture")?,
                try_path(dest, "dest")?,
                try_out(out, "out")?,
            )
        };
        out.write(capture.write(dest)?.into());
        Ok(())
    })
}

/// Releases a capture and its memory. NULL is a no-op; a misaligned pointer (never a capture) is
/// left alone, and `sb_last_error_message` says so.
///
/// Thread safety: no other call may use this capture during or after this one.
///
/// # Safety
/// `capture` is NULL or a live capture from this library, not used again afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_snapshot_capture_free(capture: *mut sb_snapshot_capture) {
    boundary_void("sb_snapshot_capture_free", || {
        check_aligned(capture.cast::<engine::SnapshotCapture>(), "capture")?;
        if !capture.is_null() {
            // SAFETY: a live capture came from `Box::into_raw` in `sb_engine_capture_snapshot`
            // and is given back once (the caller's contract).
            drop(unsafe { Box::from_raw(capture.cast::<engine::SnapshotCapture>()) });
        }
        Ok(())
    })
}

/// Copies a short description of the predictor in use (e.g. `"ewma(0.5)"`) to `buf`,
/// NUL-terminated, and its length without the NUL to `*out_n`.
///
/// Errors: `SB_RESULT_INSUFFICIENT_SIZE` when it does not fit with its NUL (nothing written).
///
/// Thread safety: read lock.
///
/// # Safety
/// `buf` is NULL or valid for writing `len` bytes; `out_n` NULL or valid for writing a `size_t`;
/// `engine` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_predictor_name(
    engine: *const sb_engine,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> sb_result {
    boundary("sb_engine_predictor_name", || {
        disjoint(&[span(buf, len, "buf"), span(out_n, 1, "out_n")], &[])?;
        // SAFETY: the caller's contract (# Safety); no overlap (checked). `buf` is only
        // checked here (NULL with `len > 0` is an error) and written through `write_message`.
        let (h, _, n_out) = unsafe {
            (
                handle(engine)?,
                try_out_slice(buf, len, "buf")?,
                try_out(out_n, "out_n")?,
            )
        };
        let name = read(h)?.predictor_name();
        if name.len() >= len {
            return Err(Fail::new(
                sb_result::InsufficientSize,
                format!(
                    "the name needs {} bytes with its NUL, got {len}",
                    name.len() + 1
                ),
            ));
        }
        // SAFETY: `buf` is valid for `len` bytes (caller's contract), non-NULL because
        // `len > name.len() >= 0` and a NULL `buf` with `len > 0` was refused above.
        let n = unsafe { crate::boundary::write_message(&name, buf, len) };
        n_out.write(n);
        Ok(())
    })
}

/// Fills `*out` with the default reservation policy: the p90 of the next interval, headroom 1,
/// one interval of shadow capacity.
///
/// Thread safety: any thread.
///
/// # Safety
/// `out` is NULL or valid for writing an `sb_policy`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_policy_default(out: *mut sb_policy) -> sb_result {
    boundary("sb_policy_default", || {
        // SAFETY: the caller's contract (# Safety).
        let out = unsafe { try_out(out, "out") }?;
        out.write(ReservationPolicy::default().into());
        Ok(())
    })
}

/// Sets how forecasts become reservations at the predictive tick.
///
/// Errors: `SB_RESULT_INVALID_ARGUMENT` for an unknown target, a negative or non-finite
/// multiplier, a scenario probability outside (0, 1], or a horizon the predictor does not have.
///
/// Thread safety: write lock.
///
/// # Safety
/// `engine` is NULL or a live handle; `policy` is NULL or points to an `sb_policy`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_set_policy(
    engine: *mut sb_engine,
    policy: *const sb_policy,
) -> sb_result {
    boundary("sb_engine_set_policy", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, p) = unsafe { (handle(engine)?, try_ref(policy, "policy")?) };
        let p = p.to_engine()?;
        Ok(write(h)?.set_policy(p)?)
    })
}

/// Writes the reservation policy in use to `*out`.
///
/// Thread safety: read lock.
///
/// # Safety
/// `engine` is NULL or a live handle; `out` is NULL or valid for writing an `sb_policy`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_policy(
    engine: *const sb_engine,
    out: *mut sb_policy,
) -> sb_result {
    boundary("sb_engine_policy", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, out) = unsafe { (handle(engine)?, try_out(out, "out")?) };
        out.write(read(h)?.policy().into());
        Ok(())
    })
}

/// Tells the forecaster about an event (a campaign, a launch); writes its id to `*id_out`.
/// Events that have ended are dropped at the next tick.
///
/// Errors: `SB_RESULT_INVALID_ARGUMENT` for an empty span, a non-finite intensity, a `global`
/// other than 0 or 1, or too many events.
///
/// Thread safety: write lock.
///
/// # Safety
/// `engine` is NULL or a live handle; `event` is NULL or points to an `sb_event`; `id_out` is
/// NULL or valid for writing a `uint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_add_event(
    engine: *mut sb_engine,
    event: *const sb_event,
    id_out: *mut u64,
) -> sb_result {
    boundary("sb_engine_add_event", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, e, out) = unsafe {
            (
                handle(engine)?,
                try_ref(event, "event")?,
                try_out(id_out, "id_out")?,
            )
        };
        let e = e.to_engine()?;
        let id = write(h)?.add_event(e)?;
        out.write(id);
        Ok(())
    })
}

/// Removes event `id`.
///
/// Errors: `SB_RESULT_INVALID_ARGUMENT` for an unknown id.
///
/// Thread safety: write lock.
///
/// # Safety
/// `engine` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_remove_event(engine: *mut sb_engine, id: u64) -> sb_result {
    boundary("sb_engine_remove_event", || {
        // SAFETY: the caller's contract (# Safety).
        let h = unsafe { handle(engine) }?;
        Ok(write(h)?.remove_event(id)?)
    })
}

/// Sets the external feed `name` (a global signal a model reads, e.g. a news-volume index) to
/// `value`. A feed never set reads as 0.
///
/// Errors: `SB_RESULT_INVALID_ARGUMENT` for a name that is empty, longer than 256 bytes, not
/// UTF-8 or has a comma, or a non-finite value.
///
/// Thread safety: write lock.
///
/// # Safety
/// `engine` is NULL or a live handle; `name` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_set_signal(
    engine: *mut sb_engine,
    name: *const c_char,
    value: f32,
) -> sb_result {
    boundary("sb_engine_set_signal", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, name) = unsafe { (handle(engine)?, try_str(name, "name")?) };
        Ok(write(h)?.set_signal(name, value)?)
    })
}

/// Writes customer `id`'s forecast, as the last tick left it (zeros before the first), to
/// `*out`.
///
/// Errors: `SB_RESULT_UNKNOWN_CUSTOMER`; `SB_RESULT_INSUFFICIENT_SIZE` for a predictor with more
/// than `SB_FORECAST_MAX_HORIZONS` horizons.
///
/// Thread safety: read lock.
///
/// # Safety
/// `engine` is NULL or a live handle; `out` is NULL or valid for writing an `sb_forecast`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_forecast(
    engine: *const sb_engine,
    id: u64,
    out: *mut sb_forecast,
) -> sb_result {
    boundary("sb_engine_forecast", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, out) = unsafe { (handle(engine)?, try_out(out, "out")?) };
        let f = read(h)?.forecast(id)?;
        out.write(sb_forecast::from_engine(&f)?);
        Ok(())
    })
}

// ---- queries -------------------------------------------------------------------------------

/// Writes customer `id` as of the last time the engine touched it to `*out`.
///
/// Errors: `SB_RESULT_UNKNOWN_CUSTOMER`.
///
/// Thread safety: read lock.
///
/// # Safety
/// `engine` is NULL or a live handle; `out` is NULL or valid for writing an `sb_customer`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_customer(
    engine: *const sb_engine,
    id: u64,
    out: *mut sb_customer,
) -> sb_result {
    boundary("sb_engine_customer", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, out) = unsafe { (handle(engine)?, try_out(out, "out")?) };
        out.write((&read(h)?.customer(id)?).into());
        Ok(())
    })
}

/// Writes customer `id` as it would be at `now_ns` (buckets refilled; nothing is changed) to
/// `*out`.
///
/// Errors: `SB_RESULT_UNKNOWN_CUSTOMER`.
///
/// Thread safety: read lock.
///
/// # Safety
/// As `sb_engine_customer`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_customer_at(
    engine: *const sb_engine,
    id: u64,
    now_ns: u64,
    out: *mut sb_customer,
) -> sb_result {
    boundary("sb_engine_customer_at", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, out) = unsafe { (handle(engine)?, try_out(out, "out")?) };
        out.write((&read(h)?.customer_at(id, now_ns)?).into());
        Ok(())
    })
}

/// Copies customer `id`'s forecast column (`forecast_dim` floats: per horizon mean, p50, p90,
/// p99) and scenario probabilities (`scenario_dim` floats: low, medium, high, spike) as the last
/// forecaster step left them; zeros until one runs. The lengths must equal `sb_dims`'s.
///
/// Errors: `SB_RESULT_UNKNOWN_CUSTOMER`, `SB_RESULT_LENGTH_MISMATCH`.
///
/// Thread safety: read lock.
///
/// # Safety
/// `forecast_out` and `scenarios_out` are NULL or valid for writing their lengths and do not
/// overlap; `engine` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_customer_forecast(
    engine: *const sb_engine,
    id: u64,
    forecast_out: *mut f32,
    forecast_len: usize,
    scenarios_out: *mut f32,
    scenarios_len: usize,
) -> sb_result {
    boundary("sb_engine_customer_forecast", || {
        disjoint(
            &[
                span(forecast_out, forecast_len, "forecast_out"),
                span(scenarios_out, scenarios_len, "scenarios_out"),
            ],
            &[],
        )?;
        // SAFETY: the caller's contract (# Safety); no overlap (checked).
        let (h, f, s) = unsafe {
            (
                handle(engine)?,
                try_slice_mut(forecast_out, forecast_len, "forecast_out")?,
                try_slice_mut(scenarios_out, scenarios_len, "scenarios_out")?,
            )
        };
        let v = read(h)?.customer(id)?;
        for (what, got, expected) in [
            ("forecast_out", f.len(), v.forecast.len()),
            ("scenarios_out", s.len(), v.scenarios.len()),
        ] {
            if got != expected {
                return Err(engine::Error::LengthMismatch {
                    what,
                    got,
                    expected,
                }
                .into());
            }
        }
        f.copy_from_slice(&v.forecast);
        s.copy_from_slice(&v.scenarios);
        Ok(())
    })
}

/// Writes the engine-wide counters and pool state to `*out`. Cheap: read it at every tick.
///
/// Thread safety: read lock.
///
/// # Safety
/// `engine` is NULL or a live handle; `out` is NULL or valid for writing an `sb_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_stats(
    engine: *const sb_engine,
    out: *mut sb_stats,
) -> sb_result {
    boundary("sb_engine_stats", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, out) = unsafe { (handle(engine)?, try_out(out, "out")?) };
        out.write(read(h)?.stats().into());
        Ok(())
    })
}

/// Writes where the pool's supply is at `now_ns` (semantics I4) to `*out`, changing nothing.
/// Walks every customer: for audits and tests, not for every request.
///
/// Thread safety: read lock.
///
/// # Safety
/// `engine` is NULL or a live handle; `out` is NULL or valid for writing an `sb_ledger`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_ledger(
    engine: *const sb_engine,
    now_ns: u64,
    out: *mut sb_ledger,
) -> sb_result {
    boundary("sb_engine_ledger", || {
        // SAFETY: the caller's contract (# Safety).
        let (h, out) = unsafe { (handle(engine)?, try_out(out, "out")?) };
        out.write(read(h)?.ledger(now_ns).into());
        Ok(())
    })
}

/// Checks the store's internal consistency.
///
/// Errors: `SB_RESULT_BAD_FILE`, with the first problem in the message.
///
/// Thread safety: read lock.
///
/// # Safety
/// `engine` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_check(engine: *const sb_engine) -> sb_result {
    boundary("sb_engine_check", || {
        // SAFETY: the caller's contract (# Safety).
        let h = unsafe { handle(engine) }?;
        Ok(read(h)?.check()?)
    })
}

fn write_ids(ids: Vec<u64>, out: &mut [u64], n_out: crate::boundary::Out<usize>) -> FfiResult {
    if ids.len() > out.len() {
        return Err(Fail::new(
            sb_result::InsufficientSize,
            format!("{} ids do not fit in {}", ids.len(), out.len()),
        ));
    }
    out[..ids.len()].copy_from_slice(&ids);
    n_out.write(ids.len());
    Ok(())
}

/// Copies the ids of the customers whose contention flag is raised, in slot order, to `out`
/// (room for `len`), and their number to `*out_n`. `sb_stats.flagged` says how many there are.
///
/// Errors: `SB_RESULT_INSUFFICIENT_SIZE` (nothing written).
///
/// Thread safety: read lock.
///
/// # Safety
/// `out` is NULL or valid for writing `len` ids; `out_n` NULL or valid for writing a `size_t`;
/// `engine` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_flagged(
    engine: *const sb_engine,
    out: *mut u64,
    len: usize,
    out_n: *mut usize,
) -> sb_result {
    boundary("sb_engine_flagged", || {
        disjoint(&[span(out, len, "out"), span(out_n, 1, "out_n")], &[])?;
        // SAFETY: the caller's contract (# Safety); no overlap (checked).
        let (h, out, n) = unsafe {
            (
                handle(engine)?,
                try_slice_mut(out, len, "out")?,
                try_out(out_n, "out_n")?,
            )
        };
        let ids = read(h)?.flagged();
        write_ids(ids, out, n)
    })
}

/// Copies the ids of all customers, in slot order, to `out` (room for `len`), and their number
/// to `*out_n`. `sb_stats.customers` says how many there are.
///
/// Errors: `SB_RESULT_INSUFFICIENT_SIZE` (nothing written).
///
/// Thread safety: read lock.
///
/// # Safety
/// As `sb_engine_flagged`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_engine_customer_ids(
    engine: *const sb_engine,
    out: *mut u64,
    len: usize,
    out_n: *mut usize,
) -> sb_result {
    boundary("sb_engine_customer_ids", || {
        disjoint(&[span(out, len, "out"), span(out_n, 1, "out_n")], &[])?;
        // SAFETY: the caller's contract (# Safety); no overlap (checked).
        let (h, out, n) = unsafe {
            (
                handle(engine)?,
                try_slice_mut(out, len, "out")?,
                try_out(out_n, "out_n")?,
            )
        };
        let ids = read(h)?.customer_ids();
        write_ids(ids, out, n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store(name: &str) -> (std::path::PathBuf, std::ffi::CString) {
        let dir = std::env::temp_dir().join(format!("sb-ffi-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sb");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        (dir, c)
    }

    fn create(path: &std::ffi::CStr) -> *mut sb_engine {
        let mut opts = std::mem::MaybeUninit::<sb_create_options>::uninit();
        let mut eng: *mut sb_engine = std::ptr::null_mut();
        // SAFETY: valid pointers to local memory.
        unsafe {
            assert_eq!(
                sb_create_options_default(16, 1000, 1_000_000_000, opts.as_mut_ptr()),
                sb_result::Ok
            );
            assert_eq!(
                sb_engine_create(path.as_ptr(), opts.as_ptr(), &mut eng),
                sb_result::Ok
            );
        }
        eng
    }

    #[test]
    fn a_panic_inside_a_change_poisons_the_handle_and_reopening_recovers() {
        let (dir, path) = temp_store("poison");
        let eng = create(&path);
        // SAFETY: `eng` is a live handle.
        let h = unsafe { handle(eng) }.unwrap();
        // A bug inside a change: the write guard is held when it panics.
        let r = boundary("sb_test", || {
            let _guard = write(h)?;
            panic!("bug while changing");
        });
        assert_eq!(r, sb_result::Panic);
        let mut st = std::mem::MaybeUninit::<sb_stats>::uninit();
        let contract = sb_contract {
            burst: 10,
            rate_micros: 1,
            weight: 1,
        };
        let mut slot = 0u32;
        // SAFETY: live handle and valid local pointers.
        unsafe {
            assert_eq!(
                sb_engine_stats(eng, st.as_mut_ptr()),
                sb_result::LockPoisoned
            );
            assert_eq!(
                sb_engine_add_customer(eng, 1, &contract, 0, &mut slot),
                sb_result::LockPoisoned
            );
            assert!(crate::boundary::last_error().contains("open the store again"));
            // closing reports it, and still releases the handle
            assert_eq!(sb_engine_close(eng), sb_result::LockPoisoned);
        }
        let mut again: *mut sb_engine = std::ptr::null_mut();
        // SAFETY: valid pointers.
        unsafe {
            assert_eq!(sb_engine_open(path.as_ptr(), &mut again), sb_result::Ok);
            assert_eq!(sb_engine_check(again), sb_result::Ok);
            assert_eq!(sb_engine_close(again), sb_result::Ok);
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn outputs_are_left_alone_on_failure() {
        let (dir, path) = temp_store("outputs");
        let eng = create(&path);
        let mut d = sb_decision {
            outcome: sb_outcome::InvalidInput,
            retry_after_ns: 7,
        };
        let ids = [1u64, 2];
        let tokens = [1u64];
        let mut out = [sb_outcome::InvalidInput; 2];
        let mut retry = [9u64; 2];
        // SAFETY: live handle and valid local arrays with their lengths.
        unsafe {
            assert_eq!(
                sb_engine_allocate_batch(
                    eng,
                    ids.as_ptr(),
                    2,
                    tokens.as_ptr(),
                    1,
                    0,
                    out.as_mut_ptr(),
                    2,
                    retry.as_mut_ptr(),
                    2
                ),
                sb_result::LengthMismatch
            );
            assert_eq!(sb_engine_allocate(eng, 5, 1, 0, &mut d), sb_result::Ok);
            assert_eq!(d.outcome, sb_outcome::UnknownCustomer);
            sb_engine_free(eng);
        }
        assert_eq!(retry, [9, 9]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn no_slot_matches_the_engine() {
        assert_eq!(SB_NO_SLOT, engine::NO_SLOT);
    }
}
