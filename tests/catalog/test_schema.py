"""Opening catalog files: creation, schema version, foreign files, permissions."""

from __future__ import annotations

import sqlite3
import stat

import pytest

from asapo_hpc.catalog import SCHEMA_VERSION, Catalog
from asapo_hpc.errors import AsapoLocalIOError, AsapoWrongInputError


def test_new_file_gets_schema_version_wal_and_mode_0600(catalog_path):
    Catalog(catalog_path).close()
    conn = sqlite3.connect(catalog_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
    assert {"streams", "messages", "metadata", "group_pointers", "group_acks",
            "group_inflight"} <= tables
    conn.close()
    assert stat.S_IMODE(catalog_path.stat().st_mode) == 0o600


def test_file_mode_is_configurable(tmp_path):
    path = tmp_path / "shared.db"
    Catalog(path, file_mode=0o640).close()
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 in (0o040, 0o000)  # umask may drop bits


def test_reopen_keeps_the_schema(catalog_path):
    Catalog(catalog_path).close()
    Catalog(catalog_path).close()  # a second open must not try to create tables again


def test_other_schema_version_is_refused(catalog_path):
    Catalog(catalog_path).close()
    conn = sqlite3.connect(catalog_path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(AsapoWrongInputError, match="schema version 99, this asapo_hpc reads "
                                                   f"version {SCHEMA_VERSION}"):
        Catalog(catalog_path)


def test_foreign_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(AsapoWrongInputError, match="not an asapo_hpc catalog"):
        Catalog(path)


def test_non_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not a database, just some text " * 200)
    with pytest.raises(AsapoWrongInputError, match="not a usable catalog"):
        Catalog(path)


def test_unwritable_location_is_a_local_io_error(tmp_path):
    with pytest.raises(AsapoLocalIOError, match="cannot open catalog file"):
        Catalog(tmp_path / "missing_dir" / "c.db")


def test_two_catalog_objects_on_one_file_see_each_other(catalog_path, make_message):
    with Catalog(catalog_path) as writer, Catalog(catalog_path) as reader:
        writer.add_message(make_message(1))
        assert reader.get_by_id("src", "s1", 1).data_id == 1
        reader.set_beamtime_meta("src", {"by": "reader"})
        assert writer.get_beamtime_meta("src") == {"by": "reader"}
