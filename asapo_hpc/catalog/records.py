"""The catalog's value types and their ASAPO JSON shapes (field names as in ASAPO_PROTOCOL.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from asapo_hpc.errors import AsapoWrongInputError

#: Name of the message a producer sends to finish a stream (id = last id + 1).
FINISH_MARKER_NAME = "asapo_finish_stream"
#: ``next_stream`` value ASAPO's producer sends when a finished stream has no successor.
NO_NEXT_STREAM = "asapo_no_next"

#: ASAPO's default ingest mode: transfer data, store in file system and in database.
DEFAULT_INGEST_MODE = 13


def encode_meta(meta: dict | str | bytes | None) -> str:
    """Return the JSON text of ``meta``; text is passed through so wire payloads skip a decode."""
    if meta is None:
        return "{}"
    if isinstance(meta, bytes):
        meta = meta.decode("utf-8", errors="replace")
    if isinstance(meta, str):
        return meta if meta.strip() else "{}"
    return json.dumps(meta, separators=(",", ":"))


def decode_meta(meta: dict | str | bytes | None) -> dict:
    """Return ``meta`` as a dict (decoding JSON text)."""
    if isinstance(meta, dict):
        return meta
    return json.loads(encode_meta(meta))


@dataclass(slots=True)
class MessageRecord:
    """One message (or one part of a dataset) as the catalog stores it.

    ``data_id`` 0 asks the catalog to assign the next id (auto-id mode). ``meta`` may be a
    dict or JSON text; records read back carry the text and decode it on demand
    (``meta_dict()``). ``dataset_substream`` counts from 1 for dataset parts, 0 otherwise.
    The data lies in the ring while ``ring_seq`` is set, and on disk once ``file_path`` is.
    """

    source: str
    stream: str
    data_id: int
    name: str
    size: int
    timestamp: int
    meta: dict | str = "{}"
    ingest_mode: int = DEFAULT_INGEST_MODE
    dataset_substream: int = 0
    dataset_size: int = 0
    ring_seq: int | None = None
    file_path: str | None = None
    dataset_path: str | None = None
    frame_index: int | None = None

    def meta_dict(self) -> dict:
        """The user metadata as a dict."""
        return decode_meta(self.meta)

    def meta_json(self) -> str:
        """The user metadata as JSON text."""
        return encode_meta(self.meta)

    def to_asapo_record(self, source_address: str = "") -> dict[str, Any]:
        """ASAPO's message record; ``source_address`` is the data server's "host:port".

        ``buf_id`` is the ring sequence number, 0 when the data is no longer in the ring
        (ASAPO's "not in cache"), so ring sequence numbers must start at 1.
        """
        return {
            "_id": self.data_id,
            "size": self.size,
            "name": self.name,
            "timestamp": self.timestamp,
            "source": source_address,
            "buf_id": self.ring_seq or 0,
            "stream": self.stream,
            "dataset_substream": self.dataset_substream,
            "ingest_mode": self.ingest_mode,
            "meta": self.meta_dict(),
        }


@dataclass(slots=True)
class DatasetRecord:
    """One dataset: the parts of message ``data_id`` that arrived, ordered by substream."""

    data_id: int
    dataset_size: int
    timestamp: int
    parts: list[MessageRecord] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every part arrived."""
        return len(self.parts) >= self.dataset_size

    def to_asapo_record(self, source_address: str = "") -> dict[str, Any]:
        """ASAPO's dataset record (v0.7 field names)."""
        return {
            "_id": self.data_id,
            "dataset_size": self.dataset_size,
            "timestamp": self.timestamp,
            "messages": [part.to_asapo_record(source_address) for part in self.parts],
        }


@dataclass(slots=True, frozen=True)
class StreamInfo:
    """One entry of a data source's stream list."""

    name: str
    last_id: int
    timestamp_created: int
    timestamp_last: int
    finished: bool
    next_stream: str

    def to_asapo_record(self) -> dict[str, Any]:
        """ASAPO's stream list entry."""
        return {
            "lastId": self.last_id,
            "name": self.name,
            "timestampCreated": self.timestamp_created,
            "timestampLast": self.timestamp_last,
            "finished": self.finished,
            "nextStream": self.next_stream,
        }


@dataclass(slots=True)
class AddResult:
    """What ``Catalog.add_messages`` did.

    ``duplicates`` lists ``(stream, data_id, dataset_substream)`` of records that were already
    stored with identical content: accepted, but a warning as ASAPO's receiver code 2.
    ``assigned_ids`` holds the ids given to auto-id records (data_id 0), in input order.
    """

    inserted: int = 0
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)
    assigned_ids: list[int] = field(default_factory=list)
    finished_streams: list[str] = field(default_factory=list)

    @property
    def code(self) -> int:
        """ASAPO receiver error code: 0 ok, 2 warning (duplicates accepted)."""
        return 2 if self.duplicates else 0

    @property
    def warning(self) -> str:
        """A message naming the duplicates, empty when there were none."""
        if not self.duplicates:
            return ""
        shown = ", ".join(f"{s}/{i}" + (f".{p}" if p else "") for s, i, p in self.duplicates[:5])
        more = f" and {len(self.duplicates) - 5} more" if len(self.duplicates) > 5 else ""
        return f"duplicated request: identical records already stored ({shown}{more})"


@dataclass(slots=True, frozen=True)
class ResendPolicy:
    """ASAPO's ``set_resend_nacks(resend, delay_ms, attempts)``.

    With ``resend`` a delivered message that is not acknowledged within ``delay_ms`` is
    delivered again. ``attempts`` bounds redeliveries (of timed-out and of negatively
    acknowledged messages) per message; -1 means no bound.
    """

    resend: bool = False
    delay_ms: int = 0
    attempts: int = -1


@dataclass(slots=True, frozen=True)
class LocationUpdate:
    """Where the sink put a message's data; ``None`` fields are left unchanged.

    ``evicted_from_ring`` clears the ring sequence number once the ring reclaimed the slot.
    """

    source: str
    stream: str
    data_id: int
    dataset_substream: int = 0
    file_path: str | None = None
    dataset_path: str | None = None
    frame_index: int | None = None
    evicted_from_ring: bool = False


class MetaMode(IntEnum):
    """How metadata is written; values are ASAPO's wire codes (op 8, custom[1] % 10)."""

    INSERT = 1
    REPLACE = 2
    UPDATE = 3

    @classmethod
    def parse(cls, mode: MetaMode | str | int) -> MetaMode:
        """Accept a MetaMode, its name ("insert", "replace", "update") or its wire code."""
        if isinstance(mode, str):
            try:
                return cls[mode.upper()]
            except KeyError:
                raise AsapoWrongInputError(
                    f"unknown metadata mode {mode!r}; use 'insert', 'replace' or 'update'"
                ) from None
        try:
            return cls(mode)
        except ValueError:
            raise AsapoWrongInputError(
                f"unknown metadata mode code {mode!r}; use 1, 2 or 3"
            ) from None


def to_asapo_record(obj: MessageRecord | DatasetRecord | StreamInfo, **kwargs: Any) -> dict:
    """ASAPO's JSON shape of any catalog record."""
    return obj.to_asapo_record(**kwargs)
