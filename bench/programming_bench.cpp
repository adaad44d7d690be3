// Where the time of programming a config file goes (issue 12; docs/benchmarks.md), phase by phase,
// in one process, against real kernel maps that this program creates (anonymous, never pinned, gone
// at exit), shaped like the agent's (hash, BPF_F_NO_PREALLOC):
//
//   programming_bench CONFIG [--single] [--tree] [--json]
//
// Phases, as the agent runs them on a file change (Agent::reload_config, sync_maps):
//   read       the file into memory
//   parse to model  the text streamed into the model (parse_config_text, as load_config_file):
//              libyaml events or RapidJSON's reader, one service/workload tree at a time
// or, with --tree, the path before streaming, in three phases:
//   count      the streaming pre-count of services and workloads (the --max-* guards; YAML only)
//   tree       the whole document tree (libyaml events, or RapidJSON for a .json file)
//   model      the tree to the model (field checks, validation); then freeing the tree
//   collisions name-hash collision check
//   desired    MeshState::replace: the model to the desired map contents
//   diff       desired against the (empty) maps: the plan
//   writes     MapWriter::apply into the kernel maps; the kernel calls are counted
// then the same config removed (plan + writes), and written again into the now warm maps.
// --single makes the adapter refuse batches, as a kernel without them would: the writer then
// issues one bpf() call per entry (the behaviour before batching), for a side-by-side number.
#include <bpf/bpf.h>
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "agent/src/admin/metrics.hpp"
#include "agent/src/dataplane/dataplane_state.hpp"
#include "agent/src/dataplane/map_ops.hpp"
#include "agent/src/dataplane/map_writer.hpp"
#include "agent/src/sources/file/config_file.hpp"
#include "bpf/kmesh_abi.h"
#include "common/file.hpp"
#include "common/yaml_tree.hpp"

using namespace kmesh;
using Clock = std::chrono::steady_clock;

namespace {

double us_since(Clock::time_point t) {
    return std::chrono::duration<double, std::micro>(Clock::now() - t).count();
}

// Counts the calls that reach the kernel (each is one bpf() syscall).
class CountingOps : public MapOps {
  public:
    CountingOps(MapOps& inner, bool single) : inner_(inner), single_(single) {}
    int update(MapId m, const void* k, const void* v) override {
        calls++;
        return inner_.update(m, k, v);
    }
    int remove(MapId m, const void* k) override {
        calls++;
        return inner_.remove(m, k);
    }
    int lookup(MapId m, const void* k, void* v) const override { return inner_.lookup(m, k, v); }
    void for_each(MapId m, const std::function<bool(const void*, const void*)>& fn) const override {
        inner_.for_each(m, fn);
    }
    int update_batch(MapId m, const void* k, const void* v, uint32_t n, uint32_t* done) override {
        if (single_) return MapOps::update_batch(m, k, v, n, done);
        calls++;
        return inner_.update_batch(m, k, v, n, done);
    }
    int remove_batch(MapId m, const void* k, uint32_t n, uint32_t* done) override {
        if (single_) return MapOps::remove_batch(m, k, n, done);
        calls++;
        return inner_.remove_batch(m, k, n, done);
    }
    uint64_t calls = 0;

