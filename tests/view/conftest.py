"""Fixtures of the view tests: a private shared-memory prefix per test (segments unlinked
after), producers into real rings, and a view server on a free port."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from asapo_hpc.client import Producer
from asapo_hpc.config import RingConfig
from asapo_hpc.view import Scale, ViewConfig, ViewServer

BEAMTIME = "bt"


@pytest.fixture
def producers(shm_prefix) -> Iterator[Callable[..., Producer]]:
    """make(source, slot_count=8, slot_size=1 MiB) -> a Producer; all closed after."""
    made: list[Producer] = []

    def make(source: str, slot_count: int = 8, slot_size: int = 1 << 20,
             **config) -> Producer:
        p = Producer(BEAMTIME, source, config=RingConfig(slot_count=slot_count,
                                                          slot_size=slot_size, **config))
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def view(shm_prefix) -> Iterator[Callable[..., ViewServer]]:
    """start(raw="raw", processed=None, **config) -> a started ViewServer on a free port
    that reads the ring on every request (no read throttling); closed after."""
    servers: list[ViewServer] = []

    def start(raw: str = "raw", processed: str | None = None, **kw) -> ViewServer:
        kw.setdefault("min_read_interval_s", 0.0)
        kw.setdefault("scale", Scale(max_size=1024))
        server = ViewServer(ViewConfig(BEAMTIME, raw, processed, port=0, **kw)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET; HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str) -> tuple[int, dict]:
    status, _, body = get(url)
    return status, json.loads(body)


def decode_png(data: bytes) -> np.ndarray:
    """An (h, w, 3) uint8 array from PNG bytes (Pillow, which matplotlib brings)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def rings_frame(h: int, w: int, seed: int, dtype: str = "uint16") -> np.ndarray:
    """A powder-like test frame: concentric rings over a background, Poisson noise."""
    y, x = np.mgrid[:h, :w]
    r = np.hypot(y - h / 2, x - w / 2)
    mean = 20 + 500 * np.exp(-((r % 40) - 20) ** 2 / 6) * (1 + 0.5 * seed)
    return np.random.default_rng(seed).poisson(mean).astype(dtype)


def profile_of(seed: int, npt: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """(q, I) float32 test profile with peaks whose height depends on seed."""
    q = np.linspace(0.5, 30.0, npt)
    intensity = 50 + (100 + seed * 50) * np.exp(-((q % 6) - 3) ** 2 / 0.05)
    return q, intensity.astype(np.float32)
