// The agent's admin server (localhost only by default): what the sources gave the agent, what the
// BPF maps hold (read back from the kernel, with names), the xDS connection, and metrics.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <google/protobuf/util/json_util.h>
#include <httplib.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstring>
#include <thread>
#include <unordered_map>

#include "agent/src/agent.hpp"
#include "agent/src/xds/source.hpp"

namespace kmesh {

struct Agent::Admin {
    httplib::Server server;
    std::thread thread;
    ~Admin() {
        server.stop();
        if (thread.joinable()) thread.join();
    }
};

// Here, where Admin is complete.
Agent::Agent() = default;

Agent::~Agent() {
    admin_.reset();
    if (xds_client_) xds_client_->stop();
    if (wake_fd_ >= 0) close(wake_fd_);
}

namespace {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

void str(Writer& w, const char* key, const std::string& v) {
    w.Key(key);
    w.String(v.c_str(), static_cast<rapidjson::SizeType>(v.size()));
}

void ports(Writer& w, const std::vector<ServicePort>& list) {
    w.StartArray();
    for (const auto& p : list) {
        w.StartObject();
        w.Key("service_port");
        w.Uint(p.service_port);
        w.Key("target_port");
        w.Uint(p.target_port);
        w.EndObject();
    }
    w.EndArray();
}

void addresses(Writer& w, const char* key, const std::vector<IpAddr>& list) {
    w.Key(key);
    w.StartArray();
    for (const auto& a : list) w.String(a.str().c_str());
    w.EndArray();
}

void waypoint(Writer& w, const std::optional<Waypoint>& wp) {
    if (!wp) return;
    w.Key("waypoint");
    w.StartObject();
    if (wp->address) str(w, "address", wp->address->str());
    if (!wp->hostname.empty()) str(w, "hostname", wp->hostname);
    w.Key("port");
    w.Uint(wp->port);
    w.EndObject();
}

const char* mode_name(LbMode m) {
    switch (m) {
        case LbMode::kStrict:
            return "STRICT";
        case LbMode::kFailover:
            return "FAILOVER";
        case LbMode::kPassthrough:
            return "PASSTHROUGH";
        default:
            return "UNSPECIFIED_MODE";
    }
}

std::string frontend_str(const kmesh_frontend_key& k) {
    IpAddr a;
    std::memcpy(a.bytes.data(), k.addr, 16);
    return a.is_v4() ? fmt::format("{}:{}", a.str(), ntohs(k.port))
                     : fmt::format("[{}]:{}", a.str(), ntohs(k.port));
}

}  // namespace

std::string Agent::config_dump() {
    rapidjson::StringBuffer buf;
    Writer w(buf);
    std::lock_guard lock(mu_);
    const Model& m = mesh_.model();
    w.StartObject();
    w.Key("node");
    w.StartObject();
    str(w, "name", mesh_.node().node);
    str(w, "cluster_id", mesh_.node().cluster_id);
    str(w, "region", mesh_.node().locality.region);
    str(w, "zone", mesh_.node().locality.zone);
    str(w, "subzone", mesh_.node().locality.subzone);
    w.EndObject();
    str(w, "source", options_.xds ? "xds:" + options_.xds->address : "file:" + options_.config_path);
    w.Key("generation");
    w.Uint64(generation_);
    w.Key("services");
    w.StartArray();
    for (const auto& [key, s] : m.services) {
        w.StartObject();
        str(w, "name", s.name);
        str(w, "namespace", s.namespace_);
        str(w, "hostname", s.hostname);
        addresses(w, "addresses", s.addresses);
        w.Key("ports");
        ports(w, s.ports);
        if (s.load_balancing) {
            w.Key("load_balancing");
            w.StartObject();
            str(w, "mode", mode_name(s.load_balancing->mode));
            w.Key("routing_preference");
            w.StartArray();
            for (LbScope sc : s.load_balancing->routing_preference) w.Uint(static_cast<unsigned>(sc));
            w.EndArray();
            w.EndObject();
        }
        waypoint(w, s.waypoint);
        w.EndObject();
    }
    w.EndArray();
    w.Key("workloads");
    w.StartArray();
    for (const auto& [uid, wl] : m.workloads) {
        w.StartObject();
        str(w, "uid", wl.uid);
        str(w, "name", wl.name);
        str(w, "namespace", wl.namespace_);
        addresses(w, "addresses", wl.addresses);
        w.Key("services");
        w.StartObject();
        for (const auto& [svc, list] : wl.services) {
            w.Key(svc.c_str());
            ports(w, list);
        }
        w.EndObject();
        str(w, "status", wl.status == WorkloadStatus::kHealthy ? "HEALTHY" : "UNHEALTHY");
        str(w, "network_mode", wl.network_mode == NetworkMode::kHostNetwork ? "HOST_NETWORK" : "STANDARD");
        const Placement& pl = *wl.placement;
        str(w, "node", pl.node);
        str(w, "locality", pl.locality.region + "/" + pl.locality.zone + "/" + pl.locality.subzone);
        if (!pl.network.empty()) str(w, "network", pl.network);
        if (!pl.cluster_id.empty()) str(w, "cluster_id", pl.cluster_id);
        if (wl.waypoint) waypoint(w, *wl.waypoint);
        w.EndObject();
    }
    w.EndArray();
    w.Key("policies");
    w.StartArray();
    if (xds_source_)
        for (const auto& [name, p] : xds_source_->policies()) {
            std::string json;
            google::protobuf::util::JsonPrintOptions opts;
            opts.preserve_proto_field_names = true;
            (void)google::protobuf::util::MessageToJsonString(p, &json, opts);
            w.RawValue(json.c_str(), json.size(), rapidjson::kObjectType);
        }
    w.EndArray();
    w.EndObject();
    return buf.GetString();
}

std::string Agent::maps_dump() {
    rapidjson::StringBuffer buf;
    Writer w(buf);
    std::lock_guard lock(mu_);
    MapState k = recover_map_state(*ops_);                 // what the kernel holds, not the writer's mirror
    std::unordered_map<uint64_t, std::string_view> names;  // built per request: not worth keeping
    for (const auto& [key, s] : mesh_.model().services) names.emplace(name_hash(key), key);
    for (const auto& [uid, wl] : mesh_.model().workloads) names.emplace(name_hash(uid), uid);
    auto name_of = [&](uint64_t h) -> std::string {
        auto it = names.find(h);
        return it == names.end() ? fmt::format("unknown:{:016x}", h) : std::string(it->second);
    };
    std::map<uint32_t, uint64_t> backend_hash;
    for (const auto& [h, b] : k.backends) backend_hash[b.id] = h;
    w.StartObject();
    w.Key("services");
    w.StartArray();
    for (const auto& [h, s] : k.services) {
        w.StartObject();
        w.Key("id");
        w.Uint(s.id);
        str(w, "name", name_of(h));
        w.Key("lb_mode");
        w.Uint(s.lb_mode);
        w.Key("frontends");
        w.StartArray();
        auto owned = k.frontends_by_service.find(h);
        if (owned != k.frontends_by_service.end())
            for (const auto& fk : owned->second) {
                const auto& t = k.frontends.at(fk);
                std::string f =
                    fmt::format("{} -> {}{}", frontend_str(fk), ntohs(t.target_port),
                                t.flags & KMESH_FRONTEND_PER_WORKLOAD_PORTS ? " (per-workload ports)" : "");
                w.String(f.c_str());
            }
        w.EndArray();
        for (int f = 0; f < KMESH_FAMILY_COUNT; f++) {  // per address family, one list per priority
            w.Key(f == KMESH_FAMILY_V4 ? "endpoints_v4" : "endpoints_v6");
            w.StartArray();
            for (const auto& slots : s.slots[f]) {
                w.StartArray();
                for (uint32_t id : slots) {
                    auto bh = backend_hash.find(id);
                    std::string e = bh == backend_hash.end() ? fmt::format("missing backend {}", id)
                                                             : name_of(bh->second);
                    w.String(e.c_str());
                }
                w.EndArray();
            }
            w.EndArray();
        }
        w.EndObject();
    }
    w.EndArray();
    w.Key("backends");
    w.StartArray();
    for (const auto& [h, b] : k.backends) {
        w.StartObject();
        w.Key("id");
        w.Uint(b.id);
        str(w, "workload", name_of(h));
        w.Key("addresses");
        w.StartArray();
        IpAddr a;
        if (b.value.flags & KMESH_BACKEND_HAS_V4) {
            a.bytes = b.value.addr4;
            w.String(a.str().c_str());
        }
        if (b.value.flags & KMESH_BACKEND_HAS_V6) {
            a.bytes = b.value.addr6;
            w.String(a.str().c_str());
        }
        w.EndArray();
        w.EndObject();
    }
    w.EndArray();
    w.Key("vip_conflicts");  // (VIP, port)s several services claim; the winner holds the frontend
    w.StartArray();
    for (const auto& c : mesh_.vip_conflicts()) {
        w.StartObject();
        str(w, "frontend", c.frontend);
        str(w, "winner", c.winner);
        w.Key("losers");
        w.StartArray();
        for (const auto& l : c.losers) w.String(l.c_str());
        w.EndArray();
        w.EndObject();
    }
    w.EndArray();
    w.Key("port_overrides");
    w.StartArray();
    for (const auto& [pk, target] : k.ports) {
        std::string o = fmt::format("{} in {}: {} -> {}", name_of(pk.backend), name_of(pk.service),
                                    ntohs(pk.port), ntohs(target));
        w.String(o.c_str());
    }
    w.EndArray();
    w.EndObject();
    return buf.GetString();
}

std::string Agent::metrics_text() {
    std::string out;
    auto counter = [&](const char* name, const char* help, uint64_t v, const std::string& labels = "") {
        out += fmt::format("# HELP {} {}\n# TYPE {} counter\n{}{} {}\n", name, help, name, name, labels, v);
    };
    counter("kmesh_config_applied_total", "Config generations written to the maps.", metrics_.config_applied);
    counter("kmesh_config_rejected_total", "Configs rejected as invalid.", metrics_.config_rejected);
    counter("kmesh_map_writes_total", "BPF map updates issued.", metrics_.map_writes);
    counter("kmesh_services_unpublished_total",
            "New services held back (no frontend) because they could not be written completely.",
            metrics_.services_unpublished);
    {
        std::lock_guard lock(mu_);
        out += fmt::format(
            "# HELP kmesh_vip_conflicts VIP:ports claimed by more than one service now.\n"
            "# TYPE kmesh_vip_conflicts gauge\nkmesh_vip_conflicts {}\n",
            mesh_.vip_conflict_count());
    }
    for (int i = 0; i < kMapCount; i++) {
        std::string l = fmt::format("{{map=\"{}\"}}", map_name(static_cast<MapId>(i)));
        out += fmt::format("kmesh_map_write_errors_total{} {}\n", l, metrics_.map_write_errors[i].load());
        out += fmt::format("kmesh_map_full_errors_total{} {}\n", l, metrics_.map_full_errors[i].load());
    }
    if (xds_client_) {
        auto st = xds_client_->status();
        out += fmt::format("kmesh_xds_connected {}\n", st.connected ? 1 : 0);
        counter("kmesh_xds_connects_total", "Streams to istiod that delivered a response.", st.connects);
        counter("kmesh_xds_acks_total", "Responses acknowledged.", st.acks);
        counter("kmesh_xds_nacks_total", "Responses rejected (in part).", st.nacks);
    }
    return out;
}

bool Agent::start_admin() {
    if (!options_.admin_port) return true;
    admin_ = std::make_unique<Admin>();
    auto& srv = admin_->server;
    auto json = [](httplib::Response& res, const std::string& body) {
        res.set_content(body, "application/json");
    };
    srv.Get("/debug/config_dump",
            [this, json](const httplib::Request&, httplib::Response& res) { json(res, config_dump()); });
    srv.Get("/debug/maps",
            [this, json](const httplib::Request&, httplib::Response& res) { json(res, maps_dump()); });
    srv.Get("/debug/xds", [this, json](const httplib::Request&, httplib::Response& res) {
        if (!xds_client_) return json(res, "{\"source\":\"file\"}");
        auto st = xds_client_->status();
        rapidjson::StringBuffer buf;
        Writer w(buf);
        w.StartObject();
        w.Key("connected");
        w.Bool(st.connected);
        for (auto [k, v] : {std::pair{"connects", st.connects},
                            {"responses", st.responses},
                            {"acks", st.acks},
                            {"nacks", st.nacks}}) {
            w.Key(k);
            w.Uint64(v);
        }
        str(w, "last_error", st.last_error);
        str(w, "last_nack", st.last_nack);
        w.EndObject();
        json(res, buf.GetString());
    });
    srv.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
        res.set_content(metrics_text(), "text/plain; version=0.0.4");
    });
    if (!srv.bind_to_port(options_.admin_address.c_str(), options_.admin_port)) {
        spdlog::error("admin: cannot listen on {}:{}", options_.admin_address, options_.admin_port);
        return false;
    }
    admin_->thread = std::thread([&srv] { srv.listen_after_bind(); });
    spdlog::info("admin on http://{}:{} (/debug/config_dump, /debug/maps, /debug/xds, /metrics)",
                 options_.admin_address, options_.admin_port);
    return true;
}

}  // namespace kmesh
