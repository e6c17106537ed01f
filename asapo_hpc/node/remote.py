"""The node service's remote endpoint: ASAPO's consumer and producer calls over ZeroMQ.

One ROUTER socket (``remote_host:remote_port``, 127.0.0.1 unless configured otherwise),
served by one thread that alone touches the rings it opens (a Consumer is for one thread).
``asapo_hpc.client.remote`` is the client.

Wire format (version 1). A request is a ZeroMQ multipart message of one or two frames:

    frame 0   UTF-8 JSON object, at most MAX_HEADER_BYTES:
              {"v": 1, "rid": <int, echoed>, "op": "<operation>", "token": "<JWT>",
               "beamtime": "...", "source": "...", "session": "<hex id of the client>",
               "type": "processed" | "raw" (producers), "args": {...}}
    frame 1   the message bytes (op "send" only)

The reply has the same shape: frame 0 ``{"v": 1, "rid": ..., "ok": true, "result": ...}``
or ``{"v": 1, "rid": ..., "ok": false, "error": "<class in asapo_hpc.errors>",
"message": "...", "details": {...}}``; the frames after it carry message bytes:

    get_next, get_by_id, get_last   result: a message (see _message_result); frame 1 its
                                    bytes (none with meta_only)
    get_next_batch                  result {"messages": [message, ...]}; one frame each
    get_next_dataset,               result {"id", "size", "timestamp", "partial": null |
    get_dataset_by_id,              "<why>", "parts": [message, ...]}; one frame per part.
    get_last_dataset                A partial dataset is an ok reply with "partial" set: the
                                    client raises AsapoPartialDataError carrying it
    ping                            result {"protocol", "lease_s", "max_message_bytes" (the
                                    source's ring), "max_frame_bytes" (the socket's limit)}

Operations and their arguments (``args``), by the access the token needs:

    either  ping (read for consumers, write / writeraw for producers: requests with "type")
    read    keepalive; close; get_next {group, stream?, timeout_ms?, meta_only?};
            get_next_batch {group, n, stream?, timeout_ms?}; get_by_id {id, stream?};
            get_last {stream?}; acknowledge / neg_acknowledge {group, id, stream?,
            delay_ms?}; acknowledge_batch {group, messages: [[stream, id], ...]};
            set_resend_nacs {resend, delay_ms, attempts}; get_next_dataset {group,
            min_size?, stream?, timeout_ms?}; get_dataset_by_id {id, min_size?, stream?};
            get_last_dataset {min_size?, stream?}; acknowledge_dataset /
            neg_acknowledge_dataset {group, id, stream?, delay_ms?};
            get_unacknowledged_messages {group, stream?, from_id?, to_id?};
            get_last_acknowledged_message {group, stream?}; get_stream_list,
            get_current_size, query_messages, get_stream_info, get_last_stream,
            get_source_list, get_beamtime_meta, get_stream_meta
    write   send {id, auto_id?, stream?, name?, meta_json?, dataset?: [substream, size],
            timeout_ms?} + frame 1; next_id {stream?}; send_stream_finished_flag;
            send_stream_meta; send_beamtime_meta; delete_stream {stream?,
            error_on_not_exist?, delete_meta?} (deleting is a write, from consumers too)

Access. Every request carries a beamtime token checked by ``asapo_hpc.auth.verify_token``
against the node's secret (signature, expiry, ``bt_<beamtime>``): ``read`` for every read
and group operation, ``write`` to send to a processed source, ``writeraw`` to a raw one (as
ASAPO's receiver). The request must name the node's beamtime and one of its sources.
Refusals are AsapoAuthorizationError replies; nothing is done for them.

Remote members. Each client session (a random id the client makes) gets its own ring
Consumer on first use of a group, i.e. its own ring member: ring groups share work between
remote members exactly as between local ones. A session that makes no request for
``remote_lease_s`` seconds (and has no request waiting) is presumed gone: its Consumer is
closed, so the messages it held go back to their groups at once (redelivered, attempts + 1).
A client's ``close()`` does the same immediately. ``keepalive`` only refreshes a session
(it never makes one): the client sends it from a thread of its own while it holds claims,
so a slow worker is not presumed gone. Beyond that the ring's own lease (``lease_s``, or
``set_resend_nacs``) still bounds every claim, exactly as for local members.

Datasets are the catalog's groups (see ``asapo_hpc.client.streams``): the session's member
takes the group's next id from the catalog (its resend settings apply), and the parts are
read back from the node's HDF5 files (one copy each). A dataset whose parts the sink has
not stored yet waits for them (parked, up to LOCATION_WAIT_S), then goes back to the group
with AsapoDataNotInCacheError, as the local call does. ``get_unacknowledged_messages`` and
``get_last_acknowledged_message`` answer for these catalog groups (and groups reading a
stream from disk); a ring group keeps no per-id acknowledgements, so asking about one is
an AsapoWrongInputError that says so.

Waiting. A ``get_next`` / ``get_next_batch`` / ``get_next_dataset`` with nothing to
deliver, or a ``send`` into a full ring, is parked and retried every PARK_POLL_S (the
catalog every POLL_S) until its timeout: the server thread never blocks in the ring.

Copies. Message bytes leave the ring zero-copy: the reply's data frames are sent from the
views into shared memory, and pyzmq keeps those views (hence the mapping) alive until
ZeroMQ has written them. pyzmq copies frames below its copy_threshold (64 KiB) anyway. A
ring slot is handed back (ack / nack) only after ZeroMQ let go of it (the send's
MessageTracker; one for all frames of a batch); an ack that comes earlier is applied when
it has. When a session expires its claims are released at once; bytes still queued to that
(dead) peer may then be overwritten in the ring, which only that peer could see. Sends copy
twice: ZeroMQ receives into its own buffer, and Producer.send copies that into the ring.
``get_last`` / ``get_by_id`` and dataset parts send the copy the Consumer makes.

meta_only. ``get_next(meta_only=True)`` says the caller does not need the bytes: no data
frame is sent (``size`` still tells how many there are). The local Consumer may hand the
bytes anyway where they cost nothing (a view into its ring); the disk tier leaves them out
as here. Code asking for meta_only must not read ``data``.

Sizes. A send whose bytes exceed the source's ring (slot_size x slot_count) is refused
with AsapoWrongInputError. ZeroMQ's own limit (ZMQ_MAXMSGSIZE, "max_frame_bytes" in the
ping reply) is FRAME_LIMIT_FACTOR times the largest ring, so an oversize frame up to that
gets this clear reply; above it ZeroMQ drops the frame and disconnects the sender, which
RemoteProducer never provokes: it learns both limits from ``ping`` and refuses an
oversize message before sending it.

Bad input. Network bytes are untrusted: a request of the wrong shape, malformed JSON,
a header over MAX_HEADER_BYTES, wrong argument types or an unknown operation gets an
AsapoWrongInputError reply; an unexpected exception gets an AsapoError reply and a log
line; the server keeps serving.

Metrics. ``RemoteServer.counters`` counts requests per (source, op) and refusals per
reason (REFUSALS); ``asapo_hpc.node.metrics`` reads them at scrape time.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from asapo_hpc import errors
from asapo_hpc.auth import access_for_producer_type, load_or_create_secret, verify_token
from asapo_hpc.catalog import DatasetRecord, MessageRecord
from asapo_hpc.client import Consumer, Message, Producer
from asapo_hpc.client.streams import LOCATION_WAIT_S, POLL_S
from asapo_hpc.errors import (
    AsapoDataNotInCacheError,
    AsapoEndOfStreamError,
    AsapoError,
    AsapoNoDataError,
    AsapoPartialDataError,
    AsapoRingFullError,
    AsapoStreamFinishedError,
    AsapoUnavailableServiceError,
    AsapoWrongInputError,
)
from asapo_hpc.node.config import NodeConfig
from asapo_hpc.node.events import event

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_WAIT_MS = 600_000  # longest wait a request may ask for
MAX_SESSIONS = 256  # remote members at once (each is a ring member: see max_members)
MAX_PARKED_PER_SESSION = 4
MAX_BATCH = 256  # messages per get_next_batch (a Consumer's default batch_capacity)
MAX_ACK_BATCH = 4096  # ids per acknowledge_batch request
FRAME_LIMIT_FACTOR = 2  # ZMQ_MAXMSGSIZE = this x the largest ring (+ header): see Sizes
PARK_POLL_S = 0.005
HOUSEKEEPING_S = 0.1
MAX_ID = 2**63 - 1
MAX_DELAY_MS = 10**9  # ~11 days: delays are turned into ns on 64 bits
MAX_ATTEMPTS = 2**31 - 1
MAX_ID_RANGE = 1_000_000  # ids per get_unacknowledged_messages answer
_SESSION_ID = re.compile(r"[0-9a-f]{16,64}")
DEFAULT_STREAM = "default"
# why a request was refused (asapo_remote_refused_total{reason}); a fixed set, so label
# values never come from the network
REFUSALS = ("malformed", "protocol_version", "unknown_op", "token", "beamtime", "source",
            "busy", "oversize")


class _BadRequest(AsapoWrongInputError):
    """A request of the wrong shape (the reply says why); `request`: what was parsed;
    `reason`: the refusal counted for it (one of REFUSALS)."""

    def __init__(self, message: str, request: _Request | None = None,
                 reason: str = "malformed"):
        super().__init__(message)
        self.request, self.reason = request, reason


class _NotYet(AsapoNoDataError):
    """Raised by a parked attempt that is not done yet (retried until its deadline)."""


class RemoteCounters:
    """What the endpoint did: requests per (source, op), refusals per reason, sessions and
    waiting requests. Written by the serving thread, read by the metrics scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = {}
        self._refused: dict[str, int] = dict.fromkeys(REFUSALS, 0)
        self._gauges = {"sessions": 0, "waiting": 0}

    def request(self, source: str, op: str) -> None:
        with self._lock:
            self._requests[source, op] = self._requests.get((source, op), 0) + 1

    def refused(self, reason: str) -> None:
        with self._lock:
            self._refused[reason] += 1

    def gauges(self, sessions: int, waiting: int) -> None:
        with self._lock:
            self._gauges = {"sessions": sessions, "waiting": waiting}

    def snapshot(self) -> dict[str, Any]:
        """{"requests": {(source, op): n}, "refused": {reason: n}, "sessions", "waiting"}."""
        with self._lock:
            return {"requests": dict(self._requests), "refused": dict(self._refused),
                    **self._gauges}


