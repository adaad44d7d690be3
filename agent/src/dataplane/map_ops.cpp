#include "agent/src/dataplane/map_ops.hpp"

#include <bpf/bpf.h>

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
}};

int result(int rc) { return rc < 0 ? -errno : 0; }

}  // namespace

const char* map_name(MapId id) { return kShapes[static_cast<int>(id)].name; }

int KernelMapOps::update(MapId map, const void* key, const void* value) {
    return result(bpf_map_update_elem(fds_[static_cast<int>(map)], key, value, BPF_ANY));
}

int KernelMapOps::remove(MapId map, const void* key) {
    return result(bpf_map_delete_elem(fds_[static_cast<int>(map)], key));
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
