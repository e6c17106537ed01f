"""Prometheus metrics of the node service: a Collector read at scrape time, and its server.

Nothing here keeps state of its own: each scrape reads the recorder counters
(``NodeService.counters()``) and the live rings (``ring_stats`` / ``group_stats`` of the
C core) once. Metric names (labels in braces; ``_total`` are counters, the rest gauges):

per source and stream (the recorder, i.e. the node's sink group)
    asapo_messages_in_total, asapo_bytes_in_total {source, stream}
        messages / bytes the node claimed from the ring (dataset parts count one each)
    asapo_sink_messages_written_total, asapo_sink_bytes_written_total {source, stream}
        stored on disk, located in the catalog and acknowledged: the sink's throughput
    asapo_messages_rejected_total {source, stream}   refused by the catalog (duplicates)
    asapo_sink_write_errors_total {source, stream}   failed HDF5 writes (each is retried)
    asapo_stream_finished {source, stream}           1 once the finish marker was recorded
per source
    asapo_sink_backlog_messages     handed to the HDF5 writers, not yet stored
    asapo_sink_retrying             1 while the recorder retries after a write error
    asapo_recorder_failed           1 if the source's recorder stopped on an error
    asapo_ring_slots                the ring's slot_count
    asapo_ring_fill_slots           head - min floor: slots some durable group still holds
    asapo_ring_fill_ratio           ring_fill_slots / ring_slots
    asapo_ring_published_total      sequences published (messages and finish markers)
    asapo_ring_members              processes attached as members
per source and consumer group (every live group, ``sink`` included; one-stream groups as
group@stream)
    asapo_group_delivered_total, asapo_group_acked_total   messages out to the group
    asapo_group_redelivered_total, asapo_group_deadlettered_total
    asapo_group_nacked              negatively acknowledged, waiting for redelivery
    asapo_group_lag_messages        head - floor: published, not yet acknowledged
    asapo_group_undelivered_messages  head - next: published, not yet handed out
the remote endpoint (``remote_port``; absent when it is off), from the counters the
server keeps (``RemoteServer.counters``)
    asapo_remote_requests_total {source, op}   requests of a known operation (refused ones
        too); source "unknown" for names that are not this node's sources
    asapo_remote_refused_total {reason}        requests refused: malformed, protocol_version,
        unknown_op, token, beamtime, source, busy (too many sessions or waiting requests),
        oversize (a send larger than the source's ring)
    asapo_remote_sessions                      remote clients with a live session
    asapo_remote_waiting_requests              requests parked until data or room arrives
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from asapo_hpc._core import Segment
from asapo_hpc.config import segment_name
from asapo_hpc.errors import AsapoError
from asapo_hpc.node.config import NodeConfig
from asapo_hpc.node.influx import InfluxPusher

Counters = Callable[[], dict[str, Any]]
RemoteFigures = Callable[[], dict[str, Any] | None]  # RemoteCounters.snapshot, None when off

STREAM_COUNTERS = (
    ("asapo_messages_in", "messages_in", "Messages the node claimed from the ring."),
    ("asapo_bytes_in", "bytes_in", "Bytes of the messages the node claimed from the ring."),
    ("asapo_sink_messages_written", "messages_written",
     "Messages stored on disk, located in the catalog and acknowledged."),
    ("asapo_sink_bytes_written", "bytes_written", "Bytes stored on disk by the sink."),
    ("asapo_messages_rejected", "messages_rejected",
     "Messages the catalog refused (logged, acknowledged, not stored)."),
    ("asapo_sink_write_errors", "write_errors", "Failed HDF5 writes (each one is retried)."),
)
SOURCE_GAUGES = (
    ("asapo_sink_backlog_messages", "sink_backlog",
     "Messages handed to the HDF5 writers and not yet stored."),
    ("asapo_sink_retrying", "retrying",
     "1 while the recorder retries frames after a write error (claims nothing new)."),
)
GROUP_COUNTERS = (
    ("asapo_group_delivered", "delivered", "Messages handed to members of the group."),
    ("asapo_group_acked", "acked", "Messages the group acknowledged."),
    ("asapo_group_redelivered", "redelivered",
     "Messages handed out again (negative ack, dead member, expired lease)."),
    ("asapo_group_deadlettered", "deadlettered",
     "Messages given up after max_attempts deliveries."),
)


@dataclass
class RingSnapshot:
    """One source's ring figures, read at once."""

    slots: int
    ring: dict[str, int]
    groups: dict[str, dict[str, int]]


