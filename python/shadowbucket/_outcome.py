"""What happened to a request: the engine's outcome codes."""

from __future__ import annotations

from enum import IntEnum


class Outcome(IntEnum):
    """The outcome of one request.

    Batch calls return these as a ``uint8`` array of the same codes, so
    ``outcomes == Outcome.GRANTED_SHADOW`` works on it.
    """

    GRANTED_SHADOW = 0
    """Granted from the customer's shadow bucket (the fast path)."""
    GRANTED_POOL = 1
    """Granted from the pool (a fallback: the reservation did not cover it)."""
    DENIED_CUSTOMER_LIMIT = 2
    """Denied: the customer's contract is exhausted (an API answers 429)."""
    DENIED_POOL_EXHAUSTED = 3
    """Denied: the shared pool is exhausted (an API sheds load, 503)."""
    EXCEEDS_BURST = 4
    """The request is larger than the customer's burst and can never pass."""
    UNKNOWN_CUSTOMER = 5
    """No such customer (or slot)."""
    INVALID_INPUT = 6
    """The request itself is invalid (zero tokens)."""

    @property
    def granted(self) -> bool:
        """Whether the request was granted."""
        return self in (Outcome.GRANTED_SHADOW, Outcome.GRANTED_POOL)
