"""Stream lists, finishing and deleting streams, sources, beamtime and stream metadata."""

from __future__ import annotations

import pytest

from asapo_hpc.catalog import MetaMode
from asapo_hpc.errors import (
    AsapoEndOfStreamError,
    AsapoNoDataError,
    AsapoWrongInputError,
)


@pytest.fixture
def three_streams(catalog, make_message):
    # Creation order follows the first message's timestamp, not the name.
    catalog.add_messages([make_message(1, stream="b", timestamp=10),
                          make_message(2, stream="b", timestamp=25)])
    catalog.add_messages([make_message(1, stream="a", timestamp=20)])
    catalog.add_messages([make_message(1, stream="c", timestamp=30)])
    catalog.finish_stream("src", "b", 2, "a")
    return catalog


def test_stream_list_entries_sorted_by_creation(three_streams):
    streams = three_streams.get_stream_list("src")
    assert [s.to_asapo_record() for s in streams] == [
        {"lastId": 2, "name": "b", "timestampCreated": 10, "timestampLast": 25,
         "finished": True, "nextStream": "a"},
        {"lastId": 1, "name": "a", "timestampCreated": 20, "timestampLast": 20,
         "finished": False, "nextStream": ""},
        {"lastId": 1, "name": "c", "timestampCreated": 30, "timestampLast": 30,
         "finished": False, "nextStream": ""},
    ]


@pytest.mark.parametrize(
    ("from_stream", "filter", "names"),
    [
        ("", "all", ["b", "a", "c"]),
        ("a", "all", ["a", "c"]),
        ("", "finished", ["b"]),
        ("", "unfinished", ["a", "c"]),
        ("a", "finished", []),
        ("nope", "all", []),
    ],
)
def test_stream_list_from_and_filter(three_streams, from_stream, filter, names):
    got = three_streams.get_stream_list("src", from_stream=from_stream, filter=filter)
    assert [s.name for s in got] == names


def test_stream_list_rejects_unknown_filter(three_streams):
    with pytest.raises(AsapoWrongInputError, match="'done' unknown; use one of all"):
        three_streams.get_stream_list("src", filter="done")


def test_sources_last_stream_and_stream_info(three_streams, make_message):
    three_streams.add_message(make_message(1, source="other", stream="x"))
    assert three_streams.get_source_list() == ["other", "src"]
    assert three_streams.get_last_stream("src").name == "c"
    assert three_streams.get_last_stream("nobody") is None
    assert three_streams.get_stream_info("src", "a").last_id == 1
    with pytest.raises(AsapoNoDataError, match="'zzz' of source 'src' does not exist"):
        three_streams.get_stream_info("src", "zzz")


def test_finish_an_empty_stream_uses_the_clock(catalog, clock):
    catalog.finish_stream("src", "empty", 0, "next")
    info = catalog.get_stream_info("src", "empty")
    assert (info.finished, info.last_id, info.next_stream) == (True, 0, "next")
    assert info.timestamp_created == clock.now


def test_finish_with_a_last_id_beyond_the_messages_raises_no_data_for_the_gap(
    catalog, make_message
):
    catalog.add_message(make_message(1))
    catalog.finish_stream("src", "s1", 3)
    assert catalog.get_stream_info("src", "s1").last_id == 3
    with pytest.raises(AsapoNoDataError) as err:
        catalog.get_by_id("src", "s1", 2)
    assert not isinstance(err.value, AsapoEndOfStreamError)


def test_finish_rules(catalog, make_message):
    catalog.add_messages([make_message(1), make_message(2)])
    with pytest.raises(AsapoWrongInputError, match="already holds messages up to id 2"):
        catalog.finish_stream("src", "s1", 1)
    catalog.finish_stream("src", "s1", 2, "s2")
    catalog.finish_stream("src", "s1", 2, "s2")  # the same finish again is harmless
    with pytest.raises(AsapoWrongInputError, match="already finished at id 2"):
        catalog.finish_stream("src", "s1", 2, "s3")
    with pytest.raises(AsapoWrongInputError, match="integer last id"):
        catalog.finish_stream("src", "s9", -1)


