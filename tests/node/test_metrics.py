"""The node's /metrics endpoint and InfluxDB push: exact figures after real traffic through a
running service, ring fill and group lag following a group that stops acknowledging."""

from __future__ import annotations

import dataclasses
import http.server
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from asapo_hpc._core import lib
from asapo_hpc.client import Consumer, Producer
from asapo_hpc.errors import AsapoEndOfStreamError
from asapo_hpc.node import NodeConfig, NodeService
from asapo_hpc.node.influx import InfluxPusher, line_protocol
from asapo_hpc.node.metrics import NodeCollector

BEAMTIME = "bt"
FRAME = np.arange(16 * 32, dtype=np.uint16).reshape(16, 32)  # 1024 bytes

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def with_proc_group(config: NodeConfig, **changes: object) -> NodeConfig:
    """`config` with the durable group 'proc' declared on source 'det'."""
    det = config.source("det")
    det = dataclasses.replace(det, ring=dataclasses.replace(det.ring, groups=("proc",)))
    others = tuple(s for s in config.sources if s.name != "det")
    return dataclasses.replace(config, sources=(det, *others), **changes)


def send(config: NodeConfig, ids: range, finish: int | None = None) -> None:
    with Producer(BEAMTIME, "det", config=config.source("det").ring) as producer:
        for i in ids:
            producer.send(i, FRAME)
        if finish is not None:
            producer.send_stream_finished_flag("default", finish)


