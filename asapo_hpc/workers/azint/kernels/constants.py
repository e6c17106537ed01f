"""Layout and tuning constants the kernels share: packing of integer sums, sub-histogram
lanes, work items, fixed-point weights and prefetch distances."""

import numpy as np

#: Packed integer sums of uint16 frames: each pixel adds (raw - 1) mod 2^PACK_SHIFT, so a
#: zero adds 2^PACK_SHIFT - 1 = -1 + 2^PACK_SHIFT. A bin's N pixels (a static count) sum to
#: Σraw - N + zeros·2^PACK_SHIFT: with N added back, the low bits are Σraw and the bits above
#: count the zeros (Poisson variance max(raw, 1) = raw + [raw == 0]).
PACK_SHIFT = 40
LANES = 4  # interleaved sub-histograms: breaks store-to-load chains on runs of equal bins

#: Pixels one call of :func:`hist_packed` may take: a bin of N < 2^24 pixels keeps
#: Σraw < 65536·N < 2^PACK_SHIFT and zeros·2^PACK_SHIFT < 2^64 (partial sums may wrap
#: around; the total cannot).
PACK_MAX_PIXELS = (1 << 24) - 1

#: uint32 frames are packed at 2^PACK48_SHIFT: Σraw <= (2^32 - 1)·N < 2^48 and the zero
#: count N < 2^16 above it, while no bin takes more than PACK48_MAX_BIN_PIXELS pixels in a
#: call (the integrator slices a frame whose fullest bin has more).
PACK48_SHIFT = 48
PACK48_MAX_BIN_PIXELS = (1 << 16) - 1

#: The same packing at 2^32 (a pixel adds (raw - 1) mod 2^32: one 32-bit add, where the
#: 40-bit mask takes two) while every bin (0 .. npt - 1) of a call holds at most this many
#: pixels: Σraw <= 65535 x 65537 = 2^32 - 1 stays below the zero count. 3072 x 3072, 1000
#: bins (at most 22 k pixels a bin): 3.62 -> 3.41 ms on one thread.
PACK32_MAX_BIN_PIXELS = 65537

def _quad_types() -> np.ndarray:
    """Bin offsets of a quad's four pixels from its first pixel's bin: steps of 0 or +1
    from pixel to pixel, or of 0 or -1 (8 + 7 types, the flat quad first)."""
    rising = [(0, a, a + b, a + b + c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    falling = [tuple(-d for d in t) for t in rising if any(t)]
    return np.array(rising + falling, np.int64)


#: The quad pass (:func:`hist_quads_items`): pixels 4k .. 4k + 3 of a work item whose bins
#: step by 0 or +1 from pixel to pixel (or by 0 or -1) add their four packed values as one
#: 32-byte vector to entry ``T·(npt + 1) + b`` of the histogram, b the first pixel's bin
#: and T the quad's type, its bins' offsets from b (row T of QUAD_OFFSETS); the finish adds
#: slot k of the entry to bin b + QUAD_OFFSETS[T, k]. A quarter of the one-pixel pass's
#: updates and half the pair pass's it replaced (3072 x 3072, 1000 bins, one thread: pairs
#: 2.7 ms, quads 2.1-2.2 ms). Quads of other bins are listed, one pixel at a time.
QUAD_OFFSETS = _quad_types()
QUAD_TYPES = len(QUAD_OFFSETS)

#: Most bins of the quad passes: every entry fits uint16 and a sub-histogram (QUAD_TYPES x
#: (npt + 1) rows of 32 bytes, twice that for float frames) stays within 0.5 (1) MB, which
#: each call zeroes and adds up; the one-pixel passes take more bins (cakes, say).
QUAD_MAX_BINS = (1 << 16) // QUAD_TYPES - 1


def _type_of_steps(offsets: np.ndarray) -> np.ndarray:
    table = np.full((3, 3, 3), -1, np.int64)
    for t, d in enumerate(offsets):
        table[tuple(np.diff(d) + 1)] = t
    return table


#: Type of a quad by its three steps: QUAD_TYPE_OF_STEPS[s1 + 1, s2 + 1, s3 + 1], -1 for
#: steps no type has (a jump of 2 or more, or up then down)
QUAD_TYPE_OF_STEPS = _type_of_steps(QUAD_OFFSETS)

#: The quad pass puts consecutive quads into two sub-histograms below this many bins (wide
#: bins: long runs of one entry, whose store-to-load chains a second one breaks) and into one
#: from it on (the entries of one already spill from L1). 3072 x 3072, 2 threads, one / two
#: sub-histograms: 100 bins 1.29 / 0.99 ms, 300 1.18 / 1.02, 600 0.95 / 1.04, 1000 1.14 /
#: 1.28, 2000 1.18 / 1.42.
QUAD_TWO_LANES_BELOW = 450

#: Pixels per work item of the per-frame passes (a multiple of the lane counts). Threads take
#: items from a shared atomic counter (a core busy with another process takes fewer) and add
#: into their own private bins (numba.parallel_chunksize costs ~2 ms per call here). The
#: passes take the thread count as an argument: numba.get_num_threads() is the usual value.
CHUNK = 1 << 14

#: Sub-histograms of the 2-bin split passes (4 x 32 kB for 1000 bins, in L2): consecutive
#: pixels often share a bin (runs of ~3.4 on a 9.4 Mpixel frame, 1000 bins); 4 lanes cut
#: the store-to-load chains 2 left (uint16 pass on one thread: 10.0 -> 8.8 ms; 8: no gain).
SPLIT_LANES = 4

#: Frame types the float passes read four pixels at a time, in vectors, as float32 (like
#: pyFAI): up to 32 bits. Wider ones (float64, 64-bit integers) go one pixel at a time.
VECTOR_FRAME_TYPES = ("uint8", "uint16", "uint32", "int8", "int16", "int32", "float32")

#: Fixed-point unit of the split weights of two-bin pixels: the engines round the weight of
#: the second bin to a multiple of 1/WEIGHT_ONE (:func:`quantize_pairs`), the pixel table
#: stores it as a uint16 count of those, and the uint16 pass sums in exact integers.
WEIGHT_ONE = 1 << 15

#: :func:`split_pass_u16` is exact while every bin takes fewer pixels than this in one call
#: (its largest per-pixel term, (WEIGHT_ONE)² x 65535 < 2^46, summed in a uint64).
SPLIT_U16_MAX_BIN_PIXELS = 1 << 18

#: The no-split pass prefetches (non-temporal) the frame and bin index this many pixels
#: ahead, one 64-byte line of each per PREFETCH_BLOCK pixels: ~14 % faster on one thread
#: (stitched Lambda 9M, 1000 bins), as the streamed lines no longer evict the histograms.
PREFETCH_AHEAD = 1024
PREFETCH_BLOCK = 32
