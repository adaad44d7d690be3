// kmeshctl dump: what the pinned BPF maps hold, as connect() sees it (read directly, read-only),
// then what the agent's admin server says of the model (policies with hit counts, waypoints,
// identities) and of the kernel's waypoint tables.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fmt/format.h>
#include <rapidjson/document.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <map>
#include <optional>
#include <vector>

#include "agent/src/dataplane/map_ops.hpp"
#include "agent/src/model/ip_addr.hpp"
#include "common/abi.hpp"
#include "ctl/verbs.hpp"

namespace kmesh::ctl {

namespace {

std::string addr_str(const uint8_t* bytes) {
    kmesh::IpAddr a;
    std::memcpy(a.bytes.data(), bytes, 16);
    return a.str();
}

const char* lb_name(uint32_t mode) {
    switch (mode) {
        case KMESH_LB_RANDOM:
            return "random";
        case KMESH_LB_STRICT:
            return "strict";
        case KMESH_LB_FAILOVER:
            return "failover";
        default:
            return "unknown";
    }
}

template <size_t N = KMESH_STAT_MAX>
std::array<uint64_t, N> read_stats(const std::string& path) {
    std::array<uint64_t, N> totals{};
    int fd = bpf_obj_get(path.c_str());
    if (fd < 0) return totals;
    std::vector<uint64_t> per_cpu(libbpf_num_possible_cpus());
    for (uint32_t slot = 0; slot < N; slot++)
        if (bpf_map_lookup_elem(fd, &slot, per_cpu.data()) == 0)
            for (uint64_t v : per_cpu) totals[slot] += v;
    close(fd);
    return totals;
}

int dump_maps(const kmesh::PinLayout& layout) {
    std::array<int, kmesh::kMapCount> fds{};
    for (int i = 0; i < kmesh::kMapCount; i++) {
        std::string path = layout.map(kmesh::map_name(static_cast<kmesh::MapId>(i)));
        fds[i] = bpf_obj_get(path.c_str());
        if (fds[i] < 0) {
            fmt::print(stderr, "cannot open {}: {} (is kmesh-daemon installed on this node?)\n", path,
                       std::strerror(errno));
            return 1;
        }
    }
    kmesh::KernelMapOps ops(fds);

    std::map<uint32_t, kmesh_backend_value> backends;
    ops.for_each(kmesh::MapId::kBackend, [&](const void* k, const void* v) {
        uint32_t id;
        std::memcpy(&id, k, 4);
        std::memcpy(&backends[id], v, sizeof(kmesh_backend_value));
        return true;
    });
    auto backend_str = [&](uint32_t id) {
        auto it = backends.find(id);
        if (it == backends.end()) return fmt::format("backend {} (missing)", id);
        std::string s = fmt::format("backend {}", id);
        // fmt, not " " + str: GCC 12 at -O3 raises a false -Wrestrict on that concatenation.
        if (it->second.flags & KMESH_BACKEND_HAS_V4) s += fmt::format(" {}", addr_str(it->second.addr4));
        if (it->second.flags & KMESH_BACKEND_HAS_V6) s += fmt::format(" {}", addr_str(it->second.addr6));
        if (it->second.flags & KMESH_BACKEND_HAS_PORT) s += fmt::format(" port {}", ntohs(it->second.port));
        return s;
    };

    std::multimap<uint32_t, std::string> frontends_by_service, frontends_by_split;
    ops.for_each(kmesh::MapId::kFrontend, [&](const void* k, const void* v) {
        kmesh_frontend_key fk;
        kmesh_frontend_value fv;
        std::memcpy(&fk, k, sizeof fk);
        std::memcpy(&fv, v, sizeof fv);
        std::string a = addr_str(fk.addr);
        std::string line =
            fmt::format("{}:{} -> target port {}", a.find(':') != std::string::npos ? "[" + a + "]" : a,
                        ntohs(fk.port), ntohs(fv.target_port));
        if (fv.flags & KMESH_FRONTEND_LIMITED) line += fmt::format(" rate limit {}", fv.limit_id);
        // A split frontend's service_id is a km_split id: listed under its split, not a service.
        if (fv.flags & KMESH_FRONTEND_SPLIT)
            frontends_by_split.emplace(fv.service_id, line);
        else
            frontends_by_service.emplace(fv.service_id, line);
        return true;
    });

    std::map<uint32_t, kmesh_service_value> services;
    ops.for_each(kmesh::MapId::kService, [&](const void* k, const void* v) {
        uint32_t id;
        std::memcpy(&id, k, 4);
        std::memcpy(&services[id], v, sizeof(kmesh_service_value));
        return true;
    });
    // km_member: (service, backend) -> weight.
    std::map<uint32_t, std::map<uint32_t, uint32_t>> members;
    ops.for_each(kmesh::MapId::kMember, [&](const void* k, const void* v) {
        kmesh_member_key mk;
        kmesh_member_value mv;
        std::memcpy(&mk, k, sizeof mk);
        std::memcpy(&mv, v, sizeof mv);
        members[mk.service_id][mk.backend_id] = mv.weight;
        return true;
    });
    fmt::print("services ({}):\n", services.size());
    for (const auto& [id, sv] : services) {
        std::string pick = sv.flags & KMESH_SERVICE_ROUND_ROBIN ? "round-robin" : "random";
        if (sv.flags & KMESH_SERVICE_AFFINITY) pick += fmt::format(" affinity={}s", sv.affinity_timeout);
        if (sv.flags & KMESH_SERVICE_MAX_CONN) pick += fmt::format(" max_connections={}", sv.max_connections);
        fmt::print("  service {} (name hash {:016x}) lb={} pick={}\n", id, sv.name_hash, lb_name(sv.lb_mode),
                   pick);
        if (auto m = members.find(id); m != members.end()) {
            std::string list;
            for (const auto& [bid, weight] : m->second)
                list += fmt::format("{}backend {} weight {}{}", list.empty() ? "" : ", ", bid, weight,
                                    weight ? "" : " (draining)");
            fmt::print("    members: {}\n", list);
        }
        auto range = frontends_by_service.equal_range(id);
        for (auto it = range.first; it != range.second; ++it) fmt::print("    frontend {}\n", it->second);
        // One endpoint list per socket family: IPv4 (and IPv4-mapped) sockets pick from the first.
        for (uint16_t f = 0; f < KMESH_FAMILY_COUNT; f++)
            for (uint16_t p = 0; p < KMESH_PRIO_COUNT; p++) {
                uint32_t n = sv.endpoint_count[f][p];
                if (!n && p) continue;
                fmt::print("    {} priority {}: {} endpoint(s){}\n", f == KMESH_FAMILY_V4 ? "IPv4" : "IPv6",
                           p, n, n ? "" : " -> connect() refused");
                for (uint32_t i = 1; i <= n; i++) {
                    kmesh_endpoint_key ek{id, f, p, i};
                    kmesh_endpoint_value ev;
                    if (ops.lookup(kmesh::MapId::kEndpoint, &ek, &ev) == 0)
                        fmt::print("      #{} {}\n", i, backend_str(ev.backend_id));
                    else
                        fmt::print("      #{} (missing)\n", i);
                }
            }
    }
    auto orphans = frontends_by_service.size();
    for (const auto& [id, sv] : services) orphans -= frontends_by_service.count(id);
    if (orphans) fmt::print("frontends of unknown services: {}\n", orphans);
    // Kernel-native: weighted splits and rate limits (ids 1..; zeroed limit entries are unused).
    size_t splits = 0;
    ops.for_each(kmesh::MapId::kSplit, [&](const void* k, const void* v) {
        uint32_t id;
        kmesh_split_value sv;
        std::memcpy(&id, k, 4);
        std::memcpy(&sv, v, sizeof sv);
        if (!splits++) fmt::print("splits:\n");
        std::string list;
        for (uint32_t i = 0; i < sv.count && i < KMESH_SPLIT_MAX; i++)
            list += fmt::format("{}service {} weight {}", i ? ", " : "", sv.service_id[i],
                                sv.cum_weight[i] - (i ? sv.cum_weight[i - 1] : 0));
        fmt::print("  split {} (name hash {:016x}): {}\n", id, sv.name_hash, list);
        auto range = frontends_by_split.equal_range(id);
        for (auto it = range.first; it != range.second; ++it) fmt::print("    frontend {}\n", it->second);
        return true;
    });
    size_t limits = 0;
    ops.for_each(kmesh::MapId::kLimitCfg, [&](const void* k, const void* v) {
        uint32_t id;
        kmesh_limit_cfg lc;
        std::memcpy(&id, k, 4);
        std::memcpy(&lc, v, sizeof lc);
        if (!lc.name_hash && !lc.max_tokens) return true;
        if (!limits++) fmt::print("rate limits:\n");
        fmt::print("  limit {} (name hash {:016x}): max_tokens={} tokens_per_fill={} fill_interval={}ns\n",
                   id, lc.name_hash, lc.max_tokens, lc.tokens_per_fill, lc.fill_interval_ns);
        return true;
    });
    fmt::print("backends ({}):\n", backends.size());
    for (const auto& [id, bv] : backends) fmt::print("  {}\n", backend_str(id));

    size_t overrides = 0;
    ops.for_each(kmesh::MapId::kPort, [&](const void* k, const void* v) {
        kmesh_port_key pk;
        kmesh_port_value pv;
        std::memcpy(&pk, k, sizeof pk);
        std::memcpy(&pv, v, sizeof pv);
        if (!overrides++) fmt::print("per-workload target ports:\n");
        fmt::print("  backend {} in service {}: port {} -> {}\n", pk.backend_id, pk.service_id,
                   ntohs(pk.service_port), ntohs(pv.target_port));
        return true;
    });

    auto stats = read_stats(layout.map("km_stats"));
    fmt::print(
        "connect() counters: translated={} refused_no_endpoint={} no_address_family={} race_retries={} "
        "refused_max_connections={} untracked_max_connections={} refused_rate_limit={} "
        "untracked_rate_limit={}\n",
        stats[KMESH_STAT_TRANSLATED], stats[KMESH_STAT_NO_ENDPOINT], stats[KMESH_STAT_NO_FAMILY],
        stats[KMESH_STAT_RACE_RETRY], stats[KMESH_STAT_CB_OPEN], stats[KMESH_STAT_CB_UNTRACKED],
        stats[KMESH_STAT_RATE_LIMITED], stats[KMESH_STAT_RL_UNTRACKED]);
    // Same-node acceleration: the sockets in km_accel_sockhash (both ends of each accelerated
    // connection), and the kernel's counters.
    if (int fd = bpf_obj_get(layout.map("km_accel_sockhash").c_str()); fd >= 0) {
        kmesh_accel_key key{}, next{};
        size_t n = 0;
        const void* prev = nullptr;
        while (bpf_map_get_next_key(fd, prev, &next) == 0) {
            if (!n++) fmt::print("sockmap-accelerated sockets (local -> remote):\n");
            auto port = [](uint16_t p) { return ntohs(p); };
            fmt::print("  [{}]:{} -> [{}]:{}\n", addr_str(reinterpret_cast<const uint8_t*>(next.local)),
                       port(next.local_port), addr_str(reinterpret_cast<const uint8_t*>(next.remote)),
                       port(next.remote_port));
            key = next;
            prev = &key;
        }
        close(fd);
        auto a = read_stats<KMESH_ACCEL_STAT_MAX>(layout.map("km_accel_stats"));
        fmt::print(
            "sockmap counters: sockets_in_map={} inserted={} insert_failed={} peer_unknown={} accelerated={} "
            "passed={} released={} redirected_msgs={} redirected_bytes={} peer_gone={}\n",
            n, a[KMESH_ACCEL_STAT_INSERTED], a[KMESH_ACCEL_STAT_SOCKHASH_FULL],
            a[KMESH_ACCEL_STAT_PEER_UNKNOWN], a[KMESH_ACCEL_STAT_CONNECTIONS], a[KMESH_ACCEL_STAT_PASSED],
            a[KMESH_ACCEL_STAT_RELEASED], a[KMESH_ACCEL_STAT_MSGS], a[KMESH_ACCEL_STAT_BYTES],
            a[KMESH_ACCEL_STAT_PEER_GONE] + a[KMESH_ACCEL_STAT_REDIRECT_FAILED]);
    }
    for (int fd : fds) close(fd);
    return 0;
}

std::string member_str(const rapidjson::Value& v, const char* key) {
    if (!v.IsObject() || !v.HasMember(key) || !v[key].IsString()) return {};
    return v[key].GetString();
}

std::string waypoint_str(const rapidjson::Value& v) {
    if (!v.HasMember("waypoint")) return {};
    const auto& wp = v["waypoint"];
    std::string where = wp.HasMember("address") ? member_str(wp, "address") : member_str(wp, "hostname");
    return fmt::format("{} port {}", where, wp.HasMember("port") ? wp["port"].GetUint() : 0);
}

// Policies (rules and hit counts), waypoints and identities from /debug/config_dump.
int dump_model(const Admin& admin) {
    std::string error;
    auto body = admin.get_json("/debug/config_dump", &error);
    if (!body) {
        fmt::print("model: not shown: {}\n", error);
        return -1;  // the maps above are still a full answer
    }
    rapidjson::Document d;
    d.Parse(body->c_str());
    if (d.HasParseError() || !d.IsObject()) {
        fmt::print(stderr, "the admin server's config dump is not JSON\n");
        return 1;
    }
    fmt::print("waypoints:\n");
    size_t waypoints = 0;
    for (const char* kind : {"services", "workloads"}) {
        if (!d.HasMember(kind)) continue;
        for (const auto& x : d[kind].GetArray()) {
            std::string wp = waypoint_str(x);
            if (wp.empty()) continue;
            waypoints++;
            std::string name = std::string(kind) == "services"
                                   ? member_str(x, "namespace") + "/" + member_str(x, "hostname")
                                   : member_str(x, "uid");
            fmt::print("  {} {} -> waypoint {}\n", kind[0] == 's' ? "service" : "workload", name, wp);
        }
    }
    if (!waypoints) fmt::print("  (none)\n");
    fmt::print("workload identities:\n");
    if (d.HasMember("workloads"))
        for (const auto& x : d["workloads"].GetArray()) {
            std::string pols;
            if (x.HasMember("authorization_policies"))
                for (const auto& p : x["authorization_policies"].GetArray())
                    pols += (pols.empty() ? "" : ", ") + std::string(p.GetString());
            fmt::print("  {} {}{}\n", member_str(x, "uid"), member_str(x, "principal"),
                       pols.empty() ? "" : fmt::format(" (selected by: {})", pols));
        }
    size_t n = d.HasMember("policies") ? d["policies"].GetArray().Size() : 0;
    fmt::print("authorization policies ({}):\n", n);
    if (n)
        for (const auto& p : d["policies"].GetArray()) {
            const auto& h = p["hits"];
            fmt::print("  {}/{} {} {}{}: matched={} dry_run_matched={} closed={}\n",
                       member_str(p, "namespace"), member_str(p, "name"), member_str(p, "scope"),
                       member_str(p, "action"), p["dry_run"].GetBool() ? " (dry run)" : "",
                       h["matched"].GetUint64(), h["dry_run_matched"].GetUint64(), h["closed"].GetUint64());
            const auto& rules = p["rules"].GetArray();
            if (rules.Empty()) fmt::print("    no rules: matches nothing\n");
            for (rapidjson::SizeType i = 0; i < rules.Size(); i++)
                fmt::print("    rule {}: {}\n", i + 1, rules[i].GetString());
        }
    if (d.HasMember("authz_totals")) {
        const auto& t = d["authz_totals"];
        fmt::print(
            "authorization totals: allowed={} denied_by_policy={} denied_no_allow={} closed_existing={}\n",
            t["allowed"].GetUint64(), t["denied_by_policy"].GetUint64(), t["denied_no_allow"].GetUint64(),
            t["closed_existing"].GetUint64());
    }
    return 0;
}

// The kernel's waypoint tables and counters, from /debug/waypoints.
void dump_waypoint_tables(const Admin& admin) {
    std::string error;
    auto body = admin.get_json("/debug/waypoints", &error);
    if (!body) return;  // an older agent: the model's waypoints above are what there is
    rapidjson::Document d;
    d.Parse(body->c_str());
    if (!d.HasMember("waypoints") || !d["waypoints"].IsArray()) return;
    fmt::print("waypoints in the kernel (km_waypoint, km_wp_dest):\n");
    size_t n = 0;
    for (const auto& w : d["waypoints"].GetArray()) {
        if (!w["in_kernel"].GetBool()) continue;
        n++;
        std::string addrs;
        for (const auto& a : w["addresses"].GetArray())
            addrs += (addrs.empty() ? "" : " ") + std::string(a.GetString());
        const auto& kd = w["kernel_destinations"];
        fmt::print("  {} {} port {}: {} service VIP(s), {} workload address(es) redirected\n",
                   member_str(w, "name"), addrs.empty() ? "(no address: connects fail)" : addrs,
                   w["port"].GetUint(), kd["service_vips"].GetUint64(), kd["workload_addresses"].GetUint64());
    }
    if (!n) fmt::print("  (none)\n");
    std::string counters;
    for (auto it = d["counters"].MemberBegin(); it != d["counters"].MemberEnd(); ++it)
        counters +=
            fmt::format("{}{}={}", counters.empty() ? "" : " ", it->name.GetString(), it->value.GetUint64());
    fmt::print("waypoint counters: {}\n", counters);
}

// -o json: the agent's documents side by side.
int dump_json(const Admin& admin) {
    std::string out = "{";
    int rc = kExitOk;
    for (auto [key, path] : {std::pair{"maps", "/debug/maps"},
                             {"config", "/debug/config_dump"},
                             {"authz", "/debug/authz"},
                             {"waypoints", "/debug/waypoints"}}) {
        std::string error;
        auto body = admin.get_json(path, &error);
        if (!body) {
            fmt::print(stderr, "kmeshctl: {}\n", error);
            rc = kExitFailed;
            break;
        }
        out += fmt::format("{}\"{}\":{}", out.size() > 1 ? "," : "", key, *body);
    }
    if (rc != kExitOk) return rc;
    fmt::print("{}", json_pretty(out + "}").value_or(out + "}\n"));
    return kExitOk;
}

}  // namespace

int dump(const PinLayout& layout, const Admin& admin, Output out) {
    if (out == Output::kJson) return dump_json(admin);
    // The generation the agent published (maps/current), resolved once for every map read.
    if (int rc = dump_maps(layout.with_current_maps())) return rc;
    int rc = dump_model(admin);
    if (rc < 0) return kExitOk;  // no agent: the maps are the answer (said so above)
    if (rc == kExitOk) dump_waypoint_tables(admin);
    return rc;
}

}  // namespace kmesh::ctl
