// What the maps should hold (DesiredState, derived from the model by MeshState), what they do hold
// (MapState, a mirror kept by the writer or recovered from pinned maps after a restart), and the
// Plan between them.
//
// Services and backends are identified by a 64-bit hash of their resource name, which is also
// stored in the map values: a restarted agent recovers name -> id from the maps themselves, so ids
// stay stable without a side file that could drift.
#pragma once

#include <absl/container/btree_map.h>
#include <absl/container/btree_set.h>

#include <array>
#include <compare>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "agent/src/model/model.hpp"
#include "common/abi.hpp"

namespace kmesh {

uint64_t name_hash(std::string_view name);

struct FrontendTarget {
    uint64_t service = 0;  // service name hash; with KMESH_FRONTEND_SPLIT a split's (DesiredState::splits)
    uint16_t target_port = 0;  // network byte order
    uint16_t flags = 0;        // KMESH_FRONTEND_*
    uint64_t limit = 0;        // with KMESH_FRONTEND_LIMITED: a limit's hash (DesiredState::limits)
    auto operator<=>(const FrontendTarget&) const = default;
};

// Kernel-native mode (docs/design/kernel-native.md): a weighted split between services (km_split),
// named by name_hash of split_name(): its content, so frontends with the same split share it.
struct DesiredSplit {
    std::vector<std::pair<uint64_t, uint32_t>> services;  // (service hash, weight >= 1), 1..KMESH_SPLIT_MAX
    bool operator==(const DesiredSplit&) const = default;
};
// A local rate limit's token bucket (km_limit_cfg), named by name_hash of the listener filter chain
// it comes from (Envoy keeps one bucket per filter chain).
struct DesiredLimit {
    uint64_t max_tokens = 0;  // >= 1
    uint64_t tokens_per_fill = 1;
    uint64_t fill_interval_ns = 0;  // > 0
    bool operator==(const DesiredLimit&) const = default;
};

// The per-id tables below are ordered (plans come out sorted by hash, which the writer's batches and
// the tests rely on) but need no node per entry: absl's B-trees keep ~8-16 bytes per id where a
// std::map node took 48-96 (at 100k workloads: ~8 MB per table). Their iterators and element
// addresses do not survive an insert or erase in the same table; nothing here holds one across.
using BackendSet = absl::btree_set<uint64_t>;
using MemberWeights = absl::btree_map<uint64_t, uint32_t>;  // backend hash -> weight

// Service-level load-balancing parameters, as the service map entry holds them.
struct ServiceParams {
    uint32_t lb_mode = KMESH_LB_RANDOM;
    uint32_t flags = 0;             // KMESH_SERVICE_*
    uint32_t affinity_timeout = 0;  // seconds, with KMESH_SERVICE_AFFINITY
    uint32_t max_connections = 0;   // with KMESH_SERVICE_MAX_CONN (kernel-native circuit breaking)
    bool operator==(const ServiceParams&) const = default;
};

// Endpoint slots per backend of one (family, priority) list: each backend's weight divided by the
// gcd of the list's weights, so 2:6 takes 1 and 3 slots. When that needs more than
// max(max_slots, backends in the list) slots, weights are scaled to that budget (rounded to the
// nearest, at least 1 slot each): the share error is then at most 1/2 slot per backend. Backends
// missing from `weights` count as weight 1.
std::map<uint64_t, uint32_t> weight_slots(const BackendSet& list, const MemberWeights& weights,
                                          uint32_t max_slots = KMESH_MAX_WEIGHT_SLOTS);

// The same into `out`, sorted by backend hash (a reused vector: no allocation per list).
void weight_slots_into(const BackendSet& list, const MemberWeights& weights, uint32_t max_slots,
                       std::vector<std::pair<uint64_t, uint32_t>>& out);

// The address families a backend's flags say it can serve.
inline bool backend_serves(uint32_t backend_flags, uint32_t family) {
    return backend_flags & (family == KMESH_FAMILY_V4 ? KMESH_BACKEND_HAS_V4 : KMESH_BACKEND_HAS_V6);
}

// A backend that is an endpoint of a service: its km_member weight and the endpoint lists it is
// in. A workload has one priority per service (priority() depends on the service and the
// workload, not on the address family), so the lists are these bits rather than 14 ordered sets
// per service (each 24 bytes inline and a node block of its own: ~5 MB at 10k services).
struct DesiredMember {
    uint32_t weight = 1;
    uint8_t prio = 0;      // its priority in every family it is listed in; 0 when in no list
    uint8_t families = 0;  // bit f: in family f's endpoint list (none while draining, weight 0)
    bool operator==(const DesiredMember&) const = default;
};
using DesiredMembers = absl::btree_map<uint64_t, DesiredMember>;  // backend hash -> member

struct DesiredService {
    uint32_t lb_mode = KMESH_LB_RANDOM;
    uint32_t flags = 0;             // KMESH_SERVICE_ROUND_ROBIN, KMESH_SERVICE_AFFINITY
    uint32_t affinity_timeout = 0;  // seconds
    uint32_t max_connections = 0;   // with KMESH_SERVICE_MAX_CONN
    // km_member: every backend that is an endpoint of the service (in some family and priority)
    // -> its weight and lists; a weight of 0 (draining) stays a member without any endpoint slot.
    DesiredMembers members;
    ServiceParams params() const { return {lb_mode, flags, affinity_timeout, max_connections}; }
    // The endpoint list of (family, priority), and every member's weight, as sets (tests, tools).
    BackendSet endpoints(uint32_t family, uint32_t prio) const;
    MemberWeights weights() const;
    // Every (family, priority) list's slots (weight_slots_into of each): what km_endpoint needs.
    uint64_t endpoint_slot_count() const;
    // This service's claim on each (VIP, port); desired frontends holds the elected claim.
    std::map<kmesh_frontend_key, FrontendTarget> frontends;
    bool operator==(const DesiredService&) const = default;
};

struct DesiredBackend {
    std::array<uint8_t, 16> addr4{}, addr6{};
    uint32_t flags = 0;
    uint16_t port = 0;  // network byte order, with KMESH_BACKEND_HAS_PORT (kernel-native endpoints)
    bool operator==(const DesiredBackend&) const = default;
};

// A per-workload target port: (backend hash, service hash, service port in network order).
struct PortKey {
    uint64_t backend = 0;
    uint64_t service = 0;
    uint16_t port = 0;
    auto operator<=>(const PortKey&) const = default;
};

struct DesiredState {
    std::map<uint64_t, DesiredService> services;
    absl::btree_map<uint64_t, DesiredBackend> backends;
    std::map<kmesh_frontend_key, FrontendTarget> frontends;
    std::map<PortKey, uint16_t> ports;  // target port, network order
    // Waypoint redirect (docs/waypoint.md): waypoint id (name_hash of waypoint_name()) -> where it
    // is, and every address whose connects go through a waypoint -> that waypoint's id.
    std::map<uint64_t, kmesh_waypoint_value> waypoints;
    std::map<kmesh_wp_dest_key, kmesh_wp_dest_value> waypoint_dests;
    // Kernel-native mode: split hash -> split, limit hash -> bucket. Written before any frontend
    // names them, deleted after the last one that did.
    std::map<uint64_t, DesiredSplit> splits;
    std::map<uint64_t, DesiredLimit> limits;
};

// The name a split is hashed from: its services and weights in order ("split/<hash>*<w>,...").
std::string split_name(const DesiredSplit& s);

// "address/10.244.0.9" or "hostname/ns/name.ns.svc.cluster.local": one waypoint entry per name,
// whatever its hbone_mtls_port (we always connect to KMESH_WAYPOINT_PORT).
std::string waypoint_name(const Waypoint& w);

// What changed since the last plan: only these are compared with the maps.
struct Dirty {
    bool all = false;               // after a restart: compare everything
    bool waypoints = false;         // the waypoint tables changed (compared whole: they are small)
    bool native = false;            // the split and limit tables changed (compared whole)
    BackendSet services, backends;  // hashes
    // Names (hashes) the model does not hold but whose map entries stay as they are: resources
    // istiod sent in a form that was rejected, after a restart emptied the model. Their service,
    // frontends, endpoint slots, backend and ports are neither rewritten nor deleted.
    std::set<uint64_t> keep;
    bool empty() const { return !all && !waypoints && !native && services.empty() && backends.empty(); }
};

// The model plus the map contents it implies, kept up to date one resource at a time, so that a
// change costs in proportion to what it touches (one workload: its backend and its services'
// endpoint lists), not to the size of the mesh.
class MeshState {
  public:
    // learn_locality: take this node's locality from the workloads reported on it (node == ours).
    explicit MeshState(NodeInfo node = {}, bool learn_locality = false)
        : node_(std::move(node)), learn_locality_(learn_locality) {}

