"""Helpers shared by the catalog's modules: stream state, record rows, ASAPO's 409 errors."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from asapo_hpc.catalog.records import (
    NO_NEXT_STREAM,
    DatasetRecord,
    MessageRecord,
    StreamInfo,
)
from asapo_hpc.errors import (
    AsapoEndOfStreamError,
    AsapoNoDataError,
    AsapoStreamFinishedError,
    AsapoWrongInputError,
)

# Column order matches MessageRecord's fields after (source, stream).
MESSAGE_COLUMNS = (
    "data_id, name, size, timestamp, meta, ingest_mode, substream, dataset_size, "
    "ring_seq, file_path, dataset_path, frame_index"
)

STREAM_COLUMNS = (
    "stream_pk, source, name, created_ns, last_ns, last_id, finished, finish_last_id, next_stream"
)


@dataclass(slots=True)
class StreamState:
    """One row of ``streams``."""

    pk: int
    source: str
    name: str
    created_ns: int
    last_ns: int
    last_id: int
    finished: bool
    finish_last_id: int
    next_stream: str

    @property
    def id_max(self) -> int:
        """The largest id of the stream: stored, or declared last by the finish marker."""
        return max(self.last_id, self.finish_last_id) if self.finished else self.last_id

    def info(self) -> StreamInfo:
        return StreamInfo(
            name=self.name,
            last_id=self.id_max,
            timestamp_created=self.created_ns,
            timestamp_last=self.last_ns,
            finished=bool(self.finished),
            next_stream=self.next_stream,
        )


def check_name(kind: str, value: object) -> str:
    """Validate a source, stream or group name."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise AsapoWrongInputError(f"{kind} name must be a non-empty string, got {value!r}")
    return value


def check_id(data_id: object, what: str = "message id") -> int:
    """Validate a message id (>= 1)."""
    if isinstance(data_id, bool) or not isinstance(data_id, int) or data_id < 1:
        raise AsapoWrongInputError(f"{what} must be an integer >= 1, got {data_id!r}")
    return data_id


def read_stream(conn: sqlite3.Connection, source: str, stream: str) -> StreamState | None:
    row = conn.execute(
        f"SELECT {STREAM_COLUMNS} FROM streams WHERE source = ? AND name = ?", (source, stream)
    ).fetchone()
    return None if row is None else StreamState(*row)


def read_parts(
    conn: sqlite3.Connection, state: StreamState, data_id: int
) -> list[MessageRecord]:
    """Every stored row of message ``data_id``: one plain message, or the dataset's parts."""
    rows = conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE stream_pk = ? AND data_id = ?"
        " ORDER BY substream",
        (state.pk, data_id),
    ).fetchall()
    return [MessageRecord(state.source, state.name, *row) for row in rows]


def where(source: str, stream: str) -> str:
    return f"stream {stream!r} of source {source!r}"


def end_error(source: str, stream: str, state: StreamState | None) -> AsapoEndOfStreamError:
    """A reader is past the last message: EndOfStream, or StreamFinished with the next stream.

    ``reply`` carries ASAPO's 409 body (id = id_max, so the client also sees end of stream).
    """
    id_max = state.id_max if state else 0
    if state is not None and state.finished:
        next_name = state.next_stream or None
        err: AsapoEndOfStreamError = AsapoStreamFinishedError(
            f"{where(source, stream)} is finished at id {id_max}; "
            + (f"continue with stream {next_name!r}" if next_name else "no stream follows it"),
            next_stream=next_name,
        )
        reply_next = state.next_stream or NO_NEXT_STREAM
    else:
        err = AsapoEndOfStreamError(
            f"end of {where(source, stream)} (last id {id_max}); poll again for new messages"
        )
        reply_next = ""
    err.reply = {"op": "get_record_by_id", "id": id_max, "id_max": id_max,
                 "next_stream": reply_next}
    return err


def missing_error(
    source: str, stream: str, state: StreamState | None, data_id: int, why: str = ""
) -> AsapoNoDataError:
    """Message ``data_id`` (below the stream's last id) is not (fully) there yet: NoData."""
    id_max = state.id_max if state else 0
    err = AsapoNoDataError(
        f"message {data_id} of {where(source, stream)} "
        + (why or "has not arrived yet")
        + f" (last id {id_max}); try again later"
    )
    err.reply = {"op": "get_record_by_id", "id": data_id, "id_max": id_max, "next_stream": ""}
    return err


def as_dataset(parts: list[MessageRecord]) -> DatasetRecord:
    """Build a dataset record; a plain message is a dataset of one part."""
    first = parts[0]
    size = max(p.dataset_size for p in parts) if first.dataset_substream else 1
    return DatasetRecord(first.data_id, size, min(p.timestamp for p in parts), parts)
