/*
 * Dead processes are recovered, not waited for: fork()ed children are SIGKILLed
 *  (a) a consumer holding claims -> another member gets them (attempts 2), none lost,
 *      and it no longer counts as a live member;
 *  (b) a producer between reserve and commit -> consumers skip its reservation (a
 *      tombstone), the ring stays usable and the space comes back;
 *  (c) a producer after moving the head but before writing its descriptor: once exactly
 *      (the child fakes that state through layout.h and kills itself), then a producer
 *      killed at random moments, many times, with the invariants checked after each:
 *      every message intact, ids increasing, at most the killed one's message missing,
 *      floor == next == head after draining, dead member entries reused; the same for
 *      a producer killed in ahr_send_batch (at most its run in flight missing);
 *  (d) a member whose pid looks alive but whose start time differs (a recycled pid) is
 *      treated as dead: its claims are redelivered and its entry reused.
 */
#include "harness.h" /* first: it defines _GNU_SOURCE */

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "seg_internal.h"

#define SEC 1000000000ll

/* In a child: never exit() (atexit would unlink the parent's segments). */
#define CCHECK(cond)                                                                       \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "child %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            _exit(3);                                                                      \
        }                                                                                  \
    } while (0)

static char names[4][64];
static int n_names;
static void cleanup(void)
{
    for (int i = 0; i < n_names; i++)
        ahr_unlink(names[i]);
}

static struct ahr_ring *new_ring(const char *tag, uint32_t slots, uint32_t max_members)
{
    struct ahr_config cfg;
    ahr_config_default(&cfg);
    cfg.slot_count = slots;
    cfg.slot_size = 128;
    cfg.max_members = max_members;
    char *name = names[n_names++];
    snprintf(name, sizeof names[0], "ahr_ctest_crash_%s_%d", tag, (int)getpid());
    ahr_unlink(name);
    const char *groups[] = {"g"};
    struct ahr_ring *r = NULL;
    CHECK_RC(ahr_create(name, &cfg, groups, 1, 0600, &r), 0);
    return r;
}

/* fork() a child that dies with the test, whatever happens to the test. */
static pid_t spawn(void)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(3);
    }
    return pid;
}

static uint8_t pattern(uint64_t id, uint64_t i) { return (uint8_t)(id * 11 + i); }
/* 1..3 slots; the same for runs of four ids, so they can go in one ahr_send_batch */
static uint64_t len_of(uint64_t id) { return 1 + ((id / 4) * 29) % 300; }

static int send_id(struct ahr_ring *r, int m, uint32_t s, uint64_t id)
{
    uint8_t buf[512];
    for (uint64_t i = 0; i < len_of(id); i++)
        buf[i] = pattern(id, i);
    struct ahr_pub pub = make_pub(s, id, len_of(id));
    return ahr_send(r, (uint32_t)m, buf, &pub, NULL, 0, NULL, 0, 0, NULL);
}

static void check_msg(struct ahr_ring *r, const struct ahr_msg *m)
{
    const uint8_t *d = (const uint8_t *)ahr_base(r) + m->data_offset;
    CHECK(m->data_len == len_of(m->id) && m->data_offset + m->data_len <= ahr_size(r));
    for (uint64_t i = 0; i < m->data_len; i++)
        CHECK(d[i] == pattern(m->id, i));
}

/* In a child: attach to the parent's segment and join it as `role` (exits on failure). */
static struct ahr_ring *child_join(const char *name, uint32_t role, int *member)
{
    struct ahr_ring *cr;
    CCHECK(ahr_attach(name, &cr) == 0);
    *member = ahr_join(cr, role);
    CCHECK(*member >= 0);
    return cr;
}

static void kill_child(pid_t pid)
{
    int st;
    CHECK_RC(kill(pid, SIGKILL), 0);
    CHECK_RC(waitpid(pid, &st, 0), pid);
    if (!WIFSIGNALED(st)) { /* it died on its own: a CCHECK failed */
        fprintf(stderr, "child exited with %d before the kill\n", WEXITSTATUS(st));
        exit(1);
    }
}

