// Executes a Plan against the maps in an order that never lets a connect() see a half-written
// service, and keeps MapState an exact mirror of what the kernel holds.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "agent/src/admin/metrics.hpp"
#include "agent/src/dataplane/bpf_loader.hpp"
#include "agent/src/dataplane/dataplane_state.hpp"
#include "agent/src/dataplane/map_ops.hpp"

namespace kmesh {

// Hands out the smallest free id >= 1 (0 means "none" in the maps).
class IdAllocator {
  public:
    explicit IdAllocator(uint32_t max) : max_(max) {}
    void mark_used(uint32_t id) {
        if (id >= used_.size()) used_.resize(std::max<size_t>(id + 1, size_t{max_} + 1));
        if (!used_[id]) count_++;
        used_[id] = true;
    }
    uint32_t allocate();  // 0 when exhausted
    void release(uint32_t id) {
        if (id < used_.size() && used_[id]) {
            used_[id] = false;
            count_--;
        }
    }

  private:
    bool used(uint32_t id) const { return id < used_.size() && used_[id]; }
    uint32_t max_;
    // A bit per id (an ordered set took ~40 B per id: 4.4 MB at 100k backends). Ids above max_
    // (recovered from larger maps) extend it.
    std::vector<bool> used_;
    size_t count_ = 0;
    uint32_t hint_ = 1;
};

// Entries each map can hold (the --max-* flags). Aggregate order kept for existing callers.
struct MapCapacity {
    uint32_t services = KMESH_DEFAULT_MAX_SERVICES;
    uint32_t backends = KMESH_DEFAULT_MAX_BACKENDS;
    uint32_t endpoints = KMESH_DEFAULT_MAX_ENDPOINTS;
    uint32_t frontends = KMESH_DEFAULT_MAX_FRONTENDS;
    uint32_t ports = KMESH_DEFAULT_MAX_PORTS;
    uint32_t waypoints = KMESH_DEFAULT_MAX_WAYPOINTS;
    uint32_t waypoint_addrs = KMESH_DEFAULT_MAX_WAYPOINT_ADDRS;
    uint32_t members = KMESH_DEFAULT_MAX_MEMBERS;
    uint32_t splits = KMESH_DEFAULT_MAX_SPLITS;
    // Limit ids 1..limits: km_limit_cfg is an ARRAY of limits + 1 entries whose index 0 (no limit)
    // is never written.
    uint32_t limits = KMESH_DEFAULT_MAX_LIMITS - 1;
    uint32_t ratelimits = KMESH_DEFAULT_MAX_RATELIMITS;  // BPF's buckets; the writer only deletes them

    static MapCapacity of(const MapSizes& s) {
        return {s.services,  s.backends,       s.endpoints, s.frontends, s.ports,
                s.waypoints, s.waypoint_addrs, s.members,   s.splits,    s.limits ? s.limits - 1 : 0,
                s.ratelimits};
    }
};

// Entries per map, indexed by MapId.
using MapCounts = std::array<uint64_t, kMapCount>;

// Entries the maps need to hold `desired` once it is written.
MapCounts entries_needed(const DesiredState& desired);

// "" when `desired` fits the maps, else which maps are too small and by how much (names the map,
// its size flag and the overflow). Call it before handing a new config to the writer: a config that
// cannot fit is rejected as a whole and nothing is written.
std::string fits(const DesiredState& desired, const MapSizes& sizes);
std::string fits(const DesiredState& desired, const MapCapacity& capacity);

// The writer's one ordering contract. Every kind of map entry belongs to a stage; additions run the
// stages top to bottom, removals bottom to top (the exact mirror), so whatever a connect() can
// reach is written before anything points at it and unlinked before it goes:
//
//   stage          addition (forwards)                         removal (backwards)
//   kLimits        write rate-limit configs (km_limit_cfg)      zero the configs no frontend names
//                                                              any more, delete their buckets
//                                                              (km_ratelimit), free their ids
//   kBackends      write new/changed backends (one dropping    narrow backends that dropped a
//                  an address family keeps that family's       family (no slot of it left);
//                  address for now)                            delete backends
//   kServices      create services, empty                      delete services (and their slots)
//   kPorts         write per-workload port overrides           delete overrides
//   kFrontendFlags rewrite published frontends (flag set,      rewrite published frontends that
//                  target port, VIP moved between services)    clear the per-workload-ports flag
//   kMembers       write km_member (service, backend) ->       delete members that no slot of
//                  weight: new members, weight changes         the service holds any more; a
//                  (except a drop to 0)                        weight dropping to 0 once the
//                                                              backend's slots are gone
//   kEndpoints     write endpoint slots, then raise counts     lower counts, then delete slots
//                  (and LB mode) in one service write
//   kSplits        write splits (km_split) whose services      delete splits no frontend names
//                  are all written and complete                any more (before their services go)
//   kFrontends     publish frontends of services with no       delete frontends nobody claims
//                  frontend yet, once all their endpoints are
//                  written
//
// Waypoints sit outside these stages (their maps point at nothing of the service maps: a waypoint
// named by hostname holds a VIP, which connect() looks up like any destination): waypoints are
// written before the addition stages and the addresses that point at them after; removal unlinks
// addresses first and deletes waypoints after the removal stages, never one an address still names.
//
// So an override exists before the flag that makes BPF look for it, the flag before an endpoint
// that needs it is counted, and in removal the endpoint is uncounted before the flag is cleared and
// before its override goes. Likewise a backend is a member of the service before its first slot
// is written and stays one until its last slot is gone: whoever holds a backend id found through
// the service (session affinity, a UDP reply) can ask km_member whether it still belongs. A
// deleted service's members go with it, after its slots (kServices).
//
// Kernel-native: a frontend naming a split or a limit (FrontendTarget's split hash, limit hash) is
// written with their ids only once they are written; one whose split or limit could not be is not
// published (metrics.frontends_unpublished). A limit id freed is zeroed and its buckets deleted
// before it can be handed out again, so a new limit never inherits an old limit's tokens.
enum class Stage {
    kLimits,
    kBackends,
    kServices,
    kPorts,
    kFrontendFlags,
    kMembers,
    kEndpoints,
    kSplits,
    kFrontends
};
inline constexpr std::array<Stage, 9> kStageOrder{
    Stage::kLimits,  Stage::kBackends,  Stage::kServices, Stage::kPorts,    Stage::kFrontendFlags,
    Stage::kMembers, Stage::kEndpoints, Stage::kSplits,   Stage::kFrontends};
const char* stage_name(Stage s);

// Reads the pinned maps back into a MapState (agent restart). Missing entries inside a count
// become slots with backend id 0 and anything unreachable becomes a stray; the next diff and
// apply repair both.
MapState recover_map_state(const MapOps& ops);

class MapWriter {
  public:
    MapWriter(MapOps& ops, MapState state, MapCapacity capacity, Metrics& metrics);

