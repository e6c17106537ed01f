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
"message": "...", "details": {...}}``; frame 1 carries the data of a delivered message.

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
A client's ``close()`` does the same immediately. Beyond that the ring's own lease
(``lease_s``) still bounds every claim.

Waiting. A ``get_next`` with nothing to deliver, or a ``send`` into a full ring, is parked
and retried every PARK_POLL_S until its timeout: the server thread never blocks in the ring.

Copies. Message bytes leave the ring zero-copy: the reply's data frame is sent with
``copy=False`` from the view into shared memory, and pyzmq keeps that view (hence the
mapping) alive until ZeroMQ has written it. pyzmq copies frames below its copy_threshold
(64 KiB) anyway. A ring slot is handed back (ack / nack) only after ZeroMQ let go of it
(the send's MessageTracker); an ack that comes earlier is applied when it has. When a
session expires its claims are released at once; bytes still queued to that (dead) peer
may then be overwritten in the ring, which only that peer could see. Sends copy twice:
ZeroMQ receives into its own buffer, and Producer.send copies that into the ring.
``get_last`` / ``get_by_id`` send the copy the Consumer makes.

Bad input. Network bytes are untrusted: a request of the wrong shape, malformed JSON,
a header over MAX_HEADER_BYTES, wrong argument types or an unknown operation gets an
AsapoWrongInputError reply; an unexpected exception gets an AsapoError reply and a log
line; the server keeps serving. Frames above the largest ring's capacity are dropped by
ZeroMQ itself (ZMQ_MAXMSGSIZE), which disconnects the sender.
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

import zmq

from asapo_hpc.auth import access_for_producer_type, load_or_create_secret, verify_token
from asapo_hpc.client import Consumer, Message, Producer
from asapo_hpc.errors import (
    AsapoEndOfStreamError,
    AsapoError,
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
PARK_POLL_S = 0.005
HOUSEKEEPING_S = 0.1
_SESSION_ID = re.compile(r"[0-9a-f]{16,64}")
DEFAULT_STREAM = "default"


class _BadRequest(AsapoWrongInputError):
    """A request of the wrong shape (the reply says why); `request`: what was parsed."""

    def __init__(self, message: str, request: _Request | None = None):
        super().__init__(message)
        self.request = request


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
    consumer: Consumer | None = None
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
        raise _BadRequest(f"protocol version {header.get('v')!r} is not supported: this "
                          f"node speaks {PROTOCOL_VERSION}", request)
    op, args = header.get("op"), header.get("args", {})
    if not isinstance(op, str) or not isinstance(args, dict):
        raise _BadRequest("request needs 'op' (a string) and 'args' (an object)", request)
    request.op, request.args = op, args
    return request


def _message_result(msg: Message) -> dict[str, Any]:
    """What the client needs to rebuild the Message (the bytes travel in frame 1)."""
    return {"id": msg.id, "seq": msg.seq, "size": msg.size, "timestamp": msg.timestamp,
            "stream": msg.stream, "name": msg.name, "meta": msg.meta,
            "dataset": list(msg.dataset) if msg.dataset else None, "attempts": msg.attempts}


def _error_details(exc: AsapoError) -> dict[str, Any]:
    if isinstance(exc, AsapoStreamFinishedError):
        return {"next_stream": exc.next_stream, "stream": exc.stream, "last_id": exc.last_id}
    return {}


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
        largest = max(s.ring.slot_size * s.ring.slot_count for s in config.sources)
        self._socket.setsockopt(zmq.MAXMSGSIZE, largest + MAX_HEADER_BYTES)
        port = "*" if config.remote_port == 0 else str(config.remote_port)
        try:
            self._socket.bind(f"tcp://{config.remote_host}:{port}")
        except zmq.ZMQError as exc:
            self._context.destroy(linger=0)
            raise AsapoUnavailableServiceError(
                f"cannot serve remote clients on {config.remote_host}:{port}: {exc}; choose "
                "another remote_port (0 = any free port)") from None
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sessions: dict[str, _Session] = {}
        self._parked: list[_Parked] = []
        self._readers: dict[str, _NodeConsumer] = {}
        self._producers: dict[str, _NodeProducer] = {}
        self._thread: threading.Thread | None = None
        self._ops: dict[str, tuple[str, Callable[[_Request], tuple[Any, Any]]]] = {
            "ping": ("read", lambda r: (True, None)),
            "get_next": ("read", self._get_next),
            "get_by_id": ("read", self._get_by_id),
            "get_last": ("read", self._get_last),
            "acknowledge": ("read", self._acknowledge),
            "neg_acknowledge": ("read", self._neg_acknowledge),
            "set_resend_nacs": ("read", self._set_resend_nacs),
            "close": ("read", self._close_session_op),
            "get_stream_list": ("read", self._get_stream_list),
            "get_current_size": ("read", self._get_current_size),
            "query_messages": ("read", self._query_messages),
            "get_stream_info": ("read", lambda r: (self._reader(r).get_stream_info(
                r.stream()), None)),
            "get_last_stream": ("read", lambda r: (self._reader(r).get_last_stream(), None)),
            "get_source_list": ("read", lambda r: (self._reader(r).get_source_list(), None)),
            "get_beamtime_meta": ("read", lambda r: (self._reader(r).get_beamtime_meta(),
                                                     None)),
            "get_stream_meta": ("read", lambda r: (self._reader(r).get_stream_meta(
                r.stream()), None)),
            "send": ("write", self._send),
            "send_stream_finished_flag": ("write", self._send_finished),
            "send_stream_meta": ("write", self._send_stream_meta),
            "send_beamtime_meta": ("write", self._send_beamtime_meta),
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
                              f"{sorted(self._ops)}")
        return entry

    def _authorize(self, request: _Request, access: str) -> None:
        """The token check of decision 9; the node's beamtime and sources only."""
        header = request.header
        beamtime, source = header.get("beamtime"), header.get("source")
        if not isinstance(beamtime, str) or not isinstance(source, str):
            raise _BadRequest("request needs 'beamtime' and 'source' (strings)")
        if access == "write":  # ASAPO: processed sources need write, raw ones writeraw
            access = access_for_producer_type(header.get("type", "processed"))
        try:
            verify_token(self._secret, header.get("token") or "", beamtime=beamtime,
                         access=access)
        except AsapoError as exc:
            event(logging.WARNING, "remote_refused", op=request.op, beamtime=beamtime,
                  source=source, reason=str(exc))
            raise
        if beamtime != self.config.beamtime:
            raise AsapoUnavailableServiceError(
                f"this node serves beamtime {self.config.beamtime!r}, not {beamtime!r}")
        self.config.source(source)  # AsapoWrongInputError naming the known sources

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
        if data is None:
            self._socket.send_multipart([request.identity, header])
        elif isinstance(data, _Tracked):
            # zero-copy from the ring view; the tracker tells when ZeroMQ let go of it
            data.held.tracker = self._socket.send_multipart(
                [request.identity, header, data.buffer], copy=False, track=True)
        else:  # a copy we own: pyzmq keeps it alive while sending
            self._socket.send_multipart([request.identity, header, data], copy=False)

    def _reply_error(self, identity: bytes, request: _Request | None, exc: AsapoError) -> None:
        name = type(exc).__name__ if not isinstance(exc, _BadRequest) else \
            "AsapoWrongInputError"
        header = {"v": PROTOCOL_VERSION, "rid": request.rid if request else None, "ok": False,
                  "error": name, "message": str(exc),
                  "details": _error_details(exc)}
        try:
            self._socket.send_multipart([identity, json.dumps(header, default=str).encode()])
        except zmq.ZMQError as err:  # the peer is gone; nothing to tell
            event(logging.DEBUG, "remote_reply_failed", error=str(err))

    # -- per source clients -----------------------------------------------------------------

    def _reader(self, request: _Request) -> _NodeConsumer:
        source = request.header["source"]
        reader = self._readers.get(source)
        if reader is None:
            reader = _NodeConsumer(self.config.beamtime, source, create=False, timeout_ms=0,
                                   data_root=str(self.config.data_root))
            reader.node_catalog = self.config.catalog_path
            self._readers[source] = reader
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
                raise AsapoUnavailableServiceError(
                    f"this node serves {MAX_SESSIONS} remote consumers at once; try later")
            session = self._sessions[sid] = _Session(sid, source, time.monotonic())
        elif session.source != source:
            raise _BadRequest(f"session {sid} belongs to source {session.source!r}")
        session.last_seen = time.monotonic()
        return session

    def _member(self, session: _Session) -> Consumer:
        if session.consumer is None:  # this client's own ring member
            session.consumer = Consumer(self.config.beamtime, session.source, create=False,
                                        timeout_ms=0, data_root=str(self.config.data_root))
        return session.consumer

    def _housekeeping(self, now: float) -> None:
        lease = self.config.remote_lease_s
        for session in list(self._sessions.values()):
            self._run_deferred(session, wait=False)
            if session.parked == 0 and now - session.last_seen > lease:
                self._end_session(session, "remote_client_expired")

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

    # -- operations -------------------------------------------------------------------------

    def _get_next(self, request: _Request) -> tuple[Any, Any]:
        session = self._session(request)
        consumer = self._member(session)
        group = request.arg("group", str)
        stream = request.stream(None)
        meta_only = request.arg("meta_only", bool, False)

        def attempt() -> tuple[Any, Any]:
            msg = consumer.get_next(group, stream=stream, timeout_ms=0)
            held = _Held(msg, None)
            session.held[(group, msg.stream, msg.id)] = held
            return _message_result(msg), (None if meta_only else _Tracked(held, msg.buffer))

        def no_data_yet(exc: AsapoError) -> bool:
            return isinstance(exc, AsapoEndOfStreamError) and \
                not isinstance(exc, AsapoStreamFinishedError)

        return self._try_or_park(request, attempt, no_data_yet,
                                 request.timeout_s(1.0), session)

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

    def _neg_acknowledge(self, request: _Request) -> tuple[Any, Any]:
        session = self._session(request)
        group, key, held = self._held(request, session)
        delay_ms = request.arg("delay_ms", int, 0)
        if delay_ms < 0:
            raise AsapoWrongInputError(f"delay_ms must be >= 0, got {delay_ms}")
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
                                              request.arg("delay_ms", int),
                                              request.arg("attempts", int))
        return None, None

    def _close_session_op(self, request: _Request) -> tuple[Any, Any]:
        sid = request.header.get("session")
        session = self._sessions.get(sid) if isinstance(sid, str) else None
        if session is not None:
            self._end_session(session, "client_closed")
        return None, None

    def _get_by_id(self, request: _Request) -> tuple[Any, Any]:
        msg = self._reader(request).get_by_id(request.arg("id", int), request.stream())
        return _message_result(msg), msg.buffer  # a copy the Consumer made: safe to send

    def _get_last(self, request: _Request) -> tuple[Any, Any]:
        msg = self._reader(request).get_last(request.stream(None))
        return _message_result(msg), msg.buffer

    def _get_stream_list(self, request: _Request) -> tuple[Any, Any]:
        return self._reader(request).get_stream_list(request.arg("from_stream", str, ""),
                                                     request.arg("filter", str, "all")), None

    def _get_current_size(self, request: _Request) -> tuple[Any, Any]:
        return self._reader(request).get_current_size(
            request.stream(), request.arg("include_incomplete", bool, True)), None

    def _query_messages(self, request: _Request) -> tuple[Any, Any]:
        return self._reader(request).query_messages(request.arg("query", str),
                                                    request.stream()), None

    def _send(self, request: _Request) -> tuple[Any, Any]:
        if request.data is None:
            raise _BadRequest("op 'send' needs the message bytes as frame 1")
        producer = self._producer(request)
        stream = request.stream()
        meta = request.arg("meta_json", str, None)  # Producer.send checks it is JSON
        name = request.arg("name", str, "")
        dataset = request.arg("dataset", list, None)
        data_id = request.arg("id", int, 0)
        if request.arg("auto_id", bool, False):  # once: a retry must not take another id
            data_id = producer.next_id(stream)
        buffer = request.data.buffer

        def attempt() -> tuple[Any, Any]:
            return producer.send(data_id, buffer, meta, stream=stream, name=name,
                                 dataset=tuple(dataset) if dataset else None), None

        full_s = self.config.source(request.header["source"]).ring.full_timeout_s
        return self._try_or_park(request, attempt, _ring_full, request.timeout_s(full_s),
                                 None)

    def _send_finished(self, request: _Request) -> tuple[Any, Any]:
        producer = self._producer(request)
        stream, last_id = request.stream(), request.arg("last_id", int)
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


def _ring_full(exc: AsapoError) -> bool:
    return isinstance(exc, AsapoRingFullError)


class _Tracked:
    """Data to send zero-copy whose tracker goes to the held message (see _reply)."""

    __slots__ = ("held", "buffer")

    def __init__(self, held: _Held, buffer: memoryview):
        self.held, self.buffer = held, buffer


class _Park(Exception):
    """Raised by a handler: retry `attempt` until it stops failing with `retry_on`."""

    def __init__(self, attempt: Callable[[], tuple[Any, Any]],
                 retry_on: Callable[[AsapoError], bool], wait_s: float,
                 session: _Session | None):
        super().__init__("parked")
        self.attempt, self.retry_on, self.wait_s, self.session = attempt, retry_on, wait_s, \
            session
