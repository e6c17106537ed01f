"""One attached ring segment: create / attach / detach and table look-ups, plus the one
numpy view of the whole mapping that every message slices (a slice costs ~125 ns, a fresh
np.frombuffer per message ~670 ns)."""

from __future__ import annotations

import errno

import numpy as np

from asapo_hpc._core._ring import ffi, lib
from asapo_hpc.config import RingConfig
from asapo_hpc.errors import AsapoConfigMismatchError, AsapoCorruptSegmentError, error_for

CONFIG_FIELDS = ("slot_count", "slot_size", "max_groups", "max_members", "max_streams",
                 "max_attempts")


def check(rc: int, what: str) -> int:
    """Return rc, or raise the exception for a negative errno with `what` as context."""
    if rc < 0:
        raise error_for(rc, what)
    return rc


def _c_config(config: RingConfig):
    c = ffi.new("struct ahr_config *")
    for name in CONFIG_FIELDS:
        setattr(c, name, getattr(config, name))
    c.lease_ns = int(config.lease_s * 1e9)
    return c


def _attach_problem(rc: int, name: str) -> str:
    """What a failed attach means, and what to do about it."""
    if rc == -errno.ENOENT:
        return "it does not exist (a producer creates it)"
    if rc == -errno.EPROTO:
        try:
            with open(f"/dev/shm/{name}", "rb") as f:
                version = int.from_bytes(f.read(12)[8:12], "little")
        except OSError:
            version = "?"
        return (f"it has layout version {version}, this asapo_hpc reads version "
                f"{lib.AHR_LAYOUT_VERSION}: it was made by another asapo_hpc version; use "
                "that version, or unlink the segment once no process uses it")
    if rc == -errno.EBADMSG:
        return ("not a valid asapo_hpc ring (a foreign file, truncated, or a corrupt "
                f"header); unlink /dev/shm/{name} once no process uses it")
    return "the operating system refused"


