"""ASAPO's get_unacknowledged_messages / get_last_acknowledged_message on the local Consumer:
answered from the catalog for the groups it keeps (dataset groups, groups reading a stream
from disk), refused for ring groups; and exactly what a RemoteConsumer is told by the node
for the same catalog state (both are one ConsumerStreams call)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from asapo_hpc.auth import issue_token, load_or_create_secret
from asapo_hpc.catalog import Catalog
from asapo_hpc.client import Consumer, Producer
from asapo_hpc.client.disk_groups import mark_disk_group
from asapo_hpc.client.remote import RemoteConsumer
from asapo_hpc.errors import AsapoError, AsapoPartialDataError, AsapoWrongInputError
from asapo_hpc.node import NodeConfig, NodeService, SourceConfig


def module(i: int, k: int) -> np.ndarray:
    return np.random.default_rng(100 * i + k).integers(0, 65535, (8, 8), dtype=np.uint16)


@pytest.fixture
def config(node_config: NodeConfig, tmp_path) -> NodeConfig:
    """'mod' (3-part datasets) and 'det' (single 8 x 8 frames), both with the ring group
    'ring' declared (it holds every message from the first); a remote port on 127.0.0.1."""
    ring = dataclasses.replace(node_config.source("mod").ring, groups=("ring",))
    mod = dataclasses.replace(node_config.source("mod"), ring=ring)
    det = SourceConfig("det", frame_shape=(8, 8), dtype="uint16", ring=ring)
    return dataclasses.replace(node_config, sources=(mod, det), remote_port=0,
                               secret_file=tmp_path / "secret.key")


def publish(config: NodeConfig, wait_for: Callable) -> None:
    """'mod': dataset 1 complete (parts out of order), dataset 2 without its third part;
    'det': 3 frames. Both streams finished, and the catalog has recorded them."""
    with Producer("bt", "mod", config=config.source("mod").ring) as producer:
        for k in (3, 1, 2):
            producer.send(1, module(1, k), {"k": k}, dataset=(k, 3), name=f"m1_{k}")
        for k in (1, 2):
            producer.send(2, module(2, k), {"k": k}, dataset=(k, 3), name=f"m2_{k}")
        producer.send_stream_finished_flag("default", 2)
    with Producer("bt", "det", config=config.source("det").ring) as producer:
        for i in (1, 2, 3):
            producer.send(i, module(i, 0), {"i": i})
        producer.send_stream_finished_flag("default", 3)
    with Catalog(config.catalog_path) as catalog:
        for source in ("mod", "det"):
            wait_for(lambda s=source: catalog.get_stream_info(s, "default").finished
                     if catalog.get_current_size(s, "default") else False, "the finish")


def test_dataset_group_disk_group_and_ring_group(shm_prefix, config, wait_for):
    root = str(config.data_root)
    with NodeService(config):
        publish(config, wait_for)
        with Consumer("bt", "mod", data_root=root, timeout_ms=2000) as consumer:
            # the same calls and results as the remote test of these queries
            first = consumer.get_next_dataset("g", timeout_ms=300)
            with pytest.raises(AsapoPartialDataError):
                consumer.get_next_dataset("g", min_size=1, timeout_ms=300)
            assert consumer.get_unacknowledged_messages("g") == [1, 2]
            assert consumer.get_last_acknowledged_message("g") is None
            consumer.acknowledge_dataset("g", first)
            assert consumer.get_unacknowledged_messages("g") == [2]
            assert consumer.get_unacknowledged_messages("g", from_id=1, to_id=1) == []
            assert consumer.get_unacknowledged_messages("g", to_id=10**15) == [2]
            assert consumer.get_unacknowledged_messages("g", from_id=3) == []  # past the end
            with pytest.raises(AsapoWrongInputError, match="empty range: to_id 1 is below "
                                                           "from_id 2"):
                consumer.get_unacknowledged_messages("g", from_id=2, to_id=1)
            assert consumer.get_last_acknowledged_message("g") == 1
            with pytest.raises(AsapoWrongInputError, match="group 'nobody' keeps no "
                                                           "acknowledgements of stream 'default'"):
                consumer.get_unacknowledged_messages("nobody")
            with pytest.raises(AsapoWrongInputError, match="from_id must be an integer >= 0"):
                consumer.get_unacknowledged_messages("g", from_id=-1)
            consumer.close()
        with Catalog(config.catalog_path) as catalog:
            assert mark_disk_group(catalog, "from_disk", "det", "default")
        with Consumer("bt", "det", data_root=root, timeout_ms=2000) as consumer:
            consumer.acknowledge("from_disk", consumer.get_next("from_disk", stream="default"))
            consumer.get_next("from_disk", stream="default")  # held, not acknowledged
            assert consumer.get_unacknowledged_messages("from_disk") == [2, 3]
            assert consumer.get_last_acknowledged_message("from_disk") == 1
            # a ring group: its progress is in the ring
            consumer.acknowledge("ring", consumer.get_next("ring", stream="default"))
            with pytest.raises(AsapoWrongInputError, match="a ring group's progress is in "
                                                           "the ring"):
                consumer.get_last_acknowledged_message("ring")
            with pytest.raises(AsapoWrongInputError, match="a ring group's progress"):
                consumer.get_unacknowledged_messages("ring")
            consumer.close()


QUERIES: tuple[tuple[str, tuple, dict[str, Any]], ...] = (
    ("get_unacknowledged_messages", ("g",), {}),
    ("get_unacknowledged_messages", ("g",), {"from_id": 1, "to_id": 1}),
    ("get_unacknowledged_messages", ("g",), {"from_id": 2}),
    ("get_unacknowledged_messages", ("g",), {"to_id": 10**15}),
    ("get_unacknowledged_messages", ("g",), {"from_id": 3}),
    ("get_unacknowledged_messages", ("g",), {"from_id": 2, "to_id": 1}),
    ("get_unacknowledged_messages", ("g",), {"stream": "other"}),
    ("get_unacknowledged_messages", ("nobody",), {}),
    ("get_unacknowledged_messages", ("ring",), {}),
    ("get_last_acknowledged_message", ("g",), {}),
    ("get_last_acknowledged_message", ("fresh",), {}),
    ("get_last_acknowledged_message", ("ring",), {}),
)


def answers(consumer: Consumer | RemoteConsumer) -> list[tuple]:
    """Each query's result, or its error's class and message."""
    got = []
    for name, args, kwargs in QUERIES:
        try:
            got.append(("ok", getattr(consumer, name)(*args, **kwargs)))
        except AsapoError as exc:
            got.append((type(exc).__name__, str(exc)))
    return got


def test_local_and_remote_answers_are_the_same(shm_prefix, config, wait_for):
    root = str(config.data_root)
    with NodeService(config) as service:
        publish(config, wait_for)
        with Consumer("bt", "mod", data_root=root, timeout_ms=2000) as local:
            local.acknowledge_dataset("g", local.get_next_dataset("g", timeout_ms=300))
            with pytest.raises(AsapoPartialDataError):
                local.get_next_dataset("g", min_size=1, timeout_ms=300)
            local.get_next_dataset("fresh", timeout_ms=300)  # taken, never acknowledged
            local.acknowledge("ring", local.get_next("ring", stream="default"))
            token = issue_token(load_or_create_secret(config.secret_file), beamtime="bt",
                                access_types=("read",), expires_in=600)
            with RemoteConsumer(service.remote_endpoint, "bt", "mod", token) as remote:
                remote_answers = answers(remote)
            local_answers = answers(local)
            local.close()
    assert local_answers == remote_answers
    assert local_answers[:5] == [("ok", [2]), ("ok", []), ("ok", [2]), ("ok", [2]), ("ok", [])]
    assert local_answers[9:11] == [("ok", 1), ("ok", None)]
    assert [a[0] for a in local_answers[5:9]] == ["AsapoWrongInputError"] * 4
    assert local_answers[11][0] == "AsapoWrongInputError"