/* Drain group g: every message intact, acknowledged, until the floor reaches the head. */
static uint64_t drain(struct ahr_ring *r, int g, int m, uint64_t *last_id, uint64_t *gaps)
{
    uint64_t n = 0;
    for (int idle = 0; idle < 40;) {
        struct ahr_msg msg;
        int rc = ahr_get_next(r, (uint32_t)g, (uint32_t)m, SEC / 20, &msg);
        if (rc == -EAGAIN) {
            struct ahr_group_stats gs;
            struct ahr_ring_stats rs;
            CHECK_RC(ahr_group_stats(r, (uint32_t)g, &gs), 0);
            CHECK_RC(ahr_ring_stats(r, &rs), 0);
            if (gs.floor == rs.head && gs.next == rs.head)
                return n;
            idle++;
            continue;
        }
        CHECK_RC(rc, 0);
        check_msg(r, &msg);
        if (last_id) {
            if (msg.id <= *last_id)
                fprintf(stderr, "drain: id %" PRIu64 " after %" PRIu64 ", seq %" PRIu64
                        " attempts %u\n", msg.id, *last_id, msg.seq, msg.attempts);
            CHECK(msg.id > *last_id); /* each id once, in order */
            *gaps += msg.id - *last_id - 1;
            *last_id = msg.id;
        }
        CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)m, msg.seq), 0);
        n++;
    }
    fprintf(stderr, "drain: the floor never reached the head\n");
    exit(1);
}

static void test_consumer_killed(void)
{
    struct ahr_ring *r = new_ring("a", 16, 8);
    int prod = ahr_join(r, AHR_ROLE_PRODUCER), cons = ahr_join(r, AHR_ROLE_CONSUMER);
    int g = ahr_group_open(r, "g", AHR_ALL_STREAMS), s = ahr_stream_index(r, "s", 1);
    CHECK(prod >= 0 && cons >= 0 && g >= 0 && s >= 0);
    for (uint64_t id = 1; id <= 6; id++)
        CHECK_RC(send_id(r, prod, (uint32_t)s, id), 0);
    int pfd[2];
    CHECK_RC(pipe(pfd), 0);
    pid_t pid = spawn();
    if (pid == 0) {
        int m;
        struct ahr_ring *cr = child_join(names[n_names - 1], AHR_ROLE_CONSUMER, &m);
        struct ahr_msg msg;
        for (int i = 0; i < 3; i++)
            CCHECK(ahr_get_next(cr, (uint32_t)g, (uint32_t)m, 0, &msg) == 0 && msg.id == (uint64_t)i + 1);
        CCHECK(write(pfd[1], "x", 1) == 1);
        for (;;)
            pause();
    }
    char c;
    CHECK_RC(read(pfd[0], &c, 1), 1);
    CHECK_RC(ahr_live_members(r), 3); /* this process's two members and the child */
    kill_child(pid);
    CHECK_RC(ahr_live_members(r), 2);
    int seen[7] = {0}, again = 0;
    for (int i = 0; i < 6; i++) {
        struct ahr_msg msg;
        CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)cons, 5 * SEC, &msg), 0);
        check_msg(r, &msg);
        CHECK(msg.id >= 1 && msg.id <= 6 && !seen[msg.id]++);
        CHECK(msg.attempts == (msg.id <= 3 ? 2u : 1u)); /* the dead one's come again */
        again += msg.attempts == 2;
        CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)cons, msg.seq), 0);
    }
    CHECK(again == 3);
    CHECK_RC(drain(r, g, cons, NULL, NULL), 0);
    struct ahr_group_stats gs;
    CHECK_RC(ahr_group_stats(r, (uint32_t)g, &gs), 0);
    CHECK(gs.redelivered == 3 && gs.acked == 6);
    close(pfd[0]);
    close(pfd[1]);
    ahr_detach(r);
}

