"""``asapo-hpc serve``: run the node service until SIGTERM / SIGINT, printing status lines."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from asapo_hpc.errors import AsapoError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``serve`` (they override the config file)."""
    p.add_argument("--config", help="node config file (TOML); see asapo_hpc.node.config")
    p.add_argument("--data-root", help="data folder (HDF5 files and the catalog)")
    p.add_argument("--catalog", help="catalog file (default <data root>/catalog.sqlite)")
    p.add_argument("--beamtime", help="beamtime id")
    p.add_argument("--source", nargs="+", help="data sources to serve (default: the file's)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="Prometheus /metrics port (-1 off, 0 any free port)")
    p.add_argument("--remote-port", type=int, default=None,
                   help="port serving remote clients over ZeroMQ (-1 off, 0 any free port)")
    p.add_argument("--remote-host", default=None,
                   help="address the remote port binds (default 127.0.0.1)")
    p.add_argument("--secret-file", default=None,
                   help="token key file (default <data root>/asapo_hpc_secret.key)")
    p.add_argument("--status-interval", type=float, default=None,
                   help="seconds between status lines (0: none)")


def status_line(counters: dict[str, Any], previous: dict[str, Any], seconds: float) -> str:
    """One line per node: per source messages written, MB/s written, ring fill, errors."""
    parts = []
    for name, source in counters.items():
        streams = source["streams"].values()
        written = sum(s["messages_written"] for s in streams)
        nbytes = sum(s["bytes_written"] for s in streams)
        before = sum(s["bytes_written"] for s in previous.get(name, {}).get("streams",
                                                                            {}).values())
        rate = (nbytes - before) / max(seconds, 1e-9) / 1e6
        fill = source["ring_fill"] / source["ring_slots"] if source["ring_slots"] else 0.0
        text = (f"{name}: {written} msgs written, {rate:.1f} MB/s, ring {fill:.0%} full, "
                f"backlog {source['sink_backlog']}")
        if source["write_errors"]:
            text += f", {source['write_errors']} write errors"
        if source["retrying"]:
            text += " (RETRYING: " + source["last_error"][:80] + ")"
        parts.append(text)
    return time.strftime("%H:%M:%S ") + " | ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Start the service, print status lines until a signal stops it; 0 on a clean stop."""
    from asapo_hpc.node import NodeService, load_config
    from asapo_hpc.node.events import setup_logging

    setup_logging()
    try:
        config = load_config(args.config, data_root=args.data_root, beamtime=args.beamtime,
                             sources=args.source, catalog=args.catalog,
                             metrics_port=args.metrics_port, remote_port=args.remote_port,
                             remote_host=args.remote_host, secret_file=args.secret_file)
        service = NodeService(config)
        service.install_signal_handlers()
        service.start()
    except AsapoError as exc:
        print(f"asapo-hpc serve: {exc}", file=sys.stderr)
        return 2
    interval = config.status_interval_s if args.status_interval is None \
        else args.status_interval
    previous: dict[str, Any] = {}
    last = time.monotonic()
    while not service.wait(interval or None):
        now = time.monotonic()
        counters = service.counters()
        print(status_line(counters, previous, now - last), flush=True)
        previous, last = counters, now
    service.stop()
    return 1 if service.failed_sources else 0
