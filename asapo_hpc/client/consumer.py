"""The consumer: claims messages for a consumer group, zero-copy, and acknowledges them."""

from __future__ import annotations

import functools
import logging
import secrets
import string
import struct
from pickle import PickleBuffer
from typing import Any, NoReturn

import numpy as np

from asapo_hpc._core import Acknowledge, GetNext, Segment, check, ffi, lib
from asapo_hpc.client import disk
from asapo_hpc.client._common import CallContext, StreamTable, open_segment
from asapo_hpc.client.disk_groups import DISK_GROUP, DiskGroups
from asapo_hpc.client.message import (
    MSG_FIELDS,
    MSG_SIZE,
    NO_NEXT_STREAM,
    Message,
    MessageBatch,
    OwnedMessage,
    message_class,
)
from asapo_hpc.client.streams import ConsumerStreams
from asapo_hpc.config import RingConfig, check_name
from asapo_hpc.errors import (
    AsapoDataNotInCacheError,
    AsapoEndOfStreamError,
    AsapoLeaseExpiredError,
    AsapoNoDataError,
    AsapoStreamFinishedError,
    AsapoWrongInputError,
    error_for,
)

_EAGAIN, _ENOENT, _ESTALE = -11, -2, -116
_EMSGSIZE = -90  # ahr_read_part: the buffer was short; the message says its length
_NO_SEQ = 2**64 - 1
_new = Message.__new__  # MessageCore's: an empty message of a group's class
log = logging.getLogger("asapo_hpc.consumer")
_NOT_CLAIMED = 0xFFFFFFFF  # group handle of get_last / get_by_id copies: no group has it
_GROUP_ID_CHARS = string.ascii_lowercase + string.digits
_FOREVER_NS = 10 * 365 * 24 * 3600 * 10**9  # "never resend": ten years
_SHAPE = struct.Struct("<QIII4x")  # struct ahr_batch_shape: data_len, first_slot, step, flags
_SLOT_VIEWS_MAX = 16384  # rings with more slots make no per-slot view tables (memory)
_SLOT_VIEW_LENGTHS = 4  # tables kept at once, one per message length
_alloc_msgs = ffi.new_allocator(should_clear_after_alloc=False)  # C fills what is read


@functools.cache  # n <= prefetch: a few entries
def _seqs_struct(n: int) -> struct.Struct:
    """n sequences as C uint64_t[n]."""
    return struct.Struct(f"={n}Q")


def generate_group_id() -> str:
    """A new random consumer-group id (20 characters, like ASAPO's)."""
    return "".join(secrets.choice(_GROUP_ID_CHARS) for _ in range(20))


