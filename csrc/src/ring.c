/*
 * asapo_hpc ring: implementation. See ring.h for the API and layout.h for the segment.
 *
 * Sequences are 64-bit and never wrap; sequence s lives in slot s & mask during lap
 * s >> shift. A message takes a contiguous span of slots. Every durable group keeps
 * `next` (next sequence to hand out) and `floor` (all below acknowledged); the producer
 * may reuse slot s only once s - N < min(floor) over durable groups.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "layout.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define SPIN_NS 50000ull                /* a waiter polls this long before sleeping */
#define SLICE_NS 50000000ull            /* a sleeper wakes this often to look for the dead */
#define SCAN_INTERVAL_NS 100000000ull   /* busy members look for expired leases this often */
#define ATTACH_WAIT_NS 1000000000ull    /* how long attach waits for a creator to finish */
#define LOCK_WAIT_NS 2000000000ull      /* how long a table-lock waiter waits */
#define NO_SEQ UINT64_MAX

struct ahr_ring {
    uint8_t *base;
    uint64_t size;
    struct ahr_config cfg;          /* process-local copy, validated on attach */
    uint32_t mask;
    uint32_t shift;
    struct seg_header *hdr;
    struct seg_member *members;
    struct seg_group *groups;
    struct seg_desc *descs;
    struct seg_claim *claims;
    struct seg_stream *streams;
    uint64_t slots_offset;
    _Atomic uint64_t cached_floor;  /* producer's last min_floor, only ever too low */
    _Atomic uint64_t next_scan_ns;  /* when a busy consumer next looks for expired leases */
    _Atomic uint64_t polls;         /* consumer polls, to read the clock only now and then */
};

struct layout {
    uint64_t members, groups, descs, claims, streams, slots, total;
};

/* ---------------------------------------------------------------- small helpers */

static uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

static uint64_t ns_of(const struct timespec *ts)
{
    return (uint64_t)ts->tv_sec * 1000000000ull + (uint64_t)ts->tv_nsec;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ns_of(&ts);
}

static uint64_t real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ns_of(&ts);
}

/* Milliseconds for starting a lease, never behind mono_ns(): the coarse clock (a few ns
 * to read; mono_ns() costs ~25 ns here, a quarter of a claim) plus its tick. A lease so
 * started runs up to one tick (1-10 ms) longer than asked, never shorter. */
static uint64_t lease_clock_ms(void)
{
#ifdef CLOCK_MONOTONIC_COARSE
    static _Atomic uint64_t tick_ns; /* the coarse clock's resolution (+1), read once */
    uint64_t tick = atomic_load_explicit(&tick_ns, memory_order_relaxed);
    struct timespec ts;
    if (tick == 0 && clock_getres(CLOCK_MONOTONIC_COARSE, &ts) == 0) {
        tick = ns_of(&ts) + 1;
        atomic_store_explicit(&tick_ns, tick, memory_order_relaxed);
    }
    if (tick != 0 && clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0)
        return (ns_of(&ts) + tick) / 1000000ull;
#endif
    return mono_ns() / 1000000ull;
}

static uint64_t deadline_after(int64_t timeout_ns)
{
    return timeout_ns < 0 ? UINT64_MAX : mono_ns() + (uint64_t)timeout_ns;
}

/* A deadline read from the clock only when first needed: a clock read costs ~25 ns (as
 * much as a whole claim), and the fast paths never wait. `at` is 0 until then. */
struct lazy_deadline {
    int64_t timeout_ns;
    uint64_t at;
};

static uint64_t deadline_of(struct lazy_deadline *dl)
{
    if (dl->at == 0)
        dl->at = deadline_after(dl->timeout_ns);
    return dl->at;
}

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* One step of a bounded wait before sleeping: 64 pause-spins (a handoff between two
 * cores costs no syscall), then polls with sched_yield (a peer sharing our core gets to
 * run) until SPIN_NS have passed since the first step; then 0: time to sleep. */
static int spinning(uint64_t *until, uint32_t step)
{
    if (step < 64) {
        cpu_relax();
        return 1;
    }
    uint64_t now = mono_ns();
    if (step == 64)
        *until = now + SPIN_NS;
    else if (now >= *until)
        return 0;
    sched_yield();
    return 1;
}

static void futex_wait(_Atomic uint32_t *word, uint32_t expected, uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    /* Not FUTEX_PRIVATE: the word is shared between processes. */
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, &ts, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static uint64_t fnv1a(const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Checksum of the immutable header fields. */
static uint64_t header_checksum(const struct seg_header *h)
{
    return fnv1a(h, offsetof(struct seg_header, checksum));
}

/* /proc/<pid>/stat: process state letter and start time (field 22). 0 if gone. */
static uint64_t proc_start_time(int32_t pid, char *state)
{
    char path[48], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (!p || p[1] != ' ')
        return 0;
    p += 2;
    *state = *p;
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p)
            return 0;
        p++;
    }
    return strtoull(p, NULL, 10);
}

/* A process is alive if it exists, is not a zombie, and started when we recorded. */
static int pid_alive(int64_t pid, uint64_t start_time)
{
    if (pid <= 0 || pid > INT32_MAX)
        return 0;
    char state = 0;
    uint64_t now_start = proc_start_time((int32_t)pid, &state);
    if (now_start == 0)
        return kill((pid_t)pid, 0) == 0 || errno != ESRCH;
    if (state == 'Z' || state == 'X')
        return 0;
    return start_time == 0 || now_start == start_time;
}

static int valid_name(const char *name, size_t max)
{
    if (!name)
        return 0;
    size_t len = strnlen(name, max + 1);
    if (len == 0 || len > max)
        return 0;
    return 1;
}

/* Segment names: [A-Za-z0-9._-], not starting with '.', at most AHR_NAME_MAX. */
static int segment_path(const char *name, char *path, size_t cap)
{
    if (!valid_name(name, AHR_NAME_MAX))
        return name && strlen(name) > AHR_NAME_MAX ? -ENAMETOOLONG : -EINVAL;
    if (name[0] == '.')
        return -EINVAL;
    for (const char *p = name; *p; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-';
        if (!ok)
            return -EINVAL;
    }
    snprintf(path, cap, "/%s", name);
    return 0;
}

/* ---------------------------------------------------------------- layout */

static int config_valid(const struct ahr_config *c)
{
    return c && c->slot_count >= 2 && c->slot_count <= (1u << 24) &&
           (c->slot_count & (c->slot_count - 1)) == 0 && c->slot_size >= 64 &&
           c->slot_size % 64 == 0 && c->slot_size <= (1u << 31) && c->max_groups >= 1 &&
           c->max_groups <= 64 && c->max_members >= 1 && c->max_members <= 4095 &&
           c->max_streams >= 1 && c->max_streams <= 4096 && c->max_attempts >= 1 &&
           c->max_attempts <= 255 && c->lease_ns >= 1000000ull;
}

static int compute_layout(const struct ahr_config *c, struct layout *l)
{
    if (!config_valid(c))
        return -EINVAL;
    uint64_t n = c->slot_count, g = c->max_groups;
    uint64_t off = align_up(sizeof(struct seg_header), AHR_CACHELINE);
    l->members = off;
    off += (uint64_t)c->max_members * sizeof(struct seg_member);
    l->groups = off;
    off += g * sizeof(struct seg_group);
    l->descs = off;
    off += n * sizeof(struct seg_desc);
    l->claims = off;
    off += g * n * sizeof(struct seg_claim);
    l->streams = off;
    off += (uint64_t)c->max_streams * sizeof(struct seg_stream);
    l->slots = align_up(off, 4096);
    l->total = l->slots + n * (uint64_t)c->slot_size;
    return 0;
}

void ahr_config_default(struct ahr_config *cfg)
{
    cfg->slot_count = 1024;
    cfg->slot_size = 64 * 1024;
    cfg->max_groups = 8;
    cfg->max_members = 64;
    cfg->max_streams = 64;
    cfg->max_attempts = 3;
    cfg->lease_ns = 30ull * 1000000000ull;
}

uint64_t ahr_segment_size(const struct ahr_config *cfg)
{
    struct layout l;
    return compute_layout(cfg, &l) == 0 ? l.total : 0;
}

static void bind_layout(struct ahr_ring *r, uint8_t *base, uint64_t size,
                        const struct ahr_config *cfg, const struct layout *l)
{
    r->base = base;
    r->size = size;
    r->cfg = *cfg;
    r->mask = cfg->slot_count - 1;
    r->shift = (uint32_t)__builtin_ctz(cfg->slot_count);
    r->hdr = (struct seg_header *)base;
    r->members = (struct seg_member *)(base + l->members);
    r->groups = (struct seg_group *)(base + l->groups);
    r->descs = (struct seg_desc *)(base + l->descs);
    r->claims = (struct seg_claim *)(base + l->claims);
    r->streams = (struct seg_stream *)(base + l->streams);
    r->slots_offset = l->slots;
    atomic_init(&r->cached_floor, 0);
    atomic_init(&r->next_scan_ns, 0);
    atomic_init(&r->polls, 0);
}

/* ---------------------------------------------------------------- claims and tags */

static uint64_t lap_of(const struct ahr_ring *r, uint64_t seq) { return seq >> r->shift; }

static struct seg_claim *claim_at(const struct ahr_ring *r, uint32_t group, uint64_t seq)
{
    return &r->claims[(uint64_t)group * r->cfg.slot_count + (seq & r->mask)];
}

static uint64_t make_tag(uint64_t lap, uint32_t gen, uint32_t member, uint32_t attempts,
                         uint32_t state)
{
    return (lap & 0xffffffffull) << 32 | (uint64_t)(gen & 0xff) << 24 |
           (uint64_t)(member & 0xfff) << 12 | (uint64_t)(attempts & 0xff) << 4 | (state & 0xf);
}
static uint64_t tag_lap(uint64_t t) { return t >> 32; }
static uint32_t tag_gen(uint64_t t) { return (uint32_t)(t >> 24) & 0xff; }
static uint32_t tag_member(uint64_t t) { return (uint32_t)(t >> 12) & 0xfff; }
static uint32_t tag_attempts(uint64_t t) { return (uint32_t)(t >> 4) & 0xff; }
static uint32_t tag_state(uint64_t t) { return (uint32_t)t & 0xf; }

static uint64_t make_lease(uint64_t lap, uint32_t attempts, uint64_t deadline_ms)
{
    return (lap & 0xffff) << 48 | (uint64_t)(attempts & 0xff) << 40 |
           (deadline_ms & 0xffffffffffull);
}

