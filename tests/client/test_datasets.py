"""Datasets through a real node service: parts published out of order and interleaved are
assembled, and a group of two members sees every dataset exactly once; partial datasets
with min_size; datasets by id and the last one."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from asapo_hpc.catalog import Catalog
from asapo_hpc.client import Consumer, Producer
from asapo_hpc.client.streams import Dataset
from asapo_hpc.errors import (
    AsapoNoDataError,
    AsapoPartialDataError,
    AsapoStreamFinishedError,
    AsapoWrongInputError,
)
from asapo_hpc.node import NodeService

N = 12


def part(i: int, k: int) -> np.ndarray:
    return np.random.default_rng(100 * i + k).integers(0, 65535, (8, 8), dtype=np.uint16)


def publish_out_of_order(producer: Producer, stream: str, ids: range) -> None:
    """Part 3 of every id, then part 1 of every id in reverse, then part 2."""
    for i in ids:
        producer.send(i, part(i, 3), {"i": i, "k": 3}, stream=stream, dataset=(3, 3))
    for i in reversed(ids):
        producer.send(i, part(i, 1), {"i": i, "k": 1}, stream=stream, dataset=(1, 3))
    for i in ids:
        producer.send(i, part(i, 2), {"i": i, "k": 2}, stream=stream, dataset=(2, 3))


def check_dataset(ds: Dataset) -> None:
    assert (ds.size, ds.complete) == (3, True)
    assert [p.dataset for p in ds.parts] == [(1, 3), (2, 3), (3, 3)]
    for k, p in enumerate(ds.parts, start=1):
        assert (p.id, p.meta) == (ds.id, {"i": ds.id, "k": k})
        assert np.array_equal(p.array(np.uint16, (8, 8)), part(ds.id, k))


def member(root: str, got: list[int], errors: list[BaseException]) -> None:
    try:
        with Consumer("bt", "mod", data_root=root, timeout_ms=200) as consumer:
            while True:
                try:
                    ds = consumer.get_next_dataset("workers", stream="scan", timeout_ms=200)
                except AsapoStreamFinishedError:
                    break
                except AsapoNoDataError:
                    continue
                check_dataset(ds)
                got.append(ds.id)
            consumer._close_streams()
    except BaseException as exc:  # reported by the test thread
        errors.append(exc)


def test_two_members_see_each_dataset_exactly_once(shm_prefix, node_config):
    root = str(node_config.data_root)
    ring = node_config.source("mod").ring
    got: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    with NodeService(node_config):
        with Producer("bt", "mod", config=ring) as producer:
            threads = [threading.Thread(target=member, args=(root, got[m], errors))
                       for m in range(2)]
            for t in threads:
                t.start()
            publish_out_of_order(producer, "scan", range(1, N + 1))
            producer.send_stream_finished_flag("scan", N)
            for t in threads:
                t.join(60)
    assert errors == []
    assert sorted(got[0] + got[1]) == list(range(1, N + 1))
    with Catalog(node_config.catalog_path) as catalog:  # each id handed out once
        assert catalog.get_counter("workers", "mod", "scan") == N


def test_partial_datasets_by_id_and_last(shm_prefix, node_config, wait_for):
    root = str(node_config.data_root)
    with NodeService(node_config):
        with Producer("bt", "mod", config=node_config.source("mod").ring) as producer:
            publish_out_of_order(producer, "s", range(1, 3))
            producer.send(3, part(3, 1), {"i": 3, "k": 1}, stream="s", dataset=(1, 3))
            producer.send(3, part(3, 3), {"i": 3, "k": 3}, stream="s", dataset=(3, 3))
            producer.send_stream_finished_flag("s", 3)  # the sink then stores id 3's parts
            with Catalog(node_config.catalog_path) as catalog:
                wait_for(lambda: catalog.get_stream_info("mod", "s").finished
                         if catalog.get_current_size("mod", "s") else False, "the finish")
            with Consumer("bt", "mod", data_root=root) as consumer:
                check_partials(consumer)
                consumer._close_streams()


def check_partials(consumer: Consumer) -> None:
    for i in (1, 2):
        ds = consumer.get_next_dataset("g", min_size=2, stream="s", timeout_ms=5000)
        check_dataset(ds)
        assert ds.id == i
    assert consumer.get_next_dataset("g0", stream="s", timeout_ms=0).id == 1
    assert consumer.get_next_dataset("g0", stream="s", timeout_ms=0).id == 2
    with pytest.raises(AsapoNoDataError, match="2 of 3 parts"):  # no min_size: it waits
        consumer.get_next_dataset("g0", stream="s", timeout_ms=100)
    with pytest.raises(AsapoPartialDataError) as err:
        consumer.get_next_dataset("g", min_size=2, stream="s", timeout_ms=100)
    partial = err.value.partial_data
    assert (partial.id, partial.size, partial.complete) == (3, 3, False)
    assert [p.dataset for p in partial.parts] == [(1, 3), (3, 3)]
    assert np.array_equal(partial.parts[1].array(np.uint16, (8, 8)), part(3, 3))
    with pytest.raises(AsapoStreamFinishedError):  # the partial one counted as handed out
        consumer.get_next_dataset("g", min_size=2, stream="s", timeout_ms=50)
    check_dataset(consumer.get_dataset_by_id(2, stream="s"))
    with pytest.raises(AsapoNoDataError):
        consumer.get_dataset_by_id(3, stream="s")
    with pytest.raises(AsapoPartialDataError) as err:
        consumer.get_dataset_by_id(3, stream="s", min_size=2)
    assert err.value.partial_data.record()["messages"][0]["dataset_substream"] == 1
    last = consumer.get_last_dataset(stream="s")
    check_dataset(last)
    assert last.id == 2
    assert last.record()["_id"] == 2 and len(last.record()["messages"]) == 3
    with pytest.raises(AsapoWrongInputError):
        consumer.get_next_dataset("g", min_size=-1, stream="s")
