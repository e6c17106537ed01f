"""Pieces Producer and Consumer share: opening the segment for (beamtime, source), stream
name <-> index caching, and the endpoint check."""

from __future__ import annotations

import json
from typing import Any

from asapo_hpc._core import Segment
from asapo_hpc.config import RingConfig, segment_name
from asapo_hpc.errors import (
    AsapoConfigMismatchError,
    AsapoCorruptSegmentError,
    AsapoUnavailableServiceError,
    AsapoWrongInputError,
)

LOCAL_ENDPOINTS = ("", "shm", "local")
DEFAULT_STREAM = "default"


def check_endpoint(endpoint: str) -> None:
    """Node-local shared memory is the embedded default endpoint."""
    if endpoint not in LOCAL_ENDPOINTS:
        raise AsapoUnavailableServiceError(
            f"endpoint {endpoint!r} is not served by this client: use '' (node-local shared "
            "memory, the default) or 'tcp://host:port' (a node's remote port)")


def open_segment(beamtime: str, data_source: str, config: RingConfig | None,
                 create: bool) -> Segment:
    """Attach to the segment of (beamtime, source); create it if allowed and missing.

    config=None takes an existing segment's settings (or the defaults when creating);
    a config that contradicts an existing segment raises AsapoConfigMismatchError.
    """
    name = segment_name(beamtime, data_source)
    if create:
        try:
            return Segment.create(name, config or RingConfig())
        except AsapoConfigMismatchError:  # EEXIST: it exists already (or was just made)
            pass
    try:
        segment = Segment.attach(name)
    except AsapoCorruptSegmentError:  # there is a file, but not a usable ring: say so
        raise
    except AsapoUnavailableServiceError as exc:
        raise AsapoUnavailableServiceError(
            f"no ring for beamtime {beamtime!r}, data source {data_source!r}: start a "
            f"producer first, or open with create=True ({exc})") from None
    if config is not None:
        segment.check_config(config)
        for group in config.groups:  # declared groups that do not exist yet
            segment.group(group)
    return segment


def encode_meta(meta: Any) -> bytes:
    """Metadata to JSON bytes: a dict (or other JSON value), a JSON string, or None."""
    if meta is None:
        return b""
    if isinstance(meta, (str, bytes)):
        try:
            json.loads(meta)
        except ValueError as exc:
            raise AsapoWrongInputError(f"metadata string is not valid JSON: {exc}") from None
        return meta.encode() if isinstance(meta, str) else meta
    try:
        return json.dumps(meta, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise AsapoWrongInputError(
            f"metadata is not JSON-serialisable ({exc}); pass plain dicts, lists, str, "
            "numbers, bools and None") from None


class CallContext:
    """The C call context (``struct ahrpy_ctx``: ring, member, timeout) a producer or
    consumer passes to the fewest-argument calls; ``timeout_ns`` lives in it."""

    _ctx: Any

    @property
    def timeout_ns(self) -> int:
        """How long a call waits when not told (a send for room, a get for a message), ns."""
        return self._ctx.timeout_ns

    @timeout_ns.setter
    def timeout_ns(self, value: int) -> None:
        self._ctx.timeout_ns = int(value)


class StreamTable:
    """Stream name <-> index, cached per process (the index is stable for the segment)."""

    def __init__(self, segment: Segment):
        self._segment = segment
        self._index: dict[str, int] = {}
        self._names: dict[int, str] = {}

    def index(self, name: str) -> int:
        idx = self._index.get(name)
        if idx is None:
            if not isinstance(name, str) or not name:
                raise AsapoWrongInputError(f"bad stream name {name!r}: a non-empty string")
            idx = self._segment.stream(name)
            self._index[name] = idx
            self._names[idx] = name
        return idx

    def name(self, idx: int) -> str:
        name = self._names.get(idx)
        if name is None:
            name = self._segment.stream_name(idx)
            self._names[idx] = name
            self._index[name] = idx
        return name
