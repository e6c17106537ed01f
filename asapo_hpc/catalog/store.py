"""``Catalog``: the embedded SQLite (WAL) store of message records, streams, metadata and
consumer-group progress.

One ``Catalog`` per process and file. Several processes may open the same file: writes
take SQLite's write lock with ``BEGIN IMMEDIATE`` and wait up to ``BUSY_TIMEOUT_MS`` for it,
readers never block writers. A ``Catalog`` inherited through ``fork`` reopens its connection
in the child; threads of one process share the connection under a lock.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from asapo_hpc.catalog import groups, ingest
from asapo_hpc.catalog._common import (
    MESSAGE_COLUMNS,
    STREAM_COLUMNS,
    StreamState,
    check_id,
    check_name,
    end_error,
    missing_error,
    read_parts,
    read_stream,
    where,
)
from asapo_hpc.catalog.group_ids import generate_group_id
from asapo_hpc.catalog.query import compile_query, sqlite_regexp
from asapo_hpc.catalog.records import (
    AddResult,
    DatasetRecord,
    LocationUpdate,
    MessageRecord,
    MetaMode,
    ResendPolicy,
    StreamInfo,
    decode_meta,
)
from asapo_hpc.catalog.schema import BUSY_TIMEOUT_MS, connect
from asapo_hpc.errors import (
    AsapoError,
    AsapoNoDataError,
    AsapoPartialDataError,
    AsapoTimeoutError,
    AsapoWrongInputError,
)

STREAM_FILTERS = ("all", "finished", "unfinished")
_BEAMTIME, _STREAM = 0, 1  # metadata kinds, as ASAPO's meta/{0|1}

_UPDATE_LOCATION_SQL = """
UPDATE messages SET file_path = coalesce(?, file_path), dataset_path = coalesce(?, dataset_path),
    frame_index = coalesce(?, frame_index), ring_seq = CASE WHEN ? THEN NULL ELSE ring_seq END
WHERE stream_pk = (SELECT stream_pk FROM streams WHERE source = ? AND name = ?)
  AND data_id = ? AND substream = ?
