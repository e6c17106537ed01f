/*
 * asapo_hpc ring: zero-copy message delivery between processes on one node through a
 * ring of fixed-size slots in POSIX shared memory.
 *
 * Model (ASAPO's): producers publish messages (data + name + JSON metadata) into a ring;
 * durable consumer groups each see every message, and inside a group every message goes
 * to exactly one member, which acknowledges it. Slots are reused only once every durable
 * group has acknowledged them. Latest-value readers never hold the producer back.
 *
 * Conventions (liburing's): every function that can fail returns 0 (or a non-negative
 * value) on success and a negative errno on failure; errno is never relied upon.
 *   -EINVAL      bad argument             -EMSGSIZE  message larger than the ring
 *   -ENOENT      no such segment/group    -EBADMSG   the segment is corrupt
 *   -EPROTO      layout version mismatch -EEXIST    already exists / settings differ
 *   -EAGAIN      nothing available before the timeout
 *   -ENOSPC      ring full for the whole timeout
 *   -ESTALE      the claim/reservation/latest read is no longer valid
 *                (lease expired and redelivered, or data overwritten)
 *   -EUSERS      the member, group or stream table is full
 *   -EBADF       the ring handle is NULL (a caller's closed handle); every function
 *                taking a ring returns it instead of touching memory
 *   -ENAMETOOLONG / -ENOMEM / other errno from the OS on shm_open, mmap, ...
 *
 * Thread safety: a ring handle may be shared by threads; a member index (from
 * ahr_join) belongs to one thread at a time.
 */
#ifndef ASAPO_HPC_RING_H
#define ASAPO_HPC_RING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define AHR_LAYOUT_VERSION 1u
#define AHR_NAME_MAX 200u        /* segment name length, without the leading '/' */
#define AHR_GROUP_NAME_MAX 47u   /* consumer group name length */
#define AHR_STREAM_NAME_MAX 95u  /* stream name length */

/* Message flags (struct ahr_msg.flags, struct ahr_pub.flags). */
#define AHR_FLAG_FINISH 1u       /* stream-finished marker; metadata names the next stream */

/* ahr_group_open: the group follows every stream. */
#define AHR_ALL_STREAMS 0xffffffffu

/* Member roles (ahr_join). */
#define AHR_ROLE_PRODUCER 1u
#define AHR_ROLE_CONSUMER 2u
#define AHR_ROLE_READER 3u

struct ahr_ring;                 /* an attached segment (process-local handle) */

/* Quality-of-service settings, fixed when the segment is created. */
struct ahr_config {
    uint32_t slot_count;    /* slots in the ring; a power of two, 2 .. 2^24 */
    uint32_t slot_size;     /* bytes per slot; a multiple of 64, >= 64 */
    uint32_t max_groups;    /* consumer groups, 1 .. 64 */
    uint32_t max_members;   /* attached producers + consumers, 1 .. 4095 */
    uint32_t max_streams;   /* distinct stream names, 1 .. 4096 */
    uint32_t max_attempts;  /* deliveries of one message before it is dead-lettered, 1 .. 255 */
    uint64_t lease_ns;      /* a claim not acknowledged within this goes to another member */
};

/* A reservation: where to write a message of up to `capacity` bytes. */
struct ahr_reservation {
    uint64_t seq;           /* ring sequence number of the message */
    uint64_t data_offset;   /* offset of the data from the segment base */
    uint64_t capacity;      /* bytes available for data + name + metadata */
    uint32_t span;          /* slots taken */
    uint32_t member;        /* the reserving member */
};

/* What a producer publishes besides the data bytes. */
struct ahr_pub {
    uint64_t id;            /* message id within its stream, >= 1 */
    uint64_t data_len;
    uint64_t timestamp_ns;  /* CLOCK_REALTIME nanoseconds; 0 = now */
    uint32_t stream;        /* stream index from ahr_stream_index */
    uint32_t flags;         /* AHR_FLAG_* */
    uint32_t ds_substream;  /* dataset part, 1-based; 0 = not a dataset */
    uint32_t ds_size;       /* dataset parts; 0 = not a dataset */
};

