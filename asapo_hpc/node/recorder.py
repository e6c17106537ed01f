"""The recorder of one data source: ring -> catalog + HDF5 sink -> acknowledge.

One thread per source consumes the ring as the durable group ``sink``, in batches (after a
claim returns it keeps claiming for up to ``record_batch_ms``, so small messages share the
costs of steps 2 and 3):

1. every message is recorded in the catalog as soon as it is claimed (``add_messages``, one
   transaction per claim; ``ring_seq`` says its data is in the ring), so a client that
   sent a message sees it in the catalog at once (e.g. ``get_current_size``);
2. its data (views into the ring, no copy) goes to the stream's ``StreamWriter``; the parts
   of a dataset wait until all of them arrived, then go as one frame;
3. once the writer's future resolves, ``update_locations`` records the file, dataset and
   frame index, and only then are the messages acknowledged in the ring.

So a message acknowledged in the ring is on disk and located in the catalog. A crash
anywhere before that leaves it claimed: the ring hands it out again after a restart, the
catalog accepts the identical record again (a duplicate, not an error) and the new location
replaces the old. A write error stops claiming: the recorder retries the same frames with a
new writer, with backoff, logging each failure as a JSON line; the ring fills and producers
get backpressure (then AsapoRingFullError), nothing is dropped. A finish marker finishes
the stream in the catalog and closes (rolls) its writers.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

from asapo_hpc.catalog import Catalog, LocationUpdate, MessageRecord
from asapo_hpc.client import Consumer, Message
from asapo_hpc.errors import (
    AsapoCorruptSegmentError,
    AsapoEndOfStreamError,
    AsapoError,
    AsapoLocalIOError,
    AsapoStreamFinishedError,
    AsapoWrongInputError,
)
from asapo_hpc.node.config import SINK_GROUP, NodeConfig, SourceConfig
from asapo_hpc.node.counters import SourceCounters
from asapo_hpc.node.events import event
from asapo_hpc.node.writers import FrameKey, WriterSet
from asapo_hpc.sink import StreamWriter

_STATS_EVERY_S = 0.25
RECORD_BATCH_BYTES = 4 << 20  # a claim this large is recorded at once (record_batch_ms)
_FIRST_BACKOFF_S = 0.5


@dataclass
class _Item:
    """One message, or one dataset (its parts by substream, None for a missing part)."""

    stream: str
    data_id: int
    messages: list[Message | None]
    key: FrameKey | None = None
    writer: StreamWriter | None = None
    future: Future | None = None
    nbytes: int = field(default=0)

    def claimed(self) -> list[Message]:
        return [m for m in self.messages if m is not None]

    def done(self) -> bool:
        return self.future is None or self.future.done()


def finished_stream_of(exc: AsapoStreamFinishedError) -> tuple[str, int] | None:
    """(stream, last id) named by a finish error of a group following every stream."""
    if exc.stream is None or exc.last_id is None:
        return None
    return exc.stream, exc.last_id


class Recorder:
    """Records one source; ``run()`` is the thread's body, ``stop`` its stop flag."""

    def __init__(self, config: NodeConfig, source: SourceConfig, consumer: Consumer,
                 catalog: Catalog, counters: SourceCounters, lock: threading.Lock,
                 stop: threading.Event):
        self.config, self.source, self.name = config, source, source.name
        self._consumer, self._catalog = consumer, catalog
        self._counters, self._lock, self._stop = counters, lock, stop
        self._writers = WriterSet(config.data_root, config.beamtime, source, config.sink)
        self._inflight: list[_Item] = []
        self._retry: list[_Item] = []
        self._pending: dict[tuple[str, int], dict[int, Message]] = {}  # incomplete datasets
        self._backoff = _FIRST_BACKOFF_S
        self._stats_at = 0.0
        # a batch holds at most half the ring (messages and bytes): its messages stay
        # unacknowledged until it is stored, and the producer must keep room meanwhile
        ring = source.ring
        self._batch_limit = max(1, min(config.batch_size, ring.slot_count // 2))
        self._batch_bytes = min(RECORD_BATCH_BYTES, ring.slot_count * ring.slot_size // 2)

    # ------------------------------------------------------------------------- the loop

    def run(self) -> None:
        """Record until the stop flag is set, then store what is in flight and close."""
        try:
            while not self._stop.is_set():
                self.step()
        except BaseException as exc:
            self._note_error(exc)
            event(logging.ERROR, "recorder_failed", source=self.name, error=repr(exc),
                  traceback=traceback.format_exc())
            raise
        finally:
            self._shutdown()

    def step(self) -> None:
        """One round: harvest stored frames, then retry failed ones or claim a batch."""
        self._harvest()
        self._update_ring_counters()
        if self._retry:
            self._retry_failed()
            return
        try:
            batch = self._consumer.get_next_batch(SINK_GROUP, self._batch_limit,
                                                  timeout_ms=self.config.poll_ms)
        except AsapoStreamFinishedError as exc:
            self._on_finish(exc)
            return
        except AsapoEndOfStreamError:
            return
        messages, finished = self._collect(self._accept(list(batch)))
        for item in self._items(messages):
            self._submit(item)
        if finished is not None:  # after the messages claimed before it, as unbatched
            self._on_finish(finished)

    def _collect(self, messages: list[Message]
                 ) -> tuple[list[Message], AsapoStreamFinishedError | None]:
        """Keep claiming for up to ``record_batch_ms`` after the first claim, so a stream of
        small messages is stored in batches: the HDF5 append and flush, the catalog's
        location transaction and the acknowledgement cost about the same for one message as
        for twenty. Each claim is recorded in the catalog at once (``_accept``), so readers
        of the catalog see messages as soon as unbatched. Stops early at ``batch_size``
        messages or half the ring (the producer keeps room while the batch is held), at
        ``RECORD_BATCH_BYTES`` (large messages gain nothing from waiting, and the sink's
        compression would idle meanwhile), at the stop flag, or at the end of a stream
        (returned, to be handled after the messages)."""
        limit = self._batch_limit
        deadline = time.monotonic() + self.config.record_batch_ms / 1000
        nbytes = sum(m.size for m in messages)
        while (len(messages) < limit and nbytes < self._batch_bytes
               and not self._stop.is_set()):
            left_ms = (deadline - time.monotonic()) * 1000
            if left_ms <= 0:
                break
            try:
                more = self._consumer.get_next_batch(SINK_GROUP, limit - len(messages),
                                                     timeout_ms=left_ms)
            except AsapoStreamFinishedError as exc:
                return messages, exc
            except AsapoEndOfStreamError:
                break
            self._harvest()  # the previous batch is usually stored by now: acknowledge it
            claimed = list(more)
            nbytes += sum(m.size for m in claimed)
            messages.extend(self._accept(claimed))
        return messages, None

    def _shutdown(self) -> None:
        try:
            self._wait_inflight()
            self._harvest()
        finally:
            self._writers.close_all()
            self._update_ring_counters(force=True)
            self._consumer.close()  # claims not acknowledged go back to the group

    # ------------------------------------------------------------------- claiming

    def _accept(self, messages: list[Message]) -> list[Message]:
        """Record a claim in the catalog and count it; returns the messages to store."""
        messages = self._add_to_catalog(messages)
        with self._lock:
            for msg in messages:
                counters = self._counters.stream(msg.stream)
                counters.messages_in += 1
                counters.bytes_in += msg.size
        return messages

    def _record_of(self, msg: Message) -> MessageRecord:
        try:
            meta = msg.meta_json  # parsed once to check it, stored as the producer wrote it
        except AsapoCorruptSegmentError as exc:
            event(logging.WARNING, "bad_metadata", source=self.name, stream=msg.stream,
                  id=msg.id, error=str(exc))
            meta = {}
        substream, size = msg.dataset or (0, 0)
        return MessageRecord(self.name, msg.stream, msg.id, msg.name, msg.size, msg.timestamp,
                             meta, dataset_substream=substream, dataset_size=size,
                             ring_seq=msg.seq)

    def _add_to_catalog(self, messages: list[Message]) -> list[Message]:
        """Record the messages; returns those the catalog accepted (refused ones are
        logged, counted and acknowledged: they would be refused again forever)."""
        records = [self._record_of(m) for m in messages]
        try:
            self._note_duplicates(self._catalog.add_messages(records))
            return messages
        except AsapoWrongInputError:
            pass  # one record is bad: find it, keep the others
        accepted = []
        for msg, record in zip(messages, records, strict=True):
            try:
                self._note_duplicates(self._catalog.add_messages([record]))
                accepted.append(msg)
            except AsapoWrongInputError as exc:
                self._reject(msg, exc)
        return accepted

    def _note_duplicates(self, result) -> None:
        if result.duplicates:
            event(logging.INFO, "catalog_duplicates", source=self.name,
                  count=len(result.duplicates), detail=result.warning)

    def _reject(self, msg: Message, exc: AsapoError) -> None:
        event(logging.ERROR, "message_rejected", source=self.name, stream=msg.stream,
              id=msg.id, error=str(exc))
        with self._lock:
            self._counters.stream(msg.stream).messages_rejected += 1
            self._counters.last_error = str(exc)
        self._consumer.acknowledge_batch(SINK_GROUP, [msg])

    def _items(self, messages: Iterable[Message]) -> Iterator[_Item]:
        """Plain messages at once; a dataset once its last part arrived."""
        for msg in messages:
            dataset = msg.dataset
            if dataset is None:
                yield _Item(msg.stream, msg.id, [msg])
                continue
            parts = self._pending.setdefault((msg.stream, msg.id), {})
            parts[dataset[0]] = msg  # a redelivered part replaces its stale claim
            if len(parts) == dataset[1]:
                del self._pending[(msg.stream, msg.id)]
                yield _Item(msg.stream, msg.id, [parts[k] for k in sorted(parts)])

    # ------------------------------------------------------------------- writing

    def _submit(self, item: _Item) -> None:
        sizes = [0 if m is None else m.size for m in item.messages]
        item.key = self._writers.key_for(item.stream, sizes)
        item.nbytes = sum(sizes)
        item.future = item.writer = None
        if item.key is not None:
            try:
                item.writer = self._writers.writer(item.key)
                first = item.claimed()[0]
                item.future = item.writer.submit(
                    item.data_id, WriterSet.arrays(item.key, item.messages), first.timestamp)
            except AsapoLocalIOError as exc:
                self._write_failed(item, exc)
                return
        self._inflight.append(item)

    def _harvest(self) -> None:
        """Locate and acknowledge the items whose frames are stored; retry failed ones."""
        done = [item for item in self._inflight if item.done()]
        if not done:
            return
        self._inflight = [item for item in self._inflight if not item.done()]
        stored = []
        for item in done:
            exc = item.future.exception() if item.future is not None else None
            if exc is None:
                stored.append(item)
            else:
                self._write_failed(item, exc)
        if stored:
            self._store_locations(stored)

    def _store_locations(self, items: list[_Item]) -> None:
        updates = [update for item in items for update in self._updates(item)]
        if updates:
            self._catalog.update_locations(updates)
        claimed = [m for item in items for m in item.claimed()]
        self._consumer.acknowledge_batch(SINK_GROUP, claimed)
        with self._lock:
            for item in items:
                counters = self._counters.stream(item.stream)
                counters.messages_written += len(item.claimed())
                counters.bytes_written += item.nbytes

    def _updates(self, item: _Item) -> Iterator[LocationUpdate]:
        if item.future is None:
            return
        location = item.future.result()
        for k, msg in enumerate(item.messages, start=1):
            if msg is not None:
                substream = msg.dataset[0] if msg.dataset else 0
                yield LocationUpdate(self.name, item.stream, item.data_id, substream,
                                     file_path=location.file_path,
                                     dataset_path=location.dataset_paths[k - 1],
                                     frame_index=location.frame_index)

    def _wait_inflight(self) -> None:
        futures = [item.future for item in self._inflight if item.future is not None]
        if futures:
            concurrent.futures.wait(futures)

    # ------------------------------------------------------------------- write errors

    def _write_failed(self, item: _Item, exc: BaseException) -> None:
        first = not self._retry
        self._retry.append(item)
        if item.writer is not None:
            self._writers.discard(item.key, item.writer)
            item.writer = None
        with self._lock:
            self._counters.stream(item.stream).write_errors += 1
            self._counters.write_errors += 1
            self._counters.retrying = True
        self._note_error(exc)
        if first:
            event(logging.ERROR, "sink_write_failed", source=self.name, stream=item.stream,
                  id=item.data_id, error=str(exc), errno=getattr(exc, "errno", None),
                  action=f"not acknowledged; retrying after {self._backoff:g} s (then "
                         "longer), claiming nothing new meanwhile: producers feel "
                         "backpressure")

    def _retry_failed(self) -> None:
        """Wait (backoff), then submit the failed items again with new writers."""
        self._wait_inflight()
        self._harvest()
        if self._stop.wait(self._backoff):
            return
        items, self._retry = self._retry, []
        for item in items:
            self._submit(item)
        self._wait_inflight()
        self._harvest()
        if self._retry:
            self._backoff = min(2 * self._backoff, self.config.retry_max_s)
            return
        self._backoff = _FIRST_BACKOFF_S
        with self._lock:
            self._counters.retrying = False
        event(logging.INFO, "sink_recovered", source=self.name, frames=len(items))

    def _note_error(self, exc: BaseException) -> None:
        with self._lock:
            self._counters.last_error = str(exc)

    # ------------------------------------------------------------------- streams

    def _on_finish(self, exc: AsapoStreamFinishedError) -> None:
        """Store what is in flight, finish the stream in the catalog, close its writers."""
        named = finished_stream_of(exc)
        if named is None:
            event(logging.WARNING, "finish_not_understood", source=self.name, error=str(exc))
            return
        stream, last_id = named
        for key in [k for k in self._pending if k[0] == stream]:
            parts = self._pending.pop(key)
            size = next(iter(parts.values())).dataset[1]
            event(logging.WARNING, "incomplete_dataset", source=self.name, stream=stream,
                  id=key[1], parts=sorted(parts), size=size,
                  action="missing parts stored as zeros, not recorded in the catalog")
            self._submit(_Item(stream, key[1], [parts.get(k) for k in range(1, size + 1)]))
        self._wait_inflight()
        self._harvest()
        self._catalog.finish_stream(self.name, stream, last_id, exc.next_stream or "")
        with self._lock:  # before the acknowledgement, which is what observers wait for
            self._counters.stream(stream).finished = True
        # the end is on record: now the marker (message last_id + 1) may leave the ring
        self._consumer.acknowledge(SINK_GROUP, last_id + 1, stream=stream)
        self._writers.close_stream(stream)
        event(logging.INFO, "stream_finished", source=self.name, stream=stream,
              last_id=last_id, next_stream=exc.next_stream)

    # ------------------------------------------------------------------- ring figures

    def _update_ring_counters(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._stats_at < _STATS_EVERY_S:
            return
        self._stats_at = now
        if self._consumer.segment.closed:
            return
        ring = self._consumer.segment.ring_stats()
        group = self._consumer.group_stats(SINK_GROUP)
        with self._lock:
            c = self._counters
            c.ring_slots = self.source.ring.slot_count
            c.ring_fill = ring["head"] - ring["min_floor"]
            c.ring_published = ring["published"]
            c.sink_delivered, c.sink_acked = group["delivered"], group["acked"]
            c.sink_redelivered = group["redelivered"]
            c.sink_backlog = sum(len(i.claimed()) for i in self._inflight + self._retry)
