"""RemoteConsumer / RemoteProducer: the Consumer and Producer API against a node service on
another host, over ZeroMQ (endpoint "tcp://host:port", the node's ``remote_port``).

Same method names, arguments, messages and exceptions as the local clients; what differs:

- every call is a round trip to the node (a DEALER socket; see ``asapo_hpc.node.remote``
  for the wire format) and carries the beamtime token: refusals raise
  AsapoAuthorizationError with the node's reason;
- ``Message.data`` is a read-only view of the received ZeroMQ frame (no copy after the
  network), valid as long as you keep the Message;
- ``get_next(meta_only=True)`` does not fetch the bytes (``data`` is empty, ``size`` says
  how many there are). The local Consumer may hand them anyway where that is free; never
  read ``data`` after asking for meta_only;
- ``get_next_batch`` is one round trip for up to 256 messages (their bytes as the frames
  of one multipart reply, zero-copy on the node); ``acknowledge_batch`` one for the acks;
- datasets (``get_next_dataset``, ``get_dataset_by_id``, ``get_last_dataset``) come as one
  reply with a frame per part, read by the node from its HDF5 files;
- ``get_unacknowledged_messages`` / ``get_last_acknowledged_message`` (ASAPO's names)
  answer for the groups the node's catalog keeps: dataset groups and groups reading a
  stream from disk. The local Consumer has no such calls;
- ``delete_stream`` needs a token with ``write`` (it destroys records), from a consumer too.

Quality of service of claims. A remote member that makes no call for the node's
``remote_lease_s`` (30 s by default) is presumed gone and its unacknowledged messages go to
other members. While this consumer holds claims, a daemon thread pings the node every
``remote_lease_s / 3`` on its own socket (``keepalive=True``, the default), so a worker that
spends long on a message keeps it; only a process that died or cannot reach the node
loses its claims (after one lease). What still bounds the time on a message, as for local
members, is the ring's lease (``lease_s``) or ``set_resend_nacs``. ``close()`` gives the
claims back at once.

A node that does not answer within the call's wait plus ``io_timeout_ms`` raises
AsapoUnavailableServiceError. The request may still be carried out later (it is queued
until the node is reachable), as with any network client.

Sends are synchronous (one round trip each); the node copies the bytes into its ring. A
message larger than the source's ring is refused here, before sending (AsapoWrongInputError:
the limit comes from the node's ``ping`` reply, asked once per producer).
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import zmq

from asapo_hpc import errors
from asapo_hpc.client._common import DEFAULT_STREAM, encode_meta
from asapo_hpc.client.message import Message, OwnedMessage
from asapo_hpc.client.streams import LOCATION_WAIT_S, Dataset
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
MIN_KEEPALIVE_S = 0.05
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
    raise cls(message)


class _Connection:
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


class _KeepAlive:
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


class RemoteBatch(list):
    """The Messages of one ``get_next_batch``, with MessageBatch's helpers; acknowledge it
    whole with ``acknowledge_batch``."""

    @property
    def ids(self) -> list[int]:
        return [m.id for m in self]

    def buffers(self) -> list[memoryview]:
        """Each message's bytes (read-only views of the received frames, no copy)."""
        return [m.buffer for m in self]

    def arrays(self, dtype: Any = np.uint8, shape: tuple[int, ...] | None = None
               ) -> list[np.ndarray]:
        """Each message's data as a view of `dtype` (and `shape`), without a copy."""
        return [m.array(dtype, shape) for m in self]

    def __repr__(self) -> str:
        return f"RemoteBatch({len(self)} messages, ids {self.ids[:3]}...)"


def _check_min_size(min_size: int) -> int:
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
        raise AsapoWrongInputError(f"min_size must be an integer >= 0, got {min_size!r}")
    return min_size