/* A delivered message: offsets are from the segment base (see ahr_base). */
struct ahr_msg {
    uint64_t seq;
    uint64_t id;
    uint64_t data_offset;
    uint64_t data_len;
    uint64_t name_offset;   /* name bytes, then meta bytes directly after */
    uint64_t timestamp_ns;
    uint32_t name_len;
    uint32_t meta_len;
    uint32_t stream;
    uint32_t flags;
    uint32_t ds_substream;
    uint32_t ds_size;
    uint32_t attempts;      /* 1 for a first delivery */
    uint32_t span;
};

/* Counters of one consumer group. */
struct ahr_group_stats {
    uint64_t next;          /* next sequence to hand out */
    uint64_t floor;         /* every sequence below is acknowledged */
    uint64_t delivered;
    uint64_t acked;
    uint64_t redelivered;
    uint64_t deadlettered;
    uint32_t nacked;        /* negatively acknowledged, waiting for redelivery */
    uint32_t durable;       /* always 1 for now */
    uint32_t stream_filter; /* the stream index it follows, or AHR_ALL_STREAMS */
};

/* Counters of the ring. */
struct ahr_ring_stats {
    uint64_t head;          /* next sequence to reserve */
    uint64_t published;     /* sequence + 1 of the newest published message, 0 if none */
    uint64_t min_floor;     /* lowest floor over durable groups (head when none) */
    uint32_t members;       /* member entries in use (live, or dead and not yet reused) */
    uint32_t groups;
};

/* Fill `cfg` with the defaults: 1024 slots of 64 KiB, 8 groups, 64 members, 64 streams,
 * 3 attempts, 30 s lease. */
void ahr_config_default(struct ahr_config *cfg);

/* Bytes a segment with `cfg` occupies, or 0 if cfg is invalid. */
uint64_t ahr_segment_size(const struct ahr_config *cfg);

/* Create the segment /dev/shm/<name> with permission bits `mode` (e.g. 0600) and the
 * durable groups named in `groups` (n_groups of them, each starting at sequence 0, so no
 * message is reclaimed before they read it). Fails with -EEXIST if it exists. */
int ahr_create(const char *name, const struct ahr_config *cfg, const char *const *groups,
               uint32_t n_groups, uint32_t mode, struct ahr_ring **out);

/* Attach to an existing segment, validating magic, version, sizes and checksum. */
int ahr_attach(const char *name, struct ahr_ring **out);

/* Unmap and free the handle (does not leave members: call ahr_leave first). */
void ahr_detach(struct ahr_ring *ring);

/* Remove the segment name; attached processes keep their mapping. */
int ahr_unlink(const char *name);

/* Base address and size of the mapping: message offsets are relative to the base. */
void *ahr_base(const struct ahr_ring *ring);
uint64_t ahr_size(const struct ahr_ring *ring);

/* The settings the segment was created with. */
void ahr_config_get(const struct ahr_ring *ring, struct ahr_config *cfg);

/* Take a member entry (pid + start time recorded, so a dead member is recognised).
 * Returns the member index. Entries of dead members are reused. */
int ahr_join(struct ahr_ring *ring, uint32_t role);

/* Give the member entry back; claims it still holds go to other members. */
int ahr_leave(struct ahr_ring *ring, uint32_t member);

/* Find or create the durable consumer group `name` (groups are always durable: they hold
 * the producer back; latest-value readers are the volatile kind). A group follows one
 * stream (`stream_filter`, skipping the others' messages) or all (AHR_ALL_STREAMS). A group
 * created after the segment starts at the oldest message the other groups still hold (or
 * at the head: older messages then come from disk). Returns the group handle (generation
 * << 8 | index) that the other group calls take; -EEXIST if the group exists with another
 * filter, -EUSERS if the table is full. */
int ahr_group_open(struct ahr_ring *ring, const char *name, uint32_t stream_filter);

/* Retire a group: it no longer holds the producer back, and its handles fail with
 * -ENOENT. For a group whose stream has finished, or one that is no longer wanted. */
int ahr_group_retire(struct ahr_ring *ring, uint32_t group);

/* Copy the name of the group with this handle into buf (NUL-terminated); returns its
 * length, or -ENOENT if the handle is stale or unknown. */
int ahr_group_name(const struct ahr_ring *ring, uint32_t group, char *buf, uint32_t cap);

/* The handle of the live group `name` following `stream_filter`, without making it:
 * -ENOENT if there is none, -EEXIST if it exists with another filter. */
int ahr_group_find(const struct ahr_ring *ring, const char *name, uint32_t stream_filter);

