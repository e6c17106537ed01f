"""The pipeline file: sources (rings), stages (workers between rings), an optional simulator.

A TOML file (``asapo-hpc pipeline run FILE``)::

    beamtime = "demo"
    data_root = "./asapo_demo"      # where the node service writes HDF5 + catalog
    compression = "bslz4"           # sink compression of recorded sources

    [detector]                      # for the built-in workers and the simulator
    layout = ""                     # Lambda layout TOML (default: the shipped example)
    poni = ""                       # PONI file (default: beam centred, 30 cm, 0.5 Å)

    [[sources]]                     # a ring; stage outputs not listed here are added
    name = "raw"
    frame_shape = [512, 1536]
    dtype = "uint16"
    parts = 12
    record = true                   # the node service stores it (HDF5, group "sink")
    frames_in_ring = 8              # ring size in frames (slot = one part); or [sources.ring]

    [[stages]]
    name = "stitch"
    worker = "stitch"               # stitch | azint | "package.module:function"
    input = "raw"
    output = "stitched"
    instances = 1
    threads = 0                     # Numba threads per instance, 0 = auto
    cpus = []                       # CPUs its processes run on, [] = any (placement.py)
    output_stream = "{stream}"      # output stream name from the input stream's
    [stages.options]                # given to the worker
    large_pixels = true
                                    # an azint stage: npt, unit, method, ...; with
                                    # from_modules = true it reads the 12-part dataset
                                    # itself (no stitch stage needed; see README)

    [simulate]                      # optional: a Lambda simulator feeds a source
    source = "raw"
    frames = 100
    rate = 0                        # frames/s, 0 = as fast as possible
    stream = "default"
    cpus = []                       # as a stage's

    [replay]                        # optional, instead of [simulate]: a stored stream feeds a
    source = "raw"                  #   source (not recorded again), read from disk
    stream = "scan1"                #   (asapo-hpc reprocess --pipeline writes this table)
    from_source = "raw"             # the stored source (default: source)
    data_root = ""                  # the stored data root (default: data_root)
    cpus = []                       # as a stage's

The top level may also say ``node_cpus = [0]``: the CPUs of the node service's threads
(recording, catalog). Every ``cpus`` key is explicit placement, none is set by default:
``pipeline.placement`` says how it is applied and why a busy node wants it.

Relative paths (``layout``, ``poni`` options, data_root) are relative to the file's folder.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asapo_hpc._compat import tomllib
from asapo_hpc.config import RingConfig, check_known_keys, check_name
from asapo_hpc.errors import AsapoWrongInputError
from asapo_hpc.pipeline.placement import check_cpus

_SLOT_SLACK = 4096
RESULT_ROWS = ("radial", "intensity", "sigma")  # rows of an azint output frame


@dataclass(frozen=True)
class SourceSpec:
    """One ring of the pipeline and the format of its messages."""

    name: str
    frame_shape: tuple[int, ...] = ()
    dtype: str = "uint8"
    parts: int = 1
    record: bool = False
    frames_in_ring: int = 16
    ring: dict[str, Any] = field(default_factory=dict)

    @property
    def part_nbytes(self) -> int:
        return int(np.prod(self.frame_shape)) * np.dtype(self.dtype).itemsize

    def ring_config(self, groups: tuple[str, ...]) -> RingConfig:
        """The RingConfig: one slot per part, ``frames_in_ring`` frames, ``groups`` durable
        (plus "sink" when recorded); [sources.ring] keys win."""
        slot = -(-(max(self.part_nbytes, 64) + _SLOT_SLACK) // 64) * 64
        count = 2
        while count < self.frames_in_ring * self.parts:
            count *= 2
        all_groups = tuple(groups) + (("sink",) if self.record else ())
        values: dict[str, Any] = dict(slot_count=count, slot_size=slot,
                                      max_groups=max(8, len(all_groups) + 2))
        values.update(self.ring)
        values["groups"] = tuple(dict.fromkeys(tuple(values.get("groups", ())) + all_groups))
        return RingConfig.from_dict(values)


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``instances`` processes running ``worker`` from ``input`` to ``output``."""

    name: str
    worker: str
    input: str
    output: str
    instances: int = 1
    output_stream: str = "{stream}"
    options: dict[str, Any] = field(default_factory=dict)
    batch: int = 32
    threads: int = 0  # Numba threads per instance; 0 = cores / busy processes (stage.py)
    cpus: tuple[int, ...] = ()  # CPUs of its processes; () = any (placement.py)

    def group(self, index: int) -> str:
        """The consumer group of instance ``index``: each instance has its own (see stage.py)."""
        return f"{self.name}.{index}of{self.instances}"

    def groups(self) -> tuple[str, ...]:
        return tuple(self.group(i) for i in range(self.instances))

    def out_stream(self, stream: str) -> str:
        return self.output_stream.format(stream=stream)


