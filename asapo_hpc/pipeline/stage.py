"""One instance of a stage: the body of a spawned process.

Work sharing between the ``instances`` of a stage is by frame id: instance ``i`` of ``n``
reads the input ring in its own durable consumer group ``<stage>.<i>of<n>`` and processes
the frames with ``(id - 1) % n == i``, acknowledging the others at once. Why not one shared
group: a group hands each *message* to one member, so the 12 parts of a dataset would be
scattered over the members, and only one member would be told that a stream finished. Own
groups keep a frame's parts together, tell every instance about every finish marker, and
cost one descriptor claim per message and instance (no data is touched). The price: the
split is static, so a slow instance is not helped by the others.

Per frame: the parts are numpy views into the input ring (no copy); built-in workers write
into a slot reserved in the output ring (no copy) which is committed with the same id, in
the stream ``output_stream`` names. The metadata carries ``trace``: one
``[stage, t_in_ns, t_out_ns]`` entry per stage passed (t_in = publication of the input,
the last part for a dataset), from which per-stage latencies are computed.

Before it reports ``ready``, the instance sets its Numba thread count (the stage's
``threads``; 0 = the cores shared out over every busy process of the pipeline: parallel
regions on an oversubscribed machine wait for descheduled threads at every join) and runs
its built-in worker once on a zero frame, so Numba compiles / cache loads happen before the
runner lets the simulator start, not while frames queue up.

The instance talks to the runner over a queue: ``ready``, ``progress``, ``finished`` (a
stream ended: the runner finishes the output stream once every instance passed the marker),
``failed`` (the exception and traceback; the process then exits with code 1) and ``done``
(with its ``StageTimes``: where its time went while frames flowed, which names a pipeline's
bottleneck: the stage that never waits for input).
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from asapo_hpc.client import Consumer, Message, Producer
from asapo_hpc.errors import AsapoEndOfStreamError, AsapoStreamFinishedError
from asapo_hpc.pipeline.spec import PipelineSpec, StageSpec
from asapo_hpc.pipeline.workers import make_worker

OUTPUT_META_CAPACITY = 4096
PRODUCER_TIMEOUT_MS = 300_000  # a stalled downstream (first Numba compile) is waited for
_POLL_MS = 200
_PROGRESS_EVERY_S = 0.25


@dataclass
class StageTimes:
    """Where one instance's time went from its first input to its last output (seconds).

    ``input_wait``: waiting for input after the first message came; ``output_wait``: waiting
    for room in the output ring (a slow stage downstream); ``work``: the worker; ``cpu``: the
    process's CPU (user + system, every thread) over the same ``wall`` span. The time before
    the first message (other stages warming up, the simulator not yet started) is left out.
    """

    frames: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    input_wait: float = 0.0
    work: float = 0.0
    output_wait: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class _Clock:
    """Accumulates StageTimes; perf_counter / process_time cost ~0.1 µs a call."""

    def __init__(self) -> None:
        self.times = StageTimes()
        self._start: tuple[float, float] | None = None
        self._waited = 0.0  # input waits so far; the span's share is taken at each frame

    def polled(self, waited: float, got: bool) -> None:
        """A poll for input took ``waited`` s (``got``: it brought messages); the first
        message starts the span."""
        if self._start is not None:
            self._waited += waited
        elif got:
            self._start = (time.perf_counter(), time.process_time())

    def frame_done(self) -> None:
        if self._start is not None:
            t = self.times
            t.frames += 1
            t.wall = time.perf_counter() - self._start[0]
            t.cpu = time.process_time() - self._start[1]
            t.input_wait = self._waited


class OwnSlots:
    """Which output slots still hold this instance's own output, by ring position.

    A reservation at position ``seq`` of a ring of ``slot_count`` slots reuses the slots
    the reservation at ``seq - slot_count`` had; if that one was ours (and we committed
    it), nobody has written there since: every writer writes only inside its own
    reservations, and the ring hands each position to one reservation."""

    def __init__(self, slot_count: int):
        self.slot_count = slot_count
        self._last: dict[int, int] = {}  # first slot -> position of our last output there

    def reused(self, seq: int) -> bool:
        return self._last.get(seq % self.slot_count) == seq - self.slot_count

    def wrote(self, seq: int) -> None:
        self._last[seq % self.slot_count] = seq


def warm_up_parts(shape: tuple[int, ...], dtype: Any, n: int) -> list[np.ndarray]:
    """``n`` zero frames typed as the ring delivers frames: read-only. Numba compiles a
    kernel once per argument type, and a writable array is another type: warming up on
    writable zeros left the real signature to compile on the first frame (seconds, while
    the stream waits, whenever the kernel cache is cold: a fresh install, a code change)."""
    parts = []
    for _ in range(n):
        zeros = np.zeros(shape, dtype)
        zeros.flags.writeable = False
        parts.append(zeros)
    return parts


class StageInstance:
    """Instance ``index`` of ``stage``: input ring -> worker -> output ring."""

    def __init__(self, spec: PipelineSpec, stage: StageSpec, index: int, reports: Any,
                 stop: Any):
        self.spec, self.stage, self.index = spec, stage, index
        self.group = stage.group(index)
        self._reports, self._stop = reports, stop
        self.source = spec.source(stage.input)
        self.output = spec.source(stage.output)
        self.worker = make_worker(stage.worker, spec.stage_options(stage), self.source,
                                  spec.base_dir)
        self.consumer = Consumer(spec.beamtime, stage.input, create=False,
                                 batch_capacity=max(stage.batch, 1))
        self.producer = Producer(spec.beamtime, stage.output, create=False,
                                 timeout_ms=PRODUCER_TIMEOUT_MS)
        self._pending: dict[tuple[str, int], dict[int, Message]] = {}
        if self.worker.out_shape is not None:  # a built-in worker's output: dtype, bytes
            dtype = np.dtype(self.worker.out_dtype)
            self._out_format = (dtype, int(np.prod(self.worker.out_shape)) * dtype.itemsize)
            self._slots = OwnSlots(self.producer.segment.config["slot_count"])
        self.frames = 0
        self.clock = _Clock()
        self._reported_at = 0.0

    def warm_up(self) -> None:
        """Run a built-in worker once on zeros (Numba compile / cache load, engine tables)."""
        worker = self.worker
        if worker.out_shape is None:  # a user function: may have side effects, not called
            return
        src = self.source
        worker(warm_up_parts(src.frame_shape, src.dtype, max(src.parts, 1)), {},
               np.empty(worker.out_shape, worker.out_dtype))

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        """Process until a stream finishes without a next stream (or the runner stops us)."""
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                batch = self.consumer.get_next_batch(self.group, self.stage.batch,
                                                     timeout_ms=_POLL_MS)
            except AsapoStreamFinishedError as exc:
                if self._on_finish(exc):
                    break
                continue
            except AsapoEndOfStreamError:
                self.clock.polled(time.perf_counter() - t0, got=False)
                if os.getppid() == 1:  # the runner is gone: nobody will stop us
                    break
                continue
            self.clock.polled(time.perf_counter() - t0, got=True)
            self._take(list(batch))
            self._progress()
        self._progress(force=True)

    def _take(self, messages: list[Message]) -> None:
        n = self.stage.instances
        others = [m for m in messages if (m.id - 1) % n != self.index]
        if others:
            self.consumer.acknowledge_batch(self.group, others)
        for msg in messages:
            if (msg.id - 1) % n == self.index:
                self._add(msg)

    def _add(self, msg: Message) -> None:
        dataset = msg.dataset
        if dataset is None:
            self._process([msg])
            return
        key = (msg.stream, msg.id)
        parts = self._pending.setdefault(key, {})
        parts[dataset[0]] = msg
        if len(parts) == dataset[1]:
            del self._pending[key]
            self._process([parts[k] for k in sorted(parts)])

    # ------------------------------------------------------------------ one frame

    def _process(self, messages: list[Message]) -> None:
        src = self.source
        parts = [m.array(src.dtype, src.frame_shape) for m in messages]
        first = messages[0]
        meta_in = first.meta
        meta = {k: v for k, v in meta_in.items() if k not in ("module", "trace")}
        trace = list(meta_in.get("trace", []))
        t_in = max(m.timestamp for m in messages)
        stream = self.stage.out_stream(first.stream)
        if self.worker.out_shape is not None:
            self._publish_in_place(first.id, parts, meta_in, meta, trace, t_in, stream)
        else:
            self._publish_copy(first.id, parts, meta_in, meta, trace, t_in, stream)
        self.consumer.acknowledge_batch(self.group, messages)
        self.frames += 1
        self.clock.frame_done()

    def _publish_in_place(self, id: int, parts: list[np.ndarray], meta_in: dict, meta: dict,
                          trace: list, t_in: int, stream: str) -> None:
        """A built-in worker writes straight into a reserved output slot (no copy)."""
        worker, times = self.worker, self.clock.times
        dtype, nbytes = self._out_format
        t0 = time.perf_counter()
        with self.producer.reserve(nbytes, meta_capacity=OUTPUT_META_CAPACITY) as res:
            t1 = time.perf_counter()
            reused = self._slots.reused(res.seq)
            meta.update(worker(parts, meta_in, res.array(dtype, worker.out_shape),
                               out_reused=reused) or {})
            times.work += time.perf_counter() - t1
            meta["trace"] = [*trace, [self.stage.name, t_in, time.time_ns()]]
            res.commit(id, meta, stream=stream)
            self._slots.wrote(res.seq)  # only once the whole output is in
        times.output_wait += t1 - t0

    def _publish_copy(self, id: int, parts: list[np.ndarray], meta_in: dict, meta: dict,
                      trace: list, t_in: int, stream: str) -> None:
        """A user function's result is published with one copy."""
        times = self.clock.times
        t0 = time.perf_counter()
        result = np.ascontiguousarray(self.worker(parts, meta_in))
        t1 = time.perf_counter()
        times.work += t1 - t0
        meta["trace"] = [*trace, [self.stage.name, t_in, time.time_ns()]]
        self.producer.send(id, result, meta, stream=stream)
        times.output_wait += time.perf_counter() - t1  # the copy, and room if the ring is full

    # ------------------------------------------------------------------ streams, reports

    def _on_finish(self, exc: AsapoStreamFinishedError) -> bool:
        """Report the finished stream; True when no stream follows (the instance ends)."""
        stream = exc.stream or ""
        incomplete = [k for k in self._pending if k[0] == stream]
        for key in incomplete:  # parts that never completed a dataset: let them go
            self.consumer.acknowledge_batch(self.group, list(self._pending.pop(key).values()))
        self._reports.put(("finished", self.stage.name, self.index, stream,
                           exc.last_id or 0, exc.next_stream, len(incomplete)))
        return exc.next_stream is None

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._reported_at >= _PROGRESS_EVERY_S:
            self._reported_at = now
            self._reports.put(("progress", self.stage.name, self.index, self.frames))

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()