/* Write the handles of up to cap live groups into handles; returns how many groups are
 * live (more than cap: call again with room for all). A snapshot: groups may be opened or
 * retired meanwhile, so a listed handle can already fail with -ENOENT. */
int ahr_group_list(const struct ahr_ring *ring, uint32_t *handles, uint32_t cap);

/* Change a group's redelivery settings (ASAPO's set_resend_nacs): lease and attempts. */
int ahr_group_set_resend(struct ahr_ring *ring, uint32_t group, uint64_t lease_ns,
                         uint32_t max_attempts);

/* Find or register a stream name; returns its index. */
int ahr_stream_index(struct ahr_ring *ring, const char *name, uint32_t len);

/* Copy stream `index`'s name into buf (NUL-terminated); returns its length or -ENOENT. */
int ahr_stream_name(const struct ahr_ring *ring, uint32_t index, char *buf, uint32_t cap);

/* Next auto id of a stream (1, 2, ...), shared by every producer of the segment. */
int64_t ahr_stream_next_id(struct ahr_ring *ring, uint32_t stream);

/* Record that a stream is finished, naming the next stream's index (or -1 for none).
 * Producers call this just before publishing the finish marker. */
int ahr_stream_finish(struct ahr_ring *ring, uint32_t stream, int32_t next_stream);

/* 0 if the stream is not finished; 1 if finished with no next stream; 2 + the next
 * stream's index if finished with one. */
int ahr_stream_finished(const struct ahr_ring *ring, uint32_t stream);

/* Reserve room for `data_len` bytes of data plus `tail_cap` bytes of name + metadata.
 * Waits up to timeout_ns (<0: forever) for every durable group to release the space. */
int ahr_reserve(struct ahr_ring *ring, uint32_t member, uint64_t data_len, uint32_t tail_cap,
                int64_t timeout_ns, struct ahr_reservation *out);

/* Publish a reserved message: writes name and metadata after the data, fills the
 * descriptor, then makes it visible with one release store. */
int ahr_commit(struct ahr_ring *ring, const struct ahr_reservation *res,
               const struct ahr_pub *pub, const char *name, uint32_t name_len,
               const char *meta, uint32_t meta_len);

/* Give a reservation back: it becomes a tombstone every group skips. */
int ahr_abort(struct ahr_ring *ring, const struct ahr_reservation *res);

/* Copy n bytes into shared memory with streaming (non-temporal) stores where the CPU has
 * them: large frames then bypass the cache instead of evicting it, about twice as fast as
 * memcpy for detector-sized frames. For filling reserved slots; ahr_send uses it for
 * messages of AHR_STREAM_COPY_MIN bytes and more. */
#define AHR_STREAM_COPY_MIN (1u << 20)
void ahr_copy_stream(void *dst, const void *src, uint64_t n);

/* reserve + one copy of `data` + commit. */
int ahr_send(struct ahr_ring *ring, uint32_t member, const void *data,
             const struct ahr_pub *pub, const char *name, uint32_t name_len,
             const char *meta, uint32_t meta_len, int64_t timeout_ns, uint64_t *seq_out);

/* Publish n messages of `each_len` bytes taken one after another from `data`, with ids
 * first_id, first_id + 1, ... in one stream and no name or metadata. Space is taken in runs
 * (one move of the head, one wake-up of consumers and one timestamp per run of up to a
 * quarter of the ring, never across the ring's end). Returns how many were published
 * (fewer if the ring stayed full for timeout_ns: as many as fit), or a negative errno. */
int ahr_send_batch(struct ahr_ring *ring, uint32_t member, const void *data,
                   uint64_t each_len, uint32_t n, uint64_t first_id, uint32_t stream,
                   int64_t timeout_ns);

/* Claim the next message for `group` (a redelivery first, if one is due). Waits up to
 * timeout_ns (<0: forever): a bounded spin, then a futex sleep. -EAGAIN if none came. */
int ahr_get_next(struct ahr_ring *ring, uint32_t group, uint32_t member, int64_t timeout_ns,
                 struct ahr_msg *out);

/* Claim up to `n` messages; waits like ahr_get_next for the first only. Returns the count. */
int ahr_get_next_batch(struct ahr_ring *ring, uint32_t group, uint32_t member, uint32_t n,
                       int64_t timeout_ns, struct ahr_msg *out);

