"""Consumer-group progress: read pointers, acknowledgements and redelivery, inside the
caller's write transaction (``BEGIN IMMEDIATE``, so two processes never hand out one id twice).

Every ``next`` delivery leaves an in-flight row until the message is acknowledged. A row is
delivered again when a negative acknowledgement's delay has passed, or, with a resend
policy, when it stayed unacknowledged for the policy's delay; at most ``attempts`` times.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, replace

from asapo_hpc.catalog._common import (
    StreamState,
    as_dataset,
    check_id,
    end_error,
    missing_error,
    read_parts,
    read_stream,
    where,
)
from asapo_hpc.catalog.records import DatasetRecord, MessageRecord, ResendPolicy
from asapo_hpc.errors import AsapoPartialDataError, AsapoWrongInputError

NO_RESEND = ResendPolicy()

_KEY = "group_id = ? AND source = ? AND stream = ?"

_NACK_DUE_SQL = f"""
SELECT nack_due_ns, data_id FROM group_inflight
WHERE {_KEY} AND nack_due_ns IS NOT NULL AND nack_due_ns <= ?
  AND (? < 0 OR deliveries <= ?)
ORDER BY nack_due_ns, data_id LIMIT 1
"""
_RESEND_DUE_SQL = f"""
SELECT delivered_ns + ?, data_id FROM group_inflight
WHERE {_KEY} AND nack_due_ns IS NULL AND delivered_ns <= ?
  AND (? < 0 OR deliveries <= ?)
ORDER BY delivered_ns, data_id LIMIT 1
"""
_DELIVERED_SQL = """
INSERT INTO group_inflight (group_id, source, stream, data_id, deliveries, delivered_ns)
VALUES (?, ?, ?, ?, 1, ?)
ON CONFLICT DO UPDATE SET deliveries = deliveries + 1, delivered_ns = excluded.delivered_ns,
                          nack_due_ns = NULL
RETURNING deliveries
"""  # RETURNING needs SQLite 3.35, as the upsert without a conflict target already does


@dataclass(slots=True, frozen=True)
class GroupKey:
    """Which group reads which stream."""

    group_id: str
    source: str
    stream: str

    @property
    def params(self) -> tuple[str, str, str]:
        return (self.group_id, self.source, self.stream)


@dataclass(slots=True)
class Delivery:
    """What ``next`` hands out; ``partial`` datasets are raised as PartialDeliveryError.

    ``deliveries`` counts the hand-outs of this id to the group, this one included (1 the
    first time, more when redelivered), as a ring message's ``attempts``. It travels here,
    not in the record: the record is the stored message, the count is the group's.
    """

    record: MessageRecord | DatasetRecord
    partial: bool = False
    deliveries: int = 1


class PartialDeliveryError(AsapoPartialDataError):
    """A partial dataset a group was handed: AsapoPartialDataError (``partial_data`` is the
    record) that also carries the ``delivery``, so readers can report its count; the count
    exists only once the hand-out is recorded, so the error is raised after that."""

    def __init__(self, message: str, delivery: Delivery):
        super().__init__(message, partial_data=delivery.record)
        self.delivery = delivery


def next_delivery(
    conn: sqlite3.Connection,
    key: GroupKey,
    *,
    dataset: bool,
    min_size: int,
    policy: ResendPolicy | None,
    now: int,
) -> Delivery:
    """Hand out the group's next message: a due redelivery first, then the next id."""
    state = read_stream(conn, key.source, key.stream)
    if state is None:
        raise end_error(key.source, key.stream, None)
    redelivered = _due_redelivery(conn, key, policy or NO_RESEND, now)
    if redelivered is not None:
        deliveries = _mark_delivered(conn, key, redelivered, now)
        delivery = _shape(key, state, read_parts(conn, state, redelivered), dataset, min_size,
                          True)
        return replace(delivery, deliveries=deliveries)
    candidate = read_counter(conn, key) + 1
    if candidate > state.id_max:
        raise end_error(key.source, key.stream, state)
    parts = read_parts(conn, state, candidate)
    if not parts:
        raise missing_error(key.source, key.stream, state, candidate)
    delivery = _shape(key, state, parts, dataset, min_size, False)  # may raise: mark after
    write_counter(conn, key, candidate)
    # Usually 1; more when the id was handed out before (a counter reset below it).
    return replace(delivery, deliveries=_mark_delivered(conn, key, candidate, now))


