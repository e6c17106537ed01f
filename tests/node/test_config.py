"""The node configuration: TOML, overrides, the sink group, documentation, bad input."""

from __future__ import annotations

import dataclasses

import pytest

from asapo_hpc.cli import build_parser
from asapo_hpc.cli.serve import status_line
from asapo_hpc.errors import AsapoWrongInputError
from asapo_hpc.node import NodeConfig, SourceConfig, load_config
from asapo_hpc.node.config import FIELD_DOCS, explain
from asapo_hpc.node.counters import NodeCounters

TOML = """
data_root = "/data/node"
beamtime = "p11"
[sink]
compression = "zstd"
frames_per_file = 50
[[sources]]
name = "lambda"
frame_shape = [512, 1536]
dtype = "uint16"
parts = 12
[sources.ring]
slot_count = 256
slot_size = 1572864
groups = ["viewer"]
[[sources]]
name = "meta"
"""


def test_toml_and_overrides(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(TOML)
    config = load_config(path)
    assert (str(config.data_root), config.beamtime, str(config.catalog_path)) == \
        ("/data/node", "p11", "/data/node/catalog.sqlite")
    (lam, meta) = config.sources
    assert (lam.format, lam.frame_shape, lam.parts, lam.frame_nbytes) == \
        ("frames", (512, 1536), 12, 512 * 1536 * 2)
    assert lam.ring.groups == ("viewer", "sink") and lam.ring.slot_count == 256
    assert (meta.format, meta.ring.groups) == ("bytes", ("sink",))
    assert (config.sink.compression, config.sink.frames_per_file) == ("zstd", 50)
    over = load_config(path, data_root=str(tmp_path), beamtime="p12", sources=["meta", "new"])
    assert (over.data_root, over.beamtime) == (tmp_path, "p12")
    assert [s.name for s in over.sources] == ["meta", "new"]
    assert over.catalog_path == tmp_path / "catalog.sqlite"


@pytest.mark.parametrize("text, match", [
    ("bogus = 1", r"unknown node settings \['bogus'\]"),
    ("[sink]\ncompression = 'gzip'", "gzip"),
    ("[[sources]]\nname = 'a'\nformat = 'frames'", "frame_shape"),
    ("[[sources]]\nname = 'a'\n[sources.ring]\nslot_count = 1000", "power of two"),
    ("[[sources]]\nname = 'a'\n[[sources]]\nname = 'a'", "sources named twice"),
    ("beamtime = 'a/b'", "bad beamtime id"),
    ("data_root = ", "not valid TOML"),
])
def test_bad_config_is_refused_with_the_reason(tmp_path, text, match):
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(AsapoWrongInputError, match=match):
        load_config(path)


def test_every_field_is_documented():
    for cls in (NodeConfig, SourceConfig):
        for f in dataclasses.fields(cls):
            assert FIELD_DOCS.get(f.name), f"{cls.__name__}.{f.name} lacks documentation"
            assert f.name in explain()


def test_serve_flags_and_status_line():
    args = build_parser().parse_args(["serve", "--data-root", "/d", "--beamtime", "bt",
                                      "--source", "a", "b"])
    assert (args.data_root, args.beamtime, args.source) == ("/d", "bt", ["a", "b"])
    counters = NodeCounters(["a"])
    source = counters.sources["a"]
    source.ring_slots, source.ring_fill = 8, 2
    source.stream("s").messages_written, source.stream("s").bytes_written = 3, 4_000_000
    line = status_line(counters.snapshot(), {}, 2.0)
    assert line.endswith("a: 3 msgs written, 2.0 MB/s, ring 25% full, backlog 0")
