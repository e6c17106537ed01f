/*
 * The ring wrapping many laps with mixed span lengths: one-slot messages, multi-slot
 * messages, spans that do not fit before the end of the ring (so the producer lays a
 * padding tombstone over the tail slots first) and aborted reservations (tombstones with
 * a span). A model of the ring predicts every sequence number, when the ring is full, and
 * the exact head / next / floor after every call; the consumer checks every message's id,
 * bytes, name and metadata, and acknowledges out of order at times.
 */
#include "harness.h" /* first: it defines _GNU_SOURCE */

#include <errno.h>
#include <inttypes.h>


#define SLOTS 16u
#define SLOT_SIZE 128u
#define LAPS 3000u
#define MAXQ 64

enum { E_MSG, E_TOMB }; /* a message, or a padding / aborted tombstone */
enum { S_PENDING, S_TAKEN, S_DONE };

struct entry {
    uint64_t seq, id, len;
    uint32_t span, kind, state;
};

static struct entry q[MAXQ]; /* entries in [floor, head), oldest first */
static uint32_t qn;
static uint64_t head, next_seq, floor_seq;

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(uint64_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng % n;
}

static uint8_t pattern(uint64_t id, uint64_t i) { return (uint8_t)(id * 7 + i * 13 + 1); }

static uint32_t span_of(uint64_t len, uint32_t tail)
{
    uint64_t need = (len + 63) / 64 * 64 + tail;
    return need == 0 ? 1 : (uint32_t)((need + SLOT_SIZE - 1) / SLOT_SIZE);
}

static void push(uint64_t seq, uint32_t span, uint32_t kind, uint64_t id, uint64_t len)
{
    CHECK(qn < MAXQ);
    q[qn++] = (struct entry){seq, id, len, span, kind, S_PENDING};
}

/* The floor passes leading entries that are acknowledged or skipped. */
static void model_floor(void)
{
    uint32_t k = 0;
    while (k < qn && q[k].state == S_DONE)
        k++;
    floor_seq = k < qn ? q[k].seq : head;
    memmove(q, q + k, (qn - k) * sizeof q[0]);
    qn -= k;
}

static void check_stats(struct ahr_ring *r, uint32_t g)
{
    struct ahr_group_stats gs;
    struct ahr_ring_stats rs;
    CHECK_RC(ahr_group_stats(r, g, &gs), 0);
    CHECK_RC(ahr_ring_stats(r, &rs), 0);
    if (gs.next != next_seq || gs.floor != floor_seq || rs.head != head ||
        rs.min_floor != floor_seq) {
        fprintf(stderr, "stats: next %" PRIu64 "/%" PRIu64 " floor %" PRIu64 "/%" PRIu64
                        " head %" PRIu64 "/%" PRIu64 " min_floor %" PRIu64 "\n",
                gs.next, next_seq, gs.floor, floor_seq, rs.head, head, rs.min_floor);
        exit(1);
    }
}

