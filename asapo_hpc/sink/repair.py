"""Make a killed writer's file openable by every HDF5 tool again.

A writer that dies leaves the "open for (SWMR) writing" flags set in the file's superblock:
SWMR readers still open the file, but plain readers (h5dump, h5py without ``swmr=True``)
refuse it. What ``h5clear -s`` does, done here in Python: clear the flags of a version 2/3
superblock and rewrite its checksum (Jenkins' lookup3, as the HDF5 file format specifies).
Only for files whose writer is known to be gone (the sink holds the stream's lock).
"""

from __future__ import annotations

import os
from pathlib import Path

_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_FLAGS_OFFSET = 11
_MASK = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    for shift_a, shift_b, shift_c in ((4, 6, 8), (16, 19, 4)):
        a = ((a - c) & _MASK) ^ _rot(c, shift_a)
        c = (c + b) & _MASK
        b = ((b - a) & _MASK) ^ _rot(a, shift_b)
        a = (a + c) & _MASK
        c = ((c - b) & _MASK) ^ _rot(b, shift_c)
        b = (b + a) & _MASK
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c = ((c ^ b) - _rot(b, 14)) & _MASK
    a = ((a ^ c) - _rot(c, 11)) & _MASK
    b = ((b ^ a) - _rot(a, 25)) & _MASK
    c = ((c ^ b) - _rot(b, 16)) & _MASK
    a = ((a ^ c) - _rot(c, 4)) & _MASK
    b = ((b ^ a) - _rot(a, 14)) & _MASK
    c = ((c ^ b) - _rot(b, 24)) & _MASK
    return c


def lookup3(data: bytes, initval: int = 0) -> int:
    """Jenkins' lookup3 ``hashlittle`` of ``data``: HDF5's metadata checksum."""
    a = b = c = (0xDEADBEEF + len(data) + initval) & _MASK
    rest = data
    while len(rest) > 12:
        a = (a + int.from_bytes(rest[0:4], "little")) & _MASK
        b = (b + int.from_bytes(rest[4:8], "little")) & _MASK
        c = (c + int.from_bytes(rest[8:12], "little")) & _MASK
        a, b, c = _mix(a, b, c)
        rest = rest[12:]
    if not rest:
        return c
    tail = rest.ljust(12, b"\0")  # missing bytes add nothing
    a = (a + int.from_bytes(tail[0:4], "little")) & _MASK
    b = (b + int.from_bytes(tail[4:8], "little")) & _MASK
    c = (c + int.from_bytes(tail[8:12], "little")) & _MASK
    return _final(a, b, c)


def clear_write_flags(path: Path) -> bool:
    """Clear a killed writer's flags in ``path``'s superblock; True if they were set.

    Leaves the file alone (returns False) unless it starts with a version 2/3 superblock
    whose checksum verifies, so a foreign or damaged file is never made worse.
    """
    with open(path, "r+b") as f:
        head = f.read(12)
        if len(head) < 12 or head[:8] != _SIGNATURE or head[8] not in (2, 3):
            return False
        offsets, lengths, flags = head[9], head[10], head[_FLAGS_OFFSET]
        del lengths  # the v2/3 superblock holds four addresses and no lengths
        body_size = 12 + 4 * offsets
        f.seek(0)
        body = f.read(body_size)
        stored = int.from_bytes(f.read(4), "little")
        if len(body) != body_size or lookup3(body) != stored or flags == 0:
            return False
        cleared = body[:_FLAGS_OFFSET] + b"\0" + body[_FLAGS_OFFSET + 1:]
        f.seek(0)
        f.write(cleared + lookup3(cleared).to_bytes(4, "little"))
        f.flush()
        os.fsync(f.fileno())
    return True
