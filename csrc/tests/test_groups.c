/*
 * Consumer groups: declared groups each see every message exactly once (spread over
 * their members); a group opened later starts at the oldest message the others still
 * hold; a stream-filtered group sees only its stream, and holds the producer back only
 * until it has polled past the other streams' messages; retiring a group releases the
 * producer and invalidates its old handles (-ENOENT); a full group table gives -EUSERS.
 */
#include "harness.h" /* first: it defines _GNU_SOURCE */

#include <errno.h>


#define SLOTS 16u

static struct ahr_ring *r;
static int prod;

static int publish(uint32_t stream, uint64_t id)
{
    uint64_t v = id * 1000 + stream;
    struct ahr_pub pub = make_pub(stream, id, sizeof v);
    return ahr_send(r, (uint32_t)prod, &v, &pub, NULL, 0, NULL, 0, 0, NULL);
}

/* Claim the next message, check its bytes match its (stream, id), return it. */
static struct ahr_msg take(int g, int member)
{
    struct ahr_msg m;
    CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)member, 0, &m), 0);
    uint64_t v;
    CHECK(m.data_len == sizeof v);
    memcpy(&v, (char *)ahr_base(r) + m.data_offset, sizeof v);
    CHECK(v == m.id * 1000 + m.stream);
    return m;
}

static struct ahr_group_stats gstats(int g)
{
    struct ahr_group_stats gs;
    CHECK_RC(ahr_group_stats(r, (uint32_t)g, &gs), 0);
    return gs;
}

static uint64_t head(void)
{
    struct ahr_ring_stats rs;
    CHECK_RC(ahr_ring_stats(r, &rs), 0);
    return rs.head;
}

