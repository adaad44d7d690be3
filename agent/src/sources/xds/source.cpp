#include "agent/src/sources/xds/source.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>

#include "agent/src/sources/xds/convert.hpp"
#include "istio/workload/workload.pb.h"

namespace kmesh::xds {

using envoy::service::discovery::v3::DeltaDiscoveryResponse;
using envoy::service::discovery::v3::Resource;

std::string Source::apply_address(const Resource& r) {
    if (r.resource().type_url() != kAddressType)
        return fmt::format("carries {}, not {}", r.resource().type_url(), kAddressType);
    // One message for every resource of a response: a parse reuses its sub-messages and the
    // strings not moved out below (a full push decodes 110k of them).
    istio::workload::Address& a = address_;
    if (!a.ParseFromString(r.resource().value())) return "cannot be decoded as istio.workload.Address";
    if (!a.has_workload() && !a.has_service()) return "is neither a workload nor a service";
    // Converted (and validated) first, so that a resource without a name is refused for that.
    Workload w;
    Service s;
    // The workload's strings move into the model's form (`a` is not read again but for the
    // service's name).
    if (auto e = a.has_workload() ? convert_workload(std::move(*a.mutable_workload()), &w)
                                  : convert_service(a.service(), &s);
        !e.empty())
        return e;
    std::string name = a.has_workload() ? w.uid : resource_name(a);
    if (name != r.name()) return fmt::format("is named '{}' but describes '{}'", r.name(), name);
    if (auto e = mesh_.check_name(name); !e.empty()) return e;
    // The model itself says what a name is; a name that changes kind drops its old self.
    if (a.has_workload()) {
        if (mesh_.model().services.count(name)) mesh_.remove_service(name);
        mesh_.upsert_workload(std::move(w));
    } else {
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
    AuthzPolicy policy;
    if (auto e = convert_authorization(p, &policy); !e.empty()) return e;
    if (resource_name(p) != r.name())
        return fmt::format("is named '{}' but describes '{}'", r.name(), resource_name(p));
    mesh_.upsert_policy(policy);
    return {};
}

void Source::remove(const std::string& type_url, const std::string& name) {
    versions_[type_url].erase(name_hash(name));
    rejected_[type_url].erase(name);
    if (type_url == kAuthorizationType) {
        mesh_.remove_policy(name);
        return;
    }
    mesh_.unpin(name);  // what a previous agent wrote for it goes now
    if (mesh_.model().workloads.count(name))
        mesh_.remove_workload(name);
    else
        mesh_.remove_service(name);
}

std::vector<std::string> Source::on_response(const DeltaDiscoveryResponse& resp) {
    return handle(resp, nullptr);
}

std::vector<std::string> Source::consume_response(DeltaDiscoveryResponse& resp) {
    return handle(resp, &resp);
}

namespace {
// Gives a string's heap block back (clear() keeps the capacity).
void release(std::string* s) { std::string().swap(*s); }
}  // namespace

std::vector<std::string> Source::handle(const DeltaDiscoveryResponse& resp,
                                        DeltaDiscoveryResponse* consumable) {
    auto t0 = std::chrono::steady_clock::now();
    std::lock_guard lock(mu_);
    std::vector<std::string> rejected;
    const std::string& type = resp.type_url();
    if (type != kAddressType && type != kAuthorizationType) {
        rejected.push_back(fmt::format("type {} was not subscribed", type));
        return rejected;
    }
    auto& versions = versions_[type];
    auto& rejected_names = rejected_[type];
    const int total = resp.resources_size();
    if (total > 1000) versions.reserve(versions.size() + static_cast<size_t>(total));
    constexpr int kChunk = kConsumeChunk;
    int i = 0;  // index in resp.resources() of the next resource (earlier ones may be gone)
    for (int n = 0; n < total; n++, i++) {
        if (consumable && i == kChunk) {
            consumable->mutable_resources()->DeleteSubrange(0, kChunk);
            i = 0;
        }
        const Resource& r = resp.resources(i);
        // Freed at the end of this iteration, whatever path it takes: the model's copy of the
        // resource grows while the response shrinks, instead of both peaking together.
        struct Release {
            Resource* r;
            ~Release() {
                if (!r) return;
                release(r->mutable_resource()->mutable_value());
                release(r->mutable_resource()->mutable_type_url());
                release(r->mutable_name());
                release(r->mutable_version());
            }
        } done{consumable ? consumable->mutable_resources(i) : nullptr};
        // A rejected resource keeps its last good state (or stays absent) and its old version, so
        // that a reconnect asks for it again.
        std::string err = type == kAddressType ? apply_address(r) : apply_authorization(r);
        if (!err.empty()) {
            rejected.push_back(
                fmt::format("{}: {}", r.name().empty() ? "(resource with an empty name)" : r.name(), err));
            if (!r.name().empty()) reject(type, r);
            continue;
        }
        versions.set(name_hash(r.name()), r.version());
        if (!rejected_names.empty()) rejected_names.erase(r.name());
        if (type == kAddressType) mesh_.unpin(r.name());
    }
    for (const auto& name : resp.removed_resources()) remove(type, name);
    // Until istiod's first Address response, the model is empty and the maps hold what a previous
    // agent wrote: writing now would wipe them.
    if (type == kAddressType) addresses_received_ = true;
    if (type == kAuthorizationType) policies_received_ = true;
    bool programmed = addresses_received_ && sync_();
    auto handled_us =
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
    spdlog::debug("xds: {} response: {} resources, {} removed, {} rejected; handled in {} us", type, total,
                  resp.removed_resources_size(), rejected.size(), handled_us);
    // Wall-clock time (epoch µs), so that a benchmark can put it next to the server's send time
    // of the same nonce: server send -> every map programmed, as istiod would see it.
    if (programmed)
        spdlog::debug("xds: maps programmed for nonce {} at {} us (epoch)", resp.nonce(),
                      std::chrono::duration_cast<std::chrono::microseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count());
    return rejected;
}

// A rejected resource keeps its last good state. When the model holds none (this agent started
// after it was last good), that state is whatever the maps hold for its name: pinned, so that the
// first sync after a restart does not delete it. A name whose hash belongs to another resource
// (check_name refused it) is not pinned: the hash is not its own.
void Source::reject(const std::string& type_url, const Resource& r) {
    const std::string& name = r.name();
    bool held = type_url == kAuthorizationType
                    ? mesh_.model().policies.count(name) > 0
                    : mesh_.model().services.count(name) || mesh_.model().workloads.count(name);
    if (held) return;  // its version stays the last good one's
    rejected_[type_url][name] = r.version();
    if (type_url == kAddressType && mesh_.check_name(name).empty()) mesh_.pin(name);
}

std::map<std::string, std::string> Source::versions(const std::string& type_url) {
    std::lock_guard lock(mu_);
    const auto& held = versions_[type_url];
    std::map<std::string, std::string> out;
    auto add = [&](const std::string& name) {
        if (auto v = held.get(name_hash(name))) out.emplace(name, std::move(*v));
    };
    if (type_url == kAuthorizationType) {
        for (const auto& [name, p] : mesh_.model().policies) add(name);
    } else {
        for (const auto& [key, s] : mesh_.model().services) add(key);
        for (const auto& [uid, w] : mesh_.model().workloads) add(uid);
    }
    // Rejected names the model does not hold are named too, with the rejected version: istiod
    // then sends them again only when they change, and says so when they are removed (which
    // releases what the maps kept for them).
    for (const auto& [name, version] : rejected_[type_url]) out.emplace(name, version);
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
