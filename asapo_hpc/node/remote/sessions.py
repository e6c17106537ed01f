"""Remote members (see Remote members in the package docstring): one Session per client
session id, with its own ring Consumer once it uses a group, the messages it holds, and the
acks / nacks waiting for ZeroMQ to let go of those messages' bytes (see Copies)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from asapo_hpc.client import Consumer
from asapo_hpc.errors import AsapoError, AsapoUnavailableServiceError
from asapo_hpc.node.events import event
from asapo_hpc.node.remote.counters import RemoteCounters
from asapo_hpc.node.remote.parking import ParkingLot
from asapo_hpc.node.remote.wire import BadRequest, Held, Request

MAX_SESSIONS = 256  # remote members at once (each is a ring member: see max_members)
_SESSION_ID = re.compile(r"[0-9a-f]{16,64}")


@dataclass
class Session:
    """One remote client: its own ring member (Consumer) once it uses a group."""

    id: str
    source: str
    last_seen: float
    consumer: Consumer | None = None
    held: dict[tuple[str, str, int], Held] = field(default_factory=dict)
    deferred: list[tuple[zmq.MessageTracker, Callable[[], None]]] = field(default_factory=list)
    parked: int = 0

    def when_sent(self, held: Held, action: Callable[[], None]) -> None:
        """Hand the slot back now if ZeroMQ is done with its bytes, else once it is."""
        if held.tracker is None or held.tracker.done:
            action()
        else:
            self.deferred.append((held.tracker, action))

    def run_deferred(self, wait: bool) -> None:
        """Acks / nacks that waited for ZeroMQ to let go of the message's bytes."""
        pending = []
        for tracker, action in self.deferred:
            if tracker.done or wait:
                try:
                    action()
                except AsapoError as exc:  # the client was told "ok"; the log says more
                    event(logging.WARNING, "remote_deferred_ack_failed", session=self.id,
                          error=str(exc))
            else:
                pending.append((tracker, action))
        self.deferred = pending


class Sessions:
    """The live sessions; `new_member(source)` makes a session's ring Consumer. A session
    that makes no request for `lease_s` (and has none parked) is ended by housekeeping."""

    def __init__(self, new_member: Callable[[str], Consumer], parking: ParkingLot,
                 counters: RemoteCounters, lease_s: float):
        self._new_member, self._parking, self._counters = new_member, parking, counters
        self.lease_s = lease_s
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, request: Request) -> Session:
        """The request's session, made on first use; refreshes its lease."""
        sid = request.header.get("session")
        if not isinstance(sid, str) or not _SESSION_ID.fullmatch(sid):
            raise BadRequest("group operations need 'session': 16..64 lowercase hex digits")
        session = self._sessions.get(sid)
        if session is None:
            if len(self._sessions) >= MAX_SESSIONS:
                self._counters.refused("busy")
                raise AsapoUnavailableServiceError(
                    f"this node serves {MAX_SESSIONS} remote consumers at once; try later")
            session = self._sessions[sid] = Session(sid, request.source, time.monotonic())
        elif session.source != request.source:
            raise BadRequest(f"session {sid} belongs to source {session.source!r}")
        session.last_seen = time.monotonic()
        return session

    def find(self, request: Request) -> Session | None:
        """The live session the request names, if there is one (never makes one)."""
        sid = request.header.get("session")
        return self._sessions.get(sid) if isinstance(sid, str) else None

    def member(self, session: Session) -> Consumer:
        if session.consumer is None:  # this client's own ring member
            session.consumer = self._new_member(session.source)
        return session.consumer

    def housekeeping(self, now: float) -> None:
        """Run the acks ZeroMQ released; end the sessions that outlived their lease."""
        for session in list(self._sessions.values()):
            session.run_deferred(wait=False)
            if session.parked == 0 and now - session.last_seen > self.lease_s:
                self.end(session, "remote_client_expired")

    def end(self, session: Session, why: str) -> None:
        """Close the member: messages it still holds go back to their groups now."""
        self._sessions.pop(session.id, None)
        self._parking.cancel(session, AsapoUnavailableServiceError(
            f"the session ended ({why})"))
        session.run_deferred(wait=True)
        if session.consumer is not None:
            session.consumer.close()
        if why != "client_closed" or session.held:
            event(logging.INFO, why, session=session.id, source=session.source,
                  released=sorted(f"{s}/{i}" for _, s, i in session.held))

    def end_all(self, why: str) -> None:
        for session in list(self._sessions.values()):
            self.end(session, why)
