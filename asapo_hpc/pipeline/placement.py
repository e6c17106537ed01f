"""CPU placement of a pipeline's processes: the ``cpus`` keys of the pipeline file.

A stage, the simulator, a replay and the node service may each name the CPUs they run on
(``cpus = [1]``; empty = wherever the OS puts them, the default). The runner applies a
placement to its own thread just while it starts that process (or the node service's
threads): Linux gives a new process or thread the affinity of the thread that made it,
so the Numba threads of a stage inherit it too, and the runner's own thread is put back
afterwards.

Why a pipeline wants it: on a small node every process of the chain is busy, and the
scheduler moves them between cores and lets the lighter ones preempt the heaviest stage,
which sets the rate. Giving that stage a core of its own and the others the rest gained
8-13 % on 2 cores (docs/benchmarks-history.md, detector pipeline).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from asapo_hpc.errors import AsapoWrongInputError


def available_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on, in order."""
    return tuple(sorted(os.sched_getaffinity(0)))


def check_cpus(what: str, cpus: Sequence[int]) -> tuple[int, ...]:
    """``cpus`` as a sorted tuple of distinct CPU numbers; a clear error otherwise."""
    if not isinstance(cpus, (list, tuple)) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cpus):
        raise AsapoWrongInputError(f"{what}: cpus must be a list of CPU numbers (>= 0), "
                                   f"got {cpus!r}")
    if len(set(cpus)) != len(cpus):
        raise AsapoWrongInputError(f"{what}: cpus lists a CPU twice: {list(cpus)}")
    return tuple(sorted(cpus))


def check_available(what: str, cpus: Sequence[int]) -> set[int]:
    """Refuse CPUs the calling thread may not use; returns the ones it may."""
    allowed = os.sched_getaffinity(0)
    missing = sorted(set(cpus) - allowed)
    if missing:
        raise AsapoWrongInputError(
            f"{what}: cpus {list(cpus)} include {missing}, which this process may not use "
            f"(it may use {sorted(allowed)})")
    return allowed


@contextmanager
def placed(what: str, cpus: Sequence[int]) -> Iterator[None]:
    """Run the block with the calling thread on ``cpus`` (nothing changes for an empty
    list); what it starts keeps that placement. The thread's own placement comes back."""
    if not cpus:
        yield
        return
    before = check_available(what, cpus)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def heaviest_apart(cpus: Sequence[int] | None = None) -> tuple[tuple[int, ...],
                                                              tuple[int, ...]]:
    """Split ``cpus`` (default: this process's) into (the others', the heaviest stage's):
    the upper half for the heaviest, the lower half for everything else; two empty tuples
    on a single CPU, where there is nothing to split."""
    cpus = tuple(sorted(available_cpus() if cpus is None else cpus))
    if len(cpus) < 2:
        return (), ()
    half = len(cpus) // 2
    return cpus[:half], cpus[half:]
