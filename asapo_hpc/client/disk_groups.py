"""Group reads from the disk tier: a consumer group reading a stream the ring no longer holds.

A group reading one stream (``get_next(group, stream=...)``) is in one of two modes for that
stream, decided once per (group, stream) when a Consumer first uses it:

- **ring mode** (the default, zero-copy): the ring's group ``<group>@<stream index>`` hands
  out the messages; nothing changes on the hot path;
- **disk mode**: the ring cannot deliver the stream from its first message (the ring wrapped
  past it, the node restarted with a new ring, the stream finished long ago), so the group
  reads the stream from the node's catalog and HDF5 files. Work sharing is the catalog's
  persistent group progress (``catalog.groups``: one ``BEGIN IMMEDIATE`` transaction hands
  each id to exactly one member, in any process), acknowledgements and negative
  acknowledgements go to the catalog, and a restarted group resumes where it stopped. The
  group follows the catalog as the sink records more; at the end of a finished stream it
  raises AsapoStreamFinishedError naming the next stream, as the ring does.

The decision (``DiskGroups.reads_from_disk``), in order:

1. no catalog: ring (nothing was ever stored);
2. the catalog has progress of the group for this stream: disk (other members, or this
   group before a restart, read it from disk: stay with them; ``mark_disk_group`` sets it
   up ahead, as ``asapo-hpc reprocess`` does, so batch jobs never hold a live ring back);
3. the catalog does not know the stream, or knows it without messages and unfinished: ring
   (a live stream: the group, created now, holds every message still to come);
4. the stream is not registered in this ring: disk (the ring was recreated);
5. the ring group exists and already delivered messages: ring (members are reading it);
6. the ring group would deliver message 1 (it is in the ring at or after the group's next
   position): ring; otherwise disk, and the ring group just opened is retired so it does
   not hold the producer back.

Two members deciding at the same time see the same facts: message 1 cannot leave the ring
while a ring group that has not read it exists, and a stream the ring cannot deliver from
message 1 never becomes deliverable again. Ring-mode progress lives in the ring: a group that
read a stream in ring mode and comes back after the ring was recreated reads it again from
disk, from id 1 (at-least-once).

Disk-mode messages are ``DiskMessage`` objects owning copies of their bytes, with the ring
messages' fields (id, name, meta, timestamp, stream, dataset, size). Their group handle is
``DISK_GROUP``: never a valid ring handle, so a ring call made with it fails with -ENOENT
and the Consumer routes it here, off the ring's fast path. Dataset streams are read with
``get_next_dataset`` (already catalog-based); ``get_next`` in disk mode refuses their parts.

Redelivery: ``set_resend_nacs`` applies; without it, disk-mode groups use the ring's lease
and attempts, so a message taken by a member that died comes back after the lease (the
catalog cannot tell a dead member from a slow one). ``set_resend_nacs(False, ...)`` turns
that off: then only negative acknowledgements are resent. A redelivered message's
``attempts`` is the catalog's count of deliveries of its id to the group (2, 3, ...), as a
ring message's; remote members get the same number (the node sends ``msg.attempts``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from asapo_hpc._core import ffi, lib
from asapo_hpc.catalog import Catalog, MessageRecord, ResendPolicy
from asapo_hpc.catalog.groups import Delivery
from asapo_hpc.client.message import Message, MessageList, OwnedMessage
from asapo_hpc.errors import (
    AsapoDataNotInCacheError,
    AsapoEndOfStreamError,
    AsapoError,
    AsapoNoDataError,
    AsapoStreamFinishedError,
    AsapoWrongInputError,
)

if TYPE_CHECKING:
    from asapo_hpc.client.consumer import Consumer

#: Group handle of disk-mode messages. Index 254 is above any ring's max_groups (<= 64),
#: so the C core answers -ENOENT for it: the ring paths need no extra test.
DISK_GROUP = 0xFFFFFFFE
POLL_S = 0.05  # how often a waiting disk-mode read asks the catalog again
LOCATION_WAIT_S = 10.0  # at least this long for the sink to store a delivered message
_EMSGSIZE, _FOREVER_NS = -90, 10 * 365 * 24 * 3600 * 10**9
_EMPTY = np.zeros(0, np.uint8)
_EMPTY.flags.writeable = False


class DiskMessage(OwnedMessage):
    """A message a disk-mode group delivered: owns its bytes; ``stream`` is stored by name
    (the stream need not be registered in the ring). ``attempts`` is the catalog's count of
    deliveries of the id to the group (1, then 2, 3, ... when redelivered), as in the ring."""

    __slots__ = ("_stream",)

    def __init__(self, record: MessageRecord, consumer: Consumer, data: np.ndarray,
                 attempts: int = 1):
        name, meta = record.name.encode(), record.meta_json().encode()
        # seq = the id: acknowledgements of disk messages are by id (see DiskGroups)
        fields = (record.data_id, record.data_id, 0, record.size, 0, record.timestamp,
                  len(name), len(meta), 0, 0, record.dataset_substream, record.dataset_size,
                  attempts, 0)
        super().__init__(fields, consumer, DISK_GROUP, data, name + meta)
        self._stream = record.stream

    @property
    def stream(self) -> str:
        return self._stream

    def copy(self) -> DiskMessage:
        return self  # already owns its bytes

    def __repr__(self) -> str:
        return f"DiskMessage(id={self.id}, stream={self._stream!r}, size={self.size})"


class DiskBatch(MessageList):
    """What ``get_next_batch`` returns for a disk-mode group: a list of DiskMessages."""


class DiskGroups:
    """The disk-mode groups of one Consumer: the mode decision and the reads."""

    def __init__(self, consumer: Consumer):
        self._consumer = consumer
        self._mode: dict[tuple[str, str], bool] = {}  # (group, stream) -> reads from disk
        self._held: dict[tuple[str, str], list[int]] = {}  # auto_ack: ids delivered last

    # -- which groups ----------------------------------------------------------------------

    def reads_from_disk(self, group_id: str, stream: str) -> bool:
        """True when the group reads `stream` from disk (decided on first use; see above)."""
        key = (group_id, stream)
        disk = self._mode.get(key)
        if disk is None:
            disk = self._mode[key] = self._decide(group_id, stream)
        return disk

    def known_disk(self, group_id: str, stream: str) -> bool:
        """Whether a decision was made, and it was disk (never decides)."""
        return self._mode.get((group_id, stream), False)

    def _decide(self, group_id: str, stream: str) -> bool:
        consumer = self._consumer
        if not consumer.catalog_path.exists():
            return False
        catalog = consumer._catalog()
        source = consumer.data_source
        if catalog.has_group(group_id, source, stream):
            return True
        try:
            info = catalog.get_stream_info(source, stream)
        except AsapoNoDataError:
            return False
        if info.last_id == 0 and not info.finished:
            return False
        idx = self._ring_stream_index(stream)
        return idx is None or not self._ring_delivers_first(group_id, idx)

    def _ring_stream_index(self, stream: str) -> int | None:
        """The stream's index in the ring, None if it is not registered: looked up without
        registering it, so reading many old streams never fills the ring's stream table."""
        known = self._consumer._streams._index.get(stream)
        if known is not None:
            return known
        segment = self._consumer.segment
        buf = ffi.new("char[128]")
        for idx in range(int(segment.config["max_streams"])):
            if lib.ahr_stream_name(segment.ptr, idx, buf, 128) < 0:
                return None  # indices are given out in order: the first gap is the end
            if ffi.string(buf) == stream.encode():
                return idx
        return None

    def _ring_delivers_first(self, group_id: str, idx: int) -> bool:
        """Whether the ring group of (group, stream) has read, or will read, message 1."""
        segment = self._consumer.segment
        handle = segment.group(f"{group_id}@{idx}", idx)  # the name Consumer._group uses
        stats = segment.group_stats(handle)
        if stats["delivered"] or stats["acked"]:
            return True
        out = ffi.new("struct ahr_msg *")
        rc = lib.ahr_read_by_id(segment.ptr, idx, 1, ffi.NULL, 0, out)  # cap 0: probe only
        if rc in (0, _EMSGSIZE) and out.seq >= stats["next"]:
            return True
        lib.ahr_group_retire(segment.ptr, handle)  # would hold the producer back for nothing
        return False

    # -- reading ---------------------------------------------------------------------------

    def get_next(self, group_id: str, stream: str, meta_only: bool = False,
                 timeout_ms: int | None = None) -> DiskMessage:
        """The group's next message of `stream` from the catalog and disk (see module doc)."""
        self._ack_held(group_id, stream)
        msg = self._take(group_id, stream, meta_only, timeout_ms)
        self._hold(group_id, stream, [msg])
        return msg

    def get_next_batch(self, group_id: str, stream: str, n: int,
                       timeout_ms: int | None = None) -> DiskBatch:
        """Up to `n` messages; waits only for the first. The end of the stream found after
        the first message is told by the next call."""
        self._ack_held(group_id, stream)
        batch = DiskBatch([self._take(group_id, stream, False, timeout_ms)])
        while len(batch) < n:
            try:
                batch.append(self._take(group_id, stream, False, 0))
            except AsapoNoDataError:  # end of stream, finished, or nothing stored yet
                break
        self._hold(group_id, stream, batch)
        return batch

    def _take(self, group_id: str, stream: str, meta_only: bool,
              timeout_ms: int | None) -> DiskMessage:
        timeout_ns = self._consumer.timeout_ns if timeout_ms is None else timeout_ms * 1e6
        deadline = time.monotonic() + timeout_ns / 1e9
        delivery = self._next_delivery(group_id, stream, deadline)
        return self._message(group_id, stream, delivery, meta_only, deadline)

    def _next_delivery(self, group_id: str, stream: str, deadline: float) -> Delivery:
        """Take the group's next id from the catalog, polling until the deadline."""
        consumer = self._consumer
        catalog, source, policy = consumer._catalog(), consumer.data_source, self._policy()
        while True:
            try:
                return catalog.group_next_delivery(group_id, source, stream, resend=policy)
            except AsapoStreamFinishedError as exc:
                last_id = getattr(exc, "reply", {}).get("id_max")
                raise AsapoStreamFinishedError(
                    f"stream {stream!r} is finished (last id {last_id}); next stream: "
                    f"{exc.next_stream!r}", next_stream=exc.next_stream, stream=stream,
                    last_id=last_id) from None
            except AsapoNoDataError:  # end of stream, or an id not arrived yet: wait
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AsapoEndOfStreamError(
                        f"no new message for group {group_id!r} in stream {stream!r} before "
                        "the timeout (the group reads this stream from disk: the catalog "
                        "has no more for it yet)") from None
                time.sleep(min(POLL_S, remaining))

    def _message(self, group_id: str, stream: str, delivery: Delivery, meta_only: bool,
                 deadline: float) -> DiskMessage:
        """The delivered record with its bytes; if they cannot be read, the message goes
        back to the group (a later read may find it) and the error is raised."""
        record, attempts = delivery.record, delivery.deliveries
        if meta_only or record.size == 0:
            return DiskMessage(record, self._consumer, _EMPTY, attempts)
        try:
            data = self._data(record, max(deadline, time.monotonic() + LOCATION_WAIT_S))
        except BaseException:
            self._consumer._catalog().neg_acknowledge(
                group_id, self._consumer.data_source, stream, record.data_id)
            raise
        return DiskMessage(record, self._consumer, data, attempts)

    def _data(self, record: MessageRecord, deadline: float) -> np.ndarray:
        """The bytes from the HDF5 file the catalog names; while the sink has not stored
        them yet they are still in the ring (the sink group holds them until stored)."""
        consumer = self._consumer
        while True:
            if record.file_path is not None:
                return consumer._read_frame(record)
            from_ring = self._from_ring(record)
            if from_ring is not None:
                return from_ring
            if time.monotonic() >= deadline:
                raise AsapoDataNotInCacheError(
                    f"message {record.data_id} of stream {record.stream!r} is in the catalog "
                    "but neither in the ring nor on disk: is the node service running? (see "
                    "its sink_write_failed log lines)")
            time.sleep(POLL_S)
            record = consumer._catalog().get_by_id(record.source, record.stream,
                                                   record.data_id)

    def _from_ring(self, record: MessageRecord) -> np.ndarray | None:
        idx = self._ring_stream_index(record.stream)
        if idx is None:
            return None
        segment = self._consumer.segment
        cap = segment.config["slot_size"] * segment.config["slot_count"]
        dst = np.empty(min(cap, max(record.size, 1)), dtype=np.uint8)
        out = ffi.new("struct ahr_msg *")
        rc = lib.ahr_read_by_id(segment.ptr, idx, record.data_id, ffi.from_buffer(dst),
                                len(dst), out)
        return dst[:out.data_len] if rc == 0 else None

    def _policy(self) -> ResendPolicy | None:
        """set_resend_nacs if given, else the ring's lease and attempts (see module doc)."""
        resend = self._consumer._resend
        if resend is None:
            config = self._consumer.segment.config
            return ResendPolicy(True, max(1, int(config["lease_s"] * 1000)),
                                int(config["max_attempts"]))
        lease_ns, attempts = resend
        return None if lease_ns >= _FOREVER_NS else ResendPolicy(True, lease_ns // 1_000_000,
                                                                  attempts)

    # -- acknowledging ---------------------------------------------------------------------

    def acknowledge(self, group_id: str, id: int | Message, stream: str | None) -> None:
        data_id, stream = self._id_and_stream(id, stream)
        self._unhold(group_id, stream, data_id)
        self._consumer._catalog().acknowledge(group_id, self._consumer.data_source, stream,
                                              data_id)

    def acknowledge_batch(self, group_id: str, messages: Iterable[Message]) -> int:
        count = 0
        for msg in messages:
            self.acknowledge(group_id, msg, None)
            count += 1
        return count

    def neg_acknowledge(self, group_id: str, id: int | Message, delay_ms: int,
                        stream: str | None) -> None:
        data_id, stream = self._id_and_stream(id, stream)
        self._unhold(group_id, stream, data_id)
        self._consumer._catalog().neg_acknowledge(group_id, self._consumer.data_source,
                                                  stream, data_id, int(delay_ms))

    def _unhold(self, group_id: str, stream: str, data_id: int) -> None:
        held = self._held.get((group_id, stream))
        if held and data_id in held:
            held.remove(data_id)

    def claim_of(self, group_id: str, id: int, stream: str) -> tuple[int, int] | None:
        """(DISK_GROUP, id) when (group, stream) reads from disk, else None."""
        return (DISK_GROUP, int(id)) if self.known_disk(group_id, stream) else None

    @staticmethod
    def _id_and_stream(id: int | Message, stream: str | None) -> tuple[int, str]:
        if isinstance(id, Message):
            if not isinstance(id, DiskMessage):
                raise AsapoWrongInputError(f"{id!r} was not delivered by a disk-mode group")
            return id.id, id.stream
        if stream is None:
            raise AsapoWrongInputError("acknowledging a disk-mode message by id needs its stream")
        return int(id), stream

    def _hold(self, group_id: str, stream: str, messages: list[DiskMessage]) -> None:
        """auto_ack: remember what was delivered, acknowledged when the member asks again."""
        if self._consumer.auto_ack:
            self._held[(group_id, stream)] = [m.id for m in messages]

    def _ack_held(self, group_id: str, stream: str) -> None:
        ids = self._held.pop((group_id, stream), None)
        for data_id in ids or ():
            self._consumer._catalog().acknowledge(group_id, self._consumer.data_source,
                                                  stream, data_id)

    def close(self) -> None:
        """auto_ack: the last message of each group counts as done (as in the ring)."""
        for group_id, stream in list(self._held):
            try:
                self._ack_held(group_id, stream)
            except AsapoError:  # closing must go on; the lease resends it
                pass


def mark_disk_group(catalog: Catalog, group_id: str, source: str, stream: str) -> bool:
    """Make `group_id` read `stream` from disk in every Consumer (decision step 2), from id
    1, unless the group already has progress there (then it resumes). Batch jobs use it:
    a disk-mode group never holds the live ring back. True when the group was new."""
    catalog.get_stream_info(source, stream)  # AsapoNoDataError names a missing stream
    if catalog.has_group(group_id, source, stream):
        return False
    catalog.reset_counter(group_id, source, stream, 0)
    return True