class Segment:
    """A process-local handle on a shared segment."""

    def __init__(self, handle, name: str):
        self.name = name
        self.ptr = handle  # the `struct ahr_ring *` for lib calls
        self.size = lib.ahr_size(handle)
        # The mapping is unmapped only when the last numpy view of it is gone: the base
        # pointer owns the handle, every view keeps the base alive.
        base = ffi.gc(lib.ahr_base(handle), lambda _base: lib.ahr_detach(handle))
        # One view of the whole mapping, made once; messages are slices of it.
        self.view = np.frombuffer(ffi.buffer(base, self.size), dtype=np.uint8)
        self.config = self._read_config()

    @classmethod
    def create(cls, name: str, config: RingConfig) -> Segment:
        out = ffi.new("struct ahr_ring **")
        names = [ffi.new("char[]", g.encode()) for g in config.groups]
        arr = ffi.new("char *[]", names) if names else ffi.NULL
        check(lib.ahr_create(name.encode(), _c_config(config), arr, len(names), config.mode, out),
              f"cannot create shared-memory segment {name!r}")
        return cls(out[0], name)

    @classmethod
    def attach(cls, name: str) -> Segment:
        out = ffi.new("struct ahr_ring **")
        rc = lib.ahr_attach(name.encode(), out)
        if rc < 0:
            raise error_for(rc, f"cannot attach shared-memory segment {name!r}: "
                                f"{_attach_problem(rc, name)}")
        return cls(out[0], name)

    def _read_config(self) -> dict[str, object]:
        c = ffi.new("struct ahr_config *")
        lib.ahr_config_get(self.ptr, c)
        values = {name: getattr(c, name) for name in CONFIG_FIELDS}
        values["lease_s"] = c.lease_ns / 1e9
        return values

    def check_config(self, config: RingConfig) -> None:
        """Raise AsapoConfigMismatchError naming every setting that contradicts the segment."""
        wanted = config.segment_items()
        diffs = [f"{k}: segment has {self.config[k]!r}, asked for {wanted[k]!r}"
                 for k in wanted if abs(float(self.config[k]) - float(wanted[k])) > 1e-9]
        if diffs:
            raise AsapoConfigMismatchError(
                f"segment {self.name!r} was created with other settings ({'; '.join(diffs)}); "
                "open it with config=None to take its settings, or use another data source")

    def join(self, role: int) -> int:
        return check(lib.ahr_join(self.ptr, role),
                     f"segment {self.name!r}: member table full (max_members)")

    def leave(self, member: int) -> None:
        lib.ahr_leave(self.ptr, member)

    def group(self, name: str, stream_filter: int | None = None) -> int:
        """Open a consumer group (following one stream index, or all); its handle."""
        flt = lib.AHR_ALL_STREAMS if stream_filter is None else stream_filter
        return check(lib.ahr_group_open(self.ptr, name.encode(), flt),
                     f"segment {self.name!r}: cannot open consumer group {name!r} "
                     "(bad name or the group table is full: max_groups)")

    def find_group(self, name: str, stream_filter: int | None = None) -> int | None:
        """The handle of the live group `name` (following that stream, or all), or None;
        unlike group() it never makes one."""
        flt = lib.AHR_ALL_STREAMS if stream_filter is None else stream_filter
        rc = lib.ahr_group_find(self.ptr, name.encode(), flt)
        return None if rc in (-errno.ENOENT, -errno.EEXIST, -errno.EINVAL) else check(rc, name)

    def groups(self) -> dict[str, int]:
        """Every live group: its name -> handle (a snapshot)."""
        cap = int(self.config["max_groups"])
        handles = ffi.new("uint32_t[]", cap)
        n = min(check(lib.ahr_group_list(self.ptr, handles, cap), "list groups"), cap)
        name = ffi.new("char[64]")
        out = {}
        for handle in handles[0:n]:
            if lib.ahr_group_name(self.ptr, handle, name, 64) >= 0:  # else retired meanwhile
                out[ffi.string(name).decode(errors="replace")] = handle
        return out

    def stream(self, name: str) -> int:
        raw = name.encode()
        return check(lib.ahr_stream_index(self.ptr, raw, len(raw)),
                     f"segment {self.name!r}: cannot register stream {name!r} (1..95 bytes; "
                     "the stream table may be full: max_streams)")

    def stream_name(self, index: int) -> str:
        buf = ffi.new("char[128]")
        check(lib.ahr_stream_name(self.ptr, index, buf, 128), f"stream index {index}")
        try:
            return ffi.string(buf).decode()
        except UnicodeDecodeError:
            raise AsapoCorruptSegmentError(
                f"segment {self.name!r}: the name of stream {index} is not UTF-8: the stream "
                "table is corrupt") from None

    def group_stats(self, group: int) -> dict[str, int]:
        s = ffi.new("struct ahr_group_stats *")
        check(lib.ahr_group_stats(self.ptr, group, s), f"group index {group}")
        stats = {k: getattr(s, k) for k in ("next", "floor", "delivered", "acked",
                                            "redelivered", "deadlettered", "nacked")}
        stats["stream"] = None if s.stream_filter == lib.AHR_ALL_STREAMS else s.stream_filter
        return stats

    def ring_stats(self) -> dict[str, int]:
        s = ffi.new("struct ahr_ring_stats *")
        lib.ahr_ring_stats(self.ptr, s)
        return {k: getattr(s, k) for k in ("head", "published", "min_floor", "members",
                                           "groups")}

    def live_members(self) -> int:
        """Producers and consumers attached whose process is alive (0: nobody uses it)."""
        return lib.ahr_live_members(self.ptr)

    def close(self) -> None:
        """Drop this handle; the mapping goes when no message view refers to it. Later calls
        pass a NULL ring, which the C core answers with -EBADF ("closed")."""
        self.view = None
        self.ptr = ffi.NULL

    @property
    def closed(self) -> bool:
        return self.ptr == ffi.NULL

    @staticmethod
    def unlink(name: str) -> bool:
        """Remove the segment's name; True if it existed."""
        return lib.ahr_unlink(name.encode()) == 0
