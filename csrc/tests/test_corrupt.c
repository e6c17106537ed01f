/*
 * Shared memory is untrusted input (a property test, fixed seed). A ring with messages,
 * claims, a nack, streams and groups is snapshot; then, many times for each part of the
 * segment (header immutable fields, header mutable words, member table, group table,
 * descriptors, claims, stream table, slot area), random bytes of that part are flipped:
 *  - immutable header: flipped in a copy written to a new segment file, attach must fail
 *    with -EBADMSG or -EPROTO;
 *  - everything else: flipped in place, then every produce / consume / read call runs with
 *    short timeouts: each must return 0, a count, or a negative errno, every message it
 *    hands out must lie inside the mapping, and nothing may crash or hang (SIGALRM
 *    watchdog). Run under `make asan` to catch out-of-bounds reads.
 * Also: a segment truncated after creation, a foreign file of random bytes, a zero-filled
 * file and a layout version mismatch (with a valid checksum) fail cleanly.
 */
#include "harness.h" /* first: it defines _GNU_SOURCE */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <sys/mman.h>

#include "seg_internal.h"

#define SLOTS 16u
#define SLOT_SIZE 256u
#define MS 1000000ll
#if defined(__SANITIZE_ADDRESS__)
#define ITERS 120
#else
#define ITERS 250
#endif

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint64_t rnd(uint64_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng % n;
}

static const char *region_name = "setup";
static int iteration;
static void on_alarm(int sig)
{
    char buf[128];
    int n = snprintf(buf, sizeof buf, "hang (signal %d) in region %s, iteration %d\n", sig,
                     region_name, iteration);
    if (write(2, buf, (size_t)n) < 0)
        _exit(1);
    _exit(1);
}

