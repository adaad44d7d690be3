// The mesh as the config sources describe it, shaped like the Istio ambient workload API
// (istio.workload.Service / Workload). Both the file source and the xDS source produce this.
#pragma once

#include <absl/container/inlined_vector.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/src/model/authz.hpp"
#include "agent/src/model/interned.hpp"
#include "agent/src/model/ip_addr.hpp"

namespace kmesh {

struct ServicePort {
    uint16_t service_port = 0;
    uint16_t target_port = 0;  // 0: same as service_port (or, on a service, "see each workload")
    auto operator<=>(const ServicePort&) const = default;
};

struct Locality {
    std::string region, zone, subzone;
    auto operator<=>(const Locality&) const = default;
};

// Istio's LoadBalancing: where routing_preference is set, endpoints are ranked by how many of
// these scopes (in order) they share with this node.
enum class LbScope { kRegion = 1, kZone = 2, kSubzone = 3, kNode = 4, kCluster = 5, kNetwork = 6 };
enum class LbMode { kUnspecified = 0, kStrict = 1, kFailover = 2, kPassthrough = 3 };

struct LoadBalancing {
    std::vector<LbScope> routing_preference;
    LbMode mode = LbMode::kUnspecified;
    bool allow_unhealthy = false;  // health_policy ALLOW_ALL
    bool operator==(const LoadBalancing&) const = default;
};

// A waypoint as the API names it: an address and port, or a service hostname.
struct Waypoint {
    std::optional<IpAddr> address;
    std::string hostname;  // "namespace/hostname" when given by name
    uint16_t port = 0;
    auto operator<=>(const Waypoint&) const = default;

    // Equal waypoints are one shared, immutable object (workloads hold a pointer).
    static const Waypoint* intern(Waypoint w);
};

// Where a workload runs. Every workload of a node has the same one, so workloads share an
// interned, immutable object instead of carrying six strings each (100k workloads: ~20 MB).
struct Placement {
    std::string node;
    std::string network;
    std::string cluster_id;
    Locality locality;
    auto operator<=>(const Placement&) const = default;

    static const Placement* intern(Placement p);
};

// What telemetry names a workload by (Istio's workload_name, canonical_name, canonical_revision:
// the Deployment and the service.istio.io/canonical-name and -revision labels). Replicas share
// them, so workloads hold an interned, immutable object as they do their Placement.
struct WorkloadNaming {
    std::string workload_name;
    std::string canonical_name;
    std::string canonical_revision;
    auto operator<=>(const WorkloadNaming&) const = default;

    static const WorkloadNaming* intern(WorkloadNaming n);
};

struct Service {
    std::string name;
    std::string namespace_;
    std::string hostname;
    std::vector<IpAddr> addresses;  // VIPs
    std::vector<ServicePort> ports;
    std::optional<LoadBalancing> load_balancing;
    std::optional<Waypoint> waypoint;  // connects to a VIP go to the waypoint (port 15019) instead
    // Not in Istio's workload API (standalone file only, docs/lb.md): round robin instead of a
    // random pick, and ClientIP-style session affinity (0 = none, else its timeout in seconds).
    bool round_robin = false;
    uint32_t affinity_timeout = 0;

    // Resource name in the workload API: "namespace/hostname".
    std::string key() const { return namespace_ + "/" + hostname; }
    bool operator==(const Service&) const = default;
};

// A workload's services: "namespace/hostname" -> the ports of that service it serves. A sorted
// vector with a map's interface (find, count, operator[], iteration in key order): a workload lists
// one service or a few, and as a std::map each entry cost a 64-byte node, a 32-byte key and a
// heap block for it (100k workloads: ~9 MB); here it is 32 bytes, the key interned, and the first
// entry is kept inline (a workload nearly always lists one service: no heap block, 100k workloads
// ~4.8 MB less for 16 more bytes in the Workload).
class WorkloadServices {
  public:
    using key_type = InternedString;
    using mapped_type = std::vector<ServicePort>;
    using value_type = std::pair<InternedString, mapped_type>;
    using Entries = absl::InlinedVector<value_type, 1>;
    using iterator = Entries::iterator;
    using const_iterator = Entries::const_iterator;

    WorkloadServices() = default;
    WorkloadServices(std::initializer_list<std::pair<std::string_view, mapped_type>> init) {
        for (const auto& [k, v] : init) (*this)[k] = v;
    }