class Consumer(CallContext, ConsumerStreams):
    """Reads messages of one (beamtime, data source) from the node's shared ring.

    Every message of a stream goes to exactly one member of each consumer group; groups
    each see every message. ``get_next`` returns a Message whose ``data`` is a read-only
    numpy view into shared memory, valid until the message is acknowledged.
    A group named without a stream follows every stream in publish order; with a stream
    it follows that stream only. One Consumer is for one thread.

    ``prefetch`` (default 1: off) is a quality-of-service setting for small messages at high
    rates: ``get_next`` claims up to that many messages of a group in one call into the C
    core and hands them out one at a time, and acknowledgements are gathered and sent
    together once ``prefetch`` of them wait or nothing claimed is left to hand out. The
    trade-offs, as with RabbitMQ's prefetch count: claimed messages wait for this member
    even when another member is idle, and their leases run from the claim (keep
    prefetch x time per message below the lease); an acknowledgement that arrives after its
    lease expired is logged, not raised. ``close()`` gives unused claims back at once
    without counting a delivery attempt; a member that dies has them redelivered as usual.
    """

    def __init__(self, beamtime: str, data_source: str, *, config: RingConfig | None = None,
                 create: bool = True, timeout_ms: int = 1000, batch_capacity: int = 256,
                 auto_ack: bool = False, prefetch: int = 1, data_root: str | None = None):
        self._segment = open_segment(beamtime, data_source, config, create)
        # Consumers never write shared data: a view of a read-only buffer, whose flag a
        # user cannot switch back on (flags.writeable = False alone could be undone).
        self._segment.view = np.frombuffer(memoryview(self._segment.view).toreadonly(),
                                           dtype=np.uint8)
        self._member = self._segment.join(lib.AHR_ROLE_CONSUMER)
        self._streams = StreamTable(self._segment)
        self._groups: dict[tuple[str, str | None], int] = {}
        self._all_streams: dict[str, int] = {}  # the same handles, for stream=None
        self._msg_class: dict[int, type[Message]] = {}  # group handle -> its Message class
        self._retired: set[tuple[str, str | None]] = set()  # groups whose stream ended
        self._held_markers: dict[int, int] = {}  # group handle -> finish marker told last
        self._pending_finish: dict[int, list[Message]] = {}  # markers a batch held back
        self._ptr = self._segment.ptr
        self._view = self._segment.view
        self._buffer = memoryview(self._view)  # read-only like the view
        self._ctx = ffi.new("struct ahrpy_ctx *")
        self._ctx.ring, self._ctx.member = self._ptr, self._member
        self._msg_buf = ffi.new("struct ahr_msg *")
        self._ctx.msg = self._msg_buf
        self._msg_bytes = memoryview(ffi.buffer(self._msg_buf))
        self._batch_capacity = int(batch_capacity)
        self._shape = ffi.new("struct ahr_batch_shape *")
        self._shape_bytes = memoryview(ffi.buffer(self._shape))
        # per message length: a view of every slot's first `length` bytes, made once and
        # handed out by MessageBatch.buffers() for batches whose shape allows it
        self._views: dict[int, list[memoryview]] = {}
        self._view_pins: dict[int, list[PickleBuffer]] = {}
        self._views_wanted: int | None = None
        self._slots_offset: int | None = None
        # auto_ack: asking a group for more acknowledges what this member got from it last
        # (ASAPO's default needs no acks). Still at-least-once: a member that dies while
        # working on a message never asked for the next, so the message is redelivered.
        self._auto_ack = bool(auto_ack)
        self._held: dict[int, int] = {}  # group handle -> seq of the last get_next message
        self._held_batch: dict[int, MessageBatch] = {}  # group handle -> last batch
        self._resend: tuple[int, int] | None = None
        self._init_prefetch(prefetch)
        self.timeout_ns = int(timeout_ms * 1e6)
        self.beamtime, self.data_source = beamtime, data_source
        self.data_root = data_root  # the node's data folder, for reads from disk
        self._disk_groups = DiskGroups(self)  # groups reading a stream from disk
        self._install_fast_path()

    def _install_fast_path(self) -> None:
        """get_next(group) and acknowledge(group, message) run in C (_core._fastpath) on the
        state below, prefetch refills included; any other call, or state the C side leaves
        to Python (a new group, finish markers, disk groups, errors), runs the methods here
        (the C side calls _no_message, _finish, _acks_sent, _raise_ack, _warn_auto_ack)."""
        cls = type(self)
        state = dict(ctx=ffi.buffer(self._ctx), all_streams=self._all_streams,
                     held_markers=self._held_markers, pending_finish=self._pending_finish,
                     queued=self._queued, acks=self._acks, held=self._held,
                     held_batch=self._held_batch, msg_class=self._msg_class,
                     message_type=Message, owner=self, prefetch=self.prefetch,
                     disk_group=DISK_GROUP, auto_ack=self.auto_ack)
        if cls.get_next is Consumer.get_next:
            self.get_next = GetNext(slow=Consumer.get_next.__get__(self), **state)
        if cls.acknowledge is Consumer.acknowledge:
            self.acknowledge = Acknowledge(slow=Consumer.acknowledge.__get__(self), **state)

    @property
    def prefetch(self) -> int:
        """Messages claimed per C call by get_next (1: off); fixed at construction."""
        return self._prefetch

    @property
    def auto_ack(self) -> bool:
        """Whether asking a group for more acknowledges what came before; fixed at
        construction (the C fast path and the Python methods read it then)."""
        return self._auto_ack

    def _init_prefetch(self, prefetch: int) -> None:
        # prefetch > 1: get_next claims up to `prefetch` messages in one C call and hands
        # them out one by one; acknowledgements are sent together (see _defer_ack).
        if type(prefetch) is not int or not 1 <= prefetch <= self._batch_capacity:
            raise AsapoWrongInputError(
                f"prefetch must be an int from 1 (off) to batch_capacity "
                f"({self._batch_capacity}), not {prefetch!r}")
        self._prefetch = prefetch
        self._queued: dict[int, list[Message]] = {}  # group handle -> messages claimed,
        # not yet handed out (newest first)
        self._acks: dict[int, list[int]] = {}  # group handle -> acknowledged, not yet sent
        if prefetch > 1:
            self._prefetch_buf = ffi.new("struct ahr_msg[]", prefetch)
            self._ack_seqs = ffi.new("uint64_t[]", prefetch)
            self._ack_bytes = memoryview(ffi.buffer(self._ack_seqs))

    # -- groups and streams ---------------------------------------------------------------

    def _group(self, group_id: str, stream: str | None) -> int:
        key = (group_id, stream)
        handle = self._groups.get(key)
        if handle is None:
            if stream is not None and self._disk_groups.reads_from_disk(group_id, stream):
                return DISK_GROUP  # the ring cannot deliver this stream: see disk_groups.py
            if key in self._retired:  # its stream ended: never make it again
                self._raise_finished(stream, self._finished_state(stream) or "")
            check_name(group_id, "group id", 40)
            stream_idx = None if stream is None else self._streams.index(stream)
            name = group_id if stream is None else f"{group_id}@{stream_idx}"
            handle = self._segment.group(name, stream_idx)
            if self._resend is not None:
                check(lib.ahr_group_set_resend(self._segment.ptr, handle, *self._resend),
                      "set_resend_nacs")
            self._groups[key] = handle
            if stream is None:
                self._all_streams[group_id] = handle
            self._msg_class[handle] = message_class(self, handle)
        return handle

    def _forget_group(self, group_id: str, stream: str | None) -> None:
        """Drop a cached handle (its group was retired): the next call opens it again."""
        self._groups.pop((group_id, stream), None)
        if stream is None:
            self._all_streams.pop(group_id, None)

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
        stream's name), AsapoEndOfStreamError when nothing came before the timeout.
        """
        # groups following every stream are looked up by name alone (no tuple per call)
        handle = self._all_streams.get(group_id) if stream is None else None
        if handle is None:
            handle = self._group(group_id, stream)
            if handle == DISK_GROUP:
                return self._disk_groups.get_next(group_id, stream, meta_only, timeout_ms)
        if self._held_markers or self._pending_finish:
            self._markers_first(handle, group_id, stream)
        if self.prefetch > 1:  # the next of the claimed run; a new run when none is left
            if self.auto_ack:
                self._defer_held(handle)
            msg = (self._queued.get(handle) or
                   self._refill(handle, group_id, stream, timeout_ms)).pop()
        else:  # one C call (auto_ack: acknowledging what this member holds in the same call)
            prev = _NO_SEQ
            if self.auto_ack:
                if self._held_batch:
                    self._ack_held(handle, single=False)
                prev = self._held.pop(handle, _NO_SEQ)
            if timeout_ms is None:  # the context's timeout and buffer: fewest arguments
                rc = lib.ahrpy_next(self._ctx, handle, prev)
            else:
                rc = lib.ahrpy_get_next_ack(self._ctx, handle, prev, int(timeout_ms * 1e6),
                                            self._msg_buf)
            if rc:
                if rc != 1:
                    self._no_message(rc, group_id, stream)
                self._warn_auto_ack(prev)  # a message came; the previous one's lease expired
            msg = _new(self._msg_class[handle])
            msg._fields = MSG_FIELDS.unpack_from(self._msg_bytes)
        if msg.is_finish_marker:  # acknowledged here and told as an error
            self._finish(msg, group_id, stream)
        if self.auto_ack:
            self._held[handle] = msg.seq
        return msg

    # -- prefetch ---------------------------------------------------------------------------

    def _defer_held(self, handle: int) -> None:
        """auto_ack with prefetch: what this member holds from the group counts as done;
        its acknowledgement joins the gathered ones."""
        if self._held_batch:
            self._ack_held(handle, single=False)
        prev = self._held.pop(handle, None)
        if prev is not None:
            self._defer_ack(handle, prev)

    def _refill(self, handle: int, group_id: str, stream: str | None,
                timeout_ms: int | None) -> list[Message]:
        """Send the acknowledgements gathered, then claim up to `prefetch` messages (waiting
        only for the first). The queue is kept newest first, so pop() gives the oldest."""
        self._flush_acks(handle)
        timeout = self.timeout_ns if timeout_ms is None else int(timeout_ms * 1e6)
        got = lib.ahr_get_next_batch(self._ptr, handle, self._member, self.prefetch, timeout,
                                     self._prefetch_buf)
        if got < 0:
            self._no_message(got, group_id, stream)
        queue = list(MessageBatch(self, handle, self._prefetch_buf, got))
        queue.reverse()
        self._queued[handle] = queue
        return queue

    def _defer_ack(self, handle: int, seq: int) -> None:
        """Gather an acknowledgement; send the gathered ones when `prefetch` of them wait or
        when this member has no claimed message of the group left to hand out (so a member
        that stops asking never sits on acknowledged slots)."""
        acks = self._acks.get(handle)
        if acks is None:
            acks = self._acks[handle] = []
        acks.append(seq)
        if len(acks) >= self.prefetch or not self._queued.get(handle):
            self._flush_acks(handle)

    def _flush_acks(self, handle: int) -> None:
        acks = self._acks.get(handle)
        if not acks:
            return
        n = len(acks)
        _seqs_struct(n).pack_into(self._ack_bytes, 0, *acks)  # 3x faster than a cffi slice
        acks.clear()
        self._acks_sent(lib.ahr_ack_batch(self._ptr, handle, self._member, self._ack_seqs, n),
                        n)

    @staticmethod
    def _acks_sent(done: int, n: int) -> None:
        """What ahr_ack_batch's result `done` for `n` gathered acknowledgements means."""
        if done == _ENOENT:  # the group was retired (its stream ended): nothing to free
            return
        check(done, "acknowledge")
        if done != n:
            log.warning("prefetch: %d of %d acknowledgements came too late: those messages' "
                        "leases had expired and they went to other members; raise the lease "
                        "(set_resend_nacs) or lower prefetch", n - done, n)

    def _release_queued(self) -> None:
        """Give back prefetched messages never handed out: other members take them at once,
        and it does not count as a delivery attempt."""
        for handle, queue in self._queued.items():
            for msg in queue:
                lib.ahr_release(self._ptr, handle, self._member, msg.seq)
            queue.clear()

    def _markers_first(self, handle: int, group_id: str, stream: str | None) -> None:
        """Before claiming more: acknowledge the finish marker told last time, and tell the
        next one a batch held back (raises AsapoStreamFinishedError)."""
        self._ack_marker(handle)
        pending = self._pending_finish.get(handle)
        if pending:
            marker = pending.pop(0)
            if not pending:
                del self._pending_finish[handle]
            self._finish(marker, group_id, stream)

    def _ack_marker(self, handle: int) -> None:
        """Acknowledge the finish marker this member was told of by the group last time."""
        seq = self._held_markers.pop(handle, None)
        if seq is not None:
            lib.ahrpy_ack(self._ctx, handle, seq)

    @staticmethod
    def _warn_auto_ack(seq: int) -> None:
        log.warning("auto_ack: message at ring position %d had been redelivered to another "
                    "member (its lease expired) before it was acknowledged", seq)

    def get_next_batch(self, group_id: str, n: int, stream: str | None = None,
                       timeout_ms: int | None = None) -> MessageBatch:
        """Claim up to `n` (<= batch_capacity) messages in one call; waits only for the first.

        Returns a MessageBatch: a sequence of Messages made on demand, with ``arrays()``
        for the data views alone. Acknowledge it whole with ``acknowledge_batch``.
        """
        # groups following every stream are looked up by name alone (no tuple per call)
        handle = self._all_streams.get(group_id) if stream is None else None
        if handle is None:
            handle = self._group(group_id, stream)
            if handle == DISK_GROUP:
                return self._disk_groups.get_next_batch(group_id, stream, n, timeout_ms)
        n = max(1, min(int(n), self._batch_capacity))
        if self._held_markers or self._pending_finish:
            self._markers_first(handle, group_id, stream)
        timeout = self.timeout_ns if timeout_ms is None else int(timeout_ms * 1e6)
        if self.auto_ack:
            self._ack_held(handle)
        buf = _alloc_msgs("struct ahr_msg[]", n)  # owned by the batch: acks read it later
        if self._queued.get(handle):  # prefetched by get_next: those come first, in order
            got = self._take_queued(handle, buf, n)
            lib.ahr_batch_shape(self._ptr, buf, got, self._shape)
        else:  # claim and describe the batch in one crossing
            got = lib.ahrpy_get_batch(self._ctx, handle, n, timeout, buf, self._shape)
            if got < 0:
                self._no_message(got, group_id, stream)
        batch = self._new_batch(handle, buf, got)
        if batch is None:  # a finish marker: rare, so the slow path
            batch = self._batch_with_markers(handle, buf, got, group_id, stream)
        if self.auto_ack:
            self._held_batch[handle] = batch
        return batch

    def _new_batch(self, handle: int, buf, got: int) -> MessageBatch | None:
        """A MessageBatch of the `got` descriptors in buf as self._shape describes them;
        None if a finish marker is among them."""
        data_len, first, step, flags = _SHAPE.unpack_from(self._shape_bytes)
        if flags & 1:
            return None
        return MessageBatch(self, handle, buf, got, (first, step, data_len) if step else None)

    def _slot_views(self, batch: MessageBatch) -> list[memoryview] | None:
        """The per-slot view table for the length of `batch`'s run (made the second time a
        length is asked for, so a one-off length costs no table), or None."""
        length = batch._run[2]
        views = self._views.get(length)
        if views is not None:
            return views
        slots, size = self._segment.config["slot_count"], self._segment.config["slot_size"]
        if self._views_wanted != length or slots > _SLOT_VIEWS_MAX:
            self._views_wanted = length
            return None
        if self._slots_offset is None:  # the ring's slot area, from where this batch lies
            self._slots_offset = batch._buf[0].data_offset - batch._run[0] * size
        if len(self._views) >= _SLOT_VIEW_LENGTHS:
            self._views.clear()
            self._view_pins.clear()
        buffer, start = self._buffer, self._slots_offset
        views = [buffer[a:a + length] for a in range(start, start + slots * size, size)]
        # an export of each pins it: release() (a `with` block) on a view that is handed
        # out again raises BufferError instead of breaking later messages
        self._views[length] = views
        self._view_pins[length] = [PickleBuffer(v) for v in views]
        return views

    def _take_queued(self, handle: int, buf, n: int) -> int:
        queue = self._queued[handle]
        raw = ffi.buffer(buf)
        got = min(n, len(queue))
        for i in range(got):
            MSG_FIELDS.pack_into(raw, i * MSG_SIZE, *queue.pop()._fields)
        return got

    def _ack_held(self, handle: int, single: bool = True) -> None:
        """auto_ack: acknowledge the batch (and the single message) held from the group."""
        batch = self._held_batch.pop(handle, None)
        if batch is not None:
            lib.ahrpy_ack_msgs(self._ctx, handle, batch._buf, batch._n)
        prev = self._held.pop(handle, None) if single else None
        if prev is not None and lib.ahrpy_ack(self._ctx, handle, prev) == _ESTALE:
            self._warn_auto_ack(prev)

    def _batch_with_markers(self, handle: int, buf, got: int, group_id: str,
                            stream: str | None) -> MessageBatch:
        """Keep the ordinary messages; a marker alone ends the stream, else it stays
        claimed by this member and is told on its next call (no redelivery, no attempt)."""
        batch = MessageBatch(self, handle, buf, got)
        messages = list(batch)
        markers = [m for m in messages if m._fields[9] & 1]
        told_now = markers[0] if len(markers) == got else None
        held_back = markers[1:] if told_now is not None else markers
        if held_back:  # never an empty list: _markers_first pops from what is here
            self._pending_finish.setdefault(handle, []).extend(held_back)
        if told_now is not None:
            self._finish(told_now, group_id, stream)
        keep = [i for i, m in enumerate(messages) if not m._fields[9] & 1]
        kept = ffi.new("struct ahr_msg[]", len(keep))
        for j, i in enumerate(keep):
            kept[j] = buf[i]
        lib.ahr_batch_shape(self._ptr, kept, len(keep), self._shape)
        return self._new_batch(handle, kept, len(keep))

    def _finish(self, marker: Message, group_id: str, stream: str | None) -> None:
        if self._acks:  # prefetch: the gathered acknowledgements go before the group may end
            self._flush_acks(marker._group)
        if stream is None:
            # held until this member asks again, closes, or acknowledges it (it is message
            # last_id + 1 of the stream): a member that dies before acting on the end of
            # the stream leaves the marker to another member
            self._held_markers[marker._group] = marker.seq
        else:
            lib.ahr_ack(self._segment.ptr, marker._group, self._member, marker.seq)
        next_stream = marker.meta.get("next_stream")
        if next_stream == NO_NEXT_STREAM:
            next_stream = None
        if stream is not None:  # a one-stream group has nothing more to follow: the C core
            # retires it once every member acknowledged all up to the marker (until then a
            # member still holding a message can acknowledge it, or it is redelivered)
            self._forget_group(group_id, stream)
            self._retired.add((group_id, stream))
        raise AsapoStreamFinishedError(
            f"stream {marker.stream!r} is finished (last id {marker.id - 1}); "
            f"next stream: {next_stream!r}", next_stream=next_stream, stream=marker.stream,
            last_id=marker.id - 1)

    def _no_message(self, rc: int, group_id: str, stream: str | None) -> NoReturn:
        if rc == _ENOENT:  # the group was retired (its stream ended) by another member
            self._forget_group(group_id, stream)
        if rc == _ENOENT or (rc == _EAGAIN and stream is not None):
            finished = self._finished_state(stream)
            if finished is not None:
                self._retired.add((group_id, stream))
                self._raise_finished(stream, finished)
        if rc == _EAGAIN:
            where = f"stream {stream!r}" if stream else "any stream"
            raise AsapoEndOfStreamError(
                f"no new message for group {group_id!r} in {where} before the timeout")
        raise error_for(rc, f"get_next for group {group_id!r}")

    @staticmethod
    def _raise_finished(stream: str | None, next_stream: str) -> None:
        raise AsapoStreamFinishedError(
            f"stream {stream!r} is finished; next stream: {next_stream or None!r}",
            next_stream=next_stream or None, stream=stream)

    def _finished_state(self, stream: str | None) -> str | None:
        """None if not finished, '' if finished without next stream, else the next name."""
        if stream is None:
            return None
        state = lib.ahr_stream_finished(self._segment.ptr, self._streams.index(stream))
        if state == 0:
            return None
        return "" if state == 1 else self._streams.name(state - 2)

    # -- acknowledging ---------------------------------------------------------------------

    def _claim_of(self, group_id: str, id: Any, stream: str | None) -> tuple[int, int]:
        """(group handle, ring sequence) of a message this consumer holds."""
        if isinstance(id, Message):
            return id._group, id._fields[0]
        on_disk = self._disk_groups.claim_of(group_id, id, stream or "default")
        if on_disk is not None:
            return on_disk
        stream_idx = self._streams.index(stream or "default")
        seq = ffi.new("uint64_t *")
        for (gid, gstream), handle in self._groups.items():
            if gid == group_id and (stream is None or gstream in (None, stream)):
                if lib.ahr_find_claim(self._ptr, handle, self._member, stream_idx, int(id),
                                      seq) == 0:
                    return handle, seq[0]
        raise AsapoWrongInputError(
            f"message id {id} of stream {stream or 'default'!r} is not held by this consumer "
            f"in group {group_id!r} (already acknowledged, or never delivered here)")

    def _raise_ack(self, rc: int, seq: int, msg: Any = None) -> None:
        if isinstance(msg, Message) and msg._consumer is not self:
            raise AsapoWrongInputError(
                f"{msg!r} was delivered to another Consumer: acknowledge it with that one")
        if isinstance(msg, Message) and msg._group == _NOT_CLAIMED:
            raise AsapoWrongInputError(
                f"{msg!r} is a copy from get_last / get_by_id and was not claimed: there is "
                "nothing to acknowledge (get_next claims messages)")
        if rc == _ESTALE:
            raise AsapoLeaseExpiredError(
                f"message at ring position {seq} is no longer held by this member: it was "
                "already acknowledged, or it was not acknowledged in time (its lease expired "
                "or this member was presumed dead) and went to another member; raise the "
                "lease with set_resend_nacs or the segment's lease_s")
        raise error_for(rc, "acknowledge")

    def acknowledge(self, group_id: str, id: int | Message, stream: str | None = None) -> None:
        """Acknowledge message `id` (or a Message) for the group; its slot may then be reused."""
        if isinstance(id, Message):  # the common case, kept short
            handle, seq = id._group, id._fields[0]
        else:
            handle, seq = self._claim_of(group_id, id, stream)
            if self._held_markers.get(handle) == seq:  # a finish marker told last time
                del self._held_markers[handle]
        if self._held and self._held.get(handle) == seq:
            del self._held[handle]
        # _defer_ack's body inline: the call costs ~65 ns of the ~1.06 us this loop takes
        # per message with prefetch (get + view + ack, measured 2026-11-24)
        if self.prefetch > 1 and handle != DISK_GROUP:
            acks = self._acks.get(handle)
            if acks is None:
                acks = self._acks[handle] = []
            acks.append(seq)
            if len(acks) >= self.prefetch or not self._queued.get(handle):
                self._flush_acks(handle)
            return
        rc = lib.ahrpy_ack(self._ctx, handle, seq)
        if rc:
            if handle == DISK_GROUP:  # not a ring claim (the ring said -ENOENT): see disk_groups
                return self._disk_groups.acknowledge(group_id, id, stream)
            self._raise_ack(rc, seq, id)

    def acknowledge_batch(self, group_id: str, messages: MessageBatch | list[Message]) -> int:
        """Acknowledge several messages in one call; returns how many were still ours."""
        if isinstance(messages, MessageBatch):
            if self._held_batch.get(messages._group) is messages:
                del self._held_batch[messages._group]
            done = lib.ahrpy_ack_msgs(self._ctx, messages._group, messages._buf,
                                      messages._n)
            return check(done, "acknowledge_batch")
        if not messages:
            return 0
        handle = messages[0]._group
        if handle == DISK_GROUP:
            return self._disk_groups.acknowledge_batch(group_id, messages)
        seqs = ffi.new("uint64_t[]", [m.seq for m in messages])
        if any(m._group != handle for m in messages):
            raise AsapoWrongInputError("acknowledge_batch: messages of one group only")
        done = lib.ahr_ack_batch(self._ptr, handle, self._member, seqs, len(messages))
        return check(done, "acknowledge_batch")

    def neg_acknowledge(self, group_id: str, id: int | Message, delay_ms: int = 0,
                        stream: str | None = None) -> None:
        """Give the message back to the group: redelivered after delay_ms (to any member)."""
        handle, seq = self._claim_of(group_id, id, stream)
        if handle == DISK_GROUP:
            return self._disk_groups.neg_acknowledge(group_id, id, delay_ms, stream)
        if self._held.get(handle) == seq:
            del self._held[handle]
        rc = lib.ahr_nack(self._ptr, handle, self._member, seq, int(delay_ms * 1e6))
        if rc < 0:
            self._raise_ack(rc, seq, id)

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
        if rc == _ESTALE:  # the C core already retried: a producer laps us, or damage
            raise AsapoNoDataError("the newest messages were overwritten while being read; "
                                   "try again (or read through a consumer group)")
        check(rc, "get_last")
        return self._copied(out, dst)

    def get_by_id(self, id: int, stream: str = "default") -> Message:
        """A copy of message `id` of `stream`: from the ring while it is there, else from
        disk (the node's catalog and HDF5 files under `data_root`)."""
        cap = self._segment.config["slot_size"] * self._segment.config["slot_count"]
        dst = np.empty(cap, dtype=np.uint8)
        out = ffi.new("struct ahr_msg *")
        rc = lib.ahr_read_by_id(self._segment.ptr, self._streams.index(stream), int(id),
                                ffi.from_buffer(dst), cap, out)
        if rc == _ENOENT:
            return self._from_disk(int(id), stream)
        check(rc, f"get_by_id {id}")
        return self._copied(out, dst)

    def get_part(self, id: int, substream: int, stream: str = "default",
                 max_bytes: int | None = None) -> Message:
        """A copy of part `substream` (1-based) of dataset `id` of `stream`, from the ring
        only: a latest-value read for live viewers, which never holds the producer back and
        never falls back to disk (use get_dataset_by_id for that). AsapoDataNotInCacheError
        when the ring does not hold the part (not yet published, or overwritten, also while
        being read). `max_bytes` sizes the first buffer; a larger part is read again."""
        cap = max_bytes or self._segment.config["slot_size"] * self._segment.config["slot_count"]
        for _ in range(2):
            dst = np.empty(cap, dtype=np.uint8)
            out = ffi.new("struct ahr_msg *")
            rc = lib.ahr_read_part(self._segment.ptr, self._streams.index(stream), int(id),
                                   int(substream), ffi.from_buffer(dst), cap, out)
            if rc != _EMSGSIZE:
                break
            cap = out.data_len  # not yet verified: the retry's own seqlock read checks it
        if rc in (_ENOENT, _ESTALE):
            raise AsapoDataNotInCacheError(
                f"part {substream} of message {id} of stream {stream!r} is not in the ring")
        check(rc, f"get_part {id} part {substream}")
        return self._copied(out, dst)

    def _from_disk(self, id: int, stream: str) -> Message:
        """The disk tier: a message the ring no longer holds, as the sink stored it."""
        try:
            stored = disk.read_by_id(self.beamtime, self.data_source, stream, id,
                                     data_root=self.data_root)
        except AsapoDataNotInCacheError as exc:
            raise AsapoDataNotInCacheError(
                f"message {id} of stream {stream!r} is not in the ring, nor on disk: {exc}"
            ) from None
        rec = stored.record
        name, meta = rec.name.encode(), rec.meta_json().encode()
        fields = (0, rec.data_id, 0, rec.size, 0, rec.timestamp, len(name), len(meta),
                  self._streams.index(stream), 0, rec.dataset_substream, rec.dataset_size, 0, 0)
        return OwnedMessage(fields, self, _NOT_CLAIMED, stored.data, name + meta)

    def _copied(self, out, dst: np.ndarray) -> Message:
        fields = MSG_FIELDS.unpack_from(ffi.buffer(out))
        tail = ffi.new("char[]", max(1, fields[6] + fields[7]))
        rc = lib.ahr_read_tail(self._segment.ptr, out, tail, len(tail))
        if rc == _ESTALE:
            raise AsapoNoDataError("message was overwritten while reading; try again")
        check(rc, "read metadata")
        return OwnedMessage(fields, self, _NOT_CLAIMED, dst[:fields[3]],
                       ffi.buffer(tail, fields[6] + fields[7])[:])

    # -- state ------------------------------------------------------------------------------

    def group_stats(self, group_id: str, stream: str | None = None) -> dict[str, int]:
        return self._segment.group_stats(self._group(group_id, stream))

    @property
    def segment(self) -> Segment:
        return self._segment

    def close(self) -> None:
        """Leave the segment; messages still held go to other members of their groups
        (with auto_ack, the last message of each group counts as done and is acknowledged)."""
        if not self._segment.closed:
            for handle in list(self._acks):
                self._flush_acks(handle)
            self._release_queued()
            for handle in list(self._held) + list(self._held_batch):
                self._ack_held(handle)
            for handle in list(self._held_markers):
                self._ack_marker(handle)
            self._close_streams()
            self._segment.leave(self._member)
            self._segment.close()
            # every later call gets -EBADF from C ("closed") instead of a freed handle
            self._ctx.ring = self._ptr = ffi.NULL
            self._views.clear()  # they keep the mapping alive
            self._view_pins.clear()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
