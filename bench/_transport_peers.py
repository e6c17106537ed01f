"""The built-in peers of bench/transport.py: the transports the C ring must beat.

Each producer copies the prepared source into the transport once per message; each consumer
calls ``workload.touch`` once per message on the data where the transport delivered it.
Loops are written out per peer (no per-message helper call) so that every peer pays only
its own API's costs.
"""

from __future__ import annotations

import fcntl
import io
import os
import secrets
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from bench._transport_api import ConsumerReport, Peer, Start, Workload, now_ns, register_peer

PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux value; Python < 3.10 lacks it
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
SHM_PREFIX = "asapo_bench_"


def _source_for_bytes_api(workload: Workload) -> Any:
    """Small messages go as bytes (what a Python caller has); frames as numpy arrays."""
    source = workload.make_source()
    return source if workload.is_frame else source.tobytes()


# --- multiprocessing.Queue --------------------------------------------------------------


def mpqueue_setup(workload: Workload, ctx: Any, tmpdir: str) -> tuple[Any, Any]:
    queue = ctx.Queue(maxsize=workload.depth)
    return queue, queue


def mpqueue_produce(queue: Any, workload: Workload, start: Start) -> None:
    source = _source_for_bytes_api(workload)  # pickled (copied) by the queue on every put
    put = queue.put
    start()
    for _ in range(workload.count):
        put(source)
    queue.close()
    queue.join_thread()  # flush the feeder thread before exiting


def mpqueue_consume(queue: Any, workload: Workload, start: Start) -> ConsumerReport:
    get, touch = queue.get, workload.touch
    start()
    checksum = touch(get())
    first = now_ns()
    for _ in range(workload.count - 1):
        checksum += touch(get())
    return ConsumerReport(first, now_ns(), workload.count, checksum)


def mpqueue_teardown(queue: Any) -> None:
    queue.close()


# --- multiprocessing.shared_memory ring + index queues ----------------------------------
# One SharedMemory of `depth` slots. The producer fills slots in ring order: the first
# `depth` messages need no credit, after that it waits for a slot index coming back on the
# `free` queue. The consumer reads each slot in place through a numpy view made once.


def _shm_ring_setup(workload: Workload, ctx: Any, simple: bool) -> tuple[Any, Any]:
    name = f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    shm = shared_memory.SharedMemory(name=name, create=True, size=workload.depth * workload.nbytes)
    np.frombuffer(shm.buf, np.uint8).fill(0)  # allocate the pages now, not in the first lap
    make_queue = ctx.SimpleQueue if simple else ctx.Queue
    channel = {"shm_name": shm.name, "ready": make_queue(), "free": make_queue()}
    return channel, (shm, channel)


def shmring_setup(workload: Workload, ctx: Any, tmpdir: str) -> tuple[Any, Any]:
    return _shm_ring_setup(workload, ctx, simple=False)


def shmring_simple_setup(workload: Workload, ctx: Any, tmpdir: str) -> tuple[Any, Any]:
    return _shm_ring_setup(workload, ctx, simple=True)