int main(void)
{
    const char *groups[] = {"g"};
    struct ahr_ring *r = make_ring("wrap", SLOTS, SLOT_SIZE, groups, 1);
    int prod = ahr_join(r, AHR_ROLE_PRODUCER), cons = ahr_join(r, AHR_ROLE_CONSUMER);
    int g = ahr_group_open(r, "g", AHR_ALL_STREAMS);
    int s = ahr_stream_index(r, "wrap", 4);
    CHECK(prod >= 0 && cons >= 0 && g >= 0 && s >= 0);
    uint8_t *base = ahr_base(r);
    static uint8_t data[SLOTS * SLOT_SIZE], tail[SLOTS * SLOT_SIZE];
    uint64_t id = 0, msgs = 0, pads = 0, aborts = 0, fulls = 0;

    while (head < (uint64_t)LAPS * SLOTS) {
        /* produce until the model says the ring is full (or a few messages went in) */
        for (uint64_t c = 1 + rnd(6); c > 0; c--) {
            uint64_t len;
            switch (rnd(4)) {
            case 0: len = rnd(40); break;                          /* one slot */
            case 1: len = SLOT_SIZE + rnd(3 * SLOT_SIZE); break;   /* several slots */
            case 2: len = (SLOTS / 2) * SLOT_SIZE + rnd(5 * SLOT_SIZE); break; /* wraps */
            default: len = rnd(SLOT_SIZE); break;
            }
            char name[32], meta[64];
            int nl = snprintf(name, sizeof name, "m%" PRIu64, id + 1);
            int ml = snprintf(meta, sizeof meta, "{\"id\":%" PRIu64 "}", id + 1);
            uint32_t tail_len = (uint32_t)(nl + ml);
            uint32_t k = span_of(len, tail_len);
            if (k > SLOTS) { /* larger than the ring */
                struct ahr_pub pub = make_pub((uint32_t)s, id + 1, len);
                CHECK_RC(ahr_send(r, (uint32_t)prod, data, &pub, name, (uint32_t)nl, meta,
                                  (uint32_t)ml, 0, NULL), -EMSGSIZE);
                continue;
            }
            uint64_t slot = head & (SLOTS - 1);
            uint32_t pad = slot + k > SLOTS ? (uint32_t)(SLOTS - slot) : 0;
            uint64_t end = head + pad + k;
            int fits = end <= floor_seq + SLOTS;
            int do_abort = rnd(10) == 0;
            id++;
            for (uint64_t i = 0; i < len; i++)
                data[i] = pattern(id, i);
            struct ahr_pub pub = make_pub((uint32_t)s, id, len);
            if (!fits) {
                CHECK_RC(ahr_send(r, (uint32_t)prod, data, &pub, name, (uint32_t)nl, meta,
                                  (uint32_t)ml, 0, NULL), -ENOSPC);
                id--;
                fulls++;
                check_stats(r, (uint32_t)g); /* a failed reserve takes nothing */
                break;
            }
            uint64_t seq = UINT64_MAX;
            if (do_abort || rnd(2)) { /* zero-copy path: reserve, fill in place, commit */
                struct ahr_reservation res;
                CHECK_RC(ahr_reserve(r, (uint32_t)prod, len, tail_len, 0, &res), 0);
                CHECK(res.span == k && res.capacity == (uint64_t)k * SLOT_SIZE);
                if (do_abort) {
                    CHECK_RC(ahr_abort(r, &res), 0);
                    CHECK_RC(ahr_abort(r, &res), -ESTALE);
                    CHECK_RC(ahr_commit(r, &res, &pub, name, (uint32_t)nl, meta, (uint32_t)ml),
                             -ESTALE);
                } else {
                    memcpy(base + res.data_offset, data, len);
                    CHECK_RC(ahr_commit(r, &res, &pub, name, (uint32_t)nl, meta, (uint32_t)ml),
                             0);
                }
                seq = res.seq;
            } else {
                CHECK_RC(ahr_send(r, (uint32_t)prod, data, &pub, name, (uint32_t)nl, meta,
                                  (uint32_t)ml, 0, &seq), 0);
            }
            CHECK(seq == head + pad);
            if (pad) {
                push(head, pad, E_TOMB, 0, 0);
                pads++;
            }
            push(head + pad, k, do_abort ? E_TOMB : E_MSG, id, len);
            if (do_abort) {
                id--; /* the id was never published: reuse it */
                aborts++;
            } else {
                msgs++;
            }
            head = end;
            check_stats(r, (uint32_t)g);
        }

        /* consume some, acknowledging in a random order */
        uint64_t taken[MAXQ];
        uint32_t nt = 0;
        for (uint64_t c = 1 + rnd(8); c > 0; c--) {
            /* the model's next message; tombstones before it are skipped by get_next */
            uint32_t k = 0;
            while (k < qn && (q[k].state != S_PENDING || q[k].kind == E_TOMB))
                k++;
            struct ahr_msg m;
            int rc = ahr_get_next(r, (uint32_t)g, (uint32_t)cons, 0, &m);
            for (uint32_t j = 0; j < qn && (j < k || k == qn); j++)
                if (q[j].state == S_PENDING && q[j].kind == E_TOMB) {
                    q[j].state = S_DONE;
                    next_seq = q[j].seq + q[j].span;
                }
            if (k == qn) {
                CHECK_RC(rc, -EAGAIN);
                CHECK(next_seq == head);
                model_floor();
                check_stats(r, (uint32_t)g);
                break;
            }
            CHECK_RC(rc, 0);
            struct entry *e = &q[k];
            CHECK(m.seq == e->seq && m.id == e->id && m.data_len == e->len && m.span == e->span);
            CHECK(m.attempts == 1 && m.stream == (uint32_t)s && m.flags == 0);
            CHECK(m.data_offset + m.data_len <= ahr_size(r));
            for (uint64_t i = 0; i < m.data_len; i++)
                if (base[m.data_offset + i] != pattern(m.id, i)) {
                    fprintf(stderr, "id %" PRIu64 " byte %" PRIu64 " wrong\n", m.id, i);
                    exit(1);
                }
            char want[96];
            int wl = snprintf(want, sizeof want, "m%" PRIu64 "{\"id\":%" PRIu64 "}", m.id, m.id);
            CHECK(m.name_len + m.meta_len == (uint32_t)wl);
            CHECK_RC(ahr_read_tail(r, &m, tail, sizeof tail), 0);
            CHECK(memcmp(tail, want, (size_t)wl) == 0);
            e->state = S_TAKEN;
            next_seq = e->seq + e->span;
            taken[nt++] = e->seq;
            model_floor(); /* skipped tombstones at the front move the floor */
            check_stats(r, (uint32_t)g);
        }
        for (uint32_t i = nt; i > 1; i--) { /* shuffle the acknowledgements */
            uint32_t j = (uint32_t)rnd(i);
            uint64_t t = taken[i - 1];
            taken[i - 1] = taken[j];
            taken[j] = t;
        }
        for (uint32_t i = 0; i < nt; i++) {
            CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)cons, taken[i]), 0);
            for (uint32_t j = 0; j < qn; j++)
                if (q[j].seq == taken[i])
                    q[j].state = S_DONE;
            model_floor();
            check_stats(r, (uint32_t)g);
        }
    }
    /* drain: everything published was seen, the floor reaches the head */
    struct ahr_msg m;
    int rc;
    while ((rc = ahr_get_next(r, (uint32_t)g, (uint32_t)cons, 0, &m)) == 0)
        CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)cons, m.seq), 0);
    CHECK_RC(rc, -EAGAIN);
    struct ahr_group_stats gs;
    CHECK_RC(ahr_group_stats(r, (uint32_t)g, &gs), 0);
    CHECK(gs.next == head && gs.floor == head && gs.acked == msgs && gs.delivered == msgs);
    CHECK(gs.redelivered == 0 && gs.deadlettered == 0);
    CHECK(pads > 20 && aborts > 5 && fulls > 20); /* every case was exercised */
    CHECK_RC(ahr_leave(r, (uint32_t)prod), 0);
    CHECK_RC(ahr_leave(r, (uint32_t)cons), 0);
    ahr_detach(r);
    printf("test_wrap: ok (%" PRIu64 " laps, %" PRIu64 " messages, %" PRIu64 " pads, %" PRIu64
           " aborts, %" PRIu64 " full)\n",
           head / SLOTS, msgs, pads, aborts, fulls);
    return 0;
}
