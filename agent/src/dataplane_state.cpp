#include "agent/src/dataplane_state.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <cstring>

namespace kmesh {

uint64_t name_hash(std::string_view name) {
    // FNV-1a 64; 0 is reserved for "unknown" so it is never returned.
    uint64_t h = 1469598103934665603ULL;
    for (unsigned char c : name) {
        h ^= c;
        h *= 1099511628211ULL;
    }
    return h ? h : 1;
}

namespace {

uint64_t hash_checked(const std::string& name, DesiredState& d, std::vector<std::string>* problems) {
    uint64_t h = name_hash(name);
    auto [it, fresh] = d.names.emplace(h, name);
    if (!fresh && it->second != name && problems)
        problems->push_back(fmt::format("names '{}' and '{}' hash alike; rename one", it->second, name));
    return h;
}

}  // namespace

DesiredState build_desired(const Model& model, std::vector<std::string>* problems) {
    DesiredState d;
    std::map<std::string, uint64_t> service_hash;
    for (const auto& [key, svc] : model.services) {
        uint64_t h = hash_checked(key, d, problems);
        service_hash[key] = h;
        d.services[h];  // a service without endpoints still exists: its connects are refused
        for (const auto& vip : svc.addresses)
            for (const auto& port : svc.ports) {
                kmesh_frontend_key fk{};
                std::memcpy(fk.addr, vip.bytes.data(), 16);
                fk.port = htons(port.service_port);
                uint16_t target = port.target_port ? port.target_port : port.service_port;
                d.frontends[fk] = FrontendTarget{h, htons(target)};
            }
    }
    for (const auto& [uid, wl] : model.workloads) {
        DesiredBackend b;
        for (const auto& a : wl.addresses) {
            if (a.is_v4() && !(b.flags & KMESH_BACKEND_HAS_V4)) {
                b.addr4 = a.bytes;
                b.flags |= KMESH_BACKEND_HAS_V4;
            } else if (!a.is_v4() && !(b.flags & KMESH_BACKEND_HAS_V6)) {
                b.addr6 = a.bytes;
                b.flags |= KMESH_BACKEND_HAS_V6;
            }
        }
        if (!b.flags) continue;  // nothing to connect to
        uint64_t h = hash_checked(uid, d, problems);
        d.backends[h] = b;
        if (wl.status != WorkloadStatus::kHealthy) continue;
        for (const auto& [svc_key, ports] : wl.services) {
            auto it = service_hash.find(svc_key);
            if (it != service_hash.end()) d.services[it->second].endpoints[0].insert(h);
        }
    }
    return d;
}

bool Plan::empty() const { return size() == 0; }

size_t Plan::size() const {
    return put_backends.size() + put_services.size() + add_endpoints.size() + put_frontends.size() +
           delete_frontends.size() + remove_endpoints.size() + delete_services.size() +
           delete_backends.size();
}

Plan diff(const MapState& cur, const DesiredState& want) {
    Plan plan;
    for (const auto& [h, b] : want.backends) {
        auto it = cur.backends.find(h);
        if (it == cur.backends.end() || !(it->second.value == b)) plan.put_backends.emplace_back(h, b);
    }
    for (const auto& [h, svc] : want.services) {
        auto it = cur.services.find(h);
        if (it == cur.services.end() || it->second.lb_mode != svc.lb_mode)
            plan.put_services.emplace_back(h, svc.lb_mode);
        for (uint32_t prio = 0; prio < KMESH_PRIO_COUNT; prio++) {
            std::set<uint64_t> have;
            if (it != cur.services.end()) {
                const auto& slots = it->second.slots[prio];
                for (uint32_t i = 0; i < slots.size(); i++) {
                    auto bh = cur.backend_hash_by_id.find(slots[i]);
                    uint64_t backend = bh == cur.backend_hash_by_id.end() ? 0 : bh->second;
                    // Unknown or unwanted slots go; a backend listed twice keeps one slot.
                    if (!backend || !svc.endpoints[prio].count(backend) || !have.insert(backend).second)
                        plan.remove_endpoints.push_back({h, prio, i + 1});
                }
            }
            for (uint64_t backend : svc.endpoints[prio])
                if (!have.count(backend)) plan.add_endpoints.push_back({h, prio, backend});
        }
    }
    for (const auto& [k, target] : want.frontends) {
        auto it = cur.frontends.find(k);
        if (it == cur.frontends.end() || !(it->second == target)) plan.put_frontends.emplace_back(k, target);
    }
    for (const auto& [k, target] : cur.frontends)
        if (!want.frontends.count(k)) plan.delete_frontends.push_back(k);
    for (const auto& [h, svc] : cur.services) {
        if (want.services.count(h)) continue;
        plan.delete_services.push_back(h);
    }
    for (const auto& [h, b] : cur.backends)
        if (!want.backends.count(h)) plan.delete_backends.push_back(h);
    return plan;
}

}  // namespace kmesh