    // "" or why the name cannot be used (its hash collides with another name's).
    std::string check_name(const std::string& name) const;

    void upsert_service(const Service& s);
    void remove_service(const std::string& key);
    void upsert_workload(const Workload& w);
    void upsert_workload(Workload&& w);  // moved into the model (an xDS push: 100k of them)
    void remove_workload(const std::string& uid);
    // Authorization policies live in the model too; they imply no service/backend map entries.
    // policies_version() changes whenever one does, for whoever compiles them.
    void upsert_policy(const AuthzPolicy& p);
    void remove_policy(const std::string& key);
    uint64_t policies_version() const { return policies_version_; }
    // Makes the model equal to `next`, touching only what differs.
    void replace(const Model& next);

    const Model& model() const { return model_; }
    // Workloads on this node as authorization counts them (policy::is_local: placed on
    // node().node, with an address); 0 without a node name. Kept as workloads come and go, so
    // that a full push asks "any local workload?" without walking 100k of them.
    size_t local_workloads() const { return local_workloads_; }
    // The waypoint tables are rebuilt here, once per batch of changes, when a change touched them.
    const DesiredState& desired() {
        if (wp_stale_) refresh_waypoints();
        return desired_;
    }
    const NodeInfo& node() const { return node_; }
    Dirty take_dirty() {
        if (wp_stale_) refresh_waypoints();
        Dirty d = std::exchange(dirty_, Dirty{});
        d.keep = pinned_;
        return d;
    }
    void mark_all_dirty() { dirty_.all = true; }
    // What changed in the model since the last call, for observers that follow it (telemetry's
    // names). The first call says "all".
    ModelChanges take_model_changes() { return std::exchange(changes_, ModelChanges{}); }

