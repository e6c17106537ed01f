"""Settings of the node service (``asapo-hpc serve``): one schema, documented field by field.

A TOML file (every key optional)::

    data_root = "./asapo_data"          # HDF5 files go to <data_root>/<beamtime>/<source>/<stream>
    catalog = ""                        # default <data_root>/catalog.sqlite
    beamtime = "bt"

    [sink]                              # SinkSettings: compression, frames_per_file, threads, ...
    compression = "bslz4"
    frames_per_file = 1000

    [[sources]]
    name = "detector"
    frame_shape = [512, 1536]           # omit (or format = "bytes") for opaque byte messages
    dtype = "uint16"
    parts = 1
    [sources.ring]                      # RingConfig: slot_count, slot_size, groups, ...
    slot_count = 1024
    slot_size = 1572864

``load_config(path, **overrides)`` reads it; overrides (the command line's flags) win.
Every ring gets the durable group ``sink`` added: the service acknowledges a message there
only once it is on disk and in the catalog.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asapo_hpc._compat import tomllib
from asapo_hpc.client.disk import CATALOG_NAME
from asapo_hpc.config import RingConfig, check_known_keys, check_name
from asapo_hpc.errors import AsapoWrongInputError
from asapo_hpc.sink import Compression, SinkSettings

SINK_GROUP = "sink"
FORMATS = ("frames", "bytes")

# Documentation of every field of NodeConfig and SourceConfig (tests check none is missing).
FIELD_DOCS: dict[str, str] = {
    "data_root": "Folder of the embedded default: HDF5 files under <data_root>/<beamtime>/"
                 "<source>/<stream>/, and the catalog unless `catalog` says otherwise.",
    "catalog": "Path of the SQLite catalog; empty = <data_root>/catalog.sqlite.",
    "beamtime": "Beamtime id of every source this service owns.",
    "sources": "The data sources: one ring each, recorded by one thread each.",
    "sink": "HDF5 sink settings (SinkSettings): compression none / bslz4 / zstd, "
            "frames_per_file, threads, max_pending, group, fsync_every_flush, master_file.",
    "batch_size": "Messages the recorder claims from a ring at once (1..256).",
    "record_batch_ms": "Most milliseconds the recorder keeps claiming after a claim returned, "
                       "to store small messages in batches: one HDF5 append + flush, one "
                       "catalog location transaction and one acknowledgement for everything "
                       "claimed meanwhile (messages still enter the catalog when claimed). "
                       "Bounds the delay it adds before a message is on disk, located and "
                       "acknowledged; collecting also stops at batch_size messages, half the "
                       "ring's slots "
                       "or 4 MiB of data (large messages gain nothing from waiting). "
                       "0 = off: record each claim at once.",
    "poll_ms": "How long the recorder waits for a message before it looks at its "
               "backlog and the stop flag again.",
    "retry_max_s": "After a write error the recorder retries the same frames with a new "
                   "writer, waiting 0.5 s, 1 s, ... up to this many seconds between tries. "
                   "It claims nothing new meanwhile, so the ring fills and producers feel "
                   "backpressure.",
    "status_interval_s": "Seconds between the status lines of `asapo-hpc serve`.",
    "metrics_port": "Port of the Prometheus /metrics endpoint (asapo_hpc.node.metrics): -1 = "
                    "off (the default: no port opens unasked), 0 = any free port (logged in "
                    "the node_started line, NodeService.metrics_url), else that port.",
    "metrics_host": "Address the /metrics endpoint binds; 127.0.0.1 unless you mean to expose "
                    "it (the figures are not secret, but nothing checks who asks).",
    "influx_url": "InfluxDB write URL for an optional line-protocol push, e.g. "
                  "http://host:8086/write?db=asapo (1.x) or "
                  "http://host:8086/api/v2/write?org=o&bucket=b (2.x); empty = no push.",
    "influx_token": "Sent as 'Authorization: Token <token>' with every push (InfluxDB 2.x); "
                    "empty = no header.",
    "influx_interval_s": "Seconds between two pushes to influx_url.",
    "remote_port": "Port of the remote endpoint (ZeroMQ ROUTER, asapo_hpc.node.remote) that "
                   "serves consumers and producers on other hosts (endpoint 'tcp://host:port' "
                   "in create_consumer / create_producer): -1 = off (the default), 0 = any "
                   "free port (logged in node_started, NodeService.remote_endpoint), else "
                   "that port. Every request needs a beamtime token.",
    "remote_host": "Address the remote endpoint binds; 127.0.0.1 unless you mean other hosts "
                   "to reach it (e.g. 0.0.0.0, or the address of the cluster network).",
    "remote_lease_s": "A remote consumer that makes no request for this many seconds is "
                      "presumed gone: the messages it holds go back to their groups "
                      "(redelivered). Keep it above the time a client spends on a message.",
    "secret_file": "Key file of the beamtime tokens (HS256) the remote endpoint checks; "
                   "empty = <data_root>/asapo_hpc_secret.key, created 0600 if missing. Issue "
                   "tokens with `asapo-hpc token --secret <this file>`.",
    # SourceConfig
    "name": "Data source name (the ring is /dev/shm/<prefix>.<beamtime>.<name>).",
    "format": "'frames': messages of frame_shape x dtype (x parts) are stored as images; "
              "'bytes': messages are stored as 1-D uint8 arrays. Messages of another size "
              "are stored as bytes in the sibling folder <stream>.raw<size>[x<parts>]. "
              "Default: 'frames' when frame_shape is given, else 'bytes'.",
    "frame_shape": "Shape of one frame (one part of a dataset), e.g. [512, 1536].",
    "dtype": "Pixel type of a frame, a numpy name (uint16, float32, ...).",
    "parts": "Parts per dataset message (1 = plain messages; 12 for a Lambda 9M's modules).",
    "ring": "The ring's RingConfig (see `asapo-hpc config explain`); the durable group "
            "'sink' is added to `groups`.",
}


@dataclass(frozen=True)
class SourceConfig:
    """One data source; see FIELD_DOCS."""

    name: str
    format: str = ""
    frame_shape: tuple[int, ...] = ()
    dtype: str = "uint8"
    parts: int = 1
    ring: RingConfig = field(default_factory=RingConfig)

    def __post_init__(self) -> None:
        check_name(self.name, "data source", 80)
        shape = tuple(self.frame_shape or ())
        object.__setattr__(self, "frame_shape", shape)
        fmt = self.format if self.format else ("frames" if shape else "bytes")
        object.__setattr__(self, "format", fmt)
        if fmt not in FORMATS:
            raise AsapoWrongInputError(f"source {self.name!r}: format {fmt!r} is not one of "
                                       f"{FORMATS}")
        if fmt == "frames" and (not shape or any(not isinstance(n, int) or n < 1
                                                 for n in shape)):
            raise AsapoWrongInputError(f"source {self.name!r}: frame_shape {shape!r} must be "
                                       "a non-empty list of positive integers")
        try:
            np.dtype(self.dtype)
        except TypeError:
            raise AsapoWrongInputError(f"source {self.name!r}: dtype {self.dtype!r} is not a "
                                       "numpy type name") from None
        if not isinstance(self.parts, int) or self.parts < 1:
            raise AsapoWrongInputError(f"source {self.name!r}: parts must be >= 1")
        groups = self.ring.groups
        if SINK_GROUP not in groups:
            ring = dataclasses.replace(self.ring, groups=(*groups, SINK_GROUP))
            object.__setattr__(self, "ring", ring)

    @functools.cached_property  # the recorder asks per message; np.prod costs ~2 µs
    def frame_nbytes(self) -> int:
        """Bytes of one frame (one part), 0 in bytes format."""
        if self.format != "frames":
            return 0
        return int(np.prod(self.frame_shape)) * np.dtype(self.dtype).itemsize

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SourceConfig:
        values = dict(values)
        check_known_keys("source", values, cls)
        ring = values.pop("ring", {})
        if isinstance(ring, dict):
            ring = RingConfig.from_dict(ring)
        if "frame_shape" in values:
            values["frame_shape"] = tuple(values["frame_shape"])
        return cls(ring=ring, **values)


@dataclass(frozen=True)
class NodeConfig:
    """Settings of one node service; see FIELD_DOCS."""

    data_root: Path = Path("./asapo_data")
    catalog: Path | None = None
    beamtime: str = "default"
    sources: tuple[SourceConfig, ...] = ()
    sink: SinkSettings = field(default_factory=SinkSettings)
    batch_size: int = 64
    # 50 ms: storing a 24 kB profile stream at 170 Hz costs the service 0.55-0.67 ms of CPU
    # per message instead of 0.63-0.81 at 20 ms (~1.1 unbatched). The catalog still sees
    # each message when claimed; only the file write, location and acknowledgement wait,
    # 50 ms is below what anyone reading the files notices, and a batch never holds more
    # than half the ring, so producers are not held up by it.
    record_batch_ms: float = 50.0
    poll_ms: int = 200
    retry_max_s: float = 10.0
    status_interval_s: float = 5.0
    metrics_port: int = -1
    metrics_host: str = "127.0.0.1"
    influx_url: str = ""
    influx_token: str = ""
    influx_interval_s: float = 10.0
    remote_port: int = -1
    remote_host: str = "127.0.0.1"
    remote_lease_s: float = 30.0
    secret_file: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_root", Path(self.data_root))
        if self.catalog:
            object.__setattr__(self, "catalog", Path(self.catalog))
        object.__setattr__(self, "secret_file", Path(self.secret_file)
                           if self.secret_file else None)
        object.__setattr__(self, "sources", tuple(self.sources))
        check_name(self.beamtime, "beamtime id", 80)
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise AsapoWrongInputError(f"sources named twice: {names}")
        if not 1 <= self.batch_size <= 256:
            raise AsapoWrongInputError(f"batch_size={self.batch_size} must be 1..256")
        if not 0 <= self.record_batch_ms <= 1000:
            raise AsapoWrongInputError(
                f"record_batch_ms={self.record_batch_ms} must be 0 (off) .. 1000")
        if self.poll_ms < 1 or self.retry_max_s <= 0 or self.status_interval_s <= 0:
            raise AsapoWrongInputError("poll_ms, retry_max_s and status_interval_s must be > 0")
        if not -1 <= self.metrics_port <= 65535 or self.influx_interval_s <= 0:
            raise AsapoWrongInputError(f"metrics_port={self.metrics_port} must be -1 (off), 0 "
                                       "(any free port) or a port; influx_interval_s > 0")
        if not -1 <= self.remote_port <= 65535 or not self.remote_lease_s > 0:
            raise AsapoWrongInputError(f"remote_port={self.remote_port} must be -1 (off), 0 "
                                       "(any free port) or a port; remote_lease_s > 0")
        self.sink.validated()
        Compression.parse(self.sink.compression)

    @property
    def catalog_path(self) -> Path:
        """Where the SQLite catalog lives."""
        return self.catalog or self.data_root / CATALOG_NAME

    def source(self, name: str) -> SourceConfig:
        """The source named `name`."""
        for source in self.sources:
            if source.name == name:
                return source
        raise AsapoWrongInputError(f"no source {name!r} in this node's configuration; "
                                   f"known: {[s.name for s in self.sources]}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NodeConfig:
        values = dict(values)
        check_known_keys("node", values, cls)
        sink = values.pop("sink", {})
        if isinstance(sink, dict):
            check_known_keys("sink", sink, SinkSettings)
            sink = SinkSettings(**sink)
        sources = tuple(s if isinstance(s, SourceConfig) else SourceConfig.from_dict(s)
                        for s in values.pop("sources", ()))
        return cls(sink=sink, sources=sources, **values)


def load_config(path: str | os.PathLike | None = None, *, data_root: str | None = None,
                beamtime: str | None = None, sources: list[str] | None = None,
                catalog: str | None = None, metrics_port: int | None = None,
                remote_port: int | None = None, remote_host: str | None = None,
                secret_file: str | None = None) -> NodeConfig:
    """The node configuration from the TOML file `path` (or defaults), then the overrides.

    `sources` keeps the named sources of the file, in that order; a name the file lacks
    is added with default settings (bytes messages, default ring).
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except OSError as exc:
            raise AsapoWrongInputError(f"cannot read node config {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise AsapoWrongInputError(f"node config {path} is not valid TOML: {exc}") from None
    config = NodeConfig.from_dict(values)
    changes: dict[str, Any] = {k: v for k, v in (("data_root", data_root),
                                                ("beamtime", beamtime),
                                                ("catalog", catalog),
                                                ("metrics_port", metrics_port),
                                                ("remote_port", remote_port),
                                                ("remote_host", remote_host),
                                                ("secret_file", secret_file)) if v is not None}
    if sources:
        known = {s.name: s for s in config.sources}
        changes["sources"] = tuple(known.get(name) or SourceConfig(name) for name in sources)
    return dataclasses.replace(config, **changes) if changes else config


def explain() -> str:
    """Every node setting with its default and meaning."""
    lines = []
    for cls in (NodeConfig, SourceConfig):
        lines.append(f"[{cls.__name__}]")
        for f in dataclasses.fields(cls):
            lines.append(f"{f.name}\n  {FIELD_DOCS[f.name]}")
    return "\n".join(lines)
