//! The boundary: result codes, the per-thread error message, the panic catcher and the pointer
//! checks every exported function goes through (after rustls-ffi's `ffi_panic_boundary!` and
//! `try_ref_from_ptr!`).
//!
//! Every exported body is one closure passed to [`boundary`], which catches panics and turns an
//! `Err` into a result code, remembering its message for `sb_last_error_message`. Every pointer
//! goes through one of the helpers here, which check NULL, alignment and size before Rust makes a
//! reference or a slice from it.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// What a call did. Every function that can fail returns one; outputs are written only when it
/// is `SB_RESULT_OK`. Values are never reused: new codes get new numbers.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum sb_result {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullParameter = 1,
    /// The library panicked (a bug); the call was abandoned. If the engine's lock was held, later
    /// calls on that engine return `SB_RESULT_LOCK_POISONED`.
    Panic = 2,
    /// An earlier call panicked while it held this engine's lock: the engine may be half-way
    /// through a change. Free the handle and open the store again (opening rolls back the
    /// unfinished transaction).
    LockPoisoned = 3,
    /// An argument is out of its documented range (or a pointer is misaligned, or buffers overlap).
    InvalidArgument = 4,
    /// Two arrays that must have the same length do not.
    LengthMismatch = 5,
    /// No customer with this id is in the store.
    UnknownCustomer = 6,
    /// A customer with this id is already in the store.
    DuplicateCustomer = 7,
    /// The store has no free slot: grow it with `sb_engine_grow`.
    StoreFull = 8,
    /// Another process has the store open for writing.
    Locked = 9,
    /// A change was asked of an engine opened read-only.
    ReadOnly = 10,
    /// The file is not a valid store (it was not modified), or, from `sb_engine_load_model`, not
    /// a valid model file.
    BadFile = 11,
    /// An I/O error.
    Io = 12,
    /// The file does not exist.
    NotFound = 13,
    /// The file already exists (`sb_engine_create`).
    AlreadyExists = 14,
    /// An output buffer is too small; nothing was written.
    InsufficientSize = 15,
    /// An error the C ABI does not name yet (the message says what).
    Other = 16,
}

impl sb_result {
    /// The fixed message of a code.
    pub(crate) fn message(code: u32) -> &'static str {
        match code {
            0 => "success",
            1 => "a required pointer argument was NULL",
            2 => "the library panicked (a bug); the call was abandoned",
            3 => {
                "the engine's lock is poisoned by an earlier panic: free the handle and reopen the store"
            }
            4 => "invalid argument",
            5 => "array lengths do not match",
            6 => "unknown customer",
            7 => "customer already exists",
            8 => "store is full: grow it with sb_engine_grow",
            9 => "store is locked by another writer",
            10 => "store was opened read-only",
            11 => "not a valid shadowbucket store or model file",
            12 => "I/O error",
            13 => "file not found",
            14 => "file already exists",
            15 => "output buffer too small",
            16 => "other error",
            _ => "unknown result code",
        }
    }
}

/// A failed call: its code and a message saying what exactly went wrong.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) code: sb_result,
    pub(crate) msg: String,
}

impl Fail {
    pub(crate) fn new(code: sb_result, msg: impl Into<String>) -> Self {
        Fail {
            code,
            msg: msg.into(),
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Fail::new(sb_result::InvalidArgument, msg)
    }
}

impl From<engine::Error> for Fail {
    fn from(e: engine::Error) -> Self {
        use engine::Error as E;
        let code = match &e {
            E::InvalidArgument(_) => sb_result::InvalidArgument,
            E::LengthMismatch { .. } => sb_result::LengthMismatch,
            E::UnknownCustomer(_) => sb_result::UnknownCustomer,
            E::DuplicateCustomer(_) => sb_result::DuplicateCustomer,
            E::StoreFull { .. } => sb_result::StoreFull,
            E::Locked(_) => sb_result::Locked,
            E::ReadOnly => sb_result::ReadOnly,
            E::BadFile { .. } => sb_result::BadFile,
            E::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => sb_result::NotFound,
                std::io::ErrorKind::AlreadyExists => sb_result::AlreadyExists,
                _ => sb_result::Io,
            },
            _ => sb_result::Other,
        };
        Fail::new(code, e.to_string())
    }
}

