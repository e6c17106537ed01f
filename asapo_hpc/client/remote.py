"""RemoteConsumer / RemoteProducer: the Consumer and Producer API against a node service on
another host, over ZeroMQ (endpoint "tcp://host:port", the node's ``remote_port``).

Same method names, arguments, messages and exceptions as the local clients; what differs:

- every call is a round trip to the node (a DEALER socket; see ``asapo_hpc.node.remote``
  for the wire format) and carries the beamtime token: refusals raise
  AsapoAuthorizationError with the node's reason;
- ``Message.data`` is a read-only view of the received ZeroMQ frame (no copy after the
  network), valid as long as you keep the Message;
- ``get_next(meta_only=True)`` does not fetch the bytes (``data`` is empty, ``size`` says
  how many there are);
- a remote member that makes no call for the node's ``remote_lease_s`` (30 s by default)
  is presumed gone and its unacknowledged messages go to other members; ``close()`` gives
  them back at once;
- a node that does not answer within the call's wait plus ``io_timeout_ms`` raises
  AsapoUnavailableServiceError. The request may still be carried out later (it is queued
  until the node is reachable), as with any network client.

Sends are synchronous (one round trip each); the node copies the bytes into its ring.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from asapo_hpc import errors
from asapo_hpc.client._common import DEFAULT_STREAM, encode_meta
from asapo_hpc.client.message import Message, OwnedMessage
from asapo_hpc.errors import (
    AsapoError,
    AsapoPartialDataError,
    AsapoStreamFinishedError,
    AsapoUnavailableServiceError,
    AsapoWrongInputError,
)

REMOTE_SCHEME = "tcp://"
PROTOCOL_VERSION = 1
IO_TIMEOUT_MS = 5000
_NOT_CLAIMED = 0xFFFFFFFF  # group handle of get_last / get_by_id copies (as consumer.py)
_CLAIMED = 0
_EMPTY = np.zeros(0, np.uint8)
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
    if cls is AsapoPartialDataError:
        raise cls(message)
    raise cls(message)


class _Connection:
    """One DEALER socket to the node; requests and replies matched by request id."""

    def __init__(self, endpoint: str, beamtime: str, data_source: str, token: str,
                 io_timeout_ms: int, producer_type: str | None = None):
        self.endpoint = endpoint
        self._envelope = {"v": PROTOCOL_VERSION, "token": token, "beamtime": beamtime,
                          "source": data_source, "session": secrets.token_hex(16)}
        if producer_type is not None:
            self._envelope["type"] = producer_type
        self._io_timeout_ms = int(io_timeout_ms)
        self._rids = itertools.count(1)
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
        """Send one request, wait for its reply; (result, data frame or None)."""
        if self._socket.closed:
            raise AsapoWrongInputError("this client is closed")
        rid = next(self._rids)
        header = json.dumps({**self._envelope, "rid": rid, "op": op, "args": args},
                            separators=(",", ":")).encode()
        frames = [header] if data is None else [header, data]
        limit_ms = wait_ms + self._io_timeout_ms
        try:
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._no_answer(op, limit_ms)
        return self._reply(op, rid, time.monotonic() + limit_ms / 1000, limit_ms)

    def _reply(self, op: str, rid: int, deadline: float,
               limit_ms: float) -> tuple[Any, zmq.Frame | None]:
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
            return reply.get("result"), (parts[1] if len(parts) > 1 else None)

    def _no_answer(self, op: str, limit_ms: float) -> None:
        raise AsapoUnavailableServiceError(
            f"no answer from the node at {self.endpoint} within {limit_ms:.0f} ms ({op}): is "
            "`asapo-hpc serve --remote-port` running there and reachable?")

    @property
    def session(self) -> str:
        return self._envelope["session"]

    def close(self) -> None:
        self._socket.close(linger=0)


class RemoteConsumer:
    """``Consumer``'s calls against a remote node service (see the module docstring)."""

    def __init__(self, endpoint: str, beamtime: str, data_source: str, token: str, *,
                 timeout_ms: int = 1000, io_timeout_ms: int = IO_TIMEOUT_MS):
        self._conn = _Connection(endpoint, beamtime, data_source, token, io_timeout_ms)
        self.beamtime, self.data_source = beamtime, data_source
        self.timeout_ms = int(timeout_ms)
        self._stream_index: dict[str, int] = {}
        self._stream_names: list[str] = []

    # -- messages ---------------------------------------------------------------------------

    def _stream_name(self, idx: int) -> str:  # Message.stream asks its consumer
        return self._stream_names[idx]

    def _message(self, result: dict[str, Any], frame: zmq.Frame | None,
                 group: int) -> Message:
        stream = result["stream"]
        idx = self._stream_index.get(stream)
        if idx is None:
            idx = self._stream_index[stream] = len(self._stream_names)
            self._stream_names.append(stream)
        name = result["name"].encode()
        meta = json.dumps(result["meta"], separators=(",", ":")).encode() \
            if result["meta"] else b""
        substream, size = result["dataset"] or (0, 0)
        fields = (result["seq"], result["id"], 0, result["size"], 0, result["timestamp"],
                  len(name), len(meta), idx, 0, substream, size, result["attempts"], 0)
        data = _EMPTY if frame is None else np.frombuffer(frame.buffer, dtype=np.uint8)
        return OwnedMessage(fields, self, group, data, name + meta)  # type: ignore[arg-type]

    def get_next(self, group_id: str, meta_only: bool = False, stream: str | None = None,
                 timeout_ms: int | None = None) -> Message:
        """Claim the next message for `group_id` (see Consumer.get_next)."""
        wait = self.timeout_ms if timeout_ms is None else int(timeout_ms)
        result, frame = self._conn.call("get_next", {
            "group": group_id, "stream": stream, "timeout_ms": wait,
            "meta_only": bool(meta_only)}, wait_ms=wait)
        return self._message(result, frame, _CLAIMED)

    def get_by_id(self, id: int, stream: str = DEFAULT_STREAM) -> Message:
        """A copy of message `id` of `stream`, from the node's ring or disk."""
        result, frame = self._conn.call("get_by_id", {"id": id, "stream": stream})
        return self._message(result, frame, _NOT_CLAIMED)

    def get_last(self, stream: str | None = None) -> Message:
        """A copy of the newest message (see Consumer.get_last)."""
        result, frame = self._conn.call("get_last", {"stream": stream})
        return self._message(result, frame, _NOT_CLAIMED)

    def _claim(self, id: int | Message, stream: str | None) -> tuple[int, str]:
        if isinstance(id, Message):
            if id._consumer is not self:
                raise AsapoWrongInputError(
                    f"{id!r} was delivered to another Consumer: acknowledge it with that one")
            if id._group == _NOT_CLAIMED:
                raise AsapoWrongInputError(
                    f"{id!r} is a copy from get_last / get_by_id and was not claimed: there "
                    "is nothing to acknowledge (get_next claims messages)")
            return id.id, id.stream
        return id, stream or DEFAULT_STREAM

    def acknowledge(self, group_id: str, id: int | Message, stream: str | None = None) -> None:
        """Acknowledge message `id` (or a Message) for the group."""
        data_id, stream_name = self._claim(id, stream)
        self._conn.call("acknowledge", {"group": group_id, "id": data_id,
                                        "stream": stream_name})

    def neg_acknowledge(self, group_id: str, id: int | Message, delay_ms: int = 0,
                        stream: str | None = None) -> None:
        """Give the message back to the group: redelivered after delay_ms (to any member)."""
        data_id, stream_name = self._claim(id, stream)
        self._conn.call("neg_acknowledge", {"group": group_id, "id": data_id,
                                            "stream": stream_name, "delay_ms": delay_ms})

    def set_resend_nacs(self, resend: bool, delay_ms: int, attempts: int) -> None:
        """ASAPO's resend settings for the groups this consumer uses (see Consumer)."""
        self._conn.call("set_resend_nacs", {"resend": resend, "delay_ms": delay_ms,
                                            "attempts": attempts})

    # -- streams and metadata -----------------------------------------------------------------

    def get_stream_list(self, from_stream: str = "", filter: str = "all"
                        ) -> list[dict[str, Any]]:
        return self._conn.call("get_stream_list", {"from_stream": from_stream,
                                                   "filter": filter})[0]

    def get_current_size(self, stream: str = DEFAULT_STREAM,
                         include_incomplete: bool = True) -> int:
        return self._conn.call("get_current_size", {
            "stream": stream, "include_incomplete": include_incomplete})[0]

    def query_messages(self, query: str, stream: str = DEFAULT_STREAM) -> list[dict[str, Any]]:
        return self._conn.call("query_messages", {"query": query, "stream": stream})[0]

    def get_stream_info(self, stream: str = DEFAULT_STREAM) -> dict[str, Any]:
        return self._conn.call("get_stream_info", {"stream": stream})[0]

    def get_last_stream(self) -> dict[str, Any] | None:
        return self._conn.call("get_last_stream", {})[0]

    def get_source_list(self) -> list[str]:
        return self._conn.call("get_source_list", {})[0]

    def get_beamtime_meta(self) -> dict[str, Any]:
        return self._conn.call("get_beamtime_meta", {})[0]

    def get_stream_meta(self, stream: str = DEFAULT_STREAM) -> dict[str, Any]:
        return self._conn.call("get_stream_meta", {"stream": stream})[0]

    # -- life cycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Give back what this member holds (best effort) and close the socket."""
        if self._conn._socket.closed:
            return
        try:
            self._conn.call("close", {})
        except AsapoError:
            pass  # the node is gone or refuses: its lease releases our messages
        self._conn.close()

    def __enter__(self) -> RemoteConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _send_buffer(data: Any) -> Any:
    """`data` as a contiguous buffer pyzmq can send without copying."""
    try:
        view = memoryview(data)
    except TypeError:
        raise AsapoWrongInputError(
            f"data of type {type(data).__name__} does not expose a contiguous buffer; pass "
            "bytes, bytearray, memoryview or a numpy array") from None
    if not view.c_contiguous:
        raise AsapoWrongInputError("data is not C-contiguous: pass np.ascontiguousarray(data) "
                                   "(that copies)")
    return view.cast("B") if view.ndim != 1 or view.format != "B" else view