/* The lease belongs to this tag only if lap and attempts match. */
static int lease_matches(uint64_t lease, uint64_t tag)
{
    return (lease >> 48) == (tag_lap(tag) & 0xffff) &&
           ((lease >> 40) & 0xff) == tag_attempts(tag);
}

static uint64_t lease_deadline_ms(uint64_t lease) { return lease & 0xffffffffffull; }

/* Descriptor seqstate helpers. */
static uint64_t ss_seq(uint64_t ss) { return ss >> 4; }
static uint32_t ss_state(uint64_t ss) { return (uint32_t)ss & 0xf; }
#define DESC_TOMB1 4u /* one-slot tombstone written by recovery: its span field is ignored */

/* The descriptor does not yet hold sequence s (it holds an older one or was never used). */
static int desc_stale(uint64_t ss, uint64_t s)
{
    return ss_state(ss) == DESC_FREE || ss_seq(ss) < s;
}

/* Span of a descriptor holding s; 0 if the stored span is out of bounds. */
static uint32_t desc_span(const struct ahr_ring *r, const struct seg_desc *d, uint64_t ss)
{
    if (ss_state(ss) == DESC_TOMB1)
        return 1;
    uint32_t span = load_relaxed(&d->span); /* atomic: see layout.h */
    uint64_t slot = ss_seq(ss) & r->mask;
    if (span == 0 || slot + span > r->cfg.slot_count)
        return 0;
    return span;
}

/* ---------------------------------------------------------------- members */

static uint32_t member_gen(const struct ahr_ring *r, uint32_t m)
{
    return load_relaxed(&r->members[m].gen) & 0xff;
}

/* Alive: the entry is taken, its generation matches and its process runs. */
static int member_alive(const struct ahr_ring *r, uint32_t m, uint32_t gen)
{
    if (m >= r->cfg.max_members)
        return 0;
    struct seg_member *e = &r->members[m];
    uint64_t w = load_acquire(&e->word); /* pairs with store_release in ahr_join */
    if ((w & 0xff) == MEMBER_FREE || member_gen(r, m) != gen)
        return 0;
    return pid_alive((int64_t)(w >> 8), load_relaxed(&e->start_time));
}

static int entry_process_alive(const struct seg_member *e)
{
    uint64_t w = load_acquire(&e->word); /* pairs with store_release in ahr_join */
    if ((w & 0xff) == MEMBER_FREE)
        return 0;
    return pid_alive((int64_t)(w >> 8), load_relaxed(&e->start_time));
}

static int check_member(const struct ahr_ring *r, uint32_t m)
{
    return m < r->cfg.max_members ? 0 : -EINVAL;
}

/* Resolve a group handle (generation << 8 | index) to its live entry's index. */
static int group_index(const struct ahr_ring *r, uint32_t handle)
{
    uint32_t i = handle & ((1u << GROUP_INDEX_BITS) - 1);
    if (i >= r->cfg.max_groups)
        return -ENOENT;
    const struct seg_group *g = &r->groups[i];
    if (load_acquire(&g->state) != GROUP_LIVE ||
        (load_relaxed(&g->gen) & 0x7fffffu) != handle >> GROUP_INDEX_BITS)
        return -ENOENT;
    return (int)i;
}

static int group_handle(const struct ahr_ring *r, uint32_t i)
{
    /* 23 bits of generation: a 24th would make the handle a negative int (an errno) */
    return (int)((load_relaxed(&r->groups[i].gen) & 0x7fffffu) << GROUP_INDEX_BITS | i);
}

/* The prologue of every call on a group for a member: the group's index, or an error. */
static int resolve(const struct ahr_ring *r, uint32_t group, uint32_t m, uint32_t *gi)
{
    int i = group_index(r, group);
    if (i < 0)
        return i;
    if (check_member(r, m))
        return -EINVAL;
    *gi = (uint32_t)i;
    return 0;
}

static uint64_t min_floor(const struct ahr_ring *r, uint32_t exclude);

/* A dead member's intent matters while its range may hold a sequence it took but never
 * described: not when the head never reached the range (its head CAS never happened),
 * nor once every durable group has passed the range. */
static int intent_settled(const struct ahr_ring *r, const struct seg_member *e)
{
    uint64_t first = load_acquire(&e->intent_seq); /* pairs with take_sequences */
    if (first == 0)
        return 1;
    uint64_t end = load_relaxed(&e->intent_end);
    return first - 1 >= load_acquire(&r->hdr->head) || end <= min_floor(r, UINT32_MAX);
}

int ahr_join(struct ahr_ring *r, uint32_t role)
{
    if (!r)
        return -EBADF; /* a closed handle */
    int32_t pid = getpid();
    char state;
    uint64_t start = proc_start_time(pid, &state);
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < r->cfg.max_members; i++) {
            struct seg_member *e = &r->members[i];
            uint64_t w = load_acquire(&e->word);
            if (pass == 1 && (w & 0xff) != MEMBER_FREE) {
                /* Reuse a dead member's entry, unless a reservation of it awaits recovery. */
                if (entry_process_alive(e) || !intent_settled(r, e))
                    continue;
                fetch_add_relaxed(&e->gen, 1); /* its old claims now name a dead member */
                if (!cas_acq_rel(&e->word, &w, 0))
                    continue;
                w = 0;
            }
            if ((w & 0xff) != MEMBER_FREE)
                continue;
            uint64_t joining = (uint64_t)pid << 8 | MEMBER_JOINING;
            if (!cas_acq_rel(&e->word, &w, joining))
                continue;
            store_relaxed(&e->start_time, start);
            e->role = role;
            store_relaxed(&e->intent_end, 0);
            store_relaxed(&e->intent_seq, 0);
            /* pairs with load_acquire in member_alive / entry_process_alive */
            store_release(&e->word, (uint64_t)pid << 8 | MEMBER_LIVE);
            return (int)i;
        }
    }
    return -EUSERS;
}

int ahr_leave(struct ahr_ring *r, uint32_t m)
{
    if (!r)
        return -EBADF; /* a closed handle */
    if (check_member(r, m))
        return -EINVAL;
    struct seg_member *e = &r->members[m];
    uint64_t w = load_acquire(&e->word);
    if ((w & 0xff) == MEMBER_FREE)
        return -ENOENT;
    fetch_add_relaxed(&e->gen, 1); /* claims still held go to other members */
    store_relaxed(&e->intent_seq, 0);
    store_release(&e->word, 0);
    return 0;
}

/* ---------------------------------------------------------------- table lock */

/* Guards group and stream registration only (never user code). Owner = pid; a dead
 * owner's lock is taken over. */
static int lock_tables(struct ahr_ring *r)
{
    uint64_t me = (uint64_t)getpid();
    uint64_t deadline = mono_ns() + LOCK_WAIT_NS;
    for (uint32_t i = 1;; i++) {
        uint64_t cur = 0;
        if (cas_acq_rel(&r->hdr->table_lock, &cur, me)) /* pairs with unlock_tables */
            return 0;
        if (i % 64)
            continue;
        if (!pid_alive((int64_t)cur, 0) && cas_acq_rel(&r->hdr->table_lock, &cur, me))
            return 0;
        if (mono_ns() > deadline)
            return -ETIMEDOUT;
        sched_yield();
    }
}

static void unlock_tables(struct ahr_ring *r)
{
    store_release(&r->hdr->table_lock, 0); /* pairs with the CAS in lock_tables */
}

/* ---------------------------------------------------------------- create / attach */

static int init_groups(struct ahr_ring *r, const char *const *names, uint32_t n)
{
    if (n > r->cfg.max_groups)
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++) {
        if (!valid_name(names[i], AHR_GROUP_NAME_MAX))
            return -EINVAL;
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(names[i], names[j]) == 0)
                return -EINVAL;
        struct seg_group *g = &r->groups[i];
        strcpy(g->name, names[i]);
        g->durable = 1;
        g->stream_filter = AHR_ALL_STREAMS;
        store_relaxed(&g->lease_ns, r->cfg.lease_ns);
        store_relaxed(&g->max_attempts, r->cfg.max_attempts);
        store_relaxed(&g->state, GROUP_LIVE); /* published by the magic store */
    }
    return 0;
}

int ahr_create(const char *name, const struct ahr_config *cfg, const char *const *groups,
               uint32_t n_groups, uint32_t mode, struct ahr_ring **out)
{
    char path[AHR_NAME_MAX + 2];
    struct layout l;
    int rc = segment_path(name, path, sizeof path);
    if (rc)
        return rc;
    if (!out || compute_layout(cfg, &l))
        return -EINVAL;
    if (n_groups > cfg->max_groups || (n_groups && !groups))
        return -EINVAL;
    struct ahr_ring *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    int fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode & 0777);
    if (fd < 0) {
        free(r);
        return -errno;
    }
    void *base = MAP_FAILED;
    rc = 0;
    if (fchmod(fd, mode & 0777) || ftruncate(fd, (off_t)l.total))
        rc = -errno;
    if (!rc) {
        /* populated now, so the first lap pays no page faults on the hot path */
        base = mmap(NULL, l.total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
        if (base == MAP_FAILED)
            rc = -errno;
    }
    close(fd);
    if (!rc) {
        bind_layout(r, base, l.total, cfg, &l);
        rc = init_groups(r, groups, n_groups);
    }
    if (rc) {
        if (base != MAP_FAILED)
            munmap(base, l.total);
        shm_unlink(path);
        free(r);
        return rc;
    }
    struct seg_header *h = r->hdr;
    h->version = AHR_LAYOUT_VERSION;
    h->header_size = sizeof *h;
    h->segment_size = l.total;
    h->config = *cfg;
    h->created_realtime_ns = real_ns();
    atomic_init(&h->space_wanted, UINT64_MAX);
    h->checksum = header_checksum(h) ^ AHR_MAGIC; /* the magic is not yet in place */
    /* The magic goes in last: attachers wait for it (pairs with load in ahr_attach). */
    __atomic_store_n(&h->magic, AHR_MAGIC, __ATOMIC_RELEASE);
    *out = r;
    return 0;
}

static int validate_header(const struct seg_header *h, uint64_t file_size, struct layout *l)
{
    if (h->version != AHR_LAYOUT_VERSION || h->header_size != sizeof *h)
        return -EPROTO;
    struct seg_header copy;
    memcpy(&copy, h, sizeof copy);
    copy.magic = 0;
    if ((header_checksum(&copy) ^ AHR_MAGIC) != copy.checksum)
        return -EBADMSG;
    if (compute_layout(&copy.config, l) || l->total != copy.segment_size ||
        l->total != file_size)
        return -EBADMSG;
    return 0;
}

