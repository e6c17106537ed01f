"""What the remote endpoint did, for ``asapo_hpc.node.metrics``: requests per (source, op),
refusals per reason, live sessions and waiting requests."""

from __future__ import annotations

import threading
from typing import Any

# why a request was refused (asapo_remote_refused_total{reason}); a fixed set, so label
# values never come from the network
REFUSALS = ("malformed", "protocol_version", "unknown_op", "token", "beamtime", "source",
            "busy", "oversize")


class RemoteCounters:
    """Written by the serving thread, read by the metrics scrape."""

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
