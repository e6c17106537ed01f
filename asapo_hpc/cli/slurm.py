"""``asapo-hpc reprocess --slurm``: the instances as a Slurm job array.

``submit_slurm`` submits one array task per instance (``sbatch --array=0-(N-1)``) with a
batch script exporting the task's variables; with ``wait`` it follows the array with the
group's progress line, then reports each failed task with its Slurm state and exit code
(from ``scontrol``, else ``sacct``).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time

from asapo_hpc.cli.progress import StatusLine
from asapo_hpc.cli.reprocess_task import ENV_PREFIX, TICK_S, Task, counts, progress_line, report
from asapo_hpc.errors import AsapoWrongInputError


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


def submit_slurm(task: Task, command: list[str], *, wait: bool, quiet: bool) -> int:
    """Submit the job array; with `wait`, follow it and report its failed tasks.
    0 submitted (or all done); 1 sbatch or a task failed; 130 interrupted while waiting."""
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
    return report(task, _failures(task, command, job), task.instances)


def _failures(task: Task, command: list[str], job: str) -> list[str]:
    """What went wrong with the ended array's tasks, one line each."""
    results = _slurm_results(job)
    if results is None:  # purged from the controller, and no accounting
        done, total = counts(task)
        return [] if done == total else [
            f"neither scontrol nor sacct knows Slurm job {job} any more, and only "
            f"{done}/{total} messages were acknowledged"]
    failures = [f"instance {i} of {shlex.join(command)} (Slurm job {job}_{i}) "
                f"{_describe(state, code, sig)}"
                for i, (state, code, sig) in sorted(results.items())
                if state != "COMPLETED" or code or sig]
    failures += [f"instance {i} of {shlex.join(command)} (Slurm job {job}_{i}) has no "
                 "record in Slurm" for i in range(task.instances) if i not in results]
    return failures


def _queued(job: str) -> dict[str, int] | None:
    """Tasks of the job array Slurm still queues or runs, by state (empty when done; None
    when squeue could not tell, e.g. the controller did not answer in time)."""
    done = _slurm("squeue", "-h", "-r", "-j", job, "-o", "%T")
    if done.returncode != 0:
        return {} if "Invalid job id" in done.stderr else None
    by_state: dict[str, int] = {}
    for state in done.stdout.split():
        by_state[state.lower()] = by_state.get(state.lower(), 0) + 1
    return by_state


def _wait_slurm(task: Task, job: str, quiet: bool) -> None:
    line = StatusLine()
    while (queued := _queued(job)) != {}:
        if not quiet:
            states = ", ".join(f"{n} {s}" for s, n in sorted((queued or {}).items()))
            line.show(f"{progress_line(task)}; Slurm job {job}: {states or 'squeue failed'}  ")
        time.sleep(TICK_S)
    if not quiet:
        line.end(f"{progress_line(task)}; Slurm job {job} ended")


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