    // Keeps what the maps hold for `name` while the model lacks it (see Dirty::keep). Unpinning
    // (the name was applied or removed) compares everything once more, so that what was kept and
    // is no longer wanted goes.
    void pin(const std::string& name) { pinned_.insert(name_hash(name)); }
    void unpin(const std::string& name) {
        if (pinned_.erase(name_hash(name))) dirty_.all = true;
    }
    bool pinned(const std::string& name) const { return pinned_.count(name_hash(name)) > 0; }

  private:
    template <typename W>
    void upsert_workload_as(W&& w);
    void refresh_service(const std::string& key);  // LB mode, frontends, every member
    void refresh_member(const std::string& service_key, const std::string& uid);
    void refresh_member(const std::string& service_key, uint64_t service_hash, const Service* service,
                        uint64_t workload_hash, const Workload* workload);
    void refresh_backend(const std::string& uid);
    void refresh_backend(uint64_t workload_hash, const Workload* workload);
    void refresh_frontend_flags(const std::string& service_key);
    void refresh_frontend_flags(const std::string& service_key, uint64_t service_hash);
    void elect(const kmesh_frontend_key& fk);                 // which claimant's frontend the map holds
    int priority(const Service& s, const Workload& w) const;  // -1: not an endpoint
    void forget_hash(const std::string& name);
    void note_conflict(const kmesh_frontend_key& fk, const std::set<uint64_t>& claimants);
    std::string service_name(uint64_t hash) const;  // for logs and dumps
    // Waypoints: whether a service/workload (as it was or will be) bears on the waypoint tables,
    // and the full rebuild of those tables (cost: the services and workloads with a waypoint, plus
    // an address index of the workloads when a waypoint is given by address).
    bool waypoint_relevant(const Service& s) const;
    bool waypoint_relevant(const Workload& w) const;
    void waypoints_changed() {
        wp_stale_ = true;
        dirty_.waypoints = true;
    }
    void refresh_waypoints();
    // Names a changed resource for take_model_changes. Past a quarter of the model (and 1,024
    // names), the observer is told "all" instead: re-reading the model costs about as much as
    // reading that many names, and a full push no longer holds a copy of every name (100k
    // workloads: ~12 MB) until the next sync.
    void note_change(std::set<std::string>& names, const std::string& name) {
        if (changes_.all) return;
        names.insert(name);
        size_t n = changes_.workloads.size() + changes_.services.size();
        if (n > 1024 && n * 4 > model_.workloads.size() + model_.services.size())
            changes_ = ModelChanges{true, {}, {}};
    }

    bool on_node(const Workload& w) const {
        return !node_.node.empty() && w.placement->node == node_.node && !w.addresses.empty();
    }

