"""Bad input and damaged segments: each case raises the exact exception type with a message
that says what happened (and, where it helps, what to do)."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from asapo_hpc._core import Segment
from asapo_hpc.client import Consumer, Producer, create_consumer, create_producer
from asapo_hpc.config import RingConfig, segment_name
from asapo_hpc.errors import (
    AsapoConfigMismatchError,
    AsapoCorruptSegmentError,
    AsapoError,
    AsapoLeaseExpiredError,
    AsapoUnavailableServiceError,
    AsapoWrongInputError,
)

CFG = RingConfig(slot_count=16, slot_size=512, groups=("g",), full_timeout_s=0.2)


@pytest.fixture
def pc(shm_prefix):
    producer = Producer("bt", "src", config=CFG)
    consumer = Consumer("bt", "src")
    yield producer, consumer
    producer.close()
    consumer.close()


def made_segment(seg_path) -> str:
    """Create bt/src with CFG, publish one message, detach; the /dev/shm path."""
    with Producer("bt", "src", config=CFG) as producer:
        producer.send(1, b"payload", {"k": 1})
    return str(seg_path())


def patch_file(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def exact(excinfo, cls) -> None:
    assert type(excinfo.value) is cls, f"{type(excinfo.value).__name__}: {excinfo.value}"


# -- messages -------------------------------------------------------------------------------

def test_message_larger_than_the_ring(pc):
    producer, _ = pc
    with pytest.raises(AsapoWrongInputError, match=r"16 slots of 512 bytes.*EMSGSIZE") as e:
        producer.send(1, bytes(16 * 512 + 1))
    exact(e, AsapoWrongInputError)
    with pytest.raises(AsapoWrongInputError, match=r"reserve of 100000 bytes \+ meta_capacity "
                                                   r"4096: the ring holds 16 slots of 512") as e:
        producer.reserve(100_000)
    exact(e, AsapoWrongInputError)
    with pytest.raises(AsapoWrongInputError, match=r"reserve of 8000 bytes \+ meta_capacity 4096"):
        producer.reserve(8000)  # fits the ring only without the default metadata room
    producer.reserve(8000, meta_capacity=64).abort()


@pytest.mark.parametrize("bad_id", [0, -1, 1.0, "1", None, True])
def test_bad_message_ids(pc, bad_id):
    producer, _ = pc
    with pytest.raises(AsapoWrongInputError, match="message id must be an integer >= 1") as e:
        producer.send(bad_id, b"x")
    exact(e, AsapoWrongInputError)
    with pytest.raises(AsapoWrongInputError, match="message id must be an integer >= 1"):
        producer.send_batch(bad_id, np.zeros((2, 4), np.uint8))
    with producer.reserve(4) as res, pytest.raises(AsapoWrongInputError,
                                                    match="message id must be an integer"):
        res.commit(bad_id)


def test_numpy_integer_ids_are_accepted(pc):
    producer, consumer = pc
    assert producer.send(np.int64(3), b"x") == 3
    msg = consumer.get_next("g", timeout_ms=200)
    assert msg.id == 3
    consumer.acknowledge("g", msg)


def test_non_contiguous_numpy_data(pc):
    producer, _ = pc
    strided = np.zeros((4, 8), np.uint16)[:, ::2]
    with pytest.raises(AsapoWrongInputError, match=r"not C-contiguous.*ascontiguousarray") as e:
        producer.send(1, strided)
    exact(e, AsapoWrongInputError)
    with pytest.raises(AsapoWrongInputError, match="not C-contiguous"):
        producer.send_batch(1, strided)
    with pytest.raises(AsapoWrongInputError, match="not C-contiguous"):
        producer.send(1, np.zeros((4, 4)).T)


@pytest.mark.parametrize("data", [[1, 2, 3], "text", 42, object()])
def test_data_without_a_buffer(pc, data):
    producer, _ = pc
    with pytest.raises(AsapoWrongInputError, match="does not expose a contiguous buffer") as e:
        producer.send(1, data)
    exact(e, AsapoWrongInputError)


def test_send_batch_needs_a_numpy_array(pc):
    producer, _ = pc
    with pytest.raises(AsapoWrongInputError, match=r"numpy array of shape \(n, ...\)"):
        producer.send_batch(1, b"rows")
    with pytest.raises(AsapoWrongInputError, match=r"numpy array of shape \(n, ...\)"):
        producer.send_batch(1, np.float64(1.0))


def test_read_only_buffers_are_fine_for_send(pc):
    """send only reads its data: read-only buffers go in unchanged."""
    producer, consumer = pc
    ro = np.arange(16, dtype=np.int32)
    ro.flags.writeable = False
    producer.send(1, ro)
    producer.send(2, memoryview(b"readonly view"))
    got = [consumer.get_next("g", timeout_ms=200) for _ in range(2)]
    assert got[0].data.tobytes() == ro.tobytes()
    assert got[1].data.tobytes() == b"readonly view"
    consumer.acknowledge_batch("g", got)


def test_reservations_are_writable_and_consumer_views_are_not(pc):
    producer, consumer = pc
    with producer.reserve(16) as res:
        assert res.data.flags.writeable and res.array(np.uint32, (4,)).flags.writeable
        res.array(np.uint32, (4,))[:] = [1, 2, 3, 4]
        res.commit(1)
    msg = consumer.get_next("g", timeout_ms=200)
    for view in (msg.data, msg.array(np.uint32), msg.array(np.uint32, (2, 2))):
        assert not view.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            view[0] = 0
        # nor can a consumer switch the flag back on and scribble over shared memory
        with pytest.raises(ValueError, match="WRITEABLE"):
            view.flags.writeable = True
    assert msg.array(np.uint32).tolist() == [1, 2, 3, 4]
    consumer.acknowledge("g", msg)


def test_reservation_misuse(pc):
    producer, _ = pc
    res = producer.reserve(16)
    with pytest.raises(AsapoWrongInputError, match="does not fit the 16 reserved"):
        res.array(np.float64, (3,))
    with pytest.raises(AsapoWrongInputError, match=r"nbytes=17 outside 0..16"):
        res.commit(1, nbytes=17)
    with pytest.raises(AsapoWrongInputError, match="must fit the reservation's meta_capacity"):
        producer.reserve(448, meta_capacity=4).commit(2, {"too long": "x" * 100})
    res.commit(1)
    with pytest.raises(AsapoWrongInputError, match="already committed or aborted"):
        res.commit(1)
    with pytest.raises(AsapoWrongInputError, match="must not be negative"):
        producer.reserve(-1)


@pytest.mark.parametrize("dataset", [(0, 3), (4, 3), (1, 0), ("a", 2), 5])
def test_bad_dataset(pc, dataset):
    producer, _ = pc
    with pytest.raises(AsapoWrongInputError, match="dataset") as e:
        producer.send(1, b"x", dataset=dataset)
    exact(e, AsapoWrongInputError)


# -- names ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "a" * 81, "a/b", "a b", ".hidden", "-x", "ü", None])
def test_bad_beamtime_and_source_names(shm_prefix, name):
    for args in ((name, "src"), ("bt", name)):
        with pytest.raises(AsapoWrongInputError, match=r"bad (beamtime id|data source)") as e:
            Producer(*args)
        exact(e, AsapoWrongInputError)
        with pytest.raises(AsapoWrongInputError, match="letters, digits"):
            Consumer(*args)


@pytest.mark.parametrize("name", ["", "g" * 41, "a/b", "a b", ".g", "g@1", 7])
def test_bad_group_names(pc, name):
    _, consumer = pc
    with pytest.raises(AsapoWrongInputError, match=r"bad group id .*1\.\.40 letters") as e:
        consumer.get_next(name, timeout_ms=10)
    exact(e, AsapoWrongInputError)
    if isinstance(name, str):
        with pytest.raises(AsapoWrongInputError, match="bad group name"):
            RingConfig(groups=(name,))


@pytest.mark.parametrize("name", ["", "s" * 96, "nul\x00byte", 5])
def test_bad_stream_names(pc, name):
    producer, consumer = pc
    with pytest.raises(AsapoWrongInputError, match="stream") as e:
        producer.send(1, b"x", stream=name)
    exact(e, AsapoWrongInputError)
    with pytest.raises(AsapoWrongInputError, match="stream"):
        consumer.get_next("g", stream=name, timeout_ms=10)


def test_longest_stream_name_is_fine(pc):
    producer, consumer = pc
    producer.send(1, b"x", stream="s" * 95)
    msg = consumer.get_next("g", timeout_ms=200)
    assert msg.stream == "s" * 95
    consumer.acknowledge("g", msg)


@pytest.mark.parametrize("prefix, errtext", [("bad/prefix", "EINVAL"),
                                             ("p" * 200, "ENAMETOOLONG")])
def test_bad_segment_names(monkeypatch, prefix, errtext):
    monkeypatch.setenv("ASAPO_HPC_SHM_PREFIX", prefix)
    with pytest.raises(AsapoWrongInputError, match=f"cannot create shared-memory segment.*"
                                                   f"{errtext}") as e:
        Producer("bt", "src")
    exact(e, AsapoWrongInputError)
    with pytest.raises(AsapoWrongInputError, match=errtext):
        Segment.attach(segment_name("bt", "src"))


# -- metadata -------------------------------------------------------------------------------

@pytest.mark.parametrize("meta", [{"a": object()}, {"a": np.float32(1.0)}, {"s": {1, 2}},
                                  {"b": b"bytes"}])
def test_metadata_not_json_serialisable(pc, meta):
    producer, _ = pc
    with pytest.raises(AsapoWrongInputError, match="metadata is not JSON-serialisable") as e:
        producer.send(1, b"x", meta)
    exact(e, AsapoWrongInputError)
    with producer.reserve(4) as res, pytest.raises(AsapoWrongInputError,
                                                    match="not JSON-serialisable"):
        res.commit(1, meta)


@pytest.mark.parametrize("meta", ["{not json", "{'single': 1}", "", b"\xff\xfe"])
def test_metadata_invalid_json_strings(pc, meta):
    producer, _ = pc
    with pytest.raises(AsapoWrongInputError, match="metadata string is not valid JSON") as e:
        producer.send(1, b"x", meta)
    exact(e, AsapoWrongInputError)


# -- segments: missing, foreign, damaged, mismatched ------------------------------------------

def test_attach_to_a_missing_segment(shm_prefix):
    for cls in (Consumer, Producer):
        with pytest.raises(AsapoUnavailableServiceError,
                           match=r"no ring for beamtime 'bt', data source 'nope'.*ENOENT") as e:
            cls("bt", "nope", create=False)
        exact(e, AsapoUnavailableServiceError)


@pytest.mark.parametrize("content", [b"this is someone else's file\n" * 4096, b"x" * 64, b""])
def test_foreign_file_under_the_segment_name(seg_path, content):
    path = seg_path()
    path.write_bytes(content)
    for open_ in (lambda: Producer("bt", "src"), lambda: Consumer("bt", "src", create=False),
                  lambda: Segment.attach(path.name)):
        with pytest.raises(AsapoCorruptSegmentError, match=f"{path.name}.*EBADMSG") as e:
            open_()
        exact(e, AsapoCorruptSegmentError)
    assert path.read_bytes() == content  # never overwritten


def test_truncated_segment(seg_path):
    path = made_segment(seg_path)
    size = os.path.getsize(path)
    for new_size in (size - 4096, size // 2, 100):
        os.truncate(path, new_size)
        with pytest.raises(AsapoCorruptSegmentError, match="EBADMSG") as e:
            Consumer("bt", "src", create=False)
        exact(e, AsapoCorruptSegmentError)


@pytest.mark.parametrize("offset", [0, 7, 16, 24, 30, 40, 52, 60])
def test_corrupted_header_byte(seg_path, offset):
    path = made_segment(seg_path)
    with open(path, "rb") as f:
        f.seek(offset)
        old = f.read(1)
    patch_file(path, offset, bytes([old[0] ^ 0x5A]))
    with pytest.raises(AsapoCorruptSegmentError, match=r"EBADMSG|EPROTO") as e:
        Consumer("bt", "src", create=False)
    exact(e, AsapoCorruptSegmentError)
    patch_file(path, offset, old)  # restored: the segment is whole again
    with Consumer("bt", "src", create=False) as consumer:
        assert consumer.get_next("g", timeout_ms=200).data.tobytes() == b"payload"


@pytest.mark.parametrize("version", [0, 2, 0xFFFFFFFF])
def test_layout_version_mismatch(seg_path, version):
    path = made_segment(seg_path)
    with open(path, "rb") as f:
        magic, current = struct.unpack("<QI", f.read(12))
    assert (magic, current) == (0x31474E4952504841, 1)
    patch_file(path, 8, struct.pack("<I", version))
    with pytest.raises(AsapoCorruptSegmentError,
                       match=f"layout version {version}.*reads version 1.*EPROTO") as e:
        Producer("bt", "src")
    exact(e, AsapoCorruptSegmentError)


@pytest.mark.parametrize("field, value", [("slot_count", 32), ("slot_size", 1024),
                                          ("max_groups", 4), ("max_members", 8),
                                          ("max_streams", 32), ("max_attempts", 9),
                                          ("lease_s", 1.5)])
def test_config_contradicting_the_segment(pc, field, value):
    other = RingConfig(**{**{f: getattr(CFG, f) for f in CFG.segment_items()},
                          "groups": CFG.groups, field: value})
    for cls in (Producer, Consumer):
        with pytest.raises(AsapoConfigMismatchError,
                           match=f"{field}: segment has {getattr(CFG, field)!r}, asked for "
                                 f"{value!r}.*config=None") as e:
            cls("bt", "src", config=other)
        exact(e, AsapoConfigMismatchError)
        assert str(e.value).count(": segment has") == 1  # only the field that differs


def test_config_that_only_adds_groups_is_accepted(pc):
    producer, consumer = pc
    more = RingConfig(slot_count=16, slot_size=512, groups=("g", "sink"))
    with Consumer("bt", "src", config=more) as late:
        producer.send(1, b"x")
        assert late.get_next("sink", timeout_ms=200).id == 1
        assert consumer.get_next("g", timeout_ms=200).id == 1


@pytest.mark.parametrize("endpoint", ["localhost:8400", "udp://host:5555", "SHM"])
def test_unknown_endpoint(shm_prefix, endpoint):
    for make in (lambda: create_producer(endpoint, "processed", "bt", "auto", "src", "", 1),
                 lambda: create_consumer(endpoint, "", False, "bt", "src", "", 100)):
        with pytest.raises(AsapoUnavailableServiceError, match=f"endpoint {endpoint!r} is not "
                                                               "served.*use ''") as e:
            make()
        exact(e, AsapoUnavailableServiceError)


# -- RingConfig ranges ----------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("slot_count", 0), ("slot_count", 1), ("slot_count", 3), ("slot_count", 1 << 25),
    ("slot_size", 0), ("slot_size", 100), ("slot_size", 1 << 32),
    ("max_groups", 0), ("max_groups", 65), ("max_members", 0), ("max_members", 4096),
    ("max_streams", 0), ("max_streams", 4097), ("max_attempts", 0), ("max_attempts", 256),
    ("lease_s", 0.0), ("lease_s", -1.0), ("lease_s", float("nan")),
    ("full_timeout_s", -0.5),
    ("slot_count", 8.0), ("slot_count", "1024"), ("max_groups", True), ("lease_s", "30"),
    ("mode", -1), ("mode", 0o10000), ("mode", "0600"),
])
def test_ring_config_out_of_range(field, value):
    with pytest.raises(AsapoWrongInputError, match=rf"RingConfig\.{field}=.* must be") as e:
        RingConfig(**{field: value})
    exact(e, AsapoWrongInputError)
    with pytest.raises(AsapoWrongInputError, match=rf"RingConfig\.{field}="):
        RingConfig.from_dict({field: value})


def test_ring_config_group_list_errors():
    with pytest.raises(AsapoWrongInputError, match=r"RingConfig\.groups=.*at most max_groups"):
        RingConfig(max_groups=1, groups=("a", "b"))
    with pytest.raises(AsapoWrongInputError, match="RingConfig.groups has duplicates"):
        RingConfig(groups=("a", "a"))
    with pytest.raises(AsapoWrongInputError, match=r"RingConfig\.groups=.*a list of names"):
        RingConfig(groups="sink")
    with pytest.raises(AsapoWrongInputError, match=r"unknown ring settings \['slots'\]"):
        RingConfig.from_dict({"slots": 8})


# -- acknowledgements -----------------------------------------------------------------------

def test_ack_of_a_message_not_held(pc):
    producer, consumer = pc
    producer.send(1, b"x")
    with pytest.raises(AsapoWrongInputError,
                       match=r"message id 1 of stream 'default' is not held") as e:
        consumer.acknowledge("g", 1)  # never delivered
    exact(e, AsapoWrongInputError)
    msg = consumer.get_next("g", timeout_ms=200)
    with pytest.raises(AsapoWrongInputError, match="message id 2 .* is not held"):
        consumer.acknowledge("g", 2)
    with pytest.raises(AsapoWrongInputError, match="in group 'other'"):
        consumer.acknowledge("other", 1)
    with pytest.raises(AsapoWrongInputError, match="is not held"):
        consumer.neg_acknowledge("g", 5)
    consumer.acknowledge("g", msg)


def test_ack_of_a_latest_value_copy(pc):
    producer, consumer = pc
    producer.send(1, b"x")
    for copy in (consumer.get_last(), consumer.get_by_id(1)):
        with pytest.raises(AsapoWrongInputError, match="get_last / get_by_id .* not claimed") \
                as e:
            consumer.acknowledge("g", copy)
        exact(e, AsapoWrongInputError)
        with pytest.raises(AsapoWrongInputError, match="not claimed"):
            consumer.neg_acknowledge("g", copy)
    assert consumer.group_stats("g")["acked"] == 0


def test_ack_of_another_consumers_message(pc):
    producer, consumer = pc
    with Consumer("bt", "src") as other:
        producer.send(1, b"x")
        msg = consumer.get_next("g", timeout_ms=200)
        with pytest.raises(AsapoWrongInputError, match="delivered to another Consumer") as e:
            other.acknowledge("g", msg)
        exact(e, AsapoWrongInputError)
        consumer.acknowledge("g", msg)


def test_double_ack(pc):
    producer, consumer = pc
    producer.send(1, b"x")
    producer.send(2, b"y")
    msg = consumer.get_next("g", timeout_ms=200)
    consumer.acknowledge("g", msg)
    with pytest.raises(AsapoLeaseExpiredError, match=r"no longer held.*already acknowledged") \
            as e:
        consumer.acknowledge("g", msg)
    exact(e, AsapoLeaseExpiredError)
    with pytest.raises(AsapoWrongInputError, match="message id 1 .* is not held"):
        consumer.acknowledge("g", 1)
    second = consumer.get_next("g", timeout_ms=200)
    consumer.acknowledge("g", second)
    assert consumer.acknowledge_batch("g", [second]) == 0  # batch: stale ones are skipped
    stats = consumer.group_stats("g")
    assert (stats["acked"], stats["delivered"]) == (2, 2)


def test_every_error_is_an_asapo_error():
    for cls in (AsapoWrongInputError, AsapoCorruptSegmentError, AsapoConfigMismatchError,
                AsapoLeaseExpiredError, AsapoUnavailableServiceError):
        assert issubclass(cls, AsapoError)
    assert issubclass(AsapoConfigMismatchError, AsapoWrongInputError)