@dataclass(frozen=True)
class SimulateSpec:
    """An optional Lambda simulator feeding ``source``."""

    source: str
    frames: int = 100
    rate: float = 0.0
    stream: str = "default"
    layout: str = ""
    seed: int = 0
    cpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class ReplaySpec:
    """An optional stored stream replayed from disk into ``source`` (see pipeline.replay)."""

    source: str
    stream: str
    from_source: str = ""
    data_root: str = ""
    cpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class PipelineSpec:
    """A whole pipeline: see the module docstring for the file format."""

    beamtime: str = "pipeline"
    data_root: Path = Path("./asapo_pipeline")
    compression: str = "bslz4"
    sources: tuple[SourceSpec, ...] = ()
    stages: tuple[StageSpec, ...] = ()
    simulate: SimulateSpec | None = None
    replay: ReplaySpec | None = None
    detector: dict[str, Any] = field(default_factory=dict)
    base_dir: Path = Path(".")
    extra_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    node_cpus: tuple[int, ...] = ()  # CPUs of the node service's threads; () = any

    def __post_init__(self) -> None:
        check_name(self.beamtime, "beamtime id", 80)
        object.__setattr__(self, "node_cpus", check_cpus("node_cpus", self.node_cpus))
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise AsapoWrongInputError(f"pipeline: sources named twice: {names}")
        for source in self.sources:
            check_name(source.name, "data source", 80)
        stage_names = [s.name for s in self.stages]
        if len(set(stage_names)) != len(stage_names):
            raise AsapoWrongInputError(f"pipeline: stages named twice: {stage_names}")
        for stage in self.stages:
            self._check_stage(stage, set(names))
        if self.simulate is not None and self.simulate.source not in names:
            raise AsapoWrongInputError(
                f"pipeline: [simulate] source {self.simulate.source!r} is not a source")
        if self.replay is not None:
            self._check_replay(self.replay, names)

    def _check_replay(self, replay: ReplaySpec, names: list[str]) -> None:
        if replay.source not in names:
            raise AsapoWrongInputError(
                f"pipeline: [replay] source {replay.source!r} is not a source")
        if self.simulate is not None and self.simulate.source == replay.source:
            raise AsapoWrongInputError(
                f"pipeline: source {replay.source!r} is fed by both [simulate] and [replay]")
        if self.source(replay.source).record:
            raise AsapoWrongInputError(
                f"pipeline: [replay] source {replay.source!r} has record = true: it replays "
                "a stored stream, which would be stored again; set record = false")

    @staticmethod
    def _check_stage(stage: StageSpec, sources: set[str]) -> None:
        check_name(stage.name, "stage name", 30)
        for end in (stage.input, stage.output):
            if end not in sources:
                raise AsapoWrongInputError(
                    f"stage {stage.name!r}: source {end!r} is not declared in [[sources]]")
        if stage.input == stage.output:
            raise AsapoWrongInputError(f"stage {stage.name!r}: input and output are the same")
        if not 1 <= stage.instances <= 64:
            raise AsapoWrongInputError(f"stage {stage.name!r}: instances must be 1..64")

    def source(self, name: str) -> SourceSpec:
        for source in self.sources:
            if source.name == name:
                return source
        raise AsapoWrongInputError(f"no source {name!r} in the pipeline")

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise AsapoWrongInputError(f"no stage {name!r} in the pipeline")

    def groups_of(self, source: str) -> tuple[str, ...]:
        """Durable groups reading ``source``: every instance of every stage reading it."""
        groups = [g for s in self.stages if s.input == source for g in s.groups()]
        return tuple(groups) + self.extra_groups.get(source, ())

    def stage_options(self, stage: StageSpec) -> dict[str, Any]:
        """The stage's options over the pipeline's [detector] table."""
        return {**self.detector, **stage.options}

    def stage_threads(self, stage: StageSpec) -> int:
        """Numba threads of one instance of ``stage``: its ``threads``, else its ``cpus``
        over its instances, else the cores over every busy process (all stage instances,
        the simulator, the node service)."""
        if stage.threads > 0:
            return stage.threads
        if stage.cpus:
            return max(1, len(stage.cpus) // stage.instances)
        busy = sum(s.instances for s in self.stages) + (self.simulate is not None) + \
            any(s.record for s in self.sources)
        return max(1, (os.cpu_count() or 1) // max(busy, 1))

    def ring_config(self, source: str) -> RingConfig:
        return self.source(source).ring_config(self.groups_of(source))

    def path(self, value: str | Path) -> Path:
        """``value`` relative to the pipeline file's folder."""
        p = Path(value)
        return p if p.is_absolute() else self.base_dir / p

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for a spawned process)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], base_dir: Path | str = ".") -> PipelineSpec:
        """Build and complete (stage outputs get their formats, see ``complete``)."""
        values = dict(values)
        check_known_keys("pipeline", values, cls)
        sources = tuple(_make(SourceSpec, "source", s) for s in values.pop("sources", ()))
        stages = tuple(_make(StageSpec, "stage", s) for s in values.pop("stages", ()))
        sim = values.pop("simulate", None)
        sim = _make(SimulateSpec, "simulate", sim) if isinstance(sim, dict) else sim
        replay = values.pop("replay", None)
        if replay is not None:
            values["replay"] = _make(ReplaySpec, "replay", replay)
        base = Path(values.pop("base_dir", base_dir))
        extra = {k: tuple(v) for k, v in values.pop("extra_groups", {}).items()}
        detector = dict(values.pop("detector", {}))
        sources = _complete_sources(sources, stages, sim, base, detector)
        spec = cls(sources=sources, stages=stages, simulate=sim, base_dir=base,
                   extra_groups=extra, detector=detector, **values)
        return dataclasses.replace(spec, data_root=spec.path(spec.data_root))

    @classmethod
    def from_file(cls, path: str | Path) -> PipelineSpec:
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text())
        except OSError as exc:
            raise AsapoWrongInputError(f"cannot read pipeline file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise AsapoWrongInputError(f"pipeline file {path} is not valid TOML: {exc}") from None
        return cls.from_dict(values, base_dir=path.resolve().parent)


def _make(cls: type, what: str, values: Any) -> Any:
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise AsapoWrongInputError(f"{what}: expected a table, got {values!r}")
    check_known_keys(what, values, cls)
    values = dict(values)
    if "frame_shape" in values:
        values["frame_shape"] = tuple(values["frame_shape"])
    if "cpus" in values:
        values["cpus"] = check_cpus(f"{what} {values.get('name', '')}".strip(), values["cpus"])
    return cls(**values)


def _complete_sources(sources: tuple[SourceSpec, ...], stages: tuple[StageSpec, ...],
                      sim: SimulateSpec | None, base: Path,
                      detector: dict[str, Any]) -> tuple[SourceSpec, ...]:
    """Give the simulated source the detector's format and every stage output the format
    its worker produces, unless the file says otherwise; add undeclared outputs."""
    from asapo_hpc.pipeline.workers import output_format, simulated_format

    by_name = {s.name: s for s in sources}
    if sim is not None and sim.source in by_name and not by_name[sim.source].frame_shape:
        by_name[sim.source] = dataclasses.replace(by_name[sim.source],
                                                  **simulated_format(sim, base, detector))
    for stage in stages:
        src = by_name.get(stage.input)
        if src is None:
            continue  # reported by PipelineSpec's checks
        out = by_name.get(stage.output) or SourceSpec(stage.output)
        if not out.frame_shape:
            fmt = output_format(stage.worker, {**detector, **stage.options}, src, base)
            if fmt is not None:
                out = dataclasses.replace(out, **fmt)
        by_name[stage.output] = out
    return tuple(by_name.values())
