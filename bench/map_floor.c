// The kernel's own cost of programming N services (issue 12), independent of the agent's code: the
// physical floor under "file to maps". Creates hash maps of the agent's shapes (bpf/kmesh_abi.h key
// and value structs, BPF_F_NO_PREALLOC, bpf/include/maps.h's default max_entries) and writes the
// entry counts bench/mesh_config.py N gives (per map: N+1 frontends, N services, 2N-1 endpoints,
// backends and members; 79,998 entries at N = 10,000) with BPF_MAP_UPDATE_BATCH, one call per map.
// Keys are distinct and the values non-zero, built before the clock starts: only kernel work is
// timed. Also times the same writes into the now warm maps (replacing every value), one
// bpf_map_update_elem per entry, and preallocated maps (no allocation per element), for reference.
//
//   cc -O2 -o /tmp/map_floor bench/map_floor.c -lbpf && /tmp/map_floor 10000 [reps]
//
// Needs root (CAP_BPF). Maps are anonymous (never pinned) and gone at exit.
#include <bpf/bpf.h>
#include <errno.h>
#include <linux/types.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bpf/kmesh_abi.h"

struct shape {
    const char* name;
    uint32_t key_size, value_size, max_entries, count;
    void *keys, *values;
    int fd;
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

// Entry i's key: distinct across i, shaped like the agent's (ids from 1, IPv4-mapped addresses).
static void fill_key(int map, uint32_t i, void* k) {
    switch (map) {
        case 0: {  // km_frontend: VIP:port
            struct kmesh_frontend_key* f = k;
            memset(f, 0, sizeof *f);
            f->addr[10] = f->addr[11] = 0xff;
            f->addr[12] = 10;
            f->addr[13] = (uint8_t)(97 + (i >> 16));
            f->addr[14] = (uint8_t)(i >> 8);
            f->addr[15] = (uint8_t)i;
            f->port = htobe16(80);
            break;
        }
        case 1:  // km_service: service id
        case 3:  // km_backend: backend id
            *(uint32_t*)k = i + 1;
            break;
        case 2: {  // km_endpoint: (service, family, prio, index)
            struct kmesh_endpoint_key* e = k;
            memset(e, 0, sizeof *e);
            e->service_id = i / 2 + 1;
            e->index = i % 2 + 1;
            break;
        }
        case 4: {  // km_member: (service, backend)
            struct kmesh_member_key* m = k;
            m->service_id = i / 2 + 1;
            m->backend_id = i + 1;
            break;
        }
    }
}

static int create(struct shape* s, int prealloc) {
    LIBBPF_OPTS(bpf_map_create_opts, o, .map_flags = prealloc ? 0 : BPF_F_NO_PREALLOC);
    s->fd = bpf_map_create(BPF_MAP_TYPE_HASH, s->name, s->key_size, s->value_size, s->max_entries, &o);
    if (s->fd < 0) fprintf(stderr, "bpf_map_create %s: %s (run as root)\n", s->name, strerror(errno));
    return s->fd;
}

static int write_batch(struct shape* s, int nmaps) {
    LIBBPF_OPTS(bpf_map_batch_opts, bo, .elem_flags = BPF_ANY);
    for (int m = 0; m < nmaps; m++) {
        uint32_t n = s[m].count;
        if (bpf_map_update_batch(s[m].fd, s[m].keys, s[m].values, &n, &bo) || n != s[m].count) {
            fprintf(stderr, "update_batch %s: %s (%u of %u)\n", s[m].name, strerror(errno), n, s[m].count);
            return -1;
        }
    }
    return 0;
}

static int write_single(struct shape* s, int nmaps) {
    for (int m = 0; m < nmaps; m++)
        for (uint32_t i = 0; i < s[m].count; i++)
            if (bpf_map_update_elem(s[m].fd, (char*)s[m].keys + (size_t)i * s[m].key_size,
                                    (char*)s[m].values + (size_t)i * s[m].value_size, BPF_ANY)) {
                fprintf(stderr, "update %s: %s\n", s[m].name, strerror(errno));
                return -1;
            }
    return 0;
}

static void close_all(struct shape* s, int nmaps) {
    for (int m = 0; m < nmaps; m++) close(s[m].fd);
}

int main(int argc, char** argv) {
    uint32_t n = argc > 1 ? (uint32_t)atoi(argv[1]) : 10000;
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    if (n < 2) n = 2;
    struct shape s[] = {
        {"km_frontend", sizeof(struct kmesh_frontend_key), sizeof(struct kmesh_frontend_value),
         KMESH_DEFAULT_MAX_FRONTENDS, n + 1},
        {"km_service", 4, sizeof(struct kmesh_service_value), KMESH_DEFAULT_MAX_SERVICES, n},
        {"km_endpoint", sizeof(struct kmesh_endpoint_key), sizeof(struct kmesh_endpoint_value),
         KMESH_DEFAULT_MAX_ENDPOINTS, 2 * n - 1},
        {"km_backend", 4, sizeof(struct kmesh_backend_value), KMESH_DEFAULT_MAX_BACKENDS, 2 * n - 1},
        {"km_member", sizeof(struct kmesh_member_key), sizeof(struct kmesh_member_value),
         KMESH_DEFAULT_MAX_MEMBERS, 2 * n - 1},
    };
    const int nmaps = sizeof s / sizeof s[0];
    uint64_t total = 0;
    for (int m = 0; m < nmaps; m++) {
        if (s[m].count > s[m].max_entries) s[m].max_entries = s[m].count * 2;
        s[m].keys = calloc(s[m].count, s[m].key_size);
        s[m].values = calloc(s[m].count, s[m].value_size);
        for (uint32_t i = 0; i < s[m].count; i++) {
            fill_key(m, i, (char*)s[m].keys + (size_t)i * s[m].key_size);
            memset((char*)s[m].values + (size_t)i * s[m].value_size, 1, s[m].value_size);
        }
        total += s[m].count;
    }
    printf("map_floor: %u services, %lu entries in %d hash maps (agent shapes, default max_entries)\n", n,
           (unsigned long)total, nmaps);
    printf("%-4s %12s %14s %14s %14s %14s %14s\n", "rep", "create_ms", "batch_cold_ms", "batch_warm_ms",
           "single_cold_ms", "prealloc_cold", "prealloc_create");
    for (int r = 0; r < reps; r++) {
        double t0 = now_ms();
        for (int m = 0; m < nmaps; m++)
            if (create(&s[m], 0) < 0) return 1;
        double t1 = now_ms();
        if (write_batch(s, nmaps)) return 1;
        double t2 = now_ms();
        if (write_batch(s, nmaps)) return 1;  // warm: every key present, values replaced
        double t3 = now_ms();
        close_all(s, nmaps);
        for (int m = 0; m < nmaps; m++)
            if (create(&s[m], 0) < 0) return 1;
        double t4 = now_ms();
        if (write_single(s, nmaps)) return 1;
        double t5 = now_ms();
        close_all(s, nmaps);
        double t6 = now_ms();
        for (int m = 0; m < nmaps; m++)
            if (create(&s[m], 1) < 0) return 1;
        double t7 = now_ms();
        if (write_batch(s, nmaps)) return 1;
        double t8 = now_ms();
        close_all(s, nmaps);
        printf("%-4d %12.2f %14.2f %14.2f %14.2f %14.2f %14.2f\n", r, t1 - t0, t2 - t1, t3 - t2, t5 - t4,
               t8 - t7, t7 - t6);
        fflush(stdout);
        usleep(200000);  // let the maps' RCU frees finish before the next rep
    }
    return 0;
}
