"""Batched recording of message records, inside the caller's write transaction.

The fast path is one ``executemany``; it relies on the table's CHECK constraints for
validation and on ``rowcount`` to notice duplicate ids. Only a batch that holds a
duplicate or an invalid record takes the slow path, which names the offending record.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from asapo_hpc.catalog._common import StreamState, check_name, read_stream, where
from asapo_hpc.catalog.records import (
    FINISH_MARKER_NAME,
    NO_NEXT_STREAM,
    AddResult,
    MessageRecord,
    decode_meta,
    encode_meta,
)
from asapo_hpc.errors import AsapoWrongInputError

INSERT_SQL = (
    "INSERT INTO messages (stream_pk, data_id, substream, dataset_size, name, size, timestamp,"
    " ingest_mode, meta, ring_seq, file_path, dataset_path, frame_index)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_REFRESH_LAST_SQL = (
    "UPDATE streams SET (last_id, last_ns) = (SELECT data_id, timestamp FROM messages"
    " WHERE stream_pk = ?1 ORDER BY data_id DESC, substream DESC LIMIT 1) WHERE stream_pk = ?1"
)


def insert_records(conn: sqlite3.Connection, records: Iterable[MessageRecord]) -> AddResult:
    """Record ``records`` (finish markers finish their stream); see ``Catalog.add_messages``."""
    result = AddResult()
    states: dict[tuple[str, str], StreamState] = {}
    next_auto: dict[int, int] = {}
    rows: list[tuple] = []
    markers: list[MessageRecord] = []
    for record in records:
        if record.name == FINISH_MARKER_NAME:
            markers.append(record)
            continue
        key = (record.source, record.stream)
        state = states.get(key) or _stream_for_insert(conn, states, key, record.timestamp)
        data_id = record.data_id
        if data_id == 0:
            data_id = _auto_id(record, state, next_auto)
            result.assigned_ids.append(data_id)
        if state.finished and data_id > state.id_max:
            raise _after_finish_error(record, data_id, state)
        meta = record.meta
        rows.append((
            state.pk, data_id, record.dataset_substream, record.dataset_size, record.name,
            record.size, record.timestamp, record.ingest_mode,
            meta if type(meta) is str and meta else encode_meta(meta),
            record.ring_seq, record.file_path, record.dataset_path, record.frame_index,
        ))
    _insert_rows(conn, rows, states, result)
    for state in states.values():
        conn.execute(_REFRESH_LAST_SQL, (state.pk,))
    for marker in markers:
        _apply_finish_marker(conn, marker, result)
    return result


def _stream_for_insert(
    conn: sqlite3.Connection,
    states: dict[tuple[str, str], StreamState],
    key: tuple[str, str],
    created_ns: int,
) -> StreamState:
    state = get_or_create_stream(conn, key[0], key[1], created_ns)
    states[key] = state
    return state


def get_or_create_stream(
    conn: sqlite3.Connection, source: str, stream: str, created_ns: int
) -> StreamState:
    """The stream's state, creating the stream (created at ``created_ns``) when it is new."""
    state = read_stream(conn, source, stream)
    if state is None:
        check_name("source", source)
        check_name("stream", stream)
        conn.execute(
            "INSERT INTO streams (source, name, created_ns, last_ns) VALUES (?, ?, ?, ?)",
            (source, stream, created_ns, created_ns),
        )
        state = read_stream(conn, source, stream)
    return state


def _auto_id(record: MessageRecord, state: StreamState, next_auto: dict[int, int]) -> int:
    if record.dataset_substream:
        raise AsapoWrongInputError(
            f"dataset part {record.name!r} of {where(record.source, record.stream)} has id 0; "
            "auto ids are for plain messages, give dataset parts their dataset's id"
        )
    data_id = next_auto.get(state.pk, state.last_id + 1)
    next_auto[state.pk] = data_id + 1
    return data_id


def _after_finish_error(
    record: MessageRecord, data_id: int, state: StreamState
) -> AsapoWrongInputError:
    return AsapoWrongInputError(
        f"message {data_id} ({record.name!r}) arrived after {where(record.source, record.stream)}"
        f" was finished at id {state.id_max}; send it to another stream"
    )


def _insert_rows(
    conn: sqlite3.Connection,
    rows: list[tuple],
    states: dict[tuple[str, str], StreamState],
    result: AddResult,
) -> None:
    conn.execute("SAVEPOINT add_messages")
    try:
        inserted = conn.executemany(INSERT_SQL, rows).rowcount
    except (sqlite3.IntegrityError, OverflowError, sqlite3.InterfaceError) as exc:
        conn.execute("ROLLBACK TO add_messages")
        raise _explain_invalid(rows, states, exc) from exc
    if inserted != len(rows):
        # Some ids were already stored: redo row by row to tell duplicates from conflicts.
        conn.execute("ROLLBACK TO add_messages")
        inserted = _insert_one_by_one(conn, rows, _names_by_pk(states), result)
    conn.execute("RELEASE add_messages")
    result.inserted = inserted


def _names_by_pk(states: dict[tuple[str, str], StreamState]) -> dict[int, tuple[str, str]]:
    return {state.pk: key for key, state in states.items()}


