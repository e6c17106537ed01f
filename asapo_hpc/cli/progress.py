"""Progress lines of long commands (demo, pipeline, reprocess).

On a terminal the line is redrawn in place. Anywhere else (a log file, a Slurm job's
output, CI) carriage returns would pile every update into one endless line, so there the
state is printed as whole lines, at most one every ``every_s`` seconds, and the last state
once more at the end if it was not printed yet.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class StatusLine:
    """``show(text)`` for each update, ``end()`` (or ``end(final_text)``) once."""

    def __init__(self, out: TextIO | None = None, every_s: float = 5.0):
        self.out = out if out is not None else sys.stderr
        try:
            self.live = self.out.isatty()
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            self.live = False
        self.every_s = every_s
        self._printed_at = -float("inf")
        self._last: str | None = None  # the newest text
        self._unprinted = False  # (not live) the newest text is not in the output yet

    def show(self, text: str) -> None:
        self._last = text
        if self.live:
            print(f"\r{text}", end="", file=self.out, flush=True)
            return
        now = time.monotonic()
        self._unprinted = now - self._printed_at < self.every_s
        if not self._unprinted:
            print(text, file=self.out, flush=True)
            self._printed_at = now

    def end(self, text: str | None = None) -> None:
        """Finish with ``text`` (or the newest state) on a line of its own."""
        if text is None:
            if self.live and self._last is not None:
                print(file=self.out, flush=True)  # keep the redrawn line, move past it
            elif self._unprinted:
                print(self._last, file=self.out, flush=True)
        else:
            print(f"\r{text}" if self.live else text, file=self.out, flush=True)
        self._last, self._unprinted = None, False


def pipeline_status(status: Any) -> str:
    """A running pipeline's state (``PipelineStatus``): elapsed time, frames per stage."""
    frames = " ".join(f"{k}={v}" for k, v in status.stage_frames.items())
    return f"{status.elapsed:6.1f} s  {frames}"