static void test_producer_killed_reserved(void)
{
    struct ahr_ring *r = new_ring("b", 16, 8);
    int prod = ahr_join(r, AHR_ROLE_PRODUCER), cons = ahr_join(r, AHR_ROLE_CONSUMER);
    int g = ahr_group_open(r, "g", AHR_ALL_STREAMS), s = ahr_stream_index(r, "s", 1);
    CHECK(prod >= 0 && cons >= 0 && g >= 0 && s >= 0);
    CHECK_RC(send_id(r, prod, (uint32_t)s, 1), 0);
    int pfd[2];
    CHECK_RC(pipe(pfd), 0);
    pid_t pid = spawn();
    if (pid == 0) {
        int m;
        struct ahr_ring *cr = child_join(names[n_names - 1], AHR_ROLE_PRODUCER, &m);
        struct ahr_reservation res;
        CCHECK(ahr_reserve(cr, (uint32_t)m, 200, 0, 0, &res) == 0);
        memset((char *)ahr_base(cr) + res.data_offset, 0xee, 100); /* half written */
        CCHECK(write(pfd[1], "x", 1) == 1);
        for (;;)
            pause();
    }
    char c;
    CHECK_RC(read(pfd[0], &c, 1), 1);
    kill_child(pid);
    for (uint64_t id = 2; id <= 3; id++) /* published behind the dead reservation */
        CHECK_RC(send_id(r, prod, (uint32_t)s, id), 0);
    uint64_t last = 0, gaps = 0;
    CHECK_RC(drain(r, g, cons, &last, &gaps), 3);
    CHECK(last == 3 && gaps == 0);
    /* the space came back: several full laps go through */
    for (uint64_t id = 4; id < 200; id++) {
        CHECK_RC(send_id(r, prod, (uint32_t)s, id), 0);
        if (id % 4 == 0)
            drain(r, g, cons, &last, &gaps);
    }
    drain(r, g, cons, &last, &gaps);
    CHECK(last == 199 && gaps == 0);
    close(pfd[0]);
    close(pfd[1]);
    ahr_detach(r);
}

/* Fork a producer of stream s (ahr_reserve/ahr_commit one by one, or ahr_send_batch of
 * runs of four ids), let the consumer take a random number of messages, SIGKILL the
 * producer, drain, and check that a live producer can go on at once; `iterations` times. */
