/* Minimal test harness: CHECK aborts the test with file:line; exit 0 pass, 1 fail, 77 skip. */
#ifndef AHR_TEST_HARNESS_H
#define AHR_TEST_HARNESS_H
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "asapo_hpc/ring.h"

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);       \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

#define CHECK_RC(expr, want)                                                               \
    do {                                                                                   \
        long long rc_ = (long long)(expr);                                                 \
        if (rc_ != (long long)(want)) {                                                    \
            fprintf(stderr, "%s:%d: %s returned %lld, wanted %lld\n", __FILE__, __LINE__,  \
                    #expr, rc_, (long long)(want));                                        \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

/* CLOCK_MONOTONIC in nanoseconds, for tests' deadlines. */
static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A segment name unique to this test process, removed at exit. */
static char test_segment[64];
static inline void test_cleanup(void) { ahr_unlink(test_segment); }
static inline const char *test_name(const char *tag)
{
    snprintf(test_segment, sizeof test_segment, "ahr_ctest_%s_%d", tag, (int)getpid());
    ahr_unlink(test_segment);
    atexit(test_cleanup);
    return test_segment;
}

static inline struct ahr_ring *make_ring(const char *tag, uint32_t slots, uint32_t slot_size,
                                  const char *const *groups, uint32_t n_groups)
{
    struct ahr_config cfg;
    ahr_config_default(&cfg);
    cfg.slot_count = slots;
    cfg.slot_size = slot_size;
    struct ahr_ring *r = NULL;
    CHECK_RC(ahr_create(test_name(tag), &cfg, groups, n_groups, 0600, &r), 0);
    return r;
}

static inline struct ahr_pub make_pub(uint32_t stream, uint64_t id, uint64_t len)
{
    struct ahr_pub p = {0};
    p.id = id;
    p.data_len = len;
    p.stream = stream;
    return p;
}
#endif
