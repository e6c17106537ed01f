"""JSON log lines: one JSON object per line, so log collectors parse them without rules."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

log = logging.getLogger("asapo_hpc.node")


def event(level: int, name: str, **fields: Any) -> str:
    """Log `name` with `fields` as one JSON line at `level`; returns the line."""
    line = json.dumps({"ts": round(time.time(), 3), "level": logging.getLevelName(level),
                       "event": name, **fields}, default=str, separators=(",", ":"))
    log.log(level, line)
    return line


def setup_logging(level: int = logging.INFO) -> None:
    """Print the node's JSON lines (and other libraries' messages) as they are to stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("asapo_hpc")
    root.addHandler(handler)
    root.setLevel(level)
