"""The stream writer: frames in, compressed in a thread pool, appended in order to HDF5 files.

One ``StreamWriter`` owns one stream folder. ``submit`` hands it a frame (one array, or one
array per part of a dataset message) and returns a future that resolves to the frame's
``FrameLocation`` once the frame is flushed to its file (or to an ``AsapoLocalIOError`` when
it was not stored). The caller's arrays may be views into shared memory: the writer reads
them only until it calls ``release`` (after compressing, or after writing uncompressed
chunks), and never after.

Threads: compression runs in a pool (bitshuffle and zstandard release the GIL); one writer
thread makes every HDF5 call, in submission order, and flushes once per batch of frames, so
a busy writer flushes rarely and an idle one flushes every frame.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asapo_hpc.errors import AsapoLocalIOError, AsapoTimeoutError, AsapoWrongInputError
from asapo_hpc.sink.codecs import Compression, encode_chunk
from asapo_hpc.sink.datafile import (
    DataFile,
    FrameFormat,
    StoredFile,
    fsync_path,
    scan_data_file,
)
from asapo_hpc.sink.layout import (
    LOCK_FILE_NAME,
    FrameLocation,
    data_file_name,
    existing_data_files,
    stream_folder,
)
from asapo_hpc.sink.master import write_master_file
from asapo_hpc.sink.repair import clear_write_flags

log = logging.getLogger(__name__)

FrameData = np.ndarray | Sequence[np.ndarray]
_STOP = object()

_HINTS = {
    errno.ENOSPC: "the disk is full: free space or point the sink at another data root",
    errno.EDQUOT: "the disk quota is used up: free space or raise the quota",
    errno.EACCES: "permission denied: make the folder writable for this user",
    errno.EPERM: "operation not permitted: make the folder writable for this user",
    errno.EROFS: "the file system is read-only: remount it read-write or use another data root",
    errno.EFBIG: "the file size limit was hit (ulimit -f or the file system's maximum): "
                 "lower frames_per_file",
}


@dataclass(frozen=True)
class SinkSettings:
    """How a stream writer stores frames."""

    frames_per_file: int = 1000
    """Frames per data file; the writer starts the next file after this many."""
    compression: str = "bslz4"
    """``none``, ``bslz4`` (bitshuffle + LZ4, HDF5 filter 32008) or ``zstd`` (filter 32015)."""
    compression_level: int = 3
    """zstd level (ignored by the other codecs)."""
    threads: int = 2
    """Compression threads."""
    max_pending: int = 32
    """Frames submitted but not yet stored; ``submit`` blocks beyond this (backpressure)."""
    max_batch: int = 64
    """Most frames appended between two flushes."""
    group: str | int | None = None
    """Group (name or gid) given access: files 0660 and folders 2770 instead of 0600 / 0700."""
    fsync_every_flush: bool = False
    """fsync after every flush (survives power loss); files are always fsynced when closed."""
    master_file: bool = True
    """Keep ``<stream>_master.h5`` with virtual datasets over all data files up to date."""

    def validated(self) -> SinkSettings:
        """Raise ``AsapoWrongInputError`` for values that can't work."""
        Compression.parse(self.compression)
        for name in ("frames_per_file", "threads", "max_pending", "max_batch"):
            if int(getattr(self, name)) < 1:
                raise AsapoWrongInputError(f"sink setting {name} must be at least 1")
        return self


@dataclass
class SinkCounters:
    """Throughput and backlog of one writer, as plain numbers for a metrics exporter."""

    frames_submitted: int = 0
    frames_written: int = 0
    frames_failed: int = 0
    bytes_submitted: int = 0
    bytes_written: int = 0
    compression_jobs_queued: int = 0
    files_created: int = 0

    @property
    def frames_pending(self) -> int:
        """Frames handed to the writer whose outcome is not known yet."""
        return self.frames_submitted - self.frames_written - self.frames_failed


class _Job:
    __slots__ = ("message_id", "timestamp_ns", "parts", "release", "encoded", "result")

    def __init__(self, message_id: int, timestamp_ns: int, parts: list[np.ndarray],
                 release: Callable[[], None] | None):
        self.message_id = message_id
        self.timestamp_ns = timestamp_ns
        self.parts: list[np.ndarray] | None = parts
        self.release = release
        self.encoded: Future | None = None
        self.result: Future = Future()


