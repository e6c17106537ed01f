"""Thread count of the per-frame passes, chosen from measured call times.

On a machine shared with other processes, a parallel pass on every core can be slower than
on one: a thread descheduled mid-pass holds up the join. :class:`ThreadChooser` keeps the
last few call times per thread count, runs the count with the lowest median, and retries
the others now and then so it follows the load.
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

    def options(self) -> list[int]:
        """Thread counts tried: 1 and the current Numba thread count."""
        return sorted({1, numba.get_num_threads()})

    def pick(self) -> int:
        """Thread count for the next call."""
        opts = self.options()
        fewest = min(opts, key=lambda n: self.seen.get(n, 0))
        if self.seen.get(fewest, 0) < 1 + self.first_samples:  # warm-up, then alternate
            return fewest
        best = min(opts, key=lambda n: statistics.median(self.recent[n]))
        others = [n for n in opts if n != best]
        if others and self.calls % self.explore_every == 0:
            return others[(self.calls // self.explore_every) % len(others)]
        return best

    def record(self, n: int, seconds: float) -> None:
        """Account one call of ``n`` threads that took ``seconds``."""
        self.calls += 1
        seen = self.seen.get(n, 0)
        self.seen[n] = seen + 1
        if seen > 0:
            self.recent.setdefault(n, deque(maxlen=self.window)).append(seconds)

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
