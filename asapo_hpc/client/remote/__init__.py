"""RemoteConsumer / RemoteProducer: the Consumer and Producer API against a node service on
another host, over ZeroMQ (endpoint "tcp://host:port", the node's ``remote_port``).

Same method names, arguments, messages and exceptions as the local clients; what differs:

- every call is a round trip to the node (a DEALER socket; see ``asapo_hpc.node.remote``
  for the wire format) and carries the beamtime token: refusals raise
  AsapoAuthorizationError with the node's reason;
- ``Message.data`` is a read-only view of the received ZeroMQ frame (no copy after the
  network), valid as long as you keep the Message;
- ``get_next(meta_only=True)`` does not fetch the bytes (``data`` is empty, ``size`` says
  how many there are). The local Consumer may hand them anyway where that is free; never
  read ``data`` after asking for meta_only;
- ``get_next_batch`` is one round trip for up to 256 messages (their bytes as the frames
  of one multipart reply, zero-copy on the node); ``acknowledge_batch`` one for the acks;
- datasets (``get_next_dataset``, ``get_dataset_by_id``, ``get_last_dataset``) come as one
  reply with a frame per part, read by the node from its HDF5 files;
- ``get_unacknowledged_messages`` / ``get_last_acknowledged_message`` (ASAPO's names)
  answer for the groups the node's catalog keeps: dataset groups and groups reading a
  stream from disk, exactly as the local Consumer's (the node makes those same calls);
- ``delete_stream`` needs a token with ``write`` (it destroys records), from a consumer too.

Quality of service of claims. A remote member that makes no call for the node's
``remote_lease_s`` (30 s by default) is presumed gone and its unacknowledged messages go to
other members. While this consumer holds claims, a daemon thread pings the node every
``remote_lease_s / 3`` on its own socket (``keepalive=True``, the default), so a worker that
spends long on a message keeps it; only a process that died or cannot reach the node
loses its claims (after one lease). What still bounds the time on a message, as for local
members, is the ring's lease (``lease_s``) or ``set_resend_nacs``. ``close()`` gives the
claims back at once.

A node that does not answer within the call's wait plus ``io_timeout_ms`` raises
AsapoUnavailableServiceError. The request may still be carried out later (it is queued
until the node is reachable), as with any network client.

Sends are synchronous (one round trip each); the node copies the bytes into its ring. A
message larger than the source's ring is refused here, before sending (AsapoWrongInputError:
the limit comes from the node's ``ping`` reply, asked once per producer).

Layout: ``connection`` (the DEALER socket, request / reply matching, the node's errors
raised here, the keep-alive thread), ``consumer`` (RemoteConsumer, RemoteBatch),
``producer`` (RemoteProducer).
"""

from asapo_hpc.client.remote.connection import IO_TIMEOUT_MS, is_remote
from asapo_hpc.client.remote.consumer import RemoteBatch, RemoteConsumer
from asapo_hpc.client.remote.producer import RemoteProducer

__all__ = ["IO_TIMEOUT_MS", "RemoteBatch", "RemoteConsumer", "RemoteProducer", "is_remote"]