int ahr_attach(const char *name, struct ahr_ring **out)
{
    char path[AHR_NAME_MAX + 2];
    int rc = segment_path(name, path, sizeof path);
    if (rc)
        return rc;
    if (!out)
        return -EINVAL;
    int fd = shm_open(path, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st)) {
        rc = -errno;
        close(fd);
        return rc;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size < sizeof(struct seg_header)) {
        close(fd);
        return -EBADMSG; /* truncated, or not ours */
    }
    uint8_t *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    rc = base == MAP_FAILED ? -errno : 0;
    close(fd);
    if (rc)
        return rc;
    const struct seg_header *h = (const struct seg_header *)base;
    uint64_t deadline = mono_ns() + ATTACH_WAIT_NS;
    uint64_t magic;
    /* pairs with the release store of the magic in ahr_create */
    while ((magic = __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE)) == 0 && mono_ns() < deadline)
        sched_yield();
    struct layout l;
    rc = magic != AHR_MAGIC ? -EBADMSG : validate_header(h, size, &l);
    struct ahr_ring *r = rc ? NULL : calloc(1, sizeof *r);
    if (!rc && !r)
        rc = -ENOMEM;
    if (rc) {
        munmap(base, size);
        return rc;
    }
    struct ahr_config cfg = h->config;
    bind_layout(r, base, size, &cfg, &l);
    *out = r;
    return 0;
}

void ahr_detach(struct ahr_ring *r)
{
    if (!r)
        return;
    munmap(r->base, r->size);
    free(r);
}

int ahr_unlink(const char *name)
{
    char path[AHR_NAME_MAX + 2];
    int rc = segment_path(name, path, sizeof path);
    if (rc)
        return rc;
    return shm_unlink(path) ? -errno : 0;
}

void *ahr_base(const struct ahr_ring *r) { return r->base; }
uint64_t ahr_size(const struct ahr_ring *r) { return r->size; }
void ahr_config_get(const struct ahr_ring *r, struct ahr_config *cfg) { *cfg = r->cfg; }

/* ---------------------------------------------------------------- groups and streams */

/* Lowest floor over live durable groups other than `exclude`; the head when none. */
static uint64_t min_floor(const struct ahr_ring *r, uint32_t exclude)
{
    uint64_t m = UINT64_MAX;
    for (uint32_t i = 0; i < r->cfg.max_groups; i++) {
        const struct seg_group *g = &r->groups[i];
        if (i == exclude || load_acquire(&g->state) != GROUP_LIVE || !g->durable)
            continue;
        /* pairs with the CAS in advance_floor: readers finished before the floor moved */
        uint64_t f = load_acquire(&g->floor);
        if (f < m)
            m = f;
    }
    return m == UINT64_MAX ? load_acquire(&r->hdr->head) : m;
}

/* After a floor moved: wake waiting producers if they got the space they asked for. */
static void wake_producers(struct ahr_ring *r)
{
    struct seg_header *h = r->hdr;
    atomic_thread_fence(memory_order_seq_cst); /* pairs with wait_reclaimed's re-check */
    if (!atomic_load_explicit(&h->producer_waiters, memory_order_seq_cst))
        return;
    if (min_floor(r, UINT32_MAX) < load_acquire(&h->space_wanted))
        return;
    store_release(&h->space_wanted, UINT64_MAX);
    atomic_fetch_add_explicit(&h->reclaim_epoch, 1, memory_order_seq_cst);
    futex_wake_all(&h->reclaim_epoch);
}

static int find_group(const struct ahr_ring *r, const char *name, uint32_t filter)
{
    for (uint32_t i = 0; i < r->cfg.max_groups; i++) {
        const struct seg_group *g = &r->groups[i];
        if (load_acquire(&g->state) == GROUP_LIVE &&
            strncmp(g->name, name, AHR_GROUP_NAME_MAX + 1) == 0)
            return g->stream_filter == filter ? group_handle(r, i) : -EEXIST;
    }
    return -ENOENT;
}

/* A late group starts at the oldest message the others still hold. Producers that
 * checked for space before it became visible used a floor no higher than the one read
 * after, so everything from that floor on is intact. */
static int add_group(struct ahr_ring *r, const char *name, uint32_t filter)
{
    for (uint32_t i = 0; i < r->cfg.max_groups; i++) {
        struct seg_group *g = &r->groups[i];
        if (load_acquire(&g->state) != GROUP_UNUSED)
            continue;
        memset(g->name, 0, sizeof g->name);
        strcpy(g->name, name);
        g->durable = 1;
        g->stream_filter = filter;
        store_relaxed(&g->lease_ns, r->cfg.lease_ns);
        store_relaxed(&g->max_attempts, r->cfg.max_attempts);
        store_relaxed(&g->nacked, 0);
        /* A reused entry: the retired group's claims would read as this group's (a claim
         * of the same lap taken or acknowledged: the message skipped), and its counters
         * would be added to this group's. Published by the seq_cst state store below. */
        for (uint64_t k = 0; k < r->cfg.slot_count; k++) {
            store_relaxed(&r->claims[(uint64_t)i * r->cfg.slot_count + k].tag, 0);
            store_relaxed(&r->claims[(uint64_t)i * r->cfg.slot_count + k].lease, 0);
        }
        store_relaxed(&g->delivered, 0);
        store_relaxed(&g->acked, 0);
        store_relaxed(&g->redelivered, 0);
        store_relaxed(&g->deadlettered, 0);
        uint64_t start = min_floor(r, i);
        store_relaxed(&g->floor, start);
        store_relaxed(&g->next, start);
        /* pairs with load_acquire of state in min_floor / find_group */
        atomic_store_explicit(&g->state, GROUP_LIVE, memory_order_seq_cst);
        uint64_t later = min_floor(r, i);
        if (later > start) {
            store_release(&g->floor, later);
            store_release(&g->next, later);
        }
        return group_handle(r, i);
    }
    return -EUSERS;
}

int ahr_group_open(struct ahr_ring *r, const char *name, uint32_t stream_filter)
{
    if (!r)
        return -EBADF; /* a closed handle */
    if (!valid_name(name, AHR_GROUP_NAME_MAX) ||
        (stream_filter != AHR_ALL_STREAMS && stream_filter >= r->cfg.max_streams))
        return -EINVAL;
    int h = find_group(r, name, stream_filter);
    if (h != -ENOENT)
        return h;
    int rc = lock_tables(r);
    if (rc)
        return rc;
    h = find_group(r, name, stream_filter);
    if (h == -ENOENT)
        h = add_group(r, name, stream_filter);
    unlock_tables(r);
    return h;
}

int ahr_group_retire(struct ahr_ring *r, uint32_t handle)
{
    if (!r)
        return -EBADF; /* a closed handle */
    int i = group_index(r, handle);
    if (i < 0)
        return i;
    int rc = lock_tables(r);
    if (rc)
        return rc;
    struct seg_group *g = &r->groups[i];
    if (group_index(r, handle) == i) {
        fetch_add_relaxed(&g->gen, 1);
        store_release(&g->state, GROUP_UNUSED); /* pairs with load_acquire in min_floor */
        /* the producer may be waiting on this group's floor */
        store_release(&r->hdr->space_wanted, 0);
        wake_producers(r);
    }
    unlock_tables(r);
    return 0;
}

int ahr_group_name(const struct ahr_ring *r, uint32_t handle, char *buf, uint32_t cap)
{
    if (!r)
        return -EBADF; /* a closed handle */
    int i = group_index(r, handle);
    if (i < 0 || cap == 0)
        return -ENOENT;
    const char *name = r->groups[i].name;
    uint32_t len = (uint32_t)strnlen(name, AHR_GROUP_NAME_MAX);
    if (len >= cap)
        return -ENAMETOOLONG;
    memcpy(buf, name, len);
    buf[len] = 0;
    return (int)len;
}

int ahr_group_find(const struct ahr_ring *r, const char *name, uint32_t stream_filter)
{
    if (!r)
        return -EBADF; /* a closed handle */
    if (!valid_name(name, AHR_GROUP_NAME_MAX))
        return -EINVAL;
    return find_group(r, name, stream_filter);
}

int ahr_group_list(const struct ahr_ring *r, uint32_t *handles, uint32_t cap)
{
    if (!r)
        return -EBADF; /* a closed handle */
    uint32_t n = 0;
    for (uint32_t i = 0; i < r->cfg.max_groups; i++) {
        if (load_acquire(&r->groups[i].state) != GROUP_LIVE)
            continue;
        if (n < cap)
            handles[n] = (uint32_t)group_handle(r, i);
        n++;
    }
    return (int)n;
}

int ahr_group_set_resend(struct ahr_ring *r, uint32_t handle, uint64_t lease_ns,
                         uint32_t max_attempts)
{
    if (!r)
        return -EBADF; /* a closed handle */
    int i = group_index(r, handle);
    if (i < 0)
        return i;
    if (lease_ns < 1000000ull || max_attempts < 1 || max_attempts > 255)
        return -EINVAL;
    store_relaxed(&r->groups[i].lease_ns, lease_ns);
    store_relaxed(&r->groups[i].max_attempts, max_attempts);
    return 0;
}

static int find_stream(const struct ahr_ring *r, const char *name, uint32_t len)
{
    for (uint32_t i = 0; i < r->cfg.max_streams; i++) {
        const struct seg_stream *s = &r->streams[i];
        if (load_acquire(&s->state) == 2 && s->name_len == len && !memcmp(s->name, name, len))
            return (int)i;
    }
    return -ENOENT;
}

int ahr_stream_index(struct ahr_ring *r, const char *name, uint32_t len)
{
    if (!r)
        return -EBADF; /* a closed handle */
    if (!name || len == 0 || len > AHR_STREAM_NAME_MAX || memchr(name, 0, len))
        return -EINVAL;
    int i = find_stream(r, name, len);
    if (i >= 0)
        return i;
    int rc = lock_tables(r);
    if (rc)
        return rc;
    i = find_stream(r, name, len);
    for (uint32_t k = 0; i < 0 && k < r->cfg.max_streams; k++) {
        struct seg_stream *s = &r->streams[k];
        if (load_acquire(&s->state) != 0)
            continue;
        memcpy(s->name, name, len);
        s->name[len] = 0;
        s->name_len = len;
        store_relaxed(&s->auto_id, 0);
        store_relaxed(&s->finished, 0);
        store_release(&s->state, 2); /* pairs with load_acquire in find_stream */
        i = (int)k;
    }
    unlock_tables(r);
    return i >= 0 ? i : -EUSERS;
}

