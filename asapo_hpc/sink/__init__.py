"""The HDF5 sink: stores a stream's frames in NXmx-like HDF5 files and reads them back.

``StreamWriter`` appends frames (compressed in a thread pool, written as direct chunks, SWMR)
and answers each with a ``FrameLocation``; ``FrameReader`` returns a frame given such a
location. Neither knows about the ring: the node service connects them to it.
"""

from asapo_hpc.sink.codecs import Compression
from asapo_hpc.sink.layout import FrameLocation, PartLocation, image_dataset_paths
from asapo_hpc.sink.reader import FrameReader
from asapo_hpc.sink.writer import SinkCounters, SinkSettings, StreamWriter

__all__ = [
    "Compression",
    "FrameLocation",
    "FrameReader",
    "PartLocation",
    "SinkCounters",
    "SinkSettings",
    "StreamWriter",
    "image_dataset_paths",
]
