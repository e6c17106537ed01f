"""RemoteConsumer: ``Consumer``'s calls against a remote node service (see the package
docstring)."""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np
import zmq

from asapo_hpc.client._common import DEFAULT_STREAM
from asapo_hpc.client.message import Message, MessageList, OwnedMessage
from asapo_hpc.client.remote.connection import IO_TIMEOUT_MS, Connection, KeepAlive, delete_stream
from asapo_hpc.client.streams import LOCATION_WAIT_S, Dataset, check_count
from asapo_hpc.errors import AsapoError, AsapoPartialDataError, AsapoWrongInputError

MIN_KEEPALIVE_S = 0.05
_NOT_CLAIMED = 0xFFFFFFFF  # group handle of get_last / get_by_id copies (as consumer.py)
_CLAIMED = 0
_EMPTY = np.zeros(0, np.uint8)


class RemoteBatch(MessageList):
    """The Messages of one remote ``get_next_batch`` (views of the received frames)."""


class RemoteConsumer:
    """``Consumer``'s calls against a remote node service (see the module docstring)."""

    def __init__(self, endpoint: str, beamtime: str, data_source: str, token: str, *,
                 timeout_ms: int = 1000, io_timeout_ms: int = IO_TIMEOUT_MS,
                 keepalive: bool = True):
        self._conn = Connection(endpoint, beamtime, data_source, token, io_timeout_ms)
        self.beamtime, self.data_source = beamtime, data_source
        self.timeout_ms = int(timeout_ms)
        self._stream_index: dict[str, int] = {}
        self._stream_names: list[str] = []
        self._claims: set[tuple[str, str, int]] = set()  # (group, stream, id) held here
        self._keepalive_on = bool(keepalive)
        self._keepalive: KeepAlive | None = None

    # -- messages ---------------------------------------------------------------------------

    def _stream_name(self, idx: int) -> str:  # Message.stream asks its consumer
        return self._stream_names[idx]

    def _message(self, result: dict[str, Any], frame: zmq.Frame | None,
                 group: int) -> Message:
        stream = result["stream"]
        idx = self._stream_index.get(stream)
        if idx is None:
            idx = self._stream_index[stream] = len(self._stream_names)
            self._stream_names.append(stream)
        name = result["name"].encode()
        meta = json.dumps(result["meta"], separators=(",", ":")).encode() \
            if result["meta"] else b""
        substream, size = result["dataset"] or (0, 0)
        fields = (result["seq"], result["id"], 0, result["size"], 0, result["timestamp"],
                  len(name), len(meta), idx, 0, substream, size, result["attempts"], 0)
        data = _EMPTY if frame is None else np.frombuffer(frame.buffer, dtype=np.uint8)
        return OwnedMessage(fields, self, group, data, name + meta)  # type: ignore[arg-type]

    def _claimed(self, group_id: str, messages: Iterable[Message]) -> None:
        """Note claims (the keep-alive pings while there are some)."""
        for msg in messages:
            self._claims.add((group_id, msg.stream, msg.id))
        if self._claims and self._keepalive_on and self._keepalive is None:
            try:
                lease_s = float(self._conn.info()["lease_s"])
            except AsapoError:  # the message is delivered; the next claim tries again
                return
            self._keepalive = KeepAlive(self._conn.endpoint, self._conn.envelope,
                                         self._claims, max(MIN_KEEPALIVE_S, lease_s / 3))
            weakref.finalize(self, self._keepalive.stop)  # a consumer never closed

    def get_next(self, group_id: str, meta_only: bool = False, stream: str | None = None,
                 timeout_ms: int | None = None) -> Message:
        """Claim the next message for `group_id` (see Consumer.get_next)."""
        wait = self.timeout_ms if timeout_ms is None else int(timeout_ms)
        result, frame = self._conn.call("get_next", {
            "group": group_id, "stream": stream, "timeout_ms": wait,
            "meta_only": bool(meta_only)}, wait_ms=wait)
        msg = self._message(result, frame, _CLAIMED)
        self._claimed(group_id, (msg,))
        return msg

    def get_next_batch(self, group_id: str, n: int, stream: str | None = None,
                       timeout_ms: int | None = None) -> RemoteBatch:
        """Claim up to `n` (<= 256) messages in one round trip; waits only for the first
        (see Consumer.get_next_batch). Acknowledge with ``acknowledge_batch``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise AsapoWrongInputError(f"n must be an integer >= 1, got {n!r}")
        wait = self.timeout_ms if timeout_ms is None else int(timeout_ms)
        result, frames = self._conn.call_frames("get_next_batch", {
            "group": group_id, "n": min(n, 256), "stream": stream, "timeout_ms": wait},
            wait_ms=wait)
        batch = RemoteBatch(self._message(r, f, _CLAIMED)
                            for r, f in zip(result["messages"], frames, strict=True))
        self._claimed(group_id, batch)
        return batch

    def get_by_id(self, id: int, stream: str = DEFAULT_STREAM) -> Message:
        """A copy of message `id` of `stream`, from the node's ring or disk."""
        result, frame = self._conn.call("get_by_id", {"id": id, "stream": stream})
        return self._message(result, frame, _NOT_CLAIMED)

    def get_last(self, stream: str | None = None) -> Message:
        """A copy of the newest message (see Consumer.get_last)."""
        result, frame = self._conn.call("get_last", {"stream": stream})
        return self._message(result, frame, _NOT_CLAIMED)

    def _claim(self, id: int | Message, stream: str | None) -> tuple[int, str]:
        if isinstance(id, Message):
            if id._consumer is not self:
                raise AsapoWrongInputError(
                    f"{id!r} was delivered to another Consumer: acknowledge it with that one")
            if id._group == _NOT_CLAIMED:
                raise AsapoWrongInputError(
                    f"{id!r} is a copy from get_last / get_by_id and was not claimed: there "
                    "is nothing to acknowledge (get_next claims messages)")
            return id.id, id.stream
        return id, stream or DEFAULT_STREAM

    def acknowledge(self, group_id: str, id: int | Message, stream: str | None = None) -> None:
        """Acknowledge message `id` (or a Message) for the group."""
        data_id, stream_name = self._claim(id, stream)
        self._conn.call("acknowledge", {"group": group_id, "id": data_id,
                                        "stream": stream_name})
        self._claims.discard((group_id, stream_name, data_id))

    def acknowledge_batch(self, group_id: str, messages: Iterable[Message]) -> int:
        """Acknowledge several messages in one round trip; returns how many were still
        held by this consumer (see Consumer.acknowledge_batch)."""
        pairs = [self._claim(m, None) for m in messages]
        if not pairs:
            return 0
        done = self._conn.call("acknowledge_batch", {
            "group": group_id, "messages": [[s, i] for i, s in pairs]})[0]
        for data_id, stream in pairs:
            self._claims.discard((group_id, stream, data_id))
        return done

    def neg_acknowledge(self, group_id: str, id: int | Message, delay_ms: int = 0,
                        stream: str | None = None) -> None:
        """Give the message back to the group: redelivered after delay_ms (to any member)."""
        data_id, stream_name = self._claim(id, stream)
        self._conn.call("neg_acknowledge", {"group": group_id, "id": data_id,
                                            "stream": stream_name, "delay_ms": delay_ms})
        self._claims.discard((group_id, stream_name, data_id))

    def set_resend_nacs(self, resend: bool, delay_ms: int, attempts: int) -> None:
        """ASAPO's resend settings for the groups this consumer uses (see Consumer)."""
        self._conn.call("set_resend_nacs", {"resend": resend, "delay_ms": delay_ms,
                                            "attempts": attempts})

    # -- datasets -----------------------------------------------------------------------------

    def _dataset(self, result: dict[str, Any], frames: list[zmq.Frame]) -> Dataset:
        """The Dataset of a reply; AsapoPartialDataError carrying it when it is partial."""
        parts = [self._message(r, f, _NOT_CLAIMED)
                 for r, f in zip(result["parts"], frames, strict=True)]
        dataset = Dataset(result["id"], result["size"], result["timestamp"], parts)
        if result.get("partial"):
            raise AsapoPartialDataError(result["partial"], partial_data=dataset)
        return dataset

    def get_next_dataset(self, group_id: str, min_size: int = 0, stream: str = DEFAULT_STREAM,
                         timeout_ms: int | None = None) -> Dataset:
        """The group's next complete dataset, to exactly one member of the group; after the
        timeout a partial one with at least `min_size` parts (AsapoPartialDataError whose
        ``partial_data`` is the Dataset). See Consumer.get_next_dataset."""
        wait = self.timeout_ms if timeout_ms is None else int(timeout_ms)
        result, frames = self._conn.call_frames("get_next_dataset", {
            "group": group_id, "min_size": check_count("min_size", min_size), "stream": stream,
            "timeout_ms": wait}, wait_ms=wait + LOCATION_WAIT_S * 1000)
        return self._dataset(result, frames)

    def get_dataset_by_id(self, id: int, stream: str = DEFAULT_STREAM,
                          min_size: int = 0) -> Dataset:
        """Dataset `id` (see Consumer.get_dataset_by_id)."""
        result, frames = self._conn.call_frames("get_dataset_by_id", {
            "id": id, "stream": stream, "min_size": check_count("min_size", min_size)},
            wait_ms=LOCATION_WAIT_S * 1000)
        return self._dataset(result, frames)

    def get_last_dataset(self, min_size: int = 0, stream: str = DEFAULT_STREAM) -> Dataset:
        """The newest complete dataset (see Consumer.get_last_dataset)."""
        result, frames = self._conn.call_frames("get_last_dataset", {
            "stream": stream, "min_size": check_count("min_size", min_size)},
            wait_ms=LOCATION_WAIT_S * 1000)
        return self._dataset(result, frames)

    def acknowledge_dataset(self, group_id: str, dataset: Dataset | int,
                            stream: str = DEFAULT_STREAM) -> None:
        """The group processed this dataset (needed with set_resend_nacs)."""
        data_id = dataset.id if isinstance(dataset, Dataset) else dataset
        self._conn.call("acknowledge_dataset", {"group": group_id, "id": data_id,
                                                "stream": stream})

    def neg_acknowledge_dataset(self, group_id: str, dataset: Dataset | int, delay_ms: int = 0,
                                stream: str = DEFAULT_STREAM) -> None:
        """Give the dataset back to the group: delivered again after delay_ms."""
        data_id = dataset.id if isinstance(dataset, Dataset) else dataset
        self._conn.call("neg_acknowledge_dataset", {"group": group_id, "id": data_id,
                                                    "delay_ms": delay_ms, "stream": stream})

    def get_unacknowledged_messages(self, group_id: str, from_id: int = 0, to_id: int = 0,
                                    stream: str = DEFAULT_STREAM) -> list[int]:
        """ASAPO's call: ids in [from_id, to_id] (0: first / last) the group has not
        acknowledged; for groups the catalog keeps (datasets, disk reads), else
        AsapoWrongInputError."""
        return self._conn.call("get_unacknowledged_messages", {
            "group": group_id, "from_id": from_id, "to_id": to_id, "stream": stream})[0]

    def get_last_acknowledged_message(self, group_id: str,
                                      stream: str = DEFAULT_STREAM) -> int | None:
        """ASAPO's call: the largest id the group acknowledged, None when none (catalog
        groups only, as get_unacknowledged_messages)."""
        return self._conn.call("get_last_acknowledged_message", {
            "group": group_id, "stream": stream})[0]

    # -- streams and metadata -----------------------------------------------------------------

    def get_stream_list(self, from_stream: str = "", filter: str = "all"
                        ) -> list[dict[str, Any]]:
        return self._conn.call("get_stream_list", {"from_stream": from_stream,
                                                   "filter": filter})[0]

    def get_current_size(self, stream: str = DEFAULT_STREAM,
                         include_incomplete: bool = True) -> int:
        return self._conn.call("get_current_size", {
            "stream": stream, "include_incomplete": include_incomplete})[0]

    def get_current_dataset_count(self, stream: str = DEFAULT_STREAM,
                                  include_incomplete: bool = True) -> int:
        """ASAPO's name for ``get_current_size`` of a dataset stream."""
        return self.get_current_size(stream, include_incomplete)

    def query_messages(self, query: str, stream: str = DEFAULT_STREAM) -> list[dict[str, Any]]:
        return self._conn.call("query_messages", {"query": query, "stream": stream})[0]

    def get_stream_info(self, stream: str = DEFAULT_STREAM) -> dict[str, Any]:
        return self._conn.call("get_stream_info", {"stream": stream})[0]

    def get_last_stream(self) -> dict[str, Any] | None:
        return self._conn.call("get_last_stream", {})[0]

    def get_source_list(self) -> list[str]:
        return self._conn.call("get_source_list", {})[0]

    def get_beamtime_meta(self) -> dict[str, Any]:
        return self._conn.call("get_beamtime_meta", {})[0]

    def get_stream_meta(self, stream: str = DEFAULT_STREAM) -> dict[str, Any]:
        return self._conn.call("get_stream_meta", {"stream": stream})[0]

    def delete_stream(self, stream: str = DEFAULT_STREAM, error_on_not_exist: bool = True,
                      delete_meta: bool = True) -> bool:
        """Delete the stream's catalog records, group progress and (with delete_meta) its
        metadata on the node; True if it existed. Needs a token with ``write``."""
        return delete_stream(self._conn, stream, error_on_not_exist, delete_meta)

    # -- life cycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Give back what this member holds (best effort) and close the socket."""
        if self._keepalive is not None:
            self._keepalive.stop()
        if self._conn.closed:
            return
        try:
            self._conn.call("close", {})
        except AsapoError:
            pass  # the node is gone or refuses: its lease releases our messages
        self._claims.clear()
        self._conn.close()

    def __enter__(self) -> RemoteConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