class Recorded(http.server.BaseHTTPRequestHandler):
    """Records every POST (path, headers, body) on the server; answers 204 like InfluxDB."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.server.posts.append((self.path, dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def influx() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorded)
    server.posts = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_scraped_counters_are_exact(shm_prefix, tmp_path: Path, node_config, wait_for):
    config = with_proc_group(node_config(tmp_path, compression="none"), metrics_port=0)
    n = 20
    with NodeService(config) as service:
        url = service.metrics_url
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        send(config, range(1, n + 1), finish=n)
        wait_for(lambda: value(scrape(url), "asapo_group_acked_total", source="det",
                               group="sink") == n + 1, "the sink to store every message")
        samples = scrape(url)
    det = {"source": "det", "stream": "default"}
    assert value(samples, "asapo_messages_in_total", **det) == n
    assert value(samples, "asapo_bytes_in_total", **det) == n * FRAME.nbytes
    assert value(samples, "asapo_sink_messages_written_total", **det) == n
    assert value(samples, "asapo_sink_bytes_written_total", **det) == n * FRAME.nbytes
    assert value(samples, "asapo_messages_rejected_total", **det) == 0
    assert value(samples, "asapo_sink_write_errors_total", **det) == 0
    assert value(samples, "asapo_stream_finished", **det) == 1
    assert value(samples, "asapo_sink_backlog_messages", source="det") == 0
    assert value(samples, "asapo_recorder_failed", source="det") == 0
    assert value(samples, "asapo_ring_published_total", source="det") == n + 1  # + marker
    # 'proc' never read anything: it holds all n + 1 sequences, the ring fills with them
    assert value(samples, "asapo_ring_slots", source="det") == 128
    assert value(samples, "asapo_ring_fill_slots", source="det") == n + 1
    assert value(samples, "asapo_ring_fill_ratio", source="det") == (n + 1) / 128
    assert value(samples, "asapo_group_lag_messages", source="det", group="proc") == n + 1
    assert value(samples, "asapo_group_delivered_total", source="det", group="proc") == 0
    assert value(samples, "asapo_group_lag_messages", source="det", group="sink") == 0
    # the other source saw nothing: its ring figures are there, no stream rows
    assert value(samples, "asapo_ring_fill_slots", source="mod") == 0
    assert value(samples, "asapo_group_acked_total", source="mod", group="sink") == 0
    assert not [k for k in samples if ("stream", "default") in k[1] and ("source", "mod")
                in k[1]]
    assert service.metrics_url is None  # stopped: the endpoint is closed
    with pytest.raises(OSError):
        scrape(url)


def test_metrics_endpoint_is_off_by_default(shm_prefix, tmp_path: Path, node_config):
    with NodeService(node_config(tmp_path)) as service:
        assert service.metrics_url is None


def test_fill_and_lag_follow_a_group_that_stops_acknowledging(shm_prefix, tmp_path: Path,
                                                              node_config, wait_for):
    config = with_proc_group(node_config(tmp_path, compression="none"), metrics_port=0)
    with NodeService(config) as service, \
            Consumer(BEAMTIME, "det", config=config.source("det").ring) as proc:
        url = service.metrics_url

        def figures(sink_acked: int) -> Samples:
            def ready() -> Samples | None:
                s = scrape(url)
                acked = value(s, "asapo_group_acked_total", source="det", group="sink")
                return s if acked == sink_acked else None
            return wait_for(ready, f"the sink to acknowledge {sink_acked}")

        send(config, range(1, 11))
        for _ in range(10):  # 'proc' keeps up
            proc.acknowledge("proc", proc.get_next("proc"))
        s = figures(10)
        assert value(s, "asapo_ring_fill_slots", source="det") == 0
        assert value(s, "asapo_group_lag_messages", source="det", group="proc") == 0
        send(config, range(11, 26))  # 'proc' stops acknowledging; the sink goes on
        s = figures(25)
        assert value(s, "asapo_ring_fill_slots", source="det") == 15
        assert value(s, "asapo_ring_fill_ratio", source="det") == 15 / 128
        assert value(s, "asapo_group_lag_messages", source="det", group="proc") == 15
        assert value(s, "asapo_group_undelivered_messages", source="det", group="proc") == 15
        assert value(s, "asapo_group_lag_messages", source="det", group="sink") == 0
        first = proc.get_next("proc")  # one negative ack: redelivered once
        proc.neg_acknowledge("proc", first, delay_ms=0)
        for _ in range(15):
            proc.acknowledge("proc", proc.get_next("proc"))
        s = scrape(url)
        assert value(s, "asapo_ring_fill_slots", source="det") == 0
        assert value(s, "asapo_group_lag_messages", source="det", group="proc") == 0
        assert value(s, "asapo_group_acked_total", source="det", group="proc") == 25
        assert value(s, "asapo_group_delivered_total", source="det", group="proc") == 26
        assert value(s, "asapo_group_redelivered_total", source="det", group="proc") == 1
        assert value(s, "asapo_group_deadlettered_total", source="det", group="proc") == 0


def test_groups_opened_late_and_one_stream_groups_are_listed(shm_prefix, tmp_path: Path,
                                                            node_config, wait_for):
    """Groups nobody declared show up (and go) with the ring's own group list."""
    config = node_config(tmp_path, compression="none", metrics_port=0)
    with NodeService(config) as service, \
            Consumer(BEAMTIME, "det", config=config.source("det").ring) as late:
        url = service.metrics_url
        send(config, range(1, 5))
        wait_for(lambda: value(scrape(url), "asapo_group_acked_total", source="det",
                               group="sink") == 4, "the sink to store every message")
        for group, stream in (("viewer", None), ("fit", "scan")):  # opened now, at the head
            with pytest.raises(AsapoEndOfStreamError):
                late.get_next(group, stream=stream, timeout_ms=0)
        with Producer(BEAMTIME, "det", config=config.source("det").ring) as producer:
            for i in (1, 2, 3):
                producer.send(i, FRAME, stream="scan")
        late.acknowledge("viewer", late.get_next("viewer"))
        for _ in range(2):
            late.acknowledge("fit", late.get_next("fit", stream="scan"))
        s = scrape(url)
        assert value(s, "asapo_group_acked_total", source="det", group="fit@scan") == 2
        assert value(s, "asapo_group_lag_messages", source="det", group="fit@scan") == 1
        assert value(s, "asapo_group_acked_total", source="det", group="viewer") == 1
        assert value(s, "asapo_group_lag_messages", source="det", group="viewer") == 2
        retired = late.segment.find_group("viewer")
        assert retired is not None and late.segment.find_group("nobody") is None
        lib.ahr_group_retire(late.segment.ptr, retired)
        assert value(scrape(url), "asapo_group_acked_total", source="det",
                     group="viewer") is None


