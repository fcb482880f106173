//! # libshadowbucket: the C ABI of the shadowbucket engine
//!
//! A shared (`libshadowbucket.so`) and a static (`libshadowbucket.a`) library with the header
//! `include/shadowbucket.h`, generated from this crate by cbindgen. The conventions are
//! rustls-ffi's:
//!
//! - Opaque handles (`sb_engine`), functions named `sb_<noun>_<verb>`. Read-only calls take
//!   `const` pointers. Every buffer is followed by its length.
//! - Every function that can fail returns an `sb_result`; outputs come last and are written only
//!   when it is `SB_RESULT_OK`. `sb_result_message` gives a code's fixed text and
//!   `sb_last_error_message` the detailed message of the calling thread's last failure.
//! - Every pointer is checked (NULL, alignment; output arrays against overlap) before use: a
//!   NULL required pointer is `SB_RESULT_NULL_PARAMETER`; an array of length 0 may be NULL.
//! - Panics never cross into C: each exported body runs under `catch_unwind` and a panic becomes
//!   `SB_RESULT_PANIC`. `sb_engine_free(NULL)` and `sb_engine_close(NULL)` do nothing.
//!
//! ## Thread safety
//! An `sb_engine` may be shared between threads. It holds the engine behind a read-write lock:
//! queries (`sb_engine_customer`, `_stats`, `_slot_of`, `_resolve`, `_ledger`, `_check`,
//! `_flush`, ...) take the read lock and run concurrently with each other; changes
//! (`sb_engine_allocate*`, `_settle`, `_tick*`, customer changes, `_grow`, the predictor and
//! its model state: `_load_model`, `_reset_model_state`, `_sync_model_state`) take the write lock
//! and run one at a time, as do `sb_engine_snapshot`, `sb_engine_capture_snapshot` and
//! `sb_engine_capture_snapshot_into`. An `sb_snapshot_capture` has no lock of its own:
//! `sb_snapshot_capture_write` calls on one capture may run together, on any threads and without
//! its engine, but not alongside `sb_engine_capture_snapshot_into` or `sb_snapshot_capture_free`
//! on that capture. Batch calls and the tick are parallel inside, on rayon's global pool. A
//! panic inside a change poisons the lock: later calls on that handle return
//! `SB_RESULT_LOCK_POISONED` (free it and reopen the store; opening rolls back the unfinished
//! transaction). `sb_engine_free` and `sb_engine_close` must not race with any other call on the
//! same handle. Each function's comment in the header names the lock it takes.
//!
//! ## Units
//! Tokens are whole tokens (`uint64_t`); rates micro-tokens per second (`uint64_t`); times
//! nanoseconds on the caller's monotonic clock. Bucket levels are femto-tokens (10^-15 token):
//! given as whole tokens (`int64_t`, rounded down, saturating) and exactly as `sb_femto`.

#![expect(
    non_camel_case_types,
    reason = "C type names follow the C convention (sb_engine, sb_result)"
)]

mod boundary;
mod handle;
mod types;

use std::ffi::c_char;

pub use boundary::sb_result;
pub use handle::*;
pub use types::*;

/// The library's version, a static NUL-terminated string (never free it).
///
/// Thread safety: any thread.
#[unsafe(no_mangle)]
pub extern "C" fn sb_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Writes the fixed message of result code `result` to `buf` (at most `len` bytes, always
/// NUL-terminated when `len > 0`, truncated if needed) and the bytes written, not counting the
/// NUL, to `*out_n`. Unknown codes get "unknown result code". NULL `buf` or `out_n` are allowed.
///
/// Thread safety: any thread.
///
/// # Safety
/// `buf` is NULL or valid for writing `len` bytes; `out_n` is NULL or valid for writing a
/// `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_result_message(
    result: u32,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) {
    boundary::boundary_void("sb_result_message", || {
        // SAFETY: the caller's contract (# Safety).
        let n = unsafe { boundary::write_message(sb_result::message(result), buf, len) };
        if !out_n.is_null() {
            // SAFETY: non-NULL, valid for writing by the caller's contract.
            unsafe { out_n.write(n) };
        }
        Ok(())
    })
}

/// Writes the detailed message of the last call on this thread that failed (the function's
/// name, then what went wrong; empty if none has) to `buf`, as `sb_result_message` does. A
/// successful call does not clear it.
///
/// Thread safety: any thread; each thread has its own message.
///
/// # Safety
/// As `sb_result_message`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sb_last_error_message(buf: *mut c_char, len: usize, out_n: *mut usize) {
    boundary::boundary_void("sb_last_error_message", || {
        let msg = boundary::last_error();
        // SAFETY: the caller's contract (# Safety).
        let n = unsafe { boundary::write_message(&msg, buf, len) };
        if !out_n.is_null() {
            // SAFETY: non-NULL, valid for writing by the caller's contract.
            unsafe { out_n.write(n) };
        }
        Ok(())
    })
}
