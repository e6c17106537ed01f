"""RingConfig: every field documented and explained; the settings stored in a segment come
back unchanged on attach."""

from __future__ import annotations

import dataclasses
import os
import stat

import pytest

from asapo_hpc import config
from asapo_hpc._core import Segment, ffi, lib
from asapo_hpc.client import Consumer, Producer
from asapo_hpc.config import FIELD_DOCS, RingConfig, explain, segment_name

FIELDS = [f.name for f in dataclasses.fields(RingConfig)]


def test_every_field_is_documented():
    assert set(FIELD_DOCS) == set(FIELDS)
    for name in FIELDS:
        meaning, on_create, on_open = FIELD_DOCS[name]
        assert len(meaning) > 20, name
        assert on_create.strip() and on_open.strip(), name


def test_explain_lists_every_field_with_default_and_docs():
    text = explain()
    defaults = RingConfig()
    blocks = text.split("\n")
    for name in FIELDS:
        header = f"{name} (default {getattr(defaults, name)!r})"
        assert header in blocks, name
        meaning, on_create, on_open = FIELD_DOCS[name]
        at = blocks.index(header)
        assert blocks[at + 1:at + 4] == [f"  {meaning}", f"  on create: {on_create}",
                                         f"  on open: {on_open}"]


def test_segment_fields_are_the_c_config_fields():
    c_fields = {name for name, _ in ffi.typeof("struct ahr_config").fields}
    stored = set(RingConfig().segment_items())
    assert stored - {"lease_s"} == c_fields - {"lease_ns"}


def test_defaults_agree_with_the_c_defaults():
    c = ffi.new("struct ahr_config *")
    lib.ahr_config_default(c)
    want = RingConfig()
    for name in want.segment_items():
        got = c.lease_ns / 1e9 if name == "lease_s" else getattr(c, name)
        assert got == getattr(want, name), name


CUSTOM = RingConfig(slot_count=32, slot_size=192, groups=("sink", "proc"), max_groups=5,
                    max_members=9, max_streams=7, max_attempts=4, lease_s=0.25,
                    full_timeout_s=0.5, mode=0o640)


def test_stored_settings_round_trip(shm_prefix):
    name = segment_name("bt", "cfg")
    created = Segment.create(name, CUSTOM)
    try:
        attached = Segment.attach(name)
        assert created.config == attached.config == CUSTOM.segment_items()
        assert attached.size == created.size == os.path.getsize(f"/dev/shm/{name}")
        assert stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode) == 0o640
        stats = attached.ring_stats()
        assert (stats["groups"], stats["head"], stats["published"]) == (2, 0, 0)
        attached.close()
    finally:
        created.close()


def test_open_with_config_none_takes_the_segments_settings(shm_prefix):
    with Producer("bt", "src", config=CUSTOM) as producer:
        with Consumer("bt", "src") as consumer, Producer("bt", "src") as second:
            for obj in (producer, consumer, second):
                assert obj.segment.config == CUSTOM.segment_items()
            # the declared groups exist from creation: both keep the message
            second.send(1, b"x")
            for group in ("sink", "proc"):
                msg = consumer.get_next(group, timeout_ms=200)
                assert msg.id == 1
                consumer.acknowledge(group, msg)


def test_segment_size_matches_the_file(shm_prefix):
    with Producer("bt", "src", config=CUSTOM) as producer:
        c = ffi.new("struct ahr_config *")
        for name, value in CUSTOM.segment_items().items():
            if name == "lease_s":
                c.lease_ns = int(value * 1e9)
            else:
                setattr(c, name, value)
        size = lib.ahr_segment_size(c)
        assert size == producer.segment.size == os.path.getsize(
            f"/dev/shm/{segment_name('bt', 'src')}")
        assert size >= CUSTOM.slot_count * CUSTOM.slot_size


def test_from_dict_round_trip():
    values = dataclasses.asdict(CUSTOM)
    assert RingConfig.from_dict(values) == CUSTOM


@pytest.mark.parametrize("name", ["slot_count", "lease_s", "mode"])
def test_validate_names_the_field(name):
    with pytest.raises(config.AsapoWrongInputError, match=f"RingConfig.{name}="):
        RingConfig(**{name: -5})
