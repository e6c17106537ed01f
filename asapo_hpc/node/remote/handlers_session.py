"""ping, keepalive and close: what a client learns before it sends or holds claims, and
its session's lease (see Remote members)."""

from __future__ import annotations

import time
from typing import Any

from asapo_hpc.node.remote.context import Context, Operations
from asapo_hpc.node.remote.wire import PROTOCOL_VERSION, Request, ring_bytes


def ping(ctx: Context, request: Request) -> tuple[Any, Any]:
    """What a client needs to know before it sends or holds claims."""
    return {"protocol": PROTOCOL_VERSION, "lease_s": ctx.config.remote_lease_s,
            "max_message_bytes": ring_bytes(ctx.config, request.source),
            "max_frame_bytes": ctx.max_frame_bytes}, None


def keepalive(ctx: Context, request: Request) -> tuple[Any, Any]:
    """Refresh a live session's lease (never makes one); `known` False when it expired."""
    session = ctx.sessions.find(request)
    if session is None or session.source != request.source:
        return {"known": False, "held": 0}, None
    session.last_seen = time.monotonic()
    return {"known": True, "held": len(session.held)}, None


def close(ctx: Context, request: Request) -> tuple[Any, Any]:
    session = ctx.sessions.find(request)
    if session is not None:
        ctx.sessions.end(session, "client_closed")
    return None, None


OPERATIONS: Operations = {
    "ping": ("role", ping),  # producers (with "type") and consumers alike
    "keepalive": ("read", keepalive),
    "close": ("read", close),
}