COUNTERS = {"det": {"sink_backlog": 2, "retrying": True, "streams": {
    "run1": {"messages_in": 7, "bytes_in": 7168, "messages_written": 5, "bytes_written": 5120,
             "messages_rejected": 0, "write_errors": 1, "finished": False}}}}

EXPECTED_LINES = [
    "asapo_messages_in_total,source=det,stream=run1 value=7 1700000000000000000",
    "asapo_bytes_in_total,source=det,stream=run1 value=7168 1700000000000000000",
    "asapo_sink_messages_written_total,source=det,stream=run1 value=5 1700000000000000000",
    "asapo_sink_bytes_written_total,source=det,stream=run1 value=5120 1700000000000000000",
    "asapo_messages_rejected_total,source=det,stream=run1 value=0 1700000000000000000",
    "asapo_sink_write_errors_total,source=det,stream=run1 value=1 1700000000000000000",
    "asapo_stream_finished,source=det,stream=run1 value=0 1700000000000000000",
    "asapo_sink_backlog_messages,source=det value=2 1700000000000000000",
    "asapo_sink_retrying,source=det value=1 1700000000000000000",
    "asapo_recorder_failed,source=det value=1 1700000000000000000",
]


def test_influx_push_sends_exact_lines(influx):
    collector = NodeCollector(lambda: COUNTERS, None, lambda: ["det"])
    base = f"http://127.0.0.1:{influx.server_address[1]}"
    v1 = InfluxPusher(collector, f"{base}/write?db=asapo", 60.0,
                      clock=lambda: 1_700_000_000_000_000_000)
    v2 = InfluxPusher(collector, f"{base}/api/v2/write?org=o&bucket=b&precision=ns", 60.0,
                      token="s3cret", clock=lambda: 1_700_000_000_000_000_000)
    assert v1.push() and v2.push()
    (path1, headers1, body1), (path2, headers2, body2) = influx.posts
    assert path1 == "/write?db=asapo" and path2 == "/api/v2/write?org=o&bucket=b&precision=ns"
    assert body1 == body2 == "\n".join(EXPECTED_LINES) + "\n"
    assert "Authorization" not in headers1 and headers2["Authorization"] == "Token s3cret"


def test_influx_push_failure_is_counted_not_raised():
    collector = NodeCollector(lambda: COUNTERS, None)
    pusher = InfluxPusher(collector, "http://127.0.0.1:1/write?db=x", 60.0, timeout_s=2.0)
    assert pusher.push() is False
    assert (pusher.pushed, pusher.failed) == (0, 1)


def test_line_protocol_escapes_tags_and_keeps_fractions():
    family = GaugeMetricFamily("asapo_x", "doc", labels=["source"])
    family.add_metric(["a b,c=d"], 0.25)
    assert line_protocol([family], 5) == [r"asapo_x,source=a\ b\,c\=d value=0.25 5"]


def test_service_pushes_its_figures_to_influx(shm_prefix, tmp_path: Path, node_config,
                                              wait_for, influx):
    url = f"http://127.0.0.1:{influx.server_address[1]}/write?db=asapo"
    config = node_config(tmp_path, compression="none", influx_url=url, influx_interval_s=0.2)
    n = 6
    with NodeService(config) as service:
        send(config, range(1, n + 1))
        wait_for(lambda: service.counters()["det"]["streams"].get("default", {}).get(
            "messages_written") == n, "the sink to store every message")
    assert len(influx.posts) >= 1  # the last push happens at stop, after the figures
    path, _, body = influx.posts[-1]
    lines = {line.rsplit(" ", 1)[0] for line in body.splitlines()}
    stamps = {line.rsplit(" ", 1)[1] for line in body.splitlines()}
    assert path == "/write?db=asapo" and len(stamps) == 1
    assert {f"asapo_messages_in_total,source=det,stream=default value={n}",
            f"asapo_sink_bytes_written_total,source=det,stream=default value={n * 1024}",
            "asapo_ring_slots,source=det value=128",
            "asapo_ring_fill_slots,source=det value=0",
            "asapo_group_lag_messages,source=det,group=sink value=0",
            f"asapo_group_acked_total,source=det,group=sink value={n}"} <= lines
