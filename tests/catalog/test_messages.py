"""Message records: batched insert, duplicates, auto ids, datasets, reads and locations."""

from __future__ import annotations

import pytest

from asapo_hpc.catalog import FINISH_MARKER_NAME, Catalog, LocationUpdate, MessageRecord
from asapo_hpc.errors import (
    AsapoEndOfStreamError,
    AsapoNoDataError,
    AsapoPartialDataError,
    AsapoStreamFinishedError,
    AsapoWrongInputError,
)


def test_batch_insert_and_read_back_every_field(catalog, make_message):
    records = [make_message(i, ring_seq=i + 10) for i in range(1, 6)]
    result = catalog.add_messages(records)
    assert (result.inserted, result.duplicates, result.code, result.warning) == (5, [], 0, "")
    got = catalog.get_by_id("src", "s1", 3)
    assert (got.source, got.stream, got.data_id, got.name, got.size, got.timestamp) == (
        "src", "s1", 3, "processed/s1/f3.tif", 103, 1003)
    assert got.meta_dict() == {"i": 3}
    assert (got.ring_seq, got.file_path, got.ingest_mode) == (13, None, 13)


def test_asapo_message_record_shape(catalog, make_message):
    catalog.add_message(make_message(7, ring_seq=42, meta='{"a": {"b": [1, 2]}}'))
    record = catalog.get_by_id("src", "s1", 7).to_asapo_record("node1:8500")
    assert record == {
        "_id": 7, "size": 107, "name": "processed/s1/f7.tif", "timestamp": 1007,
        "source": "node1:8500", "buf_id": 42, "stream": "s1", "dataset_substream": 0,
        "ingest_mode": 13, "meta": {"a": {"b": [1, 2]}},
    }


def test_empty_and_missing_meta_store_an_empty_object(catalog, make_message):
    catalog.add_messages([make_message(1, meta=""), make_message(2, meta=None),
                          make_message(3, meta=b'{"x": 1}')])
    assert [catalog.get_by_id("src", "s1", i).meta_dict() for i in (1, 2, 3)] == [
        {}, {}, {"x": 1}]


def test_identical_duplicate_is_accepted_with_a_warning(catalog, make_message):
    catalog.add_messages([make_message(1), make_message(2)])
    # A resend carries a new timestamp; ASAPO compares name, size and meta only.
    result = catalog.add_messages([make_message(2, timestamp=99_999), make_message(3)])
    assert result.inserted == 1
    assert result.duplicates == [("s1", 2, 0)]
    assert result.code == 2
    assert "s1/2" in result.warning
    assert catalog.get_current_size("src", "s1") == 3
    assert catalog.get_by_id("src", "s1", 2).timestamp == 1002


def test_duplicate_inside_one_batch(catalog, make_message):
    result = catalog.add_messages([make_message(1), make_message(1)])
    assert (result.inserted, result.duplicates) == (1, [("s1", 1, 0)])


def test_conflicting_duplicate_names_id_and_stream_and_rolls_back(catalog, make_message):
    catalog.add_message(make_message(4))
    with pytest.raises(AsapoWrongInputError) as err:
        catalog.add_messages([make_message(5), make_message(4, name="other.tif")])
    text = str(err.value)
    assert "duplicate id 4" in text and "'s1'" in text and "'other.tif'" in text
    # All or nothing: message 5 of the failed batch was not kept.
    assert catalog.get_current_size("src", "s1") == 1


def test_conflicting_meta_is_a_conflict(catalog, make_message):
    catalog.add_message(make_message(1))
    with pytest.raises(AsapoWrongInputError, match="meta"):
        catalog.add_message(make_message(1, meta={"i": 2}))


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"data_id": -1}, "id must be >= 1"),
        ({"size": -5}, "size must be >= 0"),
        ({"size": "big"}, "size must be an integer"),
        ({"timestamp": 1.5}, "timestamp must be an integer"),
        ({"meta": "{not json"}, "meta is not valid JSON"),
        ({"meta": "[1, 2]"}, "meta must be a JSON object"),
        ({"dataset_substream": 2, "dataset_size": 0}, "disagree"),
        ({"dataset_substream": 3, "dataset_size": 2}, "disagree"),
        ({"data_id": 2**64}, "does not fit in 64 bits"),
    ],
)
def test_invalid_records_are_refused_with_the_reason(catalog, make_message, fields, problem):
    record = make_message(1)
    for name, value in fields.items():
        setattr(record, name, value)
    with pytest.raises(AsapoWrongInputError, match=problem):
        catalog.add_messages([make_message(9), record])
    assert catalog.get_stream_list("src") == []


