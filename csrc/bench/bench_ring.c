/* C-only ring throughput: one producer process, one consumer process, small messages.
 *   bench_ring [count] [size] [batch]
 * Prints messages/s for single calls and for batch calls (ahr_send_batch /
 * ahr_get_next_batch / ahr_ack_batch). With two CPUs or more the consumer runs on the first
 * allowed CPU and the producer on the second: left to the scheduler, both sometimes share one
 * CPU for a whole run and the rate drops 3-5x. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "asapo_hpc/ring.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The n-th CPU this process may use, or -1. */
static int nth_cpu(const cpu_set_t *allowed, int n)
{
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, allowed) && n-- == 0)
            return c;
    return -1;
}

static void pin(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    sched_setaffinity(0, sizeof one, &one);
}

static void produce(const char *name, uint64_t count, uint32_t size, uint32_t batch)
{
    struct ahr_ring *r;
    if (ahr_attach(name, &r)) exit(2);
    int m = ahr_join(r, AHR_ROLE_PRODUCER);
    char *buf = calloc(batch, size);
    struct ahr_pub pub = {0};
    pub.data_len = size;
    for (uint64_t id = 1; id <= count;) {
        if (batch > 1) {
            uint32_t n = count - id + 1 < batch ? (uint32_t)(count - id + 1) : batch;
            int got = ahr_send_batch(r, (uint32_t)m, buf, size, n, id, 0, -1);
            if (got <= 0) exit(3);
            id += (uint64_t)got;
        } else {
            pub.id = id++;
            if (ahr_send(r, (uint32_t)m, buf, &pub, NULL, 0, NULL, 0, -1, NULL)) exit(3);
        }
    }
    ahr_leave(r, (uint32_t)m);
    exit(0);
}

static double consume(struct ahr_ring *r, uint64_t count, uint32_t batch)
{
    int m = ahr_join(r, AHR_ROLE_CONSUMER);
    int g = ahr_group_open(r, "bench", AHR_ALL_STREAMS);
    struct ahr_msg msgs[256];
    uint64_t seqs[256];
    double t0 = 0;
    for (uint64_t got = 0; got < count;) {
        int n = ahr_get_next_batch(r, (uint32_t)g, (uint32_t)m, batch, -1, msgs);
        if (n <= 0) { fprintf(stderr, "get_next: %d\n", n); exit(4); }
        if (got == 0) t0 = now_s();
        for (int i = 0; i < n; i++) seqs[i] = msgs[i].seq;
        if (batch > 1) ahr_ack_batch(r, (uint32_t)g, (uint32_t)m, seqs, (uint32_t)n);
        else ahr_ack(r, (uint32_t)g, (uint32_t)m, seqs[0]);
        got += (uint64_t)n;
    }
    double dt = now_s() - t0;
    ahr_leave(r, (uint32_t)m);
    return count / dt;
}

static double run(uint64_t count, uint32_t size, uint32_t batch, const cpu_set_t *allowed)
{
    int two = CPU_COUNT(allowed) >= 2;
    char name[64];
    snprintf(name, sizeof name, "ahr_bench_%d", (int)getpid());
    struct ahr_config cfg;
    ahr_config_default(&cfg);
    cfg.slot_count = 4096;
    cfg.slot_size = (size + 63) / 64 * 64;
    const char *groups[] = {"bench"};
    struct ahr_ring *r;
    ahr_unlink(name);
    if (ahr_create(name, &cfg, groups, 1, 0600, &r)) { perror("create"); exit(1); }
    pid_t pid = fork();
    if (pid == 0) {
        pin(two ? nth_cpu(allowed, 1) : -1);
        produce(name, count, size, batch);
    }
    pin(two ? nth_cpu(allowed, 0) : -1);
    double rate = consume(r, count, batch);
    sched_setaffinity(0, sizeof *allowed, allowed);
    int status;
    waitpid(pid, &status, 0);
    ahr_detach(r);
    ahr_unlink(name);
    return rate;
}

int main(int argc, char **argv)
{
    uint64_t count = argc > 1 ? strtoull(argv[1], NULL, 10) : 2000000;
    uint32_t size = argc > 2 ? (uint32_t)atoi(argv[2]) : 64;
    uint32_t batch = argc > 3 ? (uint32_t)atoi(argv[3]) : 64;
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed)) { perror("sched_getaffinity"); return 1; }
    double single = run(count, size, 1, &allowed), batched = run(count, size, batch, &allowed);
    printf("C ring, %u-byte messages, 2 processes%s: single %.2f M msgs/s, batch(%u) %.2f M "
           "msgs/s\n", size, CPU_COUNT(&allowed) >= 2 ? " on 2 CPUs" : " on 1 CPU",
           single / 1e6, batch, batched / 1e6);
    return 0;
}
