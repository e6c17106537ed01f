"""Frames published as datasets (one part per module, as the Lambda 9M simulator does): the
view shows the newest id whose parts are all in the ring, assembled by the detector layout
(or stacked without one), byte for byte what was published."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from asapo_hpc.client import Consumer
from asapo_hpc.detectors.lambda9m import Lambda9MLayout
from asapo_hpc.errors import AsapoDataNotInCacheError
from asapo_hpc.view import Scale
from asapo_hpc.view.render import render_small
from asapo_hpc.view.source import LatestSource

from .conftest import BEAMTIME, decode_png, get, get_json

N = 12
MODULE = (16, 24)
GAP = (4, 6)  # rows, cols between modules


def module_of(frame_id: int, part: int) -> np.ndarray:
    """Module `part` (1-based) of frame `frame_id`: every pixel depends on both."""
    y, x = np.mgrid[:MODULE[0], :MODULE[1]]
    return ((frame_id * 1009 + part * 97 + y * 31 + x * 7) % 4000 + 10).astype(np.uint16)


def publish(producer, frame_id: int, parts=range(1, N + 1), meta: dict | None = None) -> None:
    for k in parts:
        m = {"frame": frame_id, "module": f"t{k:02d}"} if meta is None else meta
        producer.send(frame_id, module_of(frame_id, k), m, dataset=(k, N))


def small_layout(rotate_last: bool = True) -> Lambda9MLayout:
    """12 modules of 16x24 in 4 rows x 3 columns with gaps; the last turned by 180°."""
    modules = [{"name": f"t{k + 1:02d}",
                "translation": [(k % 3) * (MODULE[1] + GAP[1]), (k // 3) * (MODULE[0] + GAP[0])],
                "rotation": 180 if rotate_last and k == N - 1 else 0}
               for k in range(N)]
    return Lambda9MLayout.from_config({
        "detector": {"name": "test-4x3", "module_shape": list(MODULE), "chip_shape": [8, 8],
                     "large_pixel_factor": 1},
        "module": modules})


def expected_image(frame_id: int, layout: Lambda9MLayout) -> np.ndarray:
    """The assembled frame, built here independently: NaN in the gaps."""
    image = np.full(layout.stitched_shape(False), np.nan, np.float32)
    for k, m in enumerate(layout.active_modules):
        y, x = int(m.translation[1]), int(m.translation[0])
        module = module_of(frame_id, k + 1)
        if m.orientation.quarter_turns % 4 == 2:
            module = module[::-1, ::-1]
        image[y:y + MODULE[0], x:x + MODULE[1]] = module
    return image


@pytest.fixture
def source(shm_prefix):
    made: list[LatestSource] = []

    def make() -> LatestSource:
        made.append(LatestSource(BEAMTIME, "raw", min_interval_s=0.0))
        return made[-1]

    yield make
    for s in made:
        s.close()


def assert_frame(snap, frame_id: int) -> None:
    """snap holds all N parts of frame_id, each byte-identical to what was published."""
    assert snap is not None and len(snap.parts) == N
    for k, part in enumerate(snap.parts, start=1):
        assert (part.id, part.dataset) == (frame_id, (k, N))
        assert part.data.tobytes() == module_of(frame_id, k).tobytes(), f"part {k}"


def test_consumer_reads_each_part_of_a_dataset(producers):
    raw = producers("raw", slot_count=32, slot_size=4096)
    publish(raw, 1)
    publish(raw, 2, meta={"x": 1})
    with Consumer(BEAMTIME, "raw", create=False) as c:
        for k in range(1, N + 1):
            part = c.get_part(2, k)
            assert part.dataset == (k, N) and part.meta == {"x": 1}
            assert part.data.tobytes() == module_of(2, k).tobytes()
        assert c.get_part(1, 3, max_bytes=10).data.tobytes() == module_of(1, 3).tobytes()
        assert c.get_by_id(2).dataset == (N, N)  # by id alone: the newest part
        for id_, k, stream in ((3, 1, "default"), (2, N + 1, "default"), (2, 0, "default"),
                               (2, 1, "other")):
            with pytest.raises(AsapoDataNotInCacheError, match="not in the ring"):
                c.get_part(id_, k, stream)


def test_source_assembles_the_newest_whole_frame_byte_for_byte(producers, source):
    raw = producers("raw", slot_count=64, slot_size=4096)
    publish(raw, 1)
    publish(raw, 2)
    src = source()
    assert_frame(src.refresh(), 2)
    publish(raw, 3, range(1, 6))  # frame 3 half published: frame 2 is still the newest whole
    assert_frame(src.refresh(), 2)
    publish(raw, 3, range(6, N + 1))
    assert_frame(src.refresh(), 3)
    status = src.status()
    assert status["id"] == 3 and status["parts"] == [N, N] and status["error"] is None
    assert status["size"] == N * module_of(3, 1).nbytes


def test_parts_arriving_out_of_order_are_assembled(producers, source):
    raw = producers("raw", slot_count=64, slot_size=4096)
    publish(raw, 1)
    publish(raw, 2, [12, 3, 1, 7, 2, 4, 5, 6, 8, 9, 11])  # part 10 late
    src = source()
    assert_frame(src.refresh(), 1)
    publish(raw, 2, [10])
    assert_frame(src.refresh(), 2)


def test_a_ring_shorter_than_a_frame_is_reported(producers, source):
    raw = producers("raw", slot_count=8, slot_size=4096)  # 8 slots, 12 parts
    publish(raw, 1)
    publish(raw, 2)
    src = source()
    assert src.refresh() is None
    assert "no whole frame in the ring" in src.status()["error"]


def test_frames_read_while_a_producer_laps_the_ring_are_whole(producers, source):
    raw = producers("raw", slot_count=32, slot_size=4096)  # under three frames
    stop = threading.Event()
    published = [0]

    def produce() -> None:
        frame_id = 0
        while not stop.is_set():
            frame_id += 1
            publish(raw, frame_id)
            published[0] = frame_id

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        src, seen = source(), set()
        while len(seen) < 30 and published[0] < 200_000:
            snap = src.refresh()
            if snap is not None:
                assert_frame(snap, snap.message.id)
                seen.add(snap.message.id)
    finally:
        stop.set()
        thread.join()
    assert len(seen) >= 30


def test_frame_png_places_modules_by_the_layout(producers, view):
    raw = producers("raw", slot_count=64, slot_size=4096)
    publish(raw, 1)
    layout = small_layout()
    server = view(layout=layout, scale=Scale(max_size=1024))
    code, headers, png = get(server.url + "frame.png")
    assert code == 200 and headers["X-Frame-Id"] == "1"
    want = expected_image(1, layout)
    assert want.shape == (4 * MODULE[0] + 3 * GAP[0], 3 * MODULE[1] + 2 * GAP[1])
    assert np.array_equal(decode_png(png), decode_png(render_small(want, server.config.scale)))
    _, status = get_json(server.url + "status.json")
    assert status["raw"]["parts"] == [N, N] and status["raw"]["shape"] == list(want.shape)
    assert status["raw"]["geometry"] == "test-4x3"
    assert status["raw"]["module_shape"] == list(MODULE)


def test_binned_assembly_keeps_modules_apart(producers, view):
    raw = producers("raw", slot_count=64, slot_size=4096)
    publish(raw, 1)
    server = view(layout=small_layout(rotate_last=False), scale=Scale(max_size=42))
    _, _, png = get(server.url + "frame.png")
    image = decode_png(png)  # 2x2 blocks: 38 x 42, gaps of 2 and 3 blocks
    assert image.shape == (38, 42, 3)
    grey = np.all(image == (40, 40, 40), axis=-1)
    for r in range(4):
        for c in range(3):
            y, x = r * (MODULE[0] + GAP[0]) // 2, c * (MODULE[1] + GAP[1]) // 2
            assert not grey[y:y + MODULE[0] // 2, x:x + MODULE[1] // 2].any()
    assert grey[MODULE[0] // 2:MODULE[0] // 2 + 2].all()  # the first row gap, whole
    assert grey[:, MODULE[1] // 2:MODULE[1] // 2 + 3].all()  # the first column gap


def test_without_a_layout_the_modules_are_stacked(producers, view):
    raw = producers("raw", slot_count=64, slot_size=4096)
    publish(raw, 1, meta={"shape": list(MODULE), "dtype": "uint16"})
    server = view()
    _, _, png = get(server.url + "frame.png")
    stack = np.concatenate([module_of(1, k) for k in range(1, N + 1)]).astype(np.float32)
    assert np.array_equal(decode_png(png), decode_png(render_small(stack, server.config.scale)))
    _, status = get_json(server.url + "status.json")
    assert status["raw"]["geometry"] == "stacked"
    assert status["raw"]["shape"] == [N * MODULE[0], MODULE[1]]


def test_a_layout_that_does_not_fit_the_dataset_is_reported(producers, view):
    raw = producers("raw", slot_count=64, slot_size=4096)
    publish(raw, 1)
    layout = small_layout()
    fewer = layout.replace(modules=layout.modules[:4])
    _, status = get_json(view(layout=fewer).url + "status.json")
    assert "has 4 active modules, the dataset 12 parts" in status["raw"]["frame_error"]


def test_the_simulated_lambda9m_is_shown_with_its_default_layout(producers, view):
    from asapo_hpc.detectors.simulator import LambdaSimulator, fill_part, ring_config

    layout = Lambda9MLayout.default()
    config = ring_config(layout, frames_in_ring=2)
    raw = producers("raw", slot_count=config.slot_count, slot_size=config.slot_size)
    sim = LambdaSimulator(raw, layout, seed=3)
    sim.publish(1)
    sim.publish(2)
    server = view(scale=Scale(max_size=1024))
    _, status = get_json(server.url + "status.json")
    info = status["raw"]
    assert info["id"] == 2 and info["parts"] == [N, N] and info["frame_error"] is None
    assert info["geometry"] == layout.name and info["dtype"] == "uint16"
    assert info["shape"] == list(layout.stitched_shape(False))
    _, _, png = get(server.url + "frame.png")
    rows, cols = layout.stitched_shape(False)
    assert decode_png(png).shape == (rows // 5, cols // 5, 3)  # 5x5 blocks: <= 1024 a side
    snap = server.raw.refresh()
    choice = sim.frames.block_choice(1)  # frame 2's noise
    for k, part in enumerate(snap.parts):
        want = np.empty(layout.module_shape, layout.dtype)
        fill_part(sim.frames, want, k, choice)
        assert part.data.tobytes() == want.tobytes(), f"module {k + 1}"


def test_cli_layout_flag_loads_the_toml(tmp_path):
    import argparse

    from asapo_hpc.cli.view import add_arguments, config_from, run

    toml = tmp_path / "det.toml"
    toml.write_text('[detector]\nname = "two"\nmodule_shape = [16, 24]\nchip_shape = [8, 8]\n'
                    'large_pixel_factor = 1\n[[module]]\ntranslation = [0, 0]\n'
                    '[[module]]\ntranslation = [30, 0]\n')
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--beamtime", "bt", "--raw", "raw", "--layout", str(toml)])
    layout = config_from(args).layout
    assert layout.name == "two" and layout.n_parts == 2
    assert layout.stitched_shape(False) == (16, 54)
    missing = parser.parse_args(["--beamtime", "bt", "--raw", "raw", "--layout",
                                 str(tmp_path / "none.toml")])
    assert run(missing) == 2
