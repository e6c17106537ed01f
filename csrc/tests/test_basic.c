/* create / attach / join / send / get_next / ack / stats / read_last / read_by_id / errors */
#include "harness.h" /* first: it defines _GNU_SOURCE */

#include <errno.h>

int main(void)
{
    const char *groups[] = {"g1"};
    struct ahr_ring *r = make_ring("basic", 8, 256, groups, 1);
    const char *name = test_segment;

    struct ahr_ring *r2 = NULL;
    CHECK_RC(ahr_attach(name, &r2), 0);
    struct ahr_config cfg;
    ahr_config_get(r2, &cfg);
    CHECK(cfg.slot_count == 8 && cfg.slot_size == 256);
    CHECK(ahr_size(r2) == ahr_segment_size(&cfg));
    struct ahr_ring *tmp;
    CHECK_RC(ahr_attach("ahr_ctest_missing_segment", &tmp), -ENOENT);
    CHECK_RC(ahr_create(name, &cfg, NULL, 0, 0600, &tmp), -EEXIST);
    CHECK_RC(ahr_attach("bad/name", &tmp), -EINVAL);

    int prod = ahr_join(r, AHR_ROLE_PRODUCER);
    int cons = ahr_join(r2, AHR_ROLE_CONSUMER);
    CHECK(prod >= 0 && cons >= 0 && prod != cons);
    int g = ahr_group_open(r2, "g1", AHR_ALL_STREAMS);
    CHECK(g >= 0);
    int s = ahr_stream_index(r, "default", 7);
    CHECK(s >= 0);
    CHECK_RC(ahr_stream_index(r2, "default", 7), s);
    char buf[128];
    CHECK_RC(ahr_stream_name(r2, (uint32_t)s, buf, sizeof buf), 7);
    CHECK(strcmp(buf, "default") == 0);
    CHECK_RC(ahr_stream_next_id(r, (uint32_t)s), 1);
    CHECK_RC(ahr_stream_next_id(r2, (uint32_t)s), 2);

    const char data[] = "hello ring";
    struct ahr_pub pub = make_pub((uint32_t)s, 1, sizeof data);
    uint64_t seq = 99;
    CHECK_RC(ahr_send(r, (uint32_t)prod, data, &pub, "f1", 2, "{\"a\":1}", 7, 0, &seq), 0);
    CHECK(seq == 0);

    struct ahr_msg m;
    CHECK_RC(ahr_get_next(r2, (uint32_t)g, (uint32_t)cons, 0, &m), 0);
    CHECK(m.id == 1 && m.data_len == sizeof data && m.attempts == 1 && m.stream == (uint32_t)s);
    CHECK(memcmp((char *)ahr_base(r2) + m.data_offset, data, sizeof data) == 0);
    CHECK_RC(ahr_read_tail(r2, &m, buf, sizeof buf), 0);
    CHECK(memcmp(buf, "f1{\"a\":1}", 9) == 0);
    CHECK_RC(ahr_get_next(r2, (uint32_t)g, (uint32_t)cons, 1000000, &m), -EAGAIN);

    struct ahr_group_stats gs;
    CHECK_RC(ahr_group_stats(r2, (uint32_t)g, &gs), 0);
    CHECK(gs.next == 1 && gs.floor == 0 && gs.delivered == 1);
    CHECK_RC(ahr_ack(r2, (uint32_t)g, (uint32_t)cons, 0), 0);
    CHECK_RC(ahr_ack(r2, (uint32_t)g, (uint32_t)cons, 0), -ESTALE); /* never twice */
    CHECK_RC(ahr_group_stats(r2, (uint32_t)g, &gs), 0);
    CHECK(gs.floor == 1 && gs.acked == 1);

    /* latest-value read and read by id copy the data */
    char out[64];
    CHECK_RC(ahr_read_last(r2, out, sizeof out, &m), 0);
    CHECK(memcmp(out, data, sizeof data) == 0 && m.id == 1);
    CHECK_RC(ahr_read_last(r2, out, 4, &m), -EMSGSIZE);
    CHECK_RC(ahr_read_by_id(r2, (uint32_t)s, 1, out, sizeof out, &m), 0);
    CHECK_RC(ahr_read_by_id(r2, (uint32_t)s, 7, out, sizeof out, &m), -ENOENT);

    /* reserve / commit / abort */
    struct ahr_reservation res;
    CHECK_RC(ahr_reserve(r, (uint32_t)prod, 300, 16, 0, &res), 0);
    CHECK(res.span == 2 && res.capacity == 512);
    memset((char *)ahr_base(r) + res.data_offset, 7, 300);
    pub = make_pub((uint32_t)s, 2, 300);
    CHECK_RC(ahr_commit(r, &res, &pub, NULL, 0, "{}", 2), 0);
    CHECK_RC(ahr_commit(r, &res, &pub, NULL, 0, "{}", 2), -ESTALE);
    CHECK_RC(ahr_reserve(r, (uint32_t)prod, 10, 0, 0, &res), 0);
    CHECK_RC(ahr_abort(r, &res), 0);
    CHECK_RC(ahr_get_next(r2, (uint32_t)g, (uint32_t)cons, 0, &m), 0);
    CHECK(m.id == 2 && m.span == 2 && ((unsigned char *)ahr_base(r2))[m.data_offset + 299] == 7);
    CHECK_RC(ahr_ack(r2, (uint32_t)g, (uint32_t)cons, m.seq), 0);
    CHECK_RC(ahr_get_next(r2, (uint32_t)g, (uint32_t)cons, 0, &m), -EAGAIN); /* abort skipped */
    CHECK_RC(ahr_group_stats(r2, (uint32_t)g, &gs), 0);
    CHECK(gs.floor == 4);

    /* bad input */
    pub = make_pub((uint32_t)s, 0, 1);
    CHECK_RC(ahr_send(r, (uint32_t)prod, data, &pub, NULL, 0, NULL, 0, 0, NULL), -EINVAL);
    pub = make_pub((uint32_t)s, 3, 8 * 256 + 1);
    static char big[8 * 256 + 1];
    CHECK_RC(ahr_send(r, (uint32_t)prod, big, &pub, NULL, 0, NULL, 0, 0, NULL), -EMSGSIZE);
    pub = make_pub(9999, 3, 1);
    CHECK_RC(ahr_send(r, (uint32_t)prod, data, &pub, NULL, 0, NULL, 0, 0, NULL), -EINVAL);
    CHECK_RC(ahr_ack(r2, 5, (uint32_t)cons, 0), -ENOENT);
    CHECK_RC(ahr_get_next(r2, (uint32_t)g, 5000, 0, &m), -EINVAL);
    CHECK_RC(ahr_group_open(r2, "", AHR_ALL_STREAMS), -EINVAL);

    /* full ring: the producer times out with -ENOSPC while g1 holds every slot */
    for (uint64_t id = 3; id < 11; id++) {
        pub = make_pub((uint32_t)s, id, 8);
        CHECK_RC(ahr_send(r, (uint32_t)prod, data, &pub, NULL, 0, NULL, 0, 0, NULL), 0);
    }
    pub = make_pub((uint32_t)s, 11, 8);
    CHECK_RC(ahr_send(r, (uint32_t)prod, data, &pub, NULL, 0, NULL, 0, 2000000, NULL), -ENOSPC);
    CHECK_RC(ahr_get_next(r2, (uint32_t)g, (uint32_t)cons, 0, &m), 0);
    CHECK_RC(ahr_ack(r2, (uint32_t)g, (uint32_t)cons, m.seq), 0);
    CHECK_RC(ahr_send(r, (uint32_t)prod, data, &pub, NULL, 0, NULL, 0, 0, NULL), 0);

    struct ahr_ring_stats rs;
    CHECK_RC(ahr_ring_stats(r, &rs), 0);
    CHECK(rs.members == 2 && rs.groups == 1 && rs.head == 13);
    CHECK_RC(ahr_leave(r2, (uint32_t)cons), 0);
    CHECK_RC(ahr_leave(r, (uint32_t)prod), 0);
    CHECK_RC(ahr_ring_stats(r, &rs), 0);
    CHECK(rs.members == 0);
    ahr_detach(r2);
    ahr_detach(r);
    printf("test_basic: ok\n");
    return 0;
}
