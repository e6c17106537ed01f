"""cffi build script (API mode, out of line): compiles csrc/src/ring.c into asapo_hpc._core._ring.

Run by setup.py through ``cffi_modules``; the declarations live in one file,
csrc/include/asapo_hpc/ring_cdefs.h, beside the header they mirror.
"""

from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"

# Wrappers for Python's hot path. A cffi call costs ~140 ns plus ~45 ns per argument here,
# and filling a struct field by field costs more: so scalar arguments, and a per-member
# context (ring, member, timeout) passed as one pointer.
SHIM = r"""
#include "ahrpy_ctx.h"

static int ahrpy_send_plain(const struct ahrpy_ctx *c, const char *data, uint64_t data_len,
                            uint64_t id, uint32_t stream, const char *meta, uint32_t meta_len)
{
    struct ahr_pub pub = {id, data_len, 0, stream, 0, 0, 0};
    return ahr_send(c->ring, c->member, data, &pub, 0, 0, meta, meta_len, c->timeout_ns, 0);
}

static int ahrpy_send_bare(const struct ahrpy_ctx *c, const char *data, uint64_t data_len,
                           uint64_t id, uint32_t stream)
{
    struct ahr_pub pub = {id, data_len, 0, stream, 0, 0, 0};
    return ahr_send(c->ring, c->member, data, &pub, 0, 0, 0, 0, c->timeout_ns, 0);
}

/* get_next that first acknowledges the member's previous message of the group (`prev`,
 * or UINT64_MAX for none): one crossing per message. Returns get_next's result, or 1 when
 * a message came but the acknowledgement failed (its lease had expired). */
static int ahrpy_send_batch(const struct ahrpy_ctx *c, const void *data, uint64_t each_len,
                            uint32_t n, uint64_t first_id, uint32_t stream)
{
    return ahr_send_batch(c->ring, c->member, data, each_len, n, first_id, stream,
                          c->timeout_ns);
}

static int ahrpy_get_next_ack(const struct ahrpy_ctx *c, uint32_t group, uint64_t prev,
                              int64_t timeout_ns, struct ahr_msg *out)
{
    int ack = prev == UINT64_MAX ? 0 : ahr_ack(c->ring, group, c->member, prev);
    int rc = ahr_get_next(c->ring, group, c->member, timeout_ns, out);
    return rc == 0 && ack ? 1 : rc;
}

/* get_next_batch and the batch's shape in one crossing: Python reads a few fields instead
 * of every descriptor. Returns the count, or a negative errno (shape then untouched). */
static int ahrpy_get_batch(const struct ahrpy_ctx *c, uint32_t group, uint32_t n,
                           int64_t timeout_ns, struct ahr_msg *out, struct ahr_batch_shape *shape)
{
    int got = ahr_get_next_batch(c->ring, group, c->member, n, timeout_ns, out);
    if (got > 0)
        ahr_batch_shape(c->ring, out, (uint32_t)got, shape);
    return got;
}

/* ahrpy_get_next_ack with the context's timeout and message buffer: three arguments, the
 * fewest for a consumer's one-message call (prev = UINT64_MAX: acknowledge nothing). */
static int ahrpy_next(const struct ahrpy_ctx *c, uint32_t group, uint64_t prev)
{
    return ahrpy_get_next_ack(c, group, prev, c->timeout_ns, c->msg);
}

static int ahrpy_ack(const struct ahrpy_ctx *c, uint32_t group, uint64_t seq)
{
    return ahr_ack(c->ring, group, c->member, seq);
}

/* Acknowledge the messages of a batch straight from their descriptors. */
static int ahrpy_ack_msgs(const struct ahrpy_ctx *c, uint32_t group, const struct ahr_msg *msgs,
                          uint32_t n)
{
    uint64_t seqs[256];
    int done = 0;
    for (uint32_t i = 0; i < n;) {
        uint32_t k = 0;
        for (; k < 256 && i < n; k++, i++)
            seqs[k] = msgs[i].seq;
        int rc = ahr_ack_batch(c->ring, group, c->member, seqs, k);
        if (rc < 0)
            return rc;
        done += rc;
    }
    return done;
}

static int ahrpy_send(struct ahr_ring *ring, uint32_t member, const void *data,
                      uint64_t data_len, uint64_t id, uint32_t stream, uint32_t flags,
                      uint32_t ds_substream, uint32_t ds_size, const char *name,
                      uint32_t name_len, const char *meta, uint32_t meta_len, int64_t timeout_ns)
{
    struct ahr_pub pub = {id, data_len, 0, stream, flags, ds_substream, ds_size};
    return ahr_send(ring, member, data, &pub, name, name_len, meta, meta_len, timeout_ns, 0);
}

static int ahrpy_commit(struct ahr_ring *ring, const struct ahr_reservation *res,
                        uint64_t data_len, uint64_t id, uint32_t stream, uint32_t flags,
                        uint32_t ds_substream, uint32_t ds_size, const char *name,
                        uint32_t name_len, const char *meta, uint32_t meta_len)
{
    struct ahr_pub pub = {id, data_len, 0, stream, flags, ds_substream, ds_size};
    return ahr_commit(ring, res, &pub, name, name_len, meta, meta_len);
}
"""

ffibuilder = FFI()
ffibuilder.cdef((CSRC / "include" / "asapo_hpc" / "ring_cdefs.h").read_text())
ffibuilder.set_source(
    "asapo_hpc._core._ring",
    SHIM,
    sources=[str((CSRC / "src" / "ring.c").relative_to(ROOT))],
    include_dirs=[str(CSRC / "include"), str(CSRC / "src"), str(Path(__file__).parent)],
    extra_compile_args=["-std=c11", "-O2", "-Wall"],
    libraries=["rt"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