class RemoteConsumer:
    """``Consumer``'s calls against a remote node service (see the module docstring)."""

    def __init__(self, endpoint: str, beamtime: str, data_source: str, token: str, *,
                 timeout_ms: int = 1000, io_timeout_ms: int = IO_TIMEOUT_MS,
                 keepalive: bool = True):
        self._conn = _Connection(endpoint, beamtime, data_source, token, io_timeout_ms)
        self.beamtime, self.data_source = beamtime, data_source
        self.timeout_ms = int(timeout_ms)
        self._stream_index: dict[str, int] = {}
        self._stream_names: list[str] = []
        self._claims: set[tuple[str, str, int]] = set()  # (group, stream, id) held here
        self._keepalive_on = bool(keepalive)
        self._keepalive: _KeepAlive | None = None

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

    def _claimed(self, group_id: str, messages: Iterable[Message]) -> None:
        """Note claims (the keep-alive pings while there are some)."""
        for msg in messages:
            self._claims.add((group_id, msg.stream, msg.id))
        if self._claims and self._keepalive_on and self._keepalive is None:
            try:
                lease_s = float(self._conn.info()["lease_s"])
            except AsapoError:  # the message is delivered; the next claim tries again
                return
            self._keepalive = _KeepAlive(self._conn.endpoint, self._conn.envelope,
                                         self._claims, max(MIN_KEEPALIVE_S, lease_s / 3))
            weakref.finalize(self, self._keepalive.stop)  # a consumer never closed

    def get_next(self, group_id: str, meta_only: bool = False, stream: str | None = None,
                 timeout_ms: int | None = None) -> Message:
        """Claim the next message for `group_id` (see Consumer.get_next)."""
        wait = self.timeout_ms if timeout_ms is None else int(timeout_ms)
        result, frame = self._conn.call("get_next", {
            "group": group_id, "stream": stream, "timeout_ms": wait,
            "meta_only": bool(meta_only)}, wait_ms=wait)
        msg = self._message(result, frame, _CLAIMED)
        self._claimed(group_id, (msg,))
        return msg

    def get_next_batch(self, group_id: str, n: int, stream: str | None = None,
                       timeout_ms: int | None = None) -> RemoteBatch:
        """Claim up to `n` (<= 256) messages in one round trip; waits only for the first
        (see Consumer.get_next_batch). Acknowledge with ``acknowledge_batch``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise AsapoWrongInputError(f"n must be an integer >= 1, got {n!r}")
        wait = self.timeout_ms if timeout_ms is None else int(timeout_ms)
        result, frames = self._conn.call_frames("get_next_batch", {
            "group": group_id, "n": min(n, 256), "stream": stream, "timeout_ms": wait},
            wait_ms=wait)
        batch = RemoteBatch(self._message(r, f, _CLAIMED)
                            for r, f in zip(result["messages"], frames, strict=True))
        self._claimed(group_id, batch)
        return batch

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
        self._claims.discard((group_id, stream_name, data_id))

    def acknowledge_batch(self, group_id: str, messages: Iterable[Message]) -> int:
        """Acknowledge several messages in one round trip; returns how many were still
        held by this consumer (see Consumer.acknowledge_batch)."""
        pairs = [self._claim(m, None) for m in messages]
        if not pairs:
            return 0
        done = self._conn.call("acknowledge_batch", {
            "group": group_id, "messages": [[s, i] for i, s in pairs]})[0]
        for data_id, stream in pairs:
            self._claims.discard((group_id, stream, data_id))
        return done

    def neg_acknowledge(self, group_id: str, id: int | Message, delay_ms: int = 0,
                        stream: str | None = None) -> None:
        """Give the message back to the group: redelivered after delay_ms (to any member)."""
        data_id, stream_name = self._claim(id, stream)
        self._conn.call("neg_acknowledge", {"group": group_id, "id": data_id,
                                            "stream": stream_name, "delay_ms": delay_ms})
        self._claims.discard((group_id, stream_name, data_id))

    def set_resend_nacs(self, resend: bool, delay_ms: int, attempts: int) -> None:
        """ASAPO's resend settings for the groups this consumer uses (see Consumer)."""
        self._conn.call("set_resend_nacs", {"resend": resend, "delay_ms": delay_ms,
                                            "attempts": attempts})

    # -- datasets -----------------------------------------------------------------------------

    def _dataset(self, result: dict[str, Any], frames: list[zmq.Frame]) -> Dataset:
        """The Dataset of a reply; AsapoPartialDataError carrying it when it is partial."""
        parts = [self._message(r, f, _NOT_CLAIMED)
                 for r, f in zip(result["parts"], frames, strict=True)]
        dataset = Dataset(result["id"], result["size"], result["timestamp"], parts)
        if result.get("partial"):
            raise AsapoPartialDataError(result["partial"], partial_data=dataset)
        return dataset

    def get_next_dataset(self, group_id: str, min_size: int = 0, stream: str = DEFAULT_STREAM,
                         timeout_ms: int | None = None) -> Dataset:
        """The group's next complete dataset, to exactly one member of the group; after the
        timeout a partial one with at least `min_size` parts (AsapoPartialDataError whose
        ``partial_data`` is the Dataset). See Consumer.get_next_dataset."""
        wait = self.timeout_ms if timeout_ms is None else int(timeout_ms)
        result, frames = self._conn.call_frames("get_next_dataset", {
            "group": group_id, "min_size": _check_min_size(min_size), "stream": stream,
            "timeout_ms": wait}, wait_ms=wait + LOCATION_WAIT_S * 1000)
        return self._dataset(result, frames)

    def get_dataset_by_id(self, id: int, stream: str = DEFAULT_STREAM,
                          min_size: int = 0) -> Dataset:
        """Dataset `id` (see Consumer.get_dataset_by_id)."""
        result, frames = self._conn.call_frames("get_dataset_by_id", {
            "id": id, "stream": stream, "min_size": _check_min_size(min_size)},
            wait_ms=LOCATION_WAIT_S * 1000)
        return self._dataset(result, frames)

    def get_last_dataset(self, min_size: int = 0, stream: str = DEFAULT_STREAM) -> Dataset:
        """The newest complete dataset (see Consumer.get_last_dataset)."""
        result, frames = self._conn.call_frames("get_last_dataset", {
            "stream": stream, "min_size": _check_min_size(min_size)},
            wait_ms=LOCATION_WAIT_S * 1000)
        return self._dataset(result, frames)

    def acknowledge_dataset(self, group_id: str, dataset: Dataset | int,
                            stream: str = DEFAULT_STREAM) -> None:
        """The group processed this dataset (needed with set_resend_nacs)."""
        data_id = dataset.id if isinstance(dataset, Dataset) else dataset
        self._conn.call("acknowledge_dataset", {"group": group_id, "id": data_id,
                                                "stream": stream})

    def neg_acknowledge_dataset(self, group_id: str, dataset: Dataset | int, delay_ms: int = 0,
                                stream: str = DEFAULT_STREAM) -> None:
        """Give the dataset back to the group: delivered again after delay_ms."""
        data_id = dataset.id if isinstance(dataset, Dataset) else dataset
        self._conn.call("neg_acknowledge_dataset", {"group": group_id, "id": data_id,
                                                    "delay_ms": delay_ms, "stream": stream})

    def get_unacknowledged_messages(self, group_id: str, from_id: int = 0, to_id: int = 0,
                                    stream: str = DEFAULT_STREAM) -> list[int]:
        """ASAPO's call: ids in [from_id, to_id] (0: first / last) the group has not
        acknowledged; for groups the catalog keeps (datasets, disk reads), else
        AsapoWrongInputError."""
        return self._conn.call("get_unacknowledged_messages", {
            "group": group_id, "from_id": from_id, "to_id": to_id, "stream": stream})[0]

    def get_last_acknowledged_message(self, group_id: str,
                                      stream: str = DEFAULT_STREAM) -> int | None:
        """ASAPO's call: the largest id the group acknowledged, None when none (catalog
        groups only, as get_unacknowledged_messages)."""
        return self._conn.call("get_last_acknowledged_message", {
            "group": group_id, "stream": stream})[0]

    # -- streams and metadata -----------------------------------------------------------------

    def get_stream_list(self, from_stream: str = "", filter: str = "all"
                        ) -> list[dict[str, Any]]:
        return self._conn.call("get_stream_list", {"from_stream": from_stream,
                                                   "filter": filter})[0]

    def get_current_size(self, stream: str = DEFAULT_STREAM,
                         include_incomplete: bool = True) -> int:
        return self._conn.call("get_current_size", {
            "stream": stream, "include_incomplete": include_incomplete})[0]

    def get_current_dataset_count(self, stream: str = DEFAULT_STREAM,
                                  include_incomplete: bool = True) -> int:
        """ASAPO's name for ``get_current_size`` of a dataset stream."""
        return self.get_current_size(stream, include_incomplete)

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

    def delete_stream(self, stream: str = DEFAULT_STREAM, error_on_not_exist: bool = True,
                      delete_meta: bool = True) -> bool:
        """Delete the stream's catalog records, group progress and (with delete_meta) its
        metadata on the node; True if it existed. Needs a token with ``write``."""
        return _delete_stream(self._conn, stream, error_on_not_exist, delete_meta)

    # -- life cycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Give back what this member holds (best effort) and close the socket."""
        if self._keepalive is not None:
            self._keepalive.stop()
        if self._conn.closed:
            return
        try:
            self._conn.call("close", {})
        except AsapoError:
            pass  # the node is gone or refuses: its lease releases our messages
        self._claims.clear()
        self._conn.close()

    def __enter__(self) -> RemoteConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _delete_stream(conn: _Connection, stream: str, error_on_not_exist: bool,
                   delete_meta: bool) -> bool:
    return conn.call("delete_stream", {"stream": stream,
                                       "error_on_not_exist": error_on_not_exist,
                                       "delete_meta": delete_meta})[0]


