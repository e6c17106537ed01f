/* cffi declarations mirroring ring.h (tests/ring/test_cdefs.py fails if they disagree).
 * Only what cffi's parser accepts: no includes, no expressions in defines. */
#define AHR_LAYOUT_VERSION ...
#define AHR_NAME_MAX ...
#define AHR_GROUP_NAME_MAX ...
#define AHR_STREAM_NAME_MAX ...
#define AHR_FLAG_FINISH ...
#define AHR_ALL_STREAMS ...
#define AHR_STREAM_COPY_MIN ...
#define AHR_ROLE_PRODUCER ...
#define AHR_ROLE_CONSUMER ...
#define AHR_ROLE_READER ...

struct ahr_ring;

struct ahr_config {
    uint32_t slot_count;
    uint32_t slot_size;
    uint32_t max_groups;
    uint32_t max_members;
    uint32_t max_streams;
    uint32_t max_attempts;
    uint64_t lease_ns;
};

struct ahr_reservation {
    uint64_t seq;
    uint64_t data_offset;
    uint64_t capacity;
    uint32_t span;
    uint32_t member;
};

struct ahr_pub {
    uint64_t id;
    uint64_t data_len;
    uint64_t timestamp_ns;
    uint32_t stream;
    uint32_t flags;
    uint32_t ds_substream;
    uint32_t ds_size;
};

struct ahr_msg {
    uint64_t seq;
    uint64_t id;
    uint64_t data_offset;
    uint64_t data_len;
    uint64_t name_offset;
    uint64_t timestamp_ns;
    uint32_t name_len;
    uint32_t meta_len;
    uint32_t stream;
    uint32_t flags;
    uint32_t ds_substream;
    uint32_t ds_size;
    uint32_t attempts;
    uint32_t span;
};

struct ahr_group_stats {
    uint64_t next;
    uint64_t floor;
    uint64_t delivered;
    uint64_t acked;
    uint64_t redelivered;
    uint64_t deadlettered;
    uint32_t nacked;
    uint32_t durable;
    uint32_t stream_filter;
};

struct ahr_ring_stats {
    uint64_t head;
    uint64_t published;
    uint64_t min_floor;
    uint32_t members;
    uint32_t groups;
};

struct ahr_batch_shape {
    uint64_t data_len;
    uint32_t first_slot;
    uint32_t step;
    uint32_t flags;
    uint32_t reserved;
};