"""
_GET_BY_ID_SQL = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE stream_pk ="
    " (SELECT stream_pk FROM streams WHERE source = ? AND name = ?) AND data_id = ?"
)


class Catalog:
    """The catalog stored in the SQLite file ``path`` (created, mode 0600, when missing).

    ``clock`` returns wall-clock nanoseconds; it times negative-acknowledgement delays and
    resends, and stamps streams created without a message. Tests inject their own.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        clock: Callable[[], int] = time.time_ns,
        file_mode: int = 0o600,
    ):
        self.path = Path(path)
        self._clock = clock
        self._file_mode = file_mode
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._connection()

    # -- connection and transactions -------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            # A connection inherited through fork must not be used (SQLite's rule); reopen.
            self._conn = connect(self.path, self._file_mode)
            self._conn.create_function("regexp", 2, sqlite_regexp, deterministic=True)
            self._pid = os.getpid()
        return self._conn

    def close(self) -> None:
        """Close the connection; the next call reopens it."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, mode: str) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` for writes (takes the write lock up front, so a transaction
        never fails half-way on lock upgrade), ``BEGIN`` for consistent multi-query reads."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute(f"BEGIN {mode}")
            except sqlite3.OperationalError as exc:
                raise self._busy_error(exc) from exc
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                conn.execute("ROLLBACK")
                raise self._busy_error(exc) from exc

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._transaction("IMMEDIATE")

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._transaction("DEFERRED")

    def _busy_error(self, exc: sqlite3.OperationalError) -> AsapoError:
        if "locked" in str(exc) or "busy" in str(exc):
            return AsapoTimeoutError(
                f"catalog {self.path} stayed locked by another process for "
                f"{BUSY_TIMEOUT_MS} ms; check for a stuck writer"
            )
        return AsapoError(f"catalog {self.path}: {exc}")

    # -- messages ----------------------------------------------------------------------------

    def add_message(self, record: MessageRecord) -> AddResult:
        """Record one message; see ``add_messages``."""
        return self.add_messages((record,))

    def add_messages(self, records: Iterable[MessageRecord]) -> AddResult:
        """Record many messages in one transaction (all or none).

        Streams are created on their first message. A record with ``data_id`` 0 gets the
        stream's next id. A record named ``asapo_finish_stream`` finishes its stream at
        ``data_id - 1`` with ``meta["next_stream"]``, as ASAPO's producer sends it. An id
        already stored with the same name, size and meta is accepted as a duplicate (the
        result's ``code`` is 2); with other content it raises AsapoWrongInputError.
        """
        with self._write() as conn:
            return ingest.insert_records(conn, records)

    def update_locations(self, updates: Iterable[LocationUpdate]) -> int:
        """Record where the sink stored messages (and ring evictions); returns rows changed."""
        params = [
            (u.file_path, u.dataset_path, u.frame_index, int(u.evicted_from_ring),
             u.source, u.stream, u.data_id, u.dataset_substream)
            for u in updates
        ]
        with self._write() as conn:
            return conn.executemany(_UPDATE_LOCATION_SQL, params).rowcount

    def get_by_id(self, source: str, stream: str, data_id: int) -> MessageRecord:
        """The message ``data_id``: EndOfStream / StreamFinished past the last id, NoData for
        a missing id below it."""
        check_id(data_id)
        with self._lock:
            # One indexed query on the hot path; the stream state only explains a miss.
            rows = self._connection().execute(_GET_BY_ID_SQL, (source, stream, data_id)).fetchall()
        if len(rows) == 1 and rows[0][6] == 0:
            return MessageRecord(source, stream, *rows[0])
        with self._read() as conn:
            state, parts = self._parts(conn, source, stream, data_id)
        return groups.plain_message(source, stream, parts)

    def get_last(self, source: str, stream: str) -> MessageRecord:
        """The message with the largest id."""
        with self._read() as conn:
            state = read_stream(conn, source, stream)
            if state is None or state.last_id == 0:
                raise end_error(source, stream, state)
            parts = read_parts(conn, state, state.last_id)
        return groups.plain_message(source, stream, parts)

    def get_dataset_by_id(
        self, source: str, stream: str, data_id: int, min_size: int = 0
    ) -> DatasetRecord:
        """Dataset ``data_id`` when complete; with ``min_size`` > 0 and at least that many
        parts an incomplete one raises AsapoPartialDataError carrying it; else NoData."""
        check_id(data_id)
        with self._read() as conn:
            state, parts = self._parts(conn, source, stream, data_id)
        return _deliver(groups.shape_dataset(source, stream, state, parts, min_size))

    def get_last_dataset(self, source: str, stream: str, min_size: int = 0) -> DatasetRecord:
        """The complete dataset (or, with ``min_size``, one that has that many parts) with the
        largest id."""
        with self._read() as conn:
            state = read_stream(conn, source, stream)
            data_id = _last_dataset_id(conn, state, min_size) if state else None
            if data_id is None:
                raise end_error(source, stream, state)
            parts = read_parts(conn, state, data_id)
        return _deliver(groups.shape_dataset(source, stream, state, parts, min_size))

    def _parts(
        self, conn: sqlite3.Connection, source: str, stream: str, data_id: int
    ) -> tuple[StreamState, list[MessageRecord]]:
        state = read_stream(conn, source, stream)
        if state is None or data_id > state.id_max:
            raise end_error(source, stream, state)
        parts = read_parts(conn, state, data_id)
        if not parts:
            raise missing_error(source, stream, state, data_id)
        return state, parts

    def get_current_size(
        self, source: str, stream: str, *, dataset: bool = False, incomplete: bool = False
    ) -> int:
        """How many messages (ids) the stream holds; the finish marker is not counted. For
        ``dataset`` streams only complete datasets count unless ``incomplete``."""
        state = self._stream_state(source, stream)
        if state is None:
            return 0
        if dataset and not incomplete:
            sql = ("SELECT count(*) FROM (SELECT 1 FROM messages WHERE stream_pk = ?"
                   " GROUP BY data_id HAVING count(*) >= max(dataset_size))")
        else:
            sql = "SELECT count(DISTINCT data_id) FROM messages WHERE stream_pk = ?"
        with self._lock:
            return self._connection().execute(sql, (state.pk,)).fetchone()[0]

    def query_messages(self, source: str, stream: str, query: str) -> list[MessageRecord]:
        """The records of one stream matching ``query`` (ASAPO's SQL WHERE subset, see
        ``asapo_hpc.catalog.query``), by id unless the query has ORDER BY."""
        compiled = compile_query(query)
        order = (compiled.order_sql + ", " if compiled.order_sql else "") + "data_id, substream"
        sql = (f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE stream_pk = ?"
               f" AND {compiled.where_sql} ORDER BY {order}")
        with self._read() as conn:
            state = read_stream(conn, source, stream)
            if state is None:
                return []
            params = (state.pk, *compiled.where_params, *compiled.order_params)
            try:
                rows = conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise AsapoWrongInputError(f"query {query!r} failed: {exc}") from exc
        return [MessageRecord(source, stream, *row) for row in rows]

    # -- streams -----------------------------------------------------------------------------

    def _stream_state(self, source: str, stream: str) -> StreamState | None:
        with self._lock:
            return read_stream(self._connection(), source, stream)

    def get_source_list(self) -> list[str]:
        """Data sources that have streams, by name."""
        with self._lock:
            rows = self._connection().execute("SELECT DISTINCT source FROM streams ORDER BY 1")
            return [row[0] for row in rows]

    def get_stream_info(self, source: str, stream: str) -> StreamInfo:
        """One stream's entry; AsapoNoDataError when it does not exist."""
        state = self._stream_state(source, stream)
        if state is None:
            raise AsapoNoDataError(f"{where(source, stream)} does not exist")
        return state.info()

    def get_stream_list(
        self, source: str, from_stream: str = "", filter: str = "all"
    ) -> list[StreamInfo]:
        """Streams of ``source`` sorted by creation, starting at ``from_stream`` (empty: the
        first; unknown: none), with ``filter`` "all", "finished" or "unfinished"."""
        if filter not in STREAM_FILTERS:
            raise AsapoWrongInputError(
                f"stream filter {filter!r} unknown; use one of {', '.join(STREAM_FILTERS)}"
            )
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {STREAM_COLUMNS} FROM streams WHERE source = ?"
                " ORDER BY created_ns, stream_pk", (source,)
            ).fetchall()
        states = [StreamState(*row) for row in rows]
        if from_stream:
            names = [s.name for s in states]
            states = states[names.index(from_stream):] if from_stream in names else []
        if filter != "all":
            states = [s for s in states if s.finished == (filter == "finished")]
        return [s.info() for s in states]

    def get_last_stream(self, source: str) -> StreamInfo | None:
        """The most recently created stream of ``source``, None when it has none."""
        streams = self.get_stream_list(source)
        return streams[-1] if streams else None

    def finish_stream(self, source: str, stream: str, last_id: int, next_stream: str = "") -> None:
        """Finish ``stream`` at ``last_id``; readers past it are told ``next_stream``."""
        with self._write() as conn:
            state = ingest.get_or_create_stream(conn, source, stream, self._clock())
            ingest.finish(conn, state, last_id, next_stream)

    def delete_stream(
        self,
        source: str,
        stream: str,
        *,
        error_on_not_exist: bool = True,
        delete_meta: bool = True,
    ) -> bool:
        """Delete a stream's messages and group progress (and its metadata); True if it
        existed."""
        with self._write() as conn:
            state = read_stream(conn, source, stream)
            if state is None and error_on_not_exist:
                raise AsapoWrongInputError(f"cannot delete {where(source, stream)}: no such stream")
            if state is not None:
                conn.execute("DELETE FROM messages WHERE stream_pk = ?", (state.pk,))
                conn.execute("DELETE FROM streams WHERE stream_pk = ?", (state.pk,))
            for table in ("group_pointers", "group_acks", "group_inflight"):
                conn.execute(f"DELETE FROM {table} WHERE source = ? AND stream = ?",
                             (source, stream))
            if delete_meta:
                conn.execute("DELETE FROM metadata WHERE kind = ? AND source = ? AND stream = ?",
                             (_STREAM, source, stream))
        return state is not None

    # -- metadata ----------------------------------------------------------------------------

    def set_beamtime_meta(
        self, source: str, meta: dict | str, mode: MetaMode | str = "replace", upsert: bool = True
    ) -> None:
        """Write the beamtime metadata (ASAPO keeps it per data source): ``insert`` fails when
        it exists, ``replace`` overwrites, ``update`` merges top-level keys (as MongoDB's
        $set); without ``upsert`` an update of missing metadata fails."""
        self._set_meta(_BEAMTIME, check_name("source", source), "", meta, mode, upsert)

    def get_beamtime_meta(self, source: str) -> dict:
        """The beamtime metadata; AsapoNoDataError when none was written."""
        return self._get_meta(_BEAMTIME, source, "")

    def set_stream_meta(
        self,
        source: str,
        stream: str,
        meta: dict | str,
        mode: MetaMode | str = "replace",
        upsert: bool = True,
    ) -> None:
        """Write a stream's metadata, with ``set_beamtime_meta``'s modes."""
        self._set_meta(_STREAM, check_name("source", source), check_name("stream", stream),
                       meta, mode, upsert)

    def get_stream_meta(self, source: str, stream: str) -> dict:
        """A stream's metadata; AsapoNoDataError when none was written."""
        return self._get_meta(_STREAM, source, stream)

    def _set_meta(
        self, kind: int, source: str, stream: str, meta: dict | str, mode: MetaMode | str,
        upsert: bool,
    ) -> None:
        mode = MetaMode.parse(mode)
        new = _meta_object(meta)
        what = _meta_name(kind, source, stream)
        with self._write() as conn:
            row = conn.execute(
                "SELECT meta FROM metadata WHERE kind = ? AND source = ? AND stream = ?",
                (kind, source, stream),
            ).fetchone()
            if row is not None and mode is MetaMode.INSERT:
                raise AsapoWrongInputError(f"{what} already exists; use mode 'replace' or 'update'")
            if row is None and mode is MetaMode.UPDATE and not upsert:
                raise AsapoWrongInputError(
                    f"{what} does not exist; cannot update it without upsert"
                )
            if row is not None and mode is MetaMode.UPDATE:
                new = {**json.loads(row[0]), **new}
            conn.execute(
                "INSERT OR REPLACE INTO metadata (kind, source, stream, meta) VALUES (?, ?, ?, ?)",
                (kind, source, stream, json.dumps(new, separators=(",", ":"))),
            )

    def _get_meta(self, kind: int, source: str, stream: str) -> dict:
        with self._lock:
            row = self._connection().execute(
                "SELECT meta FROM metadata WHERE kind = ? AND source = ? AND stream = ?",
                (kind, source, stream),
            ).fetchone()
        if row is None:
            raise AsapoNoDataError(f"{_meta_name(kind, source, stream)} was never written")
        return json.loads(row[0])

    # -- consumer groups ---------------------------------------------------------------------

    generate_group_id = staticmethod(generate_group_id)

    def group_next(
        self, group_id: str, source: str, stream: str, **options: Any
    ) -> MessageRecord | DatasetRecord:
        """The record of ``group_next_delivery`` (the same keywords and errors)."""
        return self.group_next_delivery(group_id, source, stream, **options).record

    def group_next_delivery(
        self,
        group_id: str,
        source: str,
        stream: str,
        *,
        dataset: bool = False,
        min_size: int = 0,
        resend: ResendPolicy | None = None,
    ) -> groups.Delivery:
        """The group's next message (or dataset), handed to exactly one caller, with how
        many times the group has now been handed its id (``Delivery.deliveries``: 1 the
        first time), for readers that report redeliveries.

        Due redeliveries come first (negatively acknowledged ones, and with ``resend`` the
        unacknowledged ones older than its delay). Past the last id: AsapoEndOfStreamError,
        or AsapoStreamFinishedError naming the next stream. A missing id below the last (or
        a dataset short of parts) raises AsapoNoDataError and the group waits for it; a
        partial dataset handed out (with ``min_size``, or redelivered) raises
        PartialDeliveryError, an AsapoPartialDataError that also carries the Delivery.
        """
        key = self._group_key(group_id, source, stream)
        with self._write() as conn:
            delivery = groups.next_delivery(
                conn, key, dataset=dataset, min_size=min_size, policy=resend, now=self._clock()
            )
        # Raised after the commit: a partial dataset still counts as handed out.
        if delivery.partial:
            raise groups.PartialDeliveryError(_partial_message(delivery.record), delivery)
        return delivery

    def acknowledge(self, group_id: str, source: str, stream: str, data_id: int) -> None:
        """The group processed ``data_id``."""
        key = self._group_key(group_id, source, stream)
        with self._write() as conn:
            groups.acknowledge(conn, key, data_id)

    def neg_acknowledge(
        self, group_id: str, source: str, stream: str, data_id: int, delay_ms: int = 0
    ) -> None:
        """Deliver ``data_id`` to the group again after ``delay_ms``."""
        key = self._group_key(group_id, source, stream)
        with self._write() as conn:
            groups.negative_acknowledge(conn, key, data_id, delay_ms, self._clock())

    def last_acknowledged(self, group_id: str, source: str, stream: str) -> int:
        """The largest id the group acknowledged, 0 when none."""
        key = self._group_key(group_id, source, stream)
        with self._lock:
            return groups.last_acknowledged(self._connection(), key)

    def unacknowledged(
        self, group_id: str, source: str, stream: str, from_id: int = 0, to_id: int = 0
    ) -> list[int]:
        """Ids in [from_id, to_id] (0: first / last id) the group has not acknowledged."""
        key = self._group_key(group_id, source, stream)
        with self._read() as conn:
            return groups.unacknowledged(conn, key, from_id, to_id)

    def reset_counter(self, group_id: str, source: str, stream: str, value: int = 0) -> None:
        """Set the group's last-read id: its next read returns ``value + 1``."""
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise AsapoWrongInputError(f"counter value must be an integer >= 0, got {value!r}")
        key = self._group_key(group_id, source, stream)
        with self._write() as conn:
            groups.write_counter(conn, key, value)

    def get_counter(self, group_id: str, source: str, stream: str) -> int:
        """The group's last-read id (0 before its first read)."""
        key = self._group_key(group_id, source, stream)
        with self._lock:
            return groups.read_counter(self._connection(), key)

    def has_group(self, group_id: str, source: str, stream: str) -> bool:
        """Whether the group reads ``stream`` through the catalog (it took an id, or its
        counter was set with ``reset_counter``)."""
        key = self._group_key(group_id, source, stream)
        with self._lock:
            return groups.has_progress(self._connection(), key)

    @staticmethod
    def _group_key(group_id: str, source: str, stream: str) -> groups.GroupKey:
        return groups.GroupKey(
            check_name("group", group_id), check_name("source", source),
            check_name("stream", stream),
        )


