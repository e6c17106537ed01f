"""Messages handed to consumers: zero-copy numpy views with lazily decoded metadata."""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from asapo_hpc._core import MessageCore, SegmentSlice, ffi
from asapo_hpc.errors import AsapoCorruptSegmentError

if TYPE_CHECKING:
    from asapo_hpc.client.consumer import Consumer

# Field order of struct ahr_msg (csrc/include/asapo_hpc/ring.h): 6 x u64, 8 x u32.
MSG_FIELDS = struct.Struct("<6Q8I")
MSG_SIZE = MSG_FIELDS.size
MSG_WORDS = MSG_SIZE // 8  # a descriptor as 64-bit words: seq, id, data_offset, data_len, ...
assert MSG_SIZE == ffi.sizeof("struct ahr_msg")  # the format follows the C layout

FINISH_NAME = "asapo_finish_stream"
NO_NEXT_STREAM = "asapo_no_next"


class Message(MessageCore):
    """One delivered message.

    ``data`` is a numpy uint8 view straight into the shared segment, ``buffer`` a read-only
    memoryview of the same bytes (cheaper for byte-level access): no copy is made, and both
    stay valid until the message is acknowledged (or negatively acknowledged). Each access
    makes a new view, so keep it in a local; ``copy()`` keeps the bytes longer. ``meta``
    is decoded from JSON on first use. Unpacks like ASAPO's ``(data, meta)`` pair:
    ``data, meta = consumer.get_next(...)``.
    """

    # The descriptor lives in the C base (MessageCore): the fast path fills it without
    # making a Python object per field; ``_fields`` (the 14-tuple the properties below
    # read) is made from it on first use, and setting it fills the descriptor. _meta and
    # _tail are filled on first use. The consumer and group are class attributes of the
    # per-group subclass made by message_class().
    __slots__ = ("_meta", "_tail")
    _consumer: Consumer
    _group: int

    # struct ahr_msg: seq, id, data_offset, data_len, name_offset, timestamp_ns,
    #                 name_len, meta_len, stream, flags, ds_substream, ds_size, attempts, span
    @property
    def seq(self) -> int:
        """Position in the ring (unique within the segment)."""
        return self._fields[0]

    @property
    def id(self) -> int:
        """Message id within its stream (1..N)."""
        return self._fields[1]

    @property
    def timestamp(self) -> int:
        """Publication time, ns since the epoch."""
        return self._fields[5]

    @property
    def attempts(self) -> int:
        """1 on first delivery, more when redelivered."""
        return self._fields[12]

    @property
    def size(self) -> int:
        return self._fields[3]

    @property
    def dataset(self) -> tuple[int, int] | None:
        """(substream, size) for a part of a dataset, else None."""
        return (self._fields[10], self._fields[11]) if self._fields[11] else None

    @property
    def is_finish_marker(self) -> bool:
        return bool(self._fields[9] & 1)

    @property
    def data(self) -> np.ndarray:
        """The bytes as a numpy uint8 array: a view into shared memory, no copy."""
        f = self._fields
        return self._consumer._view[f[2]:f[2] + f[3]]

    @property
    def buffer(self) -> memoryview:
        """The bytes as a read-only memoryview into shared memory, no copy: cheaper than
        ``data`` for byte-level access (pyzmq's ``Frame.buffer``)."""
        f = self._fields
        return self._consumer._buffer[f[2]:f[2] + f[3]]

    def _tail_bytes(self) -> bytes:
        try:
            return self._tail
        except AttributeError:
            f = self._fields
            self._tail = self._consumer._view[f[4]:f[4] + f[6] + f[7]].tobytes()
            return self._tail

    @property
    def name(self) -> str:
        """The exposed file name (ASAPO's ``name``)."""
        try:
            return self._tail_bytes()[:self._fields[6]].decode()
        except UnicodeDecodeError as exc:
            raise self._bad_tail("name is not UTF-8", exc) from None

    @property
    def meta(self) -> dict[str, Any]:
        try:
            return self._meta
        except AttributeError:
            raw = self._tail_bytes()[self._fields[6]:]
            try:
                self._meta = json.loads(raw) if raw else {}
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                raise self._bad_tail("metadata is not UTF-8 JSON", exc) from None
            return self._meta

    @property
    def meta_json(self) -> str:
        """The metadata as its producer encoded it (JSON text; "{}" when there is none),
        once it has parsed as ``meta`` does (same error otherwise): for storing it as text
        without encoding it again."""
        self.meta  # noqa: B018 - parses (and caches) it: the check
        raw = self._tail_bytes()[self._fields[6]:]
        return raw.decode() if raw else "{}"

    def _bad_tail(self, what: str, exc: Exception) -> AsapoCorruptSegmentError:
        # Python producers check their JSON, so: a C producer wrote it, or memory was damaged
        return AsapoCorruptSegmentError(
            f"message {self.id} (ring position {self.seq}): {what} ({exc}); a producer wrote "
            "bad bytes or the segment is corrupt: data and id remain usable")

    @property
    def stream(self) -> str:
        return self._consumer._stream_name(self._fields[8])

    def array(self, dtype: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The data as an array of `dtype` (and `shape`), still without a copy."""
        arr = self.data.view(dtype)
        return arr.reshape(shape) if shape is not None else arr

    def __reduce__(self):
        # copy.copy / pickle would not see the descriptor (it lives in MessageCore's struct)
        raise TypeError(f"{type(self).__name__} is not copied by copy or pickle: msg.copy() "
                        "gives a message owning its bytes")

    def copy(self) -> Message:
        """A detached message owning a copy of data and metadata."""
        return OwnedMessage(self._fields, self._consumer, self._group, self.data.copy(),
                            self._tail_bytes())

    def record(self) -> dict[str, Any]:
        """ASAPO's message record fields for this message."""
        record = {"_id": self.id, "size": self.size, "name": self.name,
                  "timestamp": self.timestamp, "stream": self.stream, "meta": self.meta}
        if self.dataset:
            record["dataset_substream"], record["dataset_size"] = self.dataset
        return record

    def __iter__(self):
        yield self.data
        yield self.record()

    def __repr__(self) -> str:
        return (f"Message(id={self.id}, seq={self.seq}, size={self.size}, "
                f"attempts={self.attempts})")


def message_class(consumer: Consumer, group: int) -> type[Message]:
    """The Message subclass for one group of one consumer (made once per group); its
    ``data`` and ``buffer`` slice the consumer's views of the segment in C."""
    return type("Message", (Message,), {
        "__slots__": (), "_consumer": consumer, "_group": group,
        "data": SegmentSlice(consumer._view), "buffer": SegmentSlice(consumer._buffer)})


class OwnedMessage(Message):
    """A message owning copies of its bytes (``copy()``, ``get_last``, ``get_by_id``)."""

    __slots__ = ("_data", "_consumer", "_group")

    def __init__(self, fields: tuple, consumer: Consumer, group: int, data: np.ndarray,
                 tail: bytes):
        self._fields = fields
        self._consumer = consumer
        self._group = group
        self._data = data
        self._tail = tail

    @property
    def data(self) -> np.ndarray:
        return self._data

    @property
    def buffer(self) -> memoryview:
        return memoryview(self._data)


class MessageList(list):
    """Messages of one batch call held as Message objects (disk reads, remote reads), with
    MessageBatch's helpers; acknowledge it whole with ``acknowledge_batch``."""

    @property
    def ids(self) -> list[int]:
        return [m.id for m in self]

    def buffers(self) -> list[memoryview]:
        """Each message's bytes (the views each message gives, no copy)."""
        return [m.buffer for m in self]

    def arrays(self, dtype: Any = np.uint8, shape: tuple[int, ...] | None = None
               ) -> list[np.ndarray]:
        """Each message's data as a view of `dtype` (and `shape`), without a copy."""
        return [m.array(dtype, shape) for m in self]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} messages, ids {self.ids[:3]}...)"


