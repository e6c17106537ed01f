/* A NULL ring handle (a caller's closed handle): every call taking a ring returns -EBADF
 * and touches no memory. */
#include "harness.h" /* first: it defines _GNU_SOURCE */

#include <errno.h>

int main(void)
{
    struct ahr_ring *r = NULL;
    struct ahr_msg msg, msgs[2];
    struct ahr_reservation res = {0};
    struct ahr_pub pub = {1, 4, 0, 0, 0, 0, 0};
    struct ahr_batch_shape shape;
    struct ahr_group_stats gstats;
    struct ahr_ring_stats rstats;
    uint64_t seq = 0, seqs[1] = {0};
    uint32_t handles[4];
    char buf[64];

    CHECK_RC(ahr_join(r, AHR_ROLE_PRODUCER), -EBADF);
    CHECK_RC(ahr_leave(r, 0), -EBADF);
    CHECK_RC(ahr_group_open(r, "g", AHR_ALL_STREAMS), -EBADF);
    CHECK_RC(ahr_group_retire(r, 0), -EBADF);
    CHECK_RC(ahr_group_name(r, 0, buf, sizeof buf), -EBADF);
    CHECK_RC(ahr_group_find(r, "g", AHR_ALL_STREAMS), -EBADF);
    CHECK_RC(ahr_group_list(r, handles, 4), -EBADF);
    CHECK_RC(ahr_group_set_resend(r, 0, 1000000, 3), -EBADF);
    CHECK_RC(ahr_stream_index(r, "s", 1), -EBADF);
    CHECK_RC(ahr_stream_name(r, 0, buf, sizeof buf), -EBADF);
    CHECK_RC(ahr_stream_next_id(r, 0), -EBADF);
    CHECK_RC(ahr_stream_finish(r, 0, -1), -EBADF);
    CHECK_RC(ahr_stream_finished(r, 0), -EBADF);
    CHECK_RC(ahr_reserve(r, 0, 4, 0, 0, &res), -EBADF);
    CHECK_RC(ahr_commit(r, &res, &pub, NULL, 0, NULL, 0), -EBADF);
    CHECK_RC(ahr_abort(r, &res), -EBADF);
    CHECK_RC(ahr_send(r, 0, "data", &pub, NULL, 0, NULL, 0, 0, NULL), -EBADF);
    CHECK_RC(ahr_send_batch(r, 0, "data", 4, 1, 1, 0, 0), -EBADF);
    CHECK_RC(ahr_get_next(r, 0, 0, 0, &msg), -EBADF);
    CHECK_RC(ahr_get_next_batch(r, 0, 0, 2, 0, msgs), -EBADF);
    CHECK_RC(ahr_batch_shape(r, msgs, 2, &shape), -EBADF);
    CHECK_RC(ahr_ack(r, 0, 0, 0), -EBADF);
    CHECK_RC(ahr_ack_batch(r, 0, 0, seqs, 1), -EBADF);
    CHECK_RC(ahr_find_claim(r, 0, 0, 0, 1, &seq), -EBADF);
    CHECK_RC(ahr_nack(r, 0, 0, 0, 0), -EBADF);
    CHECK_RC(ahr_release(r, 0, 0, 0), -EBADF);
    CHECK_RC(ahr_read_last(r, buf, sizeof buf, &msg), -EBADF);
    CHECK_RC(ahr_read_by_id(r, 0, 1, buf, sizeof buf, &msg), -EBADF);
    CHECK_RC(ahr_read_part(r, 0, 1, 1, buf, sizeof buf, &msg), -EBADF);
    CHECK_RC(ahr_read_tail(r, &msg, buf, sizeof buf), -EBADF);
    CHECK_RC(ahr_group_stats(r, 0, &gstats), -EBADF);
    CHECK_RC(ahr_ring_stats(r, &rstats), -EBADF);
    CHECK_RC(ahr_live_members(r), -EBADF);
    ahr_detach(r); /* a no-op */
    printf("test_closed: ok\n");
    return 0;
}
