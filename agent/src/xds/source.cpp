#include "agent/src/xds/source.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>

#include "agent/src/xds/convert.hpp"
#include "istio/workload/workload.pb.h"

namespace kmesh::xds {

using envoy::service::discovery::v3::DeltaDiscoveryResponse;
using envoy::service::discovery::v3::Resource;

std::string Source::apply_address(const Resource& r) {
    if (r.resource().type_url() != kAddressType)
        return fmt::format("carries {}, not {}", r.resource().type_url(), kAddressType);
    istio::workload::Address a;
    if (!a.ParseFromString(r.resource().value())) return "cannot be decoded as istio.workload.Address";
    std::string name = resource_name(a);
    if (name.empty()) return "is neither a workload nor a service";
    if (name != r.name()) return fmt::format("is named '{}' but describes '{}'", r.name(), name);
    if (auto e = mesh_.check_name(name); !e.empty()) return e;
    // The model itself says what a name is; a name that changes kind drops its old self.
    if (a.has_workload()) {
        Workload w;
        if (auto e = convert_workload(a.workload(), &w); !e.empty()) return e;
        if (mesh_.model().services.count(name)) mesh_.remove_service(name);
        mesh_.upsert_workload(w);
    } else {
        Service s;
        if (auto e = convert_service(a.service(), &s); !e.empty()) return e;
        if (mesh_.model().workloads.count(name)) mesh_.remove_workload(name);
        mesh_.upsert_service(s);
    }
    return {};
}

std::string Source::apply_authorization(const Resource& r) {
    if (r.resource().type_url() != kAuthorizationType)
        return fmt::format("carries {}, not {}", r.resource().type_url(), kAuthorizationType);
    istio::security::Authorization p;
    if (!p.ParseFromString(r.resource().value())) return "cannot be decoded as istio.security.Authorization";
    if (auto e = validate_authorization(p); !e.empty()) return e;
    if (resource_name(p) != r.name())
        return fmt::format("is named '{}' but describes '{}'", r.name(), resource_name(p));
    policies_[r.name()] = std::move(p);
    return {};
}

void Source::remove(const std::string& type_url, const std::string& name) {
    versions_[type_url].erase(name_hash(name));
    if (type_url == kAuthorizationType) {
        policies_.erase(name);
        return;
    }
    if (mesh_.model().workloads.count(name))
        mesh_.remove_workload(name);
    else
        mesh_.remove_service(name);
}

std::vector<std::string> Source::on_response(const DeltaDiscoveryResponse& resp) {
    auto t0 = std::chrono::steady_clock::now();
    std::lock_guard lock(mu_);
    std::vector<std::string> rejected;
    const std::string& type = resp.type_url();
    if (type != kAddressType && type != kAuthorizationType) {
        rejected.push_back(fmt::format("type {} was not subscribed", type));
        return rejected;
    }
    auto& versions = versions_[type];
    for (const auto& r : resp.resources()) {
        // A rejected resource keeps its last good state (or stays absent) and its old version, so
        // that a reconnect asks for it again.
        std::string err = type == kAddressType ? apply_address(r) : apply_authorization(r);
        if (!err.empty()) {
            rejected.push_back(fmt::format("{}: {}", r.name(), err));
            continue;
        }
        versions[name_hash(r.name())] = r.version();
    }
    for (const auto& name : resp.removed_resources()) remove(type, name);
    // Until istiod's first Address response, the model is empty and the maps hold what a previous
    // agent wrote: writing now would wipe them.
    if (type == kAddressType) addresses_received_ = true;
    if (addresses_received_) sync_();
    spdlog::debug(
        "xds: {} response: {} resources, {} removed, {} rejected; handled in {} us", type,
        resp.resources_size(), resp.removed_resources_size(), rejected.size(),
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count());
    return rejected;
}

std::map<std::string, std::string> Source::versions(const std::string& type_url) {
    std::lock_guard lock(mu_);
    const auto& held = versions_[type_url];
    std::map<std::string, std::string> out;
    auto add = [&](const std::string& name) {
        auto v = held.find(name_hash(name));
        if (v != held.end()) out.emplace(name, v->second);
    };
    if (type_url == kAuthorizationType) {
        for (const auto& [name, p] : policies_) add(name);
    } else {
        for (const auto& [key, s] : mesh_.model().services) add(key);
        for (const auto& [uid, w] : mesh_.model().workloads) add(uid);
    }
    return out;
}

void Source::on_connection(bool connected) {
    std::lock_guard lock(mu_);
    if (connected)
        spdlog::info("xds: connected; holding {} addresses and {} policies", resources(kAddressType),
                     resources(kAuthorizationType));
    else
        spdlog::warn("xds: disconnected; the data plane keeps serving the last state");
}

size_t Source::resources(const std::string& type_url) const {
    auto it = versions_.find(type_url);
    return it == versions_.end() ? 0 : it->second.size();
}

}  // namespace kmesh::xds
