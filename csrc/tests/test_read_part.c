/*
 * ahr_read_part: latest-value reads of one part of a dataset (a live viewer assembles a
 * detector frame from them).
 *  - exact: datasets of PARTS parts (each part's bytes and metadata encode id and part) are
 *    read back part by part, byte for byte; read_by_id still works and cannot tell the
 *    parts apart; substream 0 finds only plain messages; wrong stream / id / part -ENOENT,
 *    a stream index out of range -EINVAL, a short buffer -EMSGSIZE with the length, a
 *    cap-0 probe, and parts overwritten by later laps are gone (-ENOENT).
 *  - racing: a producer overruns a small ring (no durable group) while the reader asks for
 *    parts of recent ids: every success is an intact copy of exactly the part asked for,
 *    every failure -ENOENT or -ESTALE.
 *  - untrusted memory: random bytes flipped in the descriptors and slots; every call
 *    returns 0 or a negative errno and a message it returns lies inside the mapping (run
 *    under `make asan` to catch a read outside).
 */
#include "harness.h" /* first: it defines _GNU_SOURCE */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "seg_internal.h"

#define SLOTS 16u
#define SLOT_SIZE 256u
#define PARTS 4u

/* As in test_latest: these readers race the producer's writes by design (seqlocks). */
const char *__tsan_default_suppressions(void);
const char *__tsan_default_suppressions(void)
{
    return "race:copy_if_intact\nrace:ahr_read_part\nrace:ahr_read_tail\nrace:ahr_send\n";
}

static uint8_t byte_of(uint64_t id, uint32_t part) { return (uint8_t)((id * 7 + part) % 251 + 1); }
static uint64_t len_of(uint64_t id, uint32_t part) { return 1 + (id * 31 + part * 17) % (SLOT_SIZE - 80); }

static int publish(struct ahr_ring *r, uint32_t m, uint32_t stream, uint64_t id, uint32_t part,
                   uint32_t n)
{
    uint8_t buf[SLOT_SIZE];
    uint64_t len = len_of(id, part);
    memset(buf, byte_of(id, part), len);
    char meta[48];
    int ml = snprintf(meta, sizeof meta, "{\"id\":%" PRIu64 ",\"part\":%u}", id, part);
    struct ahr_pub pub = make_pub(stream, id, len);
    pub.ds_substream = part;
    pub.ds_size = n;
    return ahr_send(r, m, buf, &pub, NULL, 0, meta, (uint32_t)ml, 0, NULL);
}

/* 0 if msg + dst are an intact copy of part `part` of `id` (data and metadata). */
static int intact(struct ahr_ring *r, const struct ahr_msg *msg, const uint8_t *dst,
                  uint64_t id, uint32_t part, int check_tail)
{
    if (msg->id != id || msg->ds_substream != part || msg->data_len != len_of(id, part))
        return -1;
    for (uint64_t i = 0; i < msg->data_len; i++)
        if (dst[i] != byte_of(id, part))
            return -1;
    if (!check_tail)
        return 0;
    char tail[64], want[48];
    int wl = snprintf(want, sizeof want, "{\"id\":%" PRIu64 ",\"part\":%u}", id, part);
    int rc = ahr_read_tail(r, msg, tail, sizeof tail);
    if (rc == -ESTALE)
        return 0; /* overwritten after the data copy: the data were still intact */
    return rc == 0 && msg->meta_len == (uint32_t)wl && memcmp(tail, want, (size_t)wl) == 0
               ? 0 : -1;
}

