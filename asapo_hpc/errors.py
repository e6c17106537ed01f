"""The one exception hierarchy of asapo_hpc, mirroring ASAPO's consumer and producer errors.

Every error names what happened and what to do about it. C error codes (negative errno
values from csrc/) map to these classes through ``ERRNO_TO_ERROR`` in one place only.
"""

from __future__ import annotations

import errno as _errno


class AsapoError(Exception):
    """Base of every error raised by asapo_hpc."""


class AsapoWrongInputError(AsapoError, ValueError):
    """The caller passed something invalid (bad name, id <= 0, oversized message, ...)."""


class AsapoNoDataError(AsapoError):
    """Nothing arrived before the timeout; the stream is not finished, try again later."""


class AsapoEndOfStreamError(AsapoNoDataError):
    """The consumer is at the end of the stream (the stream may still grow)."""


class AsapoStreamFinishedError(AsapoEndOfStreamError):
    """The stream was finished by its producer; ``next_stream`` names its successor,
    ``stream`` the finished stream and ``last_id`` its last message id (when known)."""

    def __init__(self, message: str, next_stream: str | None = None, *,
                 stream: str | None = None, last_id: int | None = None):
        super().__init__(message)
        self.next_stream = next_stream
        self.stream = stream
        self.last_id = last_id


class AsapoPartialDataError(AsapoError):
    """A dataset is incomplete; ``partial_data`` holds the parts that did arrive."""

    def __init__(self, message: str, partial_data: object = None):
        super().__init__(message)
        self.partial_data = partial_data


class AsapoTimeoutError(AsapoError, TimeoutError):
    """An operation did not complete in time (a full ring, a missing service)."""


class AsapoRingFullError(AsapoTimeoutError):
    """The producer waited its full-ring timeout for space; some durable group lags."""


class AsapoUnavailableServiceError(AsapoError):
    """A segment, file or service this call needs does not exist or cannot be reached."""


class AsapoCorruptSegmentError(AsapoUnavailableServiceError):
    """A shared-memory segment failed validation (magic, version, sizes or an offset)."""


class AsapoConfigMismatchError(AsapoWrongInputError):
    """A process opened a segment with settings that contradict the ones it was created with."""


class AsapoLeaseExpiredError(AsapoError):
    """A message was acknowledged after its lease expired and it went to another member."""


class AsapoInterruptedTransactionError(AsapoError):
    """An operation was interrupted (signal, shutdown) before completing."""


class AsapoLocalIOError(AsapoError, OSError):
    """A local file could not be read or written."""


class AsapoDataNotInCacheError(AsapoNoDataError):
    """The message left the ring and is not on disk either."""


class AsapoUnsupportedClientError(AsapoError):
    """The client speaks a protocol version this server does not support."""


class AsapoAuthorizationError(AsapoError, PermissionError):
    """A token is missing, invalid, expired, or lacks the access type the request needs."""


# Negative errno from the C core -> exception class. The message comes from the caller,
# which knows the context; this table only picks the class.
ERRNO_TO_ERROR: dict[int, type[AsapoError]] = {
    _errno.EINVAL: AsapoWrongInputError,
    _errno.EMSGSIZE: AsapoWrongInputError,
    _errno.ENAMETOOLONG: AsapoWrongInputError,
    _errno.ENOENT: AsapoUnavailableServiceError,
    _errno.EBADMSG: AsapoCorruptSegmentError,
    _errno.EPROTO: AsapoCorruptSegmentError,
    _errno.ETIMEDOUT: AsapoTimeoutError,
    _errno.EAGAIN: AsapoNoDataError,
    _errno.ENOSPC: AsapoRingFullError,
    _errno.ESTALE: AsapoLeaseExpiredError,
    _errno.EEXIST: AsapoConfigMismatchError,
    _errno.EINTR: AsapoInterruptedTransactionError,
    _errno.EACCES: AsapoAuthorizationError,
    _errno.EPERM: AsapoAuthorizationError,
    _errno.EUSERS: AsapoUnavailableServiceError,  # a member, group or stream table is full
    _errno.EBADF: AsapoWrongInputError,  # a closed producer or consumer
}


# What to do, for the errors whose cure is not in the caller's own message.
ERRNO_HINTS: dict[int, str] = {
    _errno.ENOSPC: "; the ring stayed full for the producer's whole timeout: space is reused "
                   "only after every durable consumer group acknowledged it, so start or speed "
                   "up the consumers of the lagging group (see Consumer.group_stats; members "
                   "must acknowledge what they processed, or use Consumer(auto_ack=True)), "
                   "retire groups no longer wanted, or raise full_timeout_s or slot_count",
    _errno.EBADF: ": this producer or consumer was closed; open a new one",
}


def error_for(code: int, message: str) -> AsapoError:
    """Build the exception for a negative errno ``code`` returned by the C core."""
    cls = ERRNO_TO_ERROR.get(-code, AsapoError)
    return cls(f"{message}{ERRNO_HINTS.get(-code, '')} ({_errno.errorcode.get(-code, code)})")