def _due_redelivery(
    conn: sqlite3.Connection, key: GroupKey, policy: ResendPolicy, now: int
) -> int | None:
    """The id due soonest: negatively acknowledged, or (with resend) unacknowledged too long."""
    attempts = (policy.attempts, policy.attempts)
    due = [conn.execute(_NACK_DUE_SQL, (*key.params, now, *attempts)).fetchone()]
    if policy.resend:
        delay_ns = policy.delay_ms * 1_000_000
        due.append(conn.execute(
            _RESEND_DUE_SQL, (delay_ns, *key.params, now - delay_ns, *attempts)
        ).fetchone())
    candidates = [row for row in due if row is not None]
    return min(candidates)[1] if candidates else None


def _mark_delivered(conn: sqlite3.Connection, key: GroupKey, data_id: int, now: int) -> int:
    """Record one more hand-out of ``data_id``; how many the group has had of it now."""
    return conn.execute(_DELIVERED_SQL, (*key.params, data_id, now)).fetchone()[0]


def _shape(
    key: GroupKey,
    state: StreamState,
    parts: list[MessageRecord],
    dataset: bool,
    min_size: int,
    redelivery: bool,
) -> Delivery:
    """Turn the stored parts into what the reader asked for (see ``shape_dataset``)."""
    if not dataset:
        return Delivery(plain_message(key.source, key.stream, parts))
    return shape_dataset(key.source, key.stream, state, parts, min_size, lenient=redelivery)


def plain_message(source: str, stream: str, parts: list[MessageRecord]) -> MessageRecord:
    """The one plain message in ``parts``; dataset parts must be read as a dataset."""
    if parts[0].dataset_substream:
        raise AsapoWrongInputError(
            f"message {parts[0].data_id} of {where(source, stream)} is a dataset of "
            f"{parts[0].dataset_size} parts; read it as a dataset"
        )
    return parts[0]


def shape_dataset(
    source: str,
    stream: str,
    state: StreamState,
    parts: list[MessageRecord],
    min_size: int,
    lenient: bool = False,
) -> Delivery:
    """A complete dataset; a partial one when it has at least ``min_size`` > 0 parts (or when
    ``lenient``, for a redelivery of what was already handed out); else NoData."""
    record = as_dataset(parts)
    if record.complete:
        return Delivery(record)
    if lenient or (min_size > 0 and len(parts) >= min_size):
        return Delivery(record, partial=True)
    hint = "" if min_size else "; ask with min_size > 0 to get partial datasets"
    raise missing_error(
        source, stream, state, record.data_id,
        f"is a dataset with {len(parts)} of {record.dataset_size} parts{hint}",
    )


def read_counter(conn: sqlite3.Connection, key: GroupKey) -> int:
    """The id the group read last (0 before its first read)."""
    row = conn.execute(f"SELECT last_read FROM group_pointers WHERE {_KEY}", key.params).fetchone()
    return 0 if row is None else row[0]


def has_progress(conn: sqlite3.Connection, key: GroupKey) -> bool:
    """Whether the group has a read pointer for the stream (it read it, or was set up to)."""
    row = conn.execute(f"SELECT 1 FROM group_pointers WHERE {_KEY}", key.params).fetchone()
    return row is not None


def write_counter(conn: sqlite3.Connection, key: GroupKey, value: int) -> None:
    conn.execute(
        "INSERT INTO group_pointers (group_id, source, stream, last_read) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET last_read = excluded.last_read",
        (*key.params, value),
    )


