"""The node service's remote endpoint: ASAPO's consumer and producer calls over ZeroMQ.

One ROUTER socket (``remote_host:remote_port``, 127.0.0.1 unless configured otherwise),
served by one thread that alone touches the rings it opens (a Consumer is for one thread).
``asapo_hpc.client.remote`` is the client.

Wire format (version 1). A request is a ZeroMQ multipart message of one or two frames:

    frame 0   UTF-8 JSON object, at most MAX_HEADER_BYTES:
              {"v": 1, "rid": <int, echoed>, "op": "<operation>", "token": "<JWT>",
               "beamtime": "...", "source": "...", "session": "<hex id of the client>",
               "type": "processed" | "raw" (producers), "args": {...}}
    frame 1   the message bytes (op "send" only)

The reply has the same shape: frame 0 ``{"v": 1, "rid": ..., "ok": true, "result": ...}``
or ``{"v": 1, "rid": ..., "ok": false, "error": "<class in asapo_hpc.errors>",
"message": "...", "details": {...}}``; the frames after it carry message bytes:

    get_next, get_by_id, get_last   result: a message (wire.message_result); frame 1 its
                                    bytes (none with meta_only)
    get_next_batch                  result {"messages": [message, ...]}; one frame each
    get_next_dataset,               result {"id", "size", "timestamp", "partial": null |
    get_dataset_by_id,              "<why>", "parts": [message, ...]}; one frame per part.
    get_last_dataset                A partial dataset is an ok reply with "partial" set: the
                                    client raises AsapoPartialDataError carrying it
    ping                            result {"protocol", "lease_s", "max_message_bytes" (the
                                    source's ring), "max_frame_bytes" (the socket's limit)}

Operations and their arguments (``args``), by the access the token needs:

    either  ping (read for consumers, write / writeraw for producers: requests with "type")
    read    keepalive; close; get_next {group, stream?, timeout_ms?, meta_only?};
            get_next_batch {group, n, stream?, timeout_ms?}; get_by_id {id, stream?};
            get_last {stream?}; acknowledge / neg_acknowledge {group, id, stream?,
            delay_ms?}; acknowledge_batch {group, messages: [[stream, id], ...]};
            set_resend_nacs {resend, delay_ms, attempts}; get_next_dataset {group,
            min_size?, stream?, timeout_ms?}; get_dataset_by_id {id, min_size?, stream?};
            get_last_dataset {min_size?, stream?}; acknowledge_dataset /
            neg_acknowledge_dataset {group, id, stream?, delay_ms?};
            get_unacknowledged_messages {group, stream?, from_id?, to_id?};
            get_last_acknowledged_message {group, stream?}; get_stream_list,
            get_current_size, query_messages, get_stream_info, get_last_stream,
            get_source_list, get_beamtime_meta, get_stream_meta
    write   send {id, auto_id?, stream?, name?, meta_json?, dataset?: [substream, size],
            timeout_ms?} + frame 1; next_id {stream?}; send_stream_finished_flag;
            send_stream_meta; send_beamtime_meta; delete_stream {stream?,
            error_on_not_exist?, delete_meta?} (deleting is a write, from consumers too)

Access. Every request carries a beamtime token checked by ``asapo_hpc.auth.verify_token``
against the node's secret (signature, expiry, ``bt_<beamtime>``): ``read`` for every read
and group operation, ``write`` to send to a processed source, ``writeraw`` to a raw one (as
ASAPO's receiver). The request must name the node's beamtime and one of its sources.
Refusals are AsapoAuthorizationError replies; nothing is done for them.

Remote members. Each client session (a random id the client makes) gets its own ring
Consumer on first use of a group, i.e. its own ring member: ring groups share work between
remote members exactly as between local ones. A session that makes no request for
``remote_lease_s`` seconds (and has no request waiting) is presumed gone: its Consumer is
closed, so the messages it held go back to their groups at once (redelivered, attempts + 1).
A client's ``close()`` does the same immediately. ``keepalive`` only refreshes a session
(it never makes one): the client sends it from a thread of its own while it holds claims,
so a slow worker is not presumed gone. Beyond that the ring's own lease (``lease_s``, or
``set_resend_nacs``) still bounds every claim, exactly as for local members.

Datasets are the catalog's groups (see ``asapo_hpc.client.streams``): the session's member
takes the group's next id from the catalog (its resend settings apply), and the parts are
read back from the node's HDF5 files (one copy each). A dataset whose parts the sink has
not stored yet waits for them (parked, up to LOCATION_WAIT_S), then goes back to the group
with AsapoDataNotInCacheError, as the local call does. ``get_unacknowledged_messages`` and
``get_last_acknowledged_message`` answer for these catalog groups (and groups reading a
stream from disk); a ring group keeps no per-id acknowledgements, so asking about one is
an AsapoWrongInputError that says so. Both are the local Consumer's own calls
(``ConsumerStreams``), made by the source's reader: the answers are the same.

Waiting. A ``get_next`` / ``get_next_batch`` / ``get_next_dataset`` with nothing to
deliver, or a ``send`` into a full ring, is parked and retried every PARK_POLL_S (the
catalog every POLL_S) until its timeout: the server thread never blocks in the ring.

Copies. Message bytes leave the ring zero-copy: the reply's data frames are sent from the
views into shared memory, and pyzmq keeps those views (hence the mapping) alive until
ZeroMQ has written them. pyzmq copies frames below its copy_threshold (64 KiB) anyway. A
ring slot is handed back (ack / nack) only after ZeroMQ let go of it (the send's
MessageTracker; one for all frames of a batch); an ack that comes earlier is applied when
it has. When a session expires its claims are released at once; bytes still queued to that
(dead) peer may then be overwritten in the ring, which only that peer could see. Sends copy
twice: ZeroMQ receives into its own buffer, and Producer.send copies that into the ring.
``get_last`` / ``get_by_id`` and dataset parts send the copy the Consumer makes.

meta_only. ``get_next(meta_only=True)`` says the caller does not need the bytes: no data
frame is sent (``size`` still tells how many there are). The local Consumer may hand the
bytes anyway where they cost nothing (a view into its ring); the disk tier leaves them out
as here. Code asking for meta_only must not read ``data``.

Sizes. A send whose bytes exceed the source's ring (slot_size x slot_count) is refused
with AsapoWrongInputError. ZeroMQ's own limit (ZMQ_MAXMSGSIZE, "max_frame_bytes" in the
ping reply) is FRAME_LIMIT_FACTOR times the largest ring, so an oversize frame up to that
gets this clear reply; above it ZeroMQ drops the frame and disconnects the sender, which
RemoteProducer never provokes: it learns both limits from ``ping`` and refuses an
oversize message before sending it.

Bad input. Network bytes are untrusted: a request of the wrong shape, malformed JSON,
a header over MAX_HEADER_BYTES, wrong argument types or an unknown operation gets an
AsapoWrongInputError reply; an unexpected exception gets an AsapoError reply and a log
line; the server keeps serving.

Metrics. ``RemoteServer.counters`` counts requests per (source, op) and refusals per
reason (REFUSALS); ``asapo_hpc.node.metrics`` reads them at scrape time.

Layout (imports point down the list):

    wire.py          limits, the parsed request and its checked arguments, reply headers,
                     data frames (zero-copy sends and their trackers)
    counters.py      RemoteCounters, REFUSALS
    parking.py       requests that wait: Park, try_or_park, ParkingLot
    sessions.py      remote members: Session, Sessions (leases, deferred acks)
    context.py       what handlers reach: config, counters, sessions, readers, producers
    handlers_*.py    one module per family of operations, each with its OPERATIONS table:
                     session (ping, keepalive, close), messages, datasets (and the
                     acknowledgement queries), streams (stream and metadata reads), produce
    server.py        RemoteServer: the socket, the loop, the checks, dispatch, replies
"""

from asapo_hpc.node.remote.counters import REFUSALS, RemoteCounters
from asapo_hpc.node.remote.server import RemoteServer
from asapo_hpc.node.remote.wire import MAX_HEADER_BYTES, PROTOCOL_VERSION

__all__ = ["MAX_HEADER_BYTES", "PROTOCOL_VERSION", "REFUSALS", "RemoteCounters", "RemoteServer"]

