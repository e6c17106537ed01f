"""The ROUTER socket and the thread serving it: receive, check (shape, operation, token),
dispatch to a handler, reply; retry parked requests and expire sessions in between."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import zmq

from asapo_hpc.auth import access_for_producer_type, load_or_create_secret, verify_token
from asapo_hpc.errors import AsapoError, AsapoUnavailableServiceError, AsapoWrongInputError
from asapo_hpc.node.config import NodeConfig
from asapo_hpc.node.events import event
from asapo_hpc.node.remote import (
    handlers_datasets,
    handlers_messages,
    handlers_produce,
    handlers_session,
    handlers_streams,
)
from asapo_hpc.node.remote.context import Context, Handler, Operations
from asapo_hpc.node.remote.counters import RemoteCounters
from asapo_hpc.node.remote.parking import Park
from asapo_hpc.node.remote.wire import (
    FRAME_LIMIT_FACTOR,
    MAX_HEADER_BYTES,
    BadRequest,
    Request,
    data_frames,
    error_header,
    internal_error,
    ok_header,
    parse,
    ring_bytes,
)

PARK_POLL_S = 0.005
HOUSEKEEPING_S = 0.1
OPERATIONS: Operations = {
    **handlers_session.OPERATIONS, **handlers_messages.OPERATIONS,
    **handlers_datasets.OPERATIONS, **handlers_streams.OPERATIONS,
    **handlers_produce.OPERATIONS}


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
        largest = max(ring_bytes(config, s.name) for s in config.sources)
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
        self._ctx = Context(config, self.counters, self.max_frame_bytes, self._reply,
                            self._reply_error)
        self._thread: threading.Thread | None = None
        self._ops = OPERATIONS

    # -- life cycle ---------------------------------------------------------------------------

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
        self._ctx.close()
        self.counters.gauges(0, 0)

    # -- the loop -----------------------------------------------------------------------------

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
        parking = self._ctx.parking
        wait_ms = PARK_POLL_S * 1000 if parking else HOUSEKEEPING_S * 1000
        if poller.poll(wait_ms):
            for _ in range(64):  # a bounded batch, so parked requests get their turn
                try:
                    frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._handle(frames)
        if parking:
            parking.retry()
        now = time.monotonic()
        if now >= next_housekeeping:
            self._ctx.sessions.housekeeping(now)
            self.counters.gauges(len(self._ctx.sessions), len(parking))
            next_housekeeping = now + HOUSEKEEPING_S
        return next_housekeeping

    def _handle(self, frames: list[zmq.Frame]) -> None:
        """Answer one request; never raises (network bytes are untrusted)."""
        request: Request | None = None
        try:
            request = parse(frames)
            access, handler = self._op(request)
            self._authorize(request, access)
            self._run(request, handler)
        except AsapoError as exc:
            if request is None:
                request = getattr(exc, "request", None)
            if isinstance(exc, BadRequest):
                self.counters.refused(exc.reason)
            self._reply_error(frames[0].bytes, request, exc)
        except Exception as exc:  # a bug: tell the client, log it, keep serving
            self._reply_error(frames[0].bytes, request,
                              internal_error(request.op if request else None, exc))

    def _op(self, request: Request) -> tuple[str, Handler]:
        entry = self._ops.get(request.op)
        if entry is None:
            raise BadRequest(f"unknown operation {request.op!r:.60}; known: "
                             f"{sorted(self._ops)}", reason="unknown_op")
        source = request.header.get("source")
        known = any(s.name == source for s in self.config.sources)
        self.counters.request(source if known else "unknown", request.op)
        return entry

    def _authorize(self, request: Request, access: str) -> None:
        """The token check of decision 9; the node's beamtime and sources only."""
        header = request.header
        beamtime, source = header.get("beamtime"), header.get("source")
        if not isinstance(beamtime, str) or not isinstance(source, str):
            raise BadRequest("request needs 'beamtime' and 'source' (strings)")
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

    def _run(self, request: Request, handler: Handler) -> None:
        """Run `handler`; park it when it asks to wait (see parking)."""
        try:
            result, data = handler(self._ctx, request)
        except Park as park:
            self._ctx.parking.park(request, park)
            return
        self._reply(request, result, data)

    # -- replies ------------------------------------------------------------------------------

    def _reply(self, request: Request, result: Any, data: Any) -> None:
        # copy=False: frames at or above pyzmq's copy_threshold go out without a copy
        self._socket.send_multipart([request.identity, ok_header(request, result),
                                     *data_frames(data)], copy=False)

    def _reply_error(self, identity: bytes, request: Request | None, exc: AsapoError) -> None:
        try:
            self._socket.send_multipart([identity, error_header(request, exc)])
        except zmq.ZMQError as err:  # the peer is gone; nothing to tell
            event(logging.DEBUG, "remote_reply_failed", error=str(err))
