"""The page in a real headless browser (Debian's chromium): its script must fetch the status,
load the newest frame and draw the newest profile. Skips when chromium is not installed
(CI: apt-get install -y chromium)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from .conftest import decode_png, profile_of, rings_frame

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")


def run_chromium(args: list[str], profile_dir: Path) -> str:
    """Run headless chromium with `args`; its stdout. Killed (process group) on timeout."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-extensions", f"--user-data-dir={profile_dir}",
           "--virtual-time-budget=3000", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {err[-2000:]}"
    return out


@pytest.fixture
def live(view, producers):
    """A view of raw and processed sources, each with three messages published."""
    raw, proc = producers("raw"), producers("proc", slot_size=64 << 10)
    for i in (1, 2, 3):
        raw.send(i, rings_frame(300, 400, i), {"shape": [300, 400], "dtype": "uint16"})
        q, intensity = profile_of(i)
        proc.send(i, intensity, {"radial": q.tolist(), "unit": "q_nm^-1"})
    return view(processed="proc")


def test_page_shows_the_newest_frame_and_profile(live, tmp_path):
    dom = run_chromium(["--dump-dom", live.url], tmp_path / "chrome")
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-frame-id="3"' in body, body  # set when the image of frame 3 had loaded
    assert 'data-profile-id="3"' in body, body  # set when profile 3 was drawn
    assert re.search(r'id="frame-id">3<', dom)
    assert re.search(r'id="profile-id">3<', dom)
    assert re.search(r'id="conn">live<', dom)


def test_screenshot_shows_a_picture(live, tmp_path):
    shot = tmp_path / "view.png"
    run_chromium([f"--screenshot={shot}", "--window-size=1200,900", live.url],
                 tmp_path / "chrome")
    image = decode_png(shot.read_bytes())
    assert image.shape[:2] == (900, 1200)
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 200, "the page looks blank: no frame or profile was drawn"
    yellow = (image[..., 0] > 180) & (image[..., 1] > 180) & (image[..., 2] < 100)
    assert yellow.sum() > 500, "no bright viridis pixels: the rings were not drawn"


def test_page_shows_a_dataset_frame_assembled_from_its_parts(view, producers, tmp_path):
    """12 module parts per frame, frame 3 only half published: the page shows frame 2,
    all 12 modules placed by the layout (the image has the assembled shape, gaps grey)."""
    from .test_dataset import GAP, MODULE, N, publish, small_layout

    raw = producers("raw", slot_count=64, slot_size=4096)
    publish(raw, 1)
    publish(raw, 2)
    publish(raw, 3, range(1, 7))
    layout = small_layout()
    server = view(layout=layout)
    shot = tmp_path / "view.png"
    dom = run_chromium(["--dump-dom", server.url], tmp_path / "chrome")
    run_chromium([f"--screenshot={shot}", "--window-size=1200,900", server.url],
                 tmp_path / "chrome2")
    body = re.search(r"<body[^>]*>", dom).group(0)
    rows, cols = 4 * MODULE[0] + 3 * GAP[0], 3 * MODULE[1] + 2 * GAP[1]
    assert 'data-frame-id="2"' in body, body
    assert f'data-frame-size="{rows}x{cols}"' in body, body  # stacked would be 192x24
    info = re.search(r'id="frame-info">([^<]*)<', dom).group(1)
    assert f"{rows}×{cols} uint16, {N} of {N} parts, test-4x3" in info, info
    assert re.search(r'id="frame-error"></div>', dom)
    # On the screen: the coloured pixels are the modules (the page has no other colour);
    # inside their bounding box, the gaps are rows / columns of masked grey only.
    image = decode_png(shot.read_bytes()).astype(int)
    coloured = image.max(axis=-1) - image.min(axis=-1) > 30
    ys, xs = np.nonzero(coloured)
    box = image[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    grey = np.all(box == (40, 40, 40), axis=-1)
    assert runs(grey.all(axis=1)) == 3, "not the 3 gaps between 4 rows of modules"
    assert runs(grey.all(axis=0)) == 2, "not the 2 gaps between 3 columns of modules"
    assert box.shape[1] > 4 * cols, "the frame is not scaled up to the page"


def runs(flags: np.ndarray) -> int:
    """How many runs of True `flags` holds."""
    padded = np.concatenate([[False], flags, [False]]).astype(int)
    return int((np.diff(padded) == 1).sum())
