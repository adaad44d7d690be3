#include "agent/src/dataplane/map_ops.hpp"

#include <bpf/bpf.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "common/abi.hpp"

namespace kmesh {

namespace {

struct MapShape {
    const char* name;
    size_t key_size;
    size_t value_size;
};

constexpr std::array<MapShape, kMapCount> kShapes{{
    {"km_frontend", sizeof(kmesh_frontend_key), sizeof(kmesh_frontend_value)},
    {"km_service", sizeof(uint32_t), sizeof(kmesh_service_value)},
    {"km_endpoint", sizeof(kmesh_endpoint_key), sizeof(kmesh_endpoint_value)},
    {"km_backend", sizeof(uint32_t), sizeof(kmesh_backend_value)},
    {"km_port", sizeof(kmesh_port_key), sizeof(kmesh_port_value)},
    {"km_waypoint", sizeof(uint64_t), sizeof(kmesh_waypoint_value)},
    {"km_wp_dest", sizeof(kmesh_wp_dest_key), sizeof(kmesh_wp_dest_value)},
    {"km_member", sizeof(kmesh_member_key), sizeof(kmesh_member_value)},
    {"km_split", sizeof(uint32_t), sizeof(kmesh_split_value)},
    {"km_limit_cfg", sizeof(uint32_t), sizeof(kmesh_limit_cfg)},
    {"km_ratelimit", sizeof(kmesh_ratelimit_key), sizeof(kmesh_ratelimit_value)},
}};

int result(int rc) { return rc < 0 ? -errno : 0; }

}  // namespace

const char* map_name(MapId id) { return kShapes[static_cast<int>(id)].name; }
size_t map_key_size(MapId id) { return kShapes[static_cast<int>(id)].key_size; }
size_t map_value_size(MapId id) { return kShapes[static_cast<int>(id)].value_size; }

int KernelMapOps::update(MapId map, const void* key, const void* value) {
    return result(bpf_map_update_elem(fds_[static_cast<int>(map)], key, value, BPF_ANY));
}

int KernelMapOps::remove(MapId map, const void* key) {
    return result(bpf_map_delete_elem(fds_[static_cast<int>(map)], key));
}

// The kernel's answer when a map type has no batch operation is ENOTSUPP (524, kernel-internal, no
// libc name); a kernel older than 5.6 does not know the command at all and says EINVAL. Either way
// nothing was done when the first entry is the one reported: the caller then goes one by one, and
// a single update() of that entry reports its own error if it has one.
int batch_result(int rc, uint32_t done) {
    if (rc >= 0) return 0;
    int err = -errno;
    constexpr int kEnotsupp = 524;
    if (done == 0 && (err == -kEnotsupp || err == -EOPNOTSUPP || err == -EINVAL)) return -EOPNOTSUPP;
    return err;
}

int KernelMapOps::update_batch(MapId map, const void* keys, const void* values, uint32_t n, uint32_t* done) {
    if (!batch_) return MapOps::update_batch(map, keys, values, n, done);
    LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = BPF_ANY);
    uint32_t count = n;
    int rc = bpf_map_update_batch(fds_[static_cast<int>(map)], keys, values, &count, &opts);
    *done = rc < 0 ? std::min(count, n) : n;
    return batch_result(rc, *done);
}

int KernelMapOps::remove_batch(MapId map, const void* keys, uint32_t n, uint32_t* done) {
    if (!batch_) return MapOps::remove_batch(map, keys, n, done);
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    uint32_t count = n;
    int rc = bpf_map_delete_batch(fds_[static_cast<int>(map)], keys, &count, &opts);
    *done = rc < 0 ? std::min(count, n) : n;
    return batch_result(rc, *done);
}

int KernelMapOps::lookup(MapId map, const void* key, void* value) const {
    return result(bpf_map_lookup_elem(fds_[static_cast<int>(map)], key, value));
}

void KernelMapOps::for_each(MapId map, const std::function<bool(const void*, const void*)>& fn) const {
    const MapShape& shape = kShapes[static_cast<int>(map)];
    int fd = fds_[static_cast<int>(map)];
    std::vector<uint8_t> key(shape.key_size), next(shape.key_size), value(shape.value_size);
    const void* prev = nullptr;  // NULL asks for the first key
    while (bpf_map_get_next_key(fd, prev, next.data()) == 0) {
        key.swap(next);
        prev = key.data();
        // The entry can vanish between get_next_key and lookup; skip it.
        if (bpf_map_lookup_elem(fd, key.data(), value.data()) == 0 && !fn(key.data(), value.data())) return;
    }
}

}  // namespace kmesh
