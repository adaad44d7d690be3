// Executes a Plan against the maps in an order that never lets a connect() see a half-written
// service, and keeps MapState an exact mirror of what the kernel holds.
#pragma once

#include <cstdint>
#include <set>
#include <string>

#include "agent/src/dataplane_state.hpp"
#include "agent/src/map_ops.hpp"
#include "agent/src/metrics.hpp"

namespace kmesh {

// Hands out the smallest free id >= 1 (0 means "none" in the maps).
class IdAllocator {
  public:
    explicit IdAllocator(uint32_t max) : max_(max) {}
    void mark_used(uint32_t id) { used_.insert(id); }
    uint32_t allocate();  // 0 when exhausted
    void release(uint32_t id) { used_.erase(id); }
    size_t in_use() const { return used_.size(); }

  private:
    uint32_t max_;
    std::set<uint32_t> used_;
    uint32_t hint_ = 1;
};

struct MapCapacity {
    uint32_t services = KMESH_DEFAULT_MAX_SERVICES;
    uint32_t backends = KMESH_DEFAULT_MAX_BACKENDS;
};

// Reads the pinned maps back into a MapState (agent restart). Slots whose entry is missing get
// backend id 0, which the next diff removes.
MapState recover_map_state(const MapOps& ops);

class MapWriter {
  public:
    MapWriter(MapOps& ops, MapState state, MapCapacity capacity, Metrics& metrics);

    // Applies the plan; on the first failed kernel write stops and returns a message (and counts
    // it in metrics). What was applied before stays applied and consistent; the next apply()
    // of a fresh diff continues from there.
    std::string apply(const Plan& plan);

    const MapState& state() const { return state_; }

  private:
    int write_service(uint64_t hash);
    int put_backend(uint64_t hash, const DesiredBackend& b);
    int add_endpoints(const Plan& plan, size_t& i);
    int remove_endpoint(const EndpointChange& c);
    int remove_service(uint64_t hash);
    int fail(MapId map, int err, const std::string& what);

    MapOps& ops_;
    MapState state_;
    Metrics& metrics_;
    IdAllocator service_ids_, backend_ids_;
    std::string error_;
};

}  // namespace kmesh
