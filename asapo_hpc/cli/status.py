"""``asapo-hpc status``: a live terminal view of a node's figures.

Reads a node service's ``/metrics`` endpoint (``--url``), or the rings themselves
(``--beamtime BT --source S ... [--group G ...]``: ring fill and group progress only, no
service needed). Three tables: per stream (messages in / written, rates, write errors),
per source (ring fill, sink backlog, state), per group (delivered, acked, rate, lag,
redeliveries, dead letters). Rates need two looks, so ``--once`` shows ``-`` for them.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from asapo_hpc.errors import AsapoError

Key = tuple[str, ...]
CLEAR = "\x1b[H\x1b[2J"
LABEL_ORDER = ("source", "stream", "group")  # exposition sorts labels by name


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``status``."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a node's metrics endpoint, "
                                     "e.g. http://127.0.0.1:9464/metrics")
    where.add_argument("--beamtime", help="read the rings of this beamtime directly")
    p.add_argument("--source", nargs="+", default=[], help="data sources (with --beamtime)")
    p.add_argument("--group", nargs="+", default=None,
                   help="consumer groups to show (with --beamtime; default: every live group)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="print one table and exit")


@dataclass
class Figures:
    """One look at a node: every sample by (name, label values...)."""

    samples: dict[Key, float] = field(default_factory=dict)
    at: float = 0.0

    def get(self, name: str, *labels: str) -> float | None:
        return self.samples.get((name, *labels))

    def keys(self, name: str) -> list[Key]:
        """Label values of every sample called `name`, in order of appearance."""
        return [k[1:] for k in self.samples if k[0] == name]


def figures_of(families: Iterable[Metric], at: float) -> Figures:
    """Flatten metric families (parsed or collected) into Figures."""
    figures = Figures(at=at)
    for family in families:
        for sample in family.samples:
            labels = [sample.labels[k] for k in LABEL_ORDER if k in sample.labels]
            figures.samples[(sample.name, *labels)] = sample.value
    return figures


def scrape(url: str, timeout_s: float = 5.0) -> Figures:
    """Figures from a /metrics endpoint."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    return figures_of(text_string_to_metric_families(text), time.monotonic())


def _int(value: float | None) -> str:
    return "-" if value is None else str(int(value))


def _rate(now: Figures, before: Figures | None, name: str, key: Key, scale: float = 1.0,
          fmt: str = "{:.1f}") -> str:
    if before is None or now.at <= before.at:
        return "-"
    new, old = now.get(name, *key), before.get(name, *key)
    if new is None or old is None:
        return "-"
    return fmt.format((new - old) / (now.at - before.at) / scale)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]]


def stream_rows(now: Figures, before: Figures | None) -> list[list[str]]:
    rows = []
    for key in now.keys("asapo_messages_in_total"):
        written = now.get("asapo_sink_bytes_written_total", *key) or 0.0
        rows.append([*key, _int(now.get("asapo_messages_in_total", *key)),
                     _int(now.get("asapo_sink_messages_written_total", *key)),
                     f"{written / 1e6:.1f}",
                     _rate(now, before, "asapo_sink_messages_written_total", key),
                     _rate(now, before, "asapo_sink_bytes_written_total", key, 1e6),
                     _int(now.get("asapo_sink_write_errors_total", *key)),
                     "yes" if now.get("asapo_stream_finished", *key) else "no"])
    return rows


def _state(now: Figures, source: str) -> str:
    if now.get("asapo_recorder_failed", source):
        return "FAILED"
    if now.get("asapo_sink_retrying", source):
        return "RETRYING"
    return "ok"


def source_rows(now: Figures) -> list[list[str]]:
    rows = []
    for (source,) in now.keys("asapo_ring_slots"):
        fill, slots = now.get("asapo_ring_fill_slots", source), now.get("asapo_ring_slots", source)
        ratio = now.get("asapo_ring_fill_ratio", source) or 0.0
        backlog = now.get("asapo_sink_backlog_messages", source)
        rows.append([source, f"{_int(fill)}/{_int(slots)}", f"({ratio:.0%})", _int(backlog),
                     _int(now.get("asapo_ring_members", source)), _state(now, source)])
    return rows


def group_rows(now: Figures, before: Figures | None) -> list[list[str]]:
    rows = []
    for key in now.keys("asapo_group_acked_total"):
        rows.append([*key, _int(now.get("asapo_group_delivered_total", *key)),
                     _int(now.get("asapo_group_acked_total", *key)),
                     _rate(now, before, "asapo_group_acked_total", key),
                     _int(now.get("asapo_group_lag_messages", *key)),
                     _int(now.get("asapo_group_redelivered_total", *key)),
                     _int(now.get("asapo_group_deadlettered_total", *key))])
    return rows


def render(now: Figures, before: Figures | None = None) -> str:
    """The three tables (a table without rows is left out)."""
    parts = []
    streams = stream_rows(now, before)
    if streams:
        parts.append(_table(["SOURCE", "STREAM", "IN", "WRITTEN", "MB_WRITTEN", "MSG/S",
                             "MB/S", "ERRORS", "FINISHED"], streams))
    parts.append(_table(["SOURCE", "RING_FILL", "", "BACKLOG", "MEMBERS", "STATE"],
                        source_rows(now)))
    parts.append(_table(["SOURCE", "GROUP", "DELIVERED", "ACKED", "ACK/S", "LAG",
                         "REDELIVERED", "DEADLETTERED"], group_rows(now, before)))
    return "\n\n".join("\n".join(p) for p in parts)


def _ring_reader(args: argparse.Namespace) -> tuple[Callable[[], Figures], Callable[[], None]]:
    from asapo_hpc.node.metrics import NodeCollector, RingStats

    if not args.source:
        raise AsapoError("--beamtime needs --source: the data sources whose rings to read")
    rings = RingStats(args.beamtime, args.source, only=args.group)
    collector = NodeCollector(None, rings)
    return (lambda: figures_of(collector.collect(), time.monotonic())), rings.close


def run(args: argparse.Namespace) -> int:
    """Print the tables once (``--once``) or refresh them until Ctrl-C; 2 when unreadable."""
    try:
        if args.url:
            read, close = (lambda: scrape(args.url)), (lambda: None)
        else:
            read, close = _ring_reader(args)
    except AsapoError as exc:
        print(f"asapo-hpc status: {exc}", file=sys.stderr)
        return 2
    try:
        return _show(read, args.once, args.interval)
    finally:
        close()


def _show(read: Callable[[], Figures], once: bool, interval: float) -> int:
    before: Figures | None = None
    try:
        while True:
            try:
                now = read()
            except (urllib.error.URLError, OSError, AsapoError) as exc:
                print(f"asapo-hpc status: cannot read the figures: {exc}", file=sys.stderr)
                if once:
                    return 2
                time.sleep(interval)
                continue
            print(render(now, before) if once else CLEAR + render(now, before), flush=True)
            if once:
                return 0
            before = now
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
