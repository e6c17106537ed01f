"""The consumer: claims messages for a consumer group, zero-copy, and acknowledges them."""

from __future__ import annotations

import secrets
import string
from typing import Any

import numpy as np

from asapo_hpc._core import Segment, check, ffi, lib
from asapo_hpc.client._common import StreamTable, open_segment
from asapo_hpc.client.message import MSG_FIELDS, MSG_SIZE, NO_NEXT_STREAM, Message
from asapo_hpc.config import RingConfig, check_name
from asapo_hpc.errors import (
    AsapoEndOfStreamError,
    AsapoLeaseExpiredError,
    AsapoNoDataError,
    AsapoStreamFinishedError,
    AsapoWrongInputError,
    error_for,
)

_EAGAIN, _ENOENT, _ESTALE = -11, -2, -116
_GROUP_ID_CHARS = string.ascii_lowercase + string.digits
_FOREVER_NS = 10 * 365 * 24 * 3600 * 10**9  # "never resend": ten years


def generate_group_id() -> str:
    """A new random consumer-group id (20 characters, like ASAPO's)."""
    return "".join(secrets.choice(_GROUP_ID_CHARS) for _ in range(20))


class Consumer:
    """Reads messages of one (beamtime, data source) from the node's shared ring.

    Every message of a stream goes to exactly one member of each consumer group; groups
    each see every message. ``get_next`` returns a Message whose ``data`` is a read-only
    numpy view into shared memory, valid until the message is acknowledged.
    A group named without a stream follows every stream in publish order; with a stream
    it follows that stream only. One Consumer is for one thread.
    """

    def __init__(self, beamtime: str, data_source: str, *, config: RingConfig | None = None,
                 create: bool = True, timeout_ms: int = 1000, batch_capacity: int = 256):
        self._segment = open_segment(beamtime, data_source, config, create)
        self._segment.view.flags.writeable = False  # consumers never write shared data
        self._member = self._segment.join(lib.AHR_ROLE_CONSUMER)
        self._streams = StreamTable(self._segment)
        self._groups: dict[tuple[str, str | None], int] = {}
        self._claims: dict[tuple[int, int, int], int] = {}  # (group, stream, id) -> seq
        self._msg_buf = ffi.new("struct ahr_msg[]", batch_capacity)
        self._msg_bytes = ffi.buffer(self._msg_buf)
        self._seq_buf = ffi.new("uint64_t[]", batch_capacity)
        self._resend: tuple[int, int] | None = None
        self.timeout_ns = int(timeout_ms * 1e6)
        self.beamtime, self.data_source = beamtime, data_source

    # -- groups and streams ---------------------------------------------------------------

    def _group(self, group_id: str, stream: str | None) -> int:
        key = (group_id, stream)
        handle = self._groups.get(key)
        if handle is None:
            check_name(group_id, "group id", 40)
            stream_idx = None if stream is None else self._streams.index(stream)
            name = group_id if stream is None else f"{group_id}@{stream_idx}"
            handle = self._segment.group(name, stream_idx)
            if self._resend is not None:
                check(lib.ahr_group_set_resend(self._segment.ptr, handle, *self._resend),
                      "set_resend_nacs")
            self._groups[key] = handle
        return handle

    def _stream_name(self, idx: int) -> str:
        return self._streams.name(idx)

    def set_resend_nacs(self, resend: bool, delay_ms: int, attempts: int) -> None:
        """ASAPO's resend settings for the groups this consumer uses: an unacknowledged
        message goes to another member after delay_ms, at most `attempts` deliveries.
        resend=False: only messages of dead members are resent."""
        lease_ns = int(delay_ms * 1e6) if resend else _FOREVER_NS
        self._resend = (max(lease_ns, 1_000_000), int(attempts))
        for handle in self._groups.values():
            check(lib.ahr_group_set_resend(self._segment.ptr, handle, *self._resend),
                  "set_resend_nacs")

    # -- reading --------------------------------------------------------------------------

    def get_next(self, group_id: str, meta_only: bool = False, stream: str | None = None,
                 timeout_ms: int | None = None) -> Message:
        """Claim the next message for `group_id` (a due redelivery first).

        Raises AsapoStreamFinishedError at the end of a finished stream (with the next
        stream's name), AsapoEndOfStreamError/AsapoNoDataError when nothing came in time.
        """
        handle = self._group(group_id, stream)
        timeout = self.timeout_ns if timeout_ms is None else int(timeout_ms * 1e6)
        rc = lib.ahr_get_next(self._segment.ptr, handle, self._member, timeout, self._msg_buf)
        if rc < 0:
            return self._no_message(rc, group_id, stream)
        fields = MSG_FIELDS.unpack_from(self._msg_bytes)
        msg = Message(fields, self, handle)
        if fields[9] & 1:  # a finish marker is acknowledged here and told as an error
            return self._finish(msg, group_id, stream)
        self._claims[(handle, fields[8], fields[1])] = fields[0]
        return msg

    def get_next_batch(self, group_id: str, n: int, stream: str | None = None,
                       timeout_ms: int | None = None) -> list[Message]:
        """Claim up to `n` messages in one call; waits only for the first."""
        handle = self._group(group_id, stream)
        n = min(int(n), len(self._msg_buf))
        timeout = self.timeout_ns if timeout_ms is None else int(timeout_ms * 1e6)
        got = lib.ahr_get_next_batch(self._segment.ptr, handle, self._member, n, timeout,
                                     self._msg_buf)
        if got < 0:
            return [self._no_message(got, group_id, stream)]
        out, claims, finish = [], self._claims, None
        buf = self._msg_bytes
        for i in range(got):
            fields = MSG_FIELDS.unpack_from(buf, i * MSG_SIZE)
            msg = Message(fields, self, handle)
            if fields[9] & 1:
                finish = msg
                continue
            claims[(handle, fields[8], fields[1])] = fields[0]
            out.append(msg)
        if finish is not None and not out:
            self._finish(finish, group_id, stream)
        elif finish is not None:  # hand the marker out on the next call
            check(lib.ahr_nack(self._segment.ptr, handle, self._member, finish.seq, 0), "nack")
        return out

    def _finish(self, marker: Message, group_id: str, stream: str | None) -> Message:
        lib.ahr_ack(self._segment.ptr, marker._group, self._member, marker.seq)
        next_stream = marker.meta.get("next_stream")
        if next_stream == NO_NEXT_STREAM:
            next_stream = None
        if stream is not None:  # a one-stream group has nothing more to follow
            lib.ahr_group_retire(self._segment.ptr, marker._group)
            self._groups.pop((group_id, stream), None)
        raise AsapoStreamFinishedError(
            f"stream {marker.stream!r} is finished (last id {marker.id - 1}); "
            f"next stream: {next_stream!r}", next_stream=next_stream)

    def _no_message(self, rc: int, group_id: str, stream: str | None) -> Message:
        if rc == _ENOENT or (rc == _EAGAIN and stream is not None):
            self._groups.pop((group_id, stream), None)
            finished = self._finished_state(stream)
            if finished is not None:
                raise AsapoStreamFinishedError(
                    f"stream {stream!r} is finished; next stream: {finished!r}",
                    next_stream=finished or None)
        if rc == _EAGAIN:
            where = f"stream {stream!r}" if stream else "any stream"
            raise AsapoEndOfStreamError(
                f"no new message for group {group_id!r} in {where} before the timeout")
        raise error_for(rc, f"get_next for group {group_id!r}")

    def _finished_state(self, stream: str | None) -> str | None:
        """None if not finished, '' if finished without next stream, else the next name."""
        if stream is None:
            return None
        state = lib.ahr_stream_finished(self._segment.ptr, self._streams.index(stream))
        if state == 0:
            return None
        return "" if state == 1 else self._streams.name(state - 2)

    # -- acknowledging ---------------------------------------------------------------------

    def _claim_of(self, group_id: str, id: Any, stream: str | None) -> tuple[int, int, tuple]:
        """(group handle, ring sequence, claims key) of a message this consumer holds."""
        if isinstance(id, Message):
            f = id._fields
            return id._group, f[0], (id._group, f[8], f[1])
        stream_idx = self._streams.index(stream or "default")
        for (gid, gstream), handle in self._groups.items():
            if gid == group_id and (stream is None or gstream in (None, stream)):
                key = (handle, stream_idx, int(id))
                seq = self._claims.get(key)
                if seq is not None:
                    return handle, seq, key
        raise AsapoWrongInputError(
            f"message id {id} of stream {stream or 'default'!r} is not held by this consumer "
            f"in group {group_id!r} (already acknowledged, or never delivered here)")

    def _raise_ack(self, rc: int, seq: int) -> None:
        if rc == _ESTALE:
            raise AsapoLeaseExpiredError(
                f"message at ring position {seq} was not acknowledged in time (its lease "
                "expired or this member was presumed dead) and went to another member; "
                "raise the lease with set_resend_nacs or the segment's lease_s")
        raise error_for(rc, "acknowledge")

    def acknowledge(self, group_id: str, id: int | Message, stream: str | None = None) -> None:
        """Acknowledge message `id` (or a Message) for the group; its slot may then be reused."""
        handle, seq, key = self._claim_of(group_id, id, stream)
        self._claims.pop(key, None)
        rc = lib.ahr_ack(self._segment.ptr, handle, self._member, seq)
        if rc < 0:
            self._raise_ack(rc, seq)

    def acknowledge_batch(self, group_id: str, messages: list[Message]) -> int:
        """Acknowledge several messages in one call; returns how many were still ours."""
        if not messages:
            return 0
        handle = messages[0]._group
        n = len(messages)
        seqs = self._seq_buf if n <= len(self._seq_buf) else ffi.new("uint64_t[]", n)
        for i, msg in enumerate(messages):
            if msg._group != handle:
                raise AsapoWrongInputError("acknowledge_batch: messages of one group only")
            seqs[i] = msg._fields[0]
            self._claims.pop((handle, msg._fields[8], msg._fields[1]), None)
        done = lib.ahr_ack_batch(self._segment.ptr, handle, self._member, seqs, n)
        return check(done, "acknowledge_batch")

    def neg_acknowledge(self, group_id: str, id: int | Message, delay_ms: int = 0,
                        stream: str | None = None) -> None:
        """Give the message back to the group: redelivered after delay_ms (to any member)."""
        handle, seq, key = self._claim_of(group_id, id, stream)
        self._claims.pop(key, None)
        rc = lib.ahr_nack(self._segment.ptr, handle, self._member, seq, int(delay_ms * 1e6))
        if rc < 0:
            self._raise_ack(rc, seq)

    # -- latest-value reads ------------------------------------------------------------------

    def get_last(self, stream: str | None = None, max_bytes: int | None = None) -> Message:
        """A copy of the newest message (any stream, or the newest of `stream` if it is the
        newest in the ring). Never holds the producer back; retries when overwritten."""
        cap = max_bytes or self._segment.config["slot_size"] * self._segment.config["slot_count"]
        dst = np.empty(cap, dtype=np.uint8)
        out = ffi.new("struct ahr_msg *")
        rc = lib.ahr_read_last(self._segment.ptr, ffi.from_buffer(dst), cap, out)
        if rc == _EAGAIN:
            raise AsapoNoDataError("nothing published yet")
        check(rc, "get_last")
        return self._copied(out, dst)

    def get_by_id(self, id: int, stream: str = "default") -> Message:
        """A copy of message `id` of `stream` if it is still in the ring."""
        cap = self._segment.config["slot_size"] * self._segment.config["slot_count"]
        dst = np.empty(cap, dtype=np.uint8)
        out = ffi.new("struct ahr_msg *")
        rc = lib.ahr_read_by_id(self._segment.ptr, self._streams.index(stream), int(id),
                                ffi.from_buffer(dst), cap, out)
        if rc == _ENOENT:
            raise AsapoNoDataError(f"message {id} of stream {stream!r} is not in the ring")
        check(rc, f"get_by_id {id}")
        return self._copied(out, dst)

    def _copied(self, out, dst: np.ndarray) -> Message:
        fields = MSG_FIELDS.unpack_from(ffi.buffer(out))
        tail = ffi.new("char[]", max(1, fields[6] + fields[7]))
        rc = lib.ahr_read_tail(self._segment.ptr, out, tail, len(tail))
        if rc == _ESTALE:
            raise AsapoNoDataError("message was overwritten while reading; try again")
        check(rc, "read metadata")
        return Message(fields, self, -1, dst[:fields[3]],
                       ffi.buffer(tail, fields[6] + fields[7])[:])

    # -- state ------------------------------------------------------------------------------

    def group_stats(self, group_id: str, stream: str | None = None) -> dict[str, int]:
        return self._segment.group_stats(self._group(group_id, stream))

    @property
    def segment(self) -> Segment:
        return self._segment

    def close(self) -> None:
        """Leave the segment; messages still held go to other members of their groups."""
        if not self._segment.closed:
            self._segment.leave(self._member)
            self._segment.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
