"""Quality-of-service settings of a ring segment: one schema, documented field by field.

The same dataclass drives TOML files, ``asapo-hpc config explain`` and the docs table
(tests/ring/test_config.py fails when a field lacks its documentation).
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import re
from dataclasses import dataclass, field

from asapo_hpc.errors import AsapoWrongInputError

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

# Documentation of every field: (meaning, what happens on create, what happens on open).
FIELD_DOCS: dict[str, tuple[str, str, str]] = {
    "slot_count": (
        "Slots in the ring (a power of two). A message takes one slot or a run of them.",
        "fixes the ring's capacity in messages",
        "must equal the segment's value, else AsapoConfigMismatchError",
    ),
    "slot_size": (
        "Bytes per slot (a multiple of 64). One detector frame per slot is a good choice; "
        "a message larger than a slot takes several consecutive slots.",
        "fixes the slot size; the segment is slot_count x slot_size bytes plus tables",
        "must equal the segment's value, else AsapoConfigMismatchError",
    ),
    "groups": (
        "Durable consumer groups declared at creation. The producer keeps every message "
        "until each of them acknowledged it, even before their first member attaches.",
        "the groups exist from the start at sequence 0",
        "groups named here that do not exist yet are added (starting at the oldest message "
        "the others still hold)",
    ),
    "max_groups": (
        "Most consumer groups the segment can hold (1..64).",
        "sizes the group table",
        "must equal the segment's value",
    ),
    "max_members": (
        "Most attached producers and consumers at once (1..4095). Entries of dead "
        "processes are reused.",
        "sizes the member table",
        "must equal the segment's value",
    ),
    "max_streams": (
        "Most distinct stream names in the segment (1..4096).",
        "sizes the stream table",
        "must equal the segment's value",
    ),
    "max_attempts": (
        "Deliveries of one message to a group (first delivery included) before it is "
        "dead-lettered: counted, logged, and no longer holding the ring.",
        "default for every group",
        "must equal the segment's value; change a group's with Consumer.set_resend_nacs",
    ),
    "lease_s": (
        "Seconds a member may hold a message without acknowledging it; then it goes to "
        "another member (up to one clock tick, 1-10 ms, later: never earlier). A member "
        "that dies is noticed sooner, from its pid.",
        "default for every group",
        "must equal the segment's value; change a group's with Consumer.set_resend_nacs",
    ),
    "full_timeout_s": (
        "Seconds a producer waits for space when the ring is full before raising "
        "AsapoRingFullError. Per producer, not stored in the segment.",
        "-",
        "-",
    ),
    "copy_threads": (
        "Threads a producer's send() uses to copy one large message (>= 4 MiB) into its "
        "slot. On a node the consumer's core is mostly idle while a frame is copied, and "
        "two threads copy ~1.5-2x faster than one. 1 = copy in the calling thread only. "
        "Per producer, not stored in the segment.",
        "-",
        "-",
    ),
    "mode": (
        "Permission bits of the segment file in /dev/shm (0o600; 0o660 to share with a "
        "group).",
        "applied to the new segment",
        "ignored (the segment keeps its own)",
    ),
}

# Field annotation (a string: annotations are postponed) -> accepted Python types.
_FIELD_TYPES = {"int": numbers.Integral, "float": numbers.Real}

_SEGMENT_FIELDS = ("slot_count", "slot_size", "max_groups", "max_members", "max_streams",
                   "max_attempts", "lease_s")


@dataclass(frozen=True)
class RingConfig:
    """Settings of one ring segment; see FIELD_DOCS or ``asapo-hpc config explain``."""

    slot_count: int = 1024
    slot_size: int = 64 * 1024
    groups: tuple[str, ...] = field(default_factory=tuple)
    max_groups: int = 8
    max_members: int = 64
    max_streams: int = 64
    max_attempts: int = 3
    lease_s: float = 30.0
    full_timeout_s: float = 10.0
    copy_threads: int = 2
    mode: int = 0o600

    def __post_init__(self) -> None:
        if isinstance(self.groups, (str, bytes)):  # tuple("sink") would be 4 groups
            raise AsapoWrongInputError(
                f"RingConfig.groups={self.groups!r} is out of range: must be a list of names")
        object.__setattr__(self, "groups", tuple(self.groups))
        self.validate()

    def validate(self) -> None:
        """Raise AsapoWrongInputError naming the first setting out of range."""
        for f in dataclasses.fields(self):  # types first: a TOML "1024" is not 1024
            value, want = getattr(self, f.name), _FIELD_TYPES.get(f.type)
            if want and (isinstance(value, bool) or not isinstance(value, want)):
                raise AsapoWrongInputError(
                    f"RingConfig.{f.name}={value!r} is out of range: must be of type {f.type}")
        checks = [
            ("slot_count", 2 <= self.slot_count <= 1 << 24
             and self.slot_count & (self.slot_count - 1) == 0, "a power of two, 2..2^24"),
            ("slot_size", 64 <= self.slot_size <= 1 << 31 and self.slot_size % 64 == 0,
             "a multiple of 64 bytes, at most 2 GiB"),
            ("max_groups", 1 <= self.max_groups <= 64, "1..64"),
            ("max_members", 1 <= self.max_members <= 4095, "1..4095"),
            ("max_streams", 1 <= self.max_streams <= 4096, "1..4096"),
            ("max_attempts", 1 <= self.max_attempts <= 255, "1..255"),
            ("lease_s", self.lease_s >= 0.001, "at least 0.001 s"),
            ("full_timeout_s", self.full_timeout_s >= 0, "not negative"),
            ("copy_threads", 1 <= self.copy_threads <= 64, "1..64"),
            ("groups", len(self.groups) <= self.max_groups, "at most max_groups names"),
            ("mode", 0 <= self.mode <= 0o777, "permission bits, 0..0o777"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise AsapoWrongInputError(
                    f"RingConfig.{name}={getattr(self, name)!r} is out of range: must be {want}")
        for group in self.groups:
            check_name(group, "group name", 40)  # as Consumer's group ids
        if len(set(self.groups)) != len(self.groups):
            raise AsapoWrongInputError(f"RingConfig.groups has duplicates: {self.groups}")

    def segment_items(self) -> dict[str, object]:
        """The settings stored in the segment, for comparison on open."""
        return {name: getattr(self, name) for name in _SEGMENT_FIELDS}

    @classmethod
    def from_dict(cls, values: dict) -> RingConfig:
        check_known_keys("ring", values, cls)
        return cls(**values)


def check_known_keys(what: str, values: dict, cls: type) -> None:
    """Refuse settings that the dataclass `cls` does not have, naming the known ones (one
    check for every settings file: ring, node, sink, pipeline)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise AsapoWrongInputError(f"unknown {what} settings {sorted(unknown)}; "
                                   f"known: {sorted(known)}")


def check_name(value: str, what: str, max_len: int) -> str:
    """Names of segments, groups and sources: letters, digits, '_', '.', '-'."""
    if not isinstance(value, str) or not _NAME.match(value) or len(value) > max_len:
        raise AsapoWrongInputError(
            f"bad {what} {value!r}: use 1..{max_len} letters, digits, '_', '.', '-' "
            "(not starting with '.' or '-')")
    return value


def segment_name(beamtime: str, data_source: str) -> str:
    """The /dev/shm name of the segment for (beamtime, data source)."""
    check_name(beamtime, "beamtime id", 80)
    check_name(data_source, "data source", 80)
    prefix = os.environ.get("ASAPO_HPC_SHM_PREFIX", "asapo_hpc")
    return f"{prefix}.{beamtime}.{data_source}"


def explain() -> str:
    """A table of every setting: default, meaning, on create, on open."""
    defaults = RingConfig()
    lines = []
    for f in dataclasses.fields(RingConfig):
        meaning, on_create, on_open = FIELD_DOCS[f.name]
        lines.append(f"{f.name} (default {getattr(defaults, f.name)!r})\n  {meaning}\n"
                     f"  on create: {on_create}\n  on open: {on_open}")
    return "\n".join(lines)