int ahr_stream_name(const struct ahr_ring *r, uint32_t index, char *buf, uint32_t cap)
{
    if (!r)
        return -EBADF; /* a closed handle */
    if (index >= r->cfg.max_streams || load_acquire(&r->streams[index].state) != 2)
        return -ENOENT;
    const struct seg_stream *s = &r->streams[index];
    uint32_t len = s->name_len;
    if (len > AHR_STREAM_NAME_MAX)
        return -EBADMSG;
    if (len >= cap)
        return -ENAMETOOLONG;
    memcpy(buf, s->name, len);
    buf[len] = 0;
    return (int)len;
}

int64_t ahr_stream_next_id(struct ahr_ring *r, uint32_t stream)
{
    if (!r)
        return -EBADF; /* a closed handle */
    if (stream >= r->cfg.max_streams || load_acquire(&r->streams[stream].state) != 2)
        return -ENOENT;
    return (int64_t)(fetch_add_relaxed(&r->streams[stream].auto_id, 1) + 1);
}

int ahr_stream_finish(struct ahr_ring *r, uint32_t stream, int32_t next_stream)
{
    if (!r)
        return -EBADF; /* a closed handle */
    if (stream >= r->cfg.max_streams || load_acquire(&r->streams[stream].state) != 2 ||
        next_stream < -1 || next_stream >= (int32_t)r->cfg.max_streams)
        return -EINVAL;
    store_release(&r->streams[stream].finished, (uint32_t)(next_stream + 2));
    return 0;
}

int ahr_stream_finished(const struct ahr_ring *r, uint32_t stream)
{
    if (!r)
        return -EBADF; /* a closed handle */
    if (stream >= r->cfg.max_streams)
        return 0;
    uint32_t v = load_acquire(&r->streams[stream].finished);
    return v <= r->cfg.max_streams + 1 ? (int)v : 1;
}

/* ---------------------------------------------------------------- producing */

static void publish_notify(struct ahr_ring *r, uint64_t seq)
{
    struct seg_header *h = r->hdr;
    uint64_t cur = load_relaxed(&h->last_published);
    while (cur < seq + 1 && !cas_acq_rel(&h->last_published, &cur, seq + 1))
        ;
    /* seq_cst pairs with wait_published: a sleeper either sees the new count or is seen */
    atomic_fetch_add_explicit(&h->published_count, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&h->consumer_waiters, memory_order_seq_cst))
        futex_wake_all(&h->published_count);
}

/* Ask for the floor to reach `wanted` (an atomic minimum over waiting producers). */
static void want_space(struct ahr_ring *r, uint64_t wanted)
{
    uint64_t cur = load_relaxed(&r->hdr->space_wanted);
    while (wanted < cur && !cas_acq_rel(&r->hdr->space_wanted, &cur, wanted))
        ;
}

/* Sleep until a consumer wakes us (the floor reached what we asked for) or ns pass. */
static void wait_reclaimed(struct ahr_ring *r, uint32_t epoch, uint64_t end, uint64_t ns)
{
    struct seg_header *h = r->hdr;
    atomic_fetch_add_explicit(&h->producer_waiters, 1, memory_order_seq_cst);
    /* re-check after announcing: pairs with the fence in wake_producers */
    if (end > min_floor(r, UINT32_MAX) + r->cfg.slot_count)
        futex_wait(&h->reclaim_epoch, epoch, ns);
    atomic_fetch_sub_explicit(&h->producer_waiters, 1, memory_order_seq_cst);
}

/* Wait until the sequences below `end` are free (end <= min floor + N): a bounded spin,
 * then futex sleeps. To wake less often, a sleeper asks for some slots more than it needs
 * (up to N/8); consumers wake it once that much is free. */
static int wait_for_space(struct ahr_ring *r, uint64_t end, struct lazy_deadline *dl)
{
    uint64_t n = r->cfg.slot_count;
    uint64_t need_floor = end - n;
    uint64_t head = load_relaxed(&r->hdr->head);
    uint64_t slack = n / 8;
    if (need_floor + slack > head) /* never ask for more than can be consumed */
        slack = head > need_floor ? head - need_floor : 0;
    uint64_t spin_until = 0;
    for (uint32_t spins = 0;; spins++) {
        uint32_t epoch = atomic_load_explicit(&r->hdr->reclaim_epoch, memory_order_seq_cst);
        uint64_t floor = min_floor(r, UINT32_MAX);
        /* release: another thread of this process that reuses slots on the strength of
         * this cached floor must also see the consumers' reads as finished */
        store_release(&r->cached_floor, floor);
        if (end <= floor + n)
            return 0;
        uint64_t deadline = deadline_of(dl); /* counted from the first wait */
        if (spinning(&spin_until, spins)) /* even with no timeout: at most SPIN_NS */
            continue;
        uint64_t now = mono_ns();
        if (now >= deadline)
            return -ENOSPC;
        want_space(r, need_floor + slack);
        wait_reclaimed(r, epoch, end, deadline - now < SLICE_NS ? deadline - now : SLICE_NS);
    }
}

/* Claim descriptor s for the reserving producer; fails if recovery got there first. */
static int mark_reserved(struct ahr_ring *r, uint64_t s, uint32_t span, uint32_t owner,
                         uint32_t state)
{
    struct seg_desc *d = &r->descs[s & r->mask];
    uint64_t old = load_acquire(&d->seqstate);
    if (!desc_stale(old, s))
        return -ESTALE;
    store_relaxed(&d->span, span); /* atomic: scanners may read them meanwhile */
    store_relaxed(&d->owner, owner);
    /* pairs with load_acquire of seqstate in take_new / recover_stuck */
    return cas_acq_rel(&d->seqstate, &old, s << 4 | state) ? 0 : -ESTALE;
}

static int span_for(const struct ahr_ring *r, uint64_t data_len, uint64_t tail, uint32_t *span)
{
    uint64_t need = align_up(data_len, 64) + tail;
    uint64_t k = need == 0 ? 1 : (need + r->cfg.slot_size - 1) / r->cfg.slot_size;
    if (data_len > r->size || k > r->cfg.slot_count)
        return -EMSGSIZE;
    *span = (uint32_t)k;
    return 0;
}

/* Take sequences [h, end) by moving the head; the intent lets others recover them if we
 * die before the descriptors say so. */
static int take_sequences(struct ahr_ring *r, struct seg_member *me, uint32_t k,
                          struct lazy_deadline *dl, uint64_t *first, uint32_t *pad)
{
    uint32_t n = r->cfg.slot_count;
    for (;;) {
        uint64_t h = load_relaxed(&r->hdr->head);
        uint64_t slot = h & r->mask;
        *pad = slot + k > n ? (uint32_t)(n - slot) : 0;
        uint64_t end = h + *pad + k;
        if (end > load_acquire(&r->cached_floor) + n) { /* pairs with wait_for_space */
            int rc = wait_for_space(r, end, dl);
            if (rc)
                return rc;
            continue;
        }
        store_relaxed(&me->intent_end, end);
        store_release(&me->intent_seq, h + 1); /* pairs with load_acquire in recover_intent */
        /* the head CAS releases the intent before anyone can see the new head */
        if (cas_acq_rel(&r->hdr->head, &h, end)) {
            *first = h;
            return 0;
        }
        store_release(&me->intent_seq, 0);
    }
}

/* One-slot tombstones over the stale descriptors of [from, end): what recovery does for a
 * dead member's intent, done by a producer whose run recovery cut (it was presumed dead). */
static void tombstone_stale(struct ahr_ring *r, uint64_t from, uint64_t end)
{
    for (uint64_t t = from; t < end; t++) {
        struct seg_desc *d = &r->descs[t & r->mask];
        uint64_t old = load_acquire(&d->seqstate);
        if (desc_stale(old, t))
            cas_acq_rel(&d->seqstate, &old, t << 4 | DESC_TOMB1); /* lost: recovery did it */
    }
}

/* Reserve a run of up to `count` messages of span k each, contiguous from *first: one move
 * of the head and one intent for all of them. Returns how many were reserved (>= 1), or a
 * negative errno. Fewer than asked only if recovery took part of the run (this member was
 * presumed dead): the rest is then tombstones. */
static int reserve_run(struct ahr_ring *r, uint32_t member, uint32_t k, uint32_t count,
                       struct lazy_deadline *dl, uint64_t *first)
{
    struct seg_member *me = &r->members[member];
    uint32_t owner = member_gen(r, member) << 12 | member;
    uint32_t pad, got;
    uint64_t h;
    for (;;) {
        int rc = take_sequences(r, me, k * count, dl, &h, &pad);
        if (rc)
            return rc;
        if (pad)
            mark_reserved(r, h, pad, owner, DESC_TOMBSTONE); /* recovery may have won: same */
        for (got = 0; got < count; got++)
            if (mark_reserved(r, h + pad + (uint64_t)got * k, k, owner, DESC_RESERVED))
                break;
        if (got)
            break;
        /* Recovery took our first descriptor for a dead member's: those slots are
         * tombstones (or become them below). Try again further on. */
        tombstone_stale(r, h + pad, h + pad + (uint64_t)k * count);
        store_release(&me->intent_seq, 0);
    }
    if (got < count) /* before the intent goes: nothing of the run may stay stale */
        tombstone_stale(r, h + pad + (uint64_t)got * k, h + pad + (uint64_t)k * count);
    store_release(&me->intent_seq, 0);
    if (got < count) /* consumers waiting at the tombstones move on */
        publish_notify(r, h + pad + (uint64_t)k * count - 1);
    else if (pad)
        publish_notify(r, h);
    *first = h + pad;
    return (int)got;
}

int ahr_reserve(struct ahr_ring *r, uint32_t member, uint64_t data_len, uint32_t tail_cap,
                int64_t timeout_ns, struct ahr_reservation *out)
{
    if (!r)
        return -EBADF; /* a closed handle */
    uint32_t k;
    uint64_t h;
    int rc = check_member(r, member);
    if (!rc)
        rc = span_for(r, data_len, tail_cap, &k);
    if (rc)
        return rc;
    /* reserve_run(count 1) without its generality: ~12% more messages/s between two
     * processes one per call (bench_ring) */
    struct seg_member *me = &r->members[member];
    uint32_t owner = member_gen(r, member) << 12 | member;
    struct lazy_deadline dl = {timeout_ns, 0};
    uint32_t pad;
    for (;;) {
        rc = take_sequences(r, me, k, &dl, &h, &pad);
        if (rc)
            return rc;
        if (pad)
            mark_reserved(r, h, pad, owner, DESC_TOMBSTONE); /* recovery may have won: same */
        if (mark_reserved(r, h + pad, k, owner, DESC_RESERVED) == 0)
            break;
        /* Recovery took our descriptor for a dead member's: those slots are tombstones. */
        store_release(&me->intent_seq, 0);
    }
    store_release(&me->intent_seq, 0);
    if (pad)
        publish_notify(r, h);
    out->seq = h + pad;
    out->span = k;
    out->member = member;
    out->data_offset = r->slots_offset + ((h + pad) & r->mask) * (uint64_t)r->cfg.slot_size;
    out->capacity = (uint64_t)k * r->cfg.slot_size;
    return 0;
}

