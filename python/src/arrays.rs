//! Borrowing numpy arrays as Rust slices, with clear errors.
//!
//! Batch inputs are borrowed without copying, so they must already be what the engine reads: a
//! one-dimensional, C-contiguous array of exactly the named dtype in native byte order. Anything
//! else is refused, never converted behind the caller's back: a wrong dtype (or an object that is
//! not a numpy array at all) raises `shadowbucket.ArgumentTypeError` (a `TypeError`), a wrong
//! number of dimensions, a non-contiguous array or arrays of different lengths raise
//! `shadowbucket.InvalidArgumentError` (a `ValueError`); each message says how to convert (`np.ascontiguousarray(x,
//! dtype=np.uint64)`).

use numpy::prelude::*;
use numpy::{Element, PyArray1, PyReadonlyArray1, PyUntypedArray};
use pyo3::prelude::*;

use crate::errors::{invalid, wrong_type};

/// A numpy dtype the binding takes, with its name for messages.
pub trait Dtype: Element {
    /// numpy's name for it (`"uint64"`).
    const NAME: &'static str;
}

impl Dtype for u64 {
    const NAME: &'static str = "uint64";
}
impl Dtype for u32 {
    const NAME: &'static str = "uint32";
}
impl Dtype for u16 {
    const NAME: &'static str = "uint16";
}
impl Dtype for f64 {
    const NAME: &'static str = "float64";
}

/// `obj` as a read-only one-dimensional array of `T`, or a `TypeError`/`ValueError` naming the
/// argument `what`.
pub fn array1<'py, T: Dtype>(
    obj: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<PyReadonlyArray1<'py, T>> {
    let hint = format!("np.ascontiguousarray({what}, dtype=np.{})", T::NAME);
    if let Ok(a) = obj.cast::<PyArray1<T>>() {
        return a.try_readonly().map_err(|e| {
            invalid(
                obj.py(),
                format!("{what}: the array is in use elsewhere ({e})"),
            )
        });
    }
    match obj.cast::<PyUntypedArray>() {
        Ok(a) if a.ndim() != 1 => Err(invalid(
            obj.py(),
            format!("{what} must be a 1-D array, got shape {:?}", a.shape()),
        )),
        Ok(a) => Err(wrong_type(
            obj.py(),
            format!(
                "{what} must have dtype {} (native byte order), got {}; convert with {hint}",
                T::NAME,
                a.dtype()
            ),
        )),
        Err(_) => Err(wrong_type(
            obj.py(),
            format!(
                "{what} must be a numpy array of {}, got {}; convert with {hint}",
                T::NAME,
                obj.get_type().fully_qualified_name()?
            ),
        )),
    }
}

/// The slice behind `a`, or a `ValueError` for a non-contiguous array.
pub fn slice<'a, T: Dtype>(a: &'a PyReadonlyArray1<'_, T>, what: &str) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| {
        invalid(
            a.py(),
            format!(
                "{what} must be C-contiguous (it is borrowed without copying); convert with \
             np.ascontiguousarray({what})"
            ),
        )
    })
}

/// A `ValueError` unless every length equals `n`.
pub fn same_len(py: Python<'_>, n: usize, lens: &[(&str, usize)], first: &str) -> PyResult<()> {
    for &(what, len) in lens {
        if len != n {
            return Err(invalid(
                py,
                format!(
                    "{what} has {len} elements but {first} has {n}; batch arrays must have the same length"
                ),
            ));
        }
    }
    Ok(())
}
