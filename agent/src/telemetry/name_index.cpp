#include "agent/src/telemetry/name_index.hpp"

#include <algorithm>
#include <cstring>
#include <tuple>

namespace kmesh::telemetry {

namespace {

const std::string kUnknownStr = kUnknown;
const std::string kClusterLocal = "cluster.local";

const std::string& or_unknown(const std::string& v) { return v.empty() ? kUnknownStr : v; }

template <typename T>
void erase_ptr(std::vector<const T*>& list, const T* p) {
    list.erase(std::remove(list.begin(), list.end(), p), list.end());
}

void release(std::unordered_map<std::string, uint32_t>& counts, const std::string& key) {
    auto it = counts.find(key);
    if (it != counts.end() && --it->second == 0) counts.erase(it);
}

uint16_t effective_target(const ServicePort& p) { return p.target_port ? p.target_port : p.service_port; }

}  // namespace

size_t IpAddrHash::operator()(const IpAddr& a) const noexcept {
    uint64_t lo, hi;
    std::memcpy(&lo, a.bytes.data(), 8);
    std::memcpy(&hi, a.bytes.data() + 8, 8);
    // Every bit mixed into every bit (murmur3's finalizer): absl's tables take the slot from the
    // low bits, and an IPv4-mapped address has its four varying bytes at the top of `hi` (with a
    // plain multiply, every IPv4 address fell in one probe group: a 10x slower full push).
    auto mix = [](uint64_t h) {
        h ^= h >> 33;
        h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 33;
        h *= 0xc4ceb9fe1a85ec53ULL;
        return h ^ (h >> 33);
    };
    return mix(lo ^ mix(hi));
}

bool NameIndex::apply(const Model& model, const ModelChanges& changes) {
    if (changes.empty()) return false;
    if (changes.all) {
        // Pointers at the blocks and at the pooled ports first, then the blocks, then the pool.
        by_addr_.clear();
        pods_.clear();
        by_vip_.clear();
        workloads_.clear();
        ports_.clear();
        services_.clear();
        peers_.clear();
        service_keys_.clear();
        // Sized once for the whole model: a push of 100k workloads otherwise rehashes each table
        // ~17 times on the way up.
        workloads_.reserve(model.workloads.size());
        by_addr_.reserve(model.workloads.size());
        pods_.reserve(model.workloads.size());
        by_vip_.reserve(model.services.size());
        for (const auto& [key, s] : model.services) add_service(s);
        for (const auto& [uid, w] : model.workloads) add_workload(w);
        return true;
    }
    for (const auto& key : changes.services) {
        remove_service(key);
        if (auto it = model.services.find(key); it != model.services.end()) add_service(it->second);
    }
    for (const auto& uid : changes.workloads) {
        remove_workload(uid);
        if (auto it = model.workloads.find(uid); it != model.workloads.end()) add_workload(it->second);
    }
    return true;
}

void NameIndex::add_workload(const Workload& w) {
    // Normally absent (apply removed it first); a block left in place would be a second one of this
    // uid, with addresses and a pod key pointing at it.
    remove_workload(w.uid);
    // The label key first, into a reused buffer: replicas share their labels, so most workloads
    // find them pooled and build none of the strings below. (The model's strings are read through
    // references, whether it holds them as std::string or interned.)
    const std::string& ns = w.namespace_;
    const std::string& sa = w.service_account;
    const std::string& td = w.trust_domain;
    const std::string& workload = or_unknown(w.naming->workload_name);
    const std::string& trust_domain = td.empty() ? kClusterLocal : td;
    const bool has_principal = !sa.empty() && !ns.empty();
    const std::string& cluster = w.placement->cluster_id.empty() ? default_cluster_ : w.placement->cluster_id;
    std::string& k = scratch_;
    k.clear();
    k.append(workload).push_back('\x1f');
    k.append(or_unknown(ns)).push_back('\x1f');
    if (has_principal)
        k.append("spiffe://").append(trust_domain).append("/ns/").append(ns).append("/sa/").append(sa);
    else
        k.append(kUnknown);
    k.push_back('\x1f');
    k.append(or_unknown(w.naming->canonical_name)).push_back('\x1f');
    k.append(or_unknown(w.naming->canonical_revision)).push_back('\x1f');
    k.append(cluster);
    auto pooled_it = peers_.find(k);
    if (pooled_it == peers_.end()) {
        auto l = std::make_unique<PeerLabels>();
        l->namespace_ = ns;
        l->workload = workload;
        l->principal =
            has_principal ? "spiffe://" + trust_domain + "/ns/" + ns + "/sa/" + sa : std::string(kUnknown);
        l->canonical_service = or_unknown(w.naming->canonical_name);
        l->canonical_revision = or_unknown(w.naming->canonical_revision);
        l->cluster = cluster;
        l->label_key = k;
        pooled_it = peers_.emplace(k, Pooled{0, std::move(l)}).first;
    }
    Pooled& pooled = pooled_it->second;
    pooled.refs++;

    // One block: the header, the services, the addresses, then "namespace/name\0uid".
    const size_t n_svc = w.services.size(), n_addr = w.addresses.size();
    const size_t name_off = ns.size() + 1, text_len = name_off + w.name.size() + 1 + w.uid.size();
    const size_t size =
        sizeof(PeerInfo) + n_svc * sizeof(PeerInfo::Service) + n_addr * sizeof(IpAddr) + text_len;
    PeerPtr block(new (::operator new(size)) PeerInfo);
    PeerInfo& p = *block;
    p.labels = pooled.labels.get();
    p.host_network = w.network_mode == NetworkMode::kHostNetwork;
    p.name_off_ = uint32_t(name_off);
    p.name_len_ = uint32_t(w.name.size());
    p.uid_len_ = uint32_t(w.uid.size());
    PeerInfo::Service* svc = p.services_begin();
    for (const auto& [key, ports] : w.services) {
        new (svc + p.n_svc_) PeerInfo::Service{key, ports.empty() ? nullptr : retain_ports(ports)};
        p.n_svc_++;  // counted as built: PeerFree destroys exactly these
    }
    p.n_addr_ = uint32_t(n_addr);
    std::memcpy(const_cast<IpAddr*>(p.addresses_begin()), w.addresses.data(), n_addr * sizeof(IpAddr));
    char* text = const_cast<char*>(p.text());
    std::memcpy(text, ns.data(), ns.size());
    text[ns.size()] = '/';
    std::memcpy(text + name_off, w.name.data(), w.name.size());
    text[name_off + w.name.size()] = '\0';
    std::memcpy(text + name_off + w.name.size() + 1, w.uid.data(), w.uid.size());

    const PeerInfo* added = workloads_.insert(std::move(block)).first->get();
    for (const auto& a : added->addresses()) by_addr_[a].push_back(added);
    // The first of its pod key, or the next after the one that is.
    auto [pod, fresh] = pods_.insert(added);
    if (!fresh) {
        const_cast<PeerInfo*>(added)->next_same_pod_ = (*pod)->next_same_pod_;
        const_cast<PeerInfo*>(*pod)->next_same_pod_ = added;
    }
}

void NameIndex::remove_workload(std::string_view uid) {
    auto it = workloads_.find(uid);
    if (it == workloads_.end()) return;
    const PeerInfo* p = it->get();
    for (const auto& a : p->addresses()) {
        auto at = by_addr_.find(a);
        if (at == by_addr_.end()) continue;
        auto& list = at->second;
        list.erase(std::remove(list.begin(), list.end(), p), list.end());
        if (list.empty()) by_addr_.erase(at);
    }
    if (auto pod = pods_.find(p->pod_key()); pod != pods_.end()) {
        if (*pod == p) {
            // p is the first of its pod key: the next one (if any) takes its place.
            pods_.erase(pod);
            if (p->next_same_pod_) pods_.insert(p->next_same_pod_);
        } else {
            for (auto* q = const_cast<PeerInfo*>(*pod); q; q = const_cast<PeerInfo*>(q->next_same_pod_))
                if (q->next_same_pod_ == p) {
                    q->next_same_pod_ = p->next_same_pod_;
                    break;
                }
        }
    }
    for (const auto& s : p->services()) release_ports(s.ports);
    auto pooled = peers_.find(p->labels->label_key);
    workloads_.erase(it);
    if (pooled != peers_.end() && --pooled->second.refs == 0) peers_.erase(pooled);
}

const PortList* NameIndex::retain_ports(const PortList& ports) {
    auto it = ports_.try_emplace(ports, 0).first;
    it->second++;
    return &it->first;
}

void NameIndex::release_ports(const PortList* ports) {
    if (!ports) return;
    auto it = ports_.find(*ports);
    if (it != ports_.end() && --it->second == 0) ports_.erase(it);
}

size_t NameIndex::PortListHash::operator()(const PortList& ports) const {
    size_t h = ports.size();
    for (const auto& p : ports)
        h = h * 0x9e3779b97f4a7c15ULL + (size_t(p.service_port) << 16 | p.target_port);
    return absl::Hash<size_t>{}(h);
}

void PeerFree::operator()(PeerInfo* p) const noexcept {
    if (!p) return;
    PeerInfo::Service* svc = p->services_begin();
    for (uint32_t i = 0; i < p->n_svc_; i++) svc[i].~Service();
    p->~PeerInfo();
    ::operator delete(p);
}

void NameIndex::add_service(const Service& s) {
    ServiceInfo info;
    info.key = s.key();
    info.name = s.name;
    info.namespace_ = s.namespace_;
    info.hostname = s.hostname;
    info.addresses = s.addresses;
    info.ports = s.ports;
    info.label_key = or_unknown(s.hostname) + '\x1f' + or_unknown(s.namespace_) + '\x1f' + or_unknown(s.name);
    std::string key = info.key;
    auto it = services_.insert_or_assign(key, std::move(info)).first;
    const ServiceInfo* p = &it->second;
    for (const auto& a : p->addresses) {
        auto& list = by_vip_[a];
        list.push_back(p);
        std::sort(list.begin(), list.end(),
                  [](const ServiceInfo* x, const ServiceInfo* y) { return x->key < y->key; });
    }
    service_keys_[p->label_key]++;
}

void NameIndex::remove_service(const std::string& key) {
    auto it = services_.find(key);
    if (it == services_.end()) return;
    const ServiceInfo* p = &it->second;
    for (const auto& a : p->addresses) {
        auto at = by_vip_.find(a);
        if (at == by_vip_.end()) continue;
        erase_ptr(at->second, p);
        if (at->second.empty()) by_vip_.erase(at);
    }
    release(service_keys_, p->label_key);
    services_.erase(it);
}

const PeerInfo* NameIndex::workload_at(const IpAddr& addr) const {
    auto it = by_addr_.find(addr);
    if (it == by_addr_.end()) return nullptr;
    const PeerInfo* best = nullptr;
    for (const PeerInfo* p : it->second)
        if (!best ||
            std::make_pair(p->host_network, p->uid()) < std::make_pair(best->host_network, best->uid()))
            best = p;
    return best;
}

const ServiceInfo* NameIndex::service_at(const IpAddr& vip, uint16_t port) const {
    auto it = by_vip_.find(vip);
    if (it == by_vip_.end() || it->second.empty()) return nullptr;
    for (const ServiceInfo* s : it->second)
        for (const auto& p : s->ports)
            if (p.service_port == port) return s;
    return it->second.front();
}

const ServiceInfo* NameIndex::service_of(const PeerInfo& w, uint16_t port) const {
    for (const auto& [key, ports] : w.services()) {
        auto s = services_.find(key.str());
        if (s == services_.end()) continue;
        const auto& list = ports ? *ports : s->second.ports;
        for (const auto& p : list)
            if (effective_target(p) == port) return &s->second;
    }
    return nullptr;
}

}  // namespace kmesh::telemetry
