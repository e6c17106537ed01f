"""Requests that wait (see Waiting in the package docstring): a handler with nothing to
deliver yet raises Park, and the server thread retries the attempt every PARK_POLL_S until
it stops failing with what it waits out, or its deadline passes. The server thread never
blocks in the ring or the catalog."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asapo_hpc.errors import AsapoError, AsapoNoDataError, AsapoWrongInputError
from asapo_hpc.node.remote.counters import RemoteCounters
from asapo_hpc.node.remote.wire import Request, internal_error

if TYPE_CHECKING:
    from asapo_hpc.node.remote.sessions import Session

MAX_PARKED_PER_SESSION = 4

Attempt = Callable[[], tuple[Any, Any]]  # (result, data) of a reply
RetryOn = Callable[[AsapoError], bool]  # whether an attempt's error is worth waiting out
ReplyError = Callable[[bytes, Request | None, AsapoError], None]


class NotYet(AsapoNoDataError):
    """Raised by a parked attempt that is not done yet (retried until its deadline)."""


def not_yet(exc: AsapoError) -> bool:
    return isinstance(exc, NotYet)


class Park(Exception):
    """Raised by a handler: retry `attempt` until it stops failing with `retry_on`."""

    def __init__(self, attempt: Attempt, retry_on: RetryOn, wait_s: float,
                 session: Session | None):
        super().__init__("parked")
        self.attempt, self.retry_on, self.wait_s, self.session = attempt, retry_on, wait_s, \
            session


def try_or_park(attempt: Attempt, retry_on: RetryOn, wait_s: float,
                session: Session | None) -> tuple[Any, Any]:
    """`attempt` now; if it fails with what `retry_on` waits out, park it for `wait_s`
    (counted against `session`'s waiting requests)."""
    try:
        return attempt()
    except AsapoError as exc:
        if retry_on(exc) and wait_s > 0:
            raise Park(attempt, retry_on, wait_s, session) from None
        raise


@dataclass
class _Parked:
    request: Request
    attempt: Attempt
    retry_on: RetryOn
    deadline: float
    session: Session | None


class ParkingLot:
    """The parked requests; each is answered through `reply` / `reply_error` once it is
    done, fails, times out or is cancelled."""

    def __init__(self, reply: Callable[[Request, Any, Any], None], reply_error: ReplyError,
                 counters: RemoteCounters):
        self._reply, self._reply_error, self._counters = reply, reply_error, counters
        self._parked: list[_Parked] = []

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, request: Request, park: Park) -> None:
        session = park.session
        if session is not None:
            if session.parked >= MAX_PARKED_PER_SESSION:
                self._counters.refused("busy")
                raise AsapoWrongInputError(f"more than {MAX_PARKED_PER_SESSION} waiting "
                                           "requests of one client")
            session.parked += 1
        self._parked.append(_Parked(request, park.attempt, park.retry_on,
                                    time.monotonic() + park.wait_s, session))

    def retry(self) -> None:
        """Try each parked request once; answer those that are done or out of time."""
        still: list[_Parked] = []
        for parked in self._parked:
            request = parked.request
            try:
                result, data = parked.attempt()
            except AsapoError as exc:
                if parked.retry_on(exc) and time.monotonic() < parked.deadline:
                    still.append(parked)
                    continue
                self._unpark(parked)
                self._reply_error(request.identity, request, exc)
                continue
            except Exception as exc:
                self._unpark(parked)
                self._reply_error(request.identity, request, internal_error(request.op, exc))
                continue
            self._unpark(parked)
            self._reply(request, result, data)
        self._parked = still

    @staticmethod
    def _unpark(parked: _Parked) -> None:
        if parked.session is not None:
            parked.session.parked -= 1
            parked.session.last_seen = time.monotonic()

    def cancel(self, session: Session, exc: AsapoError) -> None:
        """Answer every request `session` has parked with `exc` (the session ended)."""
        for parked in [p for p in self._parked if p.session is session]:
            self._parked.remove(parked)
            self._reply_error(parked.request.identity, parked.request, exc)