static int check_reservation(const struct ahr_ring *r, const struct ahr_reservation *res)
{
    if (!res || res->span == 0 || (res->seq & r->mask) + res->span > r->cfg.slot_count)
        return -EINVAL;
    uint64_t expect =
        r->slots_offset + (res->seq & r->mask) * (uint64_t)r->cfg.slot_size;
    if (res->data_offset != expect || res->capacity != (uint64_t)res->span * r->cfg.slot_size)
        return -EINVAL;
    return 0;
}

/* Write name + metadata at `tail` (after the data) and fill the descriptor of reserved
 * sequence s (checked by the caller), then publish it with one release; the caller
 * notifies. */
static inline int publish_desc(struct ahr_ring *r, uint64_t s, const struct ahr_pub *pub,
                                uint64_t timestamp_ns, uint8_t *tail, const char *name,
                                uint32_t name_len, const char *meta, uint32_t meta_len)
{
    struct seg_desc *d = &r->descs[s & r->mask];
    uint64_t expected = s << 4 | DESC_RESERVED;
    if (load_relaxed(&d->seqstate) != expected)
        return -ESTALE;
    if (name_len)
        memcpy(tail, name, name_len);
    if (meta_len)
        memcpy(tail + name_len, meta, meta_len);
    d->id = pub->id;
    d->data_len = pub->data_len;
    d->timestamp_ns = timestamp_ns;
    d->stream = pub->stream;
    d->flags = pub->flags;
    d->name_len = name_len;
    d->meta_len = meta_len;
    d->ds_substream = pub->ds_substream;
    d->ds_size = pub->ds_size;
    /* The one store that publishes: pairs with load_acquire of seqstate by consumers. */
    if (!cas_acq_rel(&d->seqstate, &expected, s << 4 | DESC_PUBLISHED))
        return -ESTALE;
    if (pub->flags & AHR_FLAG_FINISH) { /* keep a next stream ahr_stream_finish named */
        uint32_t unfinished = 0;
        atomic_compare_exchange_strong(&r->streams[pub->stream].finished, &unfinished, 1);
    }
    return 0;
}

int ahr_commit(struct ahr_ring *r, const struct ahr_reservation *res, const struct ahr_pub *pub,
               const char *name, uint32_t name_len, const char *meta, uint32_t meta_len)
{
    if (!r)
        return -EBADF; /* a closed handle */
    int rc = check_reservation(r, res);
    if (rc || !pub || pub->id == 0 || pub->stream >= r->cfg.max_streams ||
        (name_len && !name) || (meta_len && !meta))
        return rc ? rc : -EINVAL;
    uint64_t tail_at = align_up(pub->data_len, 64);
    if (pub->data_len > res->capacity || tail_at + name_len + meta_len > res->capacity)
        return -EMSGSIZE;
    rc = publish_desc(r, res->seq, pub, pub->timestamp_ns ? pub->timestamp_ns : real_ns(),
                      r->base + res->data_offset + tail_at, name, name_len, meta, meta_len);
    if (rc)
        return rc;
    publish_notify(r, res->seq);
    return 0;
}

int ahr_abort(struct ahr_ring *r, const struct ahr_reservation *res)
{
    if (!r)
        return -EBADF; /* a closed handle */
    int rc = check_reservation(r, res);
    if (rc)
        return rc;
    struct seg_desc *d = &r->descs[res->seq & r->mask];
    uint64_t expected = res->seq << 4 | DESC_RESERVED;
    if (!cas_acq_rel(&d->seqstate, &expected, res->seq << 4 | DESC_TOMBSTONE))
        return -ESTALE;
    publish_notify(r, res->seq);
    return 0;
}

void ahr_copy_stream(void *dst, const void *src, uint64_t n)
{
#if defined(__SSE2__)
    uint8_t *d = dst;
    const uint8_t *p = src;
    uint64_t head = (16 - ((uintptr_t)d & 15)) & 15; /* streaming stores want 16-byte aligned */
    if (n < head + 64) {
        memcpy(d, p, n);
        return;
    }
    memcpy(d, p, head);
    d += head, p += head, n -= head;
    for (; n >= 64; d += 64, p += 64, n -= 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)p);
        __m128i b = _mm_loadu_si128((const __m128i *)(p + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(p + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(p + 48));
        _mm_stream_si128((__m128i *)d, a);
        _mm_stream_si128((__m128i *)(d + 16), b);
        _mm_stream_si128((__m128i *)(d + 32), c);
        _mm_stream_si128((__m128i *)(d + 48), e);
    }
    memcpy(d, p, n);
    _mm_sfence(); /* streaming stores are weakly ordered: fence before the publishing store */
#else
    memcpy(dst, src, n);
#endif
}

int ahr_send(struct ahr_ring *r, uint32_t member, const void *data, const struct ahr_pub *pub,
             const char *name, uint32_t name_len, const char *meta, uint32_t meta_len,
             int64_t timeout_ns, uint64_t *seq_out)
{
    if (!r)
        return -EBADF; /* a closed handle */
    /* Validate before reserving, so bad input leaves no tombstone behind. */
    if (!pub || (pub->data_len && !data) || pub->id == 0 || pub->stream >= r->cfg.max_streams ||
        (name_len && !name) || (meta_len && !meta))
        return -EINVAL;
    struct ahr_reservation res;
    int rc = ahr_reserve(r, member, pub->data_len, name_len + meta_len, timeout_ns, &res);
    if (rc)
        return rc;
    if (pub->data_len >= AHR_STREAM_COPY_MIN)
        ahr_copy_stream(r->base + res.data_offset, data, pub->data_len);
    else if (pub->data_len) /* data may be NULL when empty */
        memcpy(r->base + res.data_offset, data, pub->data_len);
    rc = ahr_commit(r, &res, pub, name, name_len, meta, meta_len);
    if (rc) {
        ahr_abort(r, &res);
        return rc;
    }
    if (seq_out)
        *seq_out = res.seq;
    return 0;
}

int ahr_send_batch(struct ahr_ring *r, uint32_t member, const void *data, uint64_t each_len,
                   uint32_t n, uint64_t first_id, uint32_t stream, int64_t timeout_ns)
{
    if (!r)
        return -EBADF; /* a closed handle */
    uint32_t k;
    if ((n && !data) || first_id == 0 || stream >= r->cfg.max_streams || n > INT_MAX)
        return -EINVAL;
    int rc = check_member(r, member);
    if (!rc)
        rc = span_for(r, each_len, 0, &k);
    if (rc || n == 0)
        return rc;
    struct ahr_pub pub = {0};
    pub.data_len = each_len;
    pub.stream = stream;
    const uint8_t *src = data;
    struct lazy_deadline dl = {timeout_ns, 0};
    uint32_t done = 0;
    while (done < n) {
        /* A run of messages per move of the head: at most a quarter of the ring (so the
         * run never waits for much space), and never across the ring's end (which would
         * cost a tombstone to pad). */
        uint32_t most = r->cfg.slot_count / 4 / k;
        uint64_t slot = load_relaxed(&r->hdr->head) & r->mask;
        uint32_t to_end = (uint32_t)((r->cfg.slot_count - slot) / k);
        uint32_t want = n - done;
        if (want > most)
            want = most;
        if (want > to_end && to_end > 0)
            want = to_end;
        if (want == 0)
            want = 1;
        uint64_t s;
        int got = reserve_run(r, member, k, want, &dl, &s);
        if (got == -ENOSPC && want > 1) {
            /* the ring stayed full for the timeout: publish what fits, one at a time */
            dl.timeout_ns = 0;
            dl.at = 0;
            got = reserve_run(r, member, k, 1, &dl, &s);
        }
        if (got < 0)
            return done ? (int)done : got;
        uint64_t now = real_ns(); /* one timestamp per run */
        for (int i = 0; i < got; i++) {
            uint64_t seq = s + (uint64_t)i * k;
            uint8_t *dst =
                r->base + r->slots_offset + (seq & r->mask) * (uint64_t)r->cfg.slot_size;
            if (each_len >= AHR_STREAM_COPY_MIN)
                ahr_copy_stream(dst, src + (uint64_t)done * each_len, each_len);
            else
                memcpy(dst, src + (uint64_t)done * each_len, each_len);
            pub.id = first_id + done;
            /* fails only if recovery made the slot a tombstone (we were presumed dead):
             * this message then goes into the next slot of the run, or the next run */
            if (publish_desc(r, seq, &pub, now, NULL, NULL, 0, NULL, 0) == 0)
                done++;
        }
        publish_notify(r, s + (uint64_t)(got - 1) * k);
    }
    return (int)n;
}

/* ---------------------------------------------------------------- consuming */

/* Copy a descriptor into a message, checking every length against the slot area. */
static int fill_msg(const struct ahr_ring *r, uint64_t s, const struct seg_desc *d,
                    uint32_t span, uint32_t attempts, struct ahr_msg *out)
{
    uint64_t cap = (uint64_t)span * r->cfg.slot_size;
    uint64_t data_len = d->data_len;
    uint32_t name_len = d->name_len, meta_len = d->meta_len, stream = d->stream;
    if (data_len > cap || align_up(data_len, 64) + (uint64_t)name_len + meta_len > cap ||
        stream >= r->cfg.max_streams)
        return -EBADMSG;
    out->seq = s;
    out->id = d->id;
    out->data_offset = r->slots_offset + (s & r->mask) * (uint64_t)r->cfg.slot_size;
    out->data_len = data_len;
    out->name_offset = out->data_offset + align_up(data_len, 64);
    out->name_len = name_len;
    out->meta_len = meta_len;
    out->timestamp_ns = d->timestamp_ns;
    out->stream = stream;
    out->flags = d->flags;
    out->ds_substream = d->ds_substream;
    out->ds_size = d->ds_size;
    out->attempts = attempts;
    out->span = span;
    /* The producer's core wrote this line last: start moving it now, while the caller
     * (often Python, ~1 us per message) is still on its way to reading it. */
    __builtin_prefetch(r->base + out->data_offset);
    return 0;
}

/* Move the group's floor over acknowledged (or dead-lettered, or skipped) sequences and
 * wake a producer waiting for space. */
