"""The pipeline runner: rings, node service, stage processes, finish propagation, failures.

``PipelineRunner(spec).run()``:

1. creates every ring of the pipeline with its durable groups declared up front (each stage
   instance's group, ``sink`` for recorded sources), so nothing published before a process
   attached is lost;
2. starts the node service (in this process, one recorder thread per recorded source): it
   writes those sources to HDF5 under ``<data_root>/<beamtime>/<source>/<stream>/`` and the
   catalog. Results (I(q) with sigma) are recorded this way too — one mechanism for raw and
   processed data, with the catalog, replay by id and master files for free
   (``pipeline.results`` reads them back);
3. spawns ``instances`` processes per stage (multiprocessing ``spawn``) and the simulator
   when the file has ``[simulate]``; the simulator builds its frames at once but publishes
   only when every stage instance reported ``ready`` (warmed up: Numba compiled or loaded),
   so start-up is not measured as streaming and frames do not pile up behind a compile;
4. watches: when every instance of a stage has passed the finish marker of a stream, it
   finishes the stage's output stream (same last id: stages map frames 1:1, naming the
   next output stream); a stage that raises, or a process that dies, stops the pipeline
   with ``PipelineError`` naming the stage, the instance and the exception;
5. waits until the node service stored every finished stream, stops it, removes the rings.

Every process it started is stopped (stop flag, then terminate, then kill) on any exit.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asapo_hpc._core import Segment
from asapo_hpc.client import Producer
from asapo_hpc.config import segment_name
from asapo_hpc.errors import AsapoError, AsapoUnavailableServiceError
from asapo_hpc.pipeline.placement import check_available, placed
from asapo_hpc.pipeline.replay import replay_process
from asapo_hpc.pipeline.spec import PipelineSpec
from asapo_hpc.pipeline.stage import run_instance

_TICK_S = 0.2
_STOP_GRACE_S = 5.0
RECORD_TIMEOUT_S = 120.0

log = logging.getLogger("asapo_hpc.pipeline")


class PipelineError(AsapoError):
    """A stage failed (or the pipeline could not run); ``failures`` lists what happened."""

    def __init__(self, message: str, failures: list[str] | None = None):
        super().__init__(message)
        self.failures = failures or [message]


@dataclass
class PipelineStatus:
    """What the runner knows, given to ``on_tick`` callbacks."""

    elapsed: float = 0.0
    stage_frames: dict[str, int] = field(default_factory=dict)
    simulated: int = 0
    node: dict[str, Any] = field(default_factory=dict)

    def frames_written(self, source: str) -> int:
        """Frames (datasets count once) the node service stored of ``source``."""
        counters = self.node.get(source, {})
        return sum(s["messages_written"] for s in counters.get("streams", {}).values())

    def bytes_written(self, source: str) -> int:
        counters = self.node.get(source, {})
        return sum(s["bytes_written"] for s in counters.get("streams", {}).values())


@dataclass
class PipelineResult:
    """A finished run: seconds, frames per stage, finished streams, files, simulator report."""

    spec: PipelineSpec
    seconds: float
    stage_frames: dict[str, int]
    streams: dict[str, dict[str, int]]  # source -> stream -> last id
    simulation: dict[str, Any] | None
    node: dict[str, Any]
    stage_times: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    """Per stage, each instance's ``stage.StageTimes`` (CPU, work, waits) as a dict."""
    service_cpu: float = 0.0
    """CPU seconds of the runner's process (node service: recording, catalog; the runner)
    from the simulator's go to the end of recording."""

    def files(self, source: str) -> list[Path]:
        """HDF5 files the node service wrote for ``source`` (master files first)."""
        folder = self.spec.data_root / self.spec.beamtime / source
        return sorted(folder.glob("*/*.h5"), key=lambda p: ("master" not in p.name, p))


class _Stopped(Exception):
    """The runner stopped the pipeline before the simulator was told to go."""


def _wait_go(go: Any, stop: Any) -> None:
    """Until the runner says go (every stage ready) or stop."""
    while not go.wait(0.05):
        if stop is not None and stop.is_set():
            raise _Stopped


