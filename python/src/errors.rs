//! One conversion from the engine's errors (and the binding's own failures) to Python exceptions.
//!
//! The exception classes are defined in Python (`shadowbucket/_errors.py`) so that they can derive
//! from both `shadowbucket.Error` and a builtin (`ValueError`, `FileNotFoundError`, ...); the
//! classes are looked up once and cached.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use shadowbucket::Error as CoreError;

/// Why a call into the engine failed.
#[derive(Debug)]
pub enum Failure {
    /// The engine returned an error.
    Core(CoreError),
    /// The engine was closed (or never opened).
    Closed,
    /// The engine panicked; it has been closed.
    Panic(String),
}

impl From<CoreError> for Failure {
    fn from(e: CoreError) -> Self {
        Failure::Core(e)
    }
}

/// The exception classes, by name in `shadowbucket._errors`.
fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    macro_rules! cached {
        ($($n:literal),*) => {
            match name {
                $($n => {
                    static CELL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
                    Ok(CELL.import(py, "shadowbucket._errors", $n)?.clone())
                })*
                _ => Ok(py.import("shadowbucket._errors")?.getattr(name)?.cast_into()?),
            }
        };
    }
    cached!(
        "Error",
        "InvalidArgumentError",
        "ArgumentTypeError",
        "UnknownCustomerError",
        "DuplicateCustomerError",
        "StoreFullError",
        "LockedError",
        "ReadOnlyError",
        "BadFileError",
        "StorageError",
        "NotFoundError",
        "AccessDeniedError",
        "AlreadyExistsError",
        "ClosedError",
        "InternalError"
    )
}

/// An exception of class `name` built from `args`; if even that fails, the failure itself.
fn raise<'py, A>(py: Python<'py>, name: &str, args: A) -> PyErr
where
    A: pyo3::call::PyCallArgs<'py>,
{
    match class(py, name).and_then(|c| c.call1(args)) {
        Ok(v) => PyErr::from_value(v),
        Err(e) => e,
    }
}

/// `shadowbucket.InvalidArgumentError` (a `ValueError`) with this message.
pub fn invalid(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    raise(py, "InvalidArgumentError", (msg.into(),))
}

/// `shadowbucket.ArgumentTypeError` (a `TypeError`) with this message.
pub fn wrong_type(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    raise(py, "ArgumentTypeError", (msg.into(),))
}

/// The Python exception for a failure.
pub fn to_py(py: Python<'_>, f: Failure) -> PyErr {
    let e = match f {
        Failure::Closed => {
            return raise(py, "ClosedError", ("the engine is closed",));
        }
        Failure::Panic(msg) => {
            return raise(
                py,
                "InternalError",
                (format!(
                    "internal error in the engine ({msg}); the engine was closed: reopen the \
                     store (its unfinished transaction is rolled back)"
                ),),
            );
        }
        Failure::Core(e) => e,
    };
    let msg = e.to_string();
    match &e {
        CoreError::InvalidArgument(_) | CoreError::LengthMismatch { .. } => {
            raise(py, "InvalidArgumentError", (msg,))
        }
        CoreError::UnknownCustomer(_) => raise(py, "UnknownCustomerError", (msg,)),
        CoreError::DuplicateCustomer(_) => raise(py, "DuplicateCustomerError", (msg,)),
        CoreError::StoreFull { .. } => raise(py, "StoreFullError", (msg,)),
        CoreError::Locked(_) => raise(py, "LockedError", (msg,)),
        CoreError::ReadOnly => raise(py, "ReadOnlyError", (msg,)),
        CoreError::BadFile { .. } => raise(py, "BadFileError", (msg,)),
        CoreError::Io { path, source } => {
            let name = match source.kind() {
                std::io::ErrorKind::NotFound => "NotFoundError",
                std::io::ErrorKind::PermissionDenied => "AccessDeniedError",
                std::io::ErrorKind::AlreadyExists => "AlreadyExistsError",
                _ => "StorageError",
            };
            // OSError's (errno, strerror, filename) form, so `e.errno` and `e.filename` are set.
            let errno = source.raw_os_error().unwrap_or(0);
            let text = source.to_string();
            let strerror = match text.rfind(" (os error ") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            raise(py, name, (errno, strerror, path.display().to_string()))
        }
        _ => raise(py, "Error", (msg,)),
    }
}

/// `Result<T, Failure>` into `PyResult<T>`.
pub trait IntoPyResult<T> {
    /// Converts the failure, if any, into its Python exception.
    fn py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, Failure> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|f| to_py(py, f))
    }
}

impl<T> IntoPyResult<T> for Result<T, CoreError> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, Failure::Core(e)))
    }
}
