"""ASAPO's stream, metadata and dataset calls of the Python clients, from the node's catalog.

``ConsumerStreams`` and ``ProducerStreams`` are mixins of ``Consumer`` and ``Producer``. They
answer from the catalog the node service (``asapo-hpc serve``) keeps at
``<data root>/catalog.sqlite`` (data root: the client's ``data_root``, else
$ASAPO_HPC_DATA_ROOT, else ./asapo_data). The catalog has one beamtime per node; it is keyed
by data source and stream. Metadata written by a producer goes straight into that catalog,
not through the ring. ``delete_stream`` deletes the stream's catalog records, group progress
and metadata; messages still in the ring and files on disk stay.

Datasets. A dataset is one message id of n parts, each published to the ring as its own
message with ``dataset=(k, n)``. A ring group hands each *message* to one member, so the parts
of one id would be scattered over the members of a group, and no member could tell which
other member holds the rest. Dataset groups therefore are catalog groups, as in ASAPO (whose
broker assembles datasets from its database): ``get_next_dataset`` takes the group's next
*id* from the catalog in one SQLite write transaction, so with any number of members, in any
processes, every dataset goes to exactly one member, whatever the order in which its parts
were published; the group's progress persists (a restarted group resumes). The parts' bytes
are read back from the node's HDF5 files (the ring cannot be addressed by part); the node's
sink group holds every ring slot until the part is written, so nothing is lost in between.
A dataset group does not claim ring messages, so it never holds the producer back; mixing
``get_next`` and ``get_next_dataset`` on one group id is meaningless (they are different
groups: ring and catalog). With ``set_resend_nacs`` in force, unacknowledged datasets come
back after its delay; acknowledge with ``acknowledge_dataset``. Limitation: the sink stores
an incomplete dataset's parts only when its stream finishes, so a partial dataset handed out
(min_size) on a running stream waits LOCATION_WAIT_S for them, then goes back to the group
with AsapoDataNotInCacheError.

Acknowledgements. The catalog keeps per-id acknowledgements of its groups (dataset groups,
and groups reading a stream from disk: see ``asapo_hpc.client.disk_groups``), so ASAPO's
``get_unacknowledged_messages`` and ``get_last_acknowledged_message`` answer for those; a
ring group's progress is in the ring, and asking about one is an AsapoWrongInputError. The
node's remote endpoint answers RemoteConsumer's calls with these same methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asapo_hpc.catalog import Catalog, DatasetRecord, MessageRecord, MetaMode, ResendPolicy
from asapo_hpc.catalog.groups import Delivery, PartialDeliveryError
from asapo_hpc.client.disk import catalog_path_for
from asapo_hpc.client.message import Message, OwnedMessage
from asapo_hpc.errors import (
    AsapoDataNotInCacheError,
    AsapoNoDataError,
    AsapoPartialDataError,
    AsapoStreamFinishedError,
    AsapoUnavailableServiceError,
    AsapoWrongInputError,
)
from asapo_hpc.sink import FrameReader

STREAM_FILTERS = ("all", "finished", "unfinished")
META_MODES = ("insert", "replace", "update")
DEFAULT_STREAM = "default"
POLL_S = 0.05  # how often a waiting get_next_dataset asks the catalog again
LOCATION_WAIT_S = 10.0  # at least this long for the sink to write a delivered dataset's parts
MAX_ID_RANGE = 1_000_000  # ids per get_unacknowledged_messages answer
_NOT_CLAIMED = 0xFFFFFFFF  # group handle of messages no ring group holds (as consumer.py)
_FOREVER_NS = 10 * 365 * 24 * 3600 * 10**9  # consumer.py's "never resend"


def _check_filter(filter: str) -> str:
    if filter not in STREAM_FILTERS:
        raise AsapoWrongInputError(
            f"stream filter {filter!r} unknown; use one of {', '.join(STREAM_FILTERS)}")
    return filter


def _check_mode(mode: str) -> str:
    if not isinstance(mode, str) or mode.lower() not in META_MODES:
        raise AsapoWrongInputError(
            f"metadata mode {mode!r} unknown; use one of {', '.join(META_MODES)}")
    return mode.lower()


def _check_stream(stream: str) -> str:
    if not isinstance(stream, str) or not stream:
        raise AsapoWrongInputError(f"bad stream name {stream!r}: a non-empty string")
    return stream


def check_count(name: str, value: int) -> int:
    """`value` as an integer >= 0 (min_size, ids where 0 means "first / last")."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AsapoWrongInputError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def parts_stored(parts: list[MessageRecord]) -> bool:
    """Whether the sink stored every part that has bytes (it then has a file)."""
    return not any(p.size and p.file_path is None for p in parts)