static void advance_floor(struct ahr_ring *r, uint32_t gi)
{
    struct seg_group *g = &r->groups[gi];
    int moved = 0;
    for (uint32_t tries = 0; tries <= r->cfg.slot_count; tries++) {
        uint64_t f = load_acquire(&g->floor);
        uint64_t nx = load_acquire(&g->next);
        uint64_t t = f;
        int ends_group = 0;
        /* The acknowledged run from the floor, moved over with one CAS: the floor shares a
         * line with what producers read, so one write per run rather than per message. */
        while (t < nx && t - f < r->cfg.slot_count && !ends_group) {
            const struct seg_desc *d = &r->descs[t & r->mask];
            uint64_t ss = load_acquire(&d->seqstate);
            uint32_t span = desc_span(r, d, ss);
            if (ss_seq(ss) != t || span == 0)
                break;
            /* seq_cst pairs with the seq_cst CAS in ahr_ack: of two members acknowledging
             * neighbours, at least one sees the other's acknowledgement. */
            uint64_t tag = atomic_load_explicit(&claim_at(r, gi, t)->tag, memory_order_seq_cst);
            uint32_t st = tag_state(tag);
            if (tag_lap(tag) != (lap_of(r, t) & 0xffffffffull) ||
                (st != CLAIM_ACKED && st != CLAIM_DEAD))
                break;
            /* read before the floor passes: until then the producer cannot reuse the slot */
            ends_group = g->stream_filter != AHR_ALL_STREAMS &&
                         ss_state(ss) == DESC_PUBLISHED &&
                         (d->flags & AHR_FLAG_FINISH) &&
                         d->stream == g->stream_filter;
            t += span;
        }
        if (t == f)
            break;
        /* release: everything read from these slots happened before the producer sees it;
         * a failed CAS (another member moved the floor) walks again from the new floor */
        if (!cas_acq_rel(&g->floor, &f, t))
            continue;
        moved = 1;
        if (ends_group) {
            /* a one-stream group is done once everything up to its stream's finish
             * marker is acknowledged: retire it, or it would hold the ring for
             * messages of other streams nobody of it will ever skip */
            ahr_group_retire(r, (uint32_t)group_handle(r, gi));
            return; /* retiring woke the producers */
        }
        /* Done: whoever acknowledges t (found not acknowledged above) walks on from here
         * (its walk sees ours, by the seq_cst pairing above, or fails its CAS and walks
         * again from the floor we set). */
        break;
    }
    if (moved)
        wake_producers(r);
}

/* Claim the message at the group's `next`, skipping tombstones. -EAGAIN when none is
 * published yet; *stuck then names a sequence that is reserved but not published. The
 * lease runs from now_ms (a batch reads the clock once), or from the clock if 0. The
 * caller counts the delivery (a batch once for all). */
static int take_new(struct ahr_ring *r, uint32_t gi, uint32_t m, uint32_t mgen,
                    struct ahr_msg *out, uint64_t *stuck, uint64_t now_ms)
{
    struct seg_group *g = &r->groups[gi];
    *stuck = NO_SEQ;
    for (uint32_t tries = 0; tries < 2 * r->cfg.slot_count + 64; tries++) {
        /* No look at the head here (the producers' hottest line): a sequence not yet
         * reserved reads as a stale descriptor, like one reserved but not published. */
        uint64_t s = load_acquire(&g->next);
        struct seg_desc *d = &r->descs[s & r->mask];
        uint64_t ss = load_acquire(&d->seqstate); /* pairs with the CAS in ahr_commit */
        uint32_t st = ss_state(ss);
        if (desc_stale(ss, s) || st == DESC_RESERVED) {
            *stuck = s;
            return -EAGAIN;
        }
        if (ss_seq(ss) != s) { /* a newer lap: only possible if next moved meanwhile */
            if (load_acquire(&g->next) != s)
                continue;
            return -EBADMSG;
        }
        uint32_t span = desc_span(r, d, ss);
        if (span == 0)
            return -EBADMSG;
        uint64_t lap = lap_of(r, s);
        struct seg_claim *c = claim_at(r, gi, s);
        uint64_t tag = load_acquire(&c->tag);
        uint64_t s_expected = s;
        if (tag_lap(tag) == (lap & 0xffffffffull) && tag_state(tag) != CLAIM_NONE) {
            cas_acq_rel(&g->next, &s_expected, s + span); /* another member won it: help */
            continue;
        }
        /* A tag of a later lap: we were descheduled after reading the descriptor and the
         * ring lapped, so s is long gone. Without this check the CAS below would take the
         * later lap's claim as lap s (found by test_threads under TSan: a second first
         * delivery, and a clobbered claim that stops the floor for good). */
        uint32_t ahead = (uint32_t)tag_lap(tag) - (uint32_t)lap;
        if (ahead != 0 && ahead < 0x80000000u)
            continue;
        /* tombstones, and other streams' messages for a one-stream group, are skipped */
        int skip = st != DESC_PUBLISHED ||
                   (g->stream_filter != AHR_ALL_STREAMS && d->stream != g->stream_filter);
        if (!skip && now_ms == 0) /* before the CAS: read after it, it waits for the CAS */
            now_ms = lease_clock_ms();
        uint64_t mine = skip ? make_tag(lap, 0, 0, 0, CLAIM_ACKED)
                             : make_tag(lap, mgen, m, 1, CLAIM_TAKEN);
        if (!cas_acq_rel(&c->tag, &tag, mine))
            continue;
        if (!skip) {
            uint64_t lease_ms = load_relaxed(&g->lease_ns) / 1000000ull;
            store_release(&c->lease, make_lease(lap, 1, now_ms + lease_ms));
        }
        cas_acq_rel(&g->next, &s_expected, s + span);
        if (skip) {
            advance_floor(r, gi);
            continue;
        }
        return fill_msg(r, s, d, span, 1, out);
    }
    return -EAGAIN;
}

/* A group's window [floor, next) read as one: both move while we read them, so a pair read
 * apart can look wider than the ring (an old floor with a new next). Re-read until the
 * floor held still around the read of next. -EAGAIN if it never did (members busy),
 * -EBADMSG for a window that is impossible while it holds still (a damaged segment). */
static int group_window(const struct ahr_ring *r, const struct seg_group *g, uint64_t *floor,
                        uint64_t *next)
{
    for (uint32_t tries = 0; tries < 1024; tries++) {
        uint64_t f = load_acquire(&g->floor);
        uint64_t nx = load_acquire(&g->next);
        if (load_acquire(&g->floor) != f)
            continue;
        if (nx < f || nx - f > r->cfg.slot_count)
            return -EBADMSG;
        *floor = f;
        *next = nx;
        return 0;
    }
    return -EAGAIN;
}

/* Liveness answers remembered for one scan: owners are few, claims many. */
struct owner_cache {
    uint32_t n;
    uint32_t key[16];   /* gen << 12 | member */
    uint8_t alive[16];
};

static int owner_alive(const struct ahr_ring *r, struct owner_cache *oc, uint32_t m,
                       uint32_t gen)
{
    uint32_t key = gen << 12 | m;
    for (uint32_t i = 0; i < oc->n; i++)
        if (oc->key[i] == key)
            return oc->alive[i];
    int alive = member_alive(r, m, gen);
    if (oc->n < 16) {
        oc->key[oc->n] = key;
        oc->alive[oc->n++] = (uint8_t)alive;
    }
    return alive;
}

/* Is this claim due for redelivery? Nacked past its delay, leased past its deadline, or
 * (when oc is given) held by a member that is gone. */
static int claim_due(const struct ahr_ring *r, const struct seg_claim *c, uint64_t tag,
                     uint64_t now_ms, struct owner_cache *oc)
{
    uint32_t st = tag_state(tag);
    if (st != CLAIM_TAKEN && st != CLAIM_NACKED)
        return 0;
    uint64_t lease = load_acquire(&c->lease); /* pairs with store_release of the lease */
    if (lease_matches(lease, tag) && lease_deadline_ms(lease) <= now_ms)
        return 1;
    return st == CLAIM_TAKEN && oc && !owner_alive(r, oc, tag_member(tag), tag_gen(tag));
}

/* Take over one due claim of [floor, next), or dead-letter it after max attempts. */
static int redeliver(struct ahr_ring *r, uint32_t gi, uint32_t m, uint32_t mgen,
                     int check_owners, struct ahr_msg *out)
{
    struct seg_group *g = &r->groups[gi];
    uint64_t f, nx;
    int rc = group_window(r, g, &f, &nx);
    if (rc)
        return rc;
    uint64_t now_ms = mono_ns() / 1000000ull;
    /* Our own claims' owner is alive without asking /proc (a member holding a batch would
     * otherwise read its own /proc/<pid>/stat before every sleep). */
    uint64_t own = make_tag(0, mgen, m, 0, CLAIM_TAKEN);
    struct owner_cache cache = {.n = 1, .key = {tag_gen(own) << 12 | tag_member(own)},
                                .alive = {1}};
    for (uint64_t s = f; s < nx;) {
        const struct seg_desc *d = &r->descs[s & r->mask];
        uint64_t ss = load_acquire(&d->seqstate);
        uint32_t span = desc_span(r, d, ss);
        if (ss_seq(ss) != s || span == 0)
            return -EAGAIN; /* the floor moved past s meanwhile */
        struct seg_claim *c = claim_at(r, gi, s);
        uint64_t lap = lap_of(r, s);
        uint64_t tag = load_acquire(&c->tag);
        if (tag_lap(tag) == (lap & 0xffffffffull) && claim_due(r, c, tag, now_ms, check_owners ? &cache : NULL)) {
            uint32_t attempts = tag_attempts(tag);
            int was_nacked = tag_state(tag) == CLAIM_NACKED;
            int dead = attempts >= load_relaxed(&g->max_attempts);
            uint64_t next_tag = dead ? make_tag(lap, tag_gen(tag), tag_member(tag), attempts,
                                                CLAIM_DEAD)
                                     : make_tag(lap, mgen, m, attempts + 1, CLAIM_TAKEN);
            if (cas_acq_rel(&c->tag, &tag, next_tag)) {
                if (was_nacked)
                    atomic_fetch_sub_explicit(&g->nacked, 1, memory_order_relaxed);
                if (dead) {
                    fetch_add_relaxed(&g->deadlettered, 1);
                    advance_floor(r, gi);
                } else {
                    uint64_t lease_ms = load_relaxed(&g->lease_ns) / 1000000ull;
                    store_release(&c->lease, make_lease(lap, attempts + 1, now_ms + lease_ms));
                    fetch_add_relaxed(&g->redelivered, 1);
                    fetch_add_relaxed(&g->delivered, 1);
                    return fill_msg(r, s, d, span, attempts + 1, out);
                }
            }
        }
        s += span;
    }
    return -EAGAIN;
}

