"""The node service's remote endpoint (ZeroMQ) and the remote clients: real sockets on
127.0.0.1, a real node service, tokens checked on every request, untrusted frames."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zmq

from asapo_hpc.auth import issue_token, load_or_create_secret
from asapo_hpc.cli import build_parser
from asapo_hpc.client import Consumer, create_consumer, create_producer
from asapo_hpc.client.remote import RemoteConsumer, RemoteProducer
from asapo_hpc.config import RingConfig
from asapo_hpc.errors import (
    AsapoAuthorizationError,
    AsapoEndOfStreamError,
    AsapoRingFullError,
    AsapoStreamFinishedError,
    AsapoUnavailableServiceError,
    AsapoWrongInputError,
)
from asapo_hpc.node import NodeService, SourceConfig, load_config, read_by_id
from asapo_hpc.node.remote import MAX_HEADER_BYTES
from asapo_hpc.node.replay import close_readers

BEAMTIME = "bt"
FRAME_SHAPE = (16, 32)
BIG = 200_000  # above pyzmq's copy threshold (64 KiB): sent zero-copy from the ring


@dataclass
class RemoteNode:
    service: NodeService
    endpoint: str
    secret: bytes

    def token(self, *access: str, beamtime: str = BEAMTIME, **kw: object) -> str:
        return issue_token(self.secret, beamtime=beamtime, access_types=access or ("read",),
                           expires_in=kw.pop("expires_in", 600), **kw)  # type: ignore[arg-type]

    def consumer(self, token: str | None = None, source: str = "det",
                 timeout_ms: int = 2000) -> RemoteConsumer:
        return create_consumer(self.endpoint, "", False, BEAMTIME, source,
                               self.token("read") if token is None else token, timeout_ms)

    def producer(self, token: str | None = None, source: str = "det", type: str = "processed",
                 timeout_ms: int | None = 3000) -> RemoteProducer:
        return create_producer(self.endpoint, type, BEAMTIME, "auto", source,
                               self.token("write") if token is None else token, 1, timeout_ms)


def frame(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 65535, FRAME_SHAPE, dtype=np.uint16)


def blob(i: int) -> bytes:
    return np.random.default_rng(1000 + i).integers(0, 255, BIG, dtype=np.uint8).tobytes()


def sources(slot_count: int = 64) -> tuple[SourceConfig, ...]:
    """'det': 1 KiB frames, groups 'local' and 'remote' declared (durable, from the first
    message); 'big': 200 kB byte messages."""
    ring = RingConfig(slot_count=slot_count, slot_size=1024, full_timeout_s=5.0, lease_s=30.0,
                      groups=("local", "remote"))
    big = RingConfig(slot_count=16, slot_size=256 * 1024, full_timeout_s=5.0, lease_s=30.0,
                     groups=("local", "remote"))
    return (SourceConfig("det", frame_shape=FRAME_SHAPE, dtype="uint16", ring=ring),
            SourceConfig("big", ring=big))


@pytest.fixture
def remote_node(shm_prefix, tmp_path, node_config) -> Iterator[callable]:
    """start(**config) -> RemoteNode: a node service in this process with its remote port
    on 127.0.0.1 (any free port); stopped after the test."""
    services: list[NodeService] = []

    def start(**kw: object) -> RemoteNode:
        kw.setdefault("sources", sources())
        config = node_config(tmp_path, remote_port=0, secret_file=tmp_path / "secret.key",
                             **kw)
        service = NodeService(config).start()
        services.append(service)
        return RemoteNode(service, service.remote_endpoint,
                          load_or_create_secret(tmp_path / "secret.key"))
    yield start
    for service in services:
        service.stop()
    close_readers()


def drain(consumer: Consumer | RemoteConsumer, group: str) -> list[tuple[int, bytes, dict]]:
    """(id, bytes, meta) of every message until the end of the stream, acknowledged."""
    got = []
    while True:
        try:
            msg = consumer.get_next(group, stream="default")
        except AsapoStreamFinishedError:
            return got
        got.append((msg.id, msg.data.tobytes(), msg.meta))
        consumer.acknowledge(group, msg)


def test_remote_producer_to_local_and_remote_consumers_byte_identical(remote_node):
    node = remote_node()
    assert node.endpoint.startswith("tcp://127.0.0.1:")
    n = 12
    with node.producer(source="big") as producer:
        assert isinstance(producer, RemoteProducer)
        for i in range(1, n + 1):
            assert producer.send(i, blob(i), {"i": i}, name=f"raw/b{i}") == i
        producer.send_stream_finished_flag("default", n, next_stream="run2")
    expected = [(i, blob(i), {"i": i}) for i in range(1, n + 1)]
    with Consumer(BEAMTIME, "big", create=False, timeout_ms=2000) as local:
        assert drain(local, "local") == expected
    with node.consumer(source="big") as remote:
        assert isinstance(remote, RemoteConsumer)
        assert drain(remote, "remote") == expected
        with pytest.raises(AsapoStreamFinishedError, match="finished") as info:
            remote.get_next("remote", stream="default")
        assert info.value.next_stream == "run2"
        by_id = remote.get_by_id(5)
        assert (by_id.id, by_id.data.tobytes(), by_id.name) == (5, blob(5), "raw/b5")
        with pytest.raises(AsapoWrongInputError, match="copy from get_last / get_by_id"):
            remote.acknowledge("remote", by_id)
    stored = read_by_id(BEAMTIME, "big", "default", 7, config=node.service.config)
    assert stored.data.tobytes() == blob(7)  # the node recorded the remote sends too


def test_frames_streams_queries_and_metadata(remote_node, wait_for):
    node = remote_node()
    n = 9
    with node.producer(node.token("write", "read")) as producer:
        for i in range(1, n + 1):
            producer.send(i, frame(i), {"i": i, "odd": i % 2})
        producer.send(0, frame(99), {"auto": True}, stream="s2", auto_id=True)
        producer.send_stream_finished_flag("default", n, next_stream="s2")
        producer.send_stream_meta({"energy": 12.4}, stream="default")
        producer.send_beamtime_meta({"pi": "x"})
    with node.consumer() as remote:
        wait_for(lambda: remote.get_current_size() == n and remote.get_stream_list(
            filter="finished"), "the catalog to record the stream")
        msg = remote.get_next("remote", stream="default")
        assert (msg.id, msg.size, msg.attempts, msg.stream) == (1, frame(1).nbytes, 1, "default")
        assert np.array_equal(msg.array(np.uint16, FRAME_SHAPE), frame(1))
        ids = [r["_id"] for r in remote.query_messages("meta.odd = 1 AND _id > 2")]
        assert ids == [3, 5, 7, 9]
        [default] = remote.get_stream_list(filter="finished")
        assert (default["name"], default["lastId"], default["nextStream"]) == ("default", n, "s2")
        assert remote.get_stream_meta() == {"energy": 12.4}
        assert remote.get_beamtime_meta() == {"pi": "x"}
        wait_for(lambda: remote.get_current_size("s2") == 1, "stream s2")
        assert remote.get_by_id(1, stream="s2").meta == {"auto": True}
        with pytest.raises(AsapoWrongInputError, match="stream filter 'bogus' unknown"):
            remote.get_stream_list(filter="bogus")


def test_two_remote_members_share_a_stream_exactly_once(remote_node):
    node = remote_node()
    n = 40
    got: dict[int, list[int]] = {0: [], 1: []}
    failures: list[BaseException] = []
    deadline = time.monotonic() + 60

    def member(k: int) -> None:
        # the group follows every stream: members stop once all n messages are taken
        # (with a one-stream group, the member that meets the finish marker retires the
        # group while the other may still hold its last message: a ring-level issue)
        try:
            with node.consumer() as consumer:
                while len(got[0]) + len(got[1]) < n and time.monotonic() < deadline:
                    try:
                        msg = consumer.get_next("remote", timeout_ms=200)
                    except AsapoEndOfStreamError:
                        continue
                    assert msg.data.tobytes() == frame(msg.id).tobytes()
                    got[k].append(msg.id)
                    consumer.acknowledge("remote", msg)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=member, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    with node.producer() as producer:
        for i in range(1, n + 1):
            producer.send(i, frame(i))
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert sorted(got[0] + got[1]) == list(range(1, n + 1))  # each exactly once
    assert got[0] and got[1], f"one member got nothing: {got}"


def test_neg_acknowledge_goes_to_the_other_member(remote_node):
    node = remote_node()
    with node.producer() as producer:
        producer.send(1, frame(1))
    with node.consumer() as a, node.consumer() as b:
        first = a.get_next("remote")
        with pytest.raises(AsapoWrongInputError, match="message id 2 of stream 'default' is "
                                                       "not held by this consumer"):
            a.acknowledge("remote", 2)
        a.neg_acknowledge("remote", first)
        again = b.get_next("remote")
        assert (again.id, again.attempts, again.data.tobytes()) == (1, 2, frame(1).tobytes())
        b.acknowledge("remote", again)
        with pytest.raises(AsapoEndOfStreamError, match="no new message for group 'remote'"):
            a.get_next("remote", timeout_ms=100)


def local_published(source: str = "det") -> int:
    with Consumer(BEAMTIME, source, create=False) as consumer:
        return consumer.segment.ring_stats()["published"]


@pytest.mark.parametrize("case, match", [
    ("none", "no token given"),
    ("bad signature", "bad signature"),
    ("expired", "token expired"),
    ("other beamtime", "token is for beamtime 'other', not for beamtime 'bt'"),
    ("read only", r"token grants \['read'\] but this request needs 'write'"),
    ("writeraw for processed", r"token grants \['writeraw'\] but this request needs 'write'"),
    ("write for raw", r"token grants \['write'\] but this request needs 'writeraw'"),
])
def test_sends_without_the_right_token_are_refused_and_write_nothing(remote_node, case,
                                                                     match):
    node = remote_node()
    token, type = {
        "none": ("", "processed"),
        "bad signature": (issue_token(b"another secret", beamtime=BEAMTIME,
                                      access_types=["write"], expires_in=60), "processed"),
        "expired": (node.token("write", expires_in=60, now=time.time() - 120), "processed"),
        "other beamtime": (node.token("write", beamtime="other"), "processed"),
        "read only": (node.token("read"), "processed"),
        "writeraw for processed": (node.token("writeraw"), "processed"),
        "write for raw": (node.token("write"), "raw"),
    }[case]
    with node.producer(token, type=type) as producer:
        with pytest.raises(AsapoAuthorizationError, match=match):
            producer.send(1, frame(1))
        with pytest.raises(AsapoAuthorizationError, match=match):
            producer.send_stream_finished_flag("default", 1)
        with pytest.raises(AsapoAuthorizationError, match=match):
            producer.send_stream_meta({"x": 1})
    assert local_published() == 0
    with node.producer(node.token("writeraw"), type="raw") as raw:  # the right one works
        assert raw.send(1, frame(1)) == 1
    assert local_published() == 1


@pytest.mark.parametrize("case, match", [
    ("none", "no token given"),
    ("write only", r"token grants \['write'\] but this request needs 'read'"),
    ("expired", "token expired"),
    ("garbage", "malformed token: expected header.payload.signature"),
])
def test_reads_without_the_right_token_are_refused(remote_node, case, match):
    node = remote_node()
    with node.producer() as producer:
        producer.send(1, frame(1))
    token = {"none": "", "write only": node.token("write"), "garbage": "not-a-jwt",
             "expired": node.token("read", expires_in=1, now=time.time() - 10)}[case]
    with node.consumer(token) as consumer:
        for call in (lambda: consumer.get_next("remote"), lambda: consumer.get_by_id(1),
                     consumer.get_stream_list, consumer.get_last):
            with pytest.raises(AsapoAuthorizationError, match=match):
                call()
    with node.consumer() as consumer:  # the message was not claimed by the refused calls
        assert consumer.get_next("remote").attempts == 1


def test_unknown_source_and_beamtime_are_refused(remote_node):
    node = remote_node()
    with node.consumer(source="nope") as consumer:
        with pytest.raises(AsapoWrongInputError, match="no source 'nope' in this node"):
            consumer.get_current_size()
    token = node.token("read", beamtime="bt9")
    with RemoteConsumer(node.endpoint, "bt9", "det", token) as consumer:
        with pytest.raises(AsapoUnavailableServiceError,
                           match="this node serves beamtime 'bt', not 'bt9'"):
            consumer.get_current_size()


def test_full_ring_is_a_ring_full_error_after_the_timeout(remote_node):
    node = remote_node(sources=sources(slot_count=4))
    with node.producer(timeout_ms=300) as producer:
        for i in range(1, 5):  # the declared groups read nothing: 4 slots fill up
            producer.send(i, frame(i))
        with pytest.raises(AsapoRingFullError, match="send of message 5"):
            producer.send(5, frame(5))
    assert local_published() == 4


CLIENT = """
import sys, time
from asapo_hpc.client import create_consumer
consumer = create_consumer(sys.argv[1], "", False, "bt", "det", sys.argv[2], 5000)
msg = consumer.get_next("remote", stream="default")
print(msg.id, msg.data.tobytes() == bytes.fromhex(sys.argv[3]), flush=True)
time.sleep(600)
"""


def test_killed_remote_client_its_message_is_redelivered(remote_node):
    node = remote_node(remote_lease_s=1.0)
    with node.producer() as producer:
        producer.send(1, frame(1), {"i": 1})
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, node.endpoint, node.token("read"),
                             frame(1).tobytes().hex()], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().split() == ["1", "True"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
    with node.consumer(timeout_ms=10_000) as consumer:  # the lease is 1 s
        msg = consumer.get_next("remote", stream="default")
        assert (msg.id, msg.attempts, msg.meta) == (1, 2, {"i": 1})
        assert msg.data.tobytes() == frame(1).tobytes()
        consumer.acknowledge("remote", msg)


def test_closing_a_remote_consumer_gives_its_messages_back_at_once(remote_node):
    node = remote_node()  # lease 30 s: only close() can give the message back in time
    with node.producer() as producer:
        producer.send(1, frame(1))
    first = node.consumer()
    assert first.get_next("remote").id == 1
    first.close()
    with node.consumer() as second:
        msg = second.get_next("remote", timeout_ms=2000)
        assert (msg.id, msg.attempts) == (1, 2)


def test_stopping_the_node_releases_remote_claims(remote_node):
    node = remote_node()
    with node.producer() as producer:
        producer.send(1, frame(1))
    remote = node.consumer()
    assert remote.get_next("remote").id == 1
    node.service.stop()
    assert node.service.remote_endpoint is None
    with Consumer(BEAMTIME, "det", create=False, timeout_ms=2000) as local:
        msg = local.get_next("remote")
        assert (msg.id, msg.attempts) == (1, 2)
    with pytest.raises(AsapoUnavailableServiceError, match="no answer from the node"):
        RemoteConsumer(node.endpoint, BEAMTIME, "det", node.token(), io_timeout_ms=200
                       ).get_current_size()
    remote.close()  # best effort: the node is gone


def raw_request(socket: zmq.Socket, *frames: bytes) -> dict:
    socket.send_multipart(list(frames))
    assert socket.poll(5000), "the server did not answer"
    reply = socket.recv_multipart()
    assert len(reply) == 1
    return json.loads(reply[0])


def header(node: RemoteNode, **fields: object) -> bytes:
    values = {"v": 1, "rid": 7, "op": "get_current_size", "token": node.token("read"),
              "beamtime": BEAMTIME, "source": "det", "args": {}}
    values.update(fields)
    return json.dumps(values).encode()


def test_malformed_requests_get_an_error_reply_and_the_server_keeps_serving(remote_node):
    node = remote_node()
    bad = [
        ((b"\xff\xfe not json",), "request header is not UTF-8 JSON"),
        ((b"[1, 2]",), "request header must be a JSON object"),
        ((b"[" * 60_000,), "request header is not UTF-8 JSON"),
        ((b"{}", b"data", b"more"), "a request is 1 or 2 frames (header, data), got 3"),
        ((b" " * (MAX_HEADER_BYTES + 1),), "oversize"),
        ((header(node, v=99),), "protocol version 99 is not supported"),
        ((header(node, op="format_disk"),), "unknown operation 'format_disk'"),
        ((header(node, op=None),), "request needs 'op'"),
        ((header(node, args=[1]),), "request needs 'op' (a string) and 'args' (an object)"),
        ((header(node, beamtime=5),), "request needs 'beamtime' and 'source'"),
        ((header(node, op="get_by_id", args={"id": "1"}),),
         "argument 'id' must be of type int"),
        ((header(node, op="get_by_id", args={"id": True}),),
         "argument 'id' must be of type int"),
        ((header(node, op="get_next", args={"group": "g"}),), "group operations need "
                                                              "'session'"),
        ((header(node, op="get_next", session="a" * 32),), "argument 'group' is missing"),
        ((header(node, op="send", token=node.token("write"), args={"id": 1}),),
         "op 'send' needs the message bytes as frame 1"),
    ]
    context = zmq.Context.instance()
    socket = context.socket(zmq.DEALER)
    socket.linger = 0
    socket.connect(node.endpoint)
    try:
        for frames, match in bad:
            reply = raw_request(socket, *frames)
            assert (reply["ok"], reply["error"]) == (False, "AsapoWrongInputError"), reply
            assert match in reply["message"], (match, reply)
        reply = raw_request(socket, header(node))  # still serving
        assert reply == {"v": 1, "rid": 7, "ok": True, "result": 0}
    finally:
        socket.close()
    assert local_published() == 0


def test_serve_flags_reach_the_config(tmp_path):
    args = build_parser().parse_args(["serve", "--remote-port", "5555", "--metrics-port", "0",
                                      "--remote-host", "0.0.0.0", "--secret-file", "k.key"])
    assert (args.remote_port, args.metrics_port, args.remote_host, args.secret_file) == \
        (5555, 0, "0.0.0.0", "k.key")
    config = load_config(None, remote_port=args.remote_port, metrics_port=args.metrics_port,
                         remote_host=args.remote_host, secret_file=args.secret_file)
    assert (config.remote_port, config.metrics_port, config.remote_host, config.secret_file) \
        == (5555, 0, "0.0.0.0", Path("k.key"))
    assert load_config(None).remote_port == -1  # off unless asked for
    with pytest.raises(AsapoWrongInputError, match="remote_port=70000"):
        load_config(None, remote_port=70000)
