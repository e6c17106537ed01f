/* ahr_send_batch (runs of messages per move of the head, a full ring, bad input),
 * ahr_get_next_batch / ahr_ack_batch, and ahr_batch_shape on every kind of batch. */
#include "harness.h" /* first: it defines _GNU_SOURCE */

#include <errno.h>

#define MS 1000000ll

static void check_ids(struct ahr_ring *r, const struct ahr_msg *m, int n, uint64_t first_id,
                      uint64_t len)
{
    for (int i = 0; i < n; i++) {
        CHECK(m[i].id == first_id + (uint64_t)i && m[i].data_len == len);
        CHECK(m[i].name_len == 0 && m[i].meta_len == 0 && m[i].flags == 0);
        const uint8_t *p = (const uint8_t *)ahr_base(r) + m[i].data_offset;
        for (uint64_t b = 0; b < len; b++)
            CHECK(p[b] == (uint8_t)(m[i].id + b));
    }
}

static void fill(uint8_t *buf, uint64_t first_id, int n, uint64_t len)
{
    for (int i = 0; i < n; i++)
        for (uint64_t b = 0; b < len; b++)
            buf[(uint64_t)i * len + b] = (uint8_t)(first_id + (uint64_t)i + b);
}

static void ack_all(struct ahr_ring *r, uint32_t g, uint32_t c, const struct ahr_msg *m, int n)
{
    uint64_t seqs[256];
    for (int i = 0; i < n; i++)
        seqs[i] = m[i].seq;
    CHECK_RC(ahr_ack_batch(r, g, c, seqs, (uint32_t)n), n);
}