/// `Result` of a body inside the boundary.
pub(crate) type FfiResult<T = ()> = Result<T, Fail>;

thread_local! {
    /// The message of the last call on this thread that failed.
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn set_last_error(func: &str, msg: &str) {
    LAST_ERROR.with(|m| {
        let mut m = m.borrow_mut();
        m.clear();
        m.push_str(func);
        m.push_str(": ");
        m.push_str(msg);
    });
}

pub(crate) fn last_error() -> String {
    LAST_ERROR.with(|m| m.borrow().clone())
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

/// Runs the body of exported function `func`: a panic becomes `SB_RESULT_PANIC`, an `Err` its
/// code; either way the message is kept for `sb_last_error_message`. Nothing unwinds into C.
pub(crate) fn boundary(func: &'static str, body: impl FnOnce() -> FfiResult) -> sb_result {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => sb_result::Ok,
        Ok(Err(f)) => {
            // Building the message allocates; a panic there must not unwind into C either.
            let _ = catch_unwind(|| set_last_error(func, &f.msg));
            f.code
        }
        Err(payload) => {
            let _ = catch_unwind(AssertUnwindSafe(|| {
                set_last_error(func, &format!("panic: {}", panic_message(&*payload)))
            }));
            // Dropping the payload may itself panic; leak it instead (it is a bug path anyway).
            std::mem::forget(payload);
            sb_result::Panic
        }
    }
}

/// [`boundary`] for the functions that return nothing (the `_free` functions): failures are
/// only remembered for `sb_last_error_message`.
pub(crate) fn boundary_void(func: &'static str, body: impl FnOnce() -> FfiResult) {
    let _ = boundary(func, body);
}

fn null(what: &str) -> Fail {
    Fail::new(sb_result::NullParameter, format!("{what} is NULL"))
}

/// Refuses a misaligned pointer (NULL is aligned).
pub(crate) fn check_aligned<T>(p: *const T, what: &str) -> FfiResult {
    if !p.is_aligned() {
        return Err(Fail::invalid(format!("{what} is misaligned")));
    }
    Ok(())
}

/// A shared reference from a pointer the C caller passed.
///
/// # Safety
/// `p` is NULL or points to a valid, initialized `T` that nothing writes for `'a`.
pub(crate) unsafe fn try_ref<'a, T>(p: *const T, what: &str) -> FfiResult<&'a T> {
    check_aligned(p, what)?;
    // SAFETY: non-NULL and aligned (checked); valid for `'a` by the caller's contract.
    unsafe { p.as_ref() }.ok_or_else(|| null(what))
}

/// An exclusive reference from a pointer the C caller passed.
///
/// # Safety
/// `p` is NULL or points to a valid, initialized `T` that nothing else reads or writes for `'a`.
pub(crate) unsafe fn try_mut<'a, T>(p: *mut T, what: &str) -> FfiResult<&'a mut T> {
    check_aligned(p, what)?;
    // SAFETY: non-NULL and aligned (checked); valid and unshared for `'a` by the caller's
    // contract.
    unsafe { p.as_mut() }.ok_or_else(|| null(what))
}

/// A checked output pointer: written once, on success.
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    /// Writes the output (without reading or dropping what the caller's memory held).
    pub(crate) fn write(self, v: T) {
        // SAFETY: `try_out` checked non-NULL and alignment; its caller promised validity for writes.
        unsafe { self.0.write(v) }
    }
}

/// An output pointer, checked now and written later with [`Out::write`].
///
/// # Safety
/// `p` is NULL or valid for writing a `T` until the `Out` is written or dropped.
pub(crate) unsafe fn try_out<T>(p: *mut T, what: &str) -> FfiResult<Out<T>> {
    if p.is_null() {
        return Err(null(what));
    }
    check_aligned(p, what)?;
    Ok(Out(p))
}

fn check_slice<T>(p: *const T, len: usize, what: &str) -> FfiResult<bool> {
    if len == 0 {
        return Ok(false);
    }
    if p.is_null() {
        return Err(null(what));
    }
    check_aligned(p, what)?;
    if len
        .checked_mul(size_of::<T>().max(1))
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(Fail::invalid(format!("{what}: length {len} is absurd")));
    }
    Ok(true)
}