def _insert_one_by_one(
    conn: sqlite3.Connection,
    rows: list[tuple],
    names: dict[int, tuple[str, str]],
    result: AddResult,
) -> int:
    inserted = 0
    for row in rows:
        if conn.execute(INSERT_SQL, row).rowcount == 1:
            inserted += 1
            continue
        source, stream = names[row[0]]
        _check_duplicate(conn, row, source, stream)
        result.duplicates.append((stream, row[1], row[2]))
    return inserted


def _check_duplicate(conn: sqlite3.Connection, row: tuple, source: str, stream: str) -> None:
    """Accept a resend of identical content (ASAPO's warning); refuse different content."""
    stored = conn.execute(
        "SELECT name, size, dataset_size, meta FROM messages"
        " WHERE stream_pk = ? AND data_id = ? AND substream = ?",
        row[:3],
    ).fetchone()
    new = (row[4], row[5], row[3], json.loads(row[8]))
    old = (stored[0], stored[1], stored[2], json.loads(stored[3]))
    if new == old:
        return
    fields = ("name", "size", "dataset_size", "meta")
    diffs = [f"{f} {o!r} != {n!r}" for f, o, n in zip(fields, old, new, strict=True) if o != n]
    part = f" part {row[2]}" if row[2] else ""
    raise AsapoWrongInputError(
        f"duplicate id {row[1]}{part} in {where(source, stream)} with different content "
        f"(stored vs new: {'; '.join(diffs)}); ids must be unique per stream"
    )


def _explain_invalid(
    rows: list[tuple], states: dict[tuple[str, str], StreamState], exc: Exception
) -> AsapoWrongInputError:
    names = _names_by_pk(states)
    for row in rows:
        problem = _row_problem(row)
        if problem:
            source, stream = names[row[0]]
            return AsapoWrongInputError(
                f"invalid record id {row[1]!r} ({row[4]!r}) in {where(source, stream)}: {problem}"
            )
    return AsapoWrongInputError(f"invalid message record: {exc}")


def _row_problem(row: tuple) -> str:
    """What is wrong with one row, or '' (mirrors the CHECK constraints in schema.py)."""
    _, data_id, substream, dataset_size, name, size, timestamp, ingest_mode, meta = row[:9]
    for label, value in (("id", data_id), ("dataset_substream", substream),
                         ("dataset_size", dataset_size), ("size", size),
                         ("timestamp", timestamp), ("ingest_mode", ingest_mode)):
        if type(value) is not int:
            return f"{label} must be an integer, got {type(value).__name__}"
        if not -(2**63) <= value < 2**63:
            return f"{label} {value} does not fit in 64 bits"
    if data_id < 1:
        return "id must be >= 1 (0 asks for an automatic id)"
    if size < 0:
        return "size must be >= 0"
    if (substream == 0) != (dataset_size == 0) or substream > dataset_size or substream < 0:
        return (f"dataset_substream {substream} and dataset_size {dataset_size} disagree "
                "(parts count from 1 up to the dataset size; 0 and 0 for a plain message)")
    if not isinstance(name, str):
        return f"name must be a string, got {type(name).__name__}"
    try:
        if not isinstance(json.loads(meta), dict):
            return "meta must be a JSON object"
    except (TypeError, ValueError) as exc:
        return f"meta is not valid JSON ({exc})"
    return ""


def _apply_finish_marker(
    conn: sqlite3.Connection, marker: MessageRecord, result: AddResult
) -> None:
    try:
        next_stream = decode_meta(marker.meta).get("next_stream", "")
    except ValueError as exc:
        raise AsapoWrongInputError(f"finish marker of stream {marker.stream!r}: {exc}") from exc
    state = get_or_create_stream(conn, marker.source, marker.stream, marker.timestamp)
    last_id = marker.data_id - 1 if marker.data_id > 0 else state.last_id
    finish(conn, state, last_id, next_stream)
    result.finished_streams.append(marker.stream)


def finish(conn: sqlite3.Connection, state: StreamState, last_id: int, next_stream: str) -> None:
    """Mark a stream finished at ``last_id`` (messages up to it may still arrive)."""
    if next_stream == NO_NEXT_STREAM or next_stream is None:
        next_stream = ""
    if not isinstance(next_stream, str) or isinstance(last_id, bool) or not isinstance(
        last_id, int
    ) or last_id < 0:
        raise AsapoWrongInputError(
            f"cannot finish {where(state.source, state.name)} at id {last_id!r} with next stream"
            f" {next_stream!r}: give an integer last id >= 0 and a stream name"
        )
    if state.last_id > last_id:
        raise AsapoWrongInputError(
            f"cannot finish {where(state.source, state.name)} at id {last_id}: it already holds"
            f" messages up to id {state.last_id}"
        )
    if state.finished:
        if (state.finish_last_id, state.next_stream) == (last_id, next_stream):
            return
        raise AsapoWrongInputError(
            f"{where(state.source, state.name)} is already finished at id {state.finish_last_id}"
            f" with next stream {state.next_stream!r}"
        )
    conn.execute(
        "UPDATE streams SET finished = 1, finish_last_id = ?, next_stream = ? WHERE stream_pk = ?",
        (last_id, next_stream, state.pk),
    )