static void test_exact(void)
{
    struct ahr_ring *r = make_ring("part", SLOTS, SLOT_SIZE, NULL, 0);
    int s = ahr_stream_index(r, "d", 1), other = ahr_stream_index(r, "o", 1);
    CHECK(s >= 0 && other >= 0);
    uint32_t stream = (uint32_t)s;
    int m = ahr_join(r, AHR_ROLE_PRODUCER);
    CHECK(m >= 0);
    uint8_t dst[SLOT_SIZE];
    struct ahr_msg msg;
    CHECK_RC(ahr_read_part(r, stream, 1, 1, dst, sizeof dst, &msg), -ENOENT); /* none yet */

    for (uint64_t id = 1; id <= 3; id++)
        for (uint32_t part = 1; part <= PARTS; part++)
            CHECK_RC(publish(r, (uint32_t)m, stream, id, part, PARTS), 0);
    CHECK_RC(publish(r, (uint32_t)m, (uint32_t)other, 2, 0, 0), 0); /* a plain message */

    for (uint64_t id = 1; id <= 3; id++)
        for (uint32_t part = 1; part <= PARTS; part++) {
            memset(dst, 0, sizeof dst);
            CHECK_RC(ahr_read_part(r, stream, id, part, dst, sizeof dst, &msg), 0);
            CHECK(intact(r, &msg, dst, id, part, 1) == 0 && msg.ds_size == PARTS);
            CHECK(msg.stream == stream);
        }
    /* read_by_id cannot choose a part: it hands out the newest one */
    CHECK_RC(ahr_read_by_id(r, stream, 2, dst, sizeof dst, &msg), 0);
    CHECK(msg.ds_substream == PARTS);
    CHECK_RC(ahr_read_part(r, (uint32_t)other, 2, 0, dst, sizeof dst, &msg), 0);
    CHECK(intact(r, &msg, dst, 2, 0, 1) == 0 && msg.ds_size == 0);

    CHECK_RC(ahr_read_part(r, stream, 2, 0, dst, sizeof dst, &msg), -ENOENT);
    CHECK_RC(ahr_read_part(r, (uint32_t)other, 2, 1, dst, sizeof dst, &msg), -ENOENT);
    CHECK_RC(ahr_read_part(r, stream, 2, PARTS + 1, dst, sizeof dst, &msg), -ENOENT);
    CHECK_RC(ahr_read_part(r, stream, 4, 1, dst, sizeof dst, &msg), -ENOENT);
    struct ahr_config cfg;
    ahr_config_get(r, &cfg);
    CHECK_RC(ahr_read_part(r, cfg.max_streams, 2, 1, dst, sizeof dst, &msg), -EINVAL);
    CHECK_RC(ahr_read_part(r, stream, 2, 1, dst, sizeof dst, NULL), -EINVAL);
    CHECK_RC(ahr_read_part(r, stream, 2, 1, NULL, 8, &msg), -EINVAL);

    uint64_t want = len_of(3, 2);
    CHECK_RC(ahr_read_part(r, stream, 3, 2, dst, want - 1, &msg), -EMSGSIZE);
    CHECK(msg.data_len == want); /* enough to retry with the right buffer */
    CHECK_RC(ahr_read_part(r, stream, 3, 2, NULL, 0, &msg), -EMSGSIZE); /* a probe */
    CHECK_RC(ahr_read_part(r, stream, 3, 2, dst, want, &msg), 0);
    CHECK(intact(r, &msg, dst, 3, 2, 0) == 0);

    /* one lap later ids 1..3 are gone, the newest dataset is whole */
    for (uint64_t id = 4; id <= 4 + SLOTS / PARTS; id++)
        for (uint32_t part = 1; part <= PARTS; part++)
            CHECK_RC(publish(r, (uint32_t)m, stream, id, part, PARTS), 0);
    for (uint32_t part = 1; part <= PARTS; part++) {
        CHECK_RC(ahr_read_part(r, stream, 1, part, dst, sizeof dst, &msg), -ENOENT);
        CHECK_RC(ahr_read_part(r, stream, 3, part, dst, sizeof dst, &msg), -ENOENT);
        CHECK_RC(ahr_read_part(r, stream, 4 + SLOTS / PARTS, part, dst, sizeof dst, &msg), 0);
        CHECK(intact(r, &msg, dst, 4 + SLOTS / PARTS, part, 1) == 0);
    }
    CHECK_RC(ahr_read_part(r, (uint32_t)other, 2, 0, dst, sizeof dst, &msg), -ENOENT);
    ahr_leave(r, (uint32_t)m);
    ahr_detach(r);
    ahr_unlink(test_segment);
}

/* -- racing a producer that laps the reader ----------------------------------------------- */

static struct ahr_ring *race_ring;
static uint32_t race_stream;
static _Atomic uint64_t last_id, stop;

static void *producer(void *arg)
{
    int m = ahr_join(race_ring, AHR_ROLE_PRODUCER);
    if (m < 0)
        abort();
    for (uint64_t id = 1; !atomic_load(&stop); id++) {
        for (uint32_t part = 1; part <= PARTS; part++)
            if (publish(race_ring, (uint32_t)m, race_stream, id, part, PARTS))
                abort(); /* no durable group: the ring never holds the producer back */
        atomic_store(&last_id, id);
    }
    ahr_leave(race_ring, (uint32_t)m);
    return NULL;
}

