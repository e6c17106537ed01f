"""The producer: publishes messages into the node's ring, with one copy (send) or none
(reserve, fill, commit)."""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from asapo_hpc._core import Segment, Send, check, ffi, lib
from asapo_hpc.client._common import (
    DEFAULT_STREAM,
    CallContext,
    StreamTable,
    encode_meta,
    open_segment,
)
from asapo_hpc.client.message import FINISH_NAME, NO_NEXT_STREAM
from asapo_hpc.client.streams import ProducerStreams
from asapo_hpc.config import RingConfig
from asapo_hpc.errors import ERRNO_HINTS, AsapoRingFullError, AsapoWrongInputError

DEFAULT_META_CAPACITY = 4096
PARALLEL_COPY_MIN = 4 << 20  # below this a second thread costs more than it saves


def _check_id(id: int) -> int:
    if not isinstance(id, (int, np.integer)) or isinstance(id, bool) or id <= 0:
        raise AsapoWrongInputError(f"message id must be an integer >= 1, got {id!r}")
    return int(id)


def _check_dataset(dataset: tuple[int, int] | None) -> tuple[int, int]:
    if dataset is None:
        return 0, 0
    try:
        substream, size = (int(v) for v in dataset)
    except (TypeError, ValueError):
        raise AsapoWrongInputError(f"dataset must be (substream, size), got {dataset!r}") from None
    if not 1 <= substream <= size:
        raise AsapoWrongInputError(
            f"dataset=({substream}, {size}): substream counts from 1 up to size")
    return substream, size


def _readable_buffer(data: Any):
    """A cffi view of `data`'s bytes without copying; contiguous buffers only."""
    try:
        return ffi.from_buffer(data)
    except (TypeError, ValueError, BufferError):
        if isinstance(data, np.ndarray) and not data.flags.c_contiguous:
            raise AsapoWrongInputError(
                "data is not C-contiguous: pass np.ascontiguousarray(data) (that copies), "
                "or write into a reservation (Producer.reserve) instead") from None
        raise AsapoWrongInputError(
            f"data of type {type(data).__name__} does not expose a contiguous buffer; pass "
            "bytes, bytearray, memoryview or a numpy array") from None