    NodeInfo node_;
    bool learn_locality_ = false;
    size_t local_workloads_ = 0;
    uint64_t policies_version_ = 0;
    Model model_;
    DesiredState desired_;
    Dirty dirty_;
    ModelChanges changes_{true, {}, {}};
    // service key -> the model's entries of the workloads listing it, ordered by uid: 8 bytes each
    // in a B-tree (no copy of the uid, no 64-byte set node), and a service's refresh reaches its
    // members without looking each up by uid in the model (100k long, alike strings). A std::map's
    // entries stay where they are until erased; a workload leaves here before its entry goes.
    using WorkloadEntry = std::pair<const std::string, Workload>;
    struct ByUid {
        using is_transparent = void;
        static std::string_view uid(const WorkloadEntry* e) { return e->first; }
        static std::string_view uid(std::string_view s) { return s; }
        template <typename A, typename B>
        bool operator()(const A& a, const B& b) const {
            return uid(a) < uid(b);
        }
    };
    std::map<std::string, absl::btree_set<const WorkloadEntry*, ByUid>> members_;
    absl::btree_set<uint64_t> hashes_;  // of every name in the model (~10 bytes each, no node)
    std::map<std::pair<uint64_t, uint16_t>, uint32_t> overrides_;  // (service, port) -> workloads overriding
    // Services listing each (VIP, port). istiod may briefly give one VIP to two services; the
    // largest hash wins, so the outcome does not depend on the order the updates came in.
    std::map<kmesh_frontend_key, std::set<uint64_t>> claimants_;
    std::set<uint64_t> pinned_;
    bool wp_stale_ = false;
    std::set<std::string> wp_hostnames_;  // services named as waypoints: their VIPs are waypoint addresses
    std::set<IpAddr> wp_addresses_;       // addresses given as waypoints: their workloads' other family
    // Conflicts (more than one claimant) already logged, with the claimants seen then: each is
    // logged once when it appears or changes, and once when it is resolved.
    std::map<kmesh_frontend_key, std::set<uint64_t>> conflicts_logged_;

  public:
    // A (VIP, port) claimed by several services: the winner holds the frontend, the losers'
    // connects to it reach the winner's endpoints.
    struct VipConflict {
        std::string frontend;  // "10.96.0.10:80", "[fd00::10]:80"
        std::string winner;    // service key
        std::vector<std::string> losers;
    };
    std::vector<VipConflict> vip_conflicts() const;
    size_t vip_conflict_count() const { return conflicts_logged_.size(); }
};

// "10.96.0.10:80" or "[fd00::10]:80" (IPv4-mapped keys print as IPv4).
std::string frontend_key_str(const kmesh_frontend_key& k);

// Full conversion, for tests and tools: a MeshState fed with the whole model.
DesiredState build_desired(const Model& model, const NodeInfo& node = {});

// Names in the model whose hashes collide (the model cannot be used then); empty when fine.
std::vector<std::string> hash_collisions(const Model& model);

struct MapState {
    struct Service {
        uint32_t id = 0;
        uint32_t lb_mode = KMESH_LB_RANDOM;
        uint32_t flags = 0;
        uint32_t affinity_timeout = 0;
        uint32_t max_connections = 0;
        // slots[family][prio][i] is the backend id at endpoint index i + 1; 0 = entry missing or
        // unknown.
        std::array<std::array<std::vector<uint32_t>, KMESH_PRIO_COUNT>, KMESH_FAMILY_COUNT> slots;
        absl::btree_map<uint32_t, uint32_t> members;  // km_member entries: backend id -> weight
        ServiceParams params() const { return {lb_mode, flags, affinity_timeout, max_connections}; }
    };
    struct Backend {
        uint32_t id = 0;
        DesiredBackend value;
    };
    std::map<uint64_t, Service> services;
    absl::btree_map<uint64_t, Backend> backends;
    absl::btree_map<uint32_t, uint64_t> backend_hash_by_id;
    std::map<kmesh_frontend_key, FrontendTarget> frontends;  // service hash 0: points at an unknown id
    std::map<uint64_t, std::set<kmesh_frontend_key>> frontends_by_service;
    std::map<PortKey, uint16_t> ports;
    std::map<uint64_t, kmesh_waypoint_value> waypoints;
    std::map<kmesh_wp_dest_key, kmesh_wp_dest_value> waypoint_dests;
    // Kernel-native: split hash -> (id, services by hash), limit hash -> (id, bucket config).
    struct Split {
        uint32_t id = 0;
        DesiredSplit value;
    };
    struct Limit {
        uint32_t id = 0;
        DesiredLimit value;
    };
    std::map<uint64_t, Split> splits;
    std::map<uint64_t, Limit> limits;

