"""``asapo-hpc status``: the rows it prints from a running node's /metrics, from the rings
directly, the rates of the live view, and a clear error for an endpoint that is not there."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asapo_hpc.cli import main
from asapo_hpc.cli.status import Figures, _show, render
from asapo_hpc.client import Consumer, Producer
from asapo_hpc.config import RingConfig
from asapo_hpc.node import NodeConfig, NodeService

BEAMTIME = "bt"
FRAME = np.zeros((16, 32), dtype=np.uint16)


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip()]


def with_proc_group(config: NodeConfig) -> NodeConfig:
    det = config.source("det")
    det = dataclasses.replace(det, ring=dataclasses.replace(det.ring, groups=("proc",)))
    others = tuple(s for s in config.sources if s.name != "det")
    return dataclasses.replace(config, sources=(det, *others), metrics_port=0)


def test_status_once_prints_the_node_rows(shm_prefix, tmp_path: Path, node_config, wait_for,
                                          capsys):
    config = with_proc_group(node_config(tmp_path, compression="none"))
    n = 12
    with NodeService(config) as service, \
            Consumer(BEAMTIME, "det", config=config.source("det").ring) as proc:
        with Producer(BEAMTIME, "det", config=config.source("det").ring) as producer:
            for i in range(1, n + 1):
                producer.send(i, FRAME)
            producer.send_stream_finished_flag("default", n)
        taken = [proc.get_next("proc") for _ in range(4)]
        for msg in taken[:2]:  # 'proc' acknowledges 2 of the 4 it took
            proc.acknowledge("proc", msg)
        wait_for(lambda: service.counters()["det"]["sink_acked"] == n + 1, "the sink")
        capsys.readouterr()
        assert main(["status", "--url", service.metrics_url, "--once"]) == 0
        table = rows(capsys.readouterr().out)
    assert ["det", "default", str(n), str(n), "0.0", "-", "-", "0", "yes"] in table
    # head = n + 1 (the finish marker); 'proc' holds everything from sequence 2 on
    assert ["det", f"{n - 1}/128", "(9%)", "0", "2", "ok"] in table
    assert ["mod", "0/128", "(0%)", "0", "1", "ok"] in table
    assert ["det", "proc", "4", "2", "-", str(n - 1), "0", "0"] in table
    sink = next(r for r in table if r[:2] == ["det", "sink"])
    assert (sink[3], sink[5]) == (str(n + 1), "0")  # acked everything, no lag


def test_status_reads_the_rings_directly(shm_prefix, capsys):
    ring = RingConfig(slot_count=64, slot_size=1024, groups=("proc",))
    with Producer(BEAMTIME, "det", config=ring) as producer:
        for i in range(1, 6):
            producer.send(i, FRAME)
        groups_before = producer.stats()["groups"]
        capsys.readouterr()
        assert main(["status", "--beamtime", BEAMTIME, "--source", "det",
                     "--group", "proc", "ghost", "--once"]) == 0
        table = rows(capsys.readouterr().out)
        assert producer.stats()["groups"] == groups_before  # 'ghost' was not left behind
    assert ["det", "5/64", "(8%)", "-", "1", "ok"] in table
    assert ["det", "proc", "0", "0", "-", "5", "0", "0"] in table
    assert not [r for r in table if "ghost" in r]
    assert not [r for r in table if "STREAM" in r]  # no service: no stream table


def test_status_of_a_missing_ring_or_endpoint_is_a_clear_error(shm_prefix, capsys):
    assert main(["status", "--beamtime", BEAMTIME, "--source", "nosuch", "--once"]) == 2
    assert "it does not exist" in capsys.readouterr().err
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["status", "--url", f"http://127.0.0.1:{port}/metrics", "--once"]) == 2
    assert "cannot read the figures" in capsys.readouterr().err


def test_status_command_line_runs(shm_prefix, tmp_path: Path, node_config):
    config = with_proc_group(node_config(tmp_path))
    with NodeService(config) as service:
        out = subprocess.run([sys.executable, "-c", "import sys; from asapo_hpc.cli import main;"
                              " sys.exit(main(sys.argv[1:]))", "status", "--url",
                              service.metrics_url, "--once"], capture_output=True, text=True,
                             timeout=60, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert ["det", "proc", "0", "0", "-", "0", "0", "0"] in rows(out.stdout)


def figures(at: float, written: float, acked: float) -> Figures:
    return Figures({("asapo_messages_in_total", "det", "s"): written,
                    ("asapo_sink_messages_written_total", "det", "s"): written,
                    ("asapo_sink_bytes_written_total", "det", "s"): written * 1e6,
                    ("asapo_ring_slots", "det"): 8, ("asapo_ring_fill_slots", "det"): 2,
                    ("asapo_ring_fill_ratio", "det"): 0.25,
                    ("asapo_group_acked_total", "det", "g"): acked,
                    ("asapo_group_lag_messages", "det", "g"): 2}, at=at)


def test_live_view_shows_rates_between_two_looks(capsys):
    looks = iter([figures(10.0, 10, 4), figures(12.0, 30, 10)])

    def read() -> Figures:
        try:
            return next(looks)
        except StopIteration:
            raise KeyboardInterrupt from None

    assert _show(read, once=False, interval=0.0) == 0
    first, second = capsys.readouterr().out.split("\x1b[H\x1b[2J")[1:]
    assert ["det", "s", "10", "10", "10.0", "-", "-", "-", "no"] in rows(first)
    assert ["det", "s", "30", "30", "30.0", "10.0", "10.0", "-", "no"] in rows(second)
    assert ["det", "g", "-", "10", "3.0", "2", "-", "-"] in rows(second)
    assert ["det", "2/8", "(25%)", "-", "-", "ok"] in rows(render(figures(0.0, 1, 1)))


def test_status_needs_a_source_with_beamtime(capsys):
    assert main(["status", "--beamtime", BEAMTIME, "--once"]) == 2
    assert "--source" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["status", "--once"])  # neither --url nor --beamtime
