"""Stream, query and metadata calls of Consumer and Producer, answered from a catalog filled
directly (no node service needed for these)."""

from __future__ import annotations

import pytest

from asapo_hpc.catalog import Catalog, MessageRecord
from asapo_hpc.client import Consumer, Producer
from asapo_hpc.errors import (
    AsapoNoDataError,
    AsapoUnavailableServiceError,
    AsapoWrongInputError,
)


def rec(data_id: int, stream: str, source: str = "src", **kw) -> MessageRecord:
    values = dict(name=f"{stream}/f{data_id}", size=10 * data_id, timestamp=1000 + data_id,
                  meta={"i": data_id, "even": data_id % 2 == 0})
    values.update(kw)
    return MessageRecord(source, stream, data_id, **values)


@pytest.fixture
def root(tmp_path):
    with Catalog(tmp_path / "catalog.sqlite") as catalog:
        catalog.add_messages([rec(i, "s1") for i in (1, 2, 3)])
        catalog.add_messages([rec(1, "s2"), rec(2, "s2")])
        catalog.finish_stream("src", "s1", 3, "s2")
        catalog.add_messages([rec(1, "ds", dataset_substream=1, dataset_size=2),
                              rec(1, "ds", dataset_substream=2, dataset_size=2),
                              rec(2, "ds", dataset_substream=1, dataset_size=2)])
        catalog.add_messages([rec(1, "x", source="other")])
    return tmp_path


@pytest.fixture
def consumer(shm_prefix, root):
    with Consumer("bt", "src", data_root=str(root)) as c:
        yield c
        c._close_streams()


@pytest.fixture
def producer(shm_prefix, root):
    with Producer("bt", "src") as p:
        p.data_root = str(root)
        yield p
        p._close_streams()


def test_stream_list_filters_and_last_stream(consumer):
    streams = consumer.get_stream_list()
    assert [s["name"] for s in streams] == ["s1", "s2", "ds"]
    s1 = streams[0]
    assert s1 == {"name": "s1", "lastId": 3, "timestampCreated": s1["timestampCreated"],
                  "timestampLast": 1003, "finished": True, "nextStream": "s2"}
    assert set(streams[1]) == set(s1)
    assert (streams[1]["lastId"], streams[1]["finished"], streams[1]["nextStream"]) == \
        (2, False, "")
    assert [s["name"] for s in consumer.get_stream_list(filter="finished")] == ["s1"]
    assert [s["name"] for s in consumer.get_stream_list(filter="unfinished")] == ["s2", "ds"]
    assert [s["name"] for s in consumer.get_stream_list(from_stream="s2")] == ["s2", "ds"]
    assert consumer.get_stream_list(from_stream="nope") == []
    assert consumer.get_last_stream()["name"] == "ds"
    assert consumer.get_stream_info("s2") == streams[1]
    with pytest.raises(AsapoWrongInputError, match="filter 'done' unknown"):
        consumer.get_stream_list(filter="done")


def test_sizes_sources_and_queries(consumer):
    assert consumer.get_current_size("s1") == 3
    assert consumer.get_current_size("ds") == 2
    assert consumer.get_current_size("ds", include_incomplete=False) == 1
    assert consumer.get_current_size("missing") == 0
    assert consumer.get_source_list() == ["other", "src"]
    found = consumer.query_messages("meta.even = true OR _id = 3", stream="s1")
    assert [r["_id"] for r in found] == [2, 3]
    assert found[0] == {"_id": 2, "size": 20, "name": "s1/f2", "timestamp": 1002, "source": "",
                        "buf_id": 0, "stream": "s1", "dataset_substream": 0,
                        "ingest_mode": 13, "meta": {"i": 2, "even": True}}
    assert consumer.query_messages("_id > 0", stream="missing") == []
    with pytest.raises(AsapoWrongInputError):
        consumer.query_messages("_id >", stream="s1")


def test_delete_stream(consumer, producer):
    producer.send_stream_meta({"a": 1}, stream="s2")
    assert consumer.delete_stream("s2") is True
    assert [s["name"] for s in consumer.get_stream_list()] == ["s1", "ds"]
    with pytest.raises(AsapoNoDataError):
        producer.get_stream_meta("s2")
    with pytest.raises(AsapoWrongInputError, match="no such stream"):
        consumer.delete_stream("s2")
    assert consumer.delete_stream("s2", error_on_not_exist=False) is False
    assert producer.delete_stream("s1") is True
    assert producer.get_last_stream()["name"] == "ds"


def test_metadata_modes(consumer, producer):
    with pytest.raises(AsapoNoDataError):
        consumer.get_beamtime_meta()
    producer.send_beamtime_meta({"a": 1, "b": 2}, mode="insert")
    with pytest.raises(AsapoWrongInputError, match="already exists"):
        producer.send_beamtime_meta({"a": 9}, mode="insert")
    producer.send_beamtime_meta({"b": 3, "c": 4}, mode="update")
    assert consumer.get_beamtime_meta() == {"a": 1, "b": 3, "c": 4}
    producer.send_beamtime_meta('{"z": 0}', mode="replace")
    assert producer.get_beamtime_meta() == {"z": 0}
    with pytest.raises(AsapoWrongInputError, match="cannot update it without upsert"):
        producer.send_stream_meta({"x": 1}, mode="update", upsert=False, stream="s1")
    calls = []
    producer.send_stream_meta({"x": 1}, mode="update", stream="s1",
                              callback=lambda header, err: calls.append((header, err)))
    assert calls == [({"stream": "s1", "mode": "update", "op": "stream_meta"}, None)]
    assert consumer.get_stream_meta("s1") == {"x": 1}
    with pytest.raises(AsapoWrongInputError, match="metadata mode 'merge' unknown"):
        producer.send_stream_meta({"x": 1}, mode="merge", stream="s1")
    with pytest.raises(AsapoWrongInputError, match="JSON object"):
        producer.send_stream_meta("[1, 2]", stream="s1")
    assert producer.get_stream_info("s1")["lastId"] == 3


def test_missing_catalog_names_path_and_service(shm_prefix, tmp_path):
    with Producer("bt", "src") as producer:
        producer.data_root = str(tmp_path / "nowhere")
        with pytest.raises(AsapoUnavailableServiceError, match="asapo-hpc serve") as err:
            producer.send_beamtime_meta({"a": 1})
        assert str(tmp_path / "nowhere" / "catalog.sqlite") in str(err.value)
        with pytest.raises(AsapoWrongInputError):  # bad input is told before the catalog
            producer.send_beamtime_meta({"a": 1}, mode="upsert")
    assert not (tmp_path / "nowhere").exists()


def test_data_root_from_environment(shm_prefix, root, monkeypatch):
    monkeypatch.setenv("ASAPO_HPC_DATA_ROOT", str(root))
    with Consumer("bt", "src") as consumer:
        assert consumer.get_current_size("s2") == 2
        consumer._close_streams()