class RemoteProducer:
    """``Producer``'s calls against a remote node service (see the module docstring).

    `type` is ASAPO's producer type: "processed" sends need a token with ``write``, "raw"
    ones ``writeraw``. `timeout_ms`: how long a send waits for room in a full ring (None:
    the ring's full_timeout_s).
    """

    def __init__(self, endpoint: str, beamtime: str, data_source: str, token: str, *,
                 type: str = "processed", timeout_ms: int | None = None,
                 io_timeout_ms: int = IO_TIMEOUT_MS):
        self._conn = _Connection(endpoint, beamtime, data_source, token, io_timeout_ms,
                                 producer_type=type)
        self.beamtime, self.data_source = beamtime, data_source
        self.timeout_ms = timeout_ms
        # without a timeout the node waits up to the ring's full_timeout_s: allow a minute
        self._wait_ms = 60_000 if timeout_ms is None else int(timeout_ms)

    def send(self, id: int, data: Any, meta: Any = None, *, stream: str = DEFAULT_STREAM,
             dataset: tuple[int, int] | None = None, name: str = "", auto_id: bool = False,
             callback: Callable[[dict, Exception | None], None] | None = None) -> int:
        """Publish `data` with `meta` into the node's ring; returns the message id (see
        Producer.send). AsapoRingFullError when the ring stayed full for the timeout."""
        meta_b = encode_meta(meta)  # the local producer's checks and messages
        args = {"id": 0 if auto_id else id, "auto_id": bool(auto_id), "stream": stream,
                "name": name, "meta_json": meta_b.decode() if meta_b else None,
                "dataset": list(dataset) if dataset is not None else None,
                "timeout_ms": self.timeout_ms}
        if not auto_id and (not isinstance(id, (int, np.integer)) or isinstance(id, bool)):
            raise AsapoWrongInputError(f"message id must be an integer >= 1, got {id!r}")
        args["id"] = int(args["id"])
        data_id = self._conn.call("send", args, _send_buffer(data), wait_ms=self._wait_ms)[0]
        if callback is not None:
            callback({"id": data_id, "stream": stream, "size": memoryview(data).nbytes}, None)
        return data_id

    def send_stream_finished_flag(self, stream: str, last_id: int,
                                  next_stream: str | None = None) -> None:
        """Mark `stream` finished after `last_id`; consumers at its end learn `next_stream`."""
        self._conn.call("send_stream_finished_flag", {
            "stream": stream, "last_id": last_id, "next_stream": next_stream,
            "timeout_ms": self.timeout_ms}, wait_ms=self._wait_ms)

    def send_stream_meta(self, metadata: dict | str, mode: str = "replace", upsert: bool = True,
                         stream: str = DEFAULT_STREAM,
                         callback: Callable[[dict, Exception | None], None] | None = None
                         ) -> None:
        """Write the stream's metadata into the node's catalog (see Producer)."""
        self._conn.call("send_stream_meta", {"metadata": metadata, "mode": mode,
                                             "upsert": upsert, "stream": stream})
        if callback is not None:
            callback({"stream": stream, "mode": mode, "op": "stream_meta"}, None)

    def send_beamtime_meta(self, metadata: dict | str, mode: str = "replace",
                           upsert: bool = True,
                           callback: Callable[[dict, Exception | None], None] | None = None
                           ) -> None:
        """Write the beamtime metadata into the node's catalog (see Producer)."""
        self._conn.call("send_beamtime_meta", {"metadata": metadata, "mode": mode,
                                               "upsert": upsert})
        if callback is not None:
            callback({"mode": mode, "op": "beamtime_meta"}, None)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RemoteProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