class RingStats:
    """Read-only looks at the rings of some sources (own attachments, no membership).

    Each read lists the groups live at that moment (``ahr_group_list``): declared ones,
    groups opened later by name, and the one-stream groups of ``get_next(..., stream=)``,
    labelled ``group@stream``. Retired groups drop out.
    """

    def __init__(self, beamtime: str, sources: Iterable[str],
                 only: Collection[str] | None = None):
        """`only`: show just these group names (without ``@stream``); None: all."""
        self._lock = threading.Lock()
        self._segments: dict[str, Segment] = {}
        self._stream_names: dict[tuple[str, int], str] = {}
        self._only = None if only is None else set(only)
        try:
            for source in sources:
                self._segments[source] = Segment.attach(segment_name(beamtime, source))
        except BaseException:
            self.close()
            raise

    @property
    def sources(self) -> list[str]:
        return list(self._segments)

    def read(self) -> dict[str, RingSnapshot]:
        """Every source's ring and group figures now."""
        with self._lock:
            return {source: self._read_one(source, segment)
                    for source, segment in self._segments.items() if not segment.closed}

    def _read_one(self, source: str, segment: Segment) -> RingSnapshot:
        groups = {}
        for name, handle in segment.groups().items():
            base = name.split("@", 1)[0]  # one-stream groups are named group@stream-index
            if self._only is not None and base not in self._only:
                continue
            try:
                stats = segment.group_stats(handle)
            except AsapoError:  # retired meanwhile
                continue
            label = base if stats["stream"] is None else \
                f"{base}@{self._stream_name(source, segment, stats['stream'])}"
            groups[label] = stats
        return RingSnapshot(int(segment.config["slot_count"]), segment.ring_stats(), groups)

    def _stream_name(self, source: str, segment: Segment, index: int) -> str:
        key = (source, index)
        if key not in self._stream_names:  # stream names never change once registered
            try:
                self._stream_names[key] = segment.stream_name(index)
            except AsapoError:
                return str(index)
        return self._stream_names[key]

    def close(self) -> None:
        with self._lock:
            for segment in self._segments.values():
                segment.close()
            self._segments.clear()


class NodeCollector(Collector):
    """Builds every metric family from the recorder counters and the rings at scrape time."""

    def __init__(self, counters: Counters | None, rings: RingStats | None,
                 failed: Callable[[], list[str]] | None = None,
                 remote: RemoteFigures | None = None):
        self._counters, self._rings, self._failed = counters, rings, failed
        self._remote = remote

    def collect(self) -> Iterator[Metric]:
        if self._counters is not None:
            yield from recorder_families(self._counters(),
                                         self._failed() if self._failed else [])
        if self._rings is not None:
            yield from ring_families(self._rings.read())
        figures = self._remote() if self._remote is not None else None
        if figures is not None:
            yield from remote_families(figures)

    def describe(self) -> list[Metric]:
        return []  # families depend on the live rings: nothing to register up front


def recorder_families(counters: dict[str, Any], failed: list[str]) -> Iterator[Metric]:
    """Families from ``NodeService.counters()``."""
    labels = ["source", "stream"]
    for name, key, doc in STREAM_COUNTERS:
        family = CounterMetricFamily(name, doc, labels=labels)
        for source, values in counters.items():
            for stream, figures in values["streams"].items():
                family.add_metric([source, stream], figures[key])
        yield family
    finished = GaugeMetricFamily("asapo_stream_finished",
                                 "1 once the stream's finish marker was recorded.", labels=labels)
    for source, values in counters.items():
        for stream, figures in values["streams"].items():
            finished.add_metric([source, stream], int(figures["finished"]))
    yield finished
    for name, key, doc in SOURCE_GAUGES:
        family = GaugeMetricFamily(name, doc, labels=["source"])
        for source, values in counters.items():
            family.add_metric([source], int(values[key]))
        yield family
    stopped = GaugeMetricFamily("asapo_recorder_failed",
                                "1 if the source's recorder stopped on an error.",
                                labels=["source"])
    for source in counters:
        stopped.add_metric([source], int(source in failed))
    yield stopped


def ring_families(rings: dict[str, RingSnapshot]) -> Iterator[Metric]:
    """Families from the live rings: fill per source, progress and lag per group."""
    yield from _ring_gauges(rings)
    published = CounterMetricFamily("asapo_ring_published",
                                    "Sequences published (messages and finish markers).",
                                    labels=["source"])
    for source, snap in rings.items():
        published.add_metric([source], snap.ring["published"])
    yield published
    labels = ["source", "group"]
    for name, key, doc in GROUP_COUNTERS:
        family = CounterMetricFamily(name, doc, labels=labels)
        for source, group, stats in _groups(rings):
            family.add_metric([source, group], stats[key])
        yield family
    yield from _group_gauges(rings)


