/*
 * Test-only access to the segment's internals (src/layout.h): where each part of the
 * segment starts, recomputed from the config exactly as ring.c's compute_layout does, so
 * tests can fake states no public call produces (a recycled pid, a producer that died
 * between moving the head and writing its descriptor) and flip bytes in one part at a time.
 * If ring.c's layout changes, test_corrupt's region checks fail loudly (sizes must add up).
 */
#ifndef AHR_TEST_SEG_INTERNAL_H
#define AHR_TEST_SEG_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "../src/layout.h"

struct seg_parts {
    uint64_t members, groups, descs, claims, streams, slots, total;
};

static inline uint64_t seg_align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

static inline void seg_parts_of(const struct ahr_config *c, struct seg_parts *p)
{
    uint64_t off = seg_align_up(sizeof(struct seg_header), AHR_CACHELINE);
    p->members = off;
    off += (uint64_t)c->max_members * sizeof(struct seg_member);
    p->groups = off;
    off += (uint64_t)c->max_groups * sizeof(struct seg_group);
    p->descs = off;
    off += (uint64_t)c->slot_count * sizeof(struct seg_desc);
    p->claims = off;
    off += (uint64_t)c->max_groups * c->slot_count * sizeof(struct seg_claim);
    p->streams = off;
    off += (uint64_t)c->max_streams * sizeof(struct seg_stream);
    p->slots = seg_align_up(off, 4096);
    p->total = p->slots + (uint64_t)c->slot_count * c->slot_size;
}

static inline struct seg_header *seg_header_of(struct ahr_ring *r)
{
    return (struct seg_header *)ahr_base(r);
}

static inline struct seg_member *seg_member_of(struct ahr_ring *r, uint32_t m)
{
    struct ahr_config c;
    struct seg_parts p;
    ahr_config_get(r, &c);
    seg_parts_of(&c, &p);
    return (struct seg_member *)((char *)ahr_base(r) + p.members) + m;
}

static inline struct seg_desc *seg_desc_of(struct ahr_ring *r, uint64_t seq)
{
    struct ahr_config c;
    struct seg_parts p;
    ahr_config_get(r, &c);
    seg_parts_of(&c, &p);
    return (struct seg_desc *)((char *)ahr_base(r) + p.descs) + (seq & (c.slot_count - 1));
}

/* ring.c's header checksum (FNV-1a over the immutable fields, xor the magic). */
static inline uint64_t seg_header_checksum(const struct seg_header *h)
{
    const uint8_t *b = (const uint8_t *)h;
    uint64_t x = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < offsetof(struct seg_header, checksum); i++) {
        uint8_t v = i < sizeof h->magic ? 0 : b[i]; /* computed with the magic still 0 */
        x ^= v;
        x *= 0x100000001b3ull;
    }
    return x ^ AHR_MAGIC;
}
#endif
