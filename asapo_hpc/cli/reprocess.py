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
``scontrol``, else ``sacct``) as a local run reports its instances.

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
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from asapo_hpc.cli.progress import StatusLine, pipeline_status
from asapo_hpc.errors import AsapoError, AsapoWrongInputError

ENV_PREFIX = "ASAPO_HPC_"
_TICK_S = 0.5
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


@dataclass(frozen=True)
class Task:
    """What the instances read."""

    beamtime: str
    source: str
    stream: str
    group: str
    data_root: Path
    instances: int

    def env(self, instance: int | None) -> dict[str, str]:
        """The variables an instance gets (ASAPO_HPC_INSTANCE unless None)."""
        values = {"BEAMTIME": self.beamtime, "SOURCE": self.source, "STREAM": self.stream,
                  "GROUP": self.group, "DATA_ROOT": str(self.data_root),
                  "INSTANCES": str(self.instances)}
        if instance is not None:
            values["INSTANCE"] = str(instance)
        return {ENV_PREFIX + k: v for k, v in values.items()}


def run(args: argparse.Namespace) -> int:
    """0 done; 1 an instance (or the pipeline) failed; 2 bad input."""
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        _check_choice(args, command)
        if args.pipeline:
            return _run_pipeline(args)
        task = _prepare(args)
        if args.progress:
            print(_progress_line(task))
            return 0
        if args.slurm:
            return _submit_slurm(task, command, wait=args.wait, quiet=args.quiet)
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


def _counts(task: Task) -> tuple[int, int]:
    """(acknowledged by the group, messages in the stream), from the catalog."""
    from asapo_hpc.catalog import Catalog

    with Catalog(task.data_root / "catalog.sqlite") as catalog:
        total = catalog.get_current_size(task.source, task.stream)
        missing = len(catalog.unacknowledged(task.group, task.source, task.stream)) \
            if total else 0
    return total - missing, total


def _progress_line(task: Task) -> str:
    done, total = _counts(task)
    return f"group {task.group}: {done}/{total} messages of stream {task.stream!r} acknowledged"


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
    return _report(task, failures, len(procs))


def _wait(procs: list[subprocess.Popen], task: Task, quiet: bool) -> None:
    line = StatusLine()
    while any(p.poll() is None for p in procs):
        if not quiet:
            running = sum(p.poll() is None for p in procs)
            line.show(f"{_progress_line(task)}; {running} running")
        time.sleep(_TICK_S)
    if not quiet:
        line.end(f"{_progress_line(task)}; 0 running")


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


def _report(task: Task, failures: list[str], instances: int) -> int:
    done, total = _counts(task)
    for failure in failures:
        print(f"asapo-hpc reprocess: {failure}", file=sys.stderr)
    if failures:
        print(f"asapo-hpc reprocess: {len(failures)} of {instances} instances failed; "
              f"{done}/{total} messages acknowledged. Fix the cause and run again with "
              f"--group {task.group} to process only the {total - done} not acknowledged",
              file=sys.stderr)
        return 1
    if done < total:
        print(f"asapo-hpc reprocess: every instance exited 0 but only {done}/{total} messages "
              "were acknowledged (does the command acknowledge what it processed?)",
              file=sys.stderr)
    print(f"asapo-hpc reprocess: done; {done}/{total} messages acknowledged by group "
          f"{task.group}")
    return 0


# -- Slurm --------------------------------------------------------------------------------

def slurm_command(task: Task, command: list[str]) -> tuple[list[str], str]:
    """The sbatch call (a job array of `instances` tasks, each one instance) and the batch
    script it reads from stdin."""
    lines = ["#!/bin/sh", f"# asapo-hpc reprocess: stream {task.stream!r} of "
             f"{task.source!r}, group {task.group}; one instance per array task"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in task.env(None).items()]
    lines += [f'export {ENV_PREFIX}INSTANCE="$SLURM_ARRAY_TASK_ID"', f"exec {shlex.join(command)}"]
    call = ["sbatch", "--parsable", f"--array=0-{task.instances - 1}",
            f"--job-name=asapo-reprocess-{task.stream}"]
    return call, "\n".join(lines) + "\n"


