"""Thread count of the per-frame passes, chosen from measured call times.

On a machine shared with other processes, a parallel pass on every core can be slower than
on one: a thread descheduled mid-pass holds up the join. :class:`ThreadChooser` keeps the
last few call times per thread count, runs the count with the lowest median, and retries
the others now and then so it follows the load. A retry faster than the current choice's
median is repeated at once until the medians decide, so a choice made while the machine was
disturbed (a slow warm-up of one count) is undone within one exploration period plus a
window of calls, not after a whole window of periods.
"""

from __future__ import annotations

import statistics
import time
from collections import deque

import numba


class ThreadChooser:
    """Run a Numba parallel function with the thread count that has been fastest lately."""

    def __init__(self, explore_every: int = 16, window: int = 5, first_samples: int = 3):
        self.explore_every = explore_every
        self.first_samples = first_samples
        self.recent: dict[int, deque] = {}  # thread count -> last call times (s)
        self.seen: dict[int, int] = {}  # thread count -> calls (the first is a warm-up)
        self.calls = 0
        self.window = window
        self.confirming: int | None = None  # a retried count that beat the best: run it again

    def options(self) -> list[int]:
        """Thread counts tried: 1 and the current Numba thread count."""
        return sorted({1, numba.get_num_threads()})

    def pick(self) -> int:
        """Thread count for the next call."""
        opts = self.options()
        fewest = min(opts, key=lambda n: self.seen.get(n, 0))
        if self.seen.get(fewest, 0) < 1 + self.first_samples:  # warm-up, then alternate
            return fewest
        if self.confirming in opts:
            return self.confirming
        best = self._best(opts)
        others = [n for n in opts if n != best]
        if others and self.calls % self.explore_every == 0:
            return others[(self.calls // self.explore_every) % len(others)]
        return best

    def _best(self, opts: list[int]) -> int:
        return min(opts, key=lambda n: statistics.median(self.recent[n]))

    def record(self, n: int, seconds: float) -> None:
        """Account one call of ``n`` threads that took ``seconds``."""
        self.calls += 1
        seen = self.seen.get(n, 0)
        self.seen[n] = seen + 1
        if seen == 0:
            return
        opts = [m for m in self.options() if self.recent.get(m)]
        best = self._best(opts) if len(opts) > 1 else n
        self.recent.setdefault(n, deque(maxlen=self.window)).append(seconds)
        # a retry that beat the choice: repeat it until its median wins or it loses once
        beat = n != best and seconds < statistics.median(self.recent[best])
        self.confirming = n if beat else None

    def run(self, fn, *args):
        """``fn(*args, n)`` on the chosen thread count ``n``; the caller's count is restored."""
        n = self.pick()
        prev = numba.get_num_threads()
        numba.set_num_threads(n)
        try:
            t0 = time.perf_counter()
            out = fn(*args, n)
            self.record(n, time.perf_counter() - t0)
        finally:
            numba.set_num_threads(prev)
        return out
