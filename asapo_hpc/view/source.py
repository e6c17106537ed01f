"""Latest-value reading of one data source for the view: attach when the producer appears,
re-attach when it re-creates its ring, copy the newest message only when something new was
published (``Consumer.get_last``: never holds the producer back), and measure the rate.

When the newest message is a part of a dataset (a detector frame of one part per module),
the frame shown is the newest id whose parts are all still in the ring: the newest id, or
else the one before it (a part not yet published, or overwritten while we read). Parts are
read with ``Consumer.get_part``, also a latest-value read. If neither id is whole, the last
whole frame stays on show."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from asapo_hpc.client import Consumer, Message
from asapo_hpc.config import segment_name
from asapo_hpc.errors import AsapoError, AsapoNoDataError

SHM_DIR = "/dev/shm"
RATE_WINDOW_S = 3.0
ATTACH_RETRY_S = 1.0


@dataclass
class Snapshot:
    """The newest message seen (a private copy) and when it was read. For a dataset:
    `parts` holds every part of the frame shown (copies, in substream order) and `message`
    is its first part."""

    message: Message
    stream: str
    read_at: float
    published: int  # the ring's published counter when it was read
    parts: tuple[Message, ...] = ()

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts) if self.parts else self.message.size


@dataclass
class _Samples:
    """(time, published, id) of recent reads, for the rates."""

    points: deque = field(default_factory=lambda: deque(maxlen=256))

    def add(self, now: float, published: int, msg_id: int) -> None:
        if self.points and (published < self.points[-1][1] or msg_id < self.points[-1][2]):
            self.points.clear()  # a new ring or a new stream: start over
        self.points.append((now, published, msg_id))
        while len(self.points) > 2 and now - self.points[0][0] > RATE_WINDOW_S:
            self.points.popleft()

    def rates(self) -> tuple[float | None, float | None]:
        """(ids per second, messages per second) over the window; None without two points."""
        if len(self.points) < 2:
            return None, None
        (t0, p0, i0), (t1, p1, i1) = self.points[0], self.points[-1]
        dt = t1 - t0
        if dt <= 0:
            return None, None
        return (i1 - i0) / dt, (p1 - p0) / dt


class LatestSource:
    """One (beamtime, source), read on demand by any request thread (a lock serialises the
    Consumer, which is for one thread). Reads at most once per `min_interval_s`."""

    def __init__(self, beamtime: str, source: str, min_interval_s: float = 0.05):
        self.beamtime, self.source = beamtime, source
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._consumer: Consumer | None = None
        self._inode: int | None = None
        self._last_attach_try = -1e9
        self._last_check = -1e9
        self._last_refresh = -1e9
        self._seen_published = -1
        self._snapshot: Snapshot | None = None
        self._samples = _Samples()
        self.error: str | None = None

    # -- attaching ------------------------------------------------------------------------

    def _shm_inode(self) -> int | None:
        try:
            return os.stat(os.path.join(SHM_DIR, segment_name(self.beamtime, self.source))
                           ).st_ino
        except OSError:
            return None

    def _attach(self, now: float) -> bool:
        if now - self._last_attach_try < ATTACH_RETRY_S:
            return False
        self._last_attach_try = now
        try:
            inode = self._shm_inode()
            self._consumer = Consumer(self.beamtime, self.source, create=False)
            self._inode, self._seen_published = inode, -1
            self.error = None
            return True
        except AsapoError as exc:
            self.error = f"waiting for the producer: {exc}"
            return False

    def _detach(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except AsapoError:
                pass
        self._consumer = None

    def _ring_replaced(self, now: float) -> bool:
        """Did the producer remove or re-create the ring? (checked once a second)"""
        if now - self._last_check < ATTACH_RETRY_S:
            return False
        self._last_check = now
        return self._shm_inode() != self._inode

    # -- reading ---------------------------------------------------------------------------

    def refresh(self) -> Snapshot | None:
        """The newest message (re-read if something new was published); None if none yet."""
        with self._lock:
            now = time.monotonic()
            if now - self._last_refresh >= self.min_interval_s:
                self._last_refresh = now
                self._read(now)
            return self._snapshot

    def _read(self, now: float) -> None:
        if self._consumer is not None and self._ring_replaced(now):
            self._detach()
        if self._consumer is None and not self._attach(now):
            return
        published = self._consumer.segment.ring_stats()["published"]
        if published == self._seen_published:
            if self._snapshot is not None:  # nothing new: the rate decays towards 0
                self._samples.add(now, published, self._snapshot.message.id)
            return
        try:
            msg = self._consumer.get_last()
        except AsapoNoDataError as exc:
            self.error = None if published == 0 else str(exc)
            return
        except AsapoError as exc:
            self.error = f"reading the ring failed: {exc}"
            self._detach()
            return
        self._seen_published, self.error = published, None
        if msg.dataset is not None and msg.dataset[1] > 1:
            self._read_dataset(msg, now, published)
            return
        self._snapshot = Snapshot(msg, msg.stream, now, published)
        self._samples.add(now, published, msg.id)

    def _read_dataset(self, newest: Message, now: float, published: int) -> None:
        """Show the newest whole frame: newest.id, else newest.id - 1."""
        for data_id in (newest.id, newest.id - 1):
            parts = self._parts_of(data_id, newest) if data_id >= 1 else None
            if parts is not None:
                self._snapshot = Snapshot(parts[0], newest.stream, now, published, parts)
                self._samples.add(now, published, data_id)
                return
        part, n = newest.dataset
        self.error = (None if self._snapshot is not None and self._snapshot.parts else
                      f"no whole frame in the ring yet (newest: part {part} of {n} of id "
                      f"{newest.id}); is the ring shorter than one frame?")

    def _parts_of(self, data_id: int, newest: Message) -> tuple[Message, ...] | None:
        """All parts of dataset data_id (copies), or None if one is not in the ring."""
        substream, n = newest.dataset
        parts: list[Message] = [newest] * n
        # last part first: a frame still being published fails at once, before any copy
        for k in range(n, 0, -1):
            if data_id == newest.id and k == substream:
                continue  # get_last already copied it
            try:
                parts[k - 1] = self._consumer.get_part(data_id, k, newest.stream,
                                                       max_bytes=newest.size)
            except AsapoNoDataError:  # not yet published, or overwritten
                return None
        return tuple(parts)

    def status(self) -> dict[str, Any]:
        """What the page shows about this source."""
        snap = self.refresh()
        id_rate, msg_rate = self._samples.rates()
        out: dict[str, Any] = {"source": self.source, "attached": self._consumer is not None,
                               "id": None, "error": self.error,
                               "rate_hz": id_rate, "messages_per_s": msg_rate}
        if snap is not None:
            msg = snap.message
            out.update(id=msg.id, stream=snap.stream, size=snap.size,
                       timestamp_ns=msg.timestamp, dataset=msg.dataset,
                       parts=[len(snap.parts), msg.dataset[1]] if snap.parts else None,
                       age_s=max(0.0, (time.time_ns() - msg.timestamp) / 1e9),
                       published=snap.published)
        return out

    def close(self) -> None:
        with self._lock:
            self._detach()