@dataclass
class _Request:
    identity: bytes
    rid: Any
    op: str
    header: dict[str, Any]
    args: dict[str, Any]
    data: zmq.Frame | None

    def arg(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        """Argument `name` checked to be of `kind` (bool is never an int here)."""
        if name not in self.args or (self.args[name] is None and default is None):
            if default is ...:
                raise _BadRequest(f"op {self.op!r}: argument {name!r} is missing")
            return default
        value = self.args[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise _BadRequest(f"op {self.op!r}: argument {name!r} must be of type "
                              f"{'/'.join(k.__name__ for k in kinds)}, got {value!r:.80}")
        return value

    def count(self, name: str, default: Any = ..., low: int = 0, high: int = MAX_ID) -> int:
        """An int argument within [low, high] (ids, sizes: the C core takes 64 bits)."""
        value = self.arg(name, int, default)
        if not low <= value <= high:
            raise _BadRequest(f"op {self.op!r}: argument {name!r} must be in {low}..{high}, "
                              f"got {value}")
        return value

    def stream(self, default: str | None = DEFAULT_STREAM) -> str | None:
        return self.arg("stream", str, default)

    def timeout_s(self, default_s: float) -> float:
        ms = self.arg("timeout_ms", int, None)
        return default_s if ms is None else min(max(ms, 0), MAX_WAIT_MS) / 1000


@dataclass
class _Held:
    """A message a remote member holds, and the tracker of the send of its bytes."""

    msg: Message
    tracker: zmq.MessageTracker | None


@dataclass
class _Session:
    """One remote client: its own ring member (Consumer) once it uses a group."""

    id: str
    source: str
    last_seen: float
    consumer: _NodeConsumer | None = None
    held: dict[tuple[str, str, int], _Held] = field(default_factory=dict)
    deferred: list[tuple[zmq.MessageTracker, Callable[[], None]]] = field(default_factory=list)
    parked: int = 0


@dataclass
class _Parked:
    request: _Request
    attempt: Callable[[], tuple[Any, Any]]
    retry_on: Callable[[AsapoError], bool]
    deadline: float
    session: _Session | None


class _NodeConsumer(Consumer):
    """The server's reader of a source: catalog calls go to the node's catalog file."""

    node_catalog: Any = None

    @property
    def catalog_path(self):  # the node may keep its catalog outside the data root
        return self.node_catalog


class _NodeProducer(Producer):
    """The server's producer of a source: metadata goes to the node's catalog file."""

    node_catalog: Any = None

    @property
    def catalog_path(self):
        return self.node_catalog


def _parse(frames: list[zmq.Frame]) -> _Request:
    """The request in `frames` (identity first); _BadRequest says what is wrong."""
    identity, parts = frames[0].bytes, frames[1:]
    if len(parts) not in (1, 2):
        raise _BadRequest(f"a request is 1 or 2 frames (header, data), got {len(parts)}")
    raw = parts[0].buffer
    if len(raw) > MAX_HEADER_BYTES:
        raise _BadRequest(f"request header of {len(raw)} bytes is oversize: at most "
                          f"{MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting: Recursion
        raise _BadRequest(f"request header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _BadRequest("request header must be a JSON object")
    rid = header.get("rid")
    request = _Request(identity, rid if isinstance(rid, (int, str)) else None, "", header, {},
                       parts[1] if len(parts) == 2 else None)
    if header.get("v") != PROTOCOL_VERSION:
        raise _BadRequest(f"protocol version {header.get('v')!r:.40} is not supported: this "
                          f"node speaks {PROTOCOL_VERSION}", request, "protocol_version")
    op, args = header.get("op"), header.get("args", {})
    if not isinstance(op, str) or not isinstance(args, dict):
        raise _BadRequest("request needs 'op' (a string) and 'args' (an object)", request)
    request.op, request.args = op, args
    return request


def _message_result(msg: Message) -> dict[str, Any]:
    """What the client needs to rebuild the Message (the bytes travel in a frame)."""
    return {"id": msg.id, "seq": msg.seq, "size": msg.size, "timestamp": msg.timestamp,
            "stream": msg.stream, "name": msg.name, "meta": msg.meta,
            "dataset": list(msg.dataset) if msg.dataset else None, "attempts": msg.attempts}


def _record_result(rec: MessageRecord, stream: str) -> dict[str, Any]:
    """_message_result of a dataset part as the catalog keeps it (no ring position)."""
    return {"id": rec.data_id, "seq": 0, "size": rec.size, "timestamp": rec.timestamp,
            "stream": stream, "name": rec.name, "meta": rec.meta_dict(),
            "dataset": [rec.dataset_substream, rec.dataset_size], "attempts": 0}


def _error_name(exc: AsapoError) -> str:
    """The public class the client raises: the nearest one of asapo_hpc.errors."""
    for cls in type(exc).__mro__:
        if cls.__module__ == errors.__name__:
            return cls.__name__
    return "AsapoError"


def _error_details(exc: AsapoError) -> dict[str, Any]:
    if isinstance(exc, AsapoStreamFinishedError):
        return {"next_stream": exc.next_stream, "stream": exc.stream, "last_id": exc.last_id}
    return {}


def _ring_bytes(config: NodeConfig, source: str) -> int:
    """The most bytes one message of `source` can have: its whole ring."""
    ring = config.source(source).ring
    return ring.slot_size * ring.slot_count


class RemoteServer:
    """The ROUTER socket and the thread serving it; ``close()`` after the stop event."""

    def __init__(self, config: NodeConfig, stop: threading.Event):
        self.config = config
        self._stop = stop
        secret_file = config.secret_file or config.data_root / "asapo_hpc_secret.key"
        self._secret = load_or_create_secret(secret_file)
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.linger = 0
        largest = max(_ring_bytes(config, s.name) for s in config.sources)
        # above the largest ring, so an oversize send still gets a clear reply (see Sizes)
        self.max_frame_bytes = FRAME_LIMIT_FACTOR * largest + MAX_HEADER_BYTES
        self._socket.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        port = "*" if config.remote_port == 0 else str(config.remote_port)
        try:
            self._socket.bind(f"tcp://{config.remote_host}:{port}")
        except zmq.ZMQError as exc:
            self._context.destroy(linger=0)
            raise AsapoUnavailableServiceError(
                f"cannot serve remote clients on {config.remote_host}:{port}: {exc}; choose "
                "another remote_port (0 = any free port)") from None
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.counters = RemoteCounters()
        self._sessions: dict[str, _Session] = {}
        self._parked: list[_Parked] = []
        self._readers: dict[str, _NodeConsumer] = {}
        self._producers: dict[str, _NodeProducer] = {}
        self._thread: threading.Thread | None = None
        self._ops = self._operations()

    def _operations(self) -> dict[str, tuple[str, Callable[[_Request], tuple[Any, Any]]]]:
        """op -> (access the token needs, handler returning (result, data))."""
        def read(call: Callable[[_NodeConsumer, _Request], Any]
                 ) -> Callable[[_Request], tuple[Any, Any]]:
            return lambda r: (call(self._reader(r), r), None)

        return {
            "ping": ("role", self._ping),  # producers (with "type") and consumers alike
            "keepalive": ("read", self._keepalive),
            "close": ("read", self._close_session_op),
            "get_next": ("read", self._get_next),
            "get_next_batch": ("read", self._get_next_batch),
            "get_by_id": ("read", self._get_by_id),
            "get_last": ("read", self._get_last),
            "acknowledge": ("read", self._acknowledge),
            "acknowledge_batch": ("read", self._acknowledge_batch),
            "neg_acknowledge": ("read", self._neg_acknowledge),
            "set_resend_nacs": ("read", self._set_resend_nacs),
            "get_next_dataset": ("read", self._get_next_dataset),
            "get_dataset_by_id": ("read", self._get_dataset_by_id),
            "get_last_dataset": ("read", self._get_last_dataset),
            "acknowledge_dataset": ("read", read(lambda c, r: c.acknowledge_dataset(
                r.arg("group", str), r.count("id", low=1), r.stream()))),
            "neg_acknowledge_dataset": ("read", read(lambda c, r: c.neg_acknowledge_dataset(
                r.arg("group", str), r.count("id", low=1),
                r.count("delay_ms", 0, high=MAX_DELAY_MS), r.stream()))),
            "get_unacknowledged_messages": ("read", self._get_unacknowledged),
            "get_last_acknowledged_message": ("read", self._get_last_acknowledged),
            "get_stream_list": ("read", read(lambda c, r: c.get_stream_list(
                r.arg("from_stream", str, ""), r.arg("filter", str, "all")))),
            "get_current_size": ("read", read(lambda c, r: c.get_current_size(
                r.stream(), r.arg("include_incomplete", bool, True)))),
            "query_messages": ("read", read(lambda c, r: c.query_messages(
                r.arg("query", str), r.stream()))),
            "get_stream_info": ("read", read(lambda c, r: c.get_stream_info(r.stream()))),
            "get_last_stream": ("read", read(lambda c, r: c.get_last_stream())),
            "get_source_list": ("read", read(lambda c, r: c.get_source_list())),
            "get_beamtime_meta": ("read", read(lambda c, r: c.get_beamtime_meta())),
            "get_stream_meta": ("read", read(lambda c, r: c.get_stream_meta(r.stream()))),
            "send": ("write", self._send),
            "next_id": ("write", lambda r: (self._producer(r).next_id(r.stream()), None)),
            "send_stream_finished_flag": ("write", self._send_finished),
            "send_stream_meta": ("write", self._send_stream_meta),
            "send_beamtime_meta": ("write", self._send_beamtime_meta),
            "delete_stream": ("write", read(lambda c, r: c.delete_stream(
                r.stream(), r.arg("error_on_not_exist", bool, True),
                r.arg("delete_meta", bool, True)))),
        }

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> RemoteServer:
        # the socket was made in this thread; Thread.start is the barrier ZeroMQ asks for
        # before a socket moves to another thread
        self._thread = threading.Thread(target=self._serve, name="asapo-remote", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout: float | None = None) -> None:
        """Stop serving, release every remote claim (the serving thread does, on its way
        out: sockets and Consumers stay in the thread that uses them)."""
        self._stop.set()
        if self._thread is None:
            self._shutdown()
        else:
            self._thread.join(timeout)

    def _shutdown(self) -> None:
        if self._socket.closed:
            return
        self._socket.close(linger=0)
        self._context.term()  # every queued frame is freed: no view into a ring is in use
        for session in list(self._sessions.values()):
            self._end_session(session, "node_stopping")
        for client in (*self._readers.values(), *self._producers.values()):
            client.close()
        self._readers.clear()
        self._producers.clear()
        self.counters.gauges(0, 0)

    # -- the loop ---------------------------------------------------------------------------

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        next_housekeeping = 0.0
        try:
            while not self._stop.is_set():
                try:
                    next_housekeeping = self._serve_once(poller, next_housekeeping)
                except Exception as exc:  # a bug; keep serving the other clients
                    event(logging.ERROR, "remote_internal_error", op=None, error=repr(exc))
        finally:
            self._shutdown()

    def _serve_once(self, poller: zmq.Poller, next_housekeeping: float) -> float:
        wait_ms = PARK_POLL_S * 1000 if self._parked else HOUSEKEEPING_S * 1000
        if poller.poll(wait_ms):
            for _ in range(64):  # a bounded batch, so parked requests get their turn
                try:
                    frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._handle(frames)
        if self._parked:
            self._retry_parked()
        now = time.monotonic()
        if now >= next_housekeeping:
            self._housekeeping(now)
            next_housekeeping = now + HOUSEKEEPING_S
        return next_housekeeping

    def _handle(self, frames: list[zmq.Frame]) -> None:
        """Answer one request; never raises (network bytes are untrusted)."""
        request: _Request | None = None
        try:
            request = _parse(frames)
            access, handler = self._op(request)
            self._authorize(request, access)
            self._run(request, handler)
        except AsapoError as exc:
            if request is None:
                request = getattr(exc, "request", None)
            if isinstance(exc, _BadRequest):
                self.counters.refused(exc.reason)
            self._reply_error(frames[0].bytes, request, exc)
        except Exception as exc:  # a bug: tell the client, log it, keep serving
            event(logging.ERROR, "remote_internal_error", op=request.op if request else None,
                  error=repr(exc))
            self._reply_error(frames[0].bytes, request,
                              AsapoError(f"internal error of the node service: {exc!r}"))

    def _op(self, request: _Request) -> tuple[str, Callable[[_Request], tuple[Any, Any]]]:
        entry = self._ops.get(request.op)
        if entry is None:
            raise _BadRequest(f"unknown operation {request.op!r:.60}; known: "
                              f"{sorted(self._ops)}", reason="unknown_op")
        source = request.header.get("source")
        known = any(s.name == source for s in self.config.sources)
        self.counters.request(source if known else "unknown", request.op)
        return entry

    def _authorize(self, request: _Request, access: str) -> None:
        """The token check of decision 9; the node's beamtime and sources only."""
        header = request.header
        beamtime, source = header.get("beamtime"), header.get("source")
        if not isinstance(beamtime, str) or not isinstance(source, str):
            raise _BadRequest("request needs 'beamtime' and 'source' (strings)")
        if access == "role":
            access = "write" if "type" in header else "read"
        if access == "write":  # ASAPO: processed sources need write, raw ones writeraw
            access = access_for_producer_type(header.get("type", "processed"))
        try:
            verify_token(self._secret, header.get("token") or "", beamtime=beamtime,
                         access=access)
        except AsapoError as exc:
            self.counters.refused("token")
            event(logging.WARNING, "remote_refused", op=request.op, beamtime=beamtime,
                  source=source, reason=str(exc))
            raise
        if beamtime != self.config.beamtime:
            self.counters.refused("beamtime")
            raise AsapoUnavailableServiceError(
                f"this node serves beamtime {self.config.beamtime!r}, not {beamtime!r}")
        try:
            self.config.source(source)  # AsapoWrongInputError naming the known sources
        except AsapoWrongInputError:
            self.counters.refused("source")
            raise

    def _run(self, request: _Request, handler: Callable[[_Request], tuple[Any, Any]]) -> None:
        """Run `handler`; park it when it asks to wait (see _park)."""
        try:
            result, data = handler(request)
        except _Park as park:
            self._park(request, park)
            return
        self._reply(request, result, data)

    # -- parking ----------------------------------------------------------------------------

    def _park(self, request: _Request, park: _Park) -> None:
        session = park.session
        if session is not None:
            if session.parked >= MAX_PARKED_PER_SESSION:
                self.counters.refused("busy")
                raise AsapoWrongInputError(f"more than {MAX_PARKED_PER_SESSION} waiting "
                                           "requests of one client")
            session.parked += 1
        self._parked.append(_Parked(request, park.attempt, park.retry_on,
                                    time.monotonic() + park.wait_s, session))

    def _retry_parked(self) -> None:
        still: list[_Parked] = []
        for parked in self._parked:
            try:
                result, data = parked.attempt()
            except AsapoError as exc:
                if parked.retry_on(exc) and time.monotonic() < parked.deadline:
                    still.append(parked)
                    continue
                self._unpark(parked)
                self._reply_error(parked.request.identity, parked.request, exc)
                continue
            except Exception as exc:
                self._unpark(parked)
                event(logging.ERROR, "remote_internal_error", op=parked.request.op,
                      error=repr(exc))
                self._reply_error(parked.request.identity, parked.request,
                                  AsapoError(f"internal error of the node service: {exc!r}"))
                continue
            self._unpark(parked)
            self._reply(parked.request, result, data)
        self._parked = still

    def _unpark(self, parked: _Parked) -> None:
        if parked.session is not None:
            parked.session.parked -= 1
            parked.session.last_seen = time.monotonic()

    # -- replies ----------------------------------------------------------------------------

    def _reply(self, request: _Request, result: Any, data: Any) -> None:
        header = json.dumps({"v": PROTOCOL_VERSION, "rid": request.rid, "ok": True,
                             "result": result}, separators=(",", ":"), default=str).encode()
        # copy=False: frames at or above pyzmq's copy_threshold go out without a copy
        self._socket.send_multipart([request.identity, header, *_data_frames(data)],
                                    copy=False)

    def _reply_error(self, identity: bytes, request: _Request | None, exc: AsapoError) -> None:
        header = {"v": PROTOCOL_VERSION, "rid": request.rid if request else None, "ok": False,
                  "error": _error_name(exc), "message": str(exc),
                  "details": _error_details(exc)}
        try:
            self._socket.send_multipart([identity, json.dumps(header, default=str).encode()])
        except zmq.ZMQError as err:  # the peer is gone; nothing to tell
            event(logging.DEBUG, "remote_reply_failed", error=str(err))

    # -- per source clients -----------------------------------------------------------------

    def _node_consumer(self, source: str) -> _NodeConsumer:
        consumer = _NodeConsumer(self.config.beamtime, source, create=False, timeout_ms=0,
                                 data_root=str(self.config.data_root))
        consumer.node_catalog = self.config.catalog_path
        return consumer

    def _reader(self, request: _Request) -> _NodeConsumer:
        source = request.header["source"]
        reader = self._readers.get(source)
        if reader is None:
            reader = self._readers[source] = self._node_consumer(source)
        return reader

    def _producer(self, request: _Request) -> _NodeProducer:
        source = request.header["source"]
        producer = self._producers.get(source)
        if producer is None:  # never waits in the ring: a full ring parks the request
            producer = _NodeProducer(self.config.beamtime, source, create=False, timeout_ms=0,
                                     data_root=str(self.config.data_root))
            producer.node_catalog = self.config.catalog_path
            self._producers[source] = producer
        return producer

    # -- sessions ---------------------------------------------------------------------------

    def _session(self, request: _Request) -> _Session:
        sid = request.header.get("session")
        if not isinstance(sid, str) or not _SESSION_ID.fullmatch(sid):
            raise _BadRequest("group operations need 'session': 16..64 lowercase hex digits")
        source = request.header["source"]
        session = self._sessions.get(sid)
        if session is None:
            if len(self._sessions) >= MAX_SESSIONS:
                self.counters.refused("busy")
                raise AsapoUnavailableServiceError(
                    f"this node serves {MAX_SESSIONS} remote consumers at once; try later")
            session = self._sessions[sid] = _Session(sid, source, time.monotonic())
        elif session.source != source:
            raise _BadRequest(f"session {sid} belongs to source {session.source!r}")
        session.last_seen = time.monotonic()
        return session

    def _member(self, session: _Session) -> _NodeConsumer:
        if session.consumer is None:  # this client's own ring member
            session.consumer = self._node_consumer(session.source)
        return session.consumer

    def _housekeeping(self, now: float) -> None:
        lease = self.config.remote_lease_s
        for session in list(self._sessions.values()):
            self._run_deferred(session, wait=False)
            if session.parked == 0 and now - session.last_seen > lease:
                self._end_session(session, "remote_client_expired")
        self.counters.gauges(len(self._sessions), len(self._parked))

    @staticmethod
    def _run_deferred(session: _Session, wait: bool) -> None:
        """Acks / nacks that waited for ZeroMQ to let go of the message's bytes."""
        pending = []
        for tracker, action in session.deferred:
            if tracker.done or wait:
                try:
                    action()
                except AsapoError as exc:  # the client was told "ok"; the log says more
                    event(logging.WARNING, "remote_deferred_ack_failed", session=session.id,
                          error=str(exc))
            else:
                pending.append((tracker, action))
        session.deferred = pending

    def _end_session(self, session: _Session, why: str) -> None:
        """Close the member: messages it still holds go back to their groups now."""
        self._sessions.pop(session.id, None)
        for parked in [p for p in self._parked if p.session is session]:
            self._parked.remove(parked)
            self._reply_error(parked.request.identity, parked.request,
                              AsapoUnavailableServiceError(f"the session ended ({why})"))
        self._run_deferred(session, wait=True)
        if session.consumer is not None:
            session.consumer.close()
        if why != "client_closed" or session.held:
            event(logging.INFO, why, session=session.id, source=session.source,
                  released=sorted(f"{s}/{i}" for _, s, i in session.held))

    def _ping(self, request: _Request) -> tuple[Any, Any]:
        """What a client needs to know before it sends or holds claims."""
        return {"protocol": PROTOCOL_VERSION, "lease_s": self.config.remote_lease_s,
                "max_message_bytes": _ring_bytes(self.config, request.header["source"]),
                "max_frame_bytes": self.max_frame_bytes}, None

    def _keepalive(self, request: _Request) -> tuple[Any, Any]:
        """Refresh a live session's lease (never makes one); `known` False when it expired."""
        sid = request.header.get("session")
        session = self._sessions.get(sid) if isinstance(sid, str) else None
        if session is None or session.source != request.header["source"]:
            return {"known": False, "held": 0}, None
        session.last_seen = time.monotonic()
        return {"known": True, "held": len(session.held)}, None

    def _close_session_op(self, request: _Request) -> tuple[Any, Any]:
        sid = request.header.get("session")
        session = self._sessions.get(sid) if isinstance(sid, str) else None
        if session is not None:
            self._end_session(session, "client_closed")
        return None, None

    # -- messages ---------------------------------------------------------------------------

    def _get_next(self, request: _Request) -> tuple[Any, Any]:
        session = self._session(request)
        consumer = self._member(session)
        group = request.arg("group", str)
        stream = request.stream(None)
        meta_only = request.arg("meta_only", bool, False)

        def attempt() -> tuple[Any, Any]:
            msg = consumer.get_next(group, meta_only=meta_only, stream=stream, timeout_ms=0)
            held = session.held[(group, msg.stream, msg.id)] = _Held(msg, None)
            return _message_result(msg), (None if meta_only else
                                          _Tracked([held], [msg.buffer]))

        return self._try_or_park(request, attempt, _no_data_yet, request.timeout_s(1.0),
                                 session)

    def _get_next_batch(self, request: _Request) -> tuple[Any, Any]:
        session = self._session(request)
        consumer = self._member(session)
        group = request.arg("group", str)
        stream = request.stream(None)
        n = request.count("n", low=1, high=MAX_BATCH)

        def attempt() -> tuple[Any, Any]:
            messages = list(consumer.get_next_batch(group, n, stream=stream, timeout_ms=0))
            helds = []
            for msg in messages:
                held = session.held[(group, msg.stream, msg.id)] = _Held(msg, None)
                helds.append(held)
            return ({"messages": [_message_result(m) for m in messages]},
                    _Tracked(helds, [m.buffer for m in messages]))

        return self._try_or_park(request, attempt, _no_data_yet, request.timeout_s(1.0),
                                 session)

    def _try_or_park(self, request: _Request, attempt: Callable[[], tuple[Any, Any]],
                     retry_on: Callable[[AsapoError], bool], wait_s: float,
                     session: _Session | None) -> tuple[Any, Any]:
        try:
            return attempt()
        except AsapoError as exc:
            if retry_on(exc) and wait_s > 0:
                raise _Park(attempt, retry_on, wait_s, session) from None
            raise

    def _held(self, request: _Request, session: _Session) -> tuple[str, tuple, _Held]:
        group = request.arg("group", str)
        data_id = request.arg("id", int)
        stream = request.stream()
        key = (group, stream, data_id)
        held = session.held.get(key)
        if held is None:
            raise AsapoWrongInputError(
                f"message id {data_id} of stream {stream!r} is not held by this consumer in "
                f"group {group!r} (already acknowledged, or never delivered here)")
        return group, key, held

    def _acknowledge(self, request: _Request) -> tuple[Any, Any]:
        session = self._session(request)
        group, key, held = self._held(request, session)
        del session.held[key]
        self._when_sent(session, held, lambda: session.consumer.acknowledge(group, held.msg))
        return None, None

    def _acknowledge_batch(self, request: _Request) -> tuple[Any, Any]:
        """Acknowledge [[stream, id], ...] held in one group; how many were held here.
        Messages whose bytes ZeroMQ let go of go to the ring in one call per group handle."""
        session = self._session(request)
        group = request.arg("group", str)
        items = request.arg("messages", list)
        if len(items) > MAX_ACK_BATCH or not all(_is_stream_id(i) for i in items):
            raise _BadRequest(f"op 'acknowledge_batch': 'messages' must be at most "
                              f"{MAX_ACK_BATCH} [stream, id] pairs")
        ready: dict[int, list[Message]] = {}
        done = 0
        for stream, data_id in items:
            held = session.held.pop((group, stream, data_id), None)
            if held is None:
                continue  # not ours (any more): not counted, as Consumer.acknowledge_batch
            done += 1
            if held.tracker is None or held.tracker.done:
                ready.setdefault(held.msg._group, []).append(held.msg)
            else:
                self._when_sent(session, held, _ack_later(session, group, held.msg))
        for messages in ready.values():
            session.consumer.acknowledge_batch(group, messages)
        return done, None

    def _neg_acknowledge(self, request: _Request) -> tuple[Any, Any]:
        session = self._session(request)
        group, key, held = self._held(request, session)
        delay_ms = request.count("delay_ms", 0, high=MAX_DELAY_MS)
        del session.held[key]
        self._when_sent(session, held, lambda: session.consumer.neg_acknowledge(
            group, held.msg, delay_ms))
        return None, None

    @staticmethod
    def _when_sent(session: _Session, held: _Held, action: Callable[[], None]) -> None:
        """Hand the slot back now if ZeroMQ is done with its bytes, else once it is."""
        if held.tracker is None or held.tracker.done:
            action()
        else:
            session.deferred.append((held.tracker, action))

    def _set_resend_nacs(self, request: _Request) -> tuple[Any, Any]:
        session = self._session(request)
        self._member(session).set_resend_nacs(request.arg("resend", bool),
                                              request.count("delay_ms", high=MAX_DELAY_MS),
                                              request.count("attempts", high=MAX_ATTEMPTS))
        return None, None

    def _get_by_id(self, request: _Request) -> tuple[Any, Any]:
        msg = self._reader(request).get_by_id(request.count("id", low=1), request.stream())
        return _message_result(msg), msg.buffer  # a copy the Consumer made: safe to send

    def _get_last(self, request: _Request) -> tuple[Any, Any]:
        msg = self._reader(request).get_last(request.stream(None))
        return _message_result(msg), msg.buffer

    # -- datasets and catalog groups --------------------------------------------------------

    def _get_next_dataset(self, request: _Request) -> tuple[Any, Any]:
        session = self._session(request)
        member = self._member(session)
        group, stream = request.arg("group", str), request.stream()
        min_size = request.count("min_size", 0)
        wait_s = request.timeout_s(1.0)
        deadline = time.monotonic() + wait_s

        def take(now: float) -> tuple[DatasetRecord, str | None]:
            try:  # complete ones only until the deadline (the local call's order)
                return member._group_next(group, stream, 0), None
            except AsapoStreamFinishedError:
                raise
            except AsapoNoDataError:
                if now < deadline:
                    raise _NotYet("no complete dataset yet") from None
            try:
                return member._group_next(group, stream, min_size), None
            except AsapoPartialDataError as exc:
                return exc.partial_data, str(exc)

        def give_back(record: DatasetRecord) -> None:  # as the local call: not lost
            member._catalog().neg_acknowledge(group, member.data_source, stream,
                                              record.data_id)

        delivery = _DatasetDelivery(member, stream, take, give_back, deadline)
        return self._try_or_park(request, delivery.attempt, _not_yet,
                                 wait_s + LOCATION_WAIT_S + 1, session)

    def _get_dataset_by_id(self, request: _Request) -> tuple[Any, Any]:
        reader, stream = self._reader(request), request.stream()
        data_id, min_size = request.count("id", low=1), request.count("min_size", 0)
        return self._dataset_now(request, reader, stream, lambda: reader._catalog(
            ).get_dataset_by_id(reader.data_source, stream, data_id, min_size))

    def _get_last_dataset(self, request: _Request) -> tuple[Any, Any]:
        reader, stream = self._reader(request), request.stream()
        min_size = request.count("min_size", 0)
        return self._dataset_now(request, reader, stream, lambda: reader._catalog(
            ).get_last_dataset(reader.data_source, stream, min_size))

    def _dataset_now(self, request: _Request, reader: _NodeConsumer, stream: str,
                     lookup: Callable[[], DatasetRecord]) -> tuple[Any, Any]:
        """A dataset by lookup (no group): waits only for the sink to store its parts."""
        def take(now: float) -> tuple[DatasetRecord, str | None]:
            try:
                return lookup(), None
            except AsapoPartialDataError as exc:
                return exc.partial_data, str(exc)

        delivery = _DatasetDelivery(reader, stream, take, None, time.monotonic())
        return self._try_or_park(request, delivery.attempt, _not_yet, LOCATION_WAIT_S + 1,
                                 None)

    def _catalog_group(self, request: _Request) -> tuple[Any, str, str, str]:
        """(catalog, group, source, stream) of a group the catalog keeps acks of."""
        reader, group, stream = self._reader(request), request.arg("group", str), \
            request.stream()
        catalog = reader._catalog()
        if not catalog.has_group(group, reader.data_source, stream):
            raise AsapoWrongInputError(
                f"group {group!r} keeps no acknowledgements of stream {stream!r} in the "
                "catalog: only dataset groups (get_next_dataset) and groups reading the "
                "stream from disk do; a ring group's progress is in the ring (see the "
                "asapo_group_* metrics)")
        return catalog, group, reader.data_source, stream

    def _get_unacknowledged(self, request: _Request) -> tuple[Any, Any]:
        """Ids in [from_id, to_id] (0: first / last) not acknowledged, among the stream's
        ids (to_id is clamped to the last one), at most MAX_ID_RANGE per request."""
        catalog, group, source, stream = self._catalog_group(request)
        first, asked = max(request.count("from_id", 0), 1), request.count("to_id", 0)
        if asked and asked < first:
            raise AsapoWrongInputError(f"empty range: to_id {asked} is below from_id {first}")
        last = catalog.get_stream_info(source, stream).last_id
        to_id = min(asked or last, last)
        if to_id < first:  # the range lies past the stream's last id
            return [], None
        if to_id - first >= MAX_ID_RANGE:
            raise AsapoWrongInputError(
                f"ids {first}..{to_id} are more than {MAX_ID_RANGE} at once: ask in ranges "
                "(from_id, to_id)")
        return catalog.unacknowledged(group, source, stream, first, to_id), None

    def _get_last_acknowledged(self, request: _Request) -> tuple[Any, Any]:
        catalog, group, source, stream = self._catalog_group(request)
        return catalog.last_acknowledged(group, source, stream) or None, None  # ASAPO: None

    # -- producing --------------------------------------------------------------------------

    def _send(self, request: _Request) -> tuple[Any, Any]:
        if request.data is None:
            raise _BadRequest("op 'send' needs the message bytes as frame 1")
        source = request.header["source"]
        buffer = request.data.buffer
        self._check_size(source, buffer.nbytes)
        producer = self._producer(request)
        stream = request.stream()
        meta = request.arg("meta_json", str, None)  # Producer.send checks it is JSON
        name = request.arg("name", str, "")
        dataset = _dataset_arg(request)
        data_id = request.count("id", 0)
        if request.arg("auto_id", bool, False):  # once: a retry must not take another id
            data_id = producer.next_id(stream)
        elif data_id == 0:
            raise AsapoWrongInputError("message id must be an integer >= 1, got 0 (or use "
                                       "auto_id=True)")

        def attempt() -> tuple[Any, Any]:
            return producer.send(data_id, buffer, meta, stream=stream, name=name,
                                 dataset=dataset), None

        full_s = self.config.source(source).ring.full_timeout_s
        return self._try_or_park(request, attempt, _ring_full, request.timeout_s(full_s),
                                 None)

    def _check_size(self, source: str, nbytes: int) -> None:
        limit = _ring_bytes(self.config, source)
        if nbytes > limit:
            self.counters.refused("oversize")
            ring = self.config.source(source).ring
            raise AsapoWrongInputError(
                f"message of {nbytes} bytes is larger than source {source!r} takes: its ring "
                f"holds {ring.slot_count} slots of {ring.slot_size} bytes ({limit} bytes, "
                "name and metadata included); split it, or give the source a bigger ring")

    def _send_finished(self, request: _Request) -> tuple[Any, Any]:
        producer = self._producer(request)
        stream, last_id = request.stream(), request.count("last_id", low=0, high=MAX_ID - 1)
        next_stream = request.arg("next_stream", str, None)

        def attempt() -> tuple[Any, Any]:
            producer.send_stream_finished_flag(stream, last_id, next_stream)
            return None, None

        full_s = self.config.source(request.header["source"]).ring.full_timeout_s
        return self._try_or_park(request, attempt, _ring_full, request.timeout_s(full_s),
                                 None)

    def _send_stream_meta(self, request: _Request) -> tuple[Any, Any]:
        self._producer(request).send_stream_meta(
            request.arg("metadata", (dict, str)), request.arg("mode", str, "replace"),
            request.arg("upsert", bool, True), request.stream())
        return None, None

    def _send_beamtime_meta(self, request: _Request) -> tuple[Any, Any]:
        self._producer(request).send_beamtime_meta(
            request.arg("metadata", (dict, str)), request.arg("mode", str, "replace"),
            request.arg("upsert", bool, True))
        return None, None


class _DatasetDelivery:
    """A dataset delivered without blocking the server thread, as a parked attempt:
    `take` finds the record (raising _NotYet to wait), then the parts are read once the
    sink stored them all. If it does not within LOCATION_WAIT_S, `give_back` (a group's
    delivery) returns the dataset to its group and AsapoDataNotInCacheError is raised."""

    def __init__(self, consumer: _NodeConsumer, stream: str,
                 take: Callable[[float], tuple[DatasetRecord, str | None]],
                 give_back: Callable[[DatasetRecord], None] | None, deadline: float):
        self.consumer, self.stream, self.take, self.give_back = consumer, stream, take, \
            give_back
        self.deadline = deadline
        self.record: DatasetRecord | None = None
        self.partial: str | None = None
        self.next_poll = 0.0
        self.stored_by = 0.0

    def attempt(self) -> tuple[Any, Any]:
        now = time.monotonic()
        if now < self.next_poll:  # the catalog is asked every POLL_S, not every park poll
            raise _NotYet("waiting for the catalog")
        self.next_poll = now + POLL_S
        if self.record is None:
            self.record, self.partial = self.take(now)
            self.stored_by = max(self.deadline, now + LOCATION_WAIT_S)
        elif not _all_stored(self.record.parts):
            self.record.parts = self._fresh_parts()
        if not _all_stored(self.record.parts):
            if now < self.stored_by:
                raise _NotYet("waiting for the sink to store the parts")
            if self.give_back is not None:
                self.give_back(self.record)
            raise AsapoDataNotInCacheError(
                f"dataset {self.record.data_id} of stream {self.stream!r} is in the catalog "
                "but the node's sink has not stored all its parts: see its sink_write_failed "
                "log lines")
        return self._reply()

    def _fresh_parts(self) -> list[MessageRecord]:
        wanted = {p.dataset_substream for p in self.record.parts}
        fresh = self.consumer._catalog().query_messages(
            self.consumer.data_source, self.stream, f"_id = {self.record.data_id}")
        return [p for p in fresh if p.dataset_substream in wanted]

    def _reply(self) -> tuple[Any, Any]:
        parts = sorted(self.record.parts, key=lambda p: p.dataset_substream)
        frames = [self.consumer._read_frame(p) for p in parts]  # copies: safe to send
        return {"id": self.record.data_id, "size": self.record.dataset_size,
                "timestamp": self.record.timestamp, "partial": self.partial,
                "parts": [_record_result(p, self.stream) for p in parts]}, frames


def _all_stored(parts: list[MessageRecord]) -> bool:
    return not any(p.size and p.file_path is None for p in parts)


def _dataset_arg(request: _Request) -> tuple[int, int] | None:
    """`dataset` as (substream, size), 1 <= substream <= size < 2**32, or None."""
    value = request.arg("dataset", list, None)
    if not value:
        return None
    if len(value) != 2 or not all(type(v) is int for v in value) or \
            not 1 <= value[0] <= value[1] < 2**32:
        raise _BadRequest(f"op 'send': dataset must be [substream, size] with 1 <= substream "
                          f"<= size, got {value!r:.80}")
    return value[0], value[1]


def _is_stream_id(item: Any) -> bool:
    return isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and \
        type(item[1]) is int


def _ack_later(session: _Session, group: str, msg: Message) -> Callable[[], None]:
    return lambda: session.consumer.acknowledge(group, msg)


def _no_data_yet(exc: AsapoError) -> bool:
    return isinstance(exc, AsapoEndOfStreamError) and \
        not isinstance(exc, AsapoStreamFinishedError)


def _not_yet(exc: AsapoError) -> bool:
    return isinstance(exc, _NotYet)


def _ring_full(exc: AsapoError) -> bool:
    return isinstance(exc, AsapoRingFullError)


def _data_frames(data: Any) -> list[Any]:
    """The reply's data frames; ring views get one tracker for all (see Copies)."""
    if data is None:
        return []
    if isinstance(data, _Tracked):
        frames = [zmq.Frame(buffer, track=True) for buffer in data.buffers]
        tracker = zmq.MessageTracker(*frames)
        for held in data.helds:
            held.tracker = tracker
        return frames
    return data if isinstance(data, list) else [data]


class _Tracked:
    """Ring views to send zero-copy; the messages they belong to get the send's tracker."""

    __slots__ = ("helds", "buffers")

    def __init__(self, helds: list[_Held], buffers: list[memoryview | np.ndarray]):
        self.helds, self.buffers = helds, buffers


class _Park(Exception):
    """Raised by a handler: retry `attempt` until it stops failing with `retry_on`."""

    def __init__(self, attempt: Callable[[], tuple[Any, Any]],
                 retry_on: Callable[[AsapoError], bool], wait_s: float,
                 session: _Session | None):
        super().__init__("parked")
        self.attempt, self.retry_on, self.wait_s, self.session = attempt, retry_on, wait_s, \
            session

