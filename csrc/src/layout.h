/*
 * Internal: the shared segment's layout and the atomic helpers that touch it.
 *
 * Segment, in order, each part 64-byte aligned:
 *   header | members[M] | groups[G] | descriptors[N] | claims[G][N] | streams[S] | slots
 * Offsets are recomputed from the (checksummed) config on attach, never read from the
 * segment. Everything mutable in the segment is untrusted: indices taken from it are
 * masked or checked against the config before use.
 */
#ifndef ASAPO_HPC_LAYOUT_H
#define ASAPO_HPC_LAYOUT_H

#include <stdatomic.h>
#include <stdint.h>

#include "asapo_hpc/ring.h"

#define AHR_MAGIC 0x31474e4952504841ull /* "AHPRING1" little-endian */
#define AHR_CACHELINE 64u

/* --- atomics: one name per ordering, so each call site says which side it pairs with --- */
#define load_relaxed(p) atomic_load_explicit((p), memory_order_relaxed)
#define load_acquire(p) atomic_load_explicit((p), memory_order_acquire)
#define store_relaxed(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
#define store_release(p, v) atomic_store_explicit((p), (v), memory_order_release)
#define fetch_add_relaxed(p, v) atomic_fetch_add_explicit((p), (v), memory_order_relaxed)
/* CAS with acq_rel on success: the winner both publishes what it wrote before and sees
 * what the previous owner published. Sequentially consistent where a comment says so. */
#define cas_acq_rel(p, expected, desired)                                                  \
    atomic_compare_exchange_strong_explicit((p), (expected), (desired),                    \
                                            memory_order_acq_rel, memory_order_acquire)

/* Descriptor state, kept in the low 4 bits of desc.seqstate beside the sequence. */
enum { DESC_FREE = 0, DESC_RESERVED = 1, DESC_PUBLISHED = 2, DESC_TOMBSTONE = 3 };

/* Claim state, low 4 bits of claim.tag. */
enum { CLAIM_NONE = 0, CLAIM_TAKEN = 1, CLAIM_NACKED = 2, CLAIM_ACKED = 3, CLAIM_DEAD = 4 };

/* Group table entry state. */
enum { GROUP_UNUSED = 0, GROUP_LIVE = 2 };

/* A group handle packs the entry's generation above its index. */
#define GROUP_INDEX_BITS 8u

/* Member entry: `word` packs pid << 8 | state (0 free, 1 live, 2 joining). */
enum { MEMBER_FREE = 0, MEMBER_LIVE = 1, MEMBER_JOINING = 2 };

struct seg_header {
    /* immutable after creation, covered by `checksum` */
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;
    uint64_t segment_size;
    struct ahr_config config;
    uint64_t created_realtime_ns;
    uint64_t checksum;
    uint8_t pad0[AHR_CACHELINE - 8];
    /* mutable, each hot word on its own cache line */
    _Atomic uint64_t head;              /* next sequence to reserve */
    uint8_t pad1[AHR_CACHELINE - 8];
    _Atomic uint64_t last_published;    /* sequence + 1 of the newest commit, 0 none */
    uint8_t pad2[AHR_CACHELINE - 8];
    _Atomic uint32_t published_count;   /* futex word: bumped on every commit */
    _Atomic uint32_t consumer_waiters;
    uint8_t pad3[AHR_CACHELINE - 8];
    _Atomic uint32_t reclaim_epoch;     /* futex word: bumped to wake waiting producers */
    _Atomic uint32_t producer_waiters;
    _Atomic uint64_t space_wanted;      /* lowest floor a waiting producer asked for */
    uint8_t pad4[AHR_CACHELINE - 16];
    _Atomic uint64_t table_lock;        /* group/stream registration: owner tag or 0 */
};

struct seg_member {
    _Atomic uint64_t word;          /* pid << 8 | MEMBER_* */
    _Atomic uint32_t gen;           /* bumped whenever the entry is freed */
    uint32_t role;
    _Atomic uint64_t start_time;    /* /proc/<pid>/stat field 22, tells recycled pids */
    _Atomic uint64_t intent_seq;    /* first sequence + 1 of a reservation in flight */
    _Atomic uint64_t intent_end;    /* one past its last sequence */
    uint8_t pad[AHR_CACHELINE - 40];
};

struct seg_group {
    _Atomic uint32_t state;
    uint32_t durable;
    char name[AHR_GROUP_NAME_MAX + 1];
    uint32_t stream_filter;         /* stream index this group follows, or AHR_ALL_STREAMS */
    _Atomic uint32_t gen;           /* bumped on retirement: old handles stop working */
    _Atomic uint64_t next;          /* next sequence to hand out */
    uint8_t pad1[AHR_CACHELINE - 8];
    _Atomic uint64_t floor;         /* every sequence below is acknowledged */
    _Atomic uint64_t lease_ns;
    _Atomic uint32_t max_attempts;
    _Atomic uint32_t nacked;        /* hint: nacked claims waiting */
    _Atomic uint64_t delivered;
    _Atomic uint64_t acked;
    _Atomic uint64_t redelivered;
    _Atomic uint64_t deadlettered;
    uint8_t pad2[AHR_CACHELINE - 56];
};

struct seg_desc {
    _Atomic uint64_t seqstate;      /* sequence << 4 | DESC_* */
    uint64_t id;
    uint64_t data_len;
    uint64_t timestamp_ns;
    /* atomic (accessed relaxed): written before the reserving CAS on seqstate, and read
     * seqlock-style by scanners that may race with the next lap's reservation */
    _Atomic uint32_t span;
    _Atomic uint32_t owner;         /* member gen << 12 | member index */
    uint32_t stream;
    uint32_t meta_len;
    uint32_t name_len;
    uint32_t flags;
    uint32_t ds_substream;
    uint32_t ds_size;
};

/* A claim packs lap(32) | owner gen(8) | owner index(12) | attempts(8) | state(4) in `tag`;
 * `lease` packs lap(16) | attempts(8) | deadline in ms of CLOCK_MONOTONIC (40), and is
 * trusted only when its lap and attempts match the tag's (else it is not yet written). */
struct seg_claim {
    _Atomic uint64_t tag;
    _Atomic uint64_t lease;
};

struct seg_stream {
    _Atomic uint32_t state;         /* 0 free, 2 registered (under the table lock) */
    uint32_t name_len;
    _Atomic uint32_t finished;
    uint32_t pad0;
    _Atomic uint64_t auto_id;
    char name[AHR_STREAM_NAME_MAX + 1];
    uint8_t pad1[128 - 24 - (AHR_STREAM_NAME_MAX + 1)];
};

_Static_assert(sizeof(struct seg_member) == 64, "member entry is one cache line");
_Static_assert(sizeof(struct seg_group) == 192, "group entry is three cache lines");
_Static_assert(sizeof(struct seg_desc) == 64, "descriptor is one cache line");
_Static_assert(sizeof(struct seg_stream) == 128, "stream entry is two cache lines");

#endif /* ASAPO_HPC_LAYOUT_H */
