"""The replay feeder: a stored stream, read from disk, published into a pipeline's source.

``asapo-hpc reprocess --pipeline FILE`` (or a ``[replay]`` table) runs a pipeline over a
stored stream. The stages are unchanged: their first stage reads its input ring as always
(zero-copy, its own groups, finish markers). One feeder process reads the stored stream id
by id from the catalog and HDF5 files (``client.disk.DiskReader``: dataset parts too) and
publishes each message into that ring with its id, name, metadata and dataset part, then
the finish marker. Why a feeder rather than stages reading disk-mode groups: stage instances
split a stream statically by id in their own ring groups and wait on ring finish markers;
feeding the ring keeps that, and the ring's backpressure paces the reads from disk.

The feeder follows a stream that is still being recorded, until it is finished.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from asapo_hpc.client import Producer
from asapo_hpc.client.disk import DiskReader, StoredMessage, catalog_path_for
from asapo_hpc.errors import AsapoNoDataError, AsapoStreamFinishedError, AsapoWrongInputError
from asapo_hpc.pipeline.spec import PipelineSpec

POLL_S = 0.1
PRODUCER_TIMEOUT_MS = 300_000  # stages compiling (Numba) may hold the ring a while


def replay(spec: PipelineSpec, stop: Any = None) -> int:
    """Publish the stored stream of ``spec.replay`` into its source; returns the last id."""
    r = spec.replay
    if r is None:
        raise ValueError("replay: the pipeline has no [replay] table")
    source = r.from_source or r.source
    path = catalog_path_for(spec.path(r.data_root) if r.data_root else spec.data_root)
    with DiskReader(path) as reader, Producer(spec.beamtime, r.source, create=False,
                                              timeout_ms=PRODUCER_TIMEOUT_MS) as producer:
        data_id = 1
        while stop is None or not stop.is_set():
            try:
                parts = _read(reader, source, r.stream, data_id)
            except AsapoStreamFinishedError as exc:
                producer.send_stream_finished_flag(r.stream, data_id - 1, None)
                del exc  # its next stream is of the stored source, not of this pipeline
                return data_id - 1
            except AsapoNoDataError:  # not recorded (or not stored) yet: follow the stream
                time.sleep(POLL_S)
                continue
            for part in parts:
                _publish(producer, r.stream, part)
            data_id += 1
    return data_id - 1


def _read(reader: DiskReader, source: str, stream: str, data_id: int) -> list[StoredMessage]:
    try:
        return [reader.read(source, stream, data_id)]
    except AsapoWrongInputError:  # a dataset: its parts, by substream
        return reader.read_dataset(source, stream, data_id)


def _publish(producer: Producer, stream: str, part: StoredMessage) -> None:
    rec = part.record
    dataset = (rec.dataset_substream, rec.dataset_size) if rec.dataset_size else None
    producer.send(rec.data_id, part.data, rec.meta_json(), stream=stream, dataset=dataset,
                  name=rec.name)


def replay_process(spec_values: dict[str, Any], reports: Any, go: Any, stop: Any) -> None:
    """Process entry point (multiprocessing spawn): wait for the stages, then replay."""
    try:
        spec = PipelineSpec.from_dict(spec_values)
        while not go.wait(0.05):  # every stage instance ready (warmed up)
            if stop.is_set():
                return
        replay(spec, stop)
    except BaseException as exc:  # reported, then the exit code says it too
        reports.put(("failed", "replay", 0, f"{type(exc).__name__}: {exc}",
                     traceback.format_exc()))
        raise SystemExit(1) from None
