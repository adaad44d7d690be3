// The names telemetry gives addresses (docs/telemetry.md): a compact copy of what the metrics and the
// access log need from the model (workloads by address, services by VIP and by target port), kept
// up to date one changed resource at a time (ModelChanges), so following a large mesh costs in
// proportion to the change. Telemetry owns it and guards it with its lock; the model never sees it.
#pragma once

#include <absl/container/flat_hash_map.h>
#include <absl/container/flat_hash_set.h>
#include <absl/container/inlined_vector.h>
#include <absl/container/node_hash_map.h>

#include <cstdint>
#include <map>
#include <memory>
#include <span>
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

// A workload's ports of one service (a Workload::services value). Replicas list the same ports, so
// the index keeps each distinct list once, reference-counted, and workloads point at it.
using PortList = std::vector<ServicePort>;

// A workload as telemetry names it. One heap block per workload (issue 12: 100k workloads; as an
// object with its own text block, inline vectors and a port vector per service it cost ~220 bytes
// and three allocations): this header, then its services, its addresses and its own text
// ("namespace/name\0uid"). The service keys are the model's interned strings (shared, not
// copied) and the port lists are pooled by the index. Immutable once built: a change to the
// workload in the model builds a new block.
class PeerInfo {
  public:
    struct Service {
        InternedString key;               // "namespace/hostname"
        const PortList* ports = nullptr;  // the workload's own ports of it; null: none (the service's)
    };

    const PeerLabels* labels = nullptr;

    std::span<const Service> services() const { return {services_begin(), n_svc_}; }
    std::span<const IpAddr> addresses() const { return {addresses_begin(), n_addr_}; }
    std::string_view uid() const { return {text() + name_off_ + name_len_ + 1, uid_len_}; }
    std::string_view name() const { return {text() + name_off_, name_len_}; }  // the pod
    // "namespace/name": the per-workload series of this pod live while it is in the model.
    std::string_view pod_key() const { return {text(), size_t(name_off_) + name_len_}; }

    PeerInfo(const PeerInfo&) = delete;
    PeerInfo& operator=(const PeerInfo&) = delete;

  private:
    friend class NameIndex;
    friend struct PeerFree;
    PeerInfo() = default;
    ~PeerInfo() = default;

    Service* services_begin() const {
        return reinterpret_cast<Service*>(const_cast<char*>(reinterpret_cast<const char*>(this)) +
                                          sizeof(PeerInfo));
    }
    const IpAddr* addresses_begin() const {
        return reinterpret_cast<const IpAddr*>(services_begin() + n_svc_);
    }
    const char* text() const { return reinterpret_cast<const char*>(addresses_begin() + n_addr_); }

    // The next workload with the same pod key (NameIndex::pods_ holds the first of each key).
    const PeerInfo* next_same_pod_ = nullptr;
    uint32_t n_svc_ = 0, n_addr_ = 0;
    uint32_t name_off_ = 0, name_len_ = 0, uid_len_ = 0;

  public:
    bool host_network = false;  // last: in the padding after the counts (a 40-byte header)
};
static_assert(sizeof(PeerInfo) <= 40);
static_assert(sizeof(PeerInfo) % alignof(PeerInfo::Service) == 0);
static_assert(alignof(IpAddr) == 1);

// Destroys a PeerInfo block (its services, then the block).
struct PeerFree {
    void operator()(PeerInfo* p) const noexcept;
};
using PeerPtr = std::unique_ptr<PeerInfo, PeerFree>;

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
    size_t port_lists() const { return ports_.size(); }  // distinct pooled port lists (tests)

  private:
    void remove_workload(std::string_view uid);
    void add_workload(const Workload& w);
    void remove_service(const std::string& key);
    void add_service(const Service& s);
    const PortList* retain_ports(const PortList& ports);
    void release_ports(const PortList* ports);

    // Lookups of a block by a view of its uid or pod key (heterogeneous: no string is built).
    struct ByUid {
        using is_transparent = void;
        size_t operator()(std::string_view uid) const { return absl::Hash<std::string_view>{}(uid); }
        size_t operator()(const PeerPtr& p) const { return (*this)(p->uid()); }
        bool operator()(const PeerPtr& a, const PeerPtr& b) const { return a.get() == b.get(); }
        bool operator()(const PeerPtr& a, std::string_view b) const { return a->uid() == b; }
        bool operator()(std::string_view a, const PeerPtr& b) const { return a == b->uid(); }
    };
    struct ByPod {
        using is_transparent = void;
        size_t operator()(std::string_view key) const { return absl::Hash<std::string_view>{}(key); }
        size_t operator()(const PeerInfo* p) const { return (*this)(p->pod_key()); }
        bool operator()(const PeerInfo* a, const PeerInfo* b) const { return a->pod_key() == b->pod_key(); }
        bool operator()(const PeerInfo* a, std::string_view b) const { return a->pod_key() == b; }
        bool operator()(std::string_view a, const PeerInfo* b) const { return a == b->pod_key(); }
    };
    struct PortListHash {
        size_t operator()(const PortList& ports) const;
    };

    std::string default_cluster_;
    // The workloads, owned here, found by uid (8 bytes a workload; blocks are stable: by_addr_ and
    // pods_ point at them).
    absl::flat_hash_set<PeerPtr, ByUid, ByUid> workloads_;
    // The workloads at an address (nearly always one, kept inline).
    absl::flat_hash_map<IpAddr, absl::InlinedVector<const PeerInfo*, 1>, IpAddrHash> by_addr_;
    std::map<std::string, ServiceInfo> services_;  // by key (nodes are stable: by_vip_ points at them)
    std::unordered_map<IpAddr, std::vector<const ServiceInfo*>, IpAddrHash> by_vip_;
    struct Pooled {
        uint32_t refs = 0;
        std::unique_ptr<PeerLabels> labels;
    };
    std::unordered_map<std::string, Pooled> peers_;  // by label key
    // One workload of each pod key; the others with that key follow it (PeerInfo::next_same_pod_).
    absl::flat_hash_set<const PeerInfo*, ByPod, ByPod> pods_;
    // Distinct port lists -> workload services listing them.
    absl::node_hash_map<PortList, uint32_t, PortListHash> ports_;
    std::unordered_map<std::string, uint32_t> service_keys_;  // reference counts
    std::string scratch_;  // the label key being looked up (no allocation when the labels are pooled)
};

}  // namespace kmesh::telemetry
