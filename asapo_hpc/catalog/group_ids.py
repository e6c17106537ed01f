"""Consumer group ids: 20 characters, unique across processes and hosts, like ASAPO's.

ASAPO generates globally unique 12-byte ids (4 bytes of seconds, 3 of host, 2 of pid,
3 of a counter) written in base32hex; we build the same layout so ids sort by creation time.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import secrets
import socket
import threading
import time

GROUP_ID_LENGTH = 20

_HOST_BYTES = hashlib.sha256(socket.gethostname().encode()).digest()[:3]
_counter = itertools.count(secrets.randbelow(1 << 24))
_counter_lock = threading.Lock()


def generate_group_id() -> str:
    """A new group id: 20 lowercase base32hex characters (0-9, a-v)."""
    with _counter_lock:
        count = next(_counter) & 0xFFFFFF
    raw = (
        int(time.time()).to_bytes(4, "big")
        + _HOST_BYTES
        + (os.getpid() & 0xFFFF).to_bytes(2, "big")
        + count.to_bytes(3, "big")
    )
    return base64.b32hexencode(raw).decode("ascii").rstrip("=").lower()