    iterator begin() { return v_.begin(); }
    iterator end() { return v_.end(); }
    const_iterator begin() const { return v_.begin(); }
    const_iterator end() const { return v_.end(); }
    size_t size() const { return v_.size(); }
    bool empty() const { return v_.empty(); }
    void clear() { v_.clear(); }
    void shrink_to_fit() { v_.shrink_to_fit(); }

    iterator find(std::string_view key) {
        auto it = lower_bound(key);
        return it != v_.end() && it->first == key ? it : v_.end();
    }
    const_iterator find(std::string_view key) const { return const_cast<WorkloadServices*>(this)->find(key); }
    iterator find(const InternedString& key) { return find(key.view()); }
    const_iterator find(const InternedString& key) const { return find(key.view()); }
    iterator find(const char* key) { return find(std::string_view(key)); }
    const_iterator find(const char* key) const { return find(std::string_view(key)); }
    size_t count(std::string_view key) const { return find(key) != end(); }
    size_t count(const InternedString& key) const { return count(key.view()); }
    size_t count(const char* key) const { return count(std::string_view(key)); }
    const mapped_type& at(std::string_view key) const {
        auto it = find(key);
        if (it == end()) throw std::out_of_range("WorkloadServices::at");
        return it->second;
    }

    mapped_type& operator[](std::string_view key) {
        auto it = lower_bound(key);
        if (it == v_.end() || it->first != key) it = v_.emplace(it, InternedString(key), mapped_type{});
        return it->second;
    }
    mapped_type& operator[](const InternedString& key) {
        auto it = lower_bound(key.view());
        if (it == v_.end() || it->first != key) it = v_.emplace(it, key, mapped_type{});
        return it->second;
    }
    mapped_type& operator[](const char* key) { return (*this)[std::string_view(key)]; }
    size_t erase(std::string_view key) {
        auto it = find(key);
        if (it == v_.end()) return 0;
        v_.erase(it);
        return 1;
    }

    bool operator==(const WorkloadServices&) const = default;

  private:
    iterator lower_bound(std::string_view key) {
        return std::lower_bound(v_.begin(), v_.end(), key,
                                [](const value_type& e, std::string_view k) { return e.first.view() < k; });
    }
    Entries v_;
};

enum class WorkloadStatus { kHealthy = 0, kUnhealthy = 1 };
enum class NetworkMode { kStandard = 0, kHostNetwork = 1 };

// Strings that many workloads repeat (namespace, trust domain, service account, service keys) are
// interned (interned.hpp): 200 bytes a workload instead of 296, and no heap block per copy.
struct Workload {
    std::string uid;
    std::string name;
    InternedString namespace_;
    // Nearly always one (a pod IP; two when dual-stack): the first is kept inline, in the 24 bytes a
    // std::vector takes, so a workload has no heap block for it (100k workloads: 3.2 MB).
    absl::InlinedVector<IpAddr, 1> addresses;
    // "namespace/hostname" -> ports of that service this workload serves (per-workload target ports).
    WorkloadServices services;
    WorkloadStatus status = WorkloadStatus::kHealthy;
    NetworkMode network_mode = NetworkMode::kStandard;
    const Placement* placement = Placement::intern({});         // interned: pointer equality is equality
    const Waypoint* waypoint = nullptr;                         // interned, or none
    const WorkloadNaming* naming = WorkloadNaming::intern({});  // interned (the cluster id is in placement)
    std::vector<std::string> authorization_policies;  // WORKLOAD_SELECTOR policies, "namespace/name"
    InternedString trust_domain;                      // empty: "cluster.local"
    InternedString service_account;
    // Workload.capacity (UInt32Value, field 27; unset = 1): its share of each service's new
    // connections. 0 drains it: still an endpoint (known, a member), picked by nobody new.
    uint32_t capacity = 1;
    bool operator==(const Workload&) const = default;
};

struct Model {
    std::map<std::string, Service> services;      // by Service::key()
    std::map<std::string, Workload> workloads;    // by uid
    std::map<std::string, AuthzPolicy> policies;  // by AuthzPolicy::key()
    bool operator==(const Model&) const = default;
};

// Names of the workloads (uid) and services (key) upserted or removed since an observer last
// looked (MeshState::take_model_changes), so that it follows the model in proportion to the change.
struct ModelChanges {
    bool all = false;  // compare everything (the first look)
    std::set<std::string> workloads, services;
    bool empty() const { return !all && workloads.empty() && services.empty(); }
};

// Where this agent runs, for locality-aware load balancing.
struct NodeInfo {
    std::string node;
    std::string cluster_id;
    std::string network;
    Locality locality;
};

}  // namespace kmesh
