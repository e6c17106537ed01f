"""The contract between bench/transport.py and the transports it compares (its "peers").

Kept apart from the harness so that a peer module imports the one registry whether the
harness runs as ``python -m bench.transport`` or as ``python bench/transport.py``.
See bench/transport.py for the contract in prose.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A 4 KiB page holds 2048 uint16 pixels; reading one per page touches every page of a frame.
PAGE_PIXELS = 4096 // 2
SMALL_MARK = 0xA5  # first byte of every small message; the consumer reads it back


@dataclass(frozen=True)
class Workload:
    """What one run moves: ``count`` messages of ``nbytes`` each, at most ``depth`` in flight."""

    name: str  # "small" or "large"
    nbytes: int
    count: int
    depth: int  # slots / queue bound / high-water mark each peer uses, so all buffer alike
    frame_shape: tuple[int, ...] | None = None  # large frames: uint16 pixels

    @property
    def is_frame(self) -> bool:
        return self.frame_shape is not None

    def make_source(self) -> np.ndarray:
        """The prepared message the producer copies into the transport for every send.

        Large: a flat uint16 frame. Small: a flat uint8 array (``.tobytes()`` for bytes APIs).
        """
        if self.is_frame:
            return (np.arange(self.nbytes // 2, dtype=np.uint32) % 65521).astype(np.uint16)
        source = np.arange(self.nbytes, dtype=np.uint8)
        source[0] = SMALL_MARK
        return source

    def touch(self, message: Any) -> int:
        """The consumer's work on each message, the same for every peer.

        Large frames: sum one uint16 per 4 KiB page (4608 reads over the 18 MiB), so every
        page is really read from wherever the transport put it, but the work stays ~µs.
        Small messages: read the first byte. ``message`` is any buffer (bytes, memoryview,
        numpy array); returns a number the harness checks against the source's.
        """
        if self.is_frame:
            pixels = message if isinstance(message, np.ndarray) else np.frombuffer(message, "<u2")
            return int(pixels.reshape(-1)[::PAGE_PIXELS].sum(dtype=np.uint64))
        return int(message[0])


@dataclass
class ConsumerReport:
    """What a consumer returns: clock readings (``time.perf_counter_ns``) and a checksum."""

    first_ns: int  # right after the first message arrived
    last_ns: int  # right after the last message was touched
    received: int
    checksum: int  # sum of workload.touch(message) over all messages


def now_ns() -> int:
    return time.perf_counter_ns()


Start = Callable[[], None]
SetupFn = Callable[[Workload, Any, str], tuple[Any, Any]]
ProducerFn = Callable[[Any, Workload, Start], None]
ConsumerFn = Callable[[Any, Workload, Start], ConsumerReport]
TeardownFn = Callable[[Any], None]


def _no_teardown(handle: Any) -> None:
    """Default teardown: the harness removes the run's temp dir anyway."""


@dataclass(frozen=True)
class Peer:
    """One transport in the comparison. Every function must be importable at module level
    (children are started with 'spawn' and receive the functions by qualified name)."""

    name: str
    description: str
    setup: SetupFn  # parent: (workload, mp_context, tmpdir) -> (channel, handle)
    producer: ProducerFn  # producer process: (channel, workload, start) -> None
    consumer: ConsumerFn  # consumer process: (channel, workload, start) -> ConsumerReport
    teardown: TeardownFn = _no_teardown  # parent, always called: (handle) -> None
    workloads: tuple[str, ...] = ("small", "large")
    details: dict[str, Any] = field(default_factory=dict)  # copied into the JSON


PEERS: dict[str, Peer] = {}


def register_peer(peer: Peer) -> Peer:
    """Add ``peer`` to the registry (a second peer with the same name is a mistake)."""
    if peer.name in PEERS and PEERS[peer.name] != peer:
        raise ValueError(f"transport peer {peer.name!r} is registered twice")
    PEERS[peer.name] = peer
    return peer