@dataclass
class Dataset:
    """One dataset: message ``id`` of ``size`` parts; ``parts`` are the parts that arrived,
    as Messages owning copies of their bytes, sorted by substream."""

    id: int
    size: int
    timestamp: int
    parts: list[Message] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.parts) >= self.size

    def record(self) -> dict[str, Any]:
        """ASAPO's dataset record (v0.7 field names)."""
        return {"_id": self.id, "dataset_size": self.size, "timestamp": self.timestamp,
                "messages": [p.record() for p in self.parts]}

    def __repr__(self) -> str:
        return f"Dataset(id={self.id}, parts={len(self.parts)}/{self.size})"


class _CatalogClient:
    """The lazily opened catalog of the node (one per client) and where it lives."""

    beamtime: str
    data_source: str

    @property
    def catalog_path(self) -> Path:
        """<data root>/catalog.sqlite; the data root from the client's ``data_root``
        (a Producer may have it set as an attribute), $ASAPO_HPC_DATA_ROOT or ./asapo_data."""
        return catalog_path_for(getattr(self, "data_root", None))

    def _catalog(self) -> Catalog:
        catalog = getattr(self, "_streams_catalog", None)
        if catalog is None:
            path = self.catalog_path
            if not path.exists():
                raise AsapoUnavailableServiceError(
                    f"no catalog at {path} for beamtime {self.beamtime!r}, data source "
                    f"{self.data_source!r}: the node service (`asapo-hpc serve`) creates it; "
                    "start it, or point data_root / ASAPO_HPC_DATA_ROOT at its data root")
            catalog = self._streams_catalog = Catalog(path)
        return catalog

    def _close_streams(self) -> None:
        """Close the catalog (and the file reader) this client opened; call from close()."""
        disk_groups = getattr(self, "_disk_groups", None)
        if disk_groups is not None and getattr(self, "_streams_catalog", None) is not None:
            disk_groups.close()  # auto_ack of disk-mode groups goes to the catalog first
        catalog = getattr(self, "_streams_catalog", None)
        if catalog is not None:
            catalog.close()
            self._streams_catalog = None
        frames = getattr(self, "_streams_frames", None)
        if frames is not None:
            frames.close()
            self._streams_frames = None

    # -- calls both clients have ------------------------------------------------------------

    def get_stream_info(self, stream: str = DEFAULT_STREAM) -> dict[str, Any]:
        """ASAPO's stream entry (name, lastId, timestampCreated, timestampLast, finished,
        nextStream); AsapoNoDataError when the stream does not exist."""
        info = self._catalog().get_stream_info(self.data_source, _check_stream(stream))
        return info.to_asapo_record()

    def get_last_stream(self) -> dict[str, Any] | None:
        """The most recently created stream's entry, None when the source has none."""
        info = self._catalog().get_last_stream(self.data_source)
        return None if info is None else info.to_asapo_record()

    def get_beamtime_meta(self) -> dict[str, Any]:
        """The beamtime metadata; AsapoNoDataError when none was written."""
        return self._catalog().get_beamtime_meta(self.data_source)

    def get_stream_meta(self, stream: str = DEFAULT_STREAM) -> dict[str, Any]:
        """The stream's metadata; AsapoNoDataError when none was written."""
        return self._catalog().get_stream_meta(self.data_source, _check_stream(stream))

    def delete_stream(self, stream: str = DEFAULT_STREAM, error_on_not_exist: bool = True,
                      delete_meta: bool = True) -> bool:
        """Delete the stream's catalog records, group progress and (with delete_meta) its
        metadata; True if it existed. Ring contents and HDF5 files are not touched."""
        return self._catalog().delete_stream(
            self.data_source, _check_stream(stream), error_on_not_exist=error_on_not_exist,
            delete_meta=delete_meta)