int main(void)
{
    const char *groups[] = {"g"};
    struct ahr_ring *r = make_ring("batch", 64, 128, groups, 1);
    int p = ahr_join(r, AHR_ROLE_PRODUCER), c = ahr_join(r, AHR_ROLE_CONSUMER);
    int g = ahr_group_open(r, "g", AHR_ALL_STREAMS);
    int s = ahr_stream_index(r, "default", 7);
    CHECK(p >= 0 && c >= 0 && g >= 0 && s >= 0);
    uint32_t P = (uint32_t)p, C = (uint32_t)c, G = (uint32_t)g, S = (uint32_t)s;
    static uint8_t buf[256 * 200];
    struct ahr_msg m[256];
    struct ahr_batch_shape sh;
    struct ahr_ring_stats rs;

    /* bad input publishes nothing */
    CHECK_RC(ahr_send_batch(r, P, NULL, 10, 3, 1, S, 0), -EINVAL);
    CHECK_RC(ahr_send_batch(r, P, buf, 10, 3, 0, S, 0), -EINVAL);
    CHECK_RC(ahr_send_batch(r, P, buf, 10, 3, 1, 9999, 0), -EINVAL);
    CHECK_RC(ahr_send_batch(r, 9999, buf, 10, 3, 1, S, 0), -EINVAL);
    CHECK_RC(ahr_send_batch(r, P, buf, 64 * 128 + 1, 1, 1, S, 0), -EMSGSIZE);
    CHECK_RC(ahr_send_batch(r, P, buf, 10, 0, 1, S, 0), 0);
    CHECK_RC(ahr_ring_stats(r, &rs), 0);
    CHECK(rs.head == 0);

    /* 40 messages: runs of at most a quarter of the ring, no pads */
    fill(buf, 1, 40, 100);
    CHECK_RC(ahr_send_batch(r, P, buf, 100, 40, 1, S, 0), 40);
    CHECK_RC(ahr_get_next_batch(r, G, C, 256, 0, m), 40);
    check_ids(r, m, 40, 1, 100);
    CHECK_RC(ahr_batch_shape(r, m, 40, &sh), 0);
    CHECK(sh.data_len == 100 && sh.first_slot == 0 && sh.step == 1 && sh.flags == 0);
    ack_all(r, G, C, m, 40);

    /* the next 40 meet the ring's end (slot 40 + 40 > 64): the run stops there, so again no
     * pad, and a batch across the end has no single step */
    fill(buf, 41, 40, 100);
    CHECK_RC(ahr_send_batch(r, P, buf, 100, 40, 41, S, 0), 40);
    CHECK_RC(ahr_ring_stats(r, &rs), 0);
    CHECK(rs.head == 80 && rs.published == 80);
    CHECK_RC(ahr_get_next_batch(r, G, C, 256, 0, m), 40);
    check_ids(r, m, 40, 41, 100);
    CHECK_RC(ahr_batch_shape(r, m, 40, &sh), 0);
    CHECK(sh.data_len == 100 && sh.first_slot == 40 && sh.step == 0);
    CHECK_RC(ahr_batch_shape(r, m, 24, &sh), 0); /* up to the end: one run */
    CHECK(sh.first_slot == 40 && sh.step == 1);
    CHECK_RC(ahr_batch_shape(r, m + 24, 16, &sh), 0);
    CHECK(sh.first_slot == 0 && sh.step == 1);
    ack_all(r, G, C, m, 40);

    /* a full ring: what fits is published, then the count comes back */
    fill(buf, 81, 70, 100);
    CHECK_RC(ahr_send_batch(r, P, buf, 100, 70, 81, S, 5 * MS), 64);
    CHECK_RC(ahr_send_batch(r, P, buf, 100, 1, 200, S, 0), -ENOSPC);
    CHECK_RC(ahr_get_next_batch(r, G, C, 256, 0, m), 64);
    check_ids(r, m, 64, 81, 100);
    ack_all(r, G, C, m, 64);

    /* two-slot messages: step 2 */
    fill(buf, 300, 8, 200);
    CHECK_RC(ahr_send_batch(r, P, buf, 200, 8, 300, S, 0), 8);
    CHECK_RC(ahr_get_next_batch(r, G, C, 256, 0, m), 8);
    check_ids(r, m, 8, 300, 200);
    CHECK_RC(ahr_batch_shape(r, m, 8, &sh), 0);
    CHECK(sh.data_len == 200 && sh.step == 2 && sh.first_slot == (uint32_t)(m[0].seq & 63));
    CHECK_RC(ahr_batch_shape(r, m, 1, &sh), 0); /* one message: its span */
    CHECK(sh.step == 2 && sh.data_len == 200);

    /* shapes that are not a run: mixed lengths, a gap, a foreign offset; flags are ORed */
    struct ahr_msg x[3];
    memcpy(x, m, sizeof x);
    x[1].data_len = 50;
    CHECK_RC(ahr_batch_shape(r, x, 3, &sh), 0);
    CHECK(sh.data_len == UINT64_MAX && sh.step == 0);
    memcpy(x, m, sizeof x);
    x[2].seq += 2;
    x[2].data_offset += 2 * 128;
    CHECK_RC(ahr_batch_shape(r, x, 3, &sh), 0);
    CHECK(sh.data_len == 200 && sh.step == 0);
    memcpy(x, m, sizeof x);
    x[1].data_offset += 64;
    x[2].flags = AHR_FLAG_FINISH;
    CHECK_RC(ahr_batch_shape(r, x, 3, &sh), 0);
    CHECK(sh.step == 0 && sh.flags == AHR_FLAG_FINISH);
    memcpy(x, m, sizeof x);
    x[1].seq = x[0].seq; /* step 0 */
    x[1].data_offset = x[0].data_offset;
    CHECK_RC(ahr_batch_shape(r, x, 2, &sh), 0);
    CHECK(sh.step == 0);
    x[0].span = 0; /* one message with no span */
    CHECK_RC(ahr_batch_shape(r, x, 1, &sh), 0);
    CHECK(sh.step == 0);
    CHECK_RC(ahr_batch_shape(r, m, 0, &sh), 0);
    CHECK(sh.data_len == UINT64_MAX && sh.step == 0 && sh.flags == 0 && sh.first_slot == 0);
    CHECK_RC(ahr_batch_shape(r, NULL, 2, &sh), -EINVAL);
    CHECK_RC(ahr_batch_shape(r, m, 2, NULL), -EINVAL);
    CHECK_RC(ahr_batch_shape(NULL, m, 2, &sh), -EBADF);
    ack_all(r, G, C, m, 8);

    /* a batch with a finish marker among ordinary messages */
    fill(buf, 400, 2, 100);
    CHECK_RC(ahr_send_batch(r, P, buf, 100, 2, 400, S, 0), 2);
    struct ahr_pub fin = make_pub(S, 402, 0);
    fin.flags = AHR_FLAG_FINISH;
    CHECK_RC(ahr_send(r, P, NULL, &fin, NULL, 0, NULL, 0, 0, NULL), 0);
    CHECK_RC(ahr_get_next_batch(r, G, C, 256, 0, m), 3);
    CHECK_RC(ahr_batch_shape(r, m, 3, &sh), 0);
    CHECK(sh.flags == AHR_FLAG_FINISH && sh.data_len == UINT64_MAX && sh.step == 0);
    ack_all(r, G, C, m, 3);

    struct ahr_group_stats gs;
    CHECK_RC(ahr_group_stats(r, G, &gs), 0);
    CHECK(gs.delivered == 40 + 40 + 64 + 8 + 3 && gs.acked == gs.delivered);
    CHECK(gs.floor == gs.next);
    CHECK_RC(ahr_leave(r, P), 0);
    CHECK_RC(ahr_leave(r, C), 0);
    ahr_detach(r);
    printf("test_batch: ok\n");
    return 0;
}
