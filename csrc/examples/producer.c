/*
 * An acquisition-style producer in C: attach to (or create) a ring segment, register a
 * stream, publish N frames written in place (reserve -> fill -> commit, no copy), each
 * with a JSON metadata string, then the stream's finish marker.
 *
 *   producer SEGMENT [N_FRAMES [FRAME_BYTES [STREAM]]]
 *
 * SEGMENT is the /dev/shm name; the Python client's name for (beamtime, source) is
 * "asapo_hpc.<beamtime>.<source>". Frame i (id i, from 1) holds bytes (i + k) % 256 at
 * offset k, so a consumer can check every byte. Exit status 0 on success.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asapo_hpc/ring.h"

#define TIMEOUT_NS 10000000000ll /* wait up to 10 s for consumers to free space */

/* The names the Python client uses for the finish marker (asapo_hpc/client/message.py). */
#define FINISH_NAME "asapo_finish_stream"
#define NO_NEXT_STREAM "asapo_no_next"

static int fail(const char *what, int rc)
{
    fprintf(stderr, "producer: %s failed: %s\n", what, strerror(-rc));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s SEGMENT [N_FRAMES [FRAME_BYTES [STREAM]]]\n", argv[0]);
        return 2;
    }
    const char *segment = argv[1];
    uint64_t n_frames = argc > 2 ? strtoull(argv[2], NULL, 10) : 10;
    uint64_t frame_bytes = argc > 3 ? strtoull(argv[3], NULL, 10) : 4096;
    const char *stream_name = argc > 4 ? argv[4] : "default";

    /* Attach to the segment, or create it with the default settings if there is none. */
    struct ahr_ring *ring;
    int created = 0;
    int rc = ahr_attach(segment, &ring);
    if (rc == -ENOENT) {
        struct ahr_config cfg;
        ahr_config_default(&cfg);
        rc = ahr_create(segment, &cfg, NULL, 0, 0600, &ring);
        created = rc == 0;
    }
    if (rc)
        return fail("attach/create", rc);
    int member = ahr_join(ring, AHR_ROLE_PRODUCER);
    if (member < 0)
        return fail("join", member);
    int stream = ahr_stream_index(ring, stream_name, (uint32_t)strlen(stream_name));
    if (stream < 0)
        return fail("stream registration", stream);

    uint8_t *base = ahr_base(ring);
    for (uint64_t id = 1; id <= n_frames; id++) {
        char name[64], meta[160];
        int name_len = snprintf(name, sizeof name, "frame_%06llu.raw", (unsigned long long)id);
        int meta_len = snprintf(meta, sizeof meta,
                                "{\"frame\":%llu,\"bytes\":%llu,\"pattern\":\"(id+k)%%256\"}",
                                (unsigned long long)id, (unsigned long long)frame_bytes);
        /* 1. reserve room for the frame plus its name and metadata */
        struct ahr_reservation res;
        rc = ahr_reserve(ring, (uint32_t)member, frame_bytes, (uint32_t)(name_len + meta_len),
                         TIMEOUT_NS, &res);
        if (rc)
            return fail("reserve", rc);
        /* 2. fill it in place: here a detector would DMA into base + data_offset */
        uint8_t *frame = base + res.data_offset;
        for (uint64_t k = 0; k < frame_bytes; k++)
            frame[k] = (uint8_t)(id + k);
        /* 3. commit: one release store makes frame, name and metadata visible at once */
        struct ahr_pub pub = {.id = id, .data_len = frame_bytes, .stream = (uint32_t)stream};
        rc = ahr_commit(ring, &res, &pub, name, (uint32_t)name_len, meta, (uint32_t)meta_len);
        if (rc)
            return fail("commit", rc);
    }

    /* The finish marker: id last + 1, no data, metadata naming the next stream (none). */
    rc = ahr_stream_finish(ring, (uint32_t)stream, -1);
    if (rc)
        return fail("stream finish", rc);
    const char finish_meta[] = "{\"next_stream\":\"" NO_NEXT_STREAM "\"}";
    struct ahr_pub marker = {.id = n_frames + 1, .stream = (uint32_t)stream,
                             .flags = AHR_FLAG_FINISH};
    rc = ahr_send(ring, (uint32_t)member, NULL, &marker, FINISH_NAME, sizeof FINISH_NAME - 1,
                  finish_meta, sizeof finish_meta - 1, TIMEOUT_NS, NULL);
    if (rc)
        return fail("finish marker", rc);

    struct ahr_ring_stats stats;
    ahr_ring_stats(ring, &stats);
    printf("producer: %s segment %s, stream '%s': published %llu frames of %llu bytes and a "
           "finish marker (ring head %llu)\n",
           created ? "created" : "attached to", segment, stream_name,
           (unsigned long long)n_frames, (unsigned long long)frame_bytes,
           (unsigned long long)stats.head);
    ahr_leave(ring, (uint32_t)member);
    ahr_detach(ring);
    return 0;
}
