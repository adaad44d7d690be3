#include "agent/src/admin/ops_view.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <cstring>
#include <set>
#include <vector>

#include "agent/src/dataplane/dataplane_state.hpp"

namespace kmesh::admin {

std::optional<spdlog::level::level_enum> parse_log_level(std::string_view name) {
    using L = spdlog::level::level_enum;
    static const std::pair<std::string_view, L> kNames[] = {
        {"trace", L::trace}, {"debug", L::debug},       {"info", L::info},
        {"warn", L::warn},   {"warning", L::warn},      {"error", L::err},
        {"err", L::err},     {"critical", L::critical}, {"off", L::off},
    };
    for (auto [n, l] : kNames)
        if (n == name) return l;
    return std::nullopt;
}

const char* log_level_names() { return "trace, debug, info, warn, error, critical, off"; }

const char* wp_stat_name(int slot) {
    switch (slot) {
        case KMESH_WP_STAT_REDIRECTED:
            return "redirected";
        case KMESH_WP_STAT_NO_FAMILY:
            return "no_family";
        case KMESH_WP_STAT_SELF:
            return "self";
        case KMESH_WP_STAT_FROM_WAYPOINT:
            return "from_waypoint";
        case KMESH_WP_STAT_NO_STORAGE:
            return "no_storage";
        case KMESH_WP_STAT_SOCKHASH_FULL:
            return "sockhash_full";
        case KMESH_WP_STAT_TLV_SENT:
            return "tlv_sent";
        case KMESH_WP_STAT_TLV_FAILED:
            return "tlv_failed";
        case KMESH_WP_STAT_RELEASED:
            return "released";
        default:
            return "unknown";
    }
}

namespace {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

void str(Writer& w, const char* key, const std::string& v) {
    w.Key(key);
    w.String(v.c_str(), static_cast<rapidjson::SizeType>(v.size()));
}

void list(Writer& w, const char* key, const std::set<std::string>& items) {
    w.Key(key);
    w.StartArray();
    for (const auto& s : items) w.String(s.c_str(), static_cast<rapidjson::SizeType>(s.size()));
    w.EndArray();
}

struct Entry {
    std::string name;
    std::set<std::string> services, workloads;
    uint64_t service_vips = 0, workload_addrs = 0;  // km_wp_dest entries naming it, by kind
};

}  // namespace

std::string waypoints_json(const Model& m, const WaypointKernelView& k) {
    std::map<uint64_t, Entry> by_id;
    auto named = [&](const Waypoint& wp) -> Entry& {
        std::string name = waypoint_name(wp);
        // The id MeshState::refresh_waypoints gives it (dataplane_state.cpp).
        Entry& e = by_id[name_hash("waypoint:" + name)];
        e.name = name;
        return e;
    };
    for (const auto& [key, s] : m.services)
        if (s.waypoint) named(*s.waypoint).services.insert(key);
    for (const auto& [uid, wl] : m.workloads)
        if (wl.waypoint) named(*wl.waypoint).workloads.insert(uid);
    for (const auto& [id, v] : k.waypoints) by_id[id];
    for (const auto& [key, v] : k.dests) {
        Entry& e = by_id[v.waypoint_id];
        (v.kind == KMESH_WP_KIND_SERVICE ? e.service_vips : e.workload_addrs)++;
    }
    rapidjson::StringBuffer buf;
    Writer w(buf);
    w.StartObject();
    w.Key("waypoints");
    w.StartArray();
    for (const auto& [id, e] : by_id) {
        w.StartObject();
        str(w, "id", fmt::format("{:016x}", id));
        str(w, "name", e.name.empty() ? fmt::format("unknown:{:016x}", id) : e.name);
        auto kv = k.waypoints.find(id);
        w.Key("in_kernel");  // km_waypoint has it (false: not written, or a removal in progress)
        w.Bool(kv != k.waypoints.end());
        w.Key("addresses");
        w.StartArray();
        if (kv != k.waypoints.end()) {
            IpAddr a;
            if (kv->second.flags & KMESH_WAYPOINT_HAS_V4) {
                std::memcpy(a.bytes.data(), kv->second.addr4, 16);
                w.String(a.str().c_str());
            }
            if (kv->second.flags & KMESH_WAYPOINT_HAS_V6) {
                std::memcpy(a.bytes.data(), kv->second.addr6, 16);
                w.String(a.str().c_str());
            }
        }
        w.EndArray();
        w.Key("port");
        w.Uint(kv != k.waypoints.end() ? ntohs(kv->second.port) : 0);
        list(w, "services", e.services);
        list(w, "workloads", e.workloads);
        w.Key("kernel_destinations");
        w.StartObject();
        w.Key("service_vips");
        w.Uint64(e.service_vips);
        w.Key("workload_addresses");
        w.Uint64(e.workload_addrs);
        w.EndObject();
        w.EndObject();
    }
    w.EndArray();
    w.Key("counters_read");
    w.Bool(k.stats_read);
    w.Key("counters");
    w.StartObject();
    for (int i = 0; i < KMESH_WP_STAT_MAX; i++) {
        w.Key(wp_stat_name(i));
        w.Uint64(k.stats[static_cast<size_t>(i)]);
    }
    w.EndObject();
    // Connects not redirected because they would have looped (docs/waypoint.md, loop prevention).
    w.Key("loop_guard");
    w.StartObject();
    w.Key("self");
    w.Uint64(k.stats[KMESH_WP_STAT_SELF]);
    w.Key("from_waypoint");
    w.Uint64(k.stats[KMESH_WP_STAT_FROM_WAYPOINT]);
    w.EndObject();
    w.EndObject();
    return buf.GetString();
}

}  // namespace kmesh::admin
