"""RemoteProducer: ``Producer``'s calls against a remote node service (see the package
docstring)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from asapo_hpc.client._common import DEFAULT_STREAM, encode_meta
from asapo_hpc.client.remote.connection import IO_TIMEOUT_MS, Connection, delete_stream
from asapo_hpc.errors import AsapoWrongInputError


class RemoteProducer:
    """``Producer``'s calls against a remote node service (see the module docstring).

    `type` is ASAPO's producer type: "processed" sends need a token with ``write``, "raw"
    ones ``writeraw``. `timeout_ms`: how long a send waits for room in a full ring (None:
    the ring's full_timeout_s).
    """

    def __init__(self, endpoint: str, beamtime: str, data_source: str, token: str, *,
                 type: str = "processed", timeout_ms: int | None = None,
                 io_timeout_ms: int = IO_TIMEOUT_MS):
        self._conn = Connection(endpoint, beamtime, data_source, token, io_timeout_ms,
                                 producer_type=type)
        self.beamtime, self.data_source = beamtime, data_source
        self.timeout_ms = timeout_ms
        # without a timeout the node waits up to the ring's full_timeout_s: allow a minute
        self._wait_ms = 60_000 if timeout_ms is None else int(timeout_ms)

    def send(self, id: int, data: Any, meta: Any = None, *, stream: str = DEFAULT_STREAM,
             dataset: tuple[int, int] | None = None, name: str = "", auto_id: bool = False,
             callback: Callable[[dict, Exception | None], None] | None = None) -> int:
        """Publish `data` with `meta` into the node's ring; returns the message id (see
        Producer.send). AsapoRingFullError when the ring stayed full for the timeout."""
        meta_b = encode_meta(meta)  # the local producer's checks and messages
        if not auto_id and (not isinstance(id, (int, np.integer)) or isinstance(id, bool)
                            or id <= 0):
            raise AsapoWrongInputError(f"message id must be an integer >= 1, got {id!r}")
        buffer = _send_buffer(data)
        self._check_size(buffer.nbytes)
        args = {"id": 0 if auto_id else int(id), "auto_id": bool(auto_id), "stream": stream,
                "name": name, "meta_json": meta_b.decode() if meta_b else None,
                "dataset": _dataset_list(dataset), "timeout_ms": self.timeout_ms}
        data_id = self._conn.call("send", args, buffer, wait_ms=self._wait_ms)[0]
        if callback is not None:
            callback({"id": data_id, "stream": stream, "size": buffer.nbytes}, None)
        return data_id

    def _check_size(self, nbytes: int) -> None:
        """Refuse what the node's ring cannot take before sending it (see module doc)."""
        limit = self._conn.info()["max_message_bytes"]
        if nbytes > limit:
            raise AsapoWrongInputError(
                f"message of {nbytes} bytes is larger than source {self.data_source!r} "
                f"takes: its ring holds {limit} bytes (name and metadata included); split "
                "it, or give the source a bigger ring")

    def next_id(self, stream: str = DEFAULT_STREAM) -> int:
        """Take the next auto id of `stream` (shared with every producer of the source)."""
        return self._conn.call("next_id", {"stream": stream})[0]

    def send_stream_finished_flag(self, stream: str, last_id: int,
                                  next_stream: str | None = None) -> None:
        """Mark `stream` finished after `last_id`; consumers at its end learn `next_stream`."""
        self._conn.call("send_stream_finished_flag", {
            "stream": stream, "last_id": last_id, "next_stream": next_stream,
            "timeout_ms": self.timeout_ms}, wait_ms=self._wait_ms)

    def send_stream_meta(self, metadata: dict | str, mode: str = "replace", upsert: bool = True,
                         stream: str = DEFAULT_STREAM,
                         callback: Callable[[dict, Exception | None], None] | None = None
                         ) -> None:
        """Write the stream's metadata into the node's catalog (see Producer)."""
        self._conn.call("send_stream_meta", {"metadata": metadata, "mode": mode,
                                             "upsert": upsert, "stream": stream})
        if callback is not None:
            callback({"stream": stream, "mode": mode, "op": "stream_meta"}, None)

    def send_beamtime_meta(self, metadata: dict | str, mode: str = "replace",
                           upsert: bool = True,
                           callback: Callable[[dict, Exception | None], None] | None = None
                           ) -> None:
        """Write the beamtime metadata into the node's catalog (see Producer)."""
        self._conn.call("send_beamtime_meta", {"metadata": metadata, "mode": mode,
                                               "upsert": upsert})
        if callback is not None:
            callback({"mode": mode, "op": "beamtime_meta"}, None)

    def delete_stream(self, stream: str = DEFAULT_STREAM, error_on_not_exist: bool = True,
                      delete_meta: bool = True) -> bool:
        """Delete the stream's catalog records, group progress and (with delete_meta) its
        metadata on the node; True if it existed (see Producer.delete_stream)."""
        return delete_stream(self._conn, stream, error_on_not_exist, delete_meta)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RemoteProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dataset_list(dataset: tuple[int, int] | None) -> list[int] | None:
    """(substream, size) as the wire's list, checked as the local producer does."""
    if dataset is None:
        return None
    try:
        substream, size = (int(v) for v in dataset)
    except (TypeError, ValueError):
        raise AsapoWrongInputError(f"dataset must be (substream, size), got {dataset!r}") \
            from None
    if not 1 <= substream <= size:
        raise AsapoWrongInputError(
            f"dataset=({substream}, {size}): substream counts from 1 up to size")
    return [substream, size]


def _send_buffer(data: Any) -> memoryview:
    """`data` as a contiguous buffer pyzmq can send without copying."""
    try:
        view = memoryview(data)
    except TypeError:
        raise AsapoWrongInputError(
            f"data of type {type(data).__name__} does not expose a contiguous buffer; pass "
            "bytes, bytearray, memoryview or a numpy array") from None
    if not view.c_contiguous:
        raise AsapoWrongInputError("data is not C-contiguous: pass np.ascontiguousarray(data) "
                                   "(that copies)")
    return view.cast("B") if view.ndim != 1 or view.format != "B" else view