def _simulate_process(spec_values: dict[str, Any], reports: Any, go: Any = None,
                      stop: Any = None) -> None:
    """Process entry point of the simulator (multiprocessing spawn)."""
    import traceback

    try:
        from asapo_hpc.detectors.simulator import simulate
        from asapo_hpc.pipeline.workers import load_geometry, load_layout

        spec = PipelineSpec.from_dict(spec_values)
        sim = spec.simulate
        options = {**spec.detector, **({"layout": sim.layout} if sim.layout else {})}
        layout = load_layout(options, spec.base_dir)
        report = simulate(spec.beamtime, sim.source, sim.frames, sim.rate, stream=sim.stream,
                          layout=layout, geometry=load_geometry(options, layout, spec.base_dir),
                          seed=sim.seed,
                          before_run=None if go is None else lambda: _wait_go(go, stop))
        reports.put(("simulated", report.frames, report.seconds, report.rate_asked,
                     report.bytes, report.output_wait, report.cpu))
    except _Stopped:
        return
    except BaseException as exc:
        reports.put(("failed", "simulate", 0, f"{type(exc).__name__}: {exc}",
                     traceback.format_exc()))
        raise SystemExit(1) from None


class PipelineRunner:
    """Runs one pipeline to its end; see the module docstring."""

    def __init__(self, spec: PipelineSpec, *, on_tick: Callable[[PipelineStatus], None]
                 | None = None, tick_s: float = _TICK_S):
        self.spec = spec
        self.on_tick = on_tick
        self.tick_s = tick_s
        self._ctx = multiprocessing.get_context("spawn")
        self._reports = self._ctx.Queue()
        self._stop = self._ctx.Event()
        self._go = self._ctx.Event()  # set when every stage instance is ready
        self._cpu_at_go: float | None = None
        self._ready: set[tuple[str, int]] = set()
        self._procs: dict[tuple[str, int], Any] = {}
        self._producers: dict[str, Producer] = {}
        self._service = None
        self._finished: dict[tuple[str, str], set[int]] = {}  # (stage, stream) -> instances
        self._streams: dict[str, dict[str, int]] = {}
        self._frames: dict[tuple[str, int], int] = {}
        self._times: dict[tuple[str, int], dict[str, float]] = {}  # StageTimes of each
        self._simulation: dict[str, Any] | None = None
        self._failures: list[str] = []
        self._exited: set[tuple[str, int]] = set()
        self._failed: set[tuple[str, int]] = set()  # processes that reported a failure

    # ------------------------------------------------------------------ public

    def run(self) -> PipelineResult:
        """Run to the end; raises PipelineError naming the failed stage(s)."""
        start = time.monotonic()
        self._check_placement()
        try:
            self._create_rings()
            self._start_node_service()
            self._start_processes()
            self._watch(start)
            self._wait_recorded(start)
            cpu = 0.0 if self._cpu_at_go is None else time.process_time() - self._cpu_at_go
            node = self._service.counters() if self._service else {}
        finally:
            self._shutdown()
        return PipelineResult(self.spec, time.monotonic() - start, self._stage_frames(),
                              self._streams, self._simulation, node, self._stage_times(),
                              cpu)

    # ------------------------------------------------------------------ setup

    def _check_placement(self) -> None:
        """Every ``cpus`` of the file usable here, before anything starts."""
        spec = self.spec
        check_available("node_cpus", spec.node_cpus)
        for stage in spec.stages:
            check_available(f"stage {stage.name!r}", stage.cpus)
        for what, part in (("[simulate]", spec.simulate), ("[replay]", spec.replay)):
            if part is not None:
                check_available(what, part.cpus)

    def _create_rings(self) -> None:
        for source in self.spec.sources:
            self._clear_leftover_ring(source.name)
            self._producers[source.name] = Producer(
                self.spec.beamtime, source.name, config=self.spec.ring_config(source.name),
                create=True)

    def _clear_leftover_ring(self, source: str) -> None:
        """Refuse a ring of this (beamtime, source) that live processes use: it belongs to
        another pipeline or node service, whose stream this run would join. Remove one that
        nobody uses: a killed run left it, and its old messages must not reach our stages."""
        name = segment_name(self.spec.beamtime, source)
        try:
            segment = Segment.attach(name)
        except AsapoUnavailableServiceError:  # none: the usual case
            return
        try:
            live = segment.live_members()
        finally:
            segment.close()
        if live:
            raise PipelineError(
                f"beamtime {self.spec.beamtime!r}: the ring of source {source!r} is in use by "
                f"{live} live process(es) on this host (another pipeline or node service with "
                "this beamtime); give this pipeline its own beamtime (in the pipeline file, or "
                "reprocess --pipeline-beamtime)")
        log.warning("pipeline: removed ring %s, left by a run that was killed", name)
        Segment.unlink(name)

    def _start_node_service(self) -> None:
        from asapo_hpc.node import NodeConfig, NodeService, SourceConfig
        from asapo_hpc.sink import SinkSettings

        recorded = [SourceConfig(s.name, frame_shape=s.frame_shape, dtype=s.dtype,
                                 parts=s.parts, ring=self.spec.ring_config(s.name))
                    for s in self.spec.sources if s.record]
        if not recorded:
            return
        config = NodeConfig(data_root=self.spec.data_root, beamtime=self.spec.beamtime,
                            sources=tuple(recorded), poll_ms=50,
                            sink=SinkSettings(compression=self.spec.compression))
        with placed("node_cpus", self.spec.node_cpus):  # its threads inherit the placement
            self._service = NodeService(config).start()

    def _start_processes(self) -> None:
        values = self.spec.to_dict()
        for stage in self.spec.stages:
            for i in range(stage.instances):
                self._spawn((stage.name, i), run_instance, f"asapo-{stage.name}-{i}",
                            stage.cpus, (values, stage.name, i, self._reports, self._stop))
        if not self.spec.stages:
            self._cpu_at_go = time.process_time()
            self._go.set()
        sim, replay = self.spec.simulate, self.spec.replay
        if replay is not None:  # a stored stream feeds the first stage
            self._spawn(("replay", 0), replay_process, "asapo-replay", replay.cpus,
                        (values, self._reports, self._go, self._stop))
        if sim is not None:
            self._spawn(("simulate", 0), _simulate_process, "asapo-simulate", sim.cpus,
                        (values, self._reports, self._go, self._stop))

    def _spawn(self, key: tuple[str, int], target: Callable, name: str,
               cpus: tuple[int, ...], args: tuple) -> None:
        """Start one process on ``cpus`` (it inherits them from this thread)."""
        proc = self._ctx.Process(target=target, name=name, args=args, daemon=True)
        with placed(f"{key[0]} cpus", cpus):
            proc.start()
        self._procs[key] = proc

    # ------------------------------------------------------------------ watching

    def _watch(self, start: float) -> None:
        next_tick = 0.0
        while len(self._exited) < len(self._procs):
            self._drain_reports(self.tick_s / 4)
            self._check_exits()
            if self._failures:
                raise PipelineError("pipeline failed: " + "; ".join(self._failures),
                                    self._failures)
            now = time.monotonic()
            if self.on_tick is not None and now >= next_tick:
                next_tick = now + self.tick_s
                self.on_tick(self.status(now - start))
        self._drain_reports(0)
        if self._failures:
            raise PipelineError("pipeline failed: " + "; ".join(self._failures),
                                self._failures)

    def _drain_reports(self, wait: float) -> None:
        try:
            report = self._reports.get(timeout=wait) if wait > 0 else \
                self._reports.get_nowait()
            while True:
                self._handle(report)
                report = self._reports.get_nowait()
        except queue.Empty:
            return

    def _handle(self, report: tuple) -> None:
        kind, stage, index = report[:3]
        if kind == "ready":
            self._ready.add((stage, index))
            if len(self._ready) == sum(s.instances for s in self.spec.stages):
                self._cpu_at_go = time.process_time()
                self._go.set()
        elif kind == "progress":
            self._frames[(stage, index)] = report[3]
        elif kind == "done":
            self._frames[(stage, index)] = report[3]
            self._times[(stage, index)] = report[4]
        elif kind == "finished":
            self._on_finished(stage, index, *report[3:])
        elif kind == "simulated":
            self._simulation = dict(zip(("frames", "seconds", "rate_asked", "bytes",
                                         "output_wait", "cpu"), report[1:], strict=True))
        elif kind == "failed":
            self._failed.add((stage, index))
            what = "simulator" if stage == "simulate" else f"stage {stage!r} instance {index}"
            self._failures.append(f"{what} failed: {report[3]}\n{report[4]}")

    def _on_finished(self, stage_name: str, index: int, stream: str, last_id: int,
                     next_stream: str | None, incomplete: int) -> None:
        stage = self.spec.stage(stage_name)
        self._streams.setdefault(stage.input, {})[stream] = last_id
        if incomplete:
            self._failures.append(f"stage {stage_name!r} instance {index}: stream {stream!r} "
                                  f"ended with {incomplete} incomplete datasets")
        seen = self._finished.setdefault((stage_name, stream), set())
        seen.add(index)
        if len(seen) == stage.instances:
            out = stage.out_stream(stream)
            nxt = stage.out_stream(next_stream) if next_stream else None
            self._producers[stage.output].send_stream_finished_flag(out, last_id, nxt)
            self._streams.setdefault(stage.output, {})[out] = last_id

    def _check_exits(self) -> None:
        for key, proc in self._procs.items():
            if key in self._exited or proc.is_alive():
                continue
            self._exited.add(key)
            proc.join()
            if proc.exitcode != 0:
                self._drain_reports(0.5)  # its "failed" report may still be in the pipe
                stage, index = key
                if key not in self._failed:
                    what = "simulator" if stage == "simulate" else \
                        f"stage {stage!r} instance {index}"
                    self._failures.append(f"{what} died with exit code {proc.exitcode}")

    def status(self, elapsed: float) -> PipelineStatus:
        """A snapshot for progress displays."""
        node = self._service.counters() if self._service else {}
        sim = self._frames_of_source(node)
        return PipelineStatus(elapsed, self._stage_frames(), sim, node)

    def _frames_of_source(self, node: dict[str, Any]) -> int:
        if self.spec.simulate is None:
            return 0
        src = self.spec.source(self.spec.simulate.source)
        counters = node.get(src.name, {})
        received = sum(s["messages_in"] for s in counters.get("streams", {}).values())
        return received // max(src.parts, 1)

    def _stage_times(self) -> dict[str, list[dict[str, float]]]:
        """StageTimes of every instance that finished, per stage (file order), in instance
        order."""
        return {s.name: [self._times[(s.name, i)] for i in range(s.instances)
                         if (s.name, i) in self._times] for s in self.spec.stages}

    def _stage_frames(self) -> dict[str, int]:
        out = {s.name: 0 for s in self.spec.stages}
        for (stage, _), frames in self._frames.items():
            out[stage] += frames
        return out

    # ------------------------------------------------------------------ the end

    def _wait_recorded(self, start: float) -> None:
        """Until the node service stored every finished stream of every recorded source."""
        if self._service is None:
            return
        wanted = [(src, stream) for src, streams in self._streams.items()
                  if self.spec.source(src).record for stream in streams]
        deadline = time.monotonic() + RECORD_TIMEOUT_S
        while True:
            counters = self._service.counters()
            missing = [(src, st) for src, st in wanted
                       if not counters[src]["streams"].get(st, {}).get("finished")]
            if not missing:
                break
            if self._service.failed_sources or time.monotonic() > deadline:
                raise PipelineError(f"the node service did not store streams {missing} "
                                    f"(failed recorders: {self._service.failed_sources})")
            if self.on_tick is not None:
                self.on_tick(self.status(time.monotonic() - start))
            time.sleep(self.tick_s / 2)

    def _shutdown(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + _STOP_GRACE_S
        for proc in self._procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs.values():
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if self._service is not None:
            self._service.stop()
        for producer in self._producers.values():
            producer.close()
        for source in self._producers:  # only the rings this run made: never another's
            Segment.unlink(segment_name(self.spec.beamtime, source))
        self._reports.close()
        self._reports.join_thread()


def run_pipeline(spec: PipelineSpec | str | Path, *,
                 on_tick: Callable[[PipelineStatus], None] | None = None) -> PipelineResult:
    """Run a pipeline (a spec or a pipeline file) to its end."""
    if not isinstance(spec, PipelineSpec):
        spec = PipelineSpec.from_file(spec)
    return PipelineRunner(spec, on_tick=on_tick).run()