  private:
    MapOps& inner_;
    bool single_;
};

struct Phases {
    std::vector<std::pair<std::string, double>> list;
    void add(const std::string& name, double us) { list.emplace_back(name, us); }
};

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s CONFIG [--single] [--tree] [--json]\n", argv[0]);
        return 2;
    }
    std::string path = argv[1];
    bool single = false, json_out = false, tree = false;
    for (int i = 2; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--single") single = true;
        if (a == "--json") json_out = true;
        if (a == "--tree") tree = true;
    }
    Phases ph;
    auto t = Clock::now();
    auto read = read_file(path);  // one read() of the size fstat gives (common/file.cpp)
    if (!read) {
        std::fprintf(stderr, "%s\n", read.status().message().c_str());
        return 1;
    }
    std::string text = std::move(*read);
    ph.add("read", us_since(t));
    bool is_json = path.size() > 5 && path.substr(path.size() - 5) == ".json";

    Model model;
    if (tree) {
        // The path before streaming (main until issue 12's h12-file): the --max-* counting passes
        // (YAML only), the whole document tree, then the tree to the model.
        t = Clock::now();
        if (!is_json) {
            (void)count_config_services(text);
            (void)count_config_entries(text, "workloads");
        }
        ph.add("count", us_since(t));
        t = Clock::now();
        YamlNode root;
        std::string err;
        bool ok = is_json ? parse_json_tree(text, &root, &err) : parse_yaml(text, &root, &err);
        if (!ok) {
            std::fprintf(stderr, "syntax: %s\n", err.c_str());
            return 1;
        }
        ph.add("tree", us_since(t));
        t = Clock::now();
        auto parsed = parse_config_tree(root);
        if (auto* bad = std::get_if<ConfigError>(&parsed)) {
            std::fprintf(stderr, "config: %s\n", bad->summary().c_str());
            return 1;
        }
        model = std::move(std::get<Model>(parsed));
        ph.add("model", us_since(t));
        t = Clock::now();
        root = YamlNode{};
        ph.add("free tree", us_since(t));
    } else {
        // What the agent does (load_config_file): streamed into the model, one service or workload
        // tree at a time, the --max-* limits (the agent's defaults) counted as items arrive.
        t = Clock::now();
        ConfigLimits limits{.max_services = KMESH_DEFAULT_MAX_SERVICES,
                            .max_workloads = KMESH_DEFAULT_MAX_BACKENDS};
        auto parsed = parse_config_text(text, limits);
        if (auto* bad = std::get_if<ConfigError>(&parsed)) {
            std::fprintf(stderr, "config: %s\n", bad->summary().c_str());
            return 1;
        }
        model = std::move(std::get<Model>(parsed));
        ph.add("parse to model", us_since(t));
    }

    t = Clock::now();
    if (!hash_collisions(model).empty()) return 1;
    ph.add("collisions", us_since(t));

    t = Clock::now();
    MeshState mesh;
    mesh.replace(model);
    Dirty dirty = mesh.take_dirty();
    ph.add("desired", us_since(t));

    t = Clock::now();
    Plan plan = diff(MapState{}, mesh.desired(), dirty);
    ph.add("diff", us_since(t));

    // Kernel maps of the agent's shapes, sized for the config.
    MapCounts need = entries_needed(mesh.desired());
    MapCapacity cap;
    auto fit = [](uint64_t n, uint32_t dflt) {
        return static_cast<uint32_t>(std::max<uint64_t>(n * 2 + 16, dflt));
    };
    cap.frontends = fit(need[static_cast<int>(MapId::kFrontend)], cap.frontends);
    cap.services = fit(need[static_cast<int>(MapId::kService)], cap.services);
    cap.endpoints = fit(need[static_cast<int>(MapId::kEndpoint)], cap.endpoints);
    cap.backends = fit(need[static_cast<int>(MapId::kBackend)], cap.backends);
    cap.ports = fit(need[static_cast<int>(MapId::kPort)], cap.ports);
    cap.members = fit(need[static_cast<int>(MapId::kMember)], cap.members);
    std::array<uint32_t, kMapCount> sizes{cap.frontends, cap.services,  cap.endpoints,      cap.backends,
                                          cap.ports,     cap.waypoints, cap.waypoint_addrs, cap.members};
    std::array<int, kMapCount> fds{};
    for (int i = 0; i < kMapCount; i++) {
        LIBBPF_OPTS(bpf_map_create_opts, o, .map_flags = BPF_F_NO_PREALLOC);
        auto id = static_cast<MapId>(i);
        fds[i] = bpf_map_create(BPF_MAP_TYPE_HASH, map_name(id), static_cast<uint32_t>(map_key_size(id)),
                                static_cast<uint32_t>(map_value_size(id)), sizes[i], &o);
        if (fds[i] < 0) {
            std::fprintf(stderr, "bpf_map_create %s: %s (run as root)\n", map_name(id), std::strerror(errno));
            return 1;
        }
    }
    KernelMapOps kernel(fds);
    CountingOps ops(kernel, single);
    Metrics metrics;
    MapWriter writer(ops, MapState{}, cap, metrics);

    t = Clock::now();
    std::string e = writer.apply(plan);
    ph.add("writes", us_since(t));
    uint64_t add_calls = ops.calls;
    if (!e.empty()) std::fprintf(stderr, "apply: %s\n", e.c_str());

    // The removal path (the xDS source's and a mass deletion's), and a second write into warm maps.
    t = Clock::now();
    mesh.replace(Model{});
    Plan del = diff(writer.state(), mesh.desired(), mesh.take_dirty());
    ph.add("remove-all diff", us_since(t));
    ops.calls = 0;
    t = Clock::now();
    e = writer.apply(del);
    ph.add("remove-all writes", us_since(t));
    uint64_t del_calls = ops.calls;
    if (!e.empty()) std::fprintf(stderr, "apply (removal): %s\n", e.c_str());
    mesh.replace(model);
    Plan again = diff(writer.state(), mesh.desired(), mesh.take_dirty());
    ops.calls = 0;
    t = Clock::now();
    e = writer.apply(again);
    ph.add("writes (warm maps)", us_since(t));
    uint64_t warm_calls = ops.calls;

    double total = 0;
    for (const auto& [n, us] : ph.list)
        if (n != "remove-all diff" && n != "remove-all writes" && n != "writes (warm maps)") total += us;
    if (json_out) {
        std::string out = fmt::format(
            "{{\"config\":\"{}\",\"path\":\"{}\",\"bytes\":{},\"services\":{},\"workloads\":{},\"entries\":{}"
            ","
            "\"single\":{},\"add_calls\":{},\"remove_calls\":{},\"warm_calls\":{},\"total_us\":{:.0f}",
            path, tree ? "tree" : "streamed", text.size(), model.services.size(), model.workloads.size(),
            plan.size(), single ? "true" : "false", add_calls, del_calls, warm_calls, total);
        for (const auto& [n, us] : ph.list) out += fmt::format(",\"{}_us\":{:.0f}", n, us);
        std::printf("%s}\n", out.c_str());
    } else {
        std::printf("%s: %zu bytes, %zu services, %zu workloads, %zu map changes, %s, %s\n", path.c_str(),
                    text.size(), model.services.size(), model.workloads.size(), plan.size(),
                    single ? "one entry per call (--single)" : "batched",
                    tree ? "document tree (--tree)" : "streamed to the model");
        for (const auto& [n, us] : ph.list) std::printf("  %-20s %10.1f ms\n", n.c_str(), us / 1000);
        std::printf("  %-20s %10.1f ms (file to maps)\n", "total", total / 1000);
        std::printf("  kernel calls: %lu to write, %lu to remove all, %lu to write again\n",
                    static_cast<unsigned long>(add_calls), static_cast<unsigned long>(del_calls),
                    static_cast<unsigned long>(warm_calls));
    }
    return 0;
}
