"""Thread count of the per-frame passes, chosen from measured call times.

On a machine shared with other processes, a parallel pass on every core can be slower than
on one: a thread descheduled mid-pass holds up the join. :class:`ThreadChooser` keeps the
last few call times per thread count, runs the count with the lowest median, and retries
the others now and then so it follows the load.

- A retry faster than the current choice's median is repeated at once until the medians
  decide, so a choice made while the machine was disturbed (a slow warm-up of one count)
  is undone within one exploration period plus a window of calls.
- A retry that loses clearly (slower than ``slack`` x the choice's median) doubles the
  period to the next retry, up to ``max_explore_every`` calls; one that comes close (or
  wins) brings it back to ``explore_every``. A retry costs a whole slower pass: on a quiet
  2-core machine, retrying 1 thread every 16 calls of a 1.5 ms pass cost ~5 % of the mean
  time, at most every 256 calls ~0.3 %. A load that slows the chosen count is still seen
  at once: its own median rises above the other's.
"""

from __future__ import annotations

import statistics
import time
from collections import deque

import numba


class ThreadChooser:
    """Run a Numba parallel function with the thread count that has been fastest lately."""

    def __init__(self, explore_every: int = 16, window: int = 5, first_samples: int = 3,
                 max_explore_every: int = 256, slack: float = 1.25):
        self.explore_every = explore_every
        self.max_explore_every = max(explore_every, max_explore_every)
        self.slack = slack
        self.first_samples = first_samples
        self.window = window
        self.recent: dict[int, deque] = {}  # thread count -> last call times (s)
        self.medians: dict[int, float] = {}  # thread count -> median of ``recent``
        self.seen: dict[int, int] = {}  # thread count -> calls (the first is a warm-up)
        self.calls = 0
        self.period = explore_every  # calls from one retry to the next
        self.next_retry = explore_every  # call number of the next retry
        self.retries = 0
        self.confirming: int | None = None  # a retried count that beat the best: run it again
        self._opts: list[int] = []  # the options pick() saw last

    def options(self) -> list[int]:
        """Thread counts tried: 1 and the current Numba thread count."""
        return sorted({1, numba.get_num_threads()})

    def pick(self) -> int:
        """Thread count for the next call."""
        opts = self._opts = self.options()  # record() runs inside the chosen count
        fewest = min(opts, key=lambda n: self.seen.get(n, 0))
        if self.seen.get(fewest, 0) < 1 + self.first_samples:  # warm-up, then alternate
            return fewest
        if self.confirming in opts:
            return self.confirming
        best = self._best(opts)
        others = [n for n in opts if n != best]
        if others and self.calls >= self.next_retry:
            return others[self.retries % len(others)]
        return best

    def _best(self, opts: list[int]) -> int:
        return min(opts, key=lambda n: self.medians[n])

    def record(self, n: int, seconds: float) -> None:
        """Account one call of ``n`` threads that took ``seconds``."""
        call = self.calls  # this call's number, as pick() saw it
        self.calls += 1
        seen = self.seen.get(n, 0)
        self.seen[n] = seen + 1
        if seen == 0:
            return
        opts = [m for m in self._opts if m in self.medians]
        best = self._best(opts) if len(opts) > 1 else n
        recent = self.recent.setdefault(n, deque(maxlen=self.window))
        recent.append(seconds)
        self.medians[n] = statistics.median(recent)
        if n == best:
            self.confirming = None
            return
        # a retry (or its repetition): repeat it while it beats the choice's median
        beat = seconds < self.medians[best]
        self.confirming = n if beat else None
        if call >= self.next_retry:  # a scheduled retry, not a warm-up or repetition
            self.retries += 1
            close = seconds < self.slack * self.medians[best]
            self.period = self.explore_every if close else min(2 * self.period,
                                                               self.max_explore_every)
            self.next_retry = call + self.period

    def run(self, fn, *args):
        """``fn(*args, n)`` on the chosen thread count ``n``; the caller's count is restored."""
        n = self.pick()
        prev = numba.get_num_threads()
        if n != prev:
            numba.set_num_threads(n)
        try:
            t0 = time.perf_counter()
            out = fn(*args, n)
            self.record(n, time.perf_counter() - t0)
        finally:
            if n != prev:
                numba.set_num_threads(prev)
        return out