/// An input array of `len` elements. NULL is accepted when `len` is 0.
///
/// # Safety
/// When `len > 0`, `p` is NULL or points to `len` initialized `T`s that nothing writes for `'a`.
pub(crate) unsafe fn try_slice<'a, T>(p: *const T, len: usize, what: &str) -> FfiResult<&'a [T]> {
    if !check_slice(p, len, what)? {
        return Ok(&[]);
    }
    // SAFETY: non-NULL, aligned and at most isize::MAX bytes (checked); the caller promises
    // `len` valid elements.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// An output array of `len` elements. NULL is accepted when `len` is 0.
///
/// # Safety
/// When `len > 0`, `p` is NULL or points to `len` `T`s writable for `'a`, which no other
/// argument of the call overlaps unless the call checks (see [`disjoint`]).
pub(crate) unsafe fn try_slice_mut<'a, T: Copy>(
    p: *mut T,
    len: usize,
    what: &str,
) -> FfiResult<&'a mut [T]> {
    if !check_slice(p, len, what)? {
        return Ok(&mut []);
    }
    // SAFETY: as in `try_slice`; the caller promises `len` writable elements. `T: Copy` types
    // here are plain integers and floats, valid for any bit pattern the caller's memory holds.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

/// A caller buffer's bytes, for [`disjoint`].
pub(crate) type Span<'s> = (*const u8, usize, &'s str);

/// Refuses output buffers that overlap each other or an input (Rust may not alias an output
/// with anything else).
pub(crate) fn disjoint(outputs: &[Span<'_>], inputs: &[Span<'_>]) -> FfiResult {
    let overlap = |(a, alen, _): Span<'_>, (b, blen, _): Span<'_>| {
        let (a0, b0) = (a as usize, b as usize);
        alen > 0 && blen > 0 && a0 < b0.saturating_add(blen) && b0 < a0.saturating_add(alen)
    };
    for (i, &o) in outputs.iter().enumerate() {
        for &x in outputs[i + 1..].iter().chain(inputs) {
            if overlap(o, x) {
                return Err(Fail::invalid(format!("{} and {} overlap", o.2, x.2)));
            }
        }
    }
    Ok(())
}

/// Bytes spanned by a caller array, for [`disjoint`].
pub(crate) fn span<T>(p: *const T, len: usize, what: &str) -> Span<'_> {
    (p.cast(), len.saturating_mul(size_of::<T>()), what)
}

/// A checked output array of a type with invalid bit patterns (a C enum): written element by
/// element through the pointer, never read, never made into a Rust reference.
pub(crate) struct OutSlice<T> {
    p: *mut T,
    len: usize,
}

impl<T> OutSlice<T> {
    /// Writes `items` from the start (at most `len`).
    pub(crate) fn write_from(self, items: impl IntoIterator<Item = T>) {
        for (i, v) in items.into_iter().take(self.len).enumerate() {
            // SAFETY: `i < len`; `try_out_slice` checked the pointer, its caller promised `len`
            // writable elements.
            unsafe { self.p.add(i).write(v) }
        }
    }
}

/// An output array of `len` elements, checked now and written later. NULL is accepted when
/// `len` is 0.
///
/// # Safety
/// When `len > 0`, `p` is NULL or points to `len` `T`s writable until the `OutSlice` is used.
pub(crate) unsafe fn try_out_slice<T>(p: *mut T, len: usize, what: &str) -> FfiResult<OutSlice<T>> {
    check_slice(p, len, what)?;
    Ok(OutSlice { p, len })
}

/// A path from a NUL-terminated C string (any bytes on Unix; UTF-8 elsewhere).
///
/// # Safety
/// `p` is NULL or a NUL-terminated string readable for the call.
pub(crate) unsafe fn try_path(p: *const c_char, what: &str) -> FfiResult<std::path::PathBuf> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-NULL; NUL-terminated and readable by the caller's contract.
    let bytes = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes();
    if bytes.is_empty() {
        return Err(Fail::invalid(format!("{what} is empty")));
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(std::ffi::OsStr::from_bytes(bytes).into())
    }
    #[cfg(not(unix))]
    {
        std::str::from_utf8(bytes)
            .map(Into::into)
            .map_err(|_| Fail::invalid(format!("{what} is not UTF-8")))
    }
}

