"""The node service (``asapo-hpc serve``): rings of the data sources -> catalog + HDF5 sink.

``NodeService(config).start()`` records every message of every source; ``read_by_id``
reads stored messages back from disk (the fallback of ``get_by_id``).
"""

from asapo_hpc.node.config import SINK_GROUP, NodeConfig, SourceConfig, load_config
from asapo_hpc.node.replay import DiskReader, StoredMessage, read_by_id
from asapo_hpc.node.service import NodeService

__all__ = ["DiskReader", "NodeConfig", "NodeService", "SINK_GROUP", "SourceConfig",
           "StoredMessage", "load_config", "read_by_id"]
