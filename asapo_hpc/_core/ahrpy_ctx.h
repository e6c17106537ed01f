/* The per-member call context Python's hot path hands to C: shared by the cffi shim
 * (_build.py) and the C fast path (_fastpath.c), which both read the same struct. */
#ifndef ASAPO_HPC_AHRPY_CTX_H
#define ASAPO_HPC_AHRPY_CTX_H

#include "asapo_hpc/ring.h"

struct ahrpy_ctx {
    struct ahr_ring *ring;  /* NULL once the producer or consumer is closed */
    uint32_t member;
    int64_t timeout_ns;
    struct ahr_msg *msg;    /* a consumer's message buffer, for ahrpy_next */
};

#endif
