// kmeshctl: operator CLI. `kmeshctl dump` prints what the pinned BPF maps hold, as connect() sees it.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <array>
#include <cstring>
#include <map>
#include <vector>

#include "agent/src/dataplane/map_ops.hpp"
#include "agent/src/model/ip_addr.hpp"
#include "common/abi.hpp"
#include "common/pin_layout.hpp"

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

std::array<uint64_t, KMESH_STAT_MAX> read_stats(const std::string& path) {
    std::array<uint64_t, KMESH_STAT_MAX> totals{};
    int fd = bpf_obj_get(path.c_str());
    if (fd < 0) return totals;
    std::vector<uint64_t> per_cpu(libbpf_num_possible_cpus());
    for (uint32_t slot = 0; slot < KMESH_STAT_MAX; slot++)
        if (bpf_map_lookup_elem(fd, &slot, per_cpu.data()) == 0)
            for (uint64_t v : per_cpu) totals[slot] += v;
    close(fd);
    return totals;
}

int dump(const kmesh::PinLayout& layout) {
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
        return s;
    };

    std::multimap<uint32_t, std::string> frontends_by_service;
    ops.for_each(kmesh::MapId::kFrontend, [&](const void* k, const void* v) {
        kmesh_frontend_key fk;
        kmesh_frontend_value fv;
        std::memcpy(&fk, k, sizeof fk);
        std::memcpy(&fv, v, sizeof fv);
        std::string a = addr_str(fk.addr);
        frontends_by_service.emplace(
            fv.service_id,
            fmt::format("{}:{} -> target port {}", a.find(':') != std::string::npos ? "[" + a + "]" : a,
                        ntohs(fk.port), ntohs(fv.target_port)));
        return true;
    });

    std::map<uint32_t, kmesh_service_value> services;
    ops.for_each(kmesh::MapId::kService, [&](const void* k, const void* v) {
        uint32_t id;
        std::memcpy(&id, k, 4);
        std::memcpy(&services[id], v, sizeof(kmesh_service_value));
        return true;
    });
    fmt::print("services ({}):\n", services.size());
    for (const auto& [id, sv] : services) {
        fmt::print("  service {} (name hash {:016x}) lb={}\n", id, sv.name_hash, lb_name(sv.lb_mode));
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
        "connect() counters: translated={} refused_no_endpoint={} no_address_family={} race_retries={}\n",
        stats[KMESH_STAT_TRANSLATED], stats[KMESH_STAT_NO_ENDPOINT], stats[KMESH_STAT_NO_FAMILY],
        stats[KMESH_STAT_RACE_RETRY]);
    for (int fd : fds) close(fd);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"kmeshctl: inspect the Kmesh data plane on this node"};
    kmesh::PinLayout layout;
    app.set_version_flag("--version", "kmeshctl " KMESH_VERSION);
    app.add_option("--bpffs-root", layout.bpffs_root, "bpffs mount under which kmesh/ is pinned")
        ->capture_default_str();
    auto* dump_cmd =
        app.add_subcommand("dump", "print the BPF maps (services, endpoints, backends, counters)");
    app.require_subcommand(1);
    CLI11_PARSE(app, argc, argv);
    if (dump_cmd->parsed()) return dump(layout);
    return 0;
}
