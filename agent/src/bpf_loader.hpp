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
    uint32_t ports = KMESH_DEFAULT_MAX_PORTS;
};

// Mounts bpffs at root unless one is there already. Returns an error message or "".
std::string ensure_bpffs(const std::string& root);

class Dataplane {
  public:
    ~Dataplane();
    Dataplane(const Dataplane&) = delete;
    Dataplane& operator=(const Dataplane&) = delete;

    // Takes the node-wide agent lock, then loads the programs: reuses this ABI's pinned maps (so a
    // restart keeps serving) and creates and pins missing ones. The programs are not published yet.
    // Returns nullptr with *error set on failure.
    static std::unique_ptr<Dataplane> load(const PinLayout& layout, const MapSizes& sizes,
                                           std::string* error);

    // Call once the maps hold the mesh: pins the programs for kmesh-cni, moves already-attached
    // pods to them in place, forgets pods whose cgroup is gone, and drops other ABIs' maps.
    std::string publish(const PinLayout& layout);

    std::array<int, kMapCount> map_fds() const;
    bool reused_maps() const { return reused_maps_; }
    int links_updated() const { return links_updated_; }
    int pods_forgotten() const { return pods_forgotten_; }

  private:
    Dataplane(kmesh_sock* skel, int lock_fd) : skel_(skel), lock_fd_(lock_fd) {}

    kmesh_sock* skel_;
    int lock_fd_;
    bool reused_maps_ = false;
    int links_updated_ = 0;
    int pods_forgotten_ = 0;
};

// Holds an exclusive lock on <bpffs>/kmesh while alive, so that two agents (or an agent and
// uninstall) never write the same maps. Returns -1 with *error set when another holder exists.
int lock_kmesh_dir(const PinLayout& layout, std::string* error);

// Detaches every pod (unpins its links), then removes the pinned programs and maps. Refuses while an
// agent runs. Returns the problems met; an already clean state is not a problem.
std::string uninstall(const PinLayout& layout);

}  // namespace kmesh
