// Lifecycle of the BPF programs and maps: load the skeleton, pin (or reuse pinned) maps, pin the
// programs, move already-attached pods to the new programs, and remove everything on uninstall.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "agent/src/map_ops.hpp"
#include "common/abi.hpp"
#include "common/pin_layout.hpp"

struct kmesh_sock;

namespace kmesh {

struct MapSizes {
    uint32_t frontends = KMESH_DEFAULT_MAX_FRONTENDS;
    uint32_t services = KMESH_DEFAULT_MAX_SERVICES;
    uint32_t endpoints = KMESH_DEFAULT_MAX_ENDPOINTS;
    uint32_t backends = KMESH_DEFAULT_MAX_BACKENDS;
};

// Mounts bpffs at root unless one is there already. Returns an error message or "".
std::string ensure_bpffs(const std::string& root);

class Dataplane {
  public:
    ~Dataplane();
    Dataplane(const Dataplane&) = delete;
    Dataplane& operator=(const Dataplane&) = delete;

    // Loads the programs; reuses maps already pinned (so a restart keeps serving) and creates and
    // pins the missing ones. Returns nullptr with *error set on failure.
    static std::unique_ptr<Dataplane> load(const PinLayout& layout, const MapSizes& sizes,
                                           std::string* error);

    std::array<int, kMapCount> map_fds() const;
    bool reused_maps() const { return reused_maps_; }
    int pods_updated() const { return pods_updated_; }

  private:
    explicit Dataplane(kmesh_sock* skel) : skel_(skel) {}
    std::string pin_programs(const PinLayout& layout);

    kmesh_sock* skel_;
    bool reused_maps_ = false;
    int pods_updated_ = 0;
};

// Detaches every pod (unpins its links), then removes the pinned programs and maps.
// Returns the problems met; an already clean state is not a problem.
std::string uninstall(const PinLayout& layout);

}  // namespace kmesh