/* A call's result: 0, a non-negative count, or a negative errno. */
#define RC_OK(expr)                                                                        \
    do {                                                                                   \
        long long rc_ = (long long)(expr);                                                 \
        if (rc_ < -4095) {                                                                 \
            fprintf(stderr, "%s:%d: %s returned %lld in region %s, iteration %d\n",         \
                    __FILE__, __LINE__, #expr, rc_, region_name, iteration);               \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

static void check_msg_bounds(struct ahr_ring *r, const struct ahr_msg *m)
{
    uint64_t size = ahr_size(r);
    CHECK(m->data_offset <= size && m->data_len <= size - m->data_offset);
    CHECK(m->name_offset <= size &&
          (uint64_t)m->name_len + m->meta_len <= size - m->name_offset);
    volatile uint8_t sum = 0; /* touch every byte: ASan sees any read outside */
    const uint8_t *b = ahr_base(r);
    for (uint64_t i = 0; i < m->data_len; i++)
        sum ^= b[m->data_offset + i];
    (void)sum;
}

/* Every call that reads or writes the segment, with short timeouts. */
static void exercise(struct ahr_ring *r, const char *name, uint32_t g, uint32_t s)
{
    struct ahr_ring_stats rs;
    struct ahr_group_stats gs;
    struct ahr_msg m, batch[4];
    struct ahr_reservation res;
    char buf[SLOTS * SLOT_SIZE];
    uint64_t seq;

    RC_OK(ahr_ring_stats(r, &rs));
    for (uint32_t i = 0; i < 4; i++) {
        RC_OK(ahr_group_stats(r, i, &gs));
        RC_OK(ahr_group_name(r, i, buf, sizeof buf));
        RC_OK(ahr_stream_name(r, i, buf, sizeof buf));
        RC_OK(ahr_stream_finished(r, i));
    }
    RC_OK(ahr_stream_index(r, "s", 1));
    RC_OK(ahr_stream_index(r, "other", 5));
    RC_OK(ahr_stream_next_id(r, s));
    RC_OK(ahr_group_open(r, "g", AHR_ALL_STREAMS));
    int h = ahr_group_open(r, "newgroup", AHR_ALL_STREAMS);
    RC_OK(h);
    int member = ahr_join(r, AHR_ROLE_CONSUMER);
    RC_OK(member);
    uint32_t mb = member >= 0 ? (uint32_t)member : 0;
    for (int k = 0; k < 3; k++) {
        int rc = ahr_get_next(r, g, mb, MS, &m);
        RC_OK(rc);
        if (rc == 0) {
            check_msg_bounds(r, &m);
            RC_OK(ahr_read_tail(r, &m, buf, sizeof buf));
            RC_OK(ahr_find_claim(r, g, mb, m.stream, m.id, &seq));
            RC_OK(k == 1 ? ahr_nack(r, g, mb, m.seq, 0) : ahr_ack(r, g, mb, m.seq));
        }
    }
    int n = ahr_get_next_batch(r, g, mb, 4, MS, batch);
    RC_OK(n);
    for (int i = 0; i < n; i++) {
        check_msg_bounds(r, &batch[i]);
        seq = batch[i].seq;
        RC_OK(ahr_ack_batch(r, g, mb, &seq, 1));
    }
    if (h >= 0) {
        RC_OK(ahr_get_next(r, (uint32_t)h, mb, 0, &m));
        RC_OK(ahr_group_set_resend(r, (uint32_t)h, 5 * MS, 2));
        RC_OK(ahr_group_retire(r, (uint32_t)h));
    }
    int prod = ahr_join(r, AHR_ROLE_PRODUCER);
    RC_OK(prod);
    uint32_t pm = prod >= 0 ? (uint32_t)prod : 0;
    memset(buf, 0x5a, sizeof buf);
    struct ahr_pub pub = make_pub(s, 1000, 100);
    RC_OK(ahr_send(r, pm, buf, &pub, "n", 1, "{}", 2, MS, NULL));
    RC_OK(ahr_send_batch(r, pm, buf, 40, 3, 2000, s, MS));
    int rc = ahr_reserve(r, pm, 300, 10, MS, &res);
    RC_OK(rc);
    if (rc == 0) {
        CHECK(res.data_offset <= ahr_size(r) && res.capacity <= ahr_size(r) - res.data_offset);
        memset((char *)ahr_base(r) + res.data_offset, 1, res.capacity); /* all ours */
        pub = make_pub(s, 3000, 300);
        RC_OK(ahr_commit(r, &res, &pub, "x", 1, NULL, 0));
    }
    rc = ahr_reserve(r, pm, 10, 0, MS, &res);
    RC_OK(rc);
    if (rc == 0)
        RC_OK(ahr_abort(r, &res));
    rc = ahr_read_last(r, buf, sizeof buf, &m);
    RC_OK(rc);
    if (rc == 0)
        check_msg_bounds(r, &m);
    rc = ahr_read_by_id(r, s, 3, buf, sizeof buf, &m);
    RC_OK(rc);
    if (rc == 0)
        check_msg_bounds(r, &m);
    RC_OK(ahr_stream_finish(r, s, -1));
    struct ahr_ring *r2;
    rc = ahr_attach(name, &r2); /* the mutable parts are not checked on attach */
    CHECK(rc == 0);
    ahr_detach(r2);
    if (member >= 0)
        RC_OK(ahr_leave(r, mb));
    if (prod >= 0)
        RC_OK(ahr_leave(r, pm));
}

static void write_file(const char *name, const void *data, size_t len)
{
    char path[128];
    snprintf(path, sizeof path, "/dev/shm/%s", name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    CHECK(write(fd, data, len) == (ssize_t)len);
    close(fd);
}

static char other[64];
static void cleanup_other(void) { ahr_unlink(other); }

int main(void)
{
    signal(SIGALRM, on_alarm);
    const char *groups[] = {"g", "h"};
    struct ahr_config cfg;
    ahr_config_default(&cfg);
    cfg.slot_count = SLOTS;
    cfg.slot_size = SLOT_SIZE;
    cfg.max_groups = 4;
    cfg.max_members = 8;
    cfg.max_streams = 4;
    struct ahr_ring *r;
    const char *name = test_name("corrupt");
    CHECK_RC(ahr_create(name, &cfg, groups, 2, 0600, &r), 0);
    snprintf(other, sizeof other, "ahr_ctest_corrupt2_%d", (int)getpid());
    ahr_unlink(other);
    atexit(cleanup_other);

    struct seg_parts parts;
    seg_parts_of(&cfg, &parts);
    CHECK(parts.total == ahr_size(r)); /* the test's idea of the layout is ring.c's */

    /* a ring with some of everything: messages, claims, a nack, an ack, a tombstone */
    int prod = ahr_join(r, AHR_ROLE_PRODUCER), cons = ahr_join(r, AHR_ROLE_CONSUMER);
    int g = ahr_group_open(r, "g", AHR_ALL_STREAMS), s = ahr_stream_index(r, "s", 1);
    CHECK(prod >= 0 && cons >= 0 && g >= 0 && s >= 0);
    static char data[3 * SLOT_SIZE];
    for (uint64_t id = 1; id <= 8; id++) {
        memset(data, (int)id, sizeof data);
        struct ahr_pub pub = make_pub((uint32_t)s, id, (id * 97) % (2 * SLOT_SIZE));
        CHECK_RC(ahr_send(r, (uint32_t)prod, data, &pub, "name", 4, "{\"k\":1}", 7, 0, NULL), 0);
    }
    struct ahr_reservation res;
    CHECK_RC(ahr_reserve(r, (uint32_t)prod, 10, 0, 0, &res), 0);
    CHECK_RC(ahr_abort(r, &res), 0);
    struct ahr_msg m;
    for (int k = 0; k < 3; k++) {
        CHECK_RC(ahr_get_next(r, (uint32_t)g, (uint32_t)cons, 0, &m), 0);
        if (k == 0)
            CHECK_RC(ahr_ack(r, (uint32_t)g, (uint32_t)cons, m.seq), 0);
        if (k == 1)
            CHECK_RC(ahr_nack(r, (uint32_t)g, (uint32_t)cons, m.seq, 1000 * MS), 0);
    }

    uint64_t size = ahr_size(r);
    uint8_t *base = ahr_base(r);
    uint8_t *pristine = malloc(size), *copy = malloc(size);
    CHECK(pristine && copy);
    memcpy(pristine, base, size);

    struct region {
        const char *name;
        uint64_t start, end;
    } regions[] = {
        {"header-immutable", 0, offsetof(struct seg_header, checksum) + 8},
        {"header-mutable", offsetof(struct seg_header, head), sizeof(struct seg_header)},
        {"members", parts.members, parts.groups},
        {"groups", parts.groups, parts.descs},
        {"descriptors", parts.descs, parts.claims},
        {"claims", parts.claims, parts.streams},
        {"streams", parts.streams, parts.streams + cfg.max_streams * sizeof(struct seg_stream)},
        {"slots", parts.slots, parts.total},
    };
    int attach_fail[2] = {0, 0};
    for (size_t ri = 0; ri < sizeof regions / sizeof regions[0]; ri++) {
        struct region *reg = &regions[ri];
        region_name = reg->name;
        for (iteration = 0; iteration < ITERS; iteration++) {
            memcpy(ri == 0 ? copy : base, pristine, size);
            uint8_t *target = ri == 0 ? copy : base;
            uint64_t flips = 1 + rnd(ri == 0 ? 3 : 8);
            for (uint64_t f = 0; f < flips; f++) {
                uint64_t at = reg->start + rnd(reg->end - reg->start);
                /* whole words now and then: small values and all-ones are the likely lies */
                if (rnd(4) == 0 && at + 8 <= reg->end) {
                    uint64_t v = rnd(2) ? rnd(64) : UINT64_MAX - rnd(64);
                    memcpy(target + (at & ~7ull), &v, 8);
                } else {
                    target[at] ^= (uint8_t)(1 + rnd(255));
                }
            }
            alarm(20);
            if (ri == 0) {
                write_file(other, copy, size);
                struct ahr_ring *bad = NULL;
                int rc = ahr_attach(other, &bad);
                if (rc == 0 && memcmp(copy, pristine, reg->end) == 0) { /* flips undid */
                    ahr_detach(bad);
                } else if (rc != -EBADMSG && rc != -EPROTO) {
                    fprintf(stderr, "attach of a corrupt header returned %d (iteration %d)\n",
                            rc, iteration);
                    return 1;
                } else {
                    attach_fail[rc == -EPROTO]++;
                }
            } else {
                exercise(r, name, (uint32_t)g, (uint32_t)s);
            }
            alarm(0);
        }
    }
    CHECK(attach_fail[0] > 0 && attach_fail[1] > 0);
    memcpy(base, pristine, size);
    region_name = "files";

    /* a version mismatch, checksum valid: -EPROTO */
    memcpy(copy, pristine, size);
    struct seg_header *h = (struct seg_header *)copy;
    h->version = AHR_LAYOUT_VERSION + 1;
    h->checksum = seg_header_checksum(h);
    write_file(other, copy, size);
    struct ahr_ring *bad;
    CHECK_RC(ahr_attach(other, &bad), -EPROTO);
    /* the same copy with the version restored attaches: the checksum helper is right */
    h->version = AHR_LAYOUT_VERSION;
    h->checksum = seg_header_checksum(h);
    write_file(other, copy, size);
    CHECK_RC(ahr_attach(other, &bad), 0);
    ahr_detach(bad);
    /* a config that passes the checksum but not validation: -EBADMSG */
    h->config.slot_count = 3;
    h->checksum = seg_header_checksum(h);
    write_file(other, copy, size);
    CHECK_RC(ahr_attach(other, &bad), -EBADMSG);
    /* truncated after creation: shorter than its header says, or than a header */
    write_file(other, pristine, size / 2);
    CHECK_RC(ahr_attach(other, &bad), -EBADMSG);
    write_file(other, pristine, 100);
    CHECK_RC(ahr_attach(other, &bad), -EBADMSG);
    write_file(other, pristine, 0);
    CHECK_RC(ahr_attach(other, &bad), -EBADMSG);
    /* a foreign file of random bytes */
    for (uint64_t i = 0; i < size; i++)
        copy[i] = (uint8_t)rnd(256);
    write_file(other, copy, size);
    CHECK_RC(ahr_attach(other, &bad), -EBADMSG);
    /* all zeros (a creator that never finished): attach gives up after its wait */
    memset(copy, 0, size);
    write_file(other, copy, size);
    alarm(20);
    CHECK_RC(ahr_attach(other, &bad), -EBADMSG);
    alarm(0);
    /* the real segment truncated in place (ftruncate on the live file) */
    char path[128];
    snprintf(path, sizeof path, "/dev/shm/%s", name);
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0);
    CHECK_RC(ftruncate(fd, (off_t)(size - 4096)), 0);
    close(fd);
    CHECK_RC(ahr_attach(name, &bad), -EBADMSG);
    /* r's own mapping now ends past the file: touching it would SIGBUS, so only unmap */
    ahr_detach(r);
    free(pristine);
    free(copy);
    printf("test_corrupt: ok (%d iterations x 8 parts; header flips: %d EBADMSG, %d EPROTO)\n",
           ITERS, attach_fail[0], attach_fail[1]);
    return 0;
}
