"""The machine's state beside a benchmark's figures.

On these VMs the two vCPUs sometimes sit where a cache line between them costs several
times more than at other times (the C ring's one-per-call handoff went from ~12 M to ~2 M
messages/s within one day, for the same code), and every multi-process figure moves with
it. ``handoff_probe`` measures that rate in ~0.2 s with the C ring's own benchmark
(``csrc/build/bench_ring``, built on first use), so each result file says which state the
machine was in.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

CSRC = Path(__file__).resolve().parent.parent / "csrc"
BENCH_RING = CSRC / "build" / "bench_ring"
_RATES = re.compile(r"single ([\d.]+) M msgs/s, batch\(\d+\) ([\d.]+) M msgs/s")


def handoff_probe(count: int = 300_000) -> dict[str, float] | None:
    """{"single_M": .., "batch_M": ..}: the C ring between two processes pinned to two
    CPUs, 64-byte messages, one per call and 64 per call; None when it cannot be built."""
    try:
        if not BENCH_RING.exists():
            subprocess.run(["make", "-s", "-C", str(CSRC), "build/bench_ring"], check=True,
                           capture_output=True, timeout=300)
        out = subprocess.run([str(BENCH_RING), str(count), "64", "64"], check=True,
                             capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = _RATES.search(out)
    if found is None:
        return None
    return {"single_M": float(found.group(1)), "batch_M": float(found.group(2))}


def probe_and_print() -> dict[str, float] | None:
    """``handoff_probe``, printed as one line (``describe``) as well as returned."""
    probe = handoff_probe()
    print(describe(probe), flush=True)
    return probe


def describe(probe: dict[str, float] | None) -> str:
    if probe is None:
        return "machine probe: unavailable (no C compiler or make?)"
    return (f"machine probe (C ring, 2 pinned processes): {probe['single_M']:.1f} M msgs/s "
            f"one per call, {probe['batch_M']:.1f} M batched")
