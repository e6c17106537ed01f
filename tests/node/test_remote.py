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
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from asapo_hpc.auth import issue_token, load_or_create_secret
from asapo_hpc.cli import build_parser
from asapo_hpc.client import Consumer, Producer, create_consumer, create_producer
from asapo_hpc.client.remote import RemoteBatch, RemoteConsumer, RemoteProducer
from asapo_hpc.client.streams import Dataset
from asapo_hpc.config import RingConfig
from asapo_hpc.errors import (
    AsapoAuthorizationError,
    AsapoEndOfStreamError,
    AsapoError,
    AsapoNoDataError,
    AsapoPartialDataError,
    AsapoRingFullError,
    AsapoStreamFinishedError,
    AsapoUnavailableServiceError,
    AsapoWrongInputError,
)
from asapo_hpc.node import NodeService, SourceConfig, load_config, read_by_id
from asapo_hpc.node.remote import MAX_HEADER_BYTES, REFUSALS
from asapo_hpc.node.replay import close_readers

BEAMTIME = "bt"
FRAME_SHAPE = (16, 32)
MODULE_SHAPE = (8, 8)
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
                 timeout_ms: int = 2000, **kw: object) -> RemoteConsumer:
        token = self.token("read") if token is None else token
        if kw:  # RemoteConsumer's own options (create_consumer has ASAPO's arguments only)
            return RemoteConsumer(self.endpoint, BEAMTIME, source, token,
                                  timeout_ms=timeout_ms, **kw)  # type: ignore[arg-type]
        return create_consumer(self.endpoint, "", False, BEAMTIME, source, token, timeout_ms)

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
    message); 'big': 200 kB byte messages; 'mod': 3-part datasets of 8 x 8 uint16."""
    ring = RingConfig(slot_count=slot_count, slot_size=1024, full_timeout_s=5.0, lease_s=30.0,
                      groups=("local", "remote"))
    big = RingConfig(slot_count=16, slot_size=256 * 1024, full_timeout_s=5.0, lease_s=30.0,
                     groups=("local", "remote"))
    modules = RingConfig(slot_count=64, slot_size=1024, full_timeout_s=5.0, lease_s=30.0)
    return (SourceConfig("det", frame_shape=FRAME_SHAPE, dtype="uint16", ring=ring),
            SourceConfig("big", ring=big),
            SourceConfig("mod", frame_shape=MODULE_SHAPE, dtype="uint16", parts=3,
                         ring=modules))


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
        ((header(node, op="send", token=node.token("write"), args={"id": 1, "dataset": [1]}),
          b"data"), "dataset must be [substream, size] with 1 <= substream <= size"),
        ((header(node, op="send", token=node.token("write"), args={"id": 1,
                                                                   "dataset": [4, 3]}),
          b"data"), "dataset must be [substream, size]"),
        ((header(node, op="get_by_id", args={"id": 2**70}),),
         "argument 'id' must be in 1..9223372036854775807"),
        ((header(node, op="get_next_batch", session="a" * 32, args={"group": "g", "n": 0}),),
         "argument 'n' must be in 1..256"),
        ((header(node, op="acknowledge_batch", session="a" * 32,
                 args={"group": "g", "messages": [["default", "1"]]}),),
         "'messages' must be at most 4096 [stream, id] pairs"),
        ((header(node, op="neg_acknowledge_dataset", args={"group": "g", "id": 1,
                                                           "delay_ms": 2**62}),),
         "argument 'delay_ms' must be in 0..1000000000"),
        ((header(node, op="get_next_dataset", session="a" * 32,
                 args={"group": "g", "min_size": -1}),), "argument 'min_size' must be in 0.."),
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


# -- datasets ---------------------------------------------------------------------------------

def module(i: int, k: int) -> np.ndarray:
    return np.random.default_rng(100 * i + k).integers(0, 65535, MODULE_SHAPE, dtype=np.uint16)


def parts_of(dataset: Dataset) -> list[tuple[int, tuple[int, int] | None, bytes, dict]]:
    return [(p.id, p.dataset, p.data.tobytes(), p.meta) for p in dataset.parts]


def outcome(call: Callable[[], Dataset]) -> tuple:
    """What a dataset call did: ("ok", parts) or (error class, message, partial parts)."""
    try:
        dataset = call()
    except AsapoError as exc:
        partial = getattr(exc, "partial_data", None)
        return (type(exc).__name__, str(exc), parts_of(partial) if partial else None)
    return ("ok", dataset.id, dataset.size, parts_of(dataset))


def send_modules(producer: RemoteProducer) -> None:
    """Dataset 1 complete (parts sent out of order), dataset 2 without its third part;
    the stream finished (the sink stores an incomplete dataset's parts then)."""
    for k in (3, 1, 2):
        producer.send(1, module(1, k), {"k": k}, dataset=(k, 3), name=f"m1_{k}")
    for k in (1, 2):
        producer.send(2, module(2, k), {"k": k}, dataset=(k, 3), name=f"m2_{k}")
    producer.send_stream_finished_flag("default", 2)


def test_datasets_complete_then_partial_exactly_as_the_local_consumer(remote_node, wait_for):
    node = remote_node()
    with node.producer(source="mod") as producer:
        send_modules(producer)
    complete = [(1, (k, 3), module(1, k).tobytes(), {"k": k}) for k in (1, 2, 3)]
    partial = [(2, (k, 3), module(2, k).tobytes(), {"k": k}) for k in (1, 2)]
    local = Consumer(BEAMTIME, "mod", create=False, data_root=str(node.service.config.data_root))
    with node.consumer(source="mod") as remote, local:
        wait_for(lambda: remote.get_stream_list(filter="finished"), "the finish marker")
        results = {}
        for group, consumer in (("gr", remote), ("gl", local)):  # two groups: each sees all
            results[group] = [
                outcome(lambda c=consumer, g=group: c.get_next_dataset(g, timeout_ms=300)),
                outcome(lambda c=consumer, g=group: c.get_next_dataset(g, timeout_ms=300)),
                outcome(lambda c=consumer, g=group: c.get_next_dataset(g, min_size=2,
                                                                       timeout_ms=300)),
                outcome(lambda c=consumer, g=group: c.get_next_dataset(g, timeout_ms=300)),
            ]
    remote_results, local_results = results["gr"], results["gl"]
    assert remote_results[0] == ("ok", 1, 3, complete)
    assert remote_results[1][0] == "AsapoNoDataError"  # short of parts, min_size not given
    assert remote_results[2][0] == "AsapoPartialDataError"
    assert "dataset 2 is partial: 2 of 3 parts" in remote_results[2][1]
    assert remote_results[2][2] == partial
    assert remote_results[3][0] == "AsapoStreamFinishedError"
    assert local_results == remote_results  # the same data, errors and messages


def attempts_of(call: Callable[[], Dataset]) -> tuple[str, int, list[int]]:
    """What a group's dataset call handed out: ("ok" or "partial", id, each part's attempts)."""
    try:
        return ("ok", *_attempts(call()))
    except AsapoPartialDataError as exc:
        return ("partial", *_attempts(exc.partial_data))


def _attempts(dataset: Dataset) -> tuple[int, list[int]]:
    return dataset.id, [p.attempts for p in dataset.parts]


def dataset_redeliveries(consumer: Consumer | RemoteConsumer, group: str) -> list[tuple]:
    """send_modules' datasets 1 (complete) and 2 (partial) taken, negatively acknowledged
    and taken again; then both again once the resend delay passed unacknowledged."""
    def take(**kw: int) -> tuple:
        return attempts_of(lambda: consumer.get_next_dataset(group, timeout_ms=300, **kw))
    got = [take()]
    consumer.neg_acknowledge_dataset(group, 1, delay_ms=0)
    got += [take(), take(min_size=2)]
    consumer.neg_acknowledge_dataset(group, 2, delay_ms=0)
    got.append(take())  # no min_size: a partial one handed out before comes back partial
    consumer.set_resend_nacs(True, delay_ms=200, attempts=5)
    time.sleep(0.3)
    return [*got, take(), take()]


def test_dataset_parts_carry_the_groups_delivery_count_as_the_local_consumer(remote_node,
                                                                             wait_for):
    node = remote_node()
    with node.producer(source="mod") as producer:
        send_modules(producer)
    local = Consumer(BEAMTIME, "mod", create=False, data_root=str(node.service.config.data_root))
    with node.consumer(source="mod") as remote, local:
        wait_for(lambda: remote.get_stream_list(filter="finished"), "the finish marker")
        remote_got = dataset_redeliveries(remote, "gr")
        local_got = dataset_redeliveries(local, "gl")
        for consumer in (remote, local):  # read without a group: no delivery to count
            assert _attempts(consumer.get_dataset_by_id(1)) == (1, [0, 0, 0])
    assert remote_got == [("ok", 1, [1, 1, 1]), ("ok", 1, [2, 2, 2]), ("partial", 2, [1, 1]),
                          ("partial", 2, [2, 2]), ("ok", 1, [3, 3, 3]), ("partial", 2, [3, 3])]
    assert local_got == remote_got


def test_dataset_by_id_last_and_the_acknowledgement_queries(remote_node, wait_for):
    node = remote_node()
    with node.producer(source="mod") as producer:
        send_modules(producer)
        with pytest.raises(AsapoWrongInputError, match="substream counts from 1 up to size"):
            producer.send(3, module(3, 1), dataset=(4, 3))
    complete = [(1, (k, 3), module(1, k).tobytes(), {"k": k}) for k in (1, 2, 3)]
    with node.consumer(source="mod") as remote:
        wait_for(lambda: remote.get_stream_list(filter="finished"), "the finish marker")
        assert outcome(lambda: remote.get_dataset_by_id(1)) == ("ok", 1, 3, complete)
        assert outcome(lambda: remote.get_last_dataset()) == ("ok", 1, 3, complete)
        with pytest.raises(AsapoPartialDataError, match="partial") as info:
            remote.get_dataset_by_id(2, min_size=2)
        assert [p.data.tobytes() for p in info.value.partial_data.parts] == \
            [module(2, k).tobytes() for k in (1, 2)]
        assert [p.name for p in info.value.partial_data.parts] == ["m2_1", "m2_2"]
        with pytest.raises(AsapoNoDataError):
            remote.get_dataset_by_id(2)
        assert remote.get_current_dataset_count(include_incomplete=False) == 1
        # the catalog keeps the acknowledgements of dataset groups
        first = remote.get_next_dataset("g", timeout_ms=300)
        with pytest.raises(AsapoPartialDataError):
            remote.get_next_dataset("g", min_size=1, timeout_ms=300)
        assert remote.get_unacknowledged_messages("g") == [1, 2]
        assert remote.get_last_acknowledged_message("g") is None
        remote.acknowledge_dataset("g", first)
        assert remote.get_unacknowledged_messages("g") == [2]
        assert remote.get_unacknowledged_messages("g", from_id=1, to_id=1) == []
        assert remote.get_unacknowledged_messages("g", to_id=10**15) == [2]  # to the last id
        with pytest.raises(AsapoWrongInputError, match="empty range: to_id 1 is below "
                                                       "from_id 2"):
            remote.get_unacknowledged_messages("g", from_id=2, to_id=1)
        assert remote.get_last_acknowledged_message("g") == 1
        with pytest.raises(AsapoWrongInputError, match="group 'nobody' keeps no "
                                                       "acknowledgements of stream 'default'"):
            remote.get_unacknowledged_messages("nobody")
    with node.consumer() as ring_reader:  # a ring group: its progress is in the ring
        with node.producer() as producer:
            producer.send(1, frame(1))
        ring_reader.acknowledge("remote", ring_reader.get_next("remote"))
        with pytest.raises(AsapoWrongInputError, match="a ring group's progress is in the "
                                                       "ring"):
            ring_reader.get_last_acknowledged_message("remote")


# -- batches ----------------------------------------------------------------------------------

def test_batches_come_in_one_reply_and_are_acknowledged_in_one(remote_node):
    node = remote_node()
    n = 10
    with node.producer(source="big") as producer:
        for i in range(1, n + 1):
            producer.send(i, blob(i), {"i": i})
    with node.consumer(source="big") as a, node.consumer(source="big") as b:
        batch = a.get_next_batch("remote", 4)
        assert isinstance(batch, RemoteBatch)
        assert batch.ids == [1, 2, 3, 4]
        assert [m.data.tobytes() for m in batch] == [blob(i) for i in range(1, 5)]
        assert [bytes(v) for v in batch.buffers()] == [blob(i) for i in range(1, 5)]
        assert [m.meta for m in batch] == [{"i": i} for i in range(1, 5)]
        assert a.acknowledge_batch("remote", batch[:3]) == 3
        assert a.acknowledge_batch("remote", batch[:3]) == 0  # no longer held: not counted
        rest = b.get_next_batch("remote", 100)  # waits only for the first; 4 stays with a
        assert rest.ids == list(range(5, n + 1))
        assert [a.tobytes() for a in rest.arrays()] == [blob(i) for i in range(5, n + 1)]
        assert b.acknowledge_batch("remote", rest) == 6
        a.close()  # the unacknowledged 4 goes back to the group at once
        again = b.get_next_batch("remote", 5, timeout_ms=2000)
        assert [(m.id, m.attempts, m.data.tobytes()) for m in again] == [(4, 2, blob(4))]
        assert b.acknowledge_batch("remote", again) == 1
        with pytest.raises(AsapoEndOfStreamError, match="no new message for group 'remote'"):
            b.get_next_batch("remote", 5, timeout_ms=100)
        later = threading.Timer(0.3, lambda: send_one(node, n + 1))
        later.start()  # a waiting batch call is answered when data arrives
        waited = b.get_next_batch("remote", 5, timeout_ms=10_000)
        later.join()
        assert [(m.id, m.data.tobytes()) for m in waited] == [(n + 1, blob(n + 1))]


def send_one(node: RemoteNode, i: int) -> None:
    with node.producer(source="big") as producer:
        producer.send(i, blob(i))


BATCH_CLIENT = """
import sys, time
from asapo_hpc.client import create_consumer
consumer = create_consumer(sys.argv[1], "", False, "bt", "det", sys.argv[2], 5000)
batch = consumer.get_next_batch("remote", 3, stream="default")
print(*batch.ids, flush=True)
time.sleep(600)
"""


def test_killed_remote_batch_holder_its_messages_are_redelivered(remote_node):
    node = remote_node(remote_lease_s=1.0)
    with node.producer() as producer:
        for i in range(1, 4):
            producer.send(i, frame(i))
    proc = subprocess.Popen([sys.executable, "-c", BATCH_CLIENT, node.endpoint,
                             node.token("read")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().split() == ["1", "2", "3"]
        os.kill(proc.pid, signal.SIGKILL)  # its keep-alive thread dies with it
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
    with node.consumer(timeout_ms=10_000) as consumer:
        got = []
        while len(got) < 3:
            got += [(m.id, m.attempts, m.data.tobytes()) for m in
                    consumer.get_next_batch("remote", 3, stream="default")]
        assert got == [(i, 2, frame(i).tobytes()) for i in range(1, 4)]


# -- keep-alive, meta_only --------------------------------------------------------------------

def test_keepalive_keeps_a_slow_members_claims_beyond_the_remote_lease(remote_node):
    node = remote_node(remote_lease_s=0.6)
    with node.producer() as producer:
        producer.send(1, frame(1))
        producer.send(2, frame(2))
    with node.consumer() as slow, node.consumer(keepalive=False) as mute, \
            node.consumer() as other:
        kept = slow.get_next("remote")
        lost = mute.get_next("remote")
        assert (kept.id, lost.id) == (1, 2)
        time.sleep(2.0)  # more than three leases without a call from either
        again = other.get_next("remote", timeout_ms=3000)  # only the mute one's came back
        assert (again.id, again.attempts) == (2, 2)
        with pytest.raises(AsapoEndOfStreamError):
            other.get_next("remote", timeout_ms=300)
        slow.acknowledge("remote", kept)  # still its own
        with pytest.raises(AsapoWrongInputError, match="message id 2 of stream 'default' is "
                                                       "not held by this consumer"):
            mute.acknowledge("remote", lost)
        other.acknowledge("remote", again)
        assert slow._keepalive is not None and slow._keepalive.pings >= 3
        assert mute._keepalive is None


def test_meta_only_sends_no_bytes_and_still_claims(remote_node):
    node = remote_node()
    with node.producer(source="big") as producer:
        producer.send(1, blob(1), {"i": 1}, name="raw/b1")
    with node.consumer(source="big") as remote, node.consumer(source="big") as other:
        msg = remote.get_next("remote", meta_only=True)
        assert (msg.id, msg.size, msg.meta, msg.name, msg.data.nbytes) == \
            (1, BIG, {"i": 1}, "raw/b1", 0)
        with pytest.raises(AsapoEndOfStreamError):  # claimed all the same
            other.get_next("remote", timeout_ms=200)
        assert remote.get_by_id(1, stream=msg.stream).data.tobytes() == blob(1)
        remote.acknowledge("remote", msg)


# -- streams, ids, sizes, metrics -------------------------------------------------------------

def test_delete_stream_needs_write_and_next_id_is_shared(remote_node, wait_for):
    node = remote_node()
    with node.producer() as producer:
        for i in range(1, 4):
            producer.send(i, frame(i), stream="s1")
        producer.send_stream_finished_flag("s1", 3)
        assert [producer.next_id("s2"), producer.next_id("s2")] == [1, 2]
        assert producer.send(0, frame(7), stream="s2", auto_id=True) == 3
    with Producer(BEAMTIME, "det", create=False) as local:
        assert local.next_id("s2") == 4  # one counter for remote and local producers
    with node.consumer() as reader:
        wait_for(lambda: reader.get_current_size("s1") == 3 and
                 reader.get_current_size("s2") == 1, "the catalog to record s1 and s2")
        with pytest.raises(AsapoAuthorizationError,
                           match=r"token grants \['read'\] but this request needs 'write'"):
            reader.delete_stream("s1")
        assert reader.get_current_size("s1") == 3
    with node.consumer(node.token("read", "write")) as admin:
        assert admin.delete_stream("s1") is True
        assert [s["name"] for s in admin.get_stream_list()] == ["s2"]
        with pytest.raises(AsapoWrongInputError, match="cannot delete .*'s1'.*: no such "
                                                       "stream"):
            admin.delete_stream("s1")
        assert admin.delete_stream("s1", error_on_not_exist=False) is False
    with node.producer() as producer:
        assert producer.delete_stream("s2") is True


def test_oversize_sends_get_a_clear_error_never_a_disconnect(remote_node):
    node = remote_node()
    limit = 64 * 1024  # 'det': 64 slots of 1024 bytes
    with node.producer() as producer:
        with pytest.raises(AsapoWrongInputError, match=rf"message of {limit + 1} bytes is "
                                                       rf"larger than source 'det' takes: its "
                                                       rf"ring holds {limit} bytes"):
            producer.send(1, b"x" * (limit + 1))  # refused before sending
        assert producer.send(1, frame(1)) == 1
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.linger = 0
    socket.connect(node.endpoint)
    try:  # a client that ignores the limits the node advertises
        info = raw_request(socket, header(node, op="ping"))["result"]
        assert info == {"protocol": 1, "lease_s": 30.0, "max_message_bytes": limit,
                        "max_frame_bytes": 2 * 16 * 256 * 1024 + MAX_HEADER_BYTES}
        reply = raw_request(socket, header(node, op="send", token=node.token("write"),
                                           args={"id": 2}), b"y" * (limit + 1))
        assert (reply["ok"], reply["error"]) == (False, "AsapoWrongInputError")
        assert reply["message"].startswith(f"message of {limit + 1} bytes is larger than "
                                           "source 'det' takes: its ring holds 64 slots of "
                                           "1024 bytes")
        reply = raw_request(socket, header(node, op="send", token=node.token("write"),
                                           args={"id": 2}), b"y" * 300_000)
        assert reply["error"] == "AsapoWrongInputError"  # above the largest ring too
        assert raw_request(socket, header(node))["result"] == 1  # same connection, served
    finally:
        socket.close()
    assert local_published() == 1


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_remote_requests_and_refusals_are_counted_in_metrics(remote_node, wait_for):
    node = remote_node(metrics_port=0)
    with node.consumer() as consumer:
        assert consumer.get_current_size() == 0
        assert consumer.get_current_size() == 0
        with pytest.raises(AsapoEndOfStreamError):
            consumer.get_next("remote", timeout_ms=50)
        samples = wait_for(lambda: (s := scrape(node.service.metrics_url)).get(
            ("asapo_remote_sessions", ())) == 1 and s, "the session gauge")
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.linger = 0
    socket.connect(node.endpoint)
    try:
        for frames in ((header(node, token=""),), (header(node, token="x.y.z"),),
                       (header(node, op="format_disk"),), (b"not json",),
                       (header(node, v=2),), (header(node, source="nope"),),
                       (header(node, beamtime="bt2", token=node.token(beamtime="bt2")),),
                       (header(node, op="send", token=node.token("write"), args={"id": 1}),
                        b"z" * 70_000)):
            assert raw_request(socket, *frames)["ok"] is False
    finally:
        socket.close()
    samples = scrape(node.service.metrics_url)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    # 2 served + 3 refused (two tokens, one beamtime) that named source 'det'
    assert value("asapo_remote_requests_total", source="det", op="get_current_size") == 5
    assert value("asapo_remote_requests_total", source="det", op="get_next") == 1
    assert value("asapo_remote_requests_total", source="unknown", op="get_current_size") == 1
    assert {r: value("asapo_remote_refused_total", reason=r) for r in REFUSALS} == {
        "malformed": 1, "protocol_version": 1, "unknown_op": 1, "token": 2, "beamtime": 1,
        "source": 1, "busy": 0, "oversize": 1}
    # the parked get_next was answered; the gauge is refreshed every 0.1 s, so wait for it
    wait_for(lambda: scrape(node.service.metrics_url)[("asapo_remote_waiting_requests", ())]
             == 0, "the waiting-requests gauge to drop")
    wait_for(lambda: scrape(node.service.metrics_url)[("asapo_remote_sessions", ())] == 0,
             "the closed session to be gone from the gauge")


GARBAGE_ARGS = ({}, {"group": 5, "id": "1"}, {"group": "g", "id": -1, "stream": ""},
                {"group": "g", "id": 1, "stream": "x" * 5000}, {"group": "g" * 200, "n": 2**70},
                {"group": "g", "messages": [["default", 2**80]], "min_size": 2**70},
                {"metadata": [1], "mode": "drop", "query": "_id = ; DROP TABLE messages",
                 "from_id": 2**63, "to_id": 1, "filter": None, "last_id": -5},
                {"stream": "s/../../etc", "dataset": [1, 2**40], "meta_json": "{",
                 "delay_ms": -1, "attempts": 2**40, "resend": "yes"})


def test_every_operation_answers_garbage_arguments_without_an_internal_error(remote_node):
    node = remote_node()
    token = node.token("read", "write")
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.linger = 0
    socket.connect(node.endpoint)
    try:
        ops = sorted(node.service._remote._ops)
        for op in ops:
            for args in GARBAGE_ARGS:
                frames = [header(node, op=op, token=token, session="b" * 32, args=args)]
                if op == "send":
                    frames.append(b"\x00" * 10)
                socket.send_multipart(frames)
                assert socket.poll(15_000), f"no answer to {op} {args}"
                reply = json.loads(socket.recv_multipart()[0])
                assert reply.get("error") != "AsapoError", (op, args, reply)
                assert "internal error" not in reply.get("message", ""), (op, args, reply)
        assert raw_request(socket, header(node))["ok"] is True
    finally:
        socket.close()
