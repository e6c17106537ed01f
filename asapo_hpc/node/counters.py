"""Plain counters of the node service, per source and per stream, for a metrics exporter.

The recorder threads update them; ``snapshot()`` copies them into plain dicts. Counters
only grow (except the gauges named so); nothing here knows about Prometheus.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StreamCounters:
    """What happened to one stream of one source."""

    messages_in: int = 0
    """Messages claimed from the ring (dataset parts count one each)."""
    bytes_in: int = 0
    messages_written: int = 0
    """Messages stored on disk, located in the catalog and acknowledged in the ring."""
    bytes_written: int = 0
    messages_rejected: int = 0
    """Messages the catalog refused (e.g. a duplicate id with other content): logged,
    acknowledged, not stored."""
    write_errors: int = 0
    finished: bool = False


@dataclass
class SourceCounters:
    """One source's ring and recorder state; ``streams`` holds its StreamCounters."""

    ring_slots: int = 0
    ring_fill: int = 0
    """Gauge: slots still held by some durable group (head - min_floor)."""
    ring_published: int = 0
    sink_delivered: int = 0
    sink_acked: int = 0
    sink_redelivered: int = 0
    sink_backlog: int = 0
    """Gauge: messages handed to the HDF5 writers and not yet stored."""
    write_errors: int = 0
    retrying: bool = False
    """Gauge: the recorder is retrying frames after a write error (claims nothing new)."""
    last_error: str = ""
    streams: dict[str, StreamCounters] = field(default_factory=dict)

    def stream(self, name: str) -> StreamCounters:
        """The counters of stream `name` (made on first use)."""
        counters = self.streams.get(name)
        if counters is None:
            counters = self.streams[name] = StreamCounters()
        return counters


class NodeCounters:
    """Counters of every source, guarded by one lock."""

    def __init__(self, sources: list[str]):
        self.lock = threading.Lock()
        self.sources = {name: SourceCounters() for name in sources}

    def snapshot(self) -> dict[str, Any]:
        """A deep copy as plain dicts: {source: {..., "streams": {stream: {...}}}}."""
        with self.lock:
            return {name: dataclasses.asdict(c) for name, c in self.sources.items()}
