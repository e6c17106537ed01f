"""The catalog's SQLite schema, its version, and opening a file safely.

A catalog file carries ``PRAGMA application_id`` (so a foreign SQLite file is refused) and
``PRAGMA user_version`` = ``SCHEMA_VERSION`` (so a file of another version is refused).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from asapo_hpc.errors import AsapoLocalIOError, AsapoWrongInputError

#: Bump on every incompatible schema change.
SCHEMA_VERSION = 1
#: "AHPC" as a big-endian integer: marks a SQLite file as an asapo_hpc catalog.
APPLICATION_ID = 0x41485043

# Streams: last_id is the largest message id stored; finish_last_id the id the producer
# declared last when it finished the stream (messages below it may still arrive).
# Messages: substream 0 is a plain message, 1..dataset_size the parts of a dataset.
# Group tables are keyed by names, so a group may set its counter before the stream exists.
SCHEMA = """
CREATE TABLE streams (
    stream_pk      INTEGER PRIMARY KEY,
    source         TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    created_ns     INTEGER NOT NULL,
    last_ns        INTEGER NOT NULL DEFAULT 0,
    last_id        INTEGER NOT NULL DEFAULT 0,
    finished       INTEGER NOT NULL DEFAULT 0,
    finish_last_id INTEGER NOT NULL DEFAULT 0,
    next_stream    TEXT    NOT NULL DEFAULT '',
    UNIQUE (source, name)
);
CREATE TABLE messages (
    stream_pk    INTEGER NOT NULL,
    data_id      INTEGER NOT NULL CHECK (typeof(data_id) = 'integer' AND data_id > 0),
    substream    INTEGER NOT NULL CHECK (typeof(substream) = 'integer' AND substream >= 0),
    dataset_size INTEGER NOT NULL CHECK (typeof(dataset_size) = 'integer'
                                         AND ((substream = 0 AND dataset_size = 0)
                                         OR (substream > 0 AND substream <= dataset_size))),
    name         TEXT    NOT NULL CHECK (typeof(name) = 'text'),
    size         INTEGER NOT NULL CHECK (typeof(size) = 'integer' AND size >= 0),
    timestamp    INTEGER NOT NULL CHECK (typeof(timestamp) = 'integer'),
    ingest_mode  INTEGER NOT NULL CHECK (typeof(ingest_mode) = 'integer'),
    meta         TEXT    NOT NULL CHECK (json_valid(meta) AND substr(ltrim(meta), 1, 1) = '{'),
    ring_seq     INTEGER,
    file_path    TEXT,
    dataset_path TEXT,
    frame_index  INTEGER,
    PRIMARY KEY (stream_pk, data_id, substream)
) WITHOUT ROWID;
CREATE TABLE metadata (
    kind   INTEGER NOT NULL,  -- 0 beamtime (per data source), 1 stream, as ASAPO's meta/{0|1}
    source TEXT    NOT NULL,
    stream TEXT    NOT NULL,
    meta   TEXT    NOT NULL,
    PRIMARY KEY (kind, source, stream)
) WITHOUT ROWID;
CREATE TABLE group_pointers (
    group_id  TEXT    NOT NULL,
    source    TEXT    NOT NULL,
    stream    TEXT    NOT NULL,
    last_read INTEGER NOT NULL,
    PRIMARY KEY (group_id, source, stream)
) WITHOUT ROWID;
CREATE TABLE group_acks (
    group_id TEXT    NOT NULL,
    source   TEXT    NOT NULL,
    stream   TEXT    NOT NULL,
    data_id  INTEGER NOT NULL,
    PRIMARY KEY (group_id, source, stream, data_id)
) WITHOUT ROWID;
CREATE TABLE group_inflight (
    group_id     TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    stream       TEXT    NOT NULL,
    data_id      INTEGER NOT NULL,
    deliveries   INTEGER NOT NULL,
    delivered_ns INTEGER NOT NULL,
    nack_due_ns  INTEGER,          -- set by a negative acknowledgement
    PRIMARY KEY (group_id, source, stream, data_id)
) WITHOUT ROWID;
-- Redelivery looks only at due rows: negatively acknowledged ones, or (with resend) the
-- oldest deliveries; without these indexes every next would scan all unacknowledged rows.
CREATE INDEX inflight_by_nack_due ON group_inflight (group_id, source, stream, nack_due_ns)
    WHERE nack_due_ns IS NOT NULL;
CREATE INDEX inflight_by_delivery ON group_inflight (group_id, source, stream, delivered_ns)
    WHERE nack_due_ns IS NULL;
"""

BUSY_TIMEOUT_MS = 10_000


def connect(path: str | os.PathLike, file_mode: int = 0o600) -> sqlite3.Connection:
    """Open (creating if needed) the catalog at ``path`` and check or create its schema.

    The file is created with ``file_mode``; SQLite gives its -wal and -shm files the same.
    """
    path = Path(path)
    _create_file(path, file_mode)
    try:
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode survives process crashes; only an OS crash may lose the last commits.
        conn.execute("PRAGMA synchronous = NORMAL")
        _check_or_create_schema(conn, path)
    except sqlite3.DatabaseError as exc:
        raise AsapoWrongInputError(f"{path} is not a usable catalog: {exc}") from exc
    return conn


def _create_file(path: Path, file_mode: int) -> None:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, file_mode))
    except OSError as exc:
        raise AsapoLocalIOError(f"cannot open catalog file {path}: {exc}") from exc


def _check_or_create_schema(conn: sqlite3.Connection, path: Path) -> None:
    # IMMEDIATE: of two processes opening a new file at once, one creates, the other waits.
    conn.execute("BEGIN IMMEDIATE")
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        if app_id == 0 and version == 0 and tables == 0:
            for statement in _statements(SCHEMA):
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        else:
            _check_identity(path, app_id, version)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """Split a script into statements (executescript would commit our open transaction)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending)
            pending = ""
    return statements


def _check_identity(path: Path, app_id: int, version: int) -> None:
    if app_id != APPLICATION_ID:
        raise AsapoWrongInputError(
            f"{path} is a SQLite file but not an asapo_hpc catalog "
            f"(application_id {app_id:#x}); give the path of a catalog or a new file"
        )
    if version != SCHEMA_VERSION:
        raise AsapoWrongInputError(
            f"catalog {path} has schema version {version}, this asapo_hpc reads version "
            f"{SCHEMA_VERSION}; open it with the asapo_hpc release that wrote it"
        )