def _ring_gauges(rings: dict[str, RingSnapshot]) -> Iterator[Metric]:
    slots = GaugeMetricFamily("asapo_ring_slots", "Slots of the ring.", labels=["source"])
    fill = GaugeMetricFamily("asapo_ring_fill_slots",
                             "Slots some durable group still holds (head - min floor).",
                             labels=["source"])
    ratio = GaugeMetricFamily("asapo_ring_fill_ratio", "ring_fill_slots / ring_slots.",
                              labels=["source"])
    members = GaugeMetricFamily("asapo_ring_members", "Processes attached to the ring.",
                                labels=["source"])
    for source, snap in rings.items():
        held = snap.ring["head"] - snap.ring["min_floor"]
        slots.add_metric([source], snap.slots)
        fill.add_metric([source], held)
        ratio.add_metric([source], held / snap.slots if snap.slots else 0.0)
        members.add_metric([source], snap.ring["members"])
    yield from (slots, fill, ratio, members)


def _group_gauges(rings: dict[str, RingSnapshot]) -> Iterator[Metric]:
    labels = ["source", "group"]
    nacked = GaugeMetricFamily("asapo_group_nacked",
                               "Negatively acknowledged, waiting for redelivery.", labels=labels)
    lag = GaugeMetricFamily("asapo_group_lag_messages",
                            "Published and not yet acknowledged by the group (head - floor).",
                            labels=labels)
    undelivered = GaugeMetricFamily("asapo_group_undelivered_messages",
                                    "Published and not yet handed out (head - next).",
                                    labels=labels)
    for source, group, stats in _groups(rings):
        head = rings[source].ring["head"]
        nacked.add_metric([source, group], stats["nacked"])
        lag.add_metric([source, group], max(head - stats["floor"], 0))
        undelivered.add_metric([source, group], max(head - stats["next"], 0))
    yield from (nacked, lag, undelivered)


def remote_families(figures: dict[str, Any]) -> Iterator[Metric]:
    """Families from ``RemoteCounters.snapshot()``."""
    requests = CounterMetricFamily("asapo_remote_requests",
                                   "Requests to the remote endpoint, by source and operation.",
                                   labels=["source", "op"])
    for (source, op), n in sorted(figures["requests"].items()):
        requests.add_metric([source, op], n)
    yield requests
    refused = CounterMetricFamily("asapo_remote_refused",
                                  "Remote requests refused, by reason.", labels=["reason"])
    for reason, n in figures["refused"].items():
        refused.add_metric([reason], n)
    yield refused
    yield GaugeMetricFamily("asapo_remote_sessions", "Remote clients with a live session.",
                            value=figures["sessions"])
    yield GaugeMetricFamily("asapo_remote_waiting_requests",
                            "Remote requests parked until data or room arrives.",
                            value=figures["waiting"])


def _groups(rings: dict[str, RingSnapshot]) -> Iterator[tuple[str, str, dict[str, int]]]:
    for source, snap in rings.items():
        for group, stats in snap.groups.items():
            yield source, group, stats


class MetricsServer:
    """``/metrics`` over HTTP for one collector, on its own registry (no process metrics)."""

    def __init__(self, collector: Collector, host: str = "127.0.0.1", port: int = 0):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.host, self.port = host, int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class NodeMetrics:
    """What a running node service exports: the /metrics server and the Influx push, as
    its config asks (``metrics_port``, ``influx_url``), over one NodeCollector."""

    def __init__(self, config: NodeConfig, counters: Counters,
                 failed: Callable[[], list[str]] | None = None,
                 remote: RemoteFigures | None = None):
        self.rings = RingStats(config.beamtime, [s.name for s in config.sources])
        self.collector = NodeCollector(counters, self.rings, failed, remote)
        self.server: MetricsServer | None = None
        self.pusher: InfluxPusher | None = None
        try:
            if config.metrics_port >= 0:
                self.server = MetricsServer(self.collector, config.metrics_host,
                                            config.metrics_port)
            if config.influx_url:
                self.pusher = InfluxPusher(self.collector, config.influx_url,
                                           config.influx_interval_s,
                                           token=config.influx_token).start()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str | None:
        """The /metrics URL, None when the endpoint is off."""
        return self.server.url if self.server else None

    def close(self) -> None:
        """Stop serving and pushing (one last push first), detach from the rings."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.pusher is not None:
            self.pusher.close()
            self.pusher = None
        self.rings.close()
