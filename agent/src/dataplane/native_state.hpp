// Kernel-native mode's desired state (docs/design/kernel-native.md §4.1, §4.5): the Envoy
// resources a sidecar gets (listeners, routes, clusters, endpoints; model/native.hpp) flattened
// into the same flat map entries as the ambient mode, plus weighted splits and token buckets.
//
//   cluster            -> a service (name_hash of the cluster name), LB mode, max_connections
//   endpoint ip:port   -> a backend carrying its own port (name_hash of "endpoint/<ip>:<port>")
//   listener + chain   -> frontends (VIP, port) -> a cluster, or a split of clusters, and a bucket
//
// Everything request-independent is decided here, once, so that connect() does one exact lookup:
// a VIP listener `<vip>_<port>` gives that VIP; a wildcard HTTP listener `0.0.0.0_<port>` gives
// one frontend per IP literal among its route's virtual host domains (istiod lists every
// service address there). A route table that needs the request (paths, headers) is reduced to its
// catch-all route and counted as approximated; what cannot be decided at all is left alone
// (pass-through) and counted by reason.
//
// Warming (make before break): a frontend is written only once every cluster it can reach has
// its endpoints (an EDS cluster's ClusterLoadAssignment has arrived) and its route is known.
// Until then its (VIP, port) keeps what the maps held, or passes through if it is new.
//
// One-way: reads the native model, writes DesiredState; the writer makes the maps follow it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "agent/src/dataplane/dataplane_state.hpp"
#include "agent/src/model/native.hpp"

namespace kmesh {

struct NativeStats {
    uint64_t frontends = 0, splits = 0, limits = 0, services = 0, backends = 0;
    // Frontends not written because a cluster has no endpoints yet, or a route has not arrived.
    uint64_t warming = 0;
    // (VIP, port) whose route table needs the request: its catch-all route was used instead.
    uint64_t routes_approximated = 0;
    // Clusters using LEAST_REQUEST, balanced at random until the kernel counts active connections.
    uint64_t least_request_as_random = 0;
    // Parts left to pass through, by reason (native::unsupported_name, plus the mapping's own:
    // "no_route", "no_catch_all", "split_too_wide", "wildcard_tcp_proxy", "cluster_unsupported").
    std::map<std::string, uint64_t> unsupported;
    bool operator==(const NativeStats&) const = default;
};

class NativeState {
  public:
    // Each replaces the resource of the same name (or removes it). Cheap: the desired state is
    // rebuilt once, at the next desired()/take_dirty().
    void upsert(native::NativeListener l);
    void upsert(native::NativeRoute r);
    void upsert(native::NativeCluster c);
    void upsert(native::NativeCla c);
    void remove_listener(const std::string& name);
    void remove_route(const std::string& name);
    void remove_cluster(const std::string& name);
    void remove_cla(const std::string& name);

    const std::map<std::string, native::NativeListener>& listeners() const { return listeners_; }
    const std::map<std::string, native::NativeRoute>& routes() const { return routes_; }
    const std::map<std::string, native::NativeCluster>& clusters() const { return clusters_; }
    const std::map<std::string, native::NativeCla>& clas() const { return clas_; }

    // What EDS must ask for: the EDS service names of the clusters held; and RDS: the route
    // configuration names the listeners' HTTP chains name. Sorted, unique.
    std::vector<std::string> eds_names() const;
    std::vector<std::string> rds_names() const;

    const DesiredState& desired() {
        if (stale_) rebuild();
        return desired_;
    }
    const NativeStats& stats() {
        if (stale_) rebuild();
        return stats_;
    }
    // What changed since the last call: a native config is compared whole (it is small next to
    // the ambient mode's 100k workloads); nothing when nothing changed.
    Dirty take_dirty();
    void mark_all_dirty() { dirty_ = true; }

  private:
    void changed() {
        stale_ = true;
        dirty_ = true;
    }
    void rebuild();

    std::map<std::string, native::NativeListener> listeners_;
    std::map<std::string, native::NativeRoute> routes_;
    std::map<std::string, native::NativeCluster> clusters_;
    std::map<std::string, native::NativeCla> clas_;
    DesiredState desired_;
    NativeStats stats_;
    bool stale_ = true, dirty_ = true;
};

// "endpoint/10.0.0.5:8080", "endpoint/[fd00::5]:8080": a native backend's name.
std::string native_backend_name(const IpAddr& a, uint16_t port);
// "limit/<listener>/<chain>": a token bucket's name (Envoy keeps one per filter chain).
std::string native_limit_name(const std::string& listener, const std::string& chain);

}  // namespace kmesh
