// Executes a Plan against the maps in an order that never lets a connect() see a half-written
// service, and keeps MapState an exact mirror of what the kernel holds.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

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

  private:
    uint32_t max_;
    std::set<uint32_t> used_;
    uint32_t hint_ = 1;
};

struct MapCapacity {
    uint32_t services = KMESH_DEFAULT_MAX_SERVICES;
    uint32_t backends = KMESH_DEFAULT_MAX_BACKENDS;
};

// Reads the pinned maps back into a MapState (agent restart). Missing entries inside a count
// become slots with backend id 0 and anything unreachable becomes a stray; the next diff and
// apply repair both.
MapState recover_map_state(const MapOps& ops);

class MapWriter {
  public:
    MapWriter(MapOps& ops, MapState state, MapCapacity capacity, Metrics& metrics);

    // Applies the plan. A failed kernel write skips what depends on it (the rest of that service,
    // the deletion of what is still referenced) and everything else goes on; the errors are
    // returned joined ("" when all went through) and counted in metrics. The maps stay consistent
    // throughout and the mirror exact, so a later apply() of a fresh diff finishes the work.
    std::string apply(const Plan& plan);

    const MapState& state() const { return state_; }

  private:
    int write_service(uint64_t hash);
    void put_backend(uint64_t hash, const DesiredBackend& b);
    void create_service(uint64_t hash, uint32_t lb_mode);
    void grow_service(uint64_t hash, const uint32_t* lb_mode, const std::vector<EndpointAdd>& adds);
    void put_frontend(const kmesh_frontend_key& key, const FrontendTarget& target);
    void remove_endpoints(uint64_t hash, uint32_t prio, std::set<uint32_t> indices);
    void delete_service(uint64_t hash);
    void delete_strays();
    void drop_entry(const kmesh_endpoint_key& key);  // a failed delete leaves a stray, not a leak
    void forget_frontend(const kmesh_frontend_key& key);
    bool port_key(const PortKey& p, kmesh_port_key* out) const;
    int fail(MapId map, int err, const std::string& what);

    MapOps& ops_;
    MapState state_;
    Metrics& metrics_;
    IdAllocator service_ids_, backend_ids_;
    std::vector<std::string> errors_;
    std::set<std::pair<uint64_t, uint64_t>> unported_;  // (backend, service) whose port write failed
};

}  // namespace kmesh
