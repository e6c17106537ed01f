"""Datasets and the other catalog groups (see Datasets in the package docstring): the
session's member takes the group's next id from the catalog, the parts are read back from
the node's HDF5 files once the sink stored them; acknowledgements and their queries go to the
catalog through the same ConsumerStreams calls the local Consumer makes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

from asapo_hpc.catalog import DatasetRecord
from asapo_hpc.catalog.groups import Delivery, PartialDeliveryError
from asapo_hpc.client.streams import LOCATION_WAIT_S, POLL_S, parts_stored
from asapo_hpc.errors import (
    AsapoDataNotInCacheError,
    AsapoNoDataError,
    AsapoPartialDataError,
    AsapoStreamFinishedError,
)
from asapo_hpc.node.remote.context import Context, NodeConsumer, Operations, reader_op
from asapo_hpc.node.remote.parking import NotYet, not_yet, try_or_park
from asapo_hpc.node.remote.wire import MAX_DELAY_MS, Request, record_result


class Taken(NamedTuple):
    """What a Take found: the record, its group's delivery count (the parts' ``attempts``;
    0 when read without a group) and why it is partial (None when complete)."""

    record: DatasetRecord
    attempts: int
    partial: str | None


Take = Callable[[float], Taken]


def get_next_dataset(ctx: Context, request: Request) -> tuple[Any, Any]:
    session = ctx.session(request)
    member = ctx.member(session)
    group, stream = request.arg("group", str), request.stream()
    min_size = request.count("min_size", 0)
    wait_s = request.timeout_s(1.0)
    deadline = time.monotonic() + wait_s

    def next_delivery(now: float) -> Delivery:
        try:  # complete ones only until the deadline (the local call's order)
            return member._group_next(group, stream, 0)
        except AsapoStreamFinishedError:
            raise
        except AsapoNoDataError:
            if now < deadline:
                raise NotYet("no complete dataset yet") from None
        return member._group_next(group, stream, min_size)

    def take(now: float) -> Taken:
        try:
            delivery = next_delivery(now)
        except PartialDeliveryError as exc:  # with min_size, or a partial one redelivered
            return Taken(exc.delivery.record, exc.delivery.deliveries, str(exc))
        return Taken(delivery.record, delivery.deliveries, None)

    def give_back(record: DatasetRecord) -> None:  # as the local call: not lost
        member._catalog().neg_acknowledge(group, member.data_source, stream, record.data_id)

    delivery = _DatasetDelivery(member, stream, take, give_back, deadline)
    return try_or_park(delivery.attempt, not_yet, wait_s + LOCATION_WAIT_S + 1, session)


def get_dataset_by_id(ctx: Context, request: Request) -> tuple[Any, Any]:
    reader, stream = ctx.reader(request), request.stream()
    data_id, min_size = request.count("id", low=1), request.count("min_size", 0)
    return _dataset_now(reader, stream, lambda: reader._catalog().get_dataset_by_id(
        reader.data_source, stream, data_id, min_size))


def get_last_dataset(ctx: Context, request: Request) -> tuple[Any, Any]:
    reader, stream = ctx.reader(request), request.stream()
    min_size = request.count("min_size", 0)
    return _dataset_now(reader, stream, lambda: reader._catalog().get_last_dataset(
        reader.data_source, stream, min_size))


def _dataset_now(reader: NodeConsumer, stream: str,
                 lookup: Callable[[], DatasetRecord]) -> tuple[Any, Any]:
    """A dataset by lookup (no group): waits only for the sink to store its parts."""
    def take(now: float) -> Taken:
        try:
            return Taken(lookup(), 0, None)
        except AsapoPartialDataError as exc:
            return Taken(exc.partial_data, 0, str(exc))

    delivery = _DatasetDelivery(reader, stream, take, None, time.monotonic())
    return try_or_park(delivery.attempt, not_yet, LOCATION_WAIT_S + 1, None)


class _DatasetDelivery:
    """A dataset delivered without blocking the server thread, as a parked attempt:
    `take` finds the record (raising NotYet to wait), then the parts are read once the
    sink stored them all. If it does not within LOCATION_WAIT_S, `give_back` (a group's
    delivery) returns the dataset to its group and AsapoDataNotInCacheError is raised."""

    def __init__(self, consumer: NodeConsumer, stream: str, take: Take,
                 give_back: Callable[[DatasetRecord], None] | None, deadline: float):
        self.consumer, self.stream, self.take, self.give_back = consumer, stream, take, \
            give_back
        self.deadline = deadline
        self.record: DatasetRecord | None = None
        self.attempts = 0
        self.partial: str | None = None
        self.next_poll = 0.0
        self.stored_by = 0.0

    def attempt(self) -> tuple[Any, Any]:
        now = time.monotonic()
        if now < self.next_poll:  # the catalog is asked every POLL_S, not every park poll
            raise NotYet("waiting for the catalog")
        self.next_poll = now + POLL_S
        if self.record is None:
            self.record, self.attempts, self.partial = self.take(now)
            self.stored_by = max(self.deadline, now + LOCATION_WAIT_S)
        elif not parts_stored(self.record.parts):
            self.record.parts = self.consumer._fresh_parts(self.record, self.stream)
        if not parts_stored(self.record.parts):
            if now < self.stored_by:
                raise NotYet("waiting for the sink to store the parts")
            if self.give_back is not None:
                self.give_back(self.record)
            raise AsapoDataNotInCacheError(
                f"dataset {self.record.data_id} of stream {self.stream!r} is in the catalog "
                "but the node's sink has not stored all its parts: see its sink_write_failed "
                "log lines")
        return self._reply()

    def _reply(self) -> tuple[Any, Any]:
        parts = sorted(self.record.parts, key=lambda p: p.dataset_substream)
        frames = [self.consumer._read_frame(p) for p in parts]  # copies: safe to send
        results = [record_result(p, self.stream, self.attempts) for p in parts]
        return {"id": self.record.data_id, "size": self.record.dataset_size,
                "timestamp": self.record.timestamp, "partial": self.partial,
                "parts": results}, frames


OPERATIONS: Operations = {
    "get_next_dataset": ("read", get_next_dataset),
    "get_dataset_by_id": ("read", get_dataset_by_id),
    "get_last_dataset": ("read", get_last_dataset),
    "acknowledge_dataset": ("read", reader_op(lambda c, r: c.acknowledge_dataset(
        r.arg("group", str), r.count("id", low=1), r.stream()))),
    "neg_acknowledge_dataset": ("read", reader_op(lambda c, r: c.neg_acknowledge_dataset(
        r.arg("group", str), r.count("id", low=1), r.count("delay_ms", 0, high=MAX_DELAY_MS),
        r.stream()))),
    # ConsumerStreams answers both, for the local Consumer too (ASAPO: None when no ack)
    "get_unacknowledged_messages": ("read", reader_op(
        lambda c, r: c.get_unacknowledged_messages(
            r.arg("group", str), r.count("from_id", 0), r.count("to_id", 0), r.stream()))),
    "get_last_acknowledged_message": ("read", reader_op(
        lambda c, r: c.get_last_acknowledged_message(r.arg("group", str), r.stream()))),
}