class MessageBatch(Sequence):
    """Messages claimed in one call (``Consumer.get_next_batch``).

    A sequence of Message objects, made only when indexed or iterated. ``buffers()`` and
    ``arrays()`` give just the data views (no copy), cheaper per message; ``ids`` the
    message ids. Hand the whole batch to ``Consumer.acknowledge_batch``: it acknowledges
    straight from the descriptors the batch owns.
    """

    __slots__ = ("_consumer", "_group", "_buf", "_n", "_run")

    def __init__(self, consumer: Consumer, group: int, buf, n: int,
                 run: tuple[int, int, int] | None = None):
        self._consumer = consumer
        self._group = group
        self._buf = buf  # the struct ahr_msg[] these messages were claimed into
        self._n = n
        # (first slot, slot step, data length) when the messages lie at equal steps in one
        # lap of the ring with one length (ahr_batch_shape): their views then come from the
        # consumer's per-slot table, a list slice instead of a view made per message
        self._run = run

    def __len__(self) -> int:
        return self._n

    def _words(self) -> memoryview:
        """The descriptors as 64-bit words, MSG_WORDS per message."""
        return memoryview(ffi.buffer(self._buf, self._n * MSG_SIZE)).cast("Q")

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self._n))]
        n = self._n
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("batch index out of range")
        msg = Message.__new__(self._consumer._msg_class[self._group])
        msg._fields = MSG_FIELDS.unpack_from(ffi.buffer(self._buf, n * MSG_SIZE), i * MSG_SIZE)
        return msg

    def __iter__(self):
        new = Message.__new__
        cls = self._consumer._msg_class[self._group]
        for fields in MSG_FIELDS.iter_unpack(ffi.buffer(self._buf, self._n * MSG_SIZE)):
            msg = new(cls)
            msg._fields = fields
            yield msg

    @property
    def ids(self) -> list[int]:
        return self._words()[1::MSG_WORDS].tolist()

    def _spans(self) -> zip:
        words = self._words()
        starts = words[2::MSG_WORDS].tolist()
        return zip(starts, map(int.__add__, starts, words[3::MSG_WORDS].tolist()), strict=True)

    def buffers(self) -> list[memoryview]:
        """Each message's bytes as a read-only memoryview into shared memory, no copy.

        For a batch of equal-sized messages in consecutive slots (the usual case) the views
        are made once per slot and handed out again for later messages in the same slot:
        valid, like every view, until the message is acknowledged; they cannot be
        ``release()``d (nor used as a ``with`` context)."""
        run = self._run
        if run is not None:
            views = self._consumer._slot_views(self)
            if views is not None:
                first, step = run[0], run[1]
                return views[first:first + self._n * step:step]
        buffer = self._consumer._buffer
        return [buffer[a:b] for a, b in self._spans()]

    def arrays(self, dtype: Any = np.uint8, shape: tuple[int, ...] | None = None
               ) -> list[np.ndarray]:
        """Each message's data as a view of `dtype` (and `shape`), without a copy."""
        view = self._consumer._view
        out = [view[a:b] for a, b in self._spans()]
        if np.dtype(dtype) != np.uint8:
            out = [a.view(dtype) for a in out]
        if shape is not None:
            out = [a.reshape(shape) for a in out]
        return out

    def __repr__(self) -> str:
        return f"MessageBatch({len(self)} messages, ids {self.ids[:3]}...)"