class ProducerStreams(_CatalogClient):
    """A Producer's metadata and stream calls: written to / read from the node's catalog
    directly (local), not sent through the ring."""

    def send_stream_meta(self, metadata: dict | str, mode: str = "replace", upsert: bool = True,
                         stream: str = DEFAULT_STREAM,
                         callback: Callable[[dict, Exception | None], None] | None = None
                         ) -> None:
        """Write the stream's metadata: ``insert`` (fails if it exists), ``replace``,
        ``update`` (merges top-level keys; without upsert it must exist)."""
        mode = _check_mode(mode)
        self._catalog().set_stream_meta(self.data_source, _check_stream(stream), metadata,
                                        MetaMode.parse(mode), upsert)
        if callback is not None:
            callback({"stream": stream, "mode": mode, "op": "stream_meta"}, None)

    def send_beamtime_meta(self, metadata: dict | str, mode: str = "replace",
                           upsert: bool = True,
                           callback: Callable[[dict, Exception | None], None] | None = None
                           ) -> None:
        """Write the beamtime metadata, with ``send_stream_meta``'s modes."""
        mode = _check_mode(mode)
        self._catalog().set_beamtime_meta(self.data_source, metadata, MetaMode.parse(mode),
                                          upsert)
        if callback is not None:
            callback({"mode": mode, "op": "beamtime_meta"}, None)