def _slot_views(shm: shared_memory.SharedMemory, workload: Workload) -> np.ndarray:
    dtype = np.uint16 if workload.is_frame else np.uint8
    itemsize = np.dtype(dtype).itemsize
    return np.ndarray((workload.depth, workload.nbytes // itemsize), dtype, buffer=shm.buf)


def _map_pages(shm: shared_memory.SharedMemory) -> None:
    """Fault in this process's mapping before the clock starts (a ring maps once)."""
    np.frombuffer(shm.buf, np.uint8)[::4096].sum()


def _flush(queue: Any) -> None:
    if hasattr(queue, "join_thread"):  # multiprocessing.Queue has a feeder thread
        queue.close()
        queue.join_thread()


def _close_shm(shm: shared_memory.SharedMemory) -> None:
    try:
        shm.close()
    except BufferError:
        pass  # a view survives in an exception's traceback; the exit unmaps it anyway


def _fill_frames(shm: Any, channel: dict, workload: Workload, start: Start) -> None:
    slots = _slot_views(shm, workload)
    source = workload.make_source()
    ready_put, free_get, copyto = channel["ready"].put, channel["free"].get, np.copyto
    start()
    first_lap = min(workload.depth, workload.count)
    for slot in range(first_lap):
        copyto(slots[slot], source)
        ready_put(slot)
    for _ in range(workload.count - first_lap):
        slot = free_get()
        copyto(slots[slot], source)
        ready_put(slot)


def _fill_small(shm: Any, channel: dict, workload: Workload, start: Start) -> None:
    raw, size = shm.buf, workload.nbytes
    source = workload.make_source().tobytes()
    ready_put, free_get = channel["ready"].put, channel["free"].get
    start()
    first_lap = min(workload.depth, workload.count)
    for slot in range(first_lap):
        raw[slot * size : slot * size + size] = source
        ready_put(slot)
    for _ in range(workload.count - first_lap):
        slot = free_get()
        raw[slot * size : slot * size + size] = source
        ready_put(slot)


def shmring_produce(channel: dict, workload: Workload, start: Start) -> None:
    shm = shared_memory.SharedMemory(name=channel["shm_name"])
    _map_pages(shm)
    try:
        fill = _fill_frames if workload.is_frame else _fill_small
        fill(shm, channel, workload, start)
        _flush(channel["ready"])
    finally:
        _close_shm(shm)


def shmring_consume(channel: dict, workload: Workload, start: Start) -> ConsumerReport:
    shm = shared_memory.SharedMemory(name=channel["shm_name"])
    _map_pages(shm)
    # In place: frames through a numpy view of the ring made once, small messages through a
    # memoryview slice of the slot (cheaper per message than a numpy row for 1 KiB).
    if workload.is_frame:
        slots = _slot_views(shm, workload)
    else:
        raw, size = shm.buf, workload.nbytes
        slots = [raw[i * size : (i + 1) * size] for i in range(workload.depth)]
    ready_get, free_put, touch = channel["ready"].get, channel["free"].put, workload.touch
    start()
    slot = ready_get()
    checksum = touch(slots[slot])
    first = now_ns()
    free_put(slot)
    for _ in range(workload.count - 1):
        slot = ready_get()
        checksum += touch(slots[slot])
        free_put(slot)
    last = now_ns()
    _flush(channel["free"])
    if not workload.is_frame:
        for view in slots:
            view.release()
    del slots
    _close_shm(shm)
    return ConsumerReport(first, last, workload.count, checksum)


def shmring_teardown(handle: tuple) -> None:
    shm, channel = handle
    for queue in (channel["ready"], channel["free"]):
        queue.close()
    shm.close()
    shm.unlink()


# --- pyzmq PUSH/PULL over ipc:// --------------------------------------------------------


def zmq_setup(workload: Workload, ctx: Any, tmpdir: str) -> tuple[Any, Any]:
    return {"endpoint": f"ipc://{tmpdir}/transport.ipc"}, None


def zmq_produce(channel: dict, workload: Workload, start: Start) -> None:
    import zmq

    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.SNDHWM, workload.depth)
    socket.setsockopt(zmq.LINGER, -1)  # deliver everything before the process exits
    socket.connect(channel["endpoint"])
    source = _source_for_bytes_api(workload)
    copy = not workload.is_frame  # pyzmq's advice: copy small messages, lend large buffers
    send = socket.send
    start()
    for _ in range(workload.count):
        send(source, copy=copy)
    socket.close()
    context.term()


def zmq_consume(channel: dict, workload: Workload, start: Start) -> ConsumerReport:
    import zmq

    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    socket.setsockopt(zmq.RCVHWM, workload.depth)
    socket.bind(channel["endpoint"])
    touch, recv = workload.touch, socket.recv
    start()
    if workload.is_frame:
        frame = lambda: np.frombuffer(recv(copy=False).buffer, np.uint16)  # noqa: E731
        checksum = touch(frame())
        first = now_ns()
        for _ in range(workload.count - 1):
            checksum += touch(frame())
    else:
        checksum = touch(recv())
        first = now_ns()
        for _ in range(workload.count - 1):
            checksum += touch(recv())
    last = now_ns()
    socket.close(linger=0)
    context.term()
    return ConsumerReport(first, last, workload.count, checksum)


# --- os pipe (a FIFO in the run's temp dir), enlarged to 1 MiB --------------------------
# Messages have the workload's fixed size, so the stream needs no framing header.


def pipe_setup(workload: Workload, ctx: Any, tmpdir: str) -> tuple[Any, Any]:
    path = os.path.join(tmpdir, "transport.fifo")
    os.mkfifo(path, 0o600)
    return {"path": path}, None


def _enlarge_pipe(fd: int) -> None:
    fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
    if fcntl.fcntl(fd, F_GETPIPE_SZ) < PIPE_BYTES:
        raise OSError(f"could not enlarge the pipe to {PIPE_BYTES} bytes")


def _write_rest(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def pipe_produce(channel: dict, workload: Workload, start: Start) -> None:
    fd = os.open(channel["path"], os.O_WRONLY)  # blocks until the consumer opens
    _enlarge_pipe(fd)
    source = workload.make_source()
    view = memoryview(source).cast("B")
    payload = view if workload.is_frame else source.tobytes()
    size, write = workload.nbytes, os.write
    start()
    for _ in range(workload.count):
        written = write(fd, payload)
        if written != size:  # only large writes can be split
            _write_rest(fd, view[written:])
    os.close(fd)


def _read_rest(readinto: Any, view: memoryview, got: int) -> None:
    while got < len(view):
        n = readinto(view[got:])
        if not n:
            raise EOFError("the producer closed the pipe in the middle of a message")
        got += n


def pipe_consume(channel: dict, workload: Workload, start: Start) -> ConsumerReport:
    stream = io.FileIO(channel["path"], "rb")  # readinto is one read(2) on the FIFO
    _enlarge_pipe(stream.fileno())
    dtype = np.uint16 if workload.is_frame else np.uint8
    buffer = np.zeros(workload.nbytes // np.dtype(dtype).itemsize, dtype)
    buffer.fill(0)  # fault the pages in now: the buffer is reused for every message
    view = memoryview(buffer).cast("B")
    readinto, touch, size = stream.readinto, workload.touch, workload.nbytes
    delivered = buffer if workload.is_frame else view  # small: bytes-like, like other peers
    start()
    got = readinto(view)
    if got != size:
        _read_rest(readinto, view, got)
    checksum = touch(delivered)
    first = now_ns()
    for _ in range(workload.count - 1):
        got = readinto(view)
        if got != size:  # only large reads come in pieces
            _read_rest(readinto, view, got)
        checksum += touch(delivered)
    last = now_ns()
    stream.close()
    return ConsumerReport(first, last, workload.count, checksum)


register_peer(
    Peer(
        "mp-queue",
        "multiprocessing.Queue(maxsize=depth); pickles every message",
        mpqueue_setup,
        mpqueue_produce,
        mpqueue_consume,
        mpqueue_teardown,
    )
)
register_peer(
    Peer(
        "shm-ring+queues",
        "multiprocessing.shared_memory ring of depth slots; slot indices through two "
        "multiprocessing.Queue; consumer reads the slot in place (numpy view)",
        shmring_setup,
        shmring_produce,
        shmring_consume,
        shmring_teardown,
    )
)
register_peer(
    Peer(
        "shm-ring+simplequeues",
        "as shm-ring+queues, with multiprocessing.SimpleQueue (no feeder thread)",
        shmring_simple_setup,
        shmring_produce,
        shmring_consume,
        shmring_teardown,
    )
)
register_peer(
    Peer(
        "pyzmq-ipc",
        "pyzmq PUSH/PULL over ipc:// in a temp dir, HWM=depth; copy=False for frames "
        "(consumer reads the zmq frame in place), copy=True for small messages",
        zmq_setup,
        zmq_produce,
        zmq_consume,
    )
)
register_peer(
    Peer(
        "os-pipe-1MiB",
        "FIFO enlarged to 1 MiB with F_SETPIPE_SZ; one write(2)/read(2) per small message; "
        "consumer reads into a buffer allocated once",
        pipe_setup,
        pipe_produce,
        pipe_consume,
    )
)
