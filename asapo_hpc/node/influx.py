"""Optional InfluxDB push: the node's metrics as line protocol, POSTed every N seconds.

One line per Prometheus sample, the same figures as ``/metrics``::

    asapo_messages_in_total,source=det,stream=default value=30 1700000000000000000

(measurement = sample name, tags = labels in order, one float field ``value``, timestamp
in ns). The URL is InfluxDB's write endpoint as given: ``.../write?db=asapo`` (1.x) or
``.../api/v2/write?org=o&bucket=b`` (2.x, with ``token``). A failed push is logged as a
JSON line and the next one is tried on time; nothing is buffered.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from asapo_hpc.node.events import event

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})


def format_value(value: float) -> str:
    """A float field value: integral values without a fraction (30, not 30.0)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def line_protocol(families: Iterable[Metric], timestamp_ns: int) -> list[str]:
    """One line per sample of `families`, all stamped `timestamp_ns`."""
    lines = []
    for family in families:
        for sample in family.samples:
            name = sample.name.translate(_MEASUREMENT_ESCAPES)
            tags = "".join(f",{k.translate(_TAG_ESCAPES)}={v.translate(_TAG_ESCAPES)}"
                           for k, v in sample.labels.items() if v != "")
            lines.append(f"{name}{tags} value={format_value(sample.value)} {timestamp_ns}")
    return lines


class InfluxPusher:
    """POSTs the collector's samples to `url` every `interval_s` seconds in a thread."""

    def __init__(self, collector: Collector, url: str, interval_s: float, *, token: str = "",
                 clock: Callable[[], int] = time.time_ns, timeout_s: float = 5.0):
        self._collector, self.url, self.interval_s = collector, url, interval_s
        self._token, self._clock, self._timeout_s = token, clock, timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pushed = 0
        self.failed = 0

    def start(self) -> InfluxPusher:
        self._thread = threading.Thread(target=self._run, name="asapo-influx-push",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.push()

    def push(self) -> bool:
        """Send the figures now; True when InfluxDB took them (2xx)."""
        lines = line_protocol(self._collector.collect(), self._clock())
        request = urllib.request.Request(self.url, data=("\n".join(lines) + "\n").encode(),
                                         method="POST",
                                         headers={"Content-Type": "text/plain; charset=utf-8"})
        if self._token:
            request.add_header("Authorization", f"Token {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s):
                pass
        except (urllib.error.URLError, OSError) as exc:
            self.failed += 1
            event(logging.WARNING, "influx_push_failed", url=self.url, error=str(exc),
                  action=f"next try in {self.interval_s:g} s")
            return False
        self.pushed += 1
        return True

    def close(self, final_push: bool = True) -> None:
        """Stop the thread; push the last figures once more unless told not to."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if final_push:
                self.push()
