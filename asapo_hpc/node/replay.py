"""Reading stored messages back from a node: the node's face of ``asapo_hpc.client.disk``.

``read_by_id(beamtime, source, stream, id, config=...)`` takes the catalog from the node's
configuration; the reading itself lives in the client's disk tier.
"""

from __future__ import annotations

import os

from asapo_hpc.client import disk
from asapo_hpc.client.disk import StoredMessage, close_readers
from asapo_hpc.errors import AsapoWrongInputError
from asapo_hpc.node.config import NodeConfig

__all__ = ["DiskReader", "StoredMessage", "close_readers", "read_by_id"]


class DiskReader(disk.DiskReader):
    """A disk reader on the catalog of a node's configuration."""

    def __init__(self, config: NodeConfig):
        super().__init__(config.catalog_path)
        self.config = config


def read_by_id(beamtime: str, source: str, stream: str, data_id: int, *,
               config: NodeConfig | None = None,
               data_root: str | os.PathLike | None = None) -> StoredMessage:
    """Message `data_id` from the node of `config` (or of `data_root`, see client.disk)."""
    if config is None:
        return disk.read_by_id(beamtime, source, stream, data_id, data_root=data_root)
    if config.beamtime != beamtime:
        raise AsapoWrongInputError(f"this node records beamtime {config.beamtime!r}, not "
                                   f"{beamtime!r}")
    return disk.read_by_id(beamtime, source, stream, data_id,
                           catalog_path=config.catalog_path)
