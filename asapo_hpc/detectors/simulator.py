"""The Lambda 9M simulator: powder frames published into a ring, paced to a rate.

Each frame is one *dataset* of ``layout.n_parts`` parts (12 for a Lambda 9M): part ``k`` is
module ``k``'s raw image, published as message ``frame id`` with ``dataset=(k, n_parts)``.
That is how the real detector delivers data (one stream per module, joined by frame
number), it lets the sink store each module as its own dataset (``module_01`` ...), and it
lets a consumer work on modules without stitching. A single 12-module message would save 11
descriptors per frame but hide the modules from everything downstream.

Nothing is copied on the way: every part is ``Producer.reserve``-d in the ring, the bank
pieces ``PowderFrames`` assembles the module from are copied straight into the reserved slot
with streaming stores (``Reservation.fill_from``), then it is committed. Pacing sleeps until
each frame's due time (``rate`` frames/s; 0 = as fast as the ring takes them);
``SimulationReport`` says what rate was held. The stream ends with the finish marker (naming
``next_stream`` if given).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from asapo_hpc.client import Producer, Reservation
from asapo_hpc.config import RingConfig
from asapo_hpc.detectors.frames import PowderFrames
from asapo_hpc.detectors.lambda9m import Lambda9MLayout
from asapo_hpc.errors import AsapoUnavailableServiceError, AsapoWrongInputError
from asapo_hpc.geometry.poni import PoniGeometry

PRODUCER_TIMEOUT_MS = 300_000  # a full ring is waited for this long (first Numba compiles)
PART_META_CAPACITY = 256  # bytes of name + metadata room per part: {"frame": i, "module": ..}
_SLOT_SLACK = 4096  # slot room beyond a module's bytes (header, metadata) so a part is 1 slot


def default_geometry(layout: Lambda9MLayout, *, dist: float = 0.3,
                     wavelength: float = 0.5e-10) -> PoniGeometry:
    """A plausible geometry for ``layout``: beam at the centre of the corrected image, 30 cm,
    0.5 Å (LaB6 rings from 7° to 25° 2θ on the default Lambda 9M layout)."""
    rows, cols = layout.stitched_shape(True)
    return PoniGeometry(dist=dist, poni1=rows * layout.pixel_size[0] / 2,
                        poni2=cols * layout.pixel_size[1] / 2, wavelength=wavelength)


def module_nbytes(layout: Lambda9MLayout) -> int:
    """Bytes of one raw module image (one dataset part)."""
    return int(np.prod(layout.module_shape)) * np.dtype(layout.dtype).itemsize


def ring_config(layout: Lambda9MLayout, *, frames_in_ring: int = 8,
                groups: tuple[str, ...] = (), max_groups: int = 8) -> RingConfig:
    """A RingConfig with one slot per module part, room for ``frames_in_ring`` frames."""
    slot_size = -(-(module_nbytes(layout) + _SLOT_SLACK) // 64) * 64
    count = 1
    while count < frames_in_ring * layout.n_parts:
        count *= 2
    return RingConfig(slot_count=count, slot_size=slot_size, groups=tuple(groups),
                      max_groups=max_groups)


def fill_part(frames: PowderFrames, out: np.ndarray, part: int, choice: np.ndarray) -> None:
    """Write module ``part`` of the frame whose ``frames.block_choice`` is ``choice`` into
    ``out`` (rows, cols) — the per-module form of ``PowderFrames.fill``."""
    rows_per = frames.block_rows
    for b, k in enumerate(choice[part]):
        rows = slice(b * rows_per, (b + 1) * rows_per)
        np.copyto(out[rows], frames.bank[k, part, rows])


@dataclass
class SimulationReport:
    """What the simulator did: frames published, time taken, rate asked for and held."""

    frames: int
    seconds: float
    rate_asked: float
    bytes: int
    output_wait: float = 0.0  # seconds waiting for room in the ring (consumers too slow)
    cpu: float = 0.0  # process CPU (user + system) over ``seconds``

    @property
    def rate_held(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")

    @property
    def gbytes_per_s(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        asked = "as fast as possible" if self.rate_asked <= 0 else f"{self.rate_asked:g}/s asked"
        return (f"published {self.frames} frames in {self.seconds:.2f} s: "
                f"{self.rate_held:.1f} frames/s held ({asked}), {self.gbytes_per_s:.2f} GB/s")


class LambdaSimulator:
    """Publishes powder frames of ``layout`` through ``producer`` as n-part datasets."""

    def __init__(self, producer: Producer, layout: Lambda9MLayout | None = None,
                 geometry: PoniGeometry | None = None, *, seed: int = 0):
        self.producer = producer
        self.layout = layout or Lambda9MLayout.default()
        self.geometry = geometry or default_geometry(self.layout)
        self.frames = PowderFrames(self.layout, self.geometry, seed=seed)
        self._names = [m.name for m in self.layout.active_modules]
        self.output_wait = 0.0  # seconds spent in reserve (a full ring: consumers behind)

    def publish(self, frame_id: int, stream: str = "default") -> int:
        """Publish frame ``frame_id`` (its noise is frame_id - 1's, reproducible); bytes sent."""
        layout, n = self.layout, self.layout.n_parts
        nbytes = module_nbytes(layout)
        choice = self.frames.block_choice(frame_id - 1)
        for part in range(n):
            t0 = time.perf_counter()
            with self.producer.reserve(nbytes, meta_capacity=PART_META_CAPACITY) as res:
                self.output_wait += time.perf_counter() - t0
                self._fill(res, part, choice)
                res.commit(frame_id, {"frame": frame_id, "module": self._names[part]},
                           stream=stream, dataset=(part + 1, n))
        return nbytes * n

    def _fill(self, res: Reservation, part: int, choice: np.ndarray) -> None:
        """Copy module ``part`` into its reserved slot with streaming stores: the slot is
        cold, and plain stores (np.copyto) would read every destination line first."""
        offset = 0
        for piece in self.frames.module_pieces(part, choice):
            offset = res.fill_from(piece, offset)

    def run(self, frames: int, rate: float = 0.0, *, stream: str = "default",
            first_id: int = 1, next_stream: str | None = None,
            progress: Callable[[int], None] | None = None) -> SimulationReport:
        """Publish ``frames`` frames (ids first_id..), paced to ``rate`` frames/s (0: no
        pacing), then finish ``stream``. ``progress(done)`` is called after each frame."""
        if frames < 0 or rate < 0:
            raise AsapoWrongInputError("frames and rate must not be negative")
        sent = 0
        start, cpu0, wait0 = time.perf_counter(), time.process_time(), self.output_wait
        for i in range(frames):
            if rate > 0:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            sent += self.publish(first_id + i, stream)
            if progress is not None:
                progress(i + 1)
        if rate > 0:  # the last frame's period too: n frames held at rate take n / rate
            time.sleep(max(0.0, start + frames / rate - time.perf_counter()))
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        self.producer.send_stream_finished_flag(stream, first_id + frames - 1, next_stream)
        return SimulationReport(frames, seconds, rate, sent, self.output_wait - wait0, cpu)


def open_producer(beamtime: str, source: str, config: RingConfig) -> Producer:
    """A producer on the existing ring of (beamtime, source), else on a new one."""
    try:
        return Producer(beamtime, source, create=False, timeout_ms=PRODUCER_TIMEOUT_MS)
    except AsapoUnavailableServiceError:
        return Producer(beamtime, source, config=config, timeout_ms=PRODUCER_TIMEOUT_MS)


def simulate(beamtime: str, source: str, frames: int, rate: float = 0.0, *,
             stream: str = "default", layout: Lambda9MLayout | None = None,
             geometry: PoniGeometry | None = None, config: RingConfig | None = None,
             seed: int = 0, before_run: Callable[[], None] | None = None) -> SimulationReport:
    """Publish ``frames`` frames into the ring of (beamtime, source), then finish the stream.

    ``before_run()`` is called once the frames are ready to go (the bank is drawn, the
    producer attached), right before the first frame: the pipeline runner waits there for
    its stages to be warm.

    An existing ring (made by a node service or pipeline) is used with its own settings;
    a missing one is created with ``config`` (default ``ring_config(layout)``)."""
    layout = layout or Lambda9MLayout.default()
    with open_producer(beamtime, source, config or ring_config(layout)) as producer:
        simulator = LambdaSimulator(producer, layout, geometry, seed=seed)
        if before_run is not None:
            before_run()
        return simulator.run(frames, rate, stream=stream)