/* A sequence the group waits for is reserved by a dead producer, or was taken by one
 * that died before writing its descriptor: turn it into tombstones. */
static void recover_intent(struct ahr_ring *r, uint64_t s)
{
    for (uint32_t i = 0; i < r->cfg.max_members; i++) {
        struct seg_member *e = &r->members[i];
        uint64_t first = load_acquire(&e->intent_seq); /* pairs with take_sequences */
        uint64_t end = load_relaxed(&e->intent_end);
        if (first == 0 || s < first - 1 || s >= end || end - s > r->cfg.slot_count)
            continue;
        if (entry_process_alive(e))
            return; /* still writing its descriptor */
        uint64_t t = s;
        for (; t < end; t++) { /* one-slot tombstones: the dead span's length is unknown */
            struct seg_desc *d = &r->descs[t & r->mask];
            uint64_t old = load_acquire(&d->seqstate);
            if (!desc_stale(old, t) || !cas_acq_rel(&d->seqstate, &old, t << 4 | DESC_TOMB1))
                break;
        }
        store_release(&e->intent_seq, 0);
        if (t > s)
            publish_notify(r, t - 1);
        return;
    }
}

static void recover_stuck(struct ahr_ring *r, uint64_t s)
{
    if (s >= load_acquire(&r->hdr->head))
        return; /* not taken by any producer yet: nothing to recover */
    struct seg_desc *d = &r->descs[s & r->mask];
    uint64_t ss = load_acquire(&d->seqstate);
    if (ss == (s << 4 | DESC_RESERVED)) {
        uint32_t owner = load_relaxed(&d->owner); /* atomic: see layout.h */
        if (!member_alive(r, owner & 0xfff, owner >> 12) &&
            cas_acq_rel(&d->seqstate, &ss, s << 4 | DESC_TOMBSTONE))
            publish_notify(r, s);
        return;
    }
    if (desc_stale(ss, s))
        recover_intent(r, s);
}

static int poll_once(struct ahr_ring *r, uint32_t gi, uint32_t m, uint32_t mgen,
                     struct ahr_msg *out, uint64_t *stuck)
{
    struct seg_group *g = &r->groups[gi];
    uint64_t now = 0;
    int periodic = 0;
    /* the clock is read every 256th poll only: a scan is due every SCAN_INTERVAL_NS */
    if ((fetch_add_relaxed(&r->polls, 1) & 255) == 0) {
        now = mono_ns();
        periodic = now >= load_relaxed(&r->next_scan_ns);
    }
    if (periodic || load_relaxed(&g->nacked)) {
        if (periodic)
            store_relaxed(&r->next_scan_ns, now + SCAN_INTERVAL_NS);
        int rc = redeliver(r, gi, m, mgen, periodic, out);
        if (rc != -EAGAIN)
            return rc;
    }
    int rc = take_new(r, gi, m, mgen, out, stuck, 0);
    if (rc == 0)
        fetch_add_relaxed(&g->delivered, 1);
    return rc;
}

static void wait_published(struct ahr_ring *r, uint32_t seen, uint64_t ns)
{
    struct seg_header *h = r->hdr;
    atomic_fetch_add_explicit(&h->consumer_waiters, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&h->published_count, memory_order_seq_cst) == seen)
        futex_wait(&h->published_count, seen, ns);
    atomic_fetch_sub_explicit(&h->consumer_waiters, 1, memory_order_seq_cst);
}

int ahr_get_next(struct ahr_ring *r, uint32_t group, uint32_t m, int64_t timeout_ns,
                 struct ahr_msg *out)
{
    if (!r)
        return -EBADF; /* a closed handle */
    uint32_t gi;
    int rc = resolve(r, group, m, &gi);
    if (rc || !out)
        return rc ? rc : -EINVAL;
    uint32_t mgen = member_gen(r, m);
    uint64_t stuck;
    rc = poll_once(r, gi, m, mgen, out, &stuck); /* the fast path reads no shared counter */
    if (rc != -EAGAIN)
        return rc;
    /* No clock read on the fast path, nor on a handoff caught by the first pause-spins:
     * the deadline is read when the spin turns to sched_yield (< 1 us after the call). */
    struct lazy_deadline dl = {timeout_ns, 0};
    uint64_t spin_until = 0;
    for (uint32_t spins = 0;; spins++) {
        if (spins == 64)
            deadline_of(&dl);
        /* read before the poll that finds nothing, so a commit in between is not missed */
        uint32_t seen = atomic_load_explicit(&r->hdr->published_count, memory_order_seq_cst);
        rc = poll_once(r, gi, m, mgen, out, &stuck);
        if (rc != -EAGAIN)
            return rc;
        /* A bounded spin first: a busy pipeline then hands over without any syscall. */
        if (timeout_ns != 0 && spinning(&spin_until, spins))
            continue;
        /* Slow path, once per sleep: look for the dead before sleeping. */
        rc = redeliver(r, gi, m, mgen, 1, out);
        if (rc != -EAGAIN)
            return rc;
        if (stuck != NO_SEQ)
            recover_stuck(r, stuck);
        uint64_t deadline = deadline_of(&dl), now = mono_ns();
        if (now >= deadline)
            return -EAGAIN;
        wait_published(r, seen, deadline - now < SLICE_NS ? deadline - now : SLICE_NS);
    }
}

int ahr_get_next_batch(struct ahr_ring *r, uint32_t group, uint32_t m, uint32_t n,
                       int64_t timeout_ns, struct ahr_msg *out)
{
    if (!r)
        return -EBADF; /* a closed handle */
    if (n == 0)
        return 0;
    int rc = ahr_get_next(r, group, m, timeout_ns, &out[0]);
    if (rc || n == 1)
        return rc ? rc : 1;
    uint32_t gi = (uint32_t)group_index(r, group);
    uint32_t mgen = member_gen(r, m);
    uint32_t got = 1;
    uint64_t stuck, now_ms = lease_clock_ms(); /* one clock read for the leases */
    /* The descriptors ahead were written by the producer's core: ask for them all at once.
     * Each claim below is a locked CAS, which would otherwise wait for one miss at a time. */
    uint64_t nx = load_relaxed(&r->groups[gi].next);
    for (uint32_t i = 0; i < n - 1 && i < r->cfg.slot_count; i++)
        __builtin_prefetch(&r->descs[(nx + i) & r->mask]);
    while (got < n && take_new(r, gi, m, mgen, &out[got], &stuck, now_ms) == 0)
        got++;
    if (got > 1) /* counted once: the counter shares a line with the floor producers read */
        fetch_add_relaxed(&r->groups[gi].delivered, got - 1);
    return (int)got;
}

int ahr_batch_shape(const struct ahr_ring *r, const struct ahr_msg *msgs, uint32_t n,
                    struct ahr_batch_shape *out)
{
    if (!r)
        return -EBADF; /* a closed handle */
    if (!r || !out || (n && !msgs))
        return -EINVAL;
    memset(out, 0, sizeof *out);
    out->data_len = UINT64_MAX;
    if (n == 0)
        return 0;
    uint64_t first = msgs[0].seq;
    uint64_t step = n > 1 ? msgs[1].seq - first : msgs[0].span;
    uint64_t slot = first & r->mask;
    uint64_t len = msgs[0].data_len;
    /* every index the run covers lies in this lap: slot + (n - 1) * step < N */
    int run = step >= 1 && step <= r->cfg.slot_count &&
              (uint64_t)(n - 1) * step < r->cfg.slot_count - slot;
    uint32_t flags = 0;
    for (uint32_t i = 0; i < n; i++) {
        const struct ahr_msg *m = &msgs[i];
        flags |= m->flags;
        if (m->data_len != len)
            len = UINT64_MAX;
        if (run && (m->seq != first + i * step ||
                    m->data_offset != r->slots_offset + ((first & r->mask) + i * step) *
                                                            (uint64_t)r->cfg.slot_size))
            run = 0;
    }
    out->data_len = len;
    out->first_slot = (uint32_t)slot;
    out->step = run && len != UINT64_MAX ? (uint32_t)step : 0;
    out->flags = flags;
    return 0;
}

/* Our own claim on seq, if it is still ours: the tag, else 0. */
static uint64_t own_claim(const struct ahr_ring *r, uint32_t gi, uint32_t m, uint64_t seq,
                          uint32_t state)
{
    const struct seg_group *g = &r->groups[gi];
    if (seq < load_acquire(&g->floor) || seq >= load_acquire(&g->next))
        return 0;
    uint64_t tag = load_acquire(&claim_at(r, gi, seq)->tag);
    if (tag_lap(tag) != (lap_of(r, seq) & 0xffffffffull) || tag_state(tag) != state ||
        tag_member(tag) != m || tag_gen(tag) != member_gen(r, m))
        return 0;
    return tag;
}

/* Acknowledge our own claim on seq: 1 if done, 0 if it is no longer ours. */
static int ack_claim(struct ahr_ring *r, uint32_t gi, uint32_t m, uint64_t seq)
{
    uint64_t tag = own_claim(r, gi, m, seq, CLAIM_TAKEN);
    uint64_t acked = (tag & ~0xfull) | CLAIM_ACKED;
    /* seq_cst: pairs with the seq_cst tag load in advance_floor */
    return tag && atomic_compare_exchange_strong(&claim_at(r, gi, seq)->tag, &tag, acked);
}

int ahr_ack(struct ahr_ring *r, uint32_t group, uint32_t m, uint64_t seq)
{
    if (!r)
        return -EBADF; /* a closed handle */
    uint32_t gi;
    int rc = resolve(r, group, m, &gi);
    if (rc)
        return rc;
    if (!ack_claim(r, gi, m, seq))
        return -ESTALE;
    fetch_add_relaxed(&r->groups[gi].acked, 1);
    advance_floor(r, gi);
    return 0;
}

int ahr_ack_batch(struct ahr_ring *r, uint32_t group, uint32_t m, const uint64_t *seqs,
                  uint32_t n)
{
    if (!r)
        return -EBADF; /* a closed handle */
    uint32_t gi;
    int rc = resolve(r, group, m, &gi);
    if (rc)
        return rc;
    uint32_t done = 0;
    for (uint32_t i = 0; i < n; i++)
        done += (uint32_t)ack_claim(r, gi, m, seqs[i]);
    fetch_add_relaxed(&r->groups[gi].acked, done);
    advance_floor(r, gi);
    return (int)done;
}