void ahr_config_default(struct ahr_config *cfg);
uint64_t ahr_segment_size(const struct ahr_config *cfg);
int ahr_create(const char *name, const struct ahr_config *cfg, const char *const *groups, uint32_t n_groups, uint32_t mode, struct ahr_ring **out);
int ahr_attach(const char *name, struct ahr_ring **out);
void ahr_detach(struct ahr_ring *ring);
int ahr_unlink(const char *name);
void *ahr_base(const struct ahr_ring *ring);
uint64_t ahr_size(const struct ahr_ring *ring);
void ahr_config_get(const struct ahr_ring *ring, struct ahr_config *cfg);
int ahr_join(struct ahr_ring *ring, uint32_t role);
int ahr_leave(struct ahr_ring *ring, uint32_t member);
int ahr_group_open(struct ahr_ring *ring, const char *name, uint32_t stream_filter);
int ahr_group_retire(struct ahr_ring *ring, uint32_t group);
int ahr_group_name(const struct ahr_ring *ring, uint32_t group, char *buf, uint32_t cap);
int ahr_group_find(const struct ahr_ring *ring, const char *name, uint32_t stream_filter);
int ahr_group_list(const struct ahr_ring *ring, uint32_t *handles, uint32_t cap);
int ahr_group_set_resend(struct ahr_ring *ring, uint32_t group, uint64_t lease_ns, uint32_t max_attempts);
int ahr_stream_index(struct ahr_ring *ring, const char *name, uint32_t len);
int ahr_stream_name(const struct ahr_ring *ring, uint32_t index, char *buf, uint32_t cap);
int64_t ahr_stream_next_id(struct ahr_ring *ring, uint32_t stream);
int ahr_stream_finish(struct ahr_ring *ring, uint32_t stream, int32_t next_stream);
int ahr_stream_finished(const struct ahr_ring *ring, uint32_t stream);
int ahr_reserve(struct ahr_ring *ring, uint32_t member, uint64_t data_len, uint32_t tail_cap, int64_t timeout_ns, struct ahr_reservation *out);
int ahr_commit(struct ahr_ring *ring, const struct ahr_reservation *res, const struct ahr_pub *pub, const char *name, uint32_t name_len, const char *meta, uint32_t meta_len);
int ahr_abort(struct ahr_ring *ring, const struct ahr_reservation *res);
void ahr_copy_stream(void *dst, const void *src, uint64_t n);
int ahr_send(struct ahr_ring *ring, uint32_t member, const void *data, const struct ahr_pub *pub, const char *name, uint32_t name_len, const char *meta, uint32_t meta_len, int64_t timeout_ns, uint64_t *seq_out);
int ahr_send_batch(struct ahr_ring *ring, uint32_t member, const void *data, uint64_t each_len, uint32_t n, uint64_t first_id, uint32_t stream, int64_t timeout_ns);
int ahr_get_next(struct ahr_ring *ring, uint32_t group, uint32_t member, int64_t timeout_ns, struct ahr_msg *out);
int ahr_get_next_batch(struct ahr_ring *ring, uint32_t group, uint32_t member, uint32_t n, int64_t timeout_ns, struct ahr_msg *out);
int ahr_batch_shape(const struct ahr_ring *ring, const struct ahr_msg *msgs, uint32_t n, struct ahr_batch_shape *out);
int ahr_ack(struct ahr_ring *ring, uint32_t group, uint32_t member, uint64_t seq);
int ahr_ack_batch(struct ahr_ring *ring, uint32_t group, uint32_t member, const uint64_t *seqs, uint32_t n);
int ahr_find_claim(const struct ahr_ring *ring, uint32_t group, uint32_t member, uint32_t stream, uint64_t id, uint64_t *seq);
int ahr_nack(struct ahr_ring *ring, uint32_t group, uint32_t member, uint64_t seq, uint64_t delay_ns);
int ahr_release(struct ahr_ring *ring, uint32_t group, uint32_t member, uint64_t seq);
int ahr_read_last(const struct ahr_ring *ring, void *dst, uint64_t cap, struct ahr_msg *out);
int ahr_read_by_id(const struct ahr_ring *ring, uint32_t stream, uint64_t id, void *dst, uint64_t cap, struct ahr_msg *out);
int ahr_read_part(const struct ahr_ring *ring, uint32_t stream, uint64_t id, uint32_t substream, void *dst, uint64_t cap, struct ahr_msg *out);
int ahr_read_tail(const struct ahr_ring *ring, const struct ahr_msg *msg, void *dst, uint64_t cap);
int ahr_group_stats(const struct ahr_ring *ring, uint32_t group, struct ahr_group_stats *out);
int ahr_ring_stats(const struct ahr_ring *ring, struct ahr_ring_stats *out);
int ahr_live_members(const struct ahr_ring *ring);

/* Python-side shim (asapo_hpc/_core/_build.py): fewer, scalar arguments, which cffi
 * passes faster than it fills a struct's fields. Not part of the C API. */
struct ahrpy_ctx {
    struct ahr_ring *ring;
    uint32_t member;
    int64_t timeout_ns;
    struct ahr_msg *msg;
};
int ahrpy_send_plain(const struct ahrpy_ctx *c, const char *data, uint64_t data_len, uint64_t id, uint32_t stream, const char *meta, uint32_t meta_len);
int ahrpy_send_bare(const struct ahrpy_ctx *c, const char *data, uint64_t data_len, uint64_t id, uint32_t stream);
int ahrpy_send_batch(const struct ahrpy_ctx *c, const void *data, uint64_t each_len, uint32_t n, uint64_t first_id, uint32_t stream);
int ahrpy_get_next_ack(const struct ahrpy_ctx *c, uint32_t group, uint64_t prev, int64_t timeout_ns, struct ahr_msg *out);
int ahrpy_get_batch(const struct ahrpy_ctx *c, uint32_t group, uint32_t n, int64_t timeout_ns, struct ahr_msg *out, struct ahr_batch_shape *shape);
int ahrpy_next(const struct ahrpy_ctx *c, uint32_t group, uint64_t prev);
int ahrpy_ack(const struct ahrpy_ctx *c, uint32_t group, uint64_t seq);
int ahrpy_ack_msgs(const struct ahrpy_ctx *c, uint32_t group, const struct ahr_msg *msgs, uint32_t n);
int ahrpy_send(struct ahr_ring *ring, uint32_t member, const void *data, uint64_t data_len, uint64_t id, uint32_t stream, uint32_t flags, uint32_t ds_substream, uint32_t ds_size, const char *name, uint32_t name_len, const char *meta, uint32_t meta_len, int64_t timeout_ns);
int ahrpy_commit(struct ahr_ring *ring, const struct ahr_reservation *res, uint64_t data_len, uint64_t id, uint32_t stream, uint32_t flags, uint32_t ds_substream, uint32_t ds_size, const char *name, uint32_t name_len, const char *meta, uint32_t meta_len);