def _resolve_gid(group: str | int | None) -> int | None:
    if group is None or isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise AsapoWrongInputError(f"sink group {group!r} does not exist on this host") from None


def _make_folders(folder: Path, gid: int | None) -> None:
    """Create the missing folders of ``folder``: 0700, or 2770 owned by the group."""
    missing = []
    path = folder
    while not path.exists():
        missing.append(path)
        path = path.parent
    mode = 0o700 if gid is None else 0o2770
    for path in reversed(missing):
        try:
            path.mkdir(mode=mode)
        except FileExistsError:
            continue  # another writer made it meanwhile
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, mode)


def _errno_of(exc: BaseException) -> int | None:
    code = getattr(exc, "errno", None)
    if code:
        return code
    match = re.search(r"errno = (\d+)", str(exc))  # HDF5 puts the errno in its message
    return int(match.group(1)) if match else None


def local_io_error(exc: BaseException, action: str, path: Path | str) -> AsapoLocalIOError:
    """An ``AsapoLocalIOError`` naming the file, the cause and what to do."""
    code = _errno_of(exc)
    hint = _HINTS.get(code, "check that the folder is writable and the disk has space")
    message = (
        f"could not {action} {path}: {exc}. Cause: {hint}. Frames not yet flushed were NOT "
        "stored (their futures carry this error) and this writer stopped; fix the cause and "
        "start a new writer on the stream: it resumes after the last stored frame."
    )
    if code is None:
        return AsapoLocalIOError(message)
    return AsapoLocalIOError(code, message, str(path))  # sets errno and filename


