"""``asapo-hpc reprocess``: run a command or a pipeline over a stored stream.

With a command (``asapo-hpc reprocess --beamtime B --source S --stream ST -n 4 -- prog
ARGS``), N instances of the command run with environment variables naming what to read::

    ASAPO_HPC_BEAMTIME  ASAPO_HPC_SOURCE  ASAPO_HPC_STREAM  ASAPO_HPC_GROUP
    ASAPO_HPC_DATA_ROOT  ASAPO_HPC_INSTANCE (0..N-1)  ASAPO_HPC_INSTANCES (N)

Each instance reads the stream with ``Consumer(B, S, data_root=...).get_next(G,
stream=ST)`` and acknowledges what it processed. The group is set up as a disk-mode group
(asapo_hpc.client.disk_groups) before the instances start: it reads the stream from the
catalog and the HDF5 files from id 1, the instances share it exactly once, and it never
holds a live ring back. A progress line shows the messages the group acknowledged out of the
stream's size (from the catalog). The command fails when any instance fails; run it again
with the same ``--group`` to do only what is not acknowledged yet.

``--slurm`` submits the same as a Slurm job array (``sbatch --array=0-(N-1)``, one instance
per task, the same variables) and returns; follow the group with ``--progress``. The batch
script exports the variables itself (values may hold any character); the tasks inherit the
submitting environment as sbatch does by default (PATH, a virtual environment, ...) and run
in the current directory; sbatch's own options come from its SBATCH_* variables
(SBATCH_PARTITION, SBATCH_TIMELIMIT, SBATCH_ACCOUNT, SBATCH_OUTPUT: Slurm's default output is
``slurm-<job>_<task>.out`` here). ``--slurm --wait`` waits for the array with the same
progress line, then reports each task that failed (its Slurm state and exit code, from
``scontrol``, else ``sacct``) as a local run reports its instances. The Slurm part lives in
asapo_hpc.cli.slurm; the task, progress line and final report both share live in
asapo_hpc.cli.reprocess_task.

With ``--pipeline FILE``, the pipeline's first stage reads the stored stream: a replay
process reads it from disk and publishes it into that stage's input ring (see
asapo_hpc.pipeline.replay); the rest of the pipeline runs as ``asapo-hpc pipeline run``.
Its rings and recorded results belong to the pipeline file's beamtime; while a live pipeline
of that beamtime runs on the node, give ``--pipeline-beamtime`` another (the runner refuses
rings that live processes use).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from asapo_hpc.cli.progress import StatusLine, pipeline_status
from asapo_hpc.cli.reprocess_task import TICK_S, Task, progress_line, report
from asapo_hpc.cli.slurm import submit_slurm
from asapo_hpc.errors import AsapoError, AsapoWrongInputError

_STOP_GRACE_S = 5.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``reprocess``."""
    p.add_argument("--beamtime", required=True)
    p.add_argument("--source", required=True, help="the stored data source")
    p.add_argument("--stream", required=True, help="the stored stream")
    p.add_argument("--data-root", default=None,
                   help="the node's data root (default: $ASAPO_HPC_DATA_ROOT, ./asapo_data)")
    p.add_argument("--group", default=None,
                   help="consumer group (default: a new one); an existing group resumes")
    p.add_argument("-n", "--instances", type=int, default=1,
                   help="instances of the command sharing the stream (default 1)")
    p.add_argument("--pipeline", default=None, help="run this pipeline file over the stream")
    p.add_argument("--pipeline-beamtime", default=None,
                   help="with --pipeline: run it under this beamtime id instead of its file's "
                        "(its rings and recorded results), e.g. beside the live pipeline")
    p.add_argument("--slurm", action="store_true",
                   help="submit the instances as a Slurm job array instead of running them")
    p.add_argument("--wait", action="store_true",
                   help="with --slurm: wait for the job array, then report failed tasks")
    p.add_argument("--progress", action="store_true",
                   help="only show the group's progress (e.g. of a Slurm job) and exit")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="-- COMMAND ARGS...: the program each instance runs")


def run(args: argparse.Namespace) -> int:
    """0 done; 1 an instance (or the pipeline) failed; 2 bad input."""
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        _check_choice(args, command)
        if args.pipeline:
            return _run_pipeline(args)
        task = _prepare(args)
        if args.progress:
            print(progress_line(task))
            return 0
        if args.slurm:
            return submit_slurm(task, command, wait=args.wait, quiet=args.quiet)
        return _run_command(task, command, quiet=args.quiet)
    except AsapoError as exc:
        print(f"asapo-hpc reprocess: {exc}", file=sys.stderr)
        return 2


