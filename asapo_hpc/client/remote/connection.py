"""The transport of the remote clients: one DEALER socket per client, requests and replies
matched by request id, the node's error replies raised as asapo_hpc.errors classes, and the
keep-alive thread (see the package docstring; the wire format is ``asapo_hpc.node.remote``'s).
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from typing import Any

import zmq

from asapo_hpc import errors
from asapo_hpc.errors import (
    AsapoError,
    AsapoStreamFinishedError,
    AsapoUnavailableServiceError,
    AsapoWrongInputError,
)

REMOTE_SCHEME = "tcp://"
PROTOCOL_VERSION = 1
IO_TIMEOUT_MS = 5000
_ERRORS: dict[str, type[AsapoError]] = {
    name: cls for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, AsapoError)}


def is_remote(endpoint: str) -> bool:
    """True for the endpoints of a node's remote port ("tcp://host:port")."""
    return isinstance(endpoint, str) and endpoint.startswith(REMOTE_SCHEME)


def _raise_reply(reply: dict[str, Any]) -> None:
    """Raise the exception the node named (only classes of asapo_hpc.errors)."""
    cls = _ERRORS.get(reply.get("error"), AsapoError)  # type: ignore[arg-type]
    message = str(reply.get("message", "the node refused the request"))
    details = reply.get("details") or {}
    if cls is AsapoStreamFinishedError:
        raise cls(message, details.get("next_stream"), stream=details.get("stream"),
                  last_id=details.get("last_id"))
    raise cls(message)


class Connection:
    """One DEALER socket to the node; requests and replies matched by request id."""

    def __init__(self, endpoint: str, beamtime: str, data_source: str, token: str,
                 io_timeout_ms: int, producer_type: str | None = None):
        self.endpoint = endpoint
        self.envelope = {"v": PROTOCOL_VERSION, "token": token, "beamtime": beamtime,
                         "source": data_source, "session": secrets.token_hex(16)}
        if producer_type is not None:
            self.envelope["type"] = producer_type
        self._io_timeout_ms = int(io_timeout_ms)
        self._rids = itertools.count(1)
        self._info: dict[str, Any] | None = None
        self._socket = zmq.Context.instance().socket(zmq.DEALER)
        self._socket.linger = 0
        try:
            self._socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close()
            raise AsapoUnavailableServiceError(f"bad node endpoint {endpoint!r}: {exc}; use "
                                               "'tcp://host:port'") from None

    def call(self, op: str, args: dict[str, Any], data: Any = None,
             wait_ms: float = 0) -> tuple[Any, zmq.Frame | None]:
        """Send one request, wait for its reply; (result, first data frame or None)."""
        result, frames = self.call_frames(op, args, data, wait_ms)
        return result, (frames[0] if frames else None)

    def call_frames(self, op: str, args: dict[str, Any], data: Any = None,
                    wait_ms: float = 0) -> tuple[Any, list[zmq.Frame]]:
        """Send one request, wait for its reply; (result, every data frame)."""
        if self._socket.closed:
            raise AsapoWrongInputError("this client is closed")
        rid = next(self._rids)
        header = json.dumps({**self.envelope, "rid": rid, "op": op, "args": args},
                            separators=(",", ":")).encode()
        frames = [header] if data is None else [header, data]
        limit_ms = wait_ms + self._io_timeout_ms
        try:
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._no_answer(op, limit_ms)
        return self._reply(op, rid, time.monotonic() + limit_ms / 1000, limit_ms)

    def _reply(self, op: str, rid: int, deadline: float,
               limit_ms: float) -> tuple[Any, list[zmq.Frame]]:
        while True:
            left_ms = (deadline - time.monotonic()) * 1000
            if left_ms <= 0 or not self._socket.poll(left_ms):
                self._no_answer(op, limit_ms)
            parts = self._socket.recv_multipart(copy=False)
            try:
                reply = json.loads(parts[0].bytes)
            except ValueError:
                continue  # not from our node service
            if not isinstance(reply, dict) or reply.get("rid") != rid:
                continue  # the late answer to a call that timed out
            if not reply.get("ok"):
                _raise_reply(reply)
            return reply.get("result"), parts[1:]

    def _no_answer(self, op: str, limit_ms: float) -> None:
        raise AsapoUnavailableServiceError(
            f"no answer from the node at {self.endpoint} within {limit_ms:.0f} ms ({op}): is "
            "`asapo-hpc serve --remote-port` running there and reachable?")

    def info(self) -> dict[str, Any]:
        """The node's ping reply (lease, size limits), asked once."""
        if self._info is None:
            self._info = self.call("ping", {})[0]
        return self._info

    @property
    def session(self) -> str:
        return self.envelope["session"]

    @property
    def closed(self) -> bool:
        return self._socket.closed

    def close(self) -> None:
        self._socket.close(linger=0)


class KeepAlive:
    """A daemon thread pinging the node (op "keepalive", its own socket: a ZeroMQ socket
    is for one thread) every `interval_s` while `claims` is not empty."""

    def __init__(self, endpoint: str, envelope: dict[str, Any], claims: set,
                 interval_s: float):
        self._endpoint, self._envelope, self._claims = endpoint, dict(envelope), claims
        self.interval_s = interval_s
        self._stop = threading.Event()
        self.pings = 0
        self._thread = threading.Thread(target=self._run, name="asapo-remote-keepalive",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.linger = 0
        socket.setsockopt(zmq.IMMEDIATE, 1)  # no pings queued while the node is away
        socket.connect(self._endpoint)
        try:
            while not self._stop.wait(self.interval_s):
                if self._claims:
                    self._ping(socket)
        finally:
            socket.close()

    def _ping(self, socket: zmq.Socket) -> None:
        header = json.dumps({**self._envelope, "rid": "keepalive", "op": "keepalive",
                             "args": {}}).encode()
        try:
            socket.send(header, zmq.NOBLOCK)
        except zmq.Again:
            return  # not connected now: the next round tries again
        self.pings += 1
        while socket.poll(self.interval_s * 1000):  # the answer only empties the queue
            socket.recv()
            if not socket.poll(0):
                break

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(1.0)




def delete_stream(conn: Connection, stream: str, error_on_not_exist: bool,
                  delete_meta: bool) -> bool:
    """The node's delete_stream (a write, from consumers and producers alike)."""
    return conn.call("delete_stream", {"stream": stream,
                                       "error_on_not_exist": error_on_not_exist,
                                       "delete_meta": delete_meta})[0]
