/*
 * Latest-value readers racing a fast producer over a small ring with no durable group
 * (so the producer overwrites freely): every copy ahr_read_last returns must be intact
 * (each byte of the payload encodes its id, and the length follows from the id), or the
 * call must say -ESTALE. Likewise ahr_read_by_id for recent ids (-ENOENT once overwritten)
 * and ahr_read_tail (name/metadata encode the id too). After the producer stops, the
 * newest messages are all readable by id and older ones are gone.
 *
 * Under ThreadSanitizer: these readers are seqlocks (copy, then re-check the descriptor),
 * which race by design with the producer's writes; the reports of those copies are
 * suppressed below, everything else is still checked.
 */
#include "harness.h" /* first: it defines _GNU_SOURCE */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#define SLOTS 8u
#define SLOT_SIZE 256u

/* The readers' stacks are often lost by TSan ("failed to restore the stack"), so the
 * producer's side is named too: in this program its only concurrent readers are the
 * seqlock readers (there is no durable group). */
const char *__tsan_default_suppressions(void);
const char *__tsan_default_suppressions(void)
{
    return "race:copy_if_intact\nrace:ahr_read_by_id\nrace:ahr_read_tail\nrace:ahr_send\n";
}

static struct ahr_ring *ring;
static uint32_t stream;
static _Atomic uint64_t last_id, stop;

static uint8_t byte_of(uint64_t id) { return (uint8_t)(id % 251 + 1); }
static uint64_t len_of(uint64_t id) { return 1 + (id * 53) % (2 * SLOT_SIZE - 80); }

static void *producer(void *arg)
{
    int m = ahr_join(ring, AHR_ROLE_PRODUCER);
    if (m < 0)
        abort();
    uint8_t buf[2 * SLOT_SIZE];
    for (uint64_t id = 1; !atomic_load(&stop); id++) {
        uint64_t len = len_of(id);
        memset(buf, byte_of(id), len);
        char meta[32];
        int ml = snprintf(meta, sizeof meta, "{\"id\":%" PRIu64 "}", id);
        struct ahr_pub pub = make_pub(stream, id, len);
        if (ahr_send(ring, (uint32_t)m, buf, &pub, NULL, 0, meta, (uint32_t)ml, 0, NULL))
            abort(); /* no durable group: the ring never holds the producer back */
        atomic_store(&last_id, id);
    }
    ahr_leave(ring, (uint32_t)m);
    return NULL;
}

/* 0 if msg + dst hold an intact copy of message msg->id */
static int intact(const struct ahr_msg *msg, const uint8_t *dst)
{
    if (msg->id == 0 || msg->data_len != len_of(msg->id) || msg->stream != stream)
        return -1;
    for (uint64_t i = 0; i < msg->data_len; i++)
        if (dst[i] != byte_of(msg->id))
            return -1;
    return 0;
}

int main(void)
{
    ring = make_ring("latest", SLOTS, SLOT_SIZE, NULL, 0);
    int s = ahr_stream_index(ring, "l", 1);
    CHECK(s >= 0);
    stream = (uint32_t)s;
    uint8_t dst[SLOTS * SLOT_SIZE];
    struct ahr_msg msg;
    CHECK_RC(ahr_read_last(ring, dst, sizeof dst, &msg), -EAGAIN); /* nothing yet */
    CHECK_RC(ahr_read_by_id(ring, stream, 1, dst, sizeof dst, &msg), -ENOENT);

    pthread_t th;
    CHECK_RC(pthread_create(&th, NULL, producer, NULL), 0);
    uint64_t ok = 0, stale = 0, by_id_ok = 0, by_id_gone = 0, tails = 0;
    uint64_t end = now_ns() + 1000000000ull;
    while (now_ns() < end || ok < 100) {
        /* sampled before the read: a commit may land between the read and any later look */
        uint64_t committed = atomic_load(&last_id);
        int rc = ahr_read_last(ring, dst, sizeof dst, &msg);
        if (rc == -ESTALE) {
            stale++;
        } else if (rc == -EAGAIN) {
            CHECK(committed == 0 && ok == 0); /* only before the first commit */
        } else {
            CHECK_RC(rc, 0);
            if (intact(&msg, dst)) {
                fprintf(stderr, "torn copy of id %" PRIu64 " (len %" PRIu64 ")\n", msg.id,
                        msg.data_len);
                return 1;
            }
            ok++;
            char tail[64], want[32];
            int wl = snprintf(want, sizeof want, "{\"id\":%" PRIu64 "}", msg.id);
            rc = ahr_read_tail(ring, &msg, tail, sizeof tail);
            CHECK(rc == 0 || rc == -ESTALE);
            if (rc == 0) {
                CHECK(msg.name_len == 0 && msg.meta_len == (uint32_t)wl);
                CHECK(memcmp(tail, want, (size_t)wl) == 0);
                tails++;
            }
        }
        uint64_t want = atomic_load(&last_id);
        if (want > 2) {
            want -= (ok + stale) % 6; /* the newest few: some still there, some not */
            rc = ahr_read_by_id(ring, stream, want, dst, sizeof dst, &msg);
            if (rc == 0) {
                if (msg.id != want || intact(&msg, dst))
                    fprintf(stderr, "by id %" PRIu64 ": got id %" PRIu64 " seq %" PRIu64
                            " len %" PRIu64 "/%" PRIu64 " byte0 %u/%u\n", want, msg.id,
                            msg.seq, msg.data_len, len_of(msg.id), dst[0], byte_of(msg.id));
                CHECK(msg.id == want && intact(&msg, dst) == 0);
                by_id_ok++;
            } else {
                CHECK_RC(rc, -ENOENT);
                by_id_gone++;
            }
        }
    }
    atomic_store(&stop, 1);
    pthread_join(th, NULL);

    /* quiet now: the newest message is read whole; ids within the last lap by id */
    uint64_t last = atomic_load(&last_id);
    CHECK_RC(ahr_read_last(ring, dst, sizeof dst, &msg), 0);
    CHECK(msg.id == last && intact(&msg, dst) == 0);
    CHECK_RC(ahr_read_last(ring, dst, msg.data_len - 1, &msg), msg.data_len > 1 ? -EMSGSIZE : 0);
    uint32_t found = 0;
    for (uint64_t id = last; id > 0 && id + 4 * SLOTS > last; id--) {
        int rc = ahr_read_by_id(ring, stream, id, dst, sizeof dst, &msg);
        if (rc == 0) {
            CHECK(msg.id == id && intact(&msg, dst) == 0);
            found++;
        } else {
            CHECK_RC(rc, -ENOENT);
        }
    }
    CHECK(found >= 1 && found <= SLOTS); /* a ring of 8 slots keeps at most 8 */
    CHECK_RC(ahr_read_by_id(ring, stream, last + 1, dst, sizeof dst, &msg), -ENOENT);
    CHECK_RC(ahr_read_by_id(ring, stream + 1, last, dst, sizeof dst, &msg), -ENOENT);
    CHECK_RC(ahr_read_by_id(ring, stream, 1, dst, sizeof dst, &msg), -ENOENT); /* overwritten */
    CHECK(ok >= 100);
    ahr_detach(ring);
    printf("test_latest: ok (%" PRIu64 " intact, %" PRIu64 " stale, by id %" PRIu64
           " found / %" PRIu64 " gone, %" PRIu64 " tails; %" PRIu64 " published)\n",
           ok, stale, by_id_ok, by_id_gone, tails, last);
    return 0;
}
