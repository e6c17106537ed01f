"""What a ``reprocess`` run shares between its local instances (asapo_hpc.cli.reprocess) and
a Slurm job array (asapo_hpc.cli.slurm): the ``Task`` the instances read and the variables
naming it, the group's progress line, and the report at the end of a run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

ENV_PREFIX = "ASAPO_HPC_"
TICK_S = 0.5  # between progress updates while instances run


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


def counts(task: Task) -> tuple[int, int]:
    """(acknowledged by the group, messages in the stream), from the catalog."""
    from asapo_hpc.catalog import Catalog

    with Catalog(task.data_root / "catalog.sqlite") as catalog:
        total = catalog.get_current_size(task.source, task.stream)
        missing = len(catalog.unacknowledged(task.group, task.source, task.stream)) \
            if total else 0
    return total - missing, total


def progress_line(task: Task) -> str:
    """The group's progress through the stream, in one line."""
    done, total = counts(task)
    return f"group {task.group}: {done}/{total} messages of stream {task.stream!r} acknowledged"


def report(task: Task, failures: list[str], instances: int) -> int:
    """Print the failures and the group's progress at the end of a run; 1 if any failed."""
    done, total = counts(task)
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