def _send_buffer(data: Any) -> memoryview:
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
        if not auto_id and (not isinstance(id, (int, np.integer)) or isinstance(id, bool)
                            or id <= 0):
            raise AsapoWrongInputError(f"message id must be an integer >= 1, got {id!r}")
        buffer = _send_buffer(data)
        self._check_size(buffer.nbytes)
        args = {"id": 0 if auto_id else int(id), "auto_id": bool(auto_id), "stream": stream,
                "name": name, "meta_json": meta_b.decode() if meta_b else None,
                "dataset": _dataset_list(dataset), "timeout_ms": self.timeout_ms}
        data_id = self._conn.call("send", args, buffer, wait_ms=self._wait_ms)[0]
        if callback is not None:
            callback({"id": data_id, "stream": stream, "size": buffer.nbytes}, None)
        return data_id

    def _check_size(self, nbytes: int) -> None:
        """Refuse what the node's ring cannot take before sending it (see module doc)."""
        limit = self._conn.info()["max_message_bytes"]
        if nbytes > limit:
            raise AsapoWrongInputError(
                f"message of {nbytes} bytes is larger than source {self.data_source!r} "
                f"takes: its ring holds {limit} bytes (name and metadata included); split "
                "it, or give the source a bigger ring")

    def next_id(self, stream: str = DEFAULT_STREAM) -> int:
        """Take the next auto id of `stream` (shared with every producer of the source)."""
        return self._conn.call("next_id", {"stream": stream})[0]

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

    def delete_stream(self, stream: str = DEFAULT_STREAM, error_on_not_exist: bool = True,
                      delete_meta: bool = True) -> bool:
        """Delete the stream's catalog records, group progress and (with delete_meta) its
        metadata on the node; True if it existed (see Producer.delete_stream)."""
        return _delete_stream(self._conn, stream, error_on_not_exist, delete_meta)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RemoteProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dataset_list(dataset: tuple[int, int] | None) -> list[int] | None:
    """(substream, size) as the wire's list, checked as the local producer does."""
    if dataset is None:
        return None
    try:
        substream, size = (int(v) for v in dataset)
    except (TypeError, ValueError):
        raise AsapoWrongInputError(f"dataset must be (substream, size), got {dataset!r}") \
            from None
    if not 1 <= substream <= size:
        raise AsapoWrongInputError(
            f"dataset=({substream}, {size}): substream counts from 1 up to size")
    return [substream, size]