    // Left over by a crash or a failed cleanup, found unreachable: endpoint entries beyond their
    // service's count, duplicate service/backend ids (a hash seen twice), port entries of unknown
    // ids. Removed by the next apply.
    std::vector<kmesh_endpoint_key> stray_endpoints;
    std::vector<uint32_t> stray_services;
    std::vector<uint32_t> stray_backends;
    std::vector<kmesh_port_key> stray_ports;
    std::vector<kmesh_member_key> stray_members;
    // Splits naming a service id that is not there (or a second id of one split); limit ids that
    // no frontend names or that repeat a hash. Deleted (limits: zeroed, buckets cleared) by the
    // next apply, after the frontends.
    std::vector<uint32_t> stray_splits, stray_limits;
    // Token buckets (km_ratelimit, carried across map generations) of a limit id no recovered
    // limit holds: an older generation's or a crash's. Deleted first, so no new limit inherits one.
    std::vector<kmesh_ratelimit_key> stray_buckets;
    // Every id the maps referenced at recovery; never handed out again by this agent.
    std::set<uint32_t> reserved_service_ids, reserved_backend_ids;
};

struct EndpointAdd {
    uint64_t service;
    uint32_t family;
    uint32_t prio;
    uint64_t backend;
    bool operator==(const EndpointAdd&) const = default;
};

// A km_member entry to write: (service, backend) -> weight.
struct MemberPut {
    uint64_t service;
    uint64_t backend;
    uint32_t weight;
    bool operator==(const MemberPut&) const = default;
};

// A km_member entry to delete, by the ids the maps hold (the backend may be unknown by name).
struct MemberDelete {
    uint64_t service;
    uint32_t backend_id;
    bool operator==(const MemberDelete&) const = default;
};

struct EndpointRemove {
    uint64_t service;
    uint32_t family;
    uint32_t prio;
    uint32_t index;  // 1-based slot in the current state
    bool operator==(const EndpointRemove&) const = default;
};

// What to write and delete; MapWriter (map_writer.hpp, enum Stage) executes it in one documented
// order, additions forwards and removals in mirror order, which keeps every connect() consistent.
struct Plan {
    std::vector<std::pair<uint64_t, DesiredBackend>> put_backends;
    std::vector<std::pair<uint64_t, ServiceParams>> put_services;  // new or LB parameters changed
    std::vector<MemberPut> put_members;                            // new members, weight changes
    std::vector<EndpointAdd> add_endpoints;  // grouped by service; a backend of n slots appears n times
    std::vector<std::pair<PortKey, uint16_t>> put_ports;
    std::vector<std::pair<kmesh_frontend_key, FrontendTarget>> put_frontends;
    std::vector<kmesh_frontend_key> delete_frontends;
    std::vector<EndpointRemove> remove_endpoints;  // grouped by service, family and priority
    std::vector<MemberDelete> delete_members;      // of services that stay
    std::vector<PortKey> delete_ports;
    std::vector<uint64_t> delete_services;
    std::vector<uint64_t> delete_backends;
    // Waypoints: written before any address points at them, addresses unlinked before they go.
    std::vector<std::pair<uint64_t, kmesh_waypoint_value>> put_waypoints;
    std::vector<std::pair<kmesh_wp_dest_key, kmesh_wp_dest_value>> put_waypoint_dests;
    std::vector<kmesh_wp_dest_key> delete_waypoint_dests;
    std::vector<uint64_t> delete_waypoints;
    // Kernel-native (compared whole with dirty.all or dirty.native): limits written before any
    // frontend names them (first of all), splits after their services' endpoints and before the
    // frontends; on removal splits go after the frontends, limits last (zeroed, buckets cleared).
    std::vector<std::pair<uint64_t, DesiredLimit>> put_limits;  // new or changed
    std::vector<std::pair<uint64_t, DesiredSplit>> put_splits;  // new (a split's hash is its content)
    std::vector<uint64_t> delete_splits;
    std::vector<uint64_t> delete_limits;

    bool empty() const;
    size_t size() const;
};

// Compares what is dirty (everything with dirty.all) and plans the difference.
Plan diff(const MapState& current, const DesiredState& desired, const Dirty& dirty);

}  // namespace kmesh