def test_empty_stream_or_source_name_is_refused(catalog, make_message):
    with pytest.raises(AsapoWrongInputError, match="stream name"):
        catalog.add_message(make_message(1, stream=""))


def test_auto_ids_continue_after_the_last_id(catalog, make_message):
    catalog.add_messages([make_message(1), make_message(2)])
    result = catalog.add_messages([make_message(0, name="a"), make_message(0, name="b")])
    assert result.assigned_ids == [3, 4]
    assert catalog.get_by_id("src", "s1", 4).name == "b"
    assert catalog.add_message(make_message(0, name="c")).assigned_ids == [5]


def test_auto_id_for_a_dataset_part_is_refused(catalog, make_part):
    with pytest.raises(AsapoWrongInputError, match="auto ids are for plain messages"):
        catalog.add_message(make_part(0, 1, 2))


def test_get_by_id_errors_follow_asapo_409_rules(catalog, make_message):
    catalog.add_messages([make_message(1), make_message(3)])
    with pytest.raises(AsapoNoDataError) as missing:
        catalog.get_by_id("src", "s1", 2)
    assert not isinstance(missing.value, AsapoEndOfStreamError)
    assert missing.value.reply == {"op": "get_record_by_id", "id": 2, "id_max": 3,
                                   "next_stream": ""}
    with pytest.raises(AsapoEndOfStreamError) as end:
        catalog.get_by_id("src", "s1", 4)
    assert not isinstance(end.value, AsapoStreamFinishedError)
    assert end.value.reply["id"] >= end.value.reply["id_max"]
    with pytest.raises(AsapoEndOfStreamError):
        catalog.get_by_id("src", "no_such_stream", 1)
    with pytest.raises(AsapoWrongInputError, match=">= 1"):
        catalog.get_by_id("src", "s1", 0)


def test_get_by_id_past_a_finished_stream_names_the_next_stream(catalog, make_message):
    catalog.add_message(make_message(1))
    catalog.finish_stream("src", "s1", 1, "s2")
    with pytest.raises(AsapoStreamFinishedError) as err:
        catalog.get_by_id("src", "s1", 2)
    assert err.value.next_stream == "s2"
    assert err.value.reply == {"op": "get_record_by_id", "id": 1, "id_max": 1,
                               "next_stream": "s2"}


def test_get_last_and_current_size(catalog, make_message):
    with pytest.raises(AsapoEndOfStreamError):
        catalog.get_last("src", "s1")
    assert catalog.get_current_size("src", "s1") == 0
    catalog.add_messages([make_message(i) for i in (2, 1, 5)])
    assert catalog.get_last("src", "s1").data_id == 5
    assert catalog.get_current_size("src", "s1") == 3


def test_finish_marker_record_finishes_the_stream_and_is_not_counted(catalog, make_message):
    marker = MessageRecord("src", "s1", 3, FINISH_MARKER_NAME, 0, 5_000,
                           '{"next_stream": "s2"}', ingest_mode=2)
    result = catalog.add_messages([make_message(1), make_message(2), marker])
    assert result.finished_streams == ["s1"]
    assert result.inserted == 2
    assert catalog.get_current_size("src", "s1") == 2
    info = catalog.get_stream_info("src", "s1")
    assert (info.finished, info.next_stream, info.last_id) == (True, "s2", 2)


def test_finish_marker_without_next_stream(catalog, make_message):
    marker = MessageRecord("src", "s1", 2, FINISH_MARKER_NAME, 0, 5_000,
                           '{"next_stream": "asapo_no_next"}', ingest_mode=2)
    catalog.add_messages([make_message(1), marker])
    with pytest.raises(AsapoStreamFinishedError) as err:
        catalog.get_by_id("src", "s1", 2)
    assert err.value.next_stream is None
    assert err.value.reply["next_stream"] == "asapo_no_next"


def test_messages_after_finish_are_refused_but_late_ones_below_it_accepted(
    catalog, make_message
):
    catalog.add_message(make_message(1))
    catalog.finish_stream("src", "s1", 3)
    catalog.add_messages([make_message(3), make_message(2)])
    with pytest.raises(AsapoWrongInputError, match="after stream 's1' of source 'src' was fin"):
        catalog.add_message(make_message(4))
    with pytest.raises(AsapoWrongInputError, match="finished at id 3"):
        catalog.add_message(make_message(0))
    assert catalog.get_current_size("src", "s1") == 3


