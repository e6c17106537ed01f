"""The raw layer: the cffi binding of csrc/ and the Segment wrapper, returning plain values,
and the C fast path (``_fastpath``) of the per-message calls.

Nothing here knows of streams' meaning, JSON or exceptions beyond mapping C error codes;
the public Producer / Consumer in asapo_hpc.client build on it.
"""

from asapo_hpc._core._fastpath import Acknowledge, GetNext, MessageCore, SegmentSlice, Send
from asapo_hpc._core._ring import ffi, lib
from asapo_hpc._core.segment import Segment, check

__all__ = ["ffi", "lib", "Segment", "check", "Send", "GetNext", "Acknowledge",
           "SegmentSlice", "MessageCore"]
