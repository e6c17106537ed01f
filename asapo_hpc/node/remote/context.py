"""What a handler reaches: the node's configuration and counters, the sessions and parked
requests, and one reader and one producer per source. Nothing of the socket."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asapo_hpc.client import Consumer, Producer
from asapo_hpc.node.config import NodeConfig
from asapo_hpc.node.remote.counters import RemoteCounters
from asapo_hpc.node.remote.parking import ParkingLot, ReplyError
from asapo_hpc.node.remote.sessions import Session, Sessions
from asapo_hpc.node.remote.wire import Request


class NodeConsumer(Consumer):
    """The server's reader of a source: catalog calls go to the node's catalog file."""

    node_catalog: Any = None

    @property
    def catalog_path(self):  # the node may keep its catalog outside the data root
        return self.node_catalog


class NodeProducer(Producer):
    """The server's producer of a source: metadata goes to the node's catalog file."""

    node_catalog: Any = None

    @property
    def catalog_path(self):
        return self.node_catalog


class Context:
    """Shared by every handler; used by the serving thread only."""

    def __init__(self, config: NodeConfig, counters: RemoteCounters, max_frame_bytes: int,
                 reply: Callable[[Request, Any, Any], None], reply_error: ReplyError):
        self.config, self.counters, self.max_frame_bytes = config, counters, max_frame_bytes
        self.parking = ParkingLot(reply, reply_error, counters)
        self.sessions = Sessions(self.node_consumer, self.parking, counters,
                                 config.remote_lease_s)
        self._readers: dict[str, NodeConsumer] = {}
        self._producers: dict[str, NodeProducer] = {}

    def node_consumer(self, source: str) -> NodeConsumer:
        consumer = NodeConsumer(self.config.beamtime, source, create=False, timeout_ms=0,
                                data_root=str(self.config.data_root))
        consumer.node_catalog = self.config.catalog_path
        return consumer

    def reader(self, request: Request) -> NodeConsumer:
        """The source's shared reader (no group: lookups, catalog calls)."""
        reader = self._readers.get(request.source)
        if reader is None:
            reader = self._readers[request.source] = self.node_consumer(request.source)
        return reader

    def producer(self, request: Request) -> NodeProducer:
        producer = self._producers.get(request.source)
        if producer is None:  # never waits in the ring: a full ring parks the request
            producer = NodeProducer(self.config.beamtime, request.source, create=False,
                                    timeout_ms=0, data_root=str(self.config.data_root))
            producer.node_catalog = self.config.catalog_path
            self._producers[request.source] = producer
        return producer

    def session(self, request: Request) -> Session:
        return self.sessions.open(request)

    def member(self, session: Session) -> NodeConsumer:
        """The session's own ring member."""
        return self.sessions.member(session)  # type: ignore[return-value]

    def close(self) -> None:
        """End every session (their claims go back to the groups), close the clients."""
        self.sessions.end_all("node_stopping")
        for client in (*self._readers.values(), *self._producers.values()):
            client.close()
        self._readers.clear()
        self._producers.clear()


Handler = Callable[[Context, Request], tuple[Any, Any]]  # returns (result, data)
Operations = dict[str, tuple[str, Handler]]  # op -> (access the token needs, handler)


def reader_op(call: Callable[[NodeConsumer, Request], Any]) -> Handler:
    """A handler answering from the source's reader, with no data frames."""
    return lambda ctx, request: (call(ctx.reader(request), request), None)
