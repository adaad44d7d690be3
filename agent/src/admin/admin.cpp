// The agent's admin server (localhost only by default): what the sources gave the agent, what the
// BPF maps hold (read back from the kernel, with names), the xDS connection, and metrics.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fmt/format.h>
#include <httplib.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <charconv>
#include <condition_variable>
#include <cstring>
#include <span>
#include <thread>
#include <unordered_map>

#include "agent/src/admin/authz_view.hpp"
#include "agent/src/admin/version_view.hpp"
#include "agent/src/agent.hpp"
#include "agent/src/policy/evaluate.hpp"
#include "agent/src/policy/match.hpp"
#include "agent/src/sources/ads/source.hpp"
#include "agent/src/sources/xds/source.hpp"
#include "agent/src/telemetry/metrics_server.hpp"

namespace kmesh {

struct Agent::Admin {
    httplib::Server server;
    std::thread thread;
    std::mutex mu;
    std::condition_variable cv;
    bool stopping = false;  // mu
    std::atomic<bool> done{false};
    std::atomic<bool> listening{false};
    ~Admin() {
        {
            std::lock_guard lock(mu);
            stopping = true;
        }
        cv.notify_all();
        // httplib's stop() does nothing until listen has begun: repeat it until the thread ends.
        while (thread.joinable() && !done) {
            server.stop();
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        if (thread.joinable()) thread.join();
    }
};

// Here, where Admin is complete.
Agent::Agent() = default;

Agent::~Agent() {
    metrics_server_.reset();
    admin_.reset();
    if (xds_client_) xds_client_->stop();
    if (ads_client_) ads_client_->stop();  // its thread writes through this agent
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

// A service's VIPs (a std::vector) or a workload's addresses (kept inline: model.hpp).
void addresses(Writer& w, const char* key, std::span<const IpAddr> list) {
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

void Agent::set_authz_hits_reader(policy::HitsReader reader) {
    std::lock_guard lock(hits_mu_);
    hits_reader_ = std::move(reader);
}

std::string Agent::config_dump() {
    // The counters are read from the kernel before mu_ is taken: a dump never holds up a push.
    policy::AuthzReport report;
    {
        policy::HitsReader reader;
        {
            std::lock_guard lock(hits_mu_);
            reader = hits_reader_;
        }
        if (reader) report = reader();
    }
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
        // Options of the standalone file (docs/lb.md).
        str(w, "load_balancer", s.round_robin ? "ROUND_ROBIN" : "RANDOM");
        str(w, "session_affinity", s.affinity_timeout ? "CLIENT_IP" : "NONE");
        if (s.affinity_timeout) {
            w.Key("session_affinity_timeout_seconds");
            w.Uint(s.affinity_timeout);
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
        // Telemetry's names for it (docs/telemetry.md), when the source gives them.
        if (!wl.naming->workload_name.empty()) str(w, "workload_name", wl.naming->workload_name);
        if (!wl.naming->canonical_name.empty()) str(w, "canonical_name", wl.naming->canonical_name);
        if (!wl.naming->canonical_revision.empty())
            str(w, "canonical_revision", wl.naming->canonical_revision);
        addresses(w, "addresses", wl.addresses);
        w.Key("services");
        w.StartObject();
        for (const auto& [svc, list] : wl.services) {
            w.Key(svc.c_str());
            ports(w, list);
        }
        w.EndObject();
        str(w, "status", wl.status == WorkloadStatus::kHealthy ? "HEALTHY" : "UNHEALTHY");
        w.Key("capacity");  // its weight; 0 = draining
        w.Uint(wl.capacity);
        str(w, "network_mode", wl.network_mode == NetworkMode::kHostNetwork ? "HOST_NETWORK" : "STANDARD");
        const Placement& pl = *wl.placement;
        str(w, "node", pl.node);
        str(w, "locality", pl.locality.region + "/" + pl.locality.zone + "/" + pl.locality.subzone);
        if (!pl.network.empty()) str(w, "network", pl.network);
        if (!pl.cluster_id.empty()) str(w, "cluster_id", pl.cluster_id);
        if (wl.waypoint) waypoint(w, *wl.waypoint);
        // The identity its connections carry (what policies match the source against).
        SourceIdentity id = policy::identity_of(wl);
        str(w, "trust_domain", id.trust_domain);
        str(w, "service_account", wl.service_account);
        str(w, "principal", "spiffe://" + id.principal());
        w.Key("authorization_policies");
        w.StartArray();
        for (const auto& name : wl.authorization_policies) w.String(name.c_str());
        w.EndArray();
        w.EndObject();
    }
    w.EndArray();
    admin::write_authz_policies(w, m, report);
    w.EndObject();
    return buf.GetString();
}

std::string Agent::authz_check(const std::string& src, const std::string& dst, const std::string& port,
                               int* status) {
    auto bad = [&](const std::string& why) {
        *status = 400;
        rapidjson::StringBuffer b;
        Writer w(b);
        w.StartObject();
        str(w, "error", why);
        w.EndObject();
        return std::string(b.GetString());
    };
    auto s = IpAddr::parse(src);
    if (!s) return bad(fmt::format("src '{}' is not an IP address", src));
    auto d = IpAddr::parse(dst);
    if (!d) return bad(fmt::format("dst '{}' is not an IP address", dst));
    unsigned p = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (port.empty() || ec != std::errc() || end != port.data() + port.size() || p == 0 || p > 65535)
        return bad(fmt::format("port '{}' is not a port (1-65535)", port));
    policy::Connection c{*s, *d, static_cast<uint16_t>(p)};
    rapidjson::StringBuffer buf;
    Writer w(buf);
    std::lock_guard lock(mu_);
    const Model& m = mesh_.model();
    const Workload* target = policy::workload_at(m, c.dst);
    *status = 200;
    w.StartObject();
    str(w, "src", c.src.str());
    str(w, "dst", c.dst.str());
    w.Key("port");
    w.Uint(c.dst_port);
    SourceIdentity id = policy::source_identity(m, c.src);
    str(w, "source_identity", id.known() ? "spiffe://" + id.principal() : "");
    if (!target) {
        str(w, "verdict", "allow");
        str(w, "reason", "the destination is no known workload: no policy applies");
        w.EndObject();
        return buf.GetString();
    }
    policy::Decision dec = policy::decide(m, *target, c);
    str(w, "destination_workload", target->uid);
    str(w, "verdict", dec.allow ? "allow" : "deny");
    w.Key("policy");
    if (dec.policy.empty())
        w.Null();
    else
        w.String(dec.policy.c_str());
    w.Key("dry_run");
    w.StartArray();
    for (const auto& k : dec.dry_run) w.String(k.c_str());
    w.EndArray();
    str(w, "reason", dec.reason);
    w.EndObject();
    return buf.GetString();
}

std::string Agent::maps_dump() {
    rapidjson::StringBuffer buf;
    Writer w(buf);
    // What the kernel holds, not the writer's mirror: read through the map fds, without mu_, so a
    // dump of a large mesh never holds up an xDS push or a reload. Only the names (hash -> name,
    // copied under mu_) come from the model.
    MapState k = recover_map_state(*ops_);
    std::unordered_map<uint64_t, std::string> names;  // built per request: not worth keeping
    std::vector<MeshState::VipConflict> conflicts;
    {
        std::lock_guard lock(mu_);
        conflicts = mesh_.vip_conflicts();  // walks the model: copied under the lock with the names
        names.reserve(mesh_.model().services.size() + mesh_.model().workloads.size());
        for (const auto& [key, s] : mesh_.model().services) names.emplace(name_hash(key), key);
        for (const auto& [uid, wl] : mesh_.model().workloads) names.emplace(name_hash(uid), uid);
    }
    auto name_of = [&](uint64_t h) -> std::string {
        auto it = names.find(h);
        return it == names.end() ? fmt::format("unknown:{:016x}", h) : std::string(it->second);
    };
    auto frontend_line = [&](const kmesh_frontend_key& fk, const FrontendTarget& t) {
        std::string f =
            fmt::format("{} -> {}{}", frontend_str(fk), ntohs(t.target_port),
                        t.flags & KMESH_FRONTEND_PER_WORKLOAD_PORTS ? " (per-workload ports)" : "");
        if (t.flags & KMESH_FRONTEND_LIMITED) {
            auto l = k.limits.find(t.limit);
            f += l == k.limits.end() ? " (rate limit: unknown id)"
                                     : fmt::format(" (rate limit {})", l->second.id);
        }
        return f;
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
        str(w, "pick", s.flags & KMESH_SERVICE_ROUND_ROBIN ? "round_robin" : "random");
        if (s.flags & KMESH_SERVICE_AFFINITY) {
            w.Key("affinity_timeout_seconds");
            w.Uint(s.affinity_timeout);
        }
        if (s.flags & KMESH_SERVICE_MAX_CONN) {  // kernel-native circuit breaking, per client pod
            w.Key("max_connections");
            w.Uint(s.max_connections);
        }
        w.Key("members");  // km_member: workload -> weight (0 = draining)
        w.StartObject();
        for (const auto& [id, weight] : s.members) {
            auto bh = backend_hash.find(id);
            std::string e =
                bh == backend_hash.end() ? fmt::format("missing backend {}", id) : name_of(bh->second);
            w.Key(e.c_str());
            w.Uint(weight);
        }
        w.EndObject();
        w.Key("frontends");
        w.StartArray();
        auto owned = k.frontends_by_service.find(h);
        if (owned != k.frontends_by_service.end())
            for (const auto& fk : owned->second) {
                std::string f = frontend_line(fk, k.frontends.at(fk));
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
        if (b.value.flags & KMESH_BACKEND_HAS_PORT) {  // kernel-native: the endpoint's own port
            w.Key("port");
            w.Uint(ntohs(b.value.port));
        }
        w.EndObject();
    }
    w.EndArray();
    // Kernel-native: weighted splits (with the frontends naming them) and rate limits.
    w.Key("splits");
    w.StartArray();
    for (const auto& [h, sp] : k.splits) {
        w.StartObject();
        w.Key("id");
        w.Uint(sp.id);
        str(w, "name_hash", fmt::format("{:016x}", h));
        w.Key("services");
        w.StartObject();
        for (const auto& [service, weight] : sp.value.services) {
            std::string n = name_of(service);
            w.Key(n.c_str());
            w.Uint(weight);
        }
        w.EndObject();
        w.Key("frontends");
        w.StartArray();
        if (auto owned = k.frontends_by_service.find(h); owned != k.frontends_by_service.end())
            for (const auto& fk : owned->second) {
                std::string f = frontend_line(fk, k.frontends.at(fk));
                w.String(f.c_str());
            }
        w.EndArray();
        w.EndObject();
    }
    w.EndArray();
    w.Key("rate_limits");
    w.StartArray();
    for (const auto& [h, l] : k.limits) {
        w.StartObject();
        w.Key("id");
        w.Uint(l.id);
        str(w, "name_hash", fmt::format("{:016x}", h));
        w.Key("max_tokens");
        w.Uint64(l.value.max_tokens);
        w.Key("tokens_per_fill");
        w.Uint64(l.value.tokens_per_fill);
        w.Key("fill_interval_ns");
        w.Uint64(l.value.fill_interval_ns);
        w.EndObject();
    }
    w.EndArray();
    w.Key("vip_conflicts");  // (VIP, port)s several services claim; the winner holds the frontend
    w.StartArray();
    for (const auto& c : conflicts) {
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

namespace {

admin::VersionInfo version_info(const Dataplane& dp, const PinLayout& layout, bool published,
                                bool count_links) {
    admin::VersionInfo v{program_build(),
                         dp.programs(),
                         KMESH_ABI_VERSION,
                         layout.maps_version,
                         layout.maps_dir(),
                         published,
                         {}};
    if (count_links) {
        std::set<uint32_t> ids;
        for (const auto& p : dp.programs()) ids.insert(p.id);
        v.pod_links = admin::count_pod_links(layout.pods_dir(), ids);
    }
    return v;
}

}  // namespace

std::string Agent::version_json() {
    return admin::version_json(version_info(*dataplane_, options_.layout, published_, true));
}

std::string Agent::metrics_text() {
    // The event reader's flush first, so that open connections' bytes are in this scrape.
    std::function<void()> before;
    {
        std::lock_guard lock(hooks_mu_);
        before = before_scrape_;
    }
    if (before) before();
    std::string out = admin::build_info_metric(version_info(*dataplane_, options_.layout, published_, false));
    auto header = [&](const char* name, const char* help, const char* type) {
        out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    };
    auto counter = [&](const char* name, const char* help, uint64_t v) {
        header(name, help, "counter");
        out += fmt::format("{} {}\n", name, v);
    };
    auto gauge = [&](const char* name, const char* help, int64_t v) {
        header(name, help, "gauge");
        out += fmt::format("{} {}\n", name, v);
    };
    gauge("kmesh_ready", "1 once the first full state is applied and the programs are published.",
          not_ready_reason().empty() ? 1 : 0);
    gauge("kmesh_config_generation", "Config generations written to the maps since start.", generation_);
    counter("kmesh_config_applied_total", "Config generations written to the maps.", metrics_.config_applied);
    counter("kmesh_config_rejected_total", "Configs rejected as invalid.", metrics_.config_rejected);
    counter("kmesh_map_writes_total", "BPF map updates issued.", metrics_.map_writes);
    counter("kmesh_map_calls_total", "bpf() calls made for map updates and deletes (a batch is one call).",
            metrics_.map_calls);
    counter("kmesh_map_batches_stopped_total",
            "Batched map writes the kernel stopped at a failing entry (counted per map in the write errors).",
            metrics_.map_batches_stopped);
    counter("kmesh_services_unpublished_total",
            "New services held back (no frontend) because they could not be written completely.",
            metrics_.services_unpublished);
    counter("kmesh_frontends_unpublished_total",
            "Frontends held back because the split or rate limit they name could not be written.",
            metrics_.frontends_unpublished);
    // Kept by the main thread after each sync: reading it never waits for a config update.
    gauge("kmesh_vip_conflicts", "VIP:ports claimed by more than one service now.",
          static_cast<int64_t>(metrics_.vip_conflicts.load()));
    gauge("kmesh_enrolled_pods", "Pods of this node enrolled by their labels (enrolment reconciler).",
          metrics_.enrolled_pods);
    gauge("kmesh_enrolment_waiting_pods", "Enrolled pods whose cgroup is not there yet.",
          metrics_.enrolment_waiting);
    counter("kmesh_enrolment_passes_total", "Enrolment reconciler passes.", metrics_.enrolment_passes);
    counter("kmesh_enrolment_errors_total", "Enrolment actions (attach, release, annotate) that failed.",
            metrics_.enrolment_errors);
    header("kmesh_cni_queries_total",
           "kmesh-cni ADDs answered on --cni-socket, by answer (unknown: the plugin asked the API server; "
           "refused: bad peer or query).",
           "counter");
    out += fmt::format("kmesh_cni_queries_total{{answer=\"enrolled\"}} {}\n",
                       metrics_.cni_queries_enrolled.load());
    out += fmt::format("kmesh_cni_queries_total{{answer=\"not_enrolled\"}} {}\n",
                       metrics_.cni_queries_not_enrolled.load());
    out += fmt::format("kmesh_cni_queries_total{{answer=\"unknown\"}} {}\n",
                       metrics_.cni_queries_unknown.load());
    out += fmt::format("kmesh_cni_queries_total{{answer=\"refused\"}} {}\n",
                       metrics_.cni_queries_refused.load());
    header("kmesh_map_write_errors_total", "BPF map updates that failed, per map.", "counter");
    for (int i = 0; i < kMapCount; i++)
        out += fmt::format("kmesh_map_write_errors_total{{map=\"{}\"}} {}\n", map_name(static_cast<MapId>(i)),
                           metrics_.map_write_errors[i].load());
    header("kmesh_map_full_errors_total", "BPF map updates refused because the map is full, per map.",
           "counter");
    for (int i = 0; i < kMapCount; i++)
        out += fmt::format("kmesh_map_full_errors_total{{map=\"{}\"}} {}\n", map_name(static_cast<MapId>(i)),
                           metrics_.map_full_errors[i].load());
    // Occupancy against capacity: the writer's mirror of what it wrote, the sizes the maps were made with.
    header("kmesh_map_entries", "Entries the agent has written to each BPF map (after the last apply).",
           "gauge");
    for (int i = 0; i < kMapCount; i++)
        out += fmt::format("kmesh_map_entries{{map=\"{}\"}} {}\n", map_name(static_cast<MapId>(i)),
                           metrics_.map_entries[i].load());
    header("kmesh_map_capacity", "Capacity (max entries) of each BPF map the agent writes.", "gauge");
    {
        const MapCapacity c = MapCapacity::of(options_.sizes);
        const std::array<std::pair<MapId, uint32_t>, kMapCount> caps{
            {{MapId::kFrontend, c.frontends},
             {MapId::kService, c.services},
             {MapId::kEndpoint, c.endpoints},
             {MapId::kBackend, c.backends},
             {MapId::kPort, c.ports},
             {MapId::kWaypoint, c.waypoints},
             {MapId::kWaypointDest, c.waypoint_addrs},
             {MapId::kMember, c.members},
             {MapId::kSplit, c.splits},
             {MapId::kLimitCfg, c.limits},
             {MapId::kRateLimit, c.ratelimits}}};
        for (auto [id, cap] : caps)
            out += fmt::format("kmesh_map_capacity{{map=\"{}\"}} {}\n", map_name(id), cap);
    }
    // The data plane's own counters: a per-CPU array, summed here.
    std::array<uint64_t, KMESH_STAT_MAX> stats{};
    int ncpu = libbpf_num_possible_cpus();
    if (ncpu > 0) {
        std::vector<uint64_t> per_cpu(static_cast<size_t>(ncpu));
        for (uint32_t slot = 0; slot < KMESH_STAT_MAX; slot++)
            if (bpf_map_lookup_elem(dataplane_->stats_fd(), &slot, per_cpu.data()) == 0)
                for (uint64_t v : per_cpu) stats[slot] += v;
    }
    header("kmesh_connect_total",
           "connect() calls to a mesh service seen by the BPF programs, by outcome (translated; "
           "no_endpoint: refused; no_family: endpoint lacks the address family; race_retry: picked again "
           "after a concurrent map change; cb_open: refused, the service's max_connections reached for the "
           "client pod; cb_untracked: let through uncounted, km_cb or socket storage full; rate_limited: "
           "refused, "
           "the client pod's token bucket was empty; rate_limit_untracked: let through, km_ratelimit full).",
           "counter");
    for (auto [slot, result] : {std::pair{KMESH_STAT_TRANSLATED, "translated"},
                                {KMESH_STAT_NO_ENDPOINT, "no_endpoint"},
                                {KMESH_STAT_NO_FAMILY, "no_family"},
                                {KMESH_STAT_RACE_RETRY, "race_retry"},
                                {KMESH_STAT_CB_OPEN, "cb_open"},
                                {KMESH_STAT_CB_UNTRACKED, "cb_untracked"},
                                {KMESH_STAT_RATE_LIMITED, "rate_limited"},
                                {KMESH_STAT_RL_UNTRACKED, "rate_limit_untracked"}})
        out += fmt::format("kmesh_connect_total{{result=\"{}\"}} {}\n", result, stats[slot]);
    // UDP translation and address transparency (bpf/sock_udp.c; docs/udp.md).
    std::array<uint64_t, KMESH_UDP_STAT_MAX> udp{};
    if (ncpu > 0) {
        std::vector<uint64_t> per_cpu(static_cast<size_t>(ncpu));
        for (uint32_t slot = 0; slot < KMESH_UDP_STAT_MAX; slot++)
            if (bpf_map_lookup_elem(dataplane_->udp_stats_fd(), &slot, per_cpu.data()) == 0)
                for (uint64_t v : per_cpu) udp[slot] += v;
    }
    header("kmesh_udp_total",
           "UDP translation and address transparency events seen by the BPF programs (send_picked, "
           "send_kept: datagrams to a VIP sent to a newly picked / the socket's backend; send_refused: "
           "VIP without endpoints; reverse_failed: reverse entry not stored; slot_evicted: a socket's "
           "fifth service took the oldest slot; recv_translated / recv_stale: reply source shown as the "
           "VIP / left alone because its backend left; peer_translated: getpeername answered the VIP; "
           "peer_no_storage: socket storage not created; released: reverse entries dropped at close; "
           "connect_translated: connected UDP sockets translated).",
           "counter");
    for (auto [slot, event] : {std::pair{KMESH_UDP_STAT_SEND_PICKED, "send_picked"},
                               {KMESH_UDP_STAT_SEND_KEPT, "send_kept"},
                               {KMESH_UDP_STAT_SEND_REFUSED, "send_refused"},
                               {KMESH_UDP_STAT_REV_FAILED, "reverse_failed"},
                               {KMESH_UDP_STAT_SLOT_EVICTED, "slot_evicted"},
                               {KMESH_UDP_STAT_RECV_XLATED, "recv_translated"},
                               {KMESH_UDP_STAT_RECV_STALE, "recv_stale"},
                               {KMESH_UDP_STAT_PEER_XLATED, "peer_translated"},
                               {KMESH_UDP_STAT_PEER_NO_STORAGE, "peer_no_storage"},
                               {KMESH_UDP_STAT_RELEASED, "released"},
                               {KMESH_UDP_STAT_CONNECT_XLATED, "connect_translated"}})
        out += fmt::format("kmesh_udp_total{{event=\"{}\"}} {}\n", event, udp[slot]);
    // Same-node sockmap acceleration (docs/sockmap.md): the kernel's per-CPU counters, summed.
    gauge("kmesh_sockmap_enabled",
          "1 when sockops puts connections between enrolled pods of this node in the sockhash (--sockmap=on "
          "and the kernel supports it).",
          dataplane_->sockmap_active() ? 1 : 0);
    {
        std::array<uint64_t, KMESH_ACCEL_STAT_MAX> accel{};
        if (ncpu > 0) {
            std::vector<uint64_t> per_cpu(static_cast<size_t>(ncpu));
            for (uint32_t slot = 0; slot < KMESH_ACCEL_STAT_MAX; slot++)
                if (bpf_map_lookup_elem(dataplane_->accel_stats_fd(), &slot, per_cpu.data()) == 0)
                    for (uint64_t v : per_cpu) accel[slot] += v;
        }
        counter("kmesh_sockmap_sockets_inserted_total", "Sockets put in km_accel_sockhash by sockops.",
                accel[KMESH_ACCEL_STAT_INSERTED]);
        counter("kmesh_sockmap_insert_failures_total",
                "Sockets not put in km_accel_sockhash (map full, key taken, no socket storage).",
                accel[KMESH_ACCEL_STAT_SOCKHASH_FULL]);
        counter("kmesh_sockmap_peer_unknown_total",
                "Accepted sockets left out because their client is not accelerated.",
                accel[KMESH_ACCEL_STAT_PEER_UNKNOWN]);
        counter("kmesh_sockmap_accelerated_total",
                "Sockets whose first send found their peer: redirected until they close.",
                accel[KMESH_ACCEL_STAT_CONNECTIONS]);
        counter("kmesh_sockmap_passed_total",
                "Sockets whose first send found no accelerated peer: plain TCP.",
                accel[KMESH_ACCEL_STAT_PASSED]);
        counter("kmesh_sockmap_released_total",
                "Plain-TCP sockets taken out of km_accel_sockhash again (at their first ACK).",
                accel[KMESH_ACCEL_STAT_RELEASED]);
        counter("kmesh_sockmap_redirected_messages_total", "Sends redirected into the peer socket.",
                accel[KMESH_ACCEL_STAT_MSGS]);
        counter("kmesh_sockmap_redirected_bytes_total", "Bytes redirected into the peer socket.",
                accel[KMESH_ACCEL_STAT_BYTES]);
        counter("kmesh_sockmap_peer_gone_total",
                "Sends of accelerated sockets whose peer had closed (sent through TCP, which resets).",
                accel[KMESH_ACCEL_STAT_PEER_GONE] + accel[KMESH_ACCEL_STAT_REDIRECT_FAILED]);
    }
    gauge("kmesh_pod_links_stale", "Pod links still running older programs (their bpf_link_update failed).",
          dataplane_->stale_links());
    gauge("kmesh_old_map_versions_kept", "Map directories of older layouts kept for stale pod links.",
          dataplane_->old_maps_kept());
    // Authorization: what the writer managed to publish, and what the kernel decided.
    const policy::AuthzWriterStats& az = authz_writer_->stats();
    counter("kmesh_authz_publishes_total", "Authorization generations published (flipped) in the kernel.",
            az.publishes.load());
    header("kmesh_authz_publish_failures_total",
           "Authorization publishes stopped before the flip (the previous policies keep being enforced), "
           "by reason.",
           "counter");
    const uint64_t full = az.map_full.load(), failed = az.failures.load();
    out += fmt::format("kmesh_authz_publish_failures_total{{reason=\"map_full\"}} {}\n", full);
    out += fmt::format("kmesh_authz_publish_failures_total{{reason=\"other\"}} {}\n",
                       failed > full ? failed - full : 0);
    const policy::AuthzTotals totals = authz_report().totals;
    header("kmesh_authz_connections_total",
           "New inbound TCP connections to enrolled workloads by authorization decision (kernel counters).",
           "counter");
    for (auto [decision, v] : {std::pair{"allowed", totals.allowed},
                               {"denied_by_policy", totals.denied_by_policy},
                               {"denied_no_allow", totals.denied_no_allow}})
        out += fmt::format("kmesh_authz_connections_total{{decision=\"{}\"}} {}\n", decision, v);
    counter("kmesh_authz_closed_connections_total",
            "Existing connections closed because a policy change denies them now.", totals.closed_existing);
    // Connection telemetry from the kernel (docs/telemetry.md): what the ring buffer carried.
    gauge("kmesh_telemetry_enabled", "1 while the kernel tracks new connections for metrics (--monitoring).",
          event_reader_ && event_reader_->enabled() ? 1 : 0);
    if (event_reader_) {
        const telemetry::EventReaderStats ts = event_reader_->stats();
        counter("kmesh_telemetry_events_total", "Connection events the kernel wrote to the ring buffer.",
                ts.kernel[KMESH_TEL_STAT_EVENTS]);
        counter(
            "kmesh_telemetry_events_dropped_total",
            "Connection events lost because the ring buffer was full (the connections were not affected).",
            ts.kernel[KMESH_TEL_STAT_DROPPED]);
        counter("kmesh_telemetry_untracked_total",
                "Connections not tracked for metrics because their socket storage could not be created.",
                ts.kernel[KMESH_TEL_STAT_NO_STORAGE]);
        counter("kmesh_telemetry_connections_tracked_total", "Connection ends tracked (either role).",
                ts.kernel[KMESH_TEL_STAT_TRACKED]);
        counter("kmesh_telemetry_events_decoded_total", "Connection events read and decoded by the agent.",
                ts.decoded);
        counter("kmesh_telemetry_events_malformed_total", "Ring buffer records the agent could not decode.",
                ts.malformed);
    }
    // connect() failures by reason, from the kernel's own counters (lossless, unlike the event ring).
    header("kmesh_connect_failures_total",
           "Connections that failed in the data plane, by reason (no_endpoint: service without endpoints, "
           "refused; no_family: no endpoint of the socket's address family; denied_by_policy: a DENY policy "
           "matched; denied_no_allow: ALLOW policies apply and none matched).",
           "counter");
    for (auto [reason, v] : {std::pair{"no_endpoint", stats[KMESH_STAT_NO_ENDPOINT]},
                             {"no_family", stats[KMESH_STAT_NO_FAMILY]},
                             {"denied_by_policy", totals.denied_by_policy},
                             {"denied_no_allow", totals.denied_no_allow}})
        out += fmt::format("kmesh_connect_failures_total{{reason=\"{}\"}} {}\n", reason, v);
    // From metrics_, not admin_: the main thread resets admin_ while a request may still run.
    counter("kmesh_admin_bind_failures_total", "Failed attempts to bind the admin server.",
            metrics_.admin_bind_failures);
    // The stream to istiod, whichever API it speaks (both clients' statuses have these fields).
    auto stream_metrics = [&](const auto& st) {
        gauge("kmesh_xds_connected", "1 while a stream to istiod is up.", st.connected ? 1 : 0);
        counter("kmesh_xds_connects_total", "Streams to istiod that delivered a response.", st.connects);
        counter("kmesh_xds_acks_total", "Responses acknowledged.", st.acks);
        counter("kmesh_xds_nacks_total", "Responses rejected (in part).", st.nacks);
    };
    if (xds_client_) stream_metrics(xds_client_->status());
    if (ads_client_) stream_metrics(ads_client_->status());
    if (native_) {
        NativeStats ns;
        {
            // A snapshot from the last sync: a scrape never waits for a config update (mu_).
            std::lock_guard lock(native_stats_mu_);
            ns = native_stats_;
        }
        gauge("kmesh_native_frontends", "Kernel-native mode: (VIP, port) entries programmed.", ns.frontends);
        gauge("kmesh_native_splits", "Kernel-native mode: weighted splits programmed.", ns.splits);
        gauge("kmesh_native_limits", "Kernel-native mode: token buckets (local rate limits) programmed.",
              ns.limits);
        gauge("kmesh_native_warming",
              "Kernel-native mode: frontends held back until their clusters' endpoints or routes arrive.",
              ns.warming);
        gauge("kmesh_native_routes_approximated",
              "Kernel-native mode: (VIP, port) whose route table needs the request; its catch-all route is "
              "used.",
              ns.routes_approximated);
        gauge("kmesh_native_least_request_as_random",
              "Kernel-native mode: LEAST_REQUEST clusters balanced at random (no active counts in the kernel "
              "yet).",
              ns.least_request_as_random);
        header("kmesh_native_unsupported",
               "Kernel-native mode: parts of the config left to pass through, by reason.", "gauge");
        for (const auto& [reason, n] : ns.unsupported)
            out += fmt::format("kmesh_native_unsupported{{reason=\"{}\"}} {}\n", reason, n);
    }
    counter("kmesh_metrics_bind_failures_total", "Failed attempts to bind the Prometheus server (:15020).",
            metrics_.metrics_bind_failures);
    // Connection telemetry: istio_tcp_*, per workload and service, access log, process_*.
    out += telemetry_->render();
    return out;
}

void Agent::start_metrics_server() {
    if (!options_.metrics_port) return;
    metrics_server_ = std::make_unique<telemetry::MetricsServer>(
        options_.metrics_address, options_.metrics_port, [this] { return metrics_text(); },
        metrics_.metrics_bind_failures);
}

namespace {

std::string settings_json(const telemetry::MonitoringSettings& s) {
    return fmt::format("{{\"enabled\":{},\"access_log\":{}}}", s.enabled, s.access_log);
}

std::string error_json(const std::string& why) {
    rapidjson::StringBuffer b;
    Writer w(b);
    w.StartObject();
    str(w, "error", why);
    w.EndObject();
    return b.GetString();
}

}  // namespace

std::string Agent::monitoring_json() { return settings_json(telemetry_->settings()); }

std::string Agent::set_monitoring(const std::string& body, const std::string& enabled_param,
                                  const std::string& accesslog_param, int* status) {
    std::optional<bool> enabled, access_log;
    auto flag = [](const std::string& v, std::optional<bool>* out) {
        if (v == "true" || v == "on" || v == "enable" || v == "1")
            *out = true;
        else if (v == "false" || v == "off" || v == "disable" || v == "0")
            *out = false;
        else
            return false;
        return true;
    };
    *status = 400;
    if (!enabled_param.empty() && !flag(enabled_param, &enabled))
        return error_json(fmt::format("enabled '{}' is not true or false", enabled_param));
    if (!accesslog_param.empty() && !flag(accesslog_param, &access_log))
        return error_json(fmt::format("accesslog '{}' is not on or off", accesslog_param));
    if (body.find_first_not_of(" \t\r\n") != std::string::npos) {
        rapidjson::Document d;
        d.Parse(body.c_str(), body.size());
        if (d.HasParseError() || !d.IsObject())
            return error_json("the body is not a JSON object ({\"enabled\": bool, \"access_log\": bool})");
        for (auto it = d.MemberBegin(); it != d.MemberEnd(); ++it) {
            std::string key(it->name.GetString(), it->name.GetStringLength());
            std::optional<bool>* target = key == "enabled"      ? &enabled
                                          : key == "access_log" ? &access_log
                                                                : nullptr;
            if (!target) return error_json(fmt::format("unknown field '{}' (enabled, access_log)", key));
            if (!it->value.IsBool()) return error_json(fmt::format("'{}' is not a boolean", key));
            *target = it->value.GetBool();
        }
    }
    if (!enabled && !access_log)
        return error_json(
            "nothing to change: give enabled and/or access_log (query enabled=, accesslog= or JSON)");
    std::lock_guard lock(monitoring_mu_);
    telemetry::MonitoringSettings s = telemetry_->settings();
    const bool was_enabled = s.enabled;
    if (enabled) s.enabled = *enabled;
    if (access_log) s.access_log = *access_log;
    telemetry_->set_settings(s);
    if (s.enabled != was_enabled) {
        std::function<void(bool)> hook;
        {
            std::lock_guard hl(hooks_mu_);
            hook = on_monitoring_enabled_;
        }
        if (hook) hook(s.enabled);
    }
    spdlog::info("monitoring: {} (access log {})", s.enabled ? "on" : "off", s.access_log ? "on" : "off");
    *status = 200;
    return settings_json(s);
}

void Agent::start_admin() {
    if (!options_.admin_port) return;
    admin_ = std::make_unique<Admin>();
    auto& srv = admin_->server;
    // Bounded per connection and in number: a few idle or half-sent requests must not keep
    // /metrics and /ready from answering (the kubelet's probe has a short timeout).
    srv.set_read_timeout(1, 0);
    srv.set_write_timeout(5, 0);
    srv.set_keep_alive_timeout(1);
    srv.set_keep_alive_max_count(20);
    srv.set_payload_max_length(64 << 10);
    srv.new_task_queue = [] { return new httplib::ThreadPool(4); };
    auto json = [](httplib::Response& res, const std::string& body) {
        res.set_content(body, "application/json");
    };
    srv.Get("/ready", [this](const httplib::Request&, httplib::Response& res) {
        std::string reason = not_ready_reason();
        res.status = reason.empty() ? 200 : 503;
        res.set_content(reason.empty() ? "ready\n" : "not ready: " + reason + "\n", "text/plain");
    });
    srv.Get("/version",
            [this, json](const httplib::Request&, httplib::Response& res) { json(res, version_json()); });
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
    // What the reference evaluator decides for src -> dst:port on the current model.
    srv.Get("/debug/authz_check", [this, json](const httplib::Request& req, httplib::Response& res) {
        int status = 200;
        std::string body = authz_check(req.get_param_value("src"), req.get_param_value("dst"),
                                       req.get_param_value("port"), &status);
        res.status = status;
        json(res, body);
    });
    add_ctl_routes(srv);
    srv.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
        // metrics_text() runs the before-scrape hook (the event reader's flush): open connections'
        // bytes and every pending event are in before the numbers are read.
        res.set_content(metrics_text(), "text/plain; version=0.0.4");
    });
    // The last kernel connection events decoded (docs/telemetry.md). ?flush=1 first runs a flush
    // (open connections report their bytes) instead of waiting for the next periodic one.
    srv.Get("/debug/conn_events", [this, json](const httplib::Request& req, httplib::Response& res) {
        if (req.get_param_value("flush") == "1") {
            if (Status st = flush_telemetry(); !st && st.code() != Errc::kUnavailable) {
                res.status = 500;
                res.set_content(st.to_string() + "\n", "text/plain");
                return;
            }
        }
        json(res, conn_events_json());
    });
    // Monitoring switches (kmeshctl monitoring): GET shows them, POST changes them.
    srv.Get("/debug/monitoring",
            [this, json](const httplib::Request&, httplib::Response& res) { json(res, monitoring_json()); });
    srv.Post("/debug/monitoring", [this, json](const httplib::Request& req, httplib::Response& res) {
        int status = 200;
        std::string body = set_monitoring(req.body, req.get_param_value("enabled"),
                                          req.get_param_value("accesslog"), &status);
        res.status = status;
        json(res, body);
    });
    // The admin server is not needed to serve traffic: if the port is taken (another process got
    // there first), the agent runs on and keeps trying, 1 s doubling to 30 s.
    Admin* admin = admin_.get();
    admin->thread = std::thread([this, admin] {
        auto wait = std::chrono::seconds(1);
        for (;;) {
            if (admin->server.bind_to_port(options_.admin_address.c_str(), options_.admin_port)) break;
            uint64_t failures = ++metrics_.admin_bind_failures;
            if (failures == 1 || failures % 10 == 0)
                spdlog::error(
                    "admin: cannot listen on {}:{} ({} attempts; is another process on that port?); the "
                    "agent serves on without /ready and /metrics and keeps retrying (up to every 30 s)",
                    options_.admin_address, options_.admin_port, failures);
            std::unique_lock lock(admin->mu);
            if (admin->cv.wait_for(lock, wait, [admin] { return admin->stopping; })) {
                admin->done = true;
                return;
            }
            wait = std::min(wait * 2, std::chrono::seconds(30));
        }
        admin->listening = true;
        spdlog::info(
            "admin on http://{}:{} (/ready, /version, /debug/config_dump, /debug/maps, /debug/xds, "
            "/debug/authz_check, /debug/conn_events, /debug/monitoring, /metrics)",
            options_.admin_address, options_.admin_port);
        admin->server.listen_after_bind();
        admin->done = true;
    });
}

}  // namespace kmesh
