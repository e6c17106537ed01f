"""Several processes on one catalog file: shared records, and every id handed out once."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import asapo_hpc
from asapo_hpc.catalog import Catalog, MessageRecord

PACKAGE_ROOT = str(Path(asapo_hpc.__file__).resolve().parent.parent)

# Runs in a child interpreter: read with group "g" until the end, print the ids it got.
GROUP_READER = """
import json, sys, time
from asapo_hpc.catalog import Catalog
from asapo_hpc.errors import AsapoEndOfStreamError
catalog = Catalog(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()  # start together with the other reader
got = []
while True:
    try:
        got.append(catalog.group_next("g", "src", "s1").data_id)
    except AsapoEndOfStreamError:
        break
    time.sleep(0.0005)  # "process" the message, as a group member would
print(json.dumps(got))
"""

WRITER = """
import sys
from asapo_hpc.catalog import Catalog, MessageRecord
catalog = Catalog(sys.argv[1])
catalog.add_messages([MessageRecord("src", "child", i, f"c{i}", 1, i, {"from": "child"})
                      for i in range(1, 51)])
print(catalog.get_by_id("src", "parent", 7).name)
"""


def run_child(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT}
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def records(stream: str, count: int) -> list[MessageRecord]:
    return [MessageRecord("src", stream, i, f"p{i}", 1, i) for i in range(1, count + 1)]


def test_two_processes_see_each_others_records(catalog_path):
    catalog = Catalog(catalog_path)
    catalog.add_messages(records("parent", 10))
    child = run_child(WRITER, str(catalog_path))
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.strip() == "p7"
    assert catalog.get_current_size("src", "child") == 50
    assert catalog.get_by_id("src", "child", 50).meta_dict() == {"from": "child"}


def test_concurrent_group_next_hands_out_every_id_exactly_once(catalog_path):
    count = 600
    Catalog(catalog_path).add_messages(records("s1", count))
    children = [run_child(GROUP_READER, str(catalog_path)) for _ in range(2)]
    for child in children:
        assert child.stdout.readline() == "ready\n"
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    results = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        results.append(json.loads(out))
    delivered = results[0] + results[1]
    print("ids per reader:", [len(r) for r in results])
    assert sorted(delivered) == list(range(1, count + 1))
    # Each reader sees its own ids in increasing order.
    assert all(r == sorted(r) for r in results)


def _read_after_fork(catalog: Catalog, queue) -> None:
    catalog.add_message(MessageRecord("src", "forked", 1, "f", 1, 1))
    queue.put(catalog.get_by_id("src", "s1", 3).name)


def test_a_catalog_inherited_through_fork_reopens_its_connection(catalog_path):
    catalog = Catalog(catalog_path)
    catalog.add_messages(records("s1", 3))
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_after_fork, args=(catalog, queue))
    child.start()
    name = queue.get(timeout=60)
    child.join(timeout=60)
    assert (child.exitcode, name) == (0, "p3")
    # The parent's connection still works after the child used (and dropped) its own.
    assert catalog.get_by_id("src", "forked", 1).name == "f"
