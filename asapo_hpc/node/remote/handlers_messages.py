"""Ring messages: get_next / get_next_batch (claims of the session's own member, bytes sent
zero-copy), get_by_id / get_last (copies), and the claims' acknowledgements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asapo_hpc.client import Message
from asapo_hpc.errors import (
    AsapoEndOfStreamError,
    AsapoError,
    AsapoStreamFinishedError,
    AsapoWrongInputError,
)
from asapo_hpc.node.remote.context import Context, Operations
from asapo_hpc.node.remote.parking import try_or_park
from asapo_hpc.node.remote.sessions import Session
from asapo_hpc.node.remote.wire import (
    MAX_ACK_BATCH,
    MAX_ATTEMPTS,
    MAX_BATCH,
    MAX_DELAY_MS,
    BadRequest,
    Held,
    Request,
    Tracked,
    message_result,
)


def _no_data_yet(exc: AsapoError) -> bool:
    return isinstance(exc, AsapoEndOfStreamError) and \
        not isinstance(exc, AsapoStreamFinishedError)


def _hold(session: Session, group: str, msg: Message) -> Held:
    session.held[(group, msg.stream, msg.id)] = held = Held(msg)
    return held


def get_next(ctx: Context, request: Request) -> tuple[Any, Any]:
    session = ctx.session(request)
    consumer = ctx.member(session)
    group = request.arg("group", str)
    stream = request.stream(None)
    meta_only = request.arg("meta_only", bool, False)

    def attempt() -> tuple[Any, Any]:
        msg = consumer.get_next(group, meta_only=meta_only, stream=stream, timeout_ms=0)
        held = _hold(session, group, msg)
        return message_result(msg), (None if meta_only else Tracked([held], [msg.buffer]))

    return try_or_park(attempt, _no_data_yet, request.timeout_s(1.0), session)


def get_next_batch(ctx: Context, request: Request) -> tuple[Any, Any]:
    session = ctx.session(request)
    consumer = ctx.member(session)
    group = request.arg("group", str)
    stream = request.stream(None)
    n = request.count("n", low=1, high=MAX_BATCH)

    def attempt() -> tuple[Any, Any]:
        messages = list(consumer.get_next_batch(group, n, stream=stream, timeout_ms=0))
        helds = [_hold(session, group, msg) for msg in messages]
        return ({"messages": [message_result(m) for m in messages]},
                Tracked(helds, [m.buffer for m in messages]))

    return try_or_park(attempt, _no_data_yet, request.timeout_s(1.0), session)


def get_by_id(ctx: Context, request: Request) -> tuple[Any, Any]:
    msg = ctx.reader(request).get_by_id(request.count("id", low=1), request.stream())
    return message_result(msg), msg.buffer  # a copy the Consumer made: safe to send


def get_last(ctx: Context, request: Request) -> tuple[Any, Any]:
    msg = ctx.reader(request).get_last(request.stream(None))
    return message_result(msg), msg.buffer


# -- acknowledgements of claims -----------------------------------------------------------------

def _held(request: Request, session: Session) -> tuple[str, tuple, Held]:
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


def acknowledge(ctx: Context, request: Request) -> tuple[Any, Any]:
    session = ctx.session(request)
    group, key, held = _held(request, session)
    del session.held[key]
    session.when_sent(held, _ack_later(session, group, held.msg))
    return None, None


def _is_stream_id(item: Any) -> bool:
    return isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and \
        type(item[1]) is int


def _ack_later(session: Session, group: str, msg: Message) -> Callable[[], None]:
    return lambda: session.consumer.acknowledge(group, msg)


def acknowledge_batch(ctx: Context, request: Request) -> tuple[Any, Any]:
    """Acknowledge [[stream, id], ...] held in one group; how many were held here.
    Messages whose bytes ZeroMQ let go of go to the ring in one call per group handle."""
    session = ctx.session(request)
    group = request.arg("group", str)
    items = request.arg("messages", list)
    if len(items) > MAX_ACK_BATCH or not all(_is_stream_id(i) for i in items):
        raise BadRequest(f"op 'acknowledge_batch': 'messages' must be at most "
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
            session.when_sent(held, _ack_later(session, group, held.msg))
    for messages in ready.values():
        session.consumer.acknowledge_batch(group, messages)
    return done, None


def neg_acknowledge(ctx: Context, request: Request) -> tuple[Any, Any]:
    session = ctx.session(request)
    group, key, held = _held(request, session)
    delay_ms = request.count("delay_ms", 0, high=MAX_DELAY_MS)
    del session.held[key]
    session.when_sent(held, lambda: session.consumer.neg_acknowledge(group, held.msg,
                                                                     delay_ms))
    return None, None


def set_resend_nacs(ctx: Context, request: Request) -> tuple[Any, Any]:
    session = ctx.session(request)
    ctx.member(session).set_resend_nacs(request.arg("resend", bool),
                                        request.count("delay_ms", high=MAX_DELAY_MS),
                                        request.count("attempts", high=MAX_ATTEMPTS))
    return None, None


OPERATIONS: Operations = {
    "get_next": ("read", get_next),
    "get_next_batch": ("read", get_next_batch),
    "get_by_id": ("read", get_by_id),
    "get_last": ("read", get_last),
    "acknowledge": ("read", acknowledge),
    "acknowledge_batch": ("read", acknowledge_batch),
    "neg_acknowledge": ("read", neg_acknowledge),
    "set_resend_nacs": ("read", set_resend_nacs),
}