/// A UTF-8 string from a NUL-terminated C string.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string readable for `'a`.
pub(crate) unsafe fn try_str<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-NULL; NUL-terminated and readable by the caller's contract.
    let bytes = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes();
    std::str::from_utf8(bytes).map_err(|_| Fail::invalid(format!("{what} is not UTF-8")))
}

/// Copies `msg` into `buf` (`len` bytes) NUL-terminated, truncated at a character boundary if
/// needed. Returns the bytes written, not counting the NUL.
///
/// # Safety
/// `buf` is NULL or valid for writing `len` bytes.
pub(crate) unsafe fn write_message(msg: &str, buf: *mut c_char, len: usize) -> usize {
    if buf.is_null() || len == 0 {
        return 0;
    }
    let mut n = msg.len().min(len - 1);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: `n + 1 <= len` bytes of `buf` are writable (caller's contract); `msg` is a
    // separate Rust string.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
        buf.add(n).write(0);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_a_code_and_a_message() {
        let r = boundary("sb_test", || panic!("boom {}", 7));
        assert_eq!(r, sb_result::Panic);
        assert_eq!(last_error(), "sb_test: panic: boom 7");
        let r = boundary("sb_test2", || Err(Fail::invalid("bad")));
        assert_eq!(r, sb_result::InvalidArgument);
        assert_eq!(last_error(), "sb_test2: bad");
        assert_eq!(boundary("ok", || Ok(())), sb_result::Ok);
        // success leaves the last failure's message in place
        assert_eq!(last_error(), "sb_test2: bad");
    }

    #[test]
    fn pointer_checks() {
        // SAFETY: NULL is allowed by every helper's contract.
        unsafe {
            assert_eq!(
                try_ref::<u64>(std::ptr::null(), "p").unwrap_err().code,
                sb_result::NullParameter
            );
            assert!(
                try_slice::<u64>(std::ptr::null(), 0, "p")
                    .unwrap()
                    .is_empty()
            );
            assert_eq!(
                try_slice::<u64>(std::ptr::null(), 3, "p").unwrap_err().code,
                sb_result::NullParameter
            );
            assert_eq!(
                try_out::<u64>(std::ptr::null_mut(), "p")
                    .err()
                    .unwrap()
                    .code,
                sb_result::NullParameter
            );
        }
        let xs = [0u64; 4];
        let odd = xs.as_ptr().cast::<u8>().wrapping_add(1).cast::<u64>();
        // SAFETY: the misaligned pointer is refused before anything reads through it.
        let e = unsafe { try_slice(odd, 1, "odd") }.unwrap_err();
        assert_eq!(e.code, sb_result::InvalidArgument);
        // SAFETY: as above.
        let e = unsafe { try_slice(xs.as_ptr(), usize::MAX / 4, "huge") }.unwrap_err();
        assert_eq!(e.code, sb_result::InvalidArgument);
        let p = xs.as_ptr();
        let q = p.wrapping_add(2);
        assert!(disjoint(&[span(p, 2, "a"), span(q, 2, "b")], &[]).is_ok());
        assert!(disjoint(&[span(p, 3, "a"), span(q, 2, "b")], &[]).is_err());
        assert!(disjoint(&[span(p, 3, "a")], &[span(q, 2, "b")]).is_err());
        assert!(disjoint(&[span(p, 0, "a"), span(p, 2, "b")], &[]).is_ok());
        // inputs may overlap each other
        assert!(disjoint(&[], &[span(p, 3, "a"), span(q, 2, "b")]).is_ok());
    }

    #[test]
    fn messages_are_truncated_and_terminated() {
        let mut buf = [0x7f as c_char; 8];
        // SAFETY: `buf` has 8 writable bytes.
        let n = unsafe { write_message("héllo world", buf.as_mut_ptr(), 3) };
        // "hé" is 3 bytes; only 2 fit before the NUL, and 'é' may not be split
        assert_eq!(n, 1);
        assert_eq!(buf[1], 0);
        // SAFETY: as above.
        let n = unsafe { write_message("ok", buf.as_mut_ptr(), 8) };
        assert_eq!((n, buf[2]), (2, 0));
        for c in 0..=16u32 {
            assert_ne!(sb_result::message(c), "unknown result code");
        }
        assert_eq!(sb_result::message(17), "unknown result code");
    }
}
