"""The C example producer (csrc/examples/producer.c) talks to the Python consumer.

The example is compiled with ``cc`` against the public header and csrc/src/ring.c, run as a
separate process on a segment the test creates (with a declared group, so no frame is
reclaimed before the consumer reads it, and a ring smaller than the run, so the producer
has to wait for the consumer's acknowledgements), and its frames are consumed with
``asapo_hpc.client.Consumer``: every byte, the name and metadata of every frame, and the
finish marker (AsapoStreamFinishedError) are checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asapo_hpc._core import Segment
from asapo_hpc.client import Consumer
from asapo_hpc.config import RingConfig, segment_name
from asapo_hpc.errors import AsapoStreamFinishedError

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "csrc"

N_FRAMES = 40
FRAME_BYTES = 3000


@pytest.fixture(scope="module")
def producer_exe(tmp_path_factory) -> Path:
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path_factory.mktemp("c_example") / "producer"
    subprocess.run(
        [cc, "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
         f"-I{CSRC / 'include'}", f"-I{CSRC / 'src'}", str(CSRC / "examples" / "producer.c"),
         str(CSRC / "src" / "ring.c"), "-o", str(exe), "-lpthread", "-lrt"],
        check=True)
    return exe


def test_c_producer_to_python_consumer(producer_exe, shm_prefix):
    beamtime, source = f"cex{os.getpid()}", "detector"
    name = segment_name(beamtime, source)
    # Created first, with the group declared: the producer attaches to it.
    segment = Segment.create(name, RingConfig(slot_count=16, slot_size=4096,
                                              groups=("workers",)))
    consumer = None
    proc = subprocess.Popen([str(producer_exe), name, str(N_FRAMES), str(FRAME_BYTES)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        consumer = Consumer(beamtime, source, create=False, timeout_ms=10_000)
        pattern = np.arange(FRAME_BYTES, dtype=np.uint64)
        for frame_id in range(1, N_FRAMES + 1):
            msg = consumer.get_next("workers")
            assert msg.id == frame_id
            expected = ((frame_id + pattern) % 256).astype(np.uint8)
            assert msg.data.dtype == np.uint8 and msg.data.shape == (FRAME_BYTES,)
            assert np.array_equal(msg.data, expected), f"frame {frame_id} differs"
            assert msg.name == f"frame_{frame_id:06d}.raw"
            assert msg.meta == {"frame": frame_id, "bytes": FRAME_BYTES,
                                "pattern": "(id+k)%256"}
            consumer.acknowledge("workers", msg)
        with pytest.raises(AsapoStreamFinishedError) as info:
            consumer.get_next("workers")
        assert info.value.next_stream is None
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert f"published {N_FRAMES} frames of {FRAME_BYTES} bytes" in out
        assert "attached to segment" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if consumer is not None:
            consumer.close()
        segment.close()
        Segment.unlink(name)
    assert not Path("/dev/shm", name).exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