def set_threads(n: int) -> None:
    """Numba's thread count in this process (at most its configured maximum).

    OpenMP workers (Numba's default layer here) otherwise spin after every parallel region
    before they sleep: measured in the demo chain with 2 threads per stage on 2 cores, the
    stitch stage burnt 9-10 ms of CPU per frame instead of 3.5-4 and the pipeline fell from
    ~125 to ~70 frames/s. Stages share the cores with each other, so their workers sleep at
    once (``OMP_WAIT_POLICY=PASSIVE``, read when the OpenMP runtime loads: before the first
    parallel call); a value set by the user wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import numba

    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


def run_instance(spec_values: dict[str, Any], stage_name: str, index: int, reports: Any,
                 stop: Any) -> None:
    """Process entry point (multiprocessing spawn): run, report, exit 1 on any error."""
    instance = None
    try:
        spec = PipelineSpec.from_dict(spec_values)
        set_threads(spec.stage_threads(spec.stage(stage_name)))
        instance = StageInstance(spec, spec.stage(stage_name), index, reports, stop)
        instance.warm_up()
        reports.put(("ready", stage_name, index))
        instance.run()
        reports.put(("done", stage_name, index, instance.frames,
                     instance.clock.times.as_dict()))
    except BaseException as exc:  # reported, then the exit code says it too
        reports.put(("failed", stage_name, index, f"{type(exc).__name__}: {exc}",
                     traceback.format_exc()))
        raise SystemExit(1) from None
    finally:
        if instance is not None:
            instance.close()
