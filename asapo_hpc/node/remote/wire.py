"""The remote endpoint's wire format (described in the package docstring): limits, the
parsed request and its checked arguments, reply headers, and the data frames of a reply.

Nothing here touches a socket or a ring; the server and the handlers build on it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from asapo_hpc import errors
from asapo_hpc.catalog import MessageRecord
from asapo_hpc.client import Message
from asapo_hpc.errors import AsapoError, AsapoStreamFinishedError, AsapoWrongInputError
from asapo_hpc.node.config import NodeConfig
from asapo_hpc.node.events import event

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_WAIT_MS = 600_000  # longest wait a request may ask for
MAX_BATCH = 256  # messages per get_next_batch (a Consumer's default batch_capacity)
MAX_ACK_BATCH = 4096  # ids per acknowledge_batch request
FRAME_LIMIT_FACTOR = 2  # ZMQ_MAXMSGSIZE = this x the largest ring (+ header): see Sizes
MAX_ID = 2**63 - 1
MAX_DELAY_MS = 10**9  # ~11 days: delays are turned into ns on 64 bits
MAX_ATTEMPTS = 2**31 - 1
DEFAULT_STREAM = "default"


class BadRequest(AsapoWrongInputError):
    """A request of the wrong shape (the reply says why); `request`: what was parsed;
    `reason`: the refusal counted for it (one of counters.REFUSALS)."""

    def __init__(self, message: str, request: Request | None = None,
                 reason: str = "malformed"):
        super().__init__(message)
        self.request, self.reason = request, reason


@dataclass
class Request:
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
                raise BadRequest(f"op {self.op!r}: argument {name!r} is missing")
            return default
        value = self.args[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise BadRequest(f"op {self.op!r}: argument {name!r} must be of type "
                             f"{'/'.join(k.__name__ for k in kinds)}, got {value!r:.80}")
        return value

    def count(self, name: str, default: Any = ..., low: int = 0, high: int = MAX_ID) -> int:
        """An int argument within [low, high] (ids, sizes: the C core takes 64 bits)."""
        value = self.arg(name, int, default)
        if not low <= value <= high:
            raise BadRequest(f"op {self.op!r}: argument {name!r} must be in {low}..{high}, "
                             f"got {value}")
        return value

    def stream(self, default: str | None = DEFAULT_STREAM) -> str | None:
        return self.arg("stream", str, default)

    def timeout_s(self, default_s: float) -> float:
        ms = self.arg("timeout_ms", int, None)
        return default_s if ms is None else min(max(ms, 0), MAX_WAIT_MS) / 1000

    @property
    def source(self) -> str:
        """The source the request names (checked by the server before any handler runs)."""
        return self.header["source"]


def parse(frames: list[zmq.Frame]) -> Request:
    """The request in `frames` (identity first); BadRequest says what is wrong."""
    identity, parts = frames[0].bytes, frames[1:]
    if len(parts) not in (1, 2):
        raise BadRequest(f"a request is 1 or 2 frames (header, data), got {len(parts)}")
    raw = parts[0].buffer
    if len(raw) > MAX_HEADER_BYTES:
        raise BadRequest(f"request header of {len(raw)} bytes is oversize: at most "
                         f"{MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting: Recursion
        raise BadRequest(f"request header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise BadRequest("request header must be a JSON object")
    rid = header.get("rid")
    request = Request(identity, rid if isinstance(rid, (int, str)) else None, "", header, {},
                      parts[1] if len(parts) == 2 else None)
    if header.get("v") != PROTOCOL_VERSION:
        raise BadRequest(f"protocol version {header.get('v')!r:.40} is not supported: this "
                         f"node speaks {PROTOCOL_VERSION}", request, "protocol_version")
    op, args = header.get("op"), header.get("args", {})
    if not isinstance(op, str) or not isinstance(args, dict):
        raise BadRequest("request needs 'op' (a string) and 'args' (an object)", request)
    request.op, request.args = op, args
    return request


# -- replies ------------------------------------------------------------------------------------

def ok_header(request: Request, result: Any) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, "rid": request.rid, "ok": True,
                       "result": result}, separators=(",", ":"), default=str).encode()


def error_header(request: Request | None, exc: AsapoError) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, "rid": request.rid if request else None,
                       "ok": False, "error": _error_name(exc), "message": str(exc),
                       "details": _error_details(exc)}, default=str).encode()


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


def message_result(msg: Message) -> dict[str, Any]:
    """What the client needs to rebuild the Message (the bytes travel in a frame)."""
    return {"id": msg.id, "seq": msg.seq, "size": msg.size, "timestamp": msg.timestamp,
            "stream": msg.stream, "name": msg.name, "meta": msg.meta,
            "dataset": list(msg.dataset) if msg.dataset else None, "attempts": msg.attempts}


def record_result(rec: MessageRecord, stream: str, attempts: int = 0) -> dict[str, Any]:
    """message_result of a dataset part as the catalog keeps it (no ring position);
    ``attempts`` is its group's delivery count, 0 when read without a group."""
    return {"id": rec.data_id, "seq": 0, "size": rec.size, "timestamp": rec.timestamp,
            "stream": stream, "name": rec.name, "meta": rec.meta_dict(),
            "dataset": [rec.dataset_substream, rec.dataset_size], "attempts": attempts}


# -- data frames (see Copies) -------------------------------------------------------------------

@dataclass
class Held:
    """A message a remote member holds, and the tracker of the send of its bytes."""

    msg: Message
    tracker: zmq.MessageTracker | None = None


class Tracked:
    """Ring views to send zero-copy; the messages they belong to get the send's tracker."""

    __slots__ = ("helds", "buffers")

    def __init__(self, helds: list[Held], buffers: list[memoryview | np.ndarray]):
        self.helds, self.buffers = helds, buffers


def data_frames(data: Any) -> list[Any]:
    """The reply's data frames; ring views get one tracker for all (see Copies)."""
    if data is None:
        return []
    if isinstance(data, Tracked):
        frames = [zmq.Frame(buffer, track=True) for buffer in data.buffers]
        tracker = zmq.MessageTracker(*frames)
        for held in data.helds:
            held.tracker = tracker
        return frames
    return data if isinstance(data, list) else [data]


# -- sizes --------------------------------------------------------------------------------------

def ring_bytes(config: NodeConfig, source: str) -> int:
    """The most bytes one message of `source` can have: its whole ring."""
    ring = config.source(source).ring
    return ring.slot_size * ring.slot_count


def internal_error(op: str | None, exc: Exception) -> AsapoError:
    """A bug met while serving `op`: logged, and the error the client is told."""
    event(logging.ERROR, "remote_internal_error", op=op, error=repr(exc))
    return AsapoError(f"internal error of the node service: {exc!r}")
