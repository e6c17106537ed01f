"""``NodeService``: owns the rings of its data sources and records every message.

``start()`` creates each source's ring (or attaches to it, refusing contradicting settings
with AsapoConfigMismatchError), with the durable group ``sink`` declared, and starts one
recorder thread per source (see ``asapo_hpc.node.recorder``) and, when ``remote_port`` is
set, the remote endpoint for clients on other hosts (``asapo_hpc.node.remote``).
``stop()`` (also on SIGTERM / SIGINT after ``install_signal_handlers``) releases what remote
clients hold, lets each recorder store what it holds, closes the writers and the catalog.
``counters()`` gives the figures for a metrics endpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from asapo_hpc.catalog import Catalog
from asapo_hpc.client import Consumer
from asapo_hpc.errors import AsapoError
from asapo_hpc.node.config import NodeConfig
from asapo_hpc.node.counters import NodeCounters
from asapo_hpc.node.events import event
from asapo_hpc.node.metrics import NodeMetrics
from asapo_hpc.node.recorder import Recorder
from asapo_hpc.node.remote import RemoteServer


class NodeService:
    """The node service of one beamtime: a recorder thread per source."""

    def __init__(self, config: NodeConfig):
        if not config.sources:
            raise AsapoError("the node service has no data sources: name some in the config "
                             "file ([[sources]]) or with --source")
        self.config = config
        self._counters = NodeCounters([s.name for s in config.sources])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._catalog: Catalog | None = None
        self._failed: list[str] = []
        self._metrics: NodeMetrics | None = None
        self._remote: RemoteServer | None = None

    def start(self) -> NodeService:
        """Open the catalog and the rings, start the recorders; returns self."""
        if self._threads:
            raise AsapoError("the node service is already running")
        self.config.data_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._catalog = Catalog(self.config.catalog_path)
        consumers = []
        try:
            for source in self.config.sources:
                consumers.append(Consumer(self.config.beamtime, source.name,
                                          config=source.ring, create=True,
                                          batch_capacity=self.config.batch_size))
            self._metrics = NodeMetrics(self.config, self.counters, lambda: self.failed_sources,
                                        remote=self.remote_counters)
            if self.config.remote_port >= 0:  # binds now: a taken port fails start()
                self._remote = RemoteServer(self.config, self._stop)
        except BaseException:
            if self._metrics is not None:
                self._metrics.close()
                self._metrics = None
            for consumer in consumers:
                consumer.close()
            self._catalog.close()
            raise
        for source, consumer in zip(self.config.sources, consumers, strict=True):
            recorder = Recorder(self.config, source, consumer, self._catalog,
                                self._counters.sources[source.name], self._counters.lock,
                                self._stop)
            thread = threading.Thread(target=self._run_recorder, args=(recorder,),
                                      name=f"asapo-recorder-{source.name}", daemon=True)
            self._threads.append(thread)
            thread.start()
        if self._remote is not None:
            self._remote.start()
        event(logging.INFO, "node_started", beamtime=self.config.beamtime,
              sources=[s.name for s in self.config.sources],
              data_root=str(self.config.data_root), catalog=str(self.config.catalog_path),
              metrics=self.metrics_url, remote=self.remote_endpoint)
        return self

    def _run_recorder(self, recorder: Recorder) -> None:
        try:
            recorder.run()
        except BaseException:  # logged by the recorder; its claims went back to the ring
            self._failed.append(recorder.name)

    @property
    def failed_sources(self) -> list[str]:
        """Sources whose recorder stopped on an unexpected error (see the JSON log)."""
        return list(self._failed)

    @property
    def metrics_url(self) -> str | None:
        """URL of the /metrics endpoint (see asapo_hpc.node.metrics); None when off."""
        return self._metrics.url if self._metrics else None

    @property
    def remote_endpoint(self) -> str | None:
        """'tcp://host:port' of the remote endpoint (asapo_hpc.node.remote); None when off."""
        return self._remote.endpoint if self._remote else None

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def stop(self, timeout: float | None = None) -> None:
        """Store what is in flight, close writers, rings and catalog; safe to call twice."""
        self._stop.set()
        if self._remote is not None:  # first: its members' claims go back to the groups
            self._remote.close(timeout)
            if not self._remote.running:
                self._remote = None
        for thread in self._threads:
            thread.join(timeout)
        if self._metrics is not None and not self.running:
            self._metrics.close()
            self._metrics = None
        if self._catalog is not None and not self.running:
            self._catalog.close()
            self._catalog = None
            event(logging.INFO, "node_stopped", beamtime=self.config.beamtime)

    def request_stop(self) -> None:
        """Ask the recorders to stop (safe from a signal handler); ``wait`` joins them."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stop is requested (or `timeout`); True when it was."""
        return self._stop.wait(timeout)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT request a clean stop (call from the main thread)."""
        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop()
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def counters(self) -> dict[str, Any]:
        """Per source: ring fill, sink group progress, backlog, errors, and per stream:
        messages / bytes in and written (plain dicts, see ``asapo_hpc.node.counters``)."""
        return self._counters.snapshot()

    def remote_counters(self) -> dict[str, Any] | None:
        """The remote endpoint's requests, refusals and sessions (see
        ``asapo_hpc.node.remote.RemoteCounters``); None when it is off."""
        remote = self._remote
        return remote.counters.snapshot() if remote is not None else None

    def __enter__(self) -> NodeService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