def _existing_id(conn: sqlite3.Connection, key: GroupKey, data_id: int, verb: str) -> int:
    check_id(data_id)
    state = read_stream(conn, key.source, key.stream)
    id_max = state.id_max if state else 0
    if data_id > id_max:
        raise AsapoWrongInputError(
            f"cannot {verb} message {data_id}: {where(key.source, key.stream)} "
            + (f"ends at id {id_max}" if state else "does not exist")
        )
    return data_id


def acknowledge(conn: sqlite3.Connection, key: GroupKey, data_id: int) -> None:
    """Record that the group processed ``data_id``; it is never delivered again."""
    _existing_id(conn, key, data_id, "acknowledge")
    conn.execute(f"DELETE FROM group_inflight WHERE {_KEY} AND data_id = ?", (*key.params, data_id))
    conn.execute(
        "INSERT INTO group_acks (group_id, source, stream, data_id) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (*key.params, data_id),
    )


def negative_acknowledge(
    conn: sqlite3.Connection, key: GroupKey, data_id: int, delay_ms: int, now: int
) -> None:
    """Ask for ``data_id`` to be delivered again after ``delay_ms``."""
    _existing_id(conn, key, data_id, "negatively acknowledge")
    if isinstance(delay_ms, bool) or not isinstance(delay_ms, int) or delay_ms < 0:
        raise AsapoWrongInputError(f"delay_ms must be an integer >= 0, got {delay_ms!r}")
    acked = conn.execute(
        f"SELECT 1 FROM group_acks WHERE {_KEY} AND data_id = ?", (*key.params, data_id)
    ).fetchone()
    if acked:
        raise AsapoWrongInputError(
            f"message {data_id} of {where(key.source, key.stream)} is already acknowledged "
            f"by group {key.group_id!r}; a negative acknowledgement cannot undo that"
        )
    if data_id > read_counter(conn, key):  # else it would come twice: now, and in its turn
        raise AsapoWrongInputError(
            f"message {data_id} of {where(key.source, key.stream)} was not delivered to group "
            f"{key.group_id!r} yet; only a delivered message can be negatively acknowledged"
        )
    conn.execute(
        "INSERT INTO group_inflight (group_id, source, stream, data_id, deliveries, delivered_ns,"
        " nack_due_ns) VALUES (?, ?, ?, ?, 1, ?, ?)"
        " ON CONFLICT DO UPDATE SET nack_due_ns = excluded.nack_due_ns",
        (*key.params, data_id, now, now + delay_ms * 1_000_000),
    )


def last_acknowledged(conn: sqlite3.Connection, key: GroupKey) -> int:
    """The largest acknowledged id, 0 when none."""
    row = conn.execute(f"SELECT max(data_id) FROM group_acks WHERE {_KEY}", key.params).fetchone()
    return row[0] or 0


def unacknowledged(conn: sqlite3.Connection, key: GroupKey, from_id: int, to_id: int) -> list[int]:
    """Ids in [from_id, to_id] the group has not acknowledged; 0 means the stream's first/last."""
    for name, value in (("from_id", from_id), ("to_id", to_id)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise AsapoWrongInputError(f"{name} must be an integer >= 0, got {value!r}")
    state = read_stream(conn, key.source, key.stream)
    first = max(from_id, 1)
    last = to_id or (state.id_max if state else 0)
    if to_id and to_id < first:
        raise AsapoWrongInputError(f"empty range: to_id {to_id} is below from_id {from_id}")
    acked = {
        row[0]
        for row in conn.execute(
            f"SELECT data_id FROM group_acks WHERE {_KEY} AND data_id BETWEEN ? AND ?",
            (*key.params, first, last),
        )
    }
    return [data_id for data_id in range(first, last + 1) if data_id not in acked]