static void kill_producers(struct ahr_ring *r, const char *name, int s, int g, int cons,
                           int prod, int iterations, int batch, uint64_t *last,
                           uint64_t *gaps, uint64_t *kills, uint64_t *delivered)
{
    uint64_t rng = 12345, gaps0 = *gaps, kills0 = *kills;
    /* ids lost per kill: the message in flight; for batches the run in flight (four ids)
     * and the id drawn for the next run */
    uint64_t max_lost = batch ? 5 : 1;
    for (int it = 0; it < iterations; it++) {
        pid_t pid = spawn();
        if (pid == 0) {
            int m;
            struct ahr_ring *cr = child_join(name, AHR_ROLE_PRODUCER, &m);
            uint8_t buf[4 * 512];
            for (int64_t carry = 0;;) {
                int64_t id = carry ? carry : ahr_stream_next_id(cr, (uint32_t)s);
                carry = 0;
                CCHECK(id > 0);
                uint64_t len = len_of((uint64_t)id);
                for (uint64_t i = 0; i < len; i++)
                    buf[i] = pattern((uint64_t)id, i);
                if (batch) { /* the ids that follow with the same length, in one call */
                    uint32_t k = 1;
                    for (; k < 4; k++) {
                        int64_t more = ahr_stream_next_id(cr, (uint32_t)s);
                        CCHECK(more > 0);
                        if (len_of((uint64_t)more) != len) {
                            carry = more; /* the next run starts with it */
                            break;
                        }
                        for (uint64_t i = 0; i < len; i++)
                            buf[k * len + i] = pattern((uint64_t)more, i);
                    }
                    CCHECK(ahr_send_batch(cr, (uint32_t)m, buf, len, k, (uint64_t)id,
                                          (uint32_t)s, -1) == (int)k);
                    continue;
                }
                struct ahr_reservation res;
                CCHECK(ahr_reserve(cr, (uint32_t)m, len, 0, -1, &res) == 0);
                memcpy((char *)ahr_base(cr) + res.data_offset, buf, len);
                struct ahr_pub pub = make_pub((uint32_t)s, (uint64_t)id, len);
                CCHECK(ahr_commit(cr, &res, &pub, NULL, 0, NULL, 0) == 0);
            }
        }
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t take = (uint32_t)(rng >> 33) % 40; /* consume a while, then kill */
        for (uint32_t i = 0; i < take; i++) {
            struct ahr_msg msg;
            int rc = ahr_get_next(r, (uint32_t)g, (uint32_t)cons, SEC / 100, &msg);
            if (rc == -EAGAIN)
                continue;
            CHECK_RC(rc, 0);
            check_msg(r, &msg);
            if (msg.id <= *last)
                fprintf(stderr, "it %d: id %" PRIu64 " after %" PRIu64 ", seq %" PRIu64
                        " attempts %u\n", it, msg.id, *last, msg.seq, msg.attempts);
            CHECK(msg.id > *last);
            *gaps += msg.id - *last - 1;
            *last = msg.id;
            CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)cons, msg.seq), 0);
            (*delivered)++;
        }
        kill_child(pid);
        (*kills)++;
        *delivered += drain(r, g, cons, last, gaps);
        CHECK(*gaps - gaps0 <= max_lost * (*kills - kills0));
        /* the ring is usable by a live producer at once */
        int64_t id = ahr_stream_next_id(r, (uint32_t)s);
        CHECK(id > 0);
        CHECK_RC(send_id(r, prod, (uint32_t)s, (uint64_t)id), 0);
        *delivered += drain(r, g, cons, last, gaps);
        CHECK(*last == (uint64_t)id);
    }
}

static void test_producer_killed_after_head(void)
{
    struct ahr_ring *r = new_ring("c", 16, 6);
    const char *name = names[n_names - 1];
    int cons = ahr_join(r, AHR_ROLE_CONSUMER), prod = ahr_join(r, AHR_ROLE_PRODUCER);
    int g = ahr_group_open(r, "g", AHR_ALL_STREAMS), s = ahr_stream_index(r, "s", 1);
    CHECK(prod >= 0 && cons >= 0 && g >= 0 && s >= 0);
    uint64_t last = 0, gaps = 0;

    /* 1. exactly at the point: head moved by 3 with the intent recorded, no descriptor */
    pid_t pid = spawn();
    if (pid == 0) {
        int m;
        struct ahr_ring *cr = child_join(name, AHR_ROLE_PRODUCER, &m);
        struct seg_member *e = seg_member_of(cr, (uint32_t)m);
        struct seg_header *h = seg_header_of(cr);
        uint64_t head = atomic_load(&h->head);
        atomic_store(&e->intent_end, head + 3);
        atomic_store(&e->intent_seq, head + 1); /* as take_sequences does */
        CCHECK(atomic_compare_exchange_strong(&h->head, &head, head + 3));
        raise(SIGKILL);
        _exit(3);
    }
    int st;
    CHECK_RC(waitpid(pid, &st, 0), pid);
    CHECK(WIFSIGNALED(st));
    CHECK_RC(ahr_stream_next_id(r, (uint32_t)s), 1); /* ids come from the shared counter */
    CHECK_RC(send_id(r, prod, (uint32_t)s, 1), 0);
    CHECK_RC(drain(r, g, cons, &last, &gaps), 1);
    CHECK(last == 1 && gaps == 0);

    /* 2. a producer killed at random moments; only 6 member entries, so the dead ones'
     * entries must be reused */
    uint64_t kills = 0, delivered = 1;
    int iterations = 40;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    iterations = 25;
#endif
    kill_producers(r, name, s, g, cons, prod, iterations, 0, &last, &gaps, &kills, &delivered);
    struct ahr_ring_stats rs;
    CHECK_RC(ahr_ring_stats(r, &rs), 0);
    /* 60 children joined through 6 entries: the dead ones' entries were reused (the
     * count includes dead entries not yet taken over: ring_stats does not probe pids) */
    CHECK(rs.members >= 2 && rs.members <= 6);
    CHECK(delivered > (uint64_t)iterations);
    printf("  (c) %" PRIu64 " kills, %" PRIu64 " delivered, %" PRIu64 " lost in flight\n",
           kills, delivered, gaps);

    /* 3. the same with ahr_send_batch */
    uint64_t gaps_before = gaps, kills_before = kills, delivered_before = delivered;
    kill_producers(r, name, s, g, cons, prod, iterations, 1, &last, &gaps, &kills,
                   &delivered);
    CHECK(delivered - delivered_before > (uint64_t)iterations);
    CHECK_RC(ahr_ring_stats(r, &rs), 0);
    CHECK(rs.members >= 2 && rs.members <= 6);
    printf("  (c) send_batch: %" PRIu64 " kills, %" PRIu64 " delivered, %" PRIu64
           " lost in flight\n", kills - kills_before, delivered - delivered_before,
           gaps - gaps_before);
    ahr_detach(r);
}