def test_delete_stream_removes_messages_progress_and_meta(catalog, make_message):
    catalog.add_messages([make_message(1), make_message(2)])
    catalog.add_message(make_message(1, stream="keep"))
    catalog.set_stream_meta("src", "s1", {"a": 1})
    catalog.group_next("g", "src", "s1")
    catalog.acknowledge("g", "src", "s1", 1)
    assert catalog.delete_stream("src", "s1") is True
    assert [s.name for s in catalog.get_stream_list("src")] == ["keep"]
    with pytest.raises(AsapoNoDataError):
        catalog.get_stream_meta("src", "s1")
    # Recreated under the same name, the stream starts from scratch for the group too.
    catalog.add_message(make_message(1, name="new"))
    assert catalog.get_by_id("src", "s1", 1).name == "new"
    assert catalog.group_next("g", "src", "s1").data_id == 1
    assert catalog.last_acknowledged("g", "src", "s1") == 0


def test_delete_missing_stream(catalog):
    with pytest.raises(AsapoWrongInputError, match="no such stream"):
        catalog.delete_stream("src", "ghost")
    assert catalog.delete_stream("src", "ghost", error_on_not_exist=False) is False


def test_delete_stream_can_keep_meta(catalog, make_message):
    catalog.add_message(make_message(1))
    catalog.set_stream_meta("src", "s1", {"a": 1})
    catalog.delete_stream("src", "s1", delete_meta=False)
    assert catalog.get_stream_meta("src", "s1") == {"a": 1}


def test_beamtime_meta_modes(catalog):
    with pytest.raises(AsapoNoDataError, match="beamtime metadata of source 'src'"):
        catalog.get_beamtime_meta("src")
    catalog.set_beamtime_meta("src", {"a": 1, "nested": {"x": 1}}, mode="insert")
    with pytest.raises(AsapoWrongInputError, match="already exists"):
        catalog.set_beamtime_meta("src", {"a": 2}, mode="insert")
    catalog.set_beamtime_meta("src", {"b": 2, "nested": {"y": 2}}, mode=MetaMode.UPDATE)
    # update merges top-level keys, as MongoDB's $set in ASAPO
    assert catalog.get_beamtime_meta("src") == {"a": 1, "b": 2, "nested": {"y": 2}}
    catalog.set_beamtime_meta("src", '{"c": 3}', mode="replace")
    assert catalog.get_beamtime_meta("src") == {"c": 3}
    with pytest.raises(AsapoNoDataError):
        catalog.get_beamtime_meta("other")  # kept per data source


def test_stream_meta_modes_and_wire_codes(catalog):
    catalog.set_stream_meta("src", "s1", {"a": 1}, mode=3)  # update of nothing creates
    assert catalog.get_stream_meta("src", "s1") == {"a": 1}
    with pytest.raises(AsapoWrongInputError, match="does not exist; cannot update"):
        catalog.set_stream_meta("src", "s2", {"a": 1}, mode="update", upsert=False)
    with pytest.raises(AsapoWrongInputError, match="use 'insert', 'replace' or 'update'"):
        catalog.set_stream_meta("src", "s1", {}, mode="append")
    with pytest.raises(AsapoWrongInputError, match="use 1, 2 or 3"):
        catalog.set_stream_meta("src", "s1", {}, mode=7)
    with pytest.raises(AsapoWrongInputError, match="JSON object"):
        catalog.set_stream_meta("src", "s1", "[1]")
    with pytest.raises(AsapoWrongInputError, match="not valid JSON"):
        catalog.set_stream_meta("src", "s1", "{oops")
    # Stream metadata does not create the stream.
    assert catalog.get_stream_list("src") == []