def _slurm(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


def _submit_slurm(task: Task, command: list[str], *, wait: bool, quiet: bool) -> int:
    call, script = slurm_command(task, command)
    if shutil.which("sbatch") is None:
        raise AsapoWrongInputError("--slurm: sbatch is not on PATH (run on a Slurm login "
                                   "node, or leave out --slurm to run the instances here)")
    done = subprocess.run(call, input=script, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"asapo-hpc reprocess: sbatch failed ({done.returncode}): "
              f"{done.stderr.strip()}", file=sys.stderr)
        return 1
    job = done.stdout.strip().split(";")[0]  # "<id>[;<cluster>]"
    follow = shlex.join(["asapo-hpc", "reprocess", "--beamtime", task.beamtime, "--source",
                         task.source, "--stream", task.stream, "--data-root",
                         str(task.data_root), "--group", task.group, "--progress"])
    print(f"asapo-hpc reprocess: submitted Slurm job {job} ({task.instances} tasks); "
          f"follow it with: {follow}", flush=True)
    if not wait:
        return 0
    try:
        _wait_slurm(task, job, quiet)
    except KeyboardInterrupt:
        print(f"\nasapo-hpc reprocess: Slurm job {job} keeps running (scancel {job} stops "
              f"it); follow it with: {follow}", file=sys.stderr)
        return 130
    results = _slurm_results(job)
    if results is None:  # purged from the controller, and no accounting
        done, total = _counts(task)
        failures = [] if done == total else [
            f"neither scontrol nor sacct knows Slurm job {job} any more, and only "
            f"{done}/{total} messages were acknowledged"]
    else:
        failures = [f"instance {i} of {shlex.join(command)} (Slurm job {job}_{i}) "
                    f"{_describe(state, code, sig)}"
                    for i, (state, code, sig) in sorted(results.items())
                    if state != "COMPLETED" or code or sig]
        failures += [f"instance {i} of {shlex.join(command)} (Slurm job {job}_{i}) has no "
                     "record in Slurm" for i in range(task.instances) if i not in results]
    return _report(task, failures, task.instances)


def _queued(job: str) -> dict[str, int] | None:
    """Tasks of the job array Slurm still queues or runs, by state (empty when done; None
    when squeue could not tell, e.g. the controller did not answer in time)."""
    done = _slurm("squeue", "-h", "-r", "-j", job, "-o", "%T")
    if done.returncode != 0:
        return {} if "Invalid job id" in done.stderr else None
    counts: dict[str, int] = {}
    for state in done.stdout.split():
        counts[state.lower()] = counts.get(state.lower(), 0) + 1
    return counts


def _wait_slurm(task: Task, job: str, quiet: bool) -> None:
    line = StatusLine()
    while (queued := _queued(job)) != {}:
        if not quiet:
            states = ", ".join(f"{n} {s}" for s, n in sorted((queued or {}).items()))
            line.show(f"{_progress_line(task)}; Slurm job {job}: {states or 'squeue failed'}  ")
        time.sleep(_TICK_S)
    if not quiet:
        line.end(f"{_progress_line(task)}; Slurm job {job} ended")


def _slurm_results(job: str) -> dict[int, tuple[str, int, int]] | None:
    """{array task: (state, exit code, signal)} of a finished array: from the controller
    (it keeps ended jobs for MinJobAge, 300 s by default), else from accounting."""
    results: dict[int, tuple[str, int, int]] = {}
    shown = _slurm("scontrol", "show", "job", "-o", job)
    if shown.returncode == 0:
        for line in shown.stdout.splitlines():
            task_id = re.search(r"\bArrayTaskId=(\d+)\b", line)
            state = re.search(r"\bJobState=(\S+)", line)
            code = re.search(r"\bExitCode=(\d+):(\d+)", line)
            if task_id and state and code:
                results[int(task_id[1])] = (state[1], int(code[1]), int(code[2]))
        if results:
            return results
    acct = _slurm("sacct", "-n", "-P", "-X", "-j", job, "--format=JobID,State,ExitCode")
    if acct.returncode == 0:
        for line in acct.stdout.splitlines():
            fields = line.split("|")
            task_id = re.fullmatch(r"\d+_(\d+)", fields[0]) if len(fields) == 3 else None
            code = re.fullmatch(r"(\d+):(\d+)", fields[2]) if task_id else None
            if task_id and code and fields[1]:
                results[int(task_id[1])] = (fields[1].split()[0], int(code[1]), int(code[2]))
    return results or None


def _describe(state: str, code: int, sig: int) -> str:
    if sig:
        return f"was killed by signal {sig} ({state})"
    if code:
        return f"failed with exit code {code} ({state})"
    return f"ended {state}"


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