def _check_choice(args: argparse.Namespace, command: list[str]) -> None:
    if args.instances < 1:
        raise AsapoWrongInputError(f"-n must be at least 1, got {args.instances}")
    if args.progress:
        if args.group is None:
            raise AsapoWrongInputError("--progress needs the --group to show")
        return
    if args.pipeline_beamtime and not args.pipeline:
        raise AsapoWrongInputError("--pipeline-beamtime goes with --pipeline FILE")
    if args.wait and not args.slurm:
        raise AsapoWrongInputError("--wait goes with --slurm (a local run always waits)")
    if bool(args.pipeline) == bool(command):
        raise AsapoWrongInputError(
            "give either --pipeline FILE or -- COMMAND ARGS... (the program to run over the "
            "stream), not both or neither")


def _prepare(args: argparse.Namespace) -> Task:
    """Check the stream is stored; set the group up as a disk-mode group (or resume it)."""
    from asapo_hpc.catalog import Catalog, generate_group_id
    from asapo_hpc.client.disk import catalog_path_for
    from asapo_hpc.client.disk_groups import mark_disk_group

    path = catalog_path_for(args.data_root).resolve()
    if not path.exists():
        raise AsapoWrongInputError(
            f"no catalog at {path}: pass the node's data root with --data-root (or set "
            "ASAPO_HPC_DATA_ROOT)")
    group = args.group or f"reprocess-{generate_group_id()}"
    with Catalog(path) as catalog:
        if not mark_disk_group(catalog, group, args.source, args.stream):
            _requeue_in_flight(catalog, group, args.source, args.stream)
    return Task(args.beamtime, args.source, args.stream, group, path.parent, args.instances)


def _requeue_in_flight(catalog, group: str, source: str, stream: str) -> None:
    """A resumed group: what a failed run took but never acknowledged is due again now
    (it would otherwise wait for its lease)."""
    taken = catalog.get_counter(group, source, stream)
    if not taken:
        return
    for data_id in catalog.unacknowledged(group, source, stream, 1, taken):
        catalog.neg_acknowledge(group, source, stream, data_id, 0)


# -- a command ----------------------------------------------------------------------------

def _run_command(task: Task, command: list[str], *, quiet: bool) -> int:
    if shutil.which(command[0]) is None and not Path(command[0]).exists():
        raise AsapoWrongInputError(f"command {command[0]!r} not found (is it on PATH?)")
    print(f"asapo-hpc reprocess: {task.instances} x {shlex.join(command)} over stream "
          f"{task.stream!r} of {task.source!r}, group {task.group}", file=sys.stderr)
    procs: list[subprocess.Popen] = []
    try:
        for i in range(task.instances):
            procs.append(subprocess.Popen(command, env={**os.environ, **task.env(i)}))
        _wait(procs, task, quiet)
    finally:
        _stop(procs)
    failures = [f"instance {i} of {shlex.join(command)} failed with exit code {p.returncode}"
                for i, p in enumerate(procs) if p.returncode != 0]
    return report(task, failures, len(procs))


def _wait(procs: list[subprocess.Popen], task: Task, quiet: bool) -> None:
    line = StatusLine()
    while any(p.poll() is None for p in procs):
        if not quiet:
            running = sum(p.poll() is None for p in procs)
            line.show(f"{progress_line(task)}; {running} running")
        time.sleep(TICK_S)
    if not quiet:
        line.end(f"{progress_line(task)}; 0 running")


def _stop(procs: list[subprocess.Popen]) -> None:
    """Instances still running when we leave early (Ctrl-C, an error): terminate, then kill."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + _STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- a pipeline ---------------------------------------------------------------------------

def _run_pipeline(args: argparse.Namespace) -> int:
    import dataclasses

    from asapo_hpc.client.disk import catalog_path_for
    from asapo_hpc.pipeline import PipelineError, PipelineSpec, run_pipeline
    from asapo_hpc.pipeline.spec import ReplaySpec

    spec = PipelineSpec.from_file(args.pipeline)
    if args.pipeline_beamtime:
        spec = dataclasses.replace(spec, beamtime=args.pipeline_beamtime)
    if not spec.stages:
        raise AsapoWrongInputError(f"pipeline {args.pipeline} has no stages to run")
    path = catalog_path_for(args.data_root).resolve()
    if not path.exists():
        raise AsapoWrongInputError(f"no catalog at {path}: pass the node's data root with "
                                   "--data-root (or set ASAPO_HPC_DATA_ROOT)")
    first = spec.stages[0].input  # fed from disk: not recorded again
    sources = tuple(dataclasses.replace(s, record=False) if s.name == first else s
                    for s in spec.sources)
    replay = ReplaySpec(source=first, stream=args.stream, from_source=args.source,
                        data_root=str(path.parent))
    spec = dataclasses.replace(spec, sources=sources, simulate=None, replay=replay)
    line = StatusLine()
    try:
        result = run_pipeline(spec, on_tick=None if args.quiet else
                              lambda status: line.show(pipeline_status(status)))
    except PipelineError as exc:
        line.end()
        print(f"asapo-hpc reprocess: {exc}", file=sys.stderr)
        return 1
    line.end()
    print(f"asapo-hpc reprocess: done in {result.seconds:.1f} s; frames per stage: "
          f"{result.stage_frames}")
    return 0

