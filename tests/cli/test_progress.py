"""Progress lines: redrawn in place on a terminal, whole lines in logs."""

from __future__ import annotations

import io
import os
import pty

from asapo_hpc.cli.progress import StatusLine, pipeline_status
from asapo_hpc.pipeline.runner import PipelineStatus


def test_a_log_gets_whole_lines_no_carriage_returns_and_the_last_state():
    out = io.StringIO()
    line = StatusLine(out, every_s=60)
    for i in range(5):  # within one interval: only the first is printed at once
        line.show(f"state {i}")
    line.end()
    assert out.getvalue() == "state 0\nstate 4\n"


def test_a_log_gets_a_line_per_interval():
    out = io.StringIO()
    line = StatusLine(out, every_s=0)
    line.show("a")
    line.show("b")
    line.end()  # "b" is out already: not printed twice
    assert out.getvalue() == "a\nb\n"


def test_a_final_text_replaces_the_last_state():
    out = io.StringIO()
    line = StatusLine(out, every_s=60)
    line.show("running")
    line.show("still running")
    line.end("done")
    assert out.getvalue() == "running\ndone\n"


def test_a_terminal_gets_one_line_redrawn_in_place():
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            line = StatusLine(tty)
            assert line.live
            line.show("1 of 2")
            line.show("2 of 2")
            line.end()
        written = os.read(leader, 1024)
    finally:
        os.close(leader)
        os.close(follower)
    assert written == b"\r1 of 2\r2 of 2\r\n"  # the terminal turns the last \n into \r\n


def test_pipeline_status_names_every_stage():
    status = PipelineStatus(elapsed=3.25, stage_frames={"stitch": 7, "azint": 5})
    assert pipeline_status(status) == "   3.2 s  stitch=7 azint=5"


def test_demo_progress_shows_the_rate_of_the_first_frames_at_once():
    """The demo's live rate starts at the first measured rate (an average started at 0
    showed ~1/3 of it), then follows changes smoothly."""
    from asapo_hpc.cli.demo import ProgressLine

    out = io.StringIO()
    progress = ProgressLine(100, raw_frame_bytes=1_000_000, out=out)
    progress.line.every_s = 0  # a log line per update
    for elapsed, frames in [(1.0, 0), (2.0, 50), (3.0, 100)]:
        progress(PipelineStatus(elapsed=elapsed, stage_frames={"azint": frames},
                                simulated=frames))
    progress.close()
    rates = [line.split("frames/s")[0].split()[-1] for line in out.getvalue().splitlines()]
    assert rates == ["0.0", "50.0", "50.0"]
    progress(PipelineStatus(elapsed=4.0, simulated=110))
    assert progress._rate == 0.7 * 50 + 0.3 * 10