    MapWriter(MapOps& ops, MapState state, const MapSizes& sizes, Metrics& metrics)
        : MapWriter(ops, std::move(state), MapCapacity::of(sizes), metrics) {}

    // Applies the plan in the stage order above. A plan whose result cannot fit the maps is refused
    // before anything is written. When the additions would not fit next to what the plan removes,
    // the removals run first (those not referenced by anything still published).
    // A failed kernel write skips what depends on it (the rest of that service, the deletion of
    // what is still referenced) and everything else goes on; a new service that could not be
    // written completely is not published (no frontend: its connects pass through untouched) and
    // counted in metrics.services_unpublished. The errors are returned joined ("" when all went
    // through) and counted in metrics. The maps stay consistent throughout and the mirror exact,
    // so a later apply() of a fresh diff finishes the work.
    std::string apply(const Plan& plan);

    const MapState& state() const { return state_; }
    // Stages run by the last apply(), in order: "+name" an addition stage, "-name" a removal one.
    const std::vector<std::string>& stage_log() const { return stage_log_; }
    MapCounts entries() const;  // what the maps hold now, by the mirror

  private:
    struct Run;  // one apply()'s bookkeeping
    // A service's LB parameters (when they change) and its endpoint additions.
    using Growth = std::pair<std::optional<ServiceParams>, std::vector<EndpointAdd>>;
    void add_stage(Stage s, const Plan& plan, Run& run);
    void remove_stage(Stage s, const Plan& plan, Run& run);
    std::string check_capacity(const Plan& plan, bool* additions_fit) const;
    // Each stage's writes of one map go to the kernel in batches (MapOps::update_batch): one result
    // per entry (0 or -errno), the same as one call per entry would give. remove_all counts a key
    // that is already gone as removed.
    std::vector<int> put_all(MapId map, const void* keys, const void* values, size_t n);
    std::vector<int> remove_all(MapId map, const void* keys, size_t n);
    template <typename K, typename V>
    std::vector<int> put_all(MapId map, const std::vector<K>& keys, const std::vector<V>& values) {
        return put_all(map, keys.data(), values.data(), keys.size());
    }
    template <typename K>
    std::vector<int> remove_all(MapId map, const std::vector<K>& keys) {
        return remove_all(map, keys.data(), keys.size());
    }
    static kmesh_service_value service_value(const MapState::Service& s, uint64_t hash);
    void put_backends(const Plan& plan, Run& run);
    void narrow_backends(Run& run);
    void create_services(const Plan& plan);
    void grow_services(const std::map<uint64_t, Growth>& grow, Run& run);
    void put_members(const std::vector<MemberPut>& puts);
    bool drains(const MemberPut& m) const;
    void put_frontends(const std::vector<std::pair<kmesh_frontend_key, FrontendTarget>>& puts);
    std::vector<bool> remove_frontends(const std::vector<kmesh_frontend_key>& keys);
    void shrink_lists(const std::map<std::tuple<uint64_t, uint32_t, uint32_t>, std::set<uint32_t>>& shrink);
    void delete_services(const std::vector<uint64_t>& hashes);
    void delete_strays();
    void drop_entries(const std::vector<kmesh_endpoint_key>& keys);  // a failed delete leaves a stray
    void forget_frontend(const kmesh_frontend_key& key);
    bool port_key(const PortKey& p, kmesh_port_key* out) const;
    int fail(MapId map, int err, const std::string& what);
    void put_waypoints(const Plan& plan);
    void put_waypoint_dests(const Plan& plan);
    void delete_waypoint_dests(const Plan& plan);
    void delete_waypoints(const Plan& plan);
    void put_limits(const Plan& plan);
    void clear_limits(const Plan& plan);
    void put_splits(const Plan& plan, const Run& run);
    void delete_splits(const Plan& plan);
    // Whether the frontend's split (or service) and limit are written: it may be published.
    bool reachable(const FrontendTarget& t) const;

    // Entries per kernel call at most: bounds one syscall's time (the kernel reschedules between
    // entries, but a signal waits for the call).
    static constexpr size_t kMaxBatch = 65536;

    MapOps& ops_;
    MapState state_;
    MapCapacity capacity_;
    Metrics& metrics_;
    std::vector<std::string> stage_log_;
    IdAllocator service_ids_, backend_ids_, split_ids_, limit_ids_;
    std::vector<std::string> errors_;
    std::set<std::pair<uint64_t, uint64_t>> unported_;  // (backend, service) whose port write failed
    std::array<bool, kMapCount> no_batch_{};            // the kernel refused a batch for this map: one by one
};

}  // namespace kmesh
