"""Producer / Consumer: ASAPO's API over node-local shared memory (the embedded default),
or a remote node's ZeroMQ port (endpoint "tcp://host:port": asapo_hpc.client.remote)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from asapo_hpc.client._common import check_endpoint
from asapo_hpc.client.consumer import Consumer, generate_group_id
from asapo_hpc.client.message import Message, MessageBatch
from asapo_hpc.client.producer import Producer, Reservation
from asapo_hpc.config import RingConfig

if TYPE_CHECKING:
    from asapo_hpc.client.remote import RemoteConsumer, RemoteProducer

__all__ = ["Consumer", "Message", "MessageBatch", "Producer", "Reservation", "create_consumer",
           "create_producer", "generate_group_id"]


def create_producer(endpoint: str = "", type: str = "processed", beamtime_id: str = "",
                    beamline: str = "auto", data_source: str = "", token: str = "",
                    nthreads: int = 1, timeout_ms: int | None = None, *,
                    config: RingConfig | None = None) -> Producer | RemoteProducer:
    """ASAPO's create_producer, same argument order. endpoint '' = node-local shared memory,
    "tcp://host:port" = a node's remote port (RemoteProducer: `token` and `type` are checked).

    `type`, `beamline`, `token` and `nthreads` are accepted for compatibility; local shared
    memory is guarded by file permissions (the segment's mode), not tokens.
    """
    if endpoint.startswith("tcp://"):
        from asapo_hpc.client.remote import RemoteProducer
        return RemoteProducer(endpoint, beamtime_id, data_source, token, type=type,
                              timeout_ms=timeout_ms)
    check_endpoint(endpoint)
    return Producer(beamtime_id, data_source, config=config, timeout_ms=timeout_ms)


def create_consumer(server_name: str = "", source_path: str = "", has_filesystem: bool = False,
                    beamtime_id: str = "", data_source: str = "", token: str = "",
                    timeout_ms: int = 1000, *, config: RingConfig | None = None
                    ) -> Consumer | RemoteConsumer:
    """ASAPO's create_consumer, same argument order. server_name '' = node-local shared memory,
    "tcp://host:port" = a node's remote port (RemoteConsumer, with `token`)."""
    if server_name.startswith("tcp://"):
        from asapo_hpc.client.remote import RemoteConsumer
        return RemoteConsumer(server_name, beamtime_id, data_source, token,
                              timeout_ms=timeout_ms)
    check_endpoint(server_name)
    return Consumer(beamtime_id, data_source, config=config, timeout_ms=timeout_ms)