static void test_recycled_pid(void)
{
    struct ahr_ring *r = new_ring("d", 16, 3);
    int prod = ahr_join(r, AHR_ROLE_PRODUCER), x = ahr_join(r, AHR_ROLE_CONSUMER);
    int y = ahr_join(r, AHR_ROLE_CONSUMER);
    int g = ahr_group_open(r, "g", AHR_ALL_STREAMS), s = ahr_stream_index(r, "s", 1);
    CHECK(prod >= 0 && x >= 0 && y >= 0 && g >= 0 && s >= 0);
    CHECK_RC(ahr_join(r, AHR_ROLE_CONSUMER), -EUSERS); /* all three alive */
    for (uint64_t id = 1; id <= 3; id++)
        CHECK_RC(send_id(r, prod, (uint32_t)s, id), 0);
    struct ahr_msg a, b, msg;
    CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)x, 0, &a), 0);
    CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)x, 0, &b), 0);
    /* x's pid is ours and alive, but the entry now tells another process start time */
    struct seg_member *e = seg_member_of(r, (uint32_t)x);
    atomic_store(&e->start_time, atomic_load(&e->start_time) + 4242);
    int seen[4] = {0};
    for (int i = 0; i < 3; i++) {
        CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)y, 5 * SEC, &msg), 0);
        check_msg(r, &msg);
        CHECK(msg.id >= 1 && msg.id <= 3 && !seen[msg.id]++);
        CHECK(msg.attempts == (msg.id <= 2 ? 2u : 1u));
        CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)y, msg.seq), 0);
    }
    CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)x, a.seq), -ESTALE);
    /* its entry is free for the taking again */
    CHECK_RC(ahr_join(r, AHR_ROLE_CONSUMER), x);
    CHECK_RC(ahr_join(r, AHR_ROLE_CONSUMER), -EUSERS);
    ahr_detach(r);
}

int main(void)
{
    atexit(cleanup);
    test_consumer_killed();
    printf("  (a) consumer killed: ok\n");
    test_producer_killed_reserved();
    printf("  (b) producer killed between reserve and commit: ok\n");
    test_producer_killed_after_head();
    printf("  (c) producer killed after moving the head: ok\n");
    test_recycled_pid();
    printf("  (d) recycled pid: ok\n");
    printf("test_crash: ok\n");
    return 0;
}
