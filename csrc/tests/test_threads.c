/*
 * Exactly once per group under concurrency: N producer threads x M consumer threads per
 * group x 2 groups share one ring handle for a bounded time (AHR_TEST_SECONDS, default 2;
 * 1 under ThreadSanitizer). Producers take ids from the shared auto-id counter and mix
 * ahr_send, ahr_send_batch (runs of consecutive ids), reserve/commit and reserve/abort over
 * a small ring, so it wraps and fills all the time; consumers mix single and batch calls
 * and now and then nack a message (it must come back, attempts > 1). Per group, a bitmap
 * of first deliveries and one of acknowledgements: a bit set twice fails the test; at the
 * end every published id must be acknowledged exactly once in each group, and the floors
 * must reach the head.
 */
#include "harness.h" /* first: it defines _GNU_SOURCE */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif

#define NPROD 2
#define NCONS 2 /* per group */
#define NGROUPS 2
#define MAXID (1u << 22)

static struct ahr_ring *ring;
static uint32_t stream, group[NGROUPS];
static uint64_t run_ns;
static _Atomic uint64_t published, producers_done, batched;
static _Atomic uint8_t first_seen[NGROUPS][MAXID + 1], acked[NGROUPS][MAXID + 1];
static _Atomic uint64_t acked_count[NGROUPS], nacks, redeliveries;
static _Atomic int failed;

#define TCHECK(cond)                                                                       \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);       \
            atomic_store(&failed, 1);                                                      \
            return NULL;                                                                   \
        }                                                                                  \
    } while (0)

static uint8_t pattern(uint64_t id, uint64_t i) { return (uint8_t)(id * 31 + i); }
/* 1..3 slots of 256; the same for runs of four ids, so they can go in one ahr_send_batch */
static uint64_t len_of(uint64_t id) { return 8 + ((id / 4) * 37) % 700; }

static void fill_msg_bytes(uint8_t *buf, uint64_t id)
{
    memcpy(buf, &id, 8);
    for (uint64_t i = 8; i < len_of(id); i++)
        buf[i] = pattern(id, i);
}

/* ahr_send_batch of a run of consecutive ids of one length, from `first` on: the ids come
 * one at a time from the shared counter, so the run ends where another producer took one.
 * Returns how many were published (0 on failure), *next the id drawn but not sent (or 0). */
static uint64_t send_run(uint32_t m, uint64_t first, uint64_t *next)
{
    static _Thread_local uint8_t buf[4 * 1024];
    uint64_t len = len_of(first), k = 1;
    fill_msg_bytes(buf, first);
    *next = 0;
    while (k < 4) {
        int64_t id = ahr_stream_next_id(ring, stream);
        if (id <= 0)
            return 0;
        if ((uint64_t)id != first + k || len_of((uint64_t)id) != len || id > MAXID) {
            *next = (uint64_t)id;
            break;
        }
        fill_msg_bytes(buf + k * len, (uint64_t)id);
        k++;
    }
    int rc = ahr_send_batch(ring, m, buf, len, (uint32_t)k, first, stream, 10000000000ll);
    return rc == (int)k ? k : 0;
}