int main(void)
{
    const char *declared[] = {"g1", "g2"};
    struct ahr_config cfg;
    ahr_config_default(&cfg);
    cfg.slot_count = SLOTS;
    cfg.slot_size = 128;
    cfg.max_groups = 4;
    CHECK_RC(ahr_create(test_name("groups"), &cfg, declared, 2, 0600, &r), 0);
    prod = ahr_join(r, AHR_ROLE_PRODUCER);
    int c1 = ahr_join(r, AHR_ROLE_CONSUMER), c2 = ahr_join(r, AHR_ROLE_CONSUMER);
    int c3 = ahr_join(r, AHR_ROLE_CONSUMER);
    int sa = ahr_stream_index(r, "A", 1), sb = ahr_stream_index(r, "B", 1);
    CHECK(prod >= 0 && c1 >= 0 && c2 >= 0 && c3 >= 0 && sa >= 0 && sb >= 0 && sa != sb);
    int g1 = ahr_group_open(r, "g1", AHR_ALL_STREAMS);
    int g2 = ahr_group_open(r, "g2", AHR_ALL_STREAMS);
    CHECK(g1 >= 0 && g2 >= 0 && g1 != g2);
    CHECK_RC(ahr_group_open(r, "g1", AHR_ALL_STREAMS), g1); /* find, not create */
    CHECK_RC(ahr_group_open(r, "g1", (uint32_t)sa), -EEXIST); /* other filter */
    CHECK_RC(ahr_group_open(r, "g1", 12345), -EINVAL);
    char name[64];
    CHECK_RC(ahr_group_name(r, (uint32_t)g2, name, sizeof name), 2);
    CHECK(strcmp(name, "g2") == 0);

    /* 1. two declared groups: every message once per group, whichever member takes it */
    for (uint64_t id = 1; id <= 10; id++)
        CHECK_RC(publish((uint32_t)sa, id), 0);
    int seen1[11] = {0}, seen2[11] = {0};
    for (int i = 0; i < 10; i++) {
        struct ahr_msg m = take(g1, i % 2 ? c1 : c2);
        CHECK(m.id >= 1 && m.id <= 10 && m.attempts == 1);
        seen1[m.id]++;
        CHECK_RC(ahr_ack(r, (uint32_t)g1, (uint32_t)(i % 2 ? c1 : c2), m.seq), 0);
    }
    struct ahr_msg m;
    CHECK_RC(ahr_get_next(r, (uint32_t)g1, (uint32_t)c1, 0, &m), -EAGAIN);
    uint64_t held[10];
    for (int i = 0; i < 6; i++) { /* g2 takes 6, acknowledges the first 4 */
        m = take(g2, c3);
        seen2[m.id]++;
        held[i] = m.seq;
        if (i < 4)
            CHECK_RC(ahr_ack(r, (uint32_t)g2, (uint32_t)c3, m.seq), 0);
    }
    CHECK(gstats(g1).floor == 10 && gstats(g2).floor == 4 && gstats(g2).next == 6);

    /* 2. a group opened now starts at the oldest message g2 still holds (seq 4, id 5) */
    int g3 = ahr_group_open(r, "late", AHR_ALL_STREAMS);
    CHECK(g3 >= 0);
    CHECK(gstats(g3).floor == 4 && gstats(g3).next == 4);
    m = take(g3, c1);
    CHECK(m.id == 5 && m.seq == 4);
    CHECK_RC(ahr_ack(r, (uint32_t)g3, (uint32_t)c1, m.seq), 0);
    for (int i = 6; i < 10; i++) { /* g2 finishes: still every message exactly once */
        m = take(g2, c3);
        seen2[m.id]++;
        held[i] = m.seq;
    }
    CHECK_RC(ahr_ack(r, (uint32_t)g2, (uint32_t)c3, held[4]), 0);
    CHECK_RC(ahr_ack(r, (uint32_t)g2, (uint32_t)c3, held[5]), 0);
    for (int i = 6; i < 10; i++)
        CHECK_RC(ahr_ack(r, (uint32_t)g2, (uint32_t)c3, held[i]), 0);
    for (int id = 1; id <= 10; id++)
        CHECK(seen1[id] == 1 && seen2[id] == 1);
    CHECK(gstats(g2).floor == 10 && gstats(g2).delivered == 10 && gstats(g2).acked == 10);
    while (ahr_get_next(r, (uint32_t)g3, (uint32_t)c2, 0, &m) == 0)
        CHECK_RC(ahr_ack(r, (uint32_t)g3, (uint32_t)c2, m.seq), 0);
    CHECK(gstats(g3).floor == 10 && gstats(g3).delivered == 6);

    /* 3. a stream-filtered group: only stream B, and no hold on A beyond its own polls */
    int gf = ahr_group_open(r, "onlyB", (uint32_t)sb);
    CHECK(gf >= 0);
    CHECK_RC(ahr_group_open(r, "onlyB", AHR_ALL_STREAMS), -EEXIST);
    CHECK(gstats(gf).floor == 10); /* everybody is at the head: it starts there */
    uint64_t id_a = 11, id_b = 1;
    const uint32_t pattern[] = {0, 0, 1, 0, 1, 1, 0, 0}; /* 1 = stream B */
    for (int i = 0; i < 8; i++)
        CHECK_RC(pattern[i] ? publish((uint32_t)sb, id_b++) : publish((uint32_t)sa, id_a++), 0);
    for (uint64_t want = 1; want < id_b; want++) {
        m = take(gf, c1);
        CHECK(m.stream == (uint32_t)sb && m.id == want);
        CHECK_RC(ahr_ack(r, (uint32_t)gf, (uint32_t)c1, m.seq), 0);
    }
    CHECK_RC(ahr_get_next(r, (uint32_t)gf, (uint32_t)c1, 0, &m), -EAGAIN);
    CHECK(gstats(gf).floor == head() && gstats(gf).delivered == 3); /* A's passed, unseen */
    int gs[] = {g1, g2, g3};
    for (int k = 0; k < 3; k++) /* the others drain everything */
        while (ahr_get_next(r, (uint32_t)gs[k], (uint32_t)c2, 0, &m) == 0)
            CHECK_RC(ahr_ack(r, (uint32_t)gs[k], (uint32_t)c2, m.seq), 0);
    /* fill the ring with stream A: every group, gf included, is at the head */
    for (uint32_t i = 0; i < SLOTS; i++)
        CHECK_RC(publish((uint32_t)sa, id_a++), 0);
    CHECK_RC(publish((uint32_t)sa, id_a), -ENOSPC);
    for (int k = 0; k < 3; k++)
        while (ahr_get_next(r, (uint32_t)gs[k], (uint32_t)c2, 0, &m) == 0)
            CHECK_RC(ahr_ack(r, (uint32_t)gs[k], (uint32_t)c2, m.seq), 0);
    /* only gf holds the ring now, until its member polls and passes the A messages */
    CHECK_RC(publish((uint32_t)sa, id_a), -ENOSPC);
    CHECK_RC(ahr_get_next(r, (uint32_t)gf, (uint32_t)c1, 0, &m), -EAGAIN);
    CHECK(gstats(gf).floor == head() && gstats(gf).delivered == 3);
    CHECK_RC(publish((uint32_t)sa, id_a++), 0);

    /* 4. the table is full (4 groups): -EUSERS; retire frees an entry */
    CHECK_RC(ahr_group_open(r, "fifth", AHR_ALL_STREAMS), -EUSERS);
    /* g2 holds a message unacknowledged and the ring is full behind it */
    for (int k = 0; k < 3; k++)
        if (gs[k] != g2)
            while (ahr_get_next(r, (uint32_t)gs[k], (uint32_t)c2, 0, &m) == 0)
                CHECK_RC(ahr_ack(r, (uint32_t)gs[k], (uint32_t)c2, m.seq), 0);
    CHECK_RC(ahr_get_next(r, (uint32_t)gf, (uint32_t)c1, 0, &m), -EAGAIN);
    struct ahr_msg held_g2 = take(g2, c3);
    for (uint32_t i = 0; i < SLOTS - 1; i++) {
        CHECK_RC(publish((uint32_t)sa, id_a++), 0);
        for (int k = 0; k < 3; k++)
            if (gs[k] != g2)
                while (ahr_get_next(r, (uint32_t)gs[k], (uint32_t)c2, 0, &m) == 0)
                    CHECK_RC(ahr_ack(r, (uint32_t)gs[k], (uint32_t)c2, m.seq), 0);
        CHECK_RC(ahr_get_next(r, (uint32_t)gf, (uint32_t)c1, 0, &m), -EAGAIN);
    }
    CHECK_RC(publish((uint32_t)sa, id_a), -ENOSPC); /* g2's claim holds the ring */
    CHECK_RC(ahr_group_retire(r, (uint32_t)g2), 0);
    CHECK_RC(publish((uint32_t)sa, id_a++), 0); /* released */
    /* every call through the old handle fails with -ENOENT */
    struct ahr_group_stats st;
    uint64_t seq;
    CHECK_RC(ahr_get_next(r, (uint32_t)g2, (uint32_t)c3, 0, &m), -ENOENT);
    CHECK_RC(ahr_get_next_batch(r, (uint32_t)g2, (uint32_t)c3, 4, 0, &m), -ENOENT);
    CHECK_RC(ahr_ack(r, (uint32_t)g2, (uint32_t)c3, held_g2.seq), -ENOENT);
    CHECK_RC(ahr_ack_batch(r, (uint32_t)g2, (uint32_t)c3, &held_g2.seq, 1), -ENOENT);
    CHECK_RC(ahr_nack(r, (uint32_t)g2, (uint32_t)c3, held_g2.seq, 0), -ENOENT);
    CHECK_RC(ahr_find_claim(r, (uint32_t)g2, (uint32_t)c3, held_g2.stream, held_g2.id, &seq),
             -ENOENT);
    CHECK_RC(ahr_group_stats(r, (uint32_t)g2, &st), -ENOENT);
    CHECK_RC(ahr_group_set_resend(r, (uint32_t)g2, 1000000000ull, 3), -ENOENT);
    CHECK_RC(ahr_group_name(r, (uint32_t)g2, name, sizeof name), -ENOENT);
    CHECK_RC(ahr_group_retire(r, (uint32_t)g2), -ENOENT);
    struct ahr_ring_stats rs;
    CHECK_RC(ahr_ring_stats(r, &rs), 0);
    CHECK(rs.groups == 3);
    /* listing and finding see live groups only, and never make one */
    uint32_t live[4] = {0};
    CHECK_RC(ahr_group_list(r, live, 4), 3);
    CHECK_RC(ahr_group_list(r, live, 1), 3); /* the count even without room for all */
    CHECK_RC(ahr_group_list(r, live, 4), 3);
    int listed_g1 = 0;
    for (int k = 0; k < 3; k++) {
        CHECK(live[k] != (uint32_t)g2);
        CHECK_RC(ahr_group_stats(r, live[k], &st), 0);
        listed_g1 += live[k] == (uint32_t)g1;
    }
    CHECK(listed_g1 == 1);
    CHECK_RC(ahr_group_find(r, "g1", AHR_ALL_STREAMS), g1);
    CHECK_RC(ahr_group_find(r, "g1", (uint32_t)sa), -EEXIST);
    CHECK_RC(ahr_group_find(r, "g2", AHR_ALL_STREAMS), -ENOENT);
    CHECK_RC(ahr_group_find(r, "", AHR_ALL_STREAMS), -EINVAL);
    CHECK_RC(ahr_ring_stats(r, &rs), 0);
    CHECK(rs.groups == 3);
    CHECK(gstats(g1).stream_filter == AHR_ALL_STREAMS);
    /* the freed entry is reused with a new generation: the old handle stays dead */
    int g2b = ahr_group_open(r, "g2", AHR_ALL_STREAMS);
    CHECK(g2b >= 0 && g2b != g2 && (g2b & 0xff) == (g2 & 0xff));
    CHECK_RC(ahr_group_stats(r, (uint32_t)g2, &st), -ENOENT);
    CHECK(gstats(g2b).floor == gstats(g1).floor); /* starts at what the others hold */
    CHECK_RC(ahr_group_open(r, "sixth", AHR_ALL_STREAMS), -EUSERS);
    CHECK_RC(ahr_group_retire(r, (uint32_t)g3), 0);
    int g6 = ahr_group_open(r, "sixth", AHR_ALL_STREAMS);
    CHECK(g6 >= 0);
    CHECK_RC(ahr_group_stats(r, (uint32_t)g3, &st), -ENOENT);
    CHECK(gstats(g6).delivered == 0 && gstats(g6).acked == 0); /* not g3's counters */

    /* 5. a reused entry does not inherit the retired group's claims: g2b takes and
     * acknowledges 3 messages g1 still holds, retires; the group opened in its place
     * starts at g1's floor and must get those 3 (not skip them as already taken) */
    for (int k = 0; k < 2; k++) { /* g6 and gf at the head, so only g1 and g2b hold */
        int gk = k ? gf : g6;
        while (ahr_get_next(r, (uint32_t)gk, (uint32_t)c1, 0, &m) == 0)
            CHECK_RC(ahr_ack(r, (uint32_t)gk, (uint32_t)c1, m.seq), 0);
    }
    for (int k = 0; k < 2; k++) {
        int gk = k ? g2b : g1;
        while (ahr_get_next(r, (uint32_t)gk, (uint32_t)c1, 0, &m) == 0)
            CHECK_RC(ahr_ack(r, (uint32_t)gk, (uint32_t)c1, m.seq), 0);
    }
    uint64_t first_id = id_a;
    for (int k = 0; k < 3; k++)
        CHECK_RC(publish((uint32_t)sa, id_a++), 0);
    for (int k = 0; k < 3; k++) {
        m = take(g2b, c3);
        CHECK_RC(ahr_ack(r, (uint32_t)g2b, (uint32_t)c3, m.seq), 0);
    }
    for (int k = 0; k < 2; k++) { /* gf and g6 pass them too */
        int gk = k ? gf : g6;
        while (ahr_get_next(r, (uint32_t)gk, (uint32_t)c1, 0, &m) == 0)
            CHECK_RC(ahr_ack(r, (uint32_t)gk, (uint32_t)c1, m.seq), 0);
    }
    CHECK_RC(ahr_group_retire(r, (uint32_t)g2b), 0);
    int g7 = ahr_group_open(r, "again", AHR_ALL_STREAMS);
    CHECK(g7 >= 0 && (g7 & 0xff) == (g2b & 0xff));
    CHECK(gstats(g7).floor == gstats(g1).floor);
    for (int k = 0; k < 3; k++) {
        m = take(g7, c2);
        CHECK(m.id == first_id + (uint64_t)k && m.attempts == 1);
        CHECK_RC(ahr_ack(r, (uint32_t)g7, (uint32_t)c2, m.seq), 0);
    }
    CHECK_RC(ahr_get_next(r, (uint32_t)g7, (uint32_t)c2, 0, &m), -EAGAIN);
    CHECK(gstats(g7).delivered == 3 && gstats(g7).acked == 3);

    /* 6. a one-stream group retires itself when its floor passes its stream's finish
     *    marker, not before: a member still holding a message can acknowledge it */
    for (int k = 0; k < 2; k++) /* the other groups stay clear of the ring */
        while (ahr_get_next(r, (uint32_t)(k ? g7 : g1), (uint32_t)c2, 0, &m) == 0)
            CHECK_RC(ahr_ack(r, (uint32_t)(k ? g7 : g1), (uint32_t)c2, m.seq), 0);
    while (ahr_get_next(r, (uint32_t)g6, (uint32_t)c2, 0, &m) == 0)
        CHECK_RC(ahr_ack(r, (uint32_t)g6, (uint32_t)c2, m.seq), 0);
    CHECK_RC(publish((uint32_t)sb, id_b), 0);
    CHECK_RC(publish((uint32_t)sa, id_a++), 0); /* another stream's message in between */
    struct ahr_pub fin = make_pub((uint32_t)sb, id_b + 1, 0);
    fin.flags = AHR_FLAG_FINISH;
    CHECK_RC(ahr_send(r, (uint32_t)prod, NULL, &fin, NULL, 0, NULL, 0, 0, NULL), 0);
    struct ahr_msg last = take(gf, c1); /* c1 holds the stream's last message */
    CHECK(last.id == id_b);
    struct ahr_msg marker;
    CHECK_RC(ahr_get_next(r, (uint32_t)gf, (uint32_t)c2, 0, &marker), 0);
    CHECK(marker.flags & AHR_FLAG_FINISH);
    CHECK_RC(ahr_ack(r, (uint32_t)gf, (uint32_t)c2, marker.seq), 0);
    CHECK(gstats(gf).stream_filter == (uint32_t)sb); /* still live: c1's is not acked */
    CHECK_RC(ahr_ack(r, (uint32_t)gf, (uint32_t)c1, last.seq), 0);
    CHECK_RC(ahr_group_stats(r, (uint32_t)gf, &st), -ENOENT); /* retired by that ack */
    CHECK_RC(ahr_ack(r, (uint32_t)gf, (uint32_t)c1, last.seq), -ENOENT);

    CHECK_RC(ahr_leave(r, (uint32_t)prod), 0);
    CHECK_RC(ahr_leave(r, (uint32_t)c1), 0);
    CHECK_RC(ahr_leave(r, (uint32_t)c2), 0);
    CHECK_RC(ahr_leave(r, (uint32_t)c3), 0);
    ahr_detach(r);
    printf("test_groups: ok\n");
    return 0;
}
