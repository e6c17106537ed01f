"""Catalog throughput against plain sqlite3 in the same run.

Measures batched record inserts/s (``Catalog.add_messages``) against a plain ``executemany``
of the same rows into the same table layout with no checks and no logic, and ``get_by_id``
lookups/s against a plain ``SELECT ... WHERE`` of one row. Also reports ``group_next``/s
(one write transaction each). Prints a table and writes ``bench/results/catalog.json``.

    PYTHONPATH=. python bench/catalog.py [--records 200000] [--batch 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import tempfile
import time
from importlib import import_module
from pathlib import Path

from asapo_hpc.catalog import Catalog, MessageRecord

RESULTS = Path(__file__).resolve().parent / "results" / "catalog.json"

PLAIN_TABLE = """CREATE TABLE messages (stream_pk INTEGER, data_id INTEGER, substream INTEGER,
    dataset_size INTEGER, name TEXT, size INTEGER, timestamp INTEGER, ingest_mode INTEGER,
    meta TEXT, ring_seq INTEGER, file_path TEXT, dataset_path TEXT, frame_index INTEGER,
    PRIMARY KEY (stream_pk, data_id, substream)) WITHOUT ROWID"""


def make_records(count: int, stream: str) -> list[MessageRecord]:
    """Records as the node service would pass them: meta as the JSON text from the wire."""
    return [
        MessageRecord("det", stream, i, f"processed/scan/frame_{i:06d}.h5", 18_874_368,
                      1_700_000_000_000_000_000 + i, '{"module":3,"exposure":0.0005}',
                      ring_seq=i)
        for i in range(1, count + 1)
    ]


def as_rows(records: list[MessageRecord]) -> list[tuple]:
    return [(1, r.data_id, 0, 0, r.name, r.size, r.timestamp, r.ingest_mode, r.meta,
             r.ring_seq, None, None, None) for r in records]


def bench_catalog_insert(directory: Path, records: list[MessageRecord], batch: int) -> float:
    catalog = Catalog(directory / "catalog.db")
    start = time.perf_counter()
    for first in range(0, len(records), batch):
        catalog.add_messages(records[first:first + batch])
    elapsed = time.perf_counter() - start
    catalog.close()
    return len(records) / elapsed


def plain_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def bench_plain_insert(directory: Path, rows: list[tuple], batch: int) -> float:
    conn = plain_connection(directory / "plain.db")
    conn.execute(PLAIN_TABLE)
    sql = "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    start = time.perf_counter()
    for first in range(0, len(rows), batch):
        conn.execute("BEGIN")
        conn.executemany(sql, rows[first:first + batch])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return len(rows) / elapsed


def bench_catalog_get(directory: Path, ids: list[int]) -> float:
    catalog = Catalog(directory / "catalog.db")
    start = time.perf_counter()
    for data_id in ids:
        catalog.get_by_id("det", "scan", data_id)
    elapsed = time.perf_counter() - start
    catalog.close()
    return len(ids) / elapsed


def bench_plain_get(directory: Path, ids: list[int]) -> float:
    conn = plain_connection(directory / "plain.db")
    sql = "SELECT * FROM messages WHERE stream_pk = 1 AND data_id = ? AND substream = 0"
    start = time.perf_counter()
    for data_id in ids:
        conn.execute(sql, (data_id,)).fetchone()
    elapsed = time.perf_counter() - start
    conn.close()
    return len(ids) / elapsed


def bench_group_next(directory: Path, count: int) -> float:
    catalog = Catalog(directory / "catalog.db")
    group = catalog.generate_group_id()
    start = time.perf_counter()
    for _ in range(count):
        catalog.group_next(group, "det", "scan")
    elapsed = time.perf_counter() - start
    catalog.close()
    return count / elapsed


def run_once(records: list[MessageRecord], batch: int, lookups: int) -> dict[str, float]:
    rows = as_rows(records)
    ids = random.Random(1).choices(range(1, len(records) + 1), k=lookups)
    with tempfile.TemporaryDirectory(prefix="asapo_hpc_bench_catalog_") as tmp:
        directory = Path(tmp)
        result = {
            "insert_catalog": bench_catalog_insert(directory, records, batch),
            "insert_plain": bench_plain_insert(directory, rows, batch),
            "get_catalog": bench_catalog_get(directory, ids),
            "get_plain": bench_plain_get(directory, ids),
            "group_next_catalog": bench_group_next(directory, min(lookups, 5_000)),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--lookups", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    records = make_records(args.records, "scan")
    runs = [run_once(records, args.batch, args.lookups) for _ in range(args.repeats)]
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    rows = [
        ("record inserts/s", median["insert_catalog"], median["insert_plain"]),
        ("get_by_id/s", median["get_catalog"], median["get_plain"]),
        ("group_next/s", median["group_next_catalog"], None),
    ]
    print(f"catalog bench: {args.records} records, batches of {args.batch}, "
          f"{args.lookups} lookups, median of {args.repeats}, sqlite {sqlite3.sqlite_version}")
    print(f"{'operation':<18} {'catalog':>12} {'plain sqlite3':>14} {'ratio':>7}")
    for name, ours, peer in rows:
        peer_text = f"{peer:14,.0f}" if peer else f"{'-':>14}"
        ratio = f"{ours / peer:7.2f}" if peer else f"{'-':>7}"
        print(f"{name:<18} {ours:12,.0f} {peer_text} {ratio}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "bench": "catalog",
        "sqlite_version": sqlite3.sqlite_version,
        "params": vars(args),
        "median": median,
        "ratios": {"insert": median["insert_catalog"] / median["insert_plain"],
                   "get_by_id": median["get_catalog"] / median["get_plain"]},
        "runs": runs,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    # bench/plot.py: module "plot" when run as python bench/catalog.py (bench/ is sys.path[0])
    import_module(f"{__package__}.plot" if __package__ else "plot").draw("catalog")


if __name__ == "__main__":
    main()