class Reservation:
    """Space reserved in the ring: fill ``data`` (a writable numpy view), then ``commit``.

    Nothing is copied: the bytes you write land in shared memory where consumers read them.
    Leaving a ``with`` block without committing gives the space back (``abort``).
    """

    __slots__ = ("_producer", "_res", "data", "_open")

    def __init__(self, producer: Producer, res, data: np.ndarray):
        self._producer = producer
        self._res = res
        self.data = data
        self._open = True

    @property
    def capacity(self) -> int:
        return len(self.data)

    @property
    def seq(self) -> int:
        """The ring position of the reservation (its first slot is ``seq % slot_count``)."""
        return int(self._res.seq)

    def array(self, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        """A writable view of the reserved bytes as an array of `dtype` and `shape`."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if nbytes > len(self.data):
            raise AsapoWrongInputError(
                f"array of {nbytes} bytes does not fit the {len(self.data)} reserved")
        return self.data[:nbytes].view(dtype).reshape(shape)

    def fill_from(self, data: Any, offset: int = 0) -> int:
        """Copy ``data`` (any C-contiguous buffer) into the reserved bytes at byte ``offset``
        with one streaming copy (non-temporal stores, ``ahr_copy_stream``); returns the
        offset just past it, so consecutive pieces can be chained.

        Faster than writing through ``data`` / ``array`` for large pieces: the reserved slot
        is usually cold, and ordinary stores would first read each destination line
        (read-for-ownership), moving about three times the bytes. Raises
        AsapoWrongInputError when the piece does not fit the reservation."""
        if not self._open:
            raise AsapoWrongInputError("reservation already committed or aborted")
        src = _readable_buffer(data)
        offset, n = int(offset), len(src)
        if offset < 0 or offset + n > len(self.data):
            raise AsapoWrongInputError(
                f"fill_from: {n} bytes at offset {offset} do not fit the {len(self.data)} "
                "reserved")
        if n:
            lib.ahr_copy_stream(ffi.from_buffer(self.data) + offset, src, n)
        return offset + n

    def commit(self, id: int, meta: Any = None, *, nbytes: int | None = None,
               stream: str = DEFAULT_STREAM, dataset: tuple[int, int] | None = None,
               name: str = "") -> int:
        """Publish the first `nbytes` (default: all reserved) as message `id`."""
        if not self._open:
            raise AsapoWrongInputError("reservation already committed or aborted")
        nbytes = len(self.data) if nbytes is None else int(nbytes)
        if not 0 <= nbytes <= len(self.data):
            raise AsapoWrongInputError(f"nbytes={nbytes} outside 0..{len(self.data)}")
        p = self._producer
        id = _check_id(id)
        substream, size = _check_dataset(dataset)
        meta_b, name_b = encode_meta(meta), name.encode()
        rc = lib.ahrpy_commit(p._segment.ptr, self._res, nbytes, id, p._streams.index(stream),
                              0, substream, size, name_b, len(name_b), meta_b, len(meta_b))
        check(rc, f"commit of message {id}: name + metadata ({len(name_b) + len(meta_b)} "
                  "bytes) must fit the reservation's meta_capacity")
        self._open = False
        self.data = None
        return id

    def abort(self) -> None:
        """Give the space back; consumers never see it."""
        if self._open:
            self._open = False
            self.data = None
            check(lib.ahr_abort(self._producer._segment.ptr, self._res), "abort")

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


class Producer(CallContext, ProducerStreams):
    """Publishes messages of one (beamtime, data source) into the node's shared ring."""

    def __init__(self, beamtime: str, data_source: str, *, config: RingConfig | None = None,
                 create: bool = True, timeout_ms: int | None = None,
                 copy_threads: int | None = None, data_root: str | None = None):
        settings = config or RingConfig()
        if copy_threads is not None:  # a producer-side setting: no segment setting changes
            settings = dataclasses.replace(settings, copy_threads=copy_threads)
        self._segment = open_segment(beamtime, data_source, config, create)
        self._copy_pool = ThreadPoolExecutor(settings.copy_threads - 1,
                                             thread_name_prefix="asapo-copy") \
            if settings.copy_threads > 1 else None
        self._copy_threads = settings.copy_threads
        # messages this large are copied by copy_threads threads (never, with one thread)
        self._parallel_min = PARALLEL_COPY_MIN if self._copy_pool is not None else 1 << 62
        self._member = self._segment.join(lib.AHR_ROLE_PRODUCER)
        self._streams = StreamTable(self._segment)
        self._stream_index = self._streams._index  # read directly on the hot path
        self._ptr = self._segment.ptr
        timeout_s = settings.full_timeout_s if timeout_ms is None \
            else timeout_ms / 1000
        self._ctx = ffi.new("struct ahrpy_ctx *")
        self._ctx.ring, self._ctx.member = self._ptr, self._member
        self.timeout_ns = int(timeout_s * 1e9)
        self.beamtime, self.data_source = beamtime, data_source
        self.data_root = data_root  # the node's data folder, for stream and beamtime metadata
        if type(self).send is Producer.send:  # send(id, data) runs in C; any other call
            # (keywords, metadata, a new stream, a large message) runs the method below
            self.send = Send(ffi.buffer(self._ctx), self._stream_index, DEFAULT_STREAM,
                             self._raise_send, Producer.send.__get__(self),
                             self._parallel_min)

    @property
    def segment(self) -> Segment:
        return self._segment

    def send(self, id: int, data: Any, meta: Any = None, *, stream: str = DEFAULT_STREAM,
             dataset: tuple[int, int] | None = None, name: str = "", auto_id: bool = False,
             callback: Callable[[dict, Exception | None], None] | None = None) -> int:
        """Publish `data` (one copy into the ring) with `meta` (JSON-serialisable).

        Blocks while the ring is full, up to the producer's timeout, then raises
        AsapoRingFullError. Returns the message id (assigned when auto_id=True).
        """
        stream_idx = self._stream_index.get(stream)
        if stream_idx is None:
            stream_idx = self._streams.index(stream)
        if auto_id:
            id = self.next_id(stream)
        elif type(id) is not int or id <= 0:
            id = _check_id(id)
        buf = data if type(data) is bytes else _readable_buffer(data)  # bytes go in as is
        if meta is None and dataset is None and not name and len(buf) < self._parallel_min:
            rc = lib.ahrpy_send_bare(self._ctx, buf, len(buf), id, stream_idx)  # fewest args
            if rc:
                self._raise_send(rc, id, len(buf), stream)
            if callback is not None:
                callback({"id": id, "stream": stream, "size": len(buf)}, None)
            return id
        meta_b = b"" if meta is None else encode_meta(meta)
        if len(buf) >= self._parallel_min:
            rc = self._send_parallel(id, buf, meta_b, stream, dataset, name)
        elif dataset is None and not name:
            rc = lib.ahrpy_send_plain(self._ctx, buf, len(buf), id, stream_idx, meta_b,
                                      len(meta_b))
        else:
            substream, size = _check_dataset(dataset)
            name_b = name.encode()
            rc = lib.ahrpy_send(self._ptr, self._member, buf, len(buf), id, stream_idx, 0,
                                substream, size, name_b, len(name_b), meta_b, len(meta_b),
                                self.timeout_ns)
        if rc:
            self._raise_send(rc, id, len(buf), stream)
        if callback is not None:
            callback({"id": id, "stream": stream, "size": len(buf)}, None)
        return id

    def _raise_send(self, rc: int, id: int, nbytes: int, stream: str) -> None:
        check(rc, f"send of message {id} ({nbytes} bytes) to stream {stream!r}: the ring "
                  f"holds {self._segment.config['slot_count']} slots of "
                  f"{self._segment.config['slot_size']} bytes")

    def _send_parallel(self, id: int, buf: Any, meta_b: bytes, stream: str,
                       dataset: tuple[int, int] | None, name: str) -> int:
        """reserve, copy in copy_threads page-aligned pieces at once (streaming stores; cffi
        lets go of the GIL in C), commit. Returns 0."""
        name_b = name.encode()
        res = self.reserve(len(buf), meta_capacity=len(meta_b) + len(name_b))
        src = buf if isinstance(buf, ffi.CData) else ffi.from_buffer(buf)
        dst = ffi.from_buffer(res.data)
        n = len(src)
        step = -(-n // self._copy_threads // 4096) * 4096
        try:
            futures = [self._copy_pool.submit(lib.ahr_copy_stream, dst + a, src + a,
                                              min(step, n - a)) for a in range(step, n, step)]
            lib.ahr_copy_stream(dst, src, min(step, n))
            for future in futures:
                future.result()
        except BaseException:
            res.abort()
            raise
        res.commit(id, meta_b or None, stream=stream, dataset=dataset, name=name)
        return 0

    def send_batch(self, first_id: int, data: np.ndarray, *,
                   stream: str = DEFAULT_STREAM) -> int:
        """Publish each row of `data` (shape (n, ...), C-contiguous) as one message, ids
        first_id .. first_id + n - 1, no metadata: one call into C for all of them."""
        if not isinstance(data, np.ndarray) or data.ndim < 1:
            raise AsapoWrongInputError("send_batch takes a numpy array of shape (n, ...)")
        if type(first_id) is not int or first_id <= 0:
            first_id = _check_id(first_id)
        stream_idx = self._stream_index.get(stream)
        if stream_idx is None:
            stream_idx = self._streams.index(stream)
        buf = _readable_buffer(data)
        n = data.shape[0]
        each = data.nbytes // n if n else 0
        done = lib.ahrpy_send_batch(self._ctx, buf, each, n, first_id, stream_idx)
        check(done, f"send_batch of {n} messages of {each} bytes")
        if done < n:
            raise AsapoRingFullError(
                f"send_batch: {done} of {n} messages were published (ids {first_id}.."
                f"{first_id + done - 1}); send the rest from id {first_id + done}"
                f"{ERRNO_HINTS[errno.ENOSPC]}")
        return done

    def reserve(self, nbytes: int, *, meta_capacity: int = DEFAULT_META_CAPACITY) -> Reservation:
        """Reserve `nbytes` (+ room for name and metadata) to fill in place, then commit."""
        if int(nbytes) < 0 or int(meta_capacity) < 0:
            raise AsapoWrongInputError("nbytes and meta_capacity must not be negative")
        res = ffi.new("struct ahr_reservation *")
        rc = lib.ahr_reserve(self._segment.ptr, self._member, int(nbytes), int(meta_capacity),
                             self.timeout_ns, res)
        if rc:
            check(rc, f"reserve of {nbytes} bytes + meta_capacity {meta_capacity}: the ring "
                      f"holds {self._segment.config['slot_count']} slots of "
                      f"{self._segment.config['slot_size']} bytes")
        start = res.data_offset
        return Reservation(self, res, self._segment.view[start:start + int(nbytes)])

    def next_id(self, stream: str = DEFAULT_STREAM) -> int:
        """The next auto id of `stream`, shared by every producer of this source."""
        return check(lib.ahr_stream_next_id(self._segment.ptr, self._streams.index(stream)),
                     f"auto id of stream {stream!r}")

    def send_stream_finished_flag(self, stream: str, last_id: int,
                                  next_stream: str | None = None) -> None:
        """Mark `stream` finished after `last_id`; consumers at its end learn `next_stream`."""
        idx = self._streams.index(stream)
        next_idx = self._streams.index(next_stream) if next_stream else -1
        check(lib.ahr_stream_finish(self._segment.ptr, idx, next_idx), "finish stream")
        meta = encode_meta({"next_stream": next_stream or NO_NEXT_STREAM})
        name = FINISH_NAME.encode()
        rc = lib.ahrpy_send(self._segment.ptr, self._member, b"", 0, _check_id(last_id + 1),
                            idx, lib.AHR_FLAG_FINISH, 0, 0, name, len(name), meta, len(meta),
                            self.timeout_ns)
        check(rc, f"finish marker of stream {stream!r}")

    def stats(self) -> dict[str, int]:
        return self._segment.ring_stats()

    def close(self) -> None:
        if self._copy_pool is not None:
            self._copy_pool.shutdown()
        self._close_streams()
        if not self._segment.closed:
            self._segment.leave(self._member)
            self._segment.close()
            # every later call gets -EBADF from C ("closed") instead of a freed handle
            self._ctx.ring = self._ptr = ffi.NULL

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
