"""The view's HTTP endpoints against real rings: status, frame PNG, profile JSON, the page,
latest-value behaviour, re-attaching, and the CLI."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from asapo_hpc._core import Segment
from asapo_hpc.config import segment_name
from asapo_hpc.view import Scale

from .conftest import BEAMTIME, decode_png, get, get_json, profile_of, rings_frame

CLI = "import sys; from asapo_hpc.cli import main; sys.exit(main())"


def send_frame(producer, id: int, h: int = 60, w: int = 80) -> np.ndarray:
    frame = rings_frame(h, w, id)
    producer.send(id, frame, {"shape": [h, w], "dtype": "uint16"})
    return frame


def test_status_before_any_producer_says_it_is_waiting(view):
    server = view()
    status, body = get_json(server.url + "status.json")
    assert status == 200
    assert body["raw"]["attached"] is False and body["raw"]["id"] is None
    assert "waiting for the producer" in body["raw"]["error"]
    assert body["processed"] is None
    code, _, text = get(server.url + "frame.png")
    assert code == 503 and b"no frame" in text
    code, body = get_json(server.url + "profile.json")
    assert code == 404 and "--processed" in body["error"]


def test_frame_png_shows_the_newest_frame_and_changes_with_it(view, producers):
    raw = producers("raw")
    send_frame(raw, 1)
    server = view()
    code, headers, png1 = get(server.url + "frame.png")
    assert code == 200 and headers["Content-Type"] == "image/png"
    assert headers["X-Frame-Id"] == "1"
    assert decode_png(png1).shape == (60, 80, 3)
    send_frame(raw, 2)
    send_frame(raw, 3)
    code, headers, png3 = get(server.url + "frame.png")
    assert headers["X-Frame-Id"] == "3"  # the newest; frame 2 is skipped
    assert not np.array_equal(decode_png(png1), decode_png(png3))
    _, status = get_json(server.url + "status.json")
    assert status["raw"]["id"] == 3 and status["raw"]["shape"] == [60, 80]
    assert status["raw"]["dtype"] == "uint16" and status["raw"]["frame_error"] is None


def test_large_frames_are_binned_to_max_size(view, producers):
    raw = producers("raw", slot_size=16 << 20)
    raw.send(1, rings_frame(1000, 1500, 1), {"shape": [1000, 1500], "dtype": "uint16"})
    server = view(scale=Scale(max_size=500))
    _, _, png = get(server.url + "frame.png")
    assert decode_png(png).shape == (333, 500, 3)


def test_cli_shape_and_dtype_fill_in_missing_metadata(view, producers):
    raw = producers("raw")
    raw.send(1, np.arange(30 * 40, dtype=np.float32))  # no metadata at all
    server = view(shape=(30, 40), dtype="float32")
    _, headers, png = get(server.url + "frame.png")
    assert headers["X-Frame-Id"] == "1" and decode_png(png).shape == (30, 40, 3)


def test_a_frame_that_does_not_fit_its_metadata_is_reported(view, producers):
    raw = producers("raw")
    raw.send(1, np.zeros(100, np.uint16), {"shape": [20, 20], "dtype": "uint16"})
    server = view()
    _, status = get_json(server.url + "status.json")
    assert status["raw"]["id"] == 1 and "does not hold" in status["raw"]["frame_error"]
    code, _, text = get(server.url + "frame.png")
    assert code == 503 and b"does not hold" in text


def test_profile_json_follows_the_processed_source(view, producers):
    raw, proc = producers("raw"), producers("proc", slot_size=64 << 10)
    send_frame(raw, 1)
    server = view(processed="proc")
    assert get_json(server.url + "profile.json")[0] == 503  # nothing published yet
    for i in (1, 2):
        q, intensity = profile_of(i)
        proc.send(i, intensity, {"radial": q.tolist(), "unit": "q_nm^-1"})
    code, prof = get_json(server.url + "profile.json")
    assert code == 200 and prof["id"] == 2 and prof["unit"] == "q_nm^-1"
    assert prof["intensity"] == pytest.approx(profile_of(2)[1].tolist(), rel=1e-6)
    assert prof["radial"] == pytest.approx(q.tolist())
    _, status = get_json(server.url + "status.json")
    assert status["processed"]["id"] == 2


def test_a_bad_profile_message_is_reported_not_fatal(view, producers):
    proc = producers("proc", slot_size=64 << 10)
    proc.send(1, np.zeros(3, np.float32), {"radial": [1, 2], "unit": "q_nm^-1"})
    server = view(processed="proc")
    code, prof = get_json(server.url + "profile.json")
    assert code == 200 and prof["id"] == 1 and "not a profile" in prof["error"]


def test_the_view_never_holds_the_producer_back(view, producers):
    """A ring of 4 slots and no timeout: 40 sends succeed while the view keeps reading."""
    raw = producers("raw", slot_count=4, slot_size=64 << 10, full_timeout_s=0.0)
    server = view()
    for i in range(1, 41):
        send_frame(raw, i)
        if i % 5 == 0:
            assert get(server.url + "frame.png")[1]["X-Frame-Id"] == str(i)


def test_the_view_reattaches_when_the_producer_recreates_its_ring(view, producers):
    raw = producers("raw")
    send_frame(raw, 7)
    server = view()
    assert get_json(server.url + "status.json")[1]["raw"]["id"] == 7
    raw.close()
    Segment.unlink(segment_name(BEAMTIME, "raw"))
    again = producers("raw")
    send_frame(again, 1)
    deadline = time.monotonic() + 20  # the view re-checks the ring once a second
    while get_json(server.url + "status.json")[1]["raw"]["id"] != 1:
        assert time.monotonic() < deadline, "the view did not follow the new ring"
        time.sleep(0.1)
    assert get(server.url + "frame.png")[1]["X-Frame-Id"] == "1"


def test_page_is_self_contained(view):
    server = view(processed="proc")
    code, headers, body = get(server.url)
    page = body.decode()
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert 'id="frame-id"' in page and "status.json" in page and "profile.json" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # no external resources
    assert get(server.url + "nothing-here")[0] == 404


def test_cli_serves_on_a_free_port_and_stops_on_sigterm(producers, shm_prefix):
    send_frame(producers("raw"), 5)
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "view", "--beamtime", BEAMTIME, "--raw", "raw", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env=dict(os.environ))
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, f"no URL printed: {line!r} {proc.stderr.read() if proc.poll() else ''}"
        _, status = get_json(match.group(0) + "status.json")
        assert status["raw"]["id"] == 5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