static void test_race(void)
{
    race_ring = make_ring("partrace", SLOTS, SLOT_SIZE, NULL, 0);
    int s = ahr_stream_index(race_ring, "d", 1);
    CHECK(s >= 0);
    race_stream = (uint32_t)s;
    pthread_t th;
    CHECK_RC(pthread_create(&th, NULL, producer, NULL), 0);
    uint8_t dst[SLOT_SIZE];
    struct ahr_msg msg;
    uint64_t ok = 0, gone = 0, stale = 0, i = 0;
    uint64_t end = now_ns() + 500000000ull;
    while (now_ns() < end || ok < 100) {
        uint64_t newest = atomic_load(&last_id);
        if (newest < 2)
            continue;
        uint64_t id = newest - i % 4; /* the newest few frames: some there, some not */
        uint32_t part = 1 + (uint32_t)(i / 4 % PARTS);
        i++;
        int rc = ahr_read_part(race_ring, race_stream, id, part, dst, sizeof dst, &msg);
        if (rc == 0) {
            if (intact(race_ring, &msg, dst, id, part, 1)) {
                fprintf(stderr, "part %u of id %" PRIu64 ": got id %" PRIu64 " part %u len %"
                        PRIu64 "\n", part, id, msg.id, msg.ds_substream, msg.data_len);
                exit(1);
            }
            ok++;
        } else if (rc == -ESTALE) {
            stale++;
        } else {
            CHECK_RC(rc, -ENOENT);
            gone++;
        }
    }
    atomic_store(&stop, 1);
    pthread_join(th, NULL);
    uint64_t last = atomic_load(&last_id);
    for (uint32_t part = 1; part <= PARTS; part++) { /* quiet: the newest frame is whole */
        CHECK_RC(ahr_read_part(race_ring, race_stream, last, part, dst, sizeof dst, &msg), 0);
        CHECK(intact(race_ring, &msg, dst, last, part, 1) == 0);
    }
    printf("test_read_part: race ok (%" PRIu64 " intact, %" PRIu64 " gone, %" PRIu64
           " stale; %" PRIu64 " frames)\n", ok, gone, stale, last);
    ahr_detach(race_ring);
    ahr_unlink(test_segment);
}

/* -- corrupt descriptors and slots ----------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(uint64_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng % n;
}

static void check_bounds(struct ahr_ring *r, const struct ahr_msg *m)
{
    uint64_t size = ahr_size(r);
    CHECK(m->data_offset <= size && m->data_len <= size - m->data_offset);
    CHECK(m->name_offset <= size && (uint64_t)m->name_len + m->meta_len <= size - m->name_offset);
}

static void test_corrupt(void)
{
    struct ahr_ring *r = make_ring("partbad", SLOTS, SLOT_SIZE, NULL, 0);
    int s = ahr_stream_index(r, "d", 1);
    int m = ahr_join(r, AHR_ROLE_PRODUCER);
    CHECK(s >= 0 && m >= 0);
    for (uint64_t id = 1; id <= SLOTS / PARTS; id++)
        for (uint32_t part = 1; part <= PARTS; part++)
            CHECK_RC(publish(r, (uint32_t)m, (uint32_t)s, id, part, PARTS), 0);
    struct ahr_config cfg;
    ahr_config_get(r, &cfg);
    struct seg_parts parts;
    seg_parts_of(&cfg, &parts);
    CHECK(parts.total == ahr_size(r));
    uint8_t *base = ahr_base(r);
    uint64_t desc_bytes = parts.claims - parts.descs;
    uint8_t *saved = malloc(parts.total);
    CHECK(saved != NULL);
    memcpy(saved, base, parts.total);
    uint8_t dst[SLOTS * SLOT_SIZE];
    char tail[SLOTS * SLOT_SIZE];
    struct ahr_msg msg;
    uint64_t found = 0;
    for (int iter = 0; iter < 400; iter++) {
        memcpy(base, saved, parts.total);
        for (int k = 0; k < 1 + (int)rnd(8); k++) {
            if (rnd(4)) /* mostly descriptors: their lengths and ids are what is trusted */
                base[parts.descs + rnd(desc_bytes)] ^= (uint8_t)(1u << rnd(8));
            else
                base[parts.slots + rnd(parts.total - parts.slots)] = (uint8_t)rnd(256);
        }
        for (uint64_t id = 0; id <= SLOTS / PARTS + 1; id++)
            for (uint32_t part = 0; part <= PARTS + 1; part++) {
                int rc = ahr_read_part(r, (uint32_t)s, id, part, dst, sizeof dst, &msg);
                CHECK(rc == 0 || rc == -ENOENT || rc == -ESTALE || rc == -EMSGSIZE);
                if (rc == 0) {
                    check_bounds(r, &msg);
                    CHECK(msg.id == id && msg.ds_substream == part);
                    int trc = ahr_read_tail(r, &msg, tail, sizeof tail);
                    CHECK(trc == 0 || trc == -ESTALE || trc == -EINVAL);
                    found++;
                }
            }
    }
    CHECK(found > 0);
    memcpy(base, saved, parts.total);
    free(saved);
    printf("test_read_part: corrupt ok (%" PRIu64 " reads succeeded)\n", found);
    ahr_leave(r, (uint32_t)m);
    ahr_detach(r);
}

int main(void)
{
    test_exact();
    test_race();
    test_corrupt();
    printf("test_read_part: ok\n");
    return 0;
}
