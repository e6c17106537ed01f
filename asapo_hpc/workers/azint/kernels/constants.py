"""Layout and tuning constants the kernels share: packing of integer sums, sub-histogram
lanes, work items, fixed-point weights and prefetch distances."""

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

#: The pair pass (:func:`hist_pairs_items`): pixels 2k, 2k + 1 of a work item share
#: one entry ``3·b + t`` of its histogram, t = 0 (both in bin b), 1 (second in b + 1),
#: 2 (second in b - 1), two uint64 (one per pixel) added as one 16-byte vector: half the
#: updates and loads of the one-pixel pass (3072 x 3072, 1000 bins, one thread: 3.5 ->
#: 2.7 ms). Pairs whose bins are further apart are listed and added one pixel at a time.
PAIR_TYPES = 3

#: Sub-histograms of the pair pass (consecutive pairs into different ones: 1 and 4 slower)
PAIR_LANES = 2

#: Pixels per work item of the per-frame passes (a multiple of the lane counts). Threads take
#: items from a shared atomic counter (a core busy with another process takes fewer) and add
#: into their own private bins (numba.parallel_chunksize costs ~2 ms per call here). The
#: passes take the thread count as an argument: numba.get_num_threads() is the usual value.
CHUNK = 1 << 14

#: Sub-histograms of the 2-bin split passes (4 x 32 kB for 1000 bins, in L2): consecutive
#: pixels often share a bin (runs of ~3.4 on a 9.4 Mpixel frame, 1000 bins); 4 lanes cut
#: the store-to-load chains 2 left (uint16 pass on one thread: 10.0 -> 8.8 ms; 8: no gain).
SPLIT_LANES = 4

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