/* What the messages of a batch have in common, for bindings that hand out a view per
 * message: when they lie `step` slots apart within one lap, with one data length, a
 * binding can take their views from a table made once per slot (see ahr_batch_shape). */
struct ahr_batch_shape {
    uint64_t data_len;      /* the data length of every message, or UINT64_MAX if they differ */
    uint32_t first_slot;    /* slot of the first message (0 for an empty batch) */
    uint32_t step;          /* slots from each message to the next, the same for all, with
                             * every message at its slot's start and none past the ring's end;
                             * else 0 */
    uint32_t flags;         /* OR of the messages' flags (AHR_FLAG_FINISH: a marker among them) */
    uint32_t reserved;      /* 0 */
};

/* Describe n messages claimed from this ring (e.g. by ahr_get_next_batch) in *out. Reads
 * only msgs, never shared memory; a message not where its sequence says (offsets not from
 * this ring) gives step 0. Returns 0, or -EINVAL for null pointers. */
int ahr_batch_shape(const struct ahr_ring *ring, const struct ahr_msg *msgs, uint32_t n,
                    struct ahr_batch_shape *out);

/* Acknowledge a claimed message; -ESTALE if its lease expired and it went elsewhere. */
int ahr_ack(struct ahr_ring *ring, uint32_t group, uint32_t member, uint64_t seq);

/* Acknowledge n messages; returns how many were acknowledged (stale ones are skipped). */
int ahr_ack_batch(struct ahr_ring *ring, uint32_t group, uint32_t member,
                  const uint64_t *seqs, uint32_t n);

/* Find the sequence of message (stream, id) that `member` holds for `group` (the
 * group's unacknowledged window is searched). -ENOENT if this member does not hold it. */
int ahr_find_claim(const struct ahr_ring *ring, uint32_t group, uint32_t member,
                   uint32_t stream, uint64_t id, uint64_t *seq);

/* Negative acknowledgement: redeliver after delay_ns to any member of the group. */
int ahr_nack(struct ahr_ring *ring, uint32_t group, uint32_t member, uint64_t seq,
             uint64_t delay_ns);

/* Give back a claimed message this member will not use (e.g. prefetched, never handed
 * out): any member may take it at once, and the delivery does not count as an attempt
 * (the group's redelivered counter still counts it). -ESTALE if it is not held. */
int ahr_release(struct ahr_ring *ring, uint32_t group, uint32_t member, uint64_t seq);

/* Latest-value read: copies the newest message's data (up to cap bytes) into dst and fills
 * out; -ESTALE if it was overwritten while copying (try again), -EAGAIN if none yet. */
int ahr_read_last(const struct ahr_ring *ring, void *dst, uint64_t cap, struct ahr_msg *out);

/* Like ahr_read_last for the message (stream, id) if it is still in the ring (-ENOENT). */
int ahr_read_by_id(const struct ahr_ring *ring, uint32_t stream, uint64_t id, void *dst,
                   uint64_t cap, struct ahr_msg *out);

/* Like ahr_read_by_id for part `substream` (1-based; 0 = a message that is not a dataset
 * part) of dataset (stream, id). -ENOENT if it is not in the ring (never published, or
 * overwritten), -ESTALE if it was overwritten while being copied, -EMSGSIZE if its data
 * exceed cap (out then holds its data_len), -EINVAL on bad arguments. */
int ahr_read_part(const struct ahr_ring *ring, uint32_t stream, uint64_t id,
                  uint32_t substream, void *dst, uint64_t cap, struct ahr_msg *out);

/* Copy a message's name + metadata bytes (name_len + meta_len) into dst. For claimed
 * messages this always succeeds; for latest reads -ESTALE tells of an overwrite. */
int ahr_read_tail(const struct ahr_ring *ring, const struct ahr_msg *msg, void *dst,
                  uint64_t cap);

int ahr_group_stats(const struct ahr_ring *ring, uint32_t group, struct ahr_group_stats *out);
int ahr_ring_stats(const struct ahr_ring *ring, struct ahr_ring_stats *out);

/* Member entries whose process is alive (pid and start time checked). 0: no live process
 * uses the ring, e.g. a segment left behind by a killed run. */
int ahr_live_members(const struct ahr_ring *ring);

#ifdef __cplusplus
}
#endif
#endif /* ASAPO_HPC_RING_H */
