/*
 * Negative acknowledgements, leases and dead letters:
 *  - nack with a delay: not redelivered before the delay (lower bound only: no timing
 *    upper bounds are asserted), then redelivered with attempts = 2 to another member;
 *  - after max_attempts deliveries the message is dead-lettered (counter) and the floor
 *    passes it, so the producer gets the space back;
 *  - a lease that expires: the message goes to another member (attempts 2) and the
 *    original owner's ack / nack fail with -ESTALE;
 *  - ahr_find_claim finds only the caller's own live claims;
 *  - ahr_release gives an unused claim back at once without counting an attempt.
 */
#include "harness.h" /* first: it defines _GNU_SOURCE */

#include <errno.h>
#include <time.h>


#define MS 1000000ll

int main(void)
{
    const char *groups[] = {"g"};
    struct ahr_ring *r = make_ring("nack", 8, 128, groups, 1);
    int prod = ahr_join(r, AHR_ROLE_PRODUCER);
    int a = ahr_join(r, AHR_ROLE_CONSUMER), b = ahr_join(r, AHR_ROLE_CONSUMER);
    int g = ahr_group_open(r, "g", AHR_ALL_STREAMS);
    int s = ahr_stream_index(r, "s", 1);
    CHECK(prod >= 0 && a >= 0 && b >= 0 && g >= 0 && s >= 0);
    struct ahr_msg m, m2;
    struct ahr_group_stats gs;
    uint64_t seq;
    const char payload[] = "payload";
    for (uint64_t id = 1; id <= 4; id++) {
        struct ahr_pub pub = make_pub((uint32_t)s, id, sizeof payload);
        CHECK_RC(ahr_send(r, (uint32_t)prod, payload, &pub, NULL, 0, NULL, 0, 0, NULL), 0);
    }

    /* find_claim: only the holder finds it, and only while it holds it */
    CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)a, 0, &m), 0);
    CHECK(m.id == 1 && m.attempts == 1);
    CHECK_RC(ahr_find_claim(r, (uint32_t)g, (uint32_t)a, (uint32_t)s, 1, &seq), 0);
    CHECK(seq == m.seq);
    CHECK_RC(ahr_find_claim(r, (uint32_t)g, (uint32_t)b, (uint32_t)s, 1, &seq), -ENOENT);
    CHECK_RC(ahr_find_claim(r, (uint32_t)g, (uint32_t)a, (uint32_t)s, 2, &seq), -ENOENT);
    CHECK_RC(ahr_find_claim(r, (uint32_t)g, (uint32_t)a, (uint32_t)s + 1, 1, &seq), -ENOENT);
    CHECK_RC(ahr_find_claim(r, (uint32_t)g, (uint32_t)a, (uint32_t)s, 1, NULL), -EINVAL);

    /* 1. nack with a delay: held back until the delay passed, then any member gets it */
    uint64_t t0 = now_ns();
    CHECK_RC(ahr_nack(r, (uint32_t)g, (uint32_t)a, m.seq, 300 * MS), 0);
    CHECK_RC(ahr_nack(r, (uint32_t)g, (uint32_t)a, m.seq, 0), -ESTALE); /* not held now */
    CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)a, m.seq), -ESTALE);
    CHECK_RC(ahr_find_claim(r, (uint32_t)g, (uint32_t)a, (uint32_t)s, 1, &seq), -ENOENT);
    CHECK_RC(ahr_group_stats(r, (uint32_t)g, &gs), 0);
    CHECK(gs.nacked == 1 && gs.floor == 0);
    /* meanwhile the others flow normally */
    CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)b, 0, &m2), 0);
    CHECK(m2.id == 2 && m2.attempts == 1);
    CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)b, m2.seq), 0);
    CHECK_RC(ahr_group_stats(r, (uint32_t)g, &gs), 0);
    CHECK(gs.floor == 0); /* the nacked message still holds the floor */
    /* b waits: the first message it gets is id 3 or, after the delay, the redelivery */
    int got_redelivery = 0;
    for (int i = 0; i < 3 && !got_redelivery; i++) {
        CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)b, 5000 * MS, &m2), 0);
        if (m2.id == 1) {
            got_redelivery = 1;
            CHECK(now_ns() - t0 >= 299 * MS); /* leases have millisecond resolution */
            CHECK(m2.attempts == 2 && m2.seq == m.seq && m2.data_len == sizeof payload);
            CHECK(memcmp((char *)ahr_base(r) + m2.data_offset, payload, sizeof payload) == 0);
            CHECK_RC(ahr_find_claim(r, (uint32_t)g, (uint32_t)b, (uint32_t)s, 1, &seq), 0);
            CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)a, m2.seq), -ESTALE); /* a's is gone */
        } else {
            CHECK(now_ns() - t0 < 299 * MS || m2.id != 1);
            CHECK(m2.attempts == 1);
        }
        CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)b, m2.seq), 0);
    }
    CHECK(got_redelivery);
    CHECK_RC(ahr_group_stats(r, (uint32_t)g, &gs), 0);
    CHECK(gs.redelivered == 1 && gs.nacked == 0);

    /* drain what is left */
    while (ahr_get_next(r, (uint32_t)g, (uint32_t)a, 0, &m) == 0)
        CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)a, m.seq), 0);
    CHECK_RC(ahr_group_stats(r, (uint32_t)g, &gs), 0);
    CHECK(gs.floor == 4 && gs.next == 4 && gs.acked == 4);

    /* 2. max attempts: 2 deliveries, then a dead letter the floor passes */
    CHECK_RC(ahr_group_set_resend(r, (uint32_t)g, 30000 * MS, 2), 0);
    CHECK_RC(ahr_group_set_resend(r, (uint32_t)g, 1000, 2), -EINVAL); /* lease < 1 ms */
    CHECK_RC(ahr_group_set_resend(r, (uint32_t)g, 30000 * MS, 0), -EINVAL);
    CHECK_RC(ahr_group_set_resend(r, (uint32_t)g, 30000 * MS, 256), -EINVAL);
    struct ahr_pub pub = make_pub((uint32_t)s, 5, sizeof payload);
    CHECK_RC(ahr_send(r, (uint32_t)prod, payload, &pub, NULL, 0, NULL, 0, 0, NULL), 0);
    CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)a, 0, &m), 0);
    CHECK(m.id == 5 && m.attempts == 1);
    CHECK_RC(ahr_nack(r, (uint32_t)g, (uint32_t)a, m.seq, 0), 0);
    CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)b, 1000 * MS, &m), 0);
    CHECK(m.id == 5 && m.attempts == 2);
    CHECK_RC(ahr_nack(r, (uint32_t)g, (uint32_t)b, m.seq, 0), 0);
    CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)a, 20 * MS, &m), -EAGAIN); /* dead */
    CHECK_RC(ahr_group_stats(r, (uint32_t)g, &gs), 0);
    CHECK(gs.deadlettered == 1 && gs.floor == 5 && gs.next == 5 && gs.nacked == 0);
    CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)b, m.seq), -ESTALE);
    /* the space came back: a full lap fits again */
    for (uint64_t id = 6; id < 6 + 8; id++) {
        pub = make_pub((uint32_t)s, id, sizeof payload);
        CHECK_RC(ahr_send(r, (uint32_t)prod, payload, &pub, NULL, 0, NULL, 0, 0, NULL), 0);
    }
    for (uint64_t id = 6; id < 6 + 8; id++) {
        CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)a, 0, &m), 0);
        CHECK(m.id == id && m.attempts == 1);
        CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)a, m.seq), 0);
    }

    /* 3. an expired lease: b gets it, a's ack and nack are stale */
    CHECK_RC(ahr_group_set_resend(r, (uint32_t)g, 50 * MS, 3), 0);
    pub = make_pub((uint32_t)s, 14, sizeof payload);
    CHECK_RC(ahr_send(r, (uint32_t)prod, payload, &pub, NULL, 0, NULL, 0, 0, NULL), 0);
    t0 = now_ns();
    CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)a, 0, &m), 0);
    CHECK(m.id == 14 && m.attempts == 1);
    CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)b, 5000 * MS, &m2), 0);
    CHECK(now_ns() - t0 >= 49 * MS);
    CHECK(m2.id == 14 && m2.seq == m.seq && m2.attempts == 2);
    CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)a, m.seq), -ESTALE);
    CHECK_RC(ahr_nack(r, (uint32_t)g, (uint32_t)a, m.seq, 0), -ESTALE);
    CHECK_RC(ahr_find_claim(r, (uint32_t)g, (uint32_t)a, (uint32_t)s, 14, &seq), -ENOENT);
    CHECK_RC(ahr_find_claim(r, (uint32_t)g, (uint32_t)b, (uint32_t)s, 14, &seq), 0);
    CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)b, m2.seq), 0);
    CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)b, m2.seq), -ESTALE);
    CHECK_RC(ahr_group_stats(r, (uint32_t)g, &gs), 0);
    CHECK(gs.floor == 14 && gs.redelivered == 3 && gs.deadlettered == 1);

    /* 4. leave: claims still held go to the other members at once */
    CHECK_RC(ahr_group_set_resend(r, (uint32_t)g, 30000 * MS, 3), 0);
    pub = make_pub((uint32_t)s, 15, sizeof payload);
    CHECK_RC(ahr_send(r, (uint32_t)prod, payload, &pub, NULL, 0, NULL, 0, 0, NULL), 0);
    CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)a, 0, &m), 0);
    CHECK_RC(ahr_leave(r, (uint32_t)a), 0);
    CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)b, 5000 * MS, &m2), 0);
    CHECK(m2.id == 15 && m2.attempts == 2);
    CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)b, m2.seq), 0);

    /* 5. release: an unused claim goes to another member at once, not counted as an
     *    attempt, and only the holder can release it */
    a = ahr_join(r, AHR_ROLE_CONSUMER); /* a left in part 4: a new member */
    CHECK(a >= 0);
    pub = make_pub((uint32_t)s, 16, sizeof payload);
    CHECK_RC(ahr_send(r, (uint32_t)prod, payload, &pub, NULL, 0, NULL, 0, 0, NULL), 0);
    CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)a, 0, &m), 0);
    CHECK(m.id == 16 && m.attempts == 1);
    CHECK_RC(ahr_release(r, (uint32_t)g, (uint32_t)b, m.seq), -ESTALE); /* not b's */
    CHECK_RC(ahr_release(r, (uint32_t)g, (uint32_t)a, m.seq), 0);
    CHECK_RC(ahr_release(r, (uint32_t)g, (uint32_t)a, m.seq), -ESTALE); /* given back */
    CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)a, m.seq), -ESTALE);
    CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)b, 0, &m2), 0);
    CHECK(m2.id == 16 && m2.seq == m.seq && m2.attempts == 1);
    CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)b, m2.seq), 0);
    CHECK_RC(ahr_group_stats(r, (uint32_t)g, &gs), 0);
    CHECK(gs.nacked == 0 && gs.floor == 16);

    CHECK_RC(ahr_leave(r, (uint32_t)a), 0);
    CHECK_RC(ahr_leave(r, (uint32_t)b), 0);
    CHECK_RC(ahr_leave(r, (uint32_t)prod), 0);
    ahr_detach(r);
    printf("test_nack: ok\n");
    return 0;
}
