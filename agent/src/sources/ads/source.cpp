#include "agent/src/sources/ads/source.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <variant>

namespace kmesh::ads {

namespace {

// The names of the resources of `type` the state holds.
std::set<std::string> held(const NativeState& s, ResourceType type) {
    std::set<std::string> names;
    auto add = [&](const auto& m) {
        for (const auto& [n, v] : m) names.insert(n);
    };
    switch (type) {
        case ResourceType::kListener:
            add(s.listeners());
            break;
        case ResourceType::kRoute:
            add(s.routes());
            break;
        case ResourceType::kCluster:
            add(s.clusters());
            break;
        case ResourceType::kCla:
            add(s.clas());
            break;
    }
    return names;
}

void remove(NativeState& s, ResourceType type, const std::string& name) {
    switch (type) {
        case ResourceType::kListener:
            s.remove_listener(name);
            break;
        case ResourceType::kRoute:
            s.remove_route(name);
            break;
        case ResourceType::kCluster:
            s.remove_cluster(name);
            break;
        case ResourceType::kCla:
            s.remove_cla(name);
            break;
    }
}

// CLAs no cluster asks for, routes no listener names: gone (xds_protocol.rst: EDS/RDS resources
// are removed by no longer being referenced, not by absence from a response).
void prune_unreferenced(NativeState& s) {
    auto eds = s.eds_names();
    std::set<std::string> want_cla(eds.begin(), eds.end());
    // STATIC clusters carry their endpoints inline, and a CLA of an EDS cluster is named by its
    // eds_name; anything else is unreferenced.
    for (const auto& n : held(s, ResourceType::kCla))
        if (!want_cla.count(n)) s.remove_cla(n);
    auto rds = s.rds_names();
    std::set<std::string> want_route(rds.begin(), rds.end());
    for (const auto& n : held(s, ResourceType::kRoute))
        if (!want_route.count(n)) s.remove_route(n);
}

void upsert(NativeState& s, NativeResource&& r) {
    std::visit([&](auto&& v) { s.upsert(std::move(v)); }, std::move(r));
}

}  // namespace

std::vector<std::string> Source::on_response(const envoy::service::discovery::v3::DiscoveryResponse& r) {
    std::vector<std::string> rejected;
    auto type = resource_type(r.type_url());
    if (!type) return {fmt::format("type {}: not one of CDS, EDS, LDS, RDS", r.type_url())};
    // Decoding and conversion need no lock: only the state does.
    auto results = convert_resources(r.type_url(), r.resources(), opts_);
    if (!results) return {fmt::format("{}: {}", r.type_url(), results.status().to_string())};
    std::lock_guard lock(mu_);
    auto& rejected_here = rejected_[r.type_url()];
    std::set<std::string> listed;
    size_t applied = 0;
    for (auto& rr : *results) {
        listed.insert(rr.name);
        if (!rr.value) {
            std::string why = rr.value.status().to_string();
            rejected.push_back(fmt::format("{}: {}", rr.name, why));
            // Its last good state (if any) stays; otherwise it is remembered as rejected.
            if (!held(state_, *type).count(rr.name)) rejected_here[rr.name] = why;
            continue;
        }
        rejected_here.erase(rr.name);
        upsert(state_, std::move(*rr.value));
        applied++;
    }
    size_t removed = 0;
    if (*type == ResourceType::kCluster || *type == ResourceType::kListener) {
        // The complete state: what it no longer lists goes (a listed but rejected one stays).
        for (const auto& name : held(state_, *type))
            if (!listed.count(name)) {
                remove(state_, *type, name);
                removed++;
            }
        for (auto it = rejected_here.begin(); it != rejected_here.end();)
            it = listed.count(it->first) ? std::next(it) : rejected_here.erase(it);
    }
    // After every response, not only CDS/LDS: an EDS/RDS response istiod queued before a cluster
    // or listener went may still carry its resource, which must not linger (a cluster added back
    // later would look warm with stale endpoints). Envoy ignores such resources too.
    prune_unreferenced(state_);
    received_.insert(r.type_url());
    const NativeStats& st = state_.stats();
    spdlog::info(
        "ads: {} version {}: {} applied, {} rejected, {} removed; now {} listeners, {} routes, {} clusters, "
        "{} endpoint sets -> {} frontends, {} splits, {} limits ({} warming, {} routes approximated)",
        r.type_url().substr(r.type_url().rfind('.') + 1), r.version_info(), applied, rejected.size(), removed,
        state_.listeners().size(), state_.routes().size(), state_.clusters().size(), state_.clas().size(),
        st.frontends, st.splits, st.limits, st.warming, st.routes_approximated);
    for (const auto& why : rejected) spdlog::warn("ads: rejected {}", why);
    // Nothing is written before the first full state (CDS, LDS and the EDS/RDS they name): after a
    // restart the maps hold the last state (recovered), and a first CDS alone would look like a
    // mesh without listeners. From then on every response is written at once: warming keeps
    // frontends whose clusters or routes are not here yet at their previous targets (NativeState).
    if (!synced_ && !complete()) {
        spdlog::info("ads: holding the maps until CDS, LDS and the EDS/RDS they name have arrived");
        return rejected;
    }
    synced_ = true;
    sync_();
    return rejected;
}

std::vector<std::string> Source::subscriptions(const std::string& type_url) {
    std::lock_guard lock(mu_);
    if (type_url == kEndpointType) return state_.eds_names();
    if (type_url == kRouteType) return state_.rds_names();
    return {};
}

void Source::on_connection(bool connected) {
    spdlog::info("ads: stream to istiod {}", connected ? "up" : "down; the maps keep serving the last state");
}

bool Source::complete() const {
    if (!received_.count(kClusterType) || !received_.count(kListenerType)) return false;
    if (!state_.eds_names().empty() && !received_.count(kEndpointType)) return false;
    if (!state_.rds_names().empty() && !received_.count(kRouteType)) return false;
    return true;
}

std::vector<std::string> apply_bundle(NativeState& state, const Bundle& bundle) {
    std::vector<std::string> errors;
    for (const auto* list : {&bundle.listeners, &bundle.routes, &bundle.clusters, &bundle.clas})
        for (const auto& rr : *list)
            if (!rr.value) errors.push_back(fmt::format("{}: {}", rr.name, rr.value.status().to_string()));
    if (!errors.empty()) return errors;
    NativeState next;
    for (const auto* list : {&bundle.listeners, &bundle.routes, &bundle.clusters, &bundle.clas})
        for (const auto& rr : *list) std::visit([&](const auto& v) { next.upsert(v); }, *rr.value);
    // Only what differs is replaced, so an unchanged file leaves the state (and the maps) alone.
    auto sync = [](auto& cur, const auto& want, auto&& put, auto&& del) {
        for (const auto& [n, v] : want) {
            auto it = cur.find(n);
            if (it == cur.end() || !(it->second == v)) put(v);
        }
        std::vector<std::string> gone;
        for (const auto& [n, v] : cur)
            if (!want.count(n)) gone.push_back(n);
        for (const auto& n : gone) del(n);
    };
    sync(
        state.listeners(), next.listeners(), [&](const auto& v) { state.upsert(v); },
        [&](const std::string& n) { state.remove_listener(n); });
    sync(
        state.routes(), next.routes(), [&](const auto& v) { state.upsert(v); },
        [&](const std::string& n) { state.remove_route(n); });
    sync(
        state.clusters(), next.clusters(), [&](const auto& v) { state.upsert(v); },
        [&](const std::string& n) { state.remove_cluster(n); });
    sync(
        state.clas(), next.clas(), [&](const auto& v) { state.upsert(v); },
        [&](const std::string& n) { state.remove_cla(n); });
    return {};
}

}  // namespace kmesh::ads