def _deliver(delivery: groups.Delivery) -> MessageRecord | DatasetRecord:
    """The record; a partial dataset is raised as AsapoPartialDataError instead."""
    if delivery.partial:
        raise AsapoPartialDataError(_partial_message(delivery.record),
                                    partial_data=delivery.record)
    return delivery.record


def _partial_message(record: DatasetRecord) -> str:
    return (f"dataset {record.data_id} is partial: {len(record.parts)} of "
            f"{record.dataset_size} parts; the parts that arrived are in partial_data")


def _last_dataset_id(conn: sqlite3.Connection, state: StreamState, min_size: int) -> int | None:
    if min_size > 0:
        having = "count(*) >= min(?, max(max(dataset_size), 1))"
        params: tuple = (state.pk, min_size)
    else:
        having = "count(*) >= max(max(dataset_size), 1)"
        params = (state.pk,)
    row = conn.execute(
        "SELECT data_id FROM messages WHERE stream_pk = ? GROUP BY data_id"
        f" HAVING {having} ORDER BY data_id DESC LIMIT 1", params,
    ).fetchone()
    return None if row is None else row[0]


def _meta_object(meta: dict | str) -> dict:
    try:
        value = decode_meta(meta)
    except ValueError as exc:
        raise AsapoWrongInputError(f"metadata is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise AsapoWrongInputError(f"metadata must be a JSON object, got {type(value).__name__}")
    return value


def _meta_name(kind: int, source: str, stream: str) -> str:
    if kind == _BEAMTIME:
        return f"beamtime metadata of source {source!r}"
    return f"metadata of {where(source, stream)}"