int ahr_find_claim(const struct ahr_ring *r, uint32_t group, uint32_t m, uint32_t stream,
                   uint64_t id, uint64_t *seq)
{
    if (!r)
        return -EBADF; /* a closed handle */
    uint32_t gi;
    int rc = resolve(r, group, m, &gi);
    if (rc || !seq)
        return rc ? rc : -EINVAL;
    uint64_t f, nx;
    rc = group_window(r, &r->groups[gi], &f, &nx);
    if (rc)
        return rc == -EAGAIN ? -ENOENT : rc; /* members kept moving it: not found now */
    for (uint64_t s = f; s < nx;) {
        const struct seg_desc *d = &r->descs[s & r->mask];
        uint64_t ss = load_acquire(&d->seqstate);
        uint32_t span = desc_span(r, d, ss);
        if (ss_seq(ss) != s || span == 0)
            return -ENOENT; /* the window moved: it is no longer held */
        if (ss_state(ss) == DESC_PUBLISHED && d->id == id && d->stream == stream &&
            own_claim(r, gi, m, s, CLAIM_TAKEN)) {
            *seq = s;
            return 0;
        }
        s += span;
    }
    return -ENOENT;
}

/* Turn this member's TAKEN claim on seq into NACKED, due after delay_ns; count_attempt 0
 * takes this delivery off the attempts (a claim given back unused). */
static int give_back(struct ahr_ring *r, uint32_t group, uint32_t m, uint64_t seq,
                     uint64_t delay_ns, int count_attempt)
{
    uint32_t gi;
    int rc = resolve(r, group, m, &gi);
    if (rc)
        return rc;
    uint64_t tag = own_claim(r, gi, m, seq, CLAIM_TAKEN);
    if (!tag)
        return -ESTALE;
    struct seg_claim *c = claim_at(r, gi, seq);
    uint32_t attempts = tag_attempts(tag);
    if (!count_attempt && attempts > 0)
        attempts--;
    uint64_t due_ms = (mono_ns() + delay_ns) / 1000000ull;
    /* State first, deadline second. The other order let a scanner see a TAKEN claim whose
     * lease was already the (short) nack delay and take it from a live owner (test_threads:
     * a second delivery, then this nack failing). In this order a scanner that sees
     * NACKED before the new deadline lands still reads the claim's own lease: not due. */
    uint64_t nacked = make_tag(tag_lap(tag), tag_gen(tag), tag_member(tag), attempts,
                               CLAIM_NACKED);
    if (!cas_acq_rel(&c->tag, &tag, nacked))
        return -ESTALE;
    store_release(&c->lease, make_lease(tag_lap(tag), attempts, due_ms));
    atomic_fetch_add_explicit(&r->groups[gi].nacked, 1, memory_order_relaxed);
    return 0;
}

int ahr_nack(struct ahr_ring *r, uint32_t group, uint32_t m, uint64_t seq, uint64_t delay_ns)
{
    if (!r)
        return -EBADF; /* a closed handle */
    return give_back(r, group, m, seq, delay_ns, 1);
}

int ahr_release(struct ahr_ring *r, uint32_t group, uint32_t m, uint64_t seq)
{
    if (!r)
        return -EBADF; /* a closed handle */
    return give_back(r, group, m, seq, 0, 0);
}

/* ---------------------------------------------------------------- latest readers */

/* Copy message s's data if the descriptor still holds it afterwards (a seqlock read). */
static int copy_if_intact(const struct ahr_ring *r, uint64_t s, void *dst, uint64_t cap,
                          struct ahr_msg *out)
{
    const struct seg_desc *d = &r->descs[s & r->mask];
    uint64_t before = load_acquire(&d->seqstate); /* pairs with the CAS in ahr_commit */
    if (before != (s << 4 | DESC_PUBLISHED))
        return -ESTALE;
    uint32_t span = desc_span(r, d, before);
    if (span == 0 || fill_msg(r, s, d, span, 0, out))
        return -ESTALE; /* fields torn by a concurrent overwrite */
    if (out->data_len > cap)
        return -EMSGSIZE;
    memcpy(dst, r->base + out->data_offset, out->data_len);
    atomic_thread_fence(memory_order_acquire); /* the copy happens before the re-check */
    /* The descriptor alone is not enough: a later lap's message that starts at an earlier
     * slot can span over this one without touching its descriptor (test_latest found torn
     * copies). The slots are intact while no sequence >= s + N is taken: head <= s + N. */
    if (load_relaxed(&r->hdr->head) > s + r->cfg.slot_count)
        return -ESTALE;
    return load_relaxed(&d->seqstate) == before ? 0 : -ESTALE;
}

int ahr_read_last(const struct ahr_ring *r, void *dst, uint64_t cap, struct ahr_msg *out)
{
    if (!r)
        return -EBADF; /* a closed handle */
    for (int tries = 0; tries < 16; tries++) {
        uint64_t last = load_acquire(&r->hdr->last_published);
        if (last == 0)
            return -EAGAIN;
        int rc = copy_if_intact(r, last - 1, dst, cap, out);
        if (rc != -ESTALE)
            return rc;
        /* overwritten, or the newest is a tombstone: look back for a published one */
        for (uint64_t s = last - 1; s > 0 && last - s < r->cfg.slot_count; s--) {
            rc = copy_if_intact(r, s - 1, dst, cap, out);
            if (rc != -ESTALE)
                return rc;
        }
    }
    return -ESTALE;
}

int ahr_read_by_id(const struct ahr_ring *r, uint32_t stream, uint64_t id, void *dst,
                   uint64_t cap, struct ahr_msg *out)
{
    if (!r)
        return -EBADF; /* a closed handle */
    uint64_t best = NO_SEQ;
    for (uint32_t i = 0; i < r->cfg.slot_count; i++) {
        const struct seg_desc *d = &r->descs[i];
        uint64_t ss = load_acquire(&d->seqstate);
        if (ss_state(ss) == DESC_PUBLISHED && d->id == id && d->stream == stream &&
            (best == NO_SEQ || ss_seq(ss) > best))
            best = ss_seq(ss);
    }
    if (best == NO_SEQ)
        return -ENOENT;
    int rc = copy_if_intact(r, best, dst, cap, out);
    return rc == -ESTALE ? -ENOENT : rc;
}

/* One part of a dataset (or, with substream 0, a message that is not a dataset part): a
 * live viewer assembles a whole detector frame from these. read_by_id cannot do it, since
 * the n parts of a frame share (stream, id) and it takes the newest of them. The id,
 * stream and substream are read again inside the seqlock (fill_msg) and compared: the scan
 * reads them without it, and a torn read must not hand out another message's bytes. */
int ahr_read_part(const struct ahr_ring *r, uint32_t stream, uint64_t id, uint32_t substream,
                  void *dst, uint64_t cap, struct ahr_msg *out)
{
    if (!r)
        return -EBADF; /* a closed handle */
    if (!out || (cap && !dst) || stream >= r->cfg.max_streams)
        return -EINVAL;
    unsigned char none;
    if (!dst)
        dst = &none; /* a probe (cap 0): memcpy of 0 bytes still wants a valid pointer */
    uint64_t best = NO_SEQ;
    for (uint32_t i = 0; i < r->cfg.slot_count; i++) {
        const struct seg_desc *d = &r->descs[i];
        uint64_t ss = load_acquire(&d->seqstate);
        if (ss_state(ss) == DESC_PUBLISHED && d->id == id && d->stream == stream &&
            d->ds_substream == substream && (best == NO_SEQ || ss_seq(ss) > best))
            best = ss_seq(ss);
    }
    if (best == NO_SEQ)
        return -ENOENT;
    int rc = copy_if_intact(r, best, dst, cap, out);
    if (rc)
        return rc; /* -ESTALE: overwritten while copying; -EMSGSIZE: out has data_len */
    if (out->id != id || out->stream != stream || out->ds_substream != substream)
        return -ESTALE;
    return 0;
}

int ahr_read_tail(const struct ahr_ring *r, const struct ahr_msg *msg, void *dst, uint64_t cap)
{
    if (!r)
        return -EBADF; /* a closed handle */
    uint64_t len = (uint64_t)msg->name_len + msg->meta_len;
    uint64_t limit = r->slots_offset + (uint64_t)r->cfg.slot_count * r->cfg.slot_size;
    if (len > cap || msg->name_offset < r->slots_offset || msg->name_offset + len > limit)
        return -EINVAL;
    const struct seg_desc *d = &r->descs[msg->seq & r->mask];
    uint64_t before = load_acquire(&d->seqstate);
    memcpy(dst, r->base + msg->name_offset, len);
    atomic_thread_fence(memory_order_acquire);
    if (ss_seq(before) != msg->seq || load_relaxed(&d->seqstate) != before)
        return -ESTALE;
    /* as in copy_if_intact: a later lap may span over these slots from an earlier one */
    if (load_relaxed(&r->hdr->head) > msg->seq + r->cfg.slot_count)
        return -ESTALE;
    return 0;
}

/* ---------------------------------------------------------------- statistics */

int ahr_group_stats(const struct ahr_ring *r, uint32_t group, struct ahr_group_stats *out)
{
    if (!r)
        return -EBADF; /* a closed handle */
    int gi = group_index(r, group);
    if (gi < 0)
        return gi;
    const struct seg_group *g = &r->groups[gi];
    out->next = load_relaxed(&g->next);
    out->floor = load_relaxed(&g->floor);
    out->delivered = load_relaxed(&g->delivered);
    out->acked = load_relaxed(&g->acked);
    out->redelivered = load_relaxed(&g->redelivered);
    out->deadlettered = load_relaxed(&g->deadlettered);
    out->nacked = load_relaxed(&g->nacked);
    out->durable = g->durable;
    out->stream_filter = g->stream_filter;
    return 0;
}

int ahr_ring_stats(const struct ahr_ring *r, struct ahr_ring_stats *out)
{
    if (!r)
        return -EBADF; /* a closed handle */
    out->head = load_relaxed(&r->hdr->head);
    out->published = load_relaxed(&r->hdr->last_published);
    out->min_floor = min_floor(r, UINT32_MAX);
    out->members = 0;
    out->groups = 0;
    for (uint32_t i = 0; i < r->cfg.max_members; i++)
        out->members += (load_relaxed(&r->members[i].word) & 0xff) != MEMBER_FREE;
    for (uint32_t i = 0; i < r->cfg.max_groups; i++)
        out->groups += load_relaxed(&r->groups[i].state) == GROUP_LIVE;
    return 0;
}

int ahr_live_members(const struct ahr_ring *r)
{
    if (!r)
        return -EBADF; /* a closed handle */
    int live = 0;
    for (uint32_t i = 0; i < r->cfg.max_members; i++)
        live += entry_process_alive(&r->members[i]);
    return live;
}
