"""Producer calls: send (the bytes of frame 1 into the source's ring; a full ring parks
the request), next_id, the finish marker and metadata (see Sizes for what is refused)."""

from __future__ import annotations

from typing import Any

from asapo_hpc.errors import AsapoError, AsapoRingFullError, AsapoWrongInputError
from asapo_hpc.node.remote.context import Context, Operations
from asapo_hpc.node.remote.parking import Attempt, try_or_park
from asapo_hpc.node.remote.wire import MAX_ID, BadRequest, Request, ring_bytes


def _ring_full(exc: AsapoError) -> bool:
    return isinstance(exc, AsapoRingFullError)


def _until_room(ctx: Context, request: Request, attempt: Attempt) -> tuple[Any, Any]:
    """`attempt`, parked while the ring is full (up to the request's timeout, else the
    ring's full_timeout_s)."""
    full_s = ctx.config.source(request.source).ring.full_timeout_s
    return try_or_park(attempt, _ring_full, request.timeout_s(full_s), None)


def send(ctx: Context, request: Request) -> tuple[Any, Any]:
    if request.data is None:
        raise BadRequest("op 'send' needs the message bytes as frame 1")
    buffer = request.data.buffer
    _check_size(ctx, request.source, buffer.nbytes)
    producer = ctx.producer(request)
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
    return _until_room(ctx, request, lambda: (producer.send(
        data_id, buffer, meta, stream=stream, name=name, dataset=dataset), None))


def _check_size(ctx: Context, source: str, nbytes: int) -> None:
    limit = ring_bytes(ctx.config, source)
    if nbytes > limit:
        ctx.counters.refused("oversize")
        ring = ctx.config.source(source).ring
        raise AsapoWrongInputError(
            f"message of {nbytes} bytes is larger than source {source!r} takes: its ring "
            f"holds {ring.slot_count} slots of {ring.slot_size} bytes ({limit} bytes, "
            "name and metadata included); split it, or give the source a bigger ring")


def _dataset_arg(request: Request) -> tuple[int, int] | None:
    """`dataset` as (substream, size), 1 <= substream <= size < 2**32, or None."""
    value = request.arg("dataset", list, None)
    if not value:
        return None
    if len(value) != 2 or not all(type(v) is int for v in value) or \
            not 1 <= value[0] <= value[1] < 2**32:
        raise BadRequest(f"op 'send': dataset must be [substream, size] with 1 <= substream "
                         f"<= size, got {value!r:.80}")
    return value[0], value[1]


def send_stream_finished_flag(ctx: Context, request: Request) -> tuple[Any, Any]:
    producer = ctx.producer(request)
    stream, last_id = request.stream(), request.count("last_id", low=0, high=MAX_ID - 1)
    next_stream = request.arg("next_stream", str, None)

    def attempt() -> tuple[Any, Any]:
        producer.send_stream_finished_flag(stream, last_id, next_stream)
        return None, None

    return _until_room(ctx, request, attempt)


def send_stream_meta(ctx: Context, request: Request) -> tuple[Any, Any]:
    ctx.producer(request).send_stream_meta(
        request.arg("metadata", (dict, str)), request.arg("mode", str, "replace"),
        request.arg("upsert", bool, True), request.stream())
    return None, None


def send_beamtime_meta(ctx: Context, request: Request) -> tuple[Any, Any]:
    ctx.producer(request).send_beamtime_meta(
        request.arg("metadata", (dict, str)), request.arg("mode", str, "replace"),
        request.arg("upsert", bool, True))
    return None, None


OPERATIONS: Operations = {
    "send": ("write", send),
    "next_id": ("write", lambda ctx, r: (ctx.producer(r).next_id(r.stream()), None)),
    "send_stream_finished_flag": ("write", send_stream_finished_flag),
    "send_stream_meta": ("write", send_stream_meta),
    "send_beamtime_meta": ("write", send_beamtime_meta),
}
