// The names telemetry gives addresses (docs/telemetry.md): a compact copy of what the metrics and the
// access log need from the model (workloads by address, services by VIP and by target port), kept
// up to date one changed resource at a time (ModelChanges), so following a large mesh costs in
// proportion to the change. Telemetry owns it and guards it with its lock; the model never sees it.
#pragma once

#include <absl/container/flat_hash_map.h>
#include <absl/container/inlined_vector.h>
#include <absl/container/node_hash_map.h>

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

// A workload as telemetry names it. Compact (issue 12: 100k workloads): the strings it alone has
// (namespace/name and uid) are one heap block, one address and one service are kept inline, and
// the service keys are the model's interned strings (shared, not copied).
class PeerInfo {
  public:
    const PeerLabels* labels = nullptr;
    absl::InlinedVector<IpAddr, 1> addresses;
    // "namespace/hostname" -> the workload's own ports of it, sorted by key (Workload::services).
    absl::InlinedVector<std::pair<InternedString, std::vector<ServicePort>>, 1> services;
    bool host_network = false;

    std::string_view uid() const { return {text_.get() + name_off_ + name_len_ + 1, uid_len_}; }
    std::string_view name() const { return {text_.get() + name_off_, name_len_}; }  // the pod
    // "namespace/name": the per-workload series of this pod live while it is in the model.
    std::string_view pod_key() const { return {text_.get(), size_t(name_off_) + name_len_}; }

  private:
    friend class NameIndex;
    std::unique_ptr<char[]> text_;  // "namespace/name\0uid"
    uint32_t name_off_ = 0, name_len_ = 0, uid_len_ = 0;
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
    bool pod_live(std::string_view pod_key) const { return pods_.count(pod_key) > 0; }
    bool service_live(const std::string& label_key) const { return service_keys_.count(label_key) > 0; }

    size_t workloads() const { return workloads_.size(); }
    size_t services() const { return services_.size(); }

  private:
    void remove_workload(std::string_view uid);
    void add_workload(const Workload& w);
    void remove_service(const std::string& key);
    void add_service(const Service& s);

    std::string default_cluster_;
    // By uid (a view of the PeerInfo's own text; nodes are stable: by_addr_ and pods_ point at them).
    absl::node_hash_map<std::string_view, PeerInfo> workloads_;
    // The workloads at an address (nearly always one, kept inline).
    absl::flat_hash_map<IpAddr, absl::InlinedVector<const PeerInfo*, 1>, IpAddrHash> by_addr_;
    std::map<std::string, ServiceInfo> services_;  // by key (nodes are stable: by_vip_ points at them)
    std::unordered_map<IpAddr, std::vector<const ServiceInfo*>, IpAddrHash> by_vip_;
    struct Pooled {
        uint32_t refs = 0;
        std::unique_ptr<PeerLabels> labels;
    };
    std::unordered_map<std::string, Pooled> peers_;  // by label key
    // The workloads of each pod key: the key is a view of the first one's pod_key() (re-keyed when
    // that one goes), so no string is kept per pod.
    absl::flat_hash_map<std::string_view, absl::InlinedVector<const PeerInfo*, 1>> pods_;
    std::unordered_map<std::string, uint32_t> service_keys_;  // reference counts
    std::string scratch_;  // the label key being looked up (no allocation when the labels are pooled)
};

}  // namespace kmesh::telemetry
