// The kernel-call seam for the xDS-derived maps: the writer talks to MapOps, production uses
// KernelMapOps (bpf syscalls on pinned map fds), unit tests use an in-memory fake.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>

namespace kmesh {

enum class MapId {
    kFrontend = 0,
    kService,
    kEndpoint,
    kBackend,
    kPort,
    // Waypoint redirect (issue 9): waypoint id -> address, destination address -> waypoint id.
    kWaypoint,
    kWaypointDest,
    // Load balancing (issue 10): (service id, backend id) -> weight, while the backend is an endpoint.
    kMember,
};
inline constexpr int kMapCount = 8;

const char* map_name(MapId id);  // the pinned name, e.g. "km_frontend"

class MapOps {
  public:
    virtual ~MapOps() = default;
    // All return 0 or -errno. update() may create or replace (BPF_ANY).
    virtual int update(MapId map, const void* key, const void* value) = 0;
    virtual int remove(MapId map, const void* key) = 0;
    virtual int lookup(MapId map, const void* key, void* value) const = 0;
    // Visits every entry; fn returns false to stop.
    virtual void for_each(MapId map,
                          const std::function<bool(const void* key, const void* value)>& fn) const = 0;
};

class KernelMapOps : public MapOps {
  public:
    // fds[i] belongs to MapId(i); the caller keeps them open for the lifetime of this object.
    explicit KernelMapOps(std::array<int, kMapCount> fds) : fds_(fds) {}
    int update(MapId map, const void* key, const void* value) override;
    int remove(MapId map, const void* key) override;
    int lookup(MapId map, const void* key, void* value) const override;
    void for_each(MapId map, const std::function<bool(const void*, const void*)>& fn) const override;

  private:
    std::array<int, kMapCount> fds_;
};

}  // namespace kmesh
