// The admin endpoints kmeshctl needs beyond the config dump (docs/kmeshctl.md):
//   GET  /debug/loglevel              {"level": "info"}
//   POST /debug/loglevel?level=debug  (or a JSON body {"level": "debug"}): the level at run time;
//                                     400 naming the accepted levels for anything else
//   GET  /debug/authz                 publish state, policies with hit counts, totals
//   GET  /debug/waypoints             waypoints in the kernel, their users, the loop-guard counters
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fmt/format.h>
#include <httplib.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <optional>
#include <vector>

#include "agent/src/admin/authz_view.hpp"
#include "agent/src/admin/ops_view.hpp"
#include "agent/src/agent.hpp"
#include "agent/src/sources/xds/source.hpp"

namespace kmesh {

namespace {

std::string error_json(const std::string& why) {
    rapidjson::StringBuffer b;
    rapidjson::Writer<rapidjson::StringBuffer> w(b);
    w.StartObject();
    w.Key("error");
    w.String(why.c_str(), static_cast<rapidjson::SizeType>(why.size()));
    w.EndObject();
    return b.GetString();
}

std::string level_json(spdlog::level::level_enum now, std::optional<spdlog::level::level_enum> previous) {
    auto name = [](spdlog::level::level_enum l) {
        auto sv = spdlog::level::to_string_view(l);
        return std::string(sv.data(), sv.size());
    };
    std::string out = fmt::format("{{\"level\":\"{}\"", name(now));
    if (previous) out += fmt::format(",\"previous\":\"{}\"", name(*previous));
    return out + "}";
}

// The level asked for in a POST: ?level=X, else {"level": "X"} in the body.
std::optional<std::string> requested_level(const httplib::Request& req, std::string* error) {
    if (req.has_param("level")) return req.get_param_value("level");
    rapidjson::Document d;
    d.Parse(req.body.c_str());
    if (d.HasParseError() || !d.IsObject() || !d.HasMember("level") || !d["level"].IsString()) {
        *error = "give the level as ?level=LEVEL or a JSON body {\"level\": \"LEVEL\"}";
        return std::nullopt;
    }
    return std::string(d["level"].GetString(), d["level"].GetStringLength());
}

}  // namespace

std::string Agent::authz_status() {
    // The kernel's counters first, without mu_ (as config_dump does).
    policy::AuthzReport report = authz_report();
    admin::AuthzPublishState st;
    const policy::AuthzWriterStats& s = authz_writer_->stats();
    st.publishes = s.publishes.load();
    st.failures = s.failures.load();
    st.map_full = s.map_full.load();
    st.identity_updates = s.identity_updates.load();
    st.can_close_connections = dataplane_->can_close_connections();
    std::lock_guard lock(mu_);
    st.waiting_for_policies = xds_source_ && !xds_source_->policies_received();
    st.published = !authz_pending_;
    st.last_error = authz_error_;
    st.state = authz_writer_->state();
    for (const auto& [key, p] : authz_policies_) st.kernel_policies.insert(key);
    return admin::authz_status_json(mesh_.model(), report, st);
}

std::string Agent::waypoints_status() {
    // The kernel's tables through the map fds, without mu_ (as maps_dump does); the names from the
    // model under it.
    admin::WaypointKernelView k;
    {
        MapState ms = recover_map_state(*ops_);
        k.waypoints = std::move(ms.waypoints);
        k.dests = std::move(ms.waypoint_dests);
    }
    // km_wp_stats is not among the writer's maps: opened by its pin, per-CPU values summed.
    if (int fd = bpf_obj_get(options_.layout.map("km_wp_stats").c_str()); fd >= 0) {
        int ncpu = libbpf_num_possible_cpus();
        if (ncpu > 0) {
            k.stats_read = true;
            std::vector<uint64_t> per_cpu(static_cast<size_t>(ncpu));
            for (uint32_t slot = 0; slot < KMESH_WP_STAT_MAX; slot++)
                if (bpf_map_lookup_elem(fd, &slot, per_cpu.data()) == 0)
                    for (uint64_t v : per_cpu) k.stats[slot] += v;
        }
        close(fd);
    }
    std::lock_guard lock(mu_);
    return admin::waypoints_json(mesh_.model(), k);
}

void Agent::add_ctl_routes(httplib::Server& srv) {
    srv.Get("/debug/loglevel", [](const httplib::Request&, httplib::Response& res) {
        res.set_content(level_json(spdlog::get_level(), std::nullopt), "application/json");
    });
    srv.Post("/debug/loglevel", [](const httplib::Request& req, httplib::Response& res) {
        std::string error;
        auto name = requested_level(req, &error);
        auto level = name ? admin::parse_log_level(*name) : std::nullopt;
        if (name && !level)
            error = fmt::format("'{}' is not a log level: use one of {}", *name, admin::log_level_names());
        if (!level) {
            res.status = 400;
            res.set_content(error_json(error), "application/json");
            return;
        }
        auto previous = spdlog::get_level();
        std::string note =
            fmt::format("log level {} -> {} (admin /debug/loglevel)", spdlog::level::to_string_view(previous),
                        spdlog::level::to_string_view(*level));
        // Said at info, at whichever end of the change shows info lines.
        if (previous <= spdlog::level::info) spdlog::info("{}", note);
        spdlog::set_level(*level);
        if (previous > spdlog::level::info) spdlog::info("{}", note);
        res.set_content(level_json(*level, previous), "application/json");
    });
    srv.Get("/debug/authz", [this](const httplib::Request&, httplib::Response& res) {
        res.set_content(authz_status(), "application/json");
    });
    srv.Get("/debug/waypoints", [this](const httplib::Request&, httplib::Response& res) {
        res.set_content(waypoints_status(), "application/json");
    });
}

}  // namespace kmesh
