// The names telemetry gives addresses (docs/telemetry.md): a compact copy of what the metrics and the
// access log need from the model (workloads by address, services by VIP and by target port), kept
// up to date one changed resource at a time (ModelChanges), so following a large mesh costs in
// proportion to the change. Telemetry owns it and guards it with its lock; the model never sees it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "agent/src/model/model.hpp"

namespace kmesh::telemetry {

inline constexpr const char* kUnknown = "unknown";

// The Istio label values of a workload ("unknown" where the model lacks one). Replicas share them:
// one object per distinct set, reference-counted by the index.
struct PeerLabels {
    std::string namespace_;  // "" when the model gives none
    std::string workload;    // Istio's source/destination_workload (Workload.workload_name)
    std::string principal;   // spiffe://<trust domain>/ns/<ns>/sa/<sa>
    std::string canonical_service, canonical_revision, cluster;
    // These values joined: a series naming this peer lives while some workload has them.
    std::string label_key;
};

// A workload as telemetry names it.
struct PeerInfo {
    std::string uid;
    std::string name;  // the pod (Workload.name)
    const PeerLabels* labels = nullptr;
    std::vector<IpAddr> addresses;
    // "namespace/hostname" -> ports, sorted by key: a flat copy of Workload::services (one block
    // per workload instead of a tree node per service). The keys are the index's interned copies
    // (one per service name, however many workloads list it).
    std::vector<std::pair<const std::string*, std::vector<ServicePort>>> services;
    bool host_network = false;
    // "namespace/name": the per-workload series of this pod live while it is in the model.
    std::string pod_key() const { return labels->namespace_ + "/" + name; }
};

struct ServiceInfo {
    std::string key;  // "namespace/hostname"
    std::string name, namespace_, hostname;
    std::vector<IpAddr> addresses;
    std::vector<ServicePort> ports;
    std::string label_key;  // hostname, namespace and name joined (see PeerInfo::label_key)
};

struct IpAddrHash {
    size_t operator()(const IpAddr& a) const noexcept;
};

class NameIndex {
  public:
    explicit NameIndex(std::string default_cluster) : default_cluster_(std::move(default_cluster)) {}

    // Follows the model: the resources named in `changes` are read again (all of them when
    // changes.all). Returns whether anything telemetry names changed.
    bool apply(const Model& model, const ModelChanges& changes);

    // The workload owning an address: one of the pod network before host-network ones (whose
    // address is the node's), then the smallest uid.
    const PeerInfo* workload_at(const IpAddr& addr) const;
    // The service with this VIP: the first (by key) listing the port, else the first with the VIP.
    const ServiceInfo* service_at(const IpAddr& vip, uint16_t port) const;
    // The first service (by key) of workload w that reaches it on this port (the target port of
    // one of its service ports, the workload's own mapping first).
    const ServiceInfo* service_of(const PeerInfo& w, uint16_t port) const;

    bool peer_live(const std::string& label_key) const { return peers_.count(label_key) > 0; }
    bool pod_live(const std::string& pod_key) const { return pods_.count(pod_key) > 0; }
    bool service_live(const std::string& label_key) const { return service_keys_.count(label_key) > 0; }

    size_t workloads() const { return workloads_.size(); }
    size_t services() const { return services_.size(); }

  private:
    void remove_workload(const std::string& uid);
    void add_workload(const Workload& w);
    const std::string* intern_service_name(const std::string& key);
    void release_service_name(const std::string* key);
    void remove_service(const std::string& key);
    void add_service(const Service& s);

    std::string default_cluster_;
    // By uid, a view of the PeerInfo's own (not a second copy of every uid).
    std::unordered_map<std::string_view, std::unique_ptr<PeerInfo>> workloads_;
    std::unordered_map<IpAddr, std::vector<const PeerInfo*>, IpAddrHash> by_addr_;
    std::map<std::string, ServiceInfo> services_;  // by key (nodes are stable: by_vip_ points at them)
    std::unordered_map<IpAddr, std::vector<const ServiceInfo*>, IpAddrHash> by_vip_;
    struct Pooled {
        uint32_t refs = 0;
        std::unique_ptr<PeerLabels> labels;
    };
    std::unordered_map<std::string, Pooled> peers_;                  // by label key
    std::unordered_map<std::string, uint32_t> pods_, service_keys_;  // reference counts
    // Service names the workloads list, reference-counted (nodes are stable: PeerInfo points at them).
    std::unordered_map<std::string, uint32_t> service_names_;
    std::string scratch_;  // the label key being looked up (no allocation when the labels are pooled)
};

}  // namespace kmesh::telemetry