def test_datasets_complete_partial_and_missing(catalog, make_part):
    catalog.add_messages([make_part(1, 1, 3), make_part(1, 3, 3), make_part(1, 2, 3),
                          make_part(2, 1, 3), make_part(2, 2, 3), make_part(3, 1, 3)])
    complete = catalog.get_dataset_by_id("src", "ds", 1)
    assert [p.dataset_substream for p in complete.parts] == [1, 2, 3]
    assert (complete.dataset_size, complete.complete, complete.timestamp) == (3, True, 2001)
    with pytest.raises(AsapoPartialDataError) as partial:
        catalog.get_dataset_by_id("src", "ds", 2, min_size=2)
    assert [p.dataset_substream for p in partial.value.partial_data.parts] == [1, 2]
    with pytest.raises(AsapoNoDataError, match="2 of 3 parts; ask with min_size"):
        catalog.get_dataset_by_id("src", "ds", 2)
    with pytest.raises(AsapoNoDataError, match="1 of 3 parts"):
        catalog.get_dataset_by_id("src", "ds", 3, min_size=2)
    assert catalog.get_current_size("src", "ds") == 3
    assert catalog.get_current_size("src", "ds", dataset=True) == 1
    assert catalog.get_current_size("src", "ds", dataset=True, incomplete=True) == 3
    assert catalog.get_last_dataset("src", "ds").data_id == 1
    with pytest.raises(AsapoPartialDataError) as last_partial:
        catalog.get_last_dataset("src", "ds", min_size=1)
    assert last_partial.value.partial_data.data_id == 3


def test_dataset_record_shape(catalog, make_part):
    catalog.add_messages([make_part(1, 1, 2), make_part(1, 2, 2)])
    record = catalog.get_dataset_by_id("src", "ds", 1).to_asapo_record("h:1")
    assert record["_id"] == 1 and record["dataset_size"] == 2 and record["timestamp"] == 2001
    assert [m["dataset_substream"] for m in record["messages"]] == [1, 2]
    assert record["messages"][1]["meta"] == {"module": 2}


def test_a_dataset_read_as_plain_message_is_refused(catalog, make_part):
    catalog.add_messages([make_part(1, 1, 2)])
    with pytest.raises(AsapoWrongInputError, match="read it as a dataset"):
        catalog.get_by_id("src", "ds", 1)


def test_a_plain_message_read_as_dataset_is_a_dataset_of_one(catalog, make_message):
    catalog.add_message(make_message(1))
    record = catalog.get_dataset_by_id("src", "s1", 1)
    assert (record.dataset_size, [p.data_id for p in record.parts]) == (1, [1])


def test_update_locations_when_the_sink_stores_data(catalog, make_message, make_part):
    catalog.add_messages([make_message(1, ring_seq=7), make_message(2, ring_seq=8),
                          make_part(1, 2, 2, ring_seq=9)])
    changed = catalog.update_locations([
        LocationUpdate("src", "s1", 1, file_path="/d/run.h5", dataset_path="/entry/data",
                       frame_index=0, evicted_from_ring=True),
        LocationUpdate("src", "ds", 1, dataset_substream=2, file_path="/d/m2.h5"),
        LocationUpdate("src", "s1", 99, file_path="/nowhere.h5"),
    ])
    assert changed == 2
    first = catalog.get_by_id("src", "s1", 1)
    assert (first.file_path, first.dataset_path, first.frame_index, first.ring_seq) == (
        "/d/run.h5", "/entry/data", 0, None)
    assert first.to_asapo_record()["buf_id"] == 0
    assert catalog.get_by_id("src", "s1", 2).ring_seq == 8
    with pytest.raises(AsapoPartialDataError) as err:
        catalog.get_dataset_by_id("src", "ds", 1, min_size=1)
    stored = err.value.partial_data.parts[0]
    assert (stored.file_path, stored.ring_seq) == ("/d/m2.h5", 9)


def test_records_persist_across_reopen(catalog_path, clock, make_message):
    with Catalog(catalog_path, clock=clock) as first:
        first.add_messages([make_message(i) for i in range(1, 4)])
    with Catalog(catalog_path, clock=clock) as second:
        assert second.get_by_id("src", "s1", 2).name == "processed/s1/f2.tif"
        assert second.get_current_size("src", "s1") == 3


def test_to_asapo_record_helper_and_long_duplicate_warning(catalog, make_message):
    from asapo_hpc.catalog import to_asapo_record

    records = [make_message(i) for i in range(1, 8)]
    catalog.add_messages(records)
    result = catalog.add_messages(records)
    assert result.warning.endswith("and 2 more)")
    assert to_asapo_record(catalog.get_by_id("src", "s1", 1))["_id"] == 1
    assert to_asapo_record(catalog.get_stream_info("src", "s1"))["lastId"] == 7