static void *producer(void *arg)
{
    int m = ahr_join(ring, AHR_ROLE_PRODUCER);
    TCHECK(m >= 0);
    uint8_t buf[1024];
    uint64_t end = now_ns() + run_ns;
    for (uint64_t n = (uint64_t)(uintptr_t)arg; now_ns() < end && !atomic_load(&failed); n++) {
        if (n % 97 == 0) { /* an aborted reservation: a tombstone everybody skips */
            struct ahr_reservation res;
            TCHECK(ahr_reserve(ring, (uint32_t)m, 100, 0, 10000000000ll, &res) == 0);
            TCHECK(ahr_abort(ring, &res) == 0);
            continue;
        }
        int64_t id = ahr_stream_next_id(ring, stream);
        TCHECK(id > 0);
        if ((uint64_t)id > MAXID)
            break;
        if (n % 3 == 0) { /* a batch call */
            uint64_t next, sent = send_run((uint32_t)m, (uint64_t)id, &next);
            TCHECK(sent > 0);
            atomic_fetch_add(&published, sent);
            if (sent > 1)
                atomic_fetch_add(&batched, sent);
            if (next == 0)
                continue;
            if (next > MAXID)
                break;
            id = (int64_t)next; /* drawn and not sent: it goes alone, below */
        }
        uint64_t len = len_of((uint64_t)id);
        fill_msg_bytes(buf, (uint64_t)id);
        struct ahr_pub pub = make_pub(stream, (uint64_t)id, len);
        if (n % 2) {
            TCHECK(ahr_send(ring, (uint32_t)m, buf, &pub, "n", 1, "{}", 2, 10000000000ll,
                            NULL) == 0);
        } else {
            struct ahr_reservation res;
            TCHECK(ahr_reserve(ring, (uint32_t)m, len, 3, 10000000000ll, &res) == 0);
            memcpy((uint8_t *)ahr_base(ring) + res.data_offset, buf, len);
            TCHECK(ahr_commit(ring, &res, &pub, "n", 1, "{}", 2) == 0);
        }
        atomic_fetch_add(&published, 1);
    }
    TCHECK(ahr_leave(ring, (uint32_t)m) == 0);
    atomic_fetch_add(&producers_done, 1);
    return NULL;
}

/* Check one delivered message; returns 0 to acknowledge it, 1 after nacking it. */
static int check_msg(uint32_t gi, uint32_t m, const struct ahr_msg *msg, uint64_t *n)
{
    const uint8_t *d = (const uint8_t *)ahr_base(ring) + msg->data_offset;
    uint64_t id;
    memcpy(&id, d, 8);
    if (id != msg->id || id == 0 || id > MAXID || msg->data_len != len_of(id) ||
        msg->attempts < 1) {
        fprintf(stderr, "bad message: id %" PRIu64 "/%" PRIu64 " len %" PRIu64 "\n", id,
                msg->id, msg->data_len);
        return -1;
    }
    for (uint64_t i = 8; i < msg->data_len; i++)
        if (d[i] != pattern(id, i)) {
            fprintf(stderr, "id %" PRIu64 ": byte %" PRIu64 " corrupt\n", id, i);
            return -1;
        }
    if (msg->attempts == 1 && atomic_exchange(&first_seen[gi][id], 1)) {
        fprintf(stderr, "group %u: id %" PRIu64 " first-delivered twice\n", gi, id);
        return -1;
    }
    if (msg->attempts > 1)
        atomic_fetch_add(&redeliveries, 1);
    if (++*n % 61 == 0) { /* give it back: it must come again */
        if (ahr_nack(ring, group[gi], m, msg->seq, 0) != 0)
            return -1;
        atomic_fetch_add(&nacks, 1);
        return 1;
    }
    return 0;
}

static int mark_acked(uint32_t gi, uint64_t id)
{
    if (atomic_exchange(&acked[gi][id], 1)) {
        fprintf(stderr, "group %u: id %" PRIu64 " acknowledged twice\n", gi, id);
        return -1;
    }
    atomic_fetch_add(&acked_count[gi], 1);
    return 0;
}

