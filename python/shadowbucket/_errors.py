"""The exceptions of shadowbucket: all under :class:`Error`, with builtins where natural.

=========================  ==============================  =====================================
class                      also a                          raised for
=========================  ==============================  =====================================
``InvalidArgumentError``   ``ValueError``                  an argument out of range, arrays of
                                                           different lengths, a wrong shape, a
                                                           non-contiguous array
``ArgumentTypeError``      ``TypeError``                   an array of the wrong dtype, or not
                                                           an array
``UnknownCustomerError``   ``LookupError``                 no customer with this id
``DuplicateCustomerError`` ``ValueError``                  the id is already in the store
``StoreFullError``                                         no free slot (``Engine.grow``)
``LockedError``                                            another process writes the store
``ReadOnlyError``                                          a change on a read-only engine
``BadFileError``                                           the file is not a valid store
``StorageError``           ``OSError``                     any other I/O error (``errno``,
                                                           ``filename`` set)
``NotFoundError``          ``FileNotFoundError``           a missing file
``AccessDeniedError``      ``PermissionError``             a file one may not read or write
``AlreadyExistsError``     ``FileExistsError``             ``Engine.create`` on an existing file
``ClosedError``            ``ValueError``                  a call on a closed engine
``InternalError``          ``RuntimeError``                a bug in the engine (it is closed)
=========================  ==============================  =====================================
"""

from __future__ import annotations


class Error(Exception):
    """Base class of every exception shadowbucket raises."""


class InvalidArgumentError(Error, ValueError):
    """An argument is out of range, or arrays do not fit together."""


class ArgumentTypeError(Error, TypeError):
    """An argument has the wrong type (e.g. an array of the wrong dtype)."""


class UnknownCustomerError(Error, LookupError):
    """No customer with this id is in the store."""


class DuplicateCustomerError(Error, ValueError):
    """A customer with this id is already in the store."""


class StoreFullError(Error):
    """The store has no free slot; grow it with ``Engine.grow``."""


class LockedError(Error):
    """Another process holds the store open for writing."""


class ReadOnlyError(Error):
    """A change was asked of an engine opened read-only."""


class BadFileError(Error):
    """The file is not a valid store (it was not modified)."""


class StorageError(Error, OSError):
    """An I/O error; ``errno``, ``strerror`` and ``filename`` are set."""


class NotFoundError(StorageError, FileNotFoundError):
    """The file does not exist."""


class AccessDeniedError(StorageError, PermissionError):
    """The file may not be read or written."""


class AlreadyExistsError(StorageError, FileExistsError):
    """The file already exists."""


class ClosedError(Error, ValueError):
    """The engine is closed."""


class InternalError(Error, RuntimeError):
    """The engine failed internally (a bug); it has been closed."""


__all__ = [
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
    "InternalError",
]