class StreamWriter:
    """Writes one stream's frames to ``<data root>/<beamtime>/<source>/<stream>/``.

    Opening a folder that already holds data files resumes: new frames go to a new file
    numbered after the last one, and ``stored_files`` / ``last_message_id`` /
    ``stored_locations()`` tell what is on disk already (complete frames only). Files of a
    killed writer are never appended to; their superblock's "open for writing" flags are
    cleared (``repaired_files``) so plain HDF5 readers open them too, as SWMR readers always
    could. Only one writer per stream folder: a lock file enforces it.
    """

    def __init__(self, data_root: str | os.PathLike, beamtime: str, source: str, stream: str,
                 settings: SinkSettings | None = None, *,
                 frame_shape: Sequence[int] | None = None, dtype: np.dtype | str | None = None,
                 parts: int | None = None):
        self.settings = (settings or SinkSettings()).validated()
        self.compression = Compression.parse(self.settings.compression)
        self.stream = stream
        self.folder = stream_folder(data_root, beamtime, source, stream)
        self.counters = SinkCounters()
        self._attrs = {"beamtime": beamtime, "data_source": source, "stream": stream}
        self._gid = _resolve_gid(self.settings.group)
        self._format: FrameFormat | None = None
        if frame_shape is not None and dtype is not None:
            self._format = FrameFormat(tuple(int(n) for n in frame_shape), np.dtype(dtype),
                                       int(parts or 1))
        self._lock_fd = self._open_folder()
        self.repaired_files: list[Path] = []
        try:
            self.stored_files = self._scan_existing()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self.last_message_id = max((int(s.message_ids.max()) for s in self.stored_files
                                    if len(s.message_ids)), default=0)
        self._next_number = max((s.number for s in self.stored_files), default=0) + 1
        # (path, frames) of every data file with frames: what the master file exposes
        self._file_frames = [(s.path, len(s.message_ids)) for s in self.stored_files
                             if len(s.message_ids)]
        self._file: DataFile | None = None
        self._error: AsapoLocalIOError | None = None
        self._closed = False
        self._submit_lock = threading.Lock()
        self._counter_lock = threading.Lock()
        # Room for frames in flight, one token each (a SimpleQueue: C-level, cheaper per frame
        # than a Semaphore built on a Condition)
        self._room: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.settings.max_pending):
            self._room.put(None)
        self._last_result: Future | None = None
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._pool = (None if self.compression is Compression.NONE else
                      ThreadPoolExecutor(self.settings.threads, "asapo-sink-compress"))
        # a quarter of the frames in flight per append: the rest keep the pool busy meanwhile
        self._min_segment = max(1, self.settings.max_pending // 4)
        self._thread = threading.Thread(target=self._run, name="asapo-sink-writer", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- opening and resume

    def _open_folder(self) -> int:
        try:
            _make_folders(self.folder, self._gid)
            lock_path = self.folder / LOCK_FILE_NAME
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC,
                         0o600 if self._gid is None else 0o660)
        except OSError as exc:
            raise local_io_error(exc, "create the stream folder", self.folder) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AsapoLocalIOError(
                f"another sink writer is writing {self.folder} (it holds {LOCK_FILE_NAME}); "
                "stop it first, one writer per stream"
            ) from None
        return fd

    def _scan_existing(self) -> list[StoredFile]:
        stored = []
        for number, path in existing_data_files(self.folder, self.stream):
            try:
                # We hold the stream's lock, so a writer flag left set is a dead writer's.
                if clear_write_flags(path):
                    log.warning("sink: %s was left by a killed writer; cleared its write "
                                "flags so every HDF5 tool opens it", path)
                    self.repaired_files.append(path)
                stored.append(scan_data_file(path, number))
            except (OSError, KeyError) as exc:
                # e.g. a writer killed between creating the file and its first flush
                log.warning("sink: ignoring unreadable data file %s: %s", path, exc)
                stored.append(StoredFile(number, path, (), np.zeros(0, np.uint64)))
        return stored

    def stored_locations(self) -> Iterator[FrameLocation]:
        """Locations of the frames that were on disk when this writer opened the stream."""
        for stored in self.stored_files:
            for index, message_id in enumerate(stored.message_ids.tolist()):
                yield FrameLocation(message_id, str(stored.path), stored.dataset_paths, index)

    # ----------------------------------------------------------------------- submitting

    def submit(self, message_id: int, data: FrameData, timestamp_ns: int | None = None,
               release: Callable[[], None] | None = None,
               timeout: float | None = None) -> Future:
        """Queue one frame; the future resolves to its ``FrameLocation`` once stored.

        ``data`` is an array, or one array per part of a dataset message. The writer reads
        the arrays until it calls ``release()`` (exactly once, also when the frame fails),
        so they may be views into a buffer the caller reuses afterwards. Blocks while
        ``max_pending`` frames are in flight, raising ``AsapoTimeoutError`` after
        ``timeout`` seconds (the frame is then not taken and ``release`` not called).
        Raises ``AsapoLocalIOError`` once the writer stopped after a write error.
        """
        parts = self._checked_parts(message_id, data)
        try:
            self._room.get(timeout=timeout)
        except queue.Empty:
            raise AsapoTimeoutError(
                f"sink writer of {self.folder} has {self.settings.max_pending} frames in "
                f"flight and stored none for {timeout} s; the disk is slower than the stream"
            ) from None
        job = _Job(int(message_id), time.time_ns() if timestamp_ns is None else int(timestamp_ns),
                   parts, release)
        with self._submit_lock:
            if self._closed or self._error is not None:
                self._room.put(None)
                self._raise_unusable()
            nbytes = sum(p.nbytes for p in parts)
            with self._counter_lock:
                counters = self.counters
                counters.frames_submitted += 1
                counters.bytes_submitted += nbytes
                counters.compression_jobs_queued += self._pool is not None
            if self._pool is not None:
                job.encoded = self._pool.submit(self._encode, job)
            self._last_result = job.result
            self._jobs.put(job)
        return job.result

    def write(self, message_id: int, data: FrameData,
              timestamp_ns: int | None = None) -> FrameLocation:
        """Store one frame and wait for it: ``submit(...).result()``."""
        return self.submit(message_id, data, timestamp_ns).result()

    def _checked_parts(self, message_id: int, data: FrameData) -> list[np.ndarray]:
        if int(message_id) < 1:
            raise AsapoWrongInputError(f"message ids start at 1, got {message_id}")
        fmt = self._format  # the common case first: one array of the writer's format
        if (fmt is not None and fmt.parts == 1 and type(data) is np.ndarray
                and data.shape == fmt.frame_shape and data.dtype == fmt.dtype):
            return [data]
        if isinstance(data, np.ndarray):
            parts = [data]
        elif isinstance(data, Sequence) and data and all(isinstance(p, np.ndarray) for p in data):
            parts = list(data)
        else:
            raise AsapoWrongInputError(
                "sink frames are numpy arrays, or a non-empty list of arrays (one per part)"
            )
        fmt = FrameFormat(parts[0].shape, parts[0].dtype, len(parts))
        with self._submit_lock:
            if self._format is None:
                self._format = fmt
        if fmt != self._format or any(p.shape != fmt.frame_shape or p.dtype != fmt.dtype
                                       for p in parts):
            expected = self._format
            raise AsapoWrongInputError(
                f"message {message_id}: this writer stores {expected.parts} part(s) of "
                f"{expected.frame_shape} {expected.dtype}, got "
                f"{[(p.shape, str(p.dtype)) for p in parts]}; start a new stream for another "
                "frame format"
            )
        if not parts[0].shape:
            raise AsapoWrongInputError("sink frames must have at least one dimension")
        return parts

    def _raise_unusable(self) -> None:
        if self._error is not None:
            raise AsapoLocalIOError(f"frame NOT stored: the writer stopped earlier. {self._error}")
        raise AsapoWrongInputError(f"the sink writer of {self.folder} is closed")

    def _count(self, **deltas: int) -> None:
        with self._counter_lock:
            for name, delta in deltas.items():
                setattr(self.counters, name, getattr(self.counters, name) + delta)

    # ------------------------------------------------------------------ worker threads

    def _encode(self, job: _Job) -> list:
        try:
            return [encode_chunk(p, self.compression, self.settings.compression_level)
                    for p in job.parts]
        finally:
            self._release(job)
            with self._counter_lock:
                self.counters.compression_jobs_queued -= 1

    def _release(self, job: _Job) -> None:
        job.parts = None  # drop our references to the caller's buffers
        release, job.release = job.release, None
        if release is not None:
            try:
                release()
            except Exception:
                log.exception("sink: release callback of message %d failed", job.message_id)

    def _run(self) -> None:
        try:
            stopping = False
            while not stopping:
                batch, stopping = self._next_batch()
                while batch:
                    batch = self._write_segment(batch)
        except BaseException as exc:  # a bug: still never leave a frame unanswered
            log.exception("sink writer thread failed")
            self._stop_with(local_io_error(exc, "write", self.folder))
            self._fail_queued()
        finally:
            self._finish_file()

    def _next_batch(self) -> tuple[list[_Job], bool]:
        first = self._jobs.get()
        if first is _STOP:
            return [], True
        batch = [first]
        while len(batch) < self.settings.max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return batch, True
            batch.append(job)
        return batch, False

    def _write_segment(self, batch: list[_Job]) -> list[_Job]:
        """Append the head of ``batch`` that fits in the current file; return the rest."""
        if self._error is not None:
            for job in batch:
                self._fail(job, self._error)
            return []
        path = self.folder / data_file_name(self.stream, self._next_number)
        try:
            data_file = self._file_with_room()
            path = data_file.path
            room = self.settings.frames_per_file - data_file.frames
            room = min(room, self._ready_prefix(batch, self._min_segment))
            segment, rest = batch[:room], batch[room:]
            jobs, chunks = self._chunks_of(segment)
            first = data_file.append(chunks, [j.message_id for j in jobs],
                                     [j.timestamp_ns for j in jobs])
            for job in jobs:
                self._release(job)  # uncompressed chunks are in the file now
            data_file.flush()
            if self.settings.fsync_every_flush:
                fsync_path(data_file.path)
        except Exception as exc:
            self._stop_with(local_io_error(exc, "write frames to", path))
            for job in batch:
                self._fail(job, self._error)
            self._abandon_file()
            return []
        self._resolve(jobs, data_file, first,
                      sum(memoryview(c).nbytes for cs in chunks for c in cs))
        return rest

    @staticmethod
    def _ready_prefix(jobs: list[_Job], at_least: int) -> int:
        """How many leading jobs to write now: the first `at_least` (waited for) and those
        after them already compressed. Waiting for a whole batch left the pool idle while
        the batch was written (its frames held every max_pending slot); writing each frame
        as it came paid the per-append HDF5 calls and the flush per frame."""
        n = min(len(jobs), at_least)
        while n < len(jobs) and (jobs[n].encoded is None or jobs[n].encoded.done()):
            n += 1
        return n

    def _chunks_of(self, segment: list[_Job]) -> tuple[list[_Job], list[list]]:
        # one wake-up when the whole segment is compressed, not one per frame
        futures.wait([job.encoded for job in segment if job.encoded is not None])
        jobs, chunks = [], []
        for job in segment:
            if job.encoded is None:
                encoded = [np.ascontiguousarray(p) for p in job.parts]
            else:
                try:
                    encoded = job.encoded.result()
                except Exception as exc:
                    self._fail(job, AsapoLocalIOError(
                        f"frame of message {job.message_id} NOT stored: compressing it failed "
                        f"({exc!r})"))
                    continue
            jobs.append(job)
            chunks.append(encoded)
        return jobs, chunks

    def _resolve(self, jobs: list[_Job], data_file: DataFile, first: int, nbytes: int) -> None:
        self._count(frames_written=len(jobs), bytes_written=nbytes)
        path = str(data_file.path)
        for index, job in enumerate(jobs, start=first):
            job.result.set_result(
                FrameLocation(job.message_id, path, data_file.dataset_paths, index))
        for _ in jobs:
            self._room.put(None)
        if jobs:
            self.last_message_id = jobs[-1].message_id

    def _fail(self, job: _Job, error: BaseException) -> None:
        self._release(job)
        self._count(frames_failed=1)
        if not job.result.done():
            job.result.set_exception(error)
        self._room.put(None)

    def _stop_with(self, error: AsapoLocalIOError) -> None:
        with self._submit_lock:
            if self._error is None:
                self._error = error
                log.error("sink writer stopped: %s", error)

    def _fail_queued(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                self._fail(job, self._error)

    # ------------------------------------------------------------------------- files

    def _file_with_room(self) -> DataFile:
        if self._file is not None and self._file.frames >= self.settings.frames_per_file:
            self._finish_file()
        if self._file is None:
            number = self._next_number
            self._next_number += 1
            path = self.folder / data_file_name(self.stream, number)
            self._file = DataFile(path, number, self._format, self.compression,
                                  self.settings.compression_level, self._gid, self._attrs)
            self._count(files_created=1)
        return self._file

    def _finish_file(self) -> None:
        """Close the current file (flush, fsync) and refresh the master file."""
        data_file, self._file = self._file, None
        if data_file is None:
            return
        try:
            data_file.close()
            fsync_path(data_file.path)
            fsync_path(self.folder)
        except Exception as exc:
            self._stop_with(local_io_error(exc, "close", data_file.path))
            return
        if data_file.frames:
            self._file_frames.append((data_file.path, data_file.frames))
        self._refresh_master()

    def _abandon_file(self) -> None:
        data_file, self._file = self._file, None
        if data_file is not None:
            try:
                data_file.close()
            except Exception as exc:  # already failing: keep the first error
                log.warning("sink: closing %s after an error failed too: %s", data_file.path,
                            exc)

    def _refresh_master(self) -> None:
        if not self.settings.master_file or self._format is None:
            return
        try:
            write_master_file(self.folder, self.stream, self._file_frames, self._format,
                              self._gid, self._attrs)
        except Exception as exc:  # the data files are the record; the master is a view
            log.warning("sink: could not update the master file of %s: %s", self.folder, exc)

    # ----------------------------------------------------------------------- closing

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every submitted frame is stored or failed; raise if the writer stopped."""
        last = self._last_result
        if last is not None:
            try:
                last.exception(timeout=timeout)
            except TimeoutError:
                raise AsapoTimeoutError(
                    f"sink writer of {self.folder}: frames still pending after {timeout} s"
                ) from None
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Store what was submitted, close the files and the lock; safe to call twice."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._jobs.put(_STOP)
        self._thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        os.close(self._lock_fd)

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
