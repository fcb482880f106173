//! The one error type of the engine.

use std::path::PathBuf;

/// Everything that can go wrong in a call. Invalid input is always an `Err`, never a panic, and a
/// call that returns an `Err` has changed nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument is out of its documented range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Two arrays that must have the same length do not.
    #[error("length mismatch: {what} has {got} elements, expected {expected}")]
    LengthMismatch {
        /// Which argument.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length it must have.
        expected: usize,
    },
    /// No customer with this id is in the store.
    #[error("unknown customer {0}")]
    UnknownCustomer(u64),
    /// A customer with this id is already in the store.
    #[error("customer {0} already exists")]
    DuplicateCustomer(u64),
    /// The store has no free slot.
    #[error(
        "store is full ({capacity} customers); grow it with Engine::grow(new_capacity) \
         (for example to {suggested})"
    )]
    StoreFull {
        /// Its capacity.
        capacity: u64,
        /// A capacity that would do (twice the current one).
        suggested: u64,
    },
    /// Another process holds the store open for writing.
    #[error(
        "store {0} is locked by another writer (only one process may open a store for writing)"
    )]
    Locked(PathBuf),
    /// A mutating call on a store opened read-only.
    #[error("store was opened read-only")]
    ReadOnly,
    /// The file (a store, its events sidecar, or a model file) is not valid; it was not
    /// modified.
    #[error("{path}: not a valid shadowbucket file: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An I/O error, with the file it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub(crate) fn bad_file(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