class ConsumerStreams(_CatalogClient):
    """A Consumer's stream, query, metadata and dataset calls (see the module docstring)."""

    _streams: Any  # Consumer's StreamTable
    _resend: tuple[int, int] | None
    timeout_ns: int

    def get_stream_list(self, from_stream: str = "", filter: str = "all"
                        ) -> list[dict[str, Any]]:
        """Streams sorted by creation from ``from_stream`` (empty: the first), ``filter``
        "all", "finished" or "unfinished"; ASAPO's entries."""
        _check_filter(filter)
        infos = self._catalog().get_stream_list(self.data_source, from_stream, filter)
        return [info.to_asapo_record() for info in infos]

    def get_source_list(self) -> list[str]:
        """Data sources with streams in the node's catalog, by name."""
        return self._catalog().get_source_list()

    def get_current_size(self, stream: str = DEFAULT_STREAM,
                         include_incomplete: bool = True) -> int:
        """Messages (ids) in the stream, finish marker not counted; without
        include_incomplete, datasets count only when complete."""
        return self._catalog().get_current_size(
            self.data_source, _check_stream(stream), dataset=True,
            incomplete=include_incomplete)

    def get_current_dataset_count(self, stream: str = DEFAULT_STREAM,
                                  include_incomplete: bool = True) -> int:
        """ASAPO's name for ``get_current_size`` of a dataset stream."""
        return self.get_current_size(stream, include_incomplete)

    def query_messages(self, query: str, stream: str = DEFAULT_STREAM) -> list[dict[str, Any]]:
        """ASAPO message records of the stream matching ``query`` (SQL WHERE subset over
        record fields and ``meta.<key>``), by id unless the query orders them."""
        records = self._catalog().query_messages(self.data_source, _check_stream(stream),
                                                 query)
        return [r.to_asapo_record() for r in records]

    # -- datasets -------------------------------------------------------------------------

    def get_next_dataset(self, group_id: str, min_size: int = 0, stream: str = DEFAULT_STREAM,
                         timeout_ms: int | None = None) -> Dataset:
        """The group's next complete dataset, to exactly one member of the group.

        Waits up to the timeout for the next id to complete. Then, with ``min_size`` > 0 and
        at least that many parts, hands it out as partial: AsapoPartialDataError whose
        ``partial_data`` is the Dataset (so is a partial one redelivered). Else the catalog's
        error (AsapoNoDataError while the next id is short of parts, AsapoEndOfStreamError /
        AsapoStreamFinishedError). Every part's ``attempts`` is the group's count of
        deliveries of the id (1, then 2, 3, ... when redelivered), as a single message's.
        """
        check_count("min_size", min_size)
        _check_stream(stream)
        timeout_s = self.timeout_ns / 1e9 if timeout_ms is None else timeout_ms / 1000
        deadline = time.monotonic() + timeout_s
        try:
            delivery = self._next_complete(group_id, stream, deadline)
            if delivery is None:  # timed out: a partial one, if min_size allows
                delivery = self._group_next(group_id, stream, min_size)
        except PartialDeliveryError as exc:  # with min_size, or a partial one redelivered
            partial = self._group_dataset(group_id, stream, exc.delivery, deadline)
            raise AsapoPartialDataError(str(exc), partial_data=partial) from None
        return self._group_dataset(group_id, stream, delivery, deadline)

    def _next_complete(self, group_id: str, stream: str, deadline: float
                       ) -> Delivery | None:
        """Poll the catalog for the group's next complete dataset until the deadline."""
        while True:
            try:
                return self._group_next(group_id, stream, 0)
            except AsapoStreamFinishedError:
                raise
            except AsapoNoDataError:
                if time.monotonic() >= deadline:
                    return None
            time.sleep(POLL_S)

    def _group_next(self, group_id: str, stream: str, min_size: int) -> Delivery:
        """The group's next dataset and its delivery count; PartialDeliveryError for a
        partial one."""
        return self._catalog().group_next_delivery(
            group_id, self.data_source, stream, dataset=True, min_size=min_size,
            resend=self._resend_policy())

    def _resend_policy(self) -> ResendPolicy | None:
        resend = getattr(self, "_resend", None)
        if resend is None or resend[0] >= _FOREVER_NS:
            return None
        lease_ns, attempts = resend
        return ResendPolicy(True, lease_ns // 1_000_000, attempts)

    def _group_dataset(self, group_id: str, stream: str, delivery: Delivery,
                       deadline: float) -> Dataset:
        """The delivered dataset's bytes, each part with the delivery count as its
        ``attempts``; if the sink does not store them in time, the dataset goes back to
        the group and AsapoDataNotInCacheError is raised."""
        record = delivery.record
        try:
            return self._dataset(record, stream, deadline, delivery.deliveries)
        except AsapoDataNotInCacheError:
            self._catalog().neg_acknowledge(group_id, self.data_source, stream, record.data_id)
            raise

    def acknowledge_dataset(self, group_id: str, dataset: Dataset | int,
                            stream: str = DEFAULT_STREAM) -> None:
        """The group processed this dataset (needed with set_resend_nacs)."""
        data_id = dataset.id if isinstance(dataset, Dataset) else dataset
        self._catalog().acknowledge(group_id, self.data_source, _check_stream(stream), data_id)

    def neg_acknowledge_dataset(self, group_id: str, dataset: Dataset | int, delay_ms: int = 0,
                                stream: str = DEFAULT_STREAM) -> None:
        """Give the dataset back to the group: delivered again after delay_ms."""
        data_id = dataset.id if isinstance(dataset, Dataset) else dataset
        self._catalog().neg_acknowledge(group_id, self.data_source, _check_stream(stream),
                                        data_id, delay_ms)

    # -- acknowledgements the catalog keeps (ASAPO's queries) --------------------------------

    def get_unacknowledged_messages(self, group_id: str, from_id: int = 0, to_id: int = 0,
                                    stream: str = DEFAULT_STREAM) -> list[int]:
        """ASAPO's call: ids in [from_id, to_id] (0: first / last) the group has not
        acknowledged, among the stream's ids (to_id is clamped to the last one), at most
        MAX_ID_RANGE at once. For groups the catalog keeps (dataset groups, groups reading
        the stream from disk); a ring group raises AsapoWrongInputError. The node's remote
        endpoint answers with this same call."""
        catalog = self._acks_catalog(group_id, stream)
        first, asked = max(check_count("from_id", from_id), 1), check_count("to_id", to_id)
        if asked and asked < first:
            raise AsapoWrongInputError(f"empty range: to_id {asked} is below from_id {first}")
        last = catalog.get_stream_info(self.data_source, stream).last_id
        last = min(asked or last, last)
        if last < first:  # the range lies past the stream's last id
            return []
        if last - first >= MAX_ID_RANGE:
            raise AsapoWrongInputError(
                f"ids {first}..{last} are more than {MAX_ID_RANGE} at once: ask in ranges "
                "(from_id, to_id)")
        return catalog.unacknowledged(group_id, self.data_source, stream, first, last)

    def get_last_acknowledged_message(self, group_id: str,
                                      stream: str = DEFAULT_STREAM) -> int | None:
        """ASAPO's call: the largest id the group acknowledged, None when none (catalog
        groups only, as get_unacknowledged_messages)."""
        catalog = self._acks_catalog(group_id, stream)
        return catalog.last_acknowledged(group_id, self.data_source, stream) or None

    def _acks_catalog(self, group_id: str, stream: str) -> Catalog:
        """The catalog, if it keeps the acknowledgements of `group_id` on `stream`."""
        catalog = self._catalog()
        if not catalog.has_group(group_id, self.data_source, _check_stream(stream)):
            raise AsapoWrongInputError(
                f"group {group_id!r} keeps no acknowledgements of stream {stream!r} in the "
                "catalog: only dataset groups (get_next_dataset) and groups reading the "
                "stream from disk do; a ring group's progress is in the ring (see the "
                "asapo_group_* metrics)")
        return catalog

    def get_last_dataset(self, min_size: int = 0, stream: str = DEFAULT_STREAM) -> Dataset:
        """The complete dataset (with min_size: one with that many parts) with the largest
        id; partial ones raise AsapoPartialDataError carrying the Dataset."""
        record = self._catalog().get_last_dataset(self.data_source, _check_stream(stream),
                                                  min_size)
        return self._dataset(record, stream, time.monotonic())

    def get_dataset_by_id(self, id: int, stream: str = DEFAULT_STREAM,
                          min_size: int = 0) -> Dataset:
        """Dataset ``id``: complete, or with min_size partial (AsapoPartialDataError carrying
        the Dataset); AsapoNoDataError when short of parts."""
        try:
            record = self._catalog().get_dataset_by_id(self.data_source,
                                                       _check_stream(stream), id, min_size)
        except AsapoPartialDataError as exc:
            partial = self._dataset(exc.partial_data, stream, time.monotonic())
            raise AsapoPartialDataError(str(exc), partial_data=partial) from None
        return self._dataset(record, stream, time.monotonic())

    # -- parts from disk --------------------------------------------------------------------

    def _dataset(self, record: DatasetRecord, stream: str, deadline: float,
                 attempts: int = 0) -> Dataset:
        """The Dataset of `record`; `attempts` is its group's delivery count (0: no group)."""
        parts = self._located(record, stream, max(deadline, time.monotonic() + LOCATION_WAIT_S))
        return Dataset(record.data_id, record.dataset_size, record.timestamp,
                       [self._part_message(p, stream, attempts) for p in parts])

    def _located(self, record: DatasetRecord, stream: str, deadline: float
                 ) -> list[MessageRecord]:
        """The dataset's parts once the sink stored each (re-read from the catalog)."""
        parts = record.parts
        while not parts_stored(parts):
            if time.monotonic() >= deadline:
                raise AsapoDataNotInCacheError(
                    f"dataset {record.data_id} of stream {stream!r} is in the catalog but the "
                    "node's sink has not stored all its parts: is the node service running? "
                    "(see its sink_write_failed log lines)")
            time.sleep(POLL_S)
            parts = self._fresh_parts(record, stream)
        return sorted(parts, key=lambda p: p.dataset_substream)

    def _fresh_parts(self, record: DatasetRecord, stream: str) -> list[MessageRecord]:
        """The record's parts as the catalog has them now (the sink adds their files)."""
        wanted = {p.dataset_substream for p in record.parts}
        fresh = self._catalog().query_messages(self.data_source, stream,
                                               f"_id = {record.data_id}")
        return [p for p in fresh if p.dataset_substream in wanted]

    def _part_message(self, rec: MessageRecord, stream: str, attempts: int = 0) -> Message:
        data = self._read_frame(rec)
        name, meta = rec.name.encode(), rec.meta_json().encode()
        fields = (0, rec.data_id, 0, rec.size, 0, rec.timestamp, len(name), len(meta),
                  self._streams.index(stream), 0, rec.dataset_substream, rec.dataset_size,
                  attempts, 0)
        return OwnedMessage(fields, self, _NOT_CLAIMED, data, name + meta)

    def _read_frame(self, rec: MessageRecord) -> np.ndarray:
        if rec.size == 0:
            return np.zeros(0, np.uint8)
        frames = getattr(self, "_streams_frames", None)
        if frames is None:
            frames = self._streams_frames = FrameReader()
        frame = frames.read_at(rec.file_path, rec.dataset_path, rec.frame_index)
        return np.ascontiguousarray(frame).reshape(-1).view(np.uint8)[:rec.size].copy()