static void *consumer(void *arg)
{
    uint32_t gi = (uint32_t)(uintptr_t)arg / NCONS, batch = (uint32_t)(uintptr_t)arg % 2;
    int m = ahr_join(ring, AHR_ROLE_CONSUMER);
    TCHECK(m >= 0);
    struct ahr_msg msgs[8];
    uint64_t seqs[8], n = 0;
    uint64_t give_up = now_ns() + run_ns + 60000000000ull;
    while (!atomic_load(&failed)) {
        if (atomic_load(&producers_done) == NPROD &&
            atomic_load(&acked_count[gi]) == atomic_load(&published))
            break;
        TCHECK(now_ns() < give_up); /* lost messages would spin here forever */
        int got = batch ? ahr_get_next_batch(ring, group[gi], (uint32_t)m, 8, 20000000, msgs)
                        : ahr_get_next(ring, group[gi], (uint32_t)m, 20000000, msgs);
        if (got == -EAGAIN)
            continue;
        if (got < 0)
            fprintf(stderr, "group %u: get_next returned %d\n", gi, got);
        if (!batch) {
            TCHECK(got == 0);
            got = 1;
        }
        TCHECK(got > 0);
        uint32_t k = 0;
        for (int i = 0; i < got; i++) {
            int rc = check_msg(gi, (uint32_t)m, &msgs[i], &n);
            TCHECK(rc >= 0);
            if (rc == 0)
                seqs[k++] = msgs[i].seq;
        }
        if (batch) {
            TCHECK(ahr_ack_batch(ring, group[gi], (uint32_t)m, seqs, k) == (int)k);
        } else if (k) {
            TCHECK(ahr_ack(ring, group[gi], (uint32_t)m, seqs[0]) == 0);
            if (n % 13 == 0) /* never twice */
                TCHECK(ahr_ack(ring, group[gi], (uint32_t)m, seqs[0]) == -ESTALE);
        }
        for (int i = 0, j = 0; i < got; i++)
            if (j < (int)k && msgs[i].seq == seqs[j]) {
                TCHECK(mark_acked(gi, msgs[i].id) == 0);
                j++;
            }
    }
    TCHECK(ahr_leave(ring, (uint32_t)m) == 0);
    return NULL;
}

int main(void)
{
    double secs = 2.0;
#ifdef UNDER_TSAN
    secs = 1.0;
#endif
    const char *env = getenv("AHR_TEST_SECONDS");
    if (env)
        secs = atof(env);
    run_ns = (uint64_t)(secs * 1e9);
    const char *names[] = {"g1", "g2"};
    ring = make_ring("threads", 64, 256, names, NGROUPS);
    int s = ahr_stream_index(ring, "t", 1);
    CHECK(s >= 0);
    stream = (uint32_t)s;
    for (int i = 0; i < NGROUPS; i++) {
        int g = ahr_group_open(ring, names[i], AHR_ALL_STREAMS);
        CHECK(g >= 0);
        group[i] = (uint32_t)g;
        CHECK_RC(ahr_group_set_resend(ring, group[i], 30000000000ull, 255), 0);
    }
    pthread_t th[NPROD + NGROUPS * NCONS];
    for (uintptr_t i = 0; i < NGROUPS * NCONS; i++)
        CHECK_RC(pthread_create(&th[NPROD + i], NULL, consumer, (void *)i), 0);
    for (uintptr_t i = 0; i < NPROD; i++)
        CHECK_RC(pthread_create(&th[i], NULL, producer, (void *)(i * 50)), 0);
    for (int i = 0; i < NPROD + NGROUPS * NCONS; i++)
        pthread_join(th[i], NULL);
    CHECK(!atomic_load(&failed));

    uint64_t total = atomic_load(&published);
    CHECK(total > 100);
    struct ahr_ring_stats rs;
    CHECK_RC(ahr_ring_stats(ring, &rs), 0);
    for (uint32_t gi = 0; gi < NGROUPS; gi++) {
        for (uint64_t id = 1; id <= total; id++)
            if (!acked[gi][id] || !first_seen[gi][id]) {
                fprintf(stderr, "group %u: id %" PRIu64 " never acknowledged\n", gi, id);
                return 1;
            }
        CHECK(acked_count[gi] == total && !acked[gi][total + 1]);
        struct ahr_group_stats gs;
        CHECK_RC(ahr_group_stats(ring, group[gi], &gs), 0);
        CHECK(gs.floor == rs.head && gs.next == rs.head);
        CHECK(gs.acked == total && gs.delivered == total + gs.redelivered);
        CHECK(gs.deadlettered == 0 && gs.nacked == 0);
    }
    CHECK(atomic_load(&redeliveries) == atomic_load(&nacks));
    CHECK(rs.members == 0);
    ahr_detach(ring);
    printf("test_threads: ok (%" PRIu64 " messages x %d groups, %" PRIu64 " in runs of 2..4 "
           "by ahr_send_batch, %" PRIu64 " nacks, %.1f s)\n",
           total, NGROUPS, (uint64_t)atomic_load(&batched), (uint64_t)atomic_load(&nacks), secs);
    return 0;
}
