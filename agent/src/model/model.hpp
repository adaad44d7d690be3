// The mesh as the config sources describe it, shaped like the Istio ambient workload API
// (istio.workload.Service / Workload). Both the file source and the xDS source produce this.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "agent/src/model/authz.hpp"
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

enum class WorkloadStatus { kHealthy = 0, kUnhealthy = 1 };
enum class NetworkMode { kStandard = 0, kHostNetwork = 1 };

struct Workload {
    std::string uid;
    std::string name;
    std::string namespace_;
    std::vector<IpAddr> addresses;
    // "namespace/hostname" -> ports of that service this workload serves (per-workload target ports).
    std::map<std::string, std::vector<ServicePort>> services;
    WorkloadStatus status = WorkloadStatus::kHealthy;
    NetworkMode network_mode = NetworkMode::kStandard;
    const Placement* placement = Placement::intern({});         // interned: pointer equality is equality
    const Waypoint* waypoint = nullptr;                         // interned, or none
    const WorkloadNaming* naming = WorkloadNaming::intern({});  // interned (the cluster id is in placement)
    std::vector<std::string> authorization_policies;  // WORKLOAD_SELECTOR policies, "namespace/name"
    std::string trust_domain;                         // empty: "cluster.local"
    std::string service_account;
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
