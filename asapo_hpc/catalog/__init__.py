"""The catalog: SQLite (WAL) store of message records, streams, metadata and group progress.

``Catalog(path)`` is the whole API; the record types give ASAPO's JSON shapes through
``to_asapo_record()``. The query language is documented in ``asapo_hpc.catalog.query``.
"""

from asapo_hpc.catalog.group_ids import GROUP_ID_LENGTH, generate_group_id
from asapo_hpc.catalog.query import compile_query
from asapo_hpc.catalog.records import (
    DEFAULT_INGEST_MODE,
    FINISH_MARKER_NAME,
    NO_NEXT_STREAM,
    AddResult,
    DatasetRecord,
    LocationUpdate,
    MessageRecord,
    MetaMode,
    ResendPolicy,
    StreamInfo,
    to_asapo_record,
)
from asapo_hpc.catalog.schema import SCHEMA_VERSION
from asapo_hpc.catalog.store import Catalog

__all__ = [
    "AddResult",
    "Catalog",
    "DEFAULT_INGEST_MODE",
    "DatasetRecord",
    "FINISH_MARKER_NAME",
    "GROUP_ID_LENGTH",
    "LocationUpdate",
    "MessageRecord",
    "MetaMode",
    "NO_NEXT_STREAM",
    "ResendPolicy",
    "SCHEMA_VERSION",
    "StreamInfo",
    "compile_query",
    "generate_group_id",
    "to_asapo_record",
]
