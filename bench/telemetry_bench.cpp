// Costs of the metrics side of telemetry (docs/telemetry.md, docs/benchmarks.md):
//   telemetry_bench [services] [workloads-per-service]
// - the name index's first full build and its memory (RSS before/after),
// - one workload changed: update_model with MeshState's change list, p50/p99,
// - connection events (open + close of a translated connection, both reporters): events per second,
// - a scrape (render) with the series those events made.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "agent/src/dataplane/dataplane_state.hpp"
#include "agent/src/telemetry/telemetry.hpp"

using namespace kmesh;
using Clock = std::chrono::steady_clock;

namespace {

long rss_kb() {
    std::ifstream in("/proc/self/statm");
    long size = 0, resident = 0;
    in >> size >> resident;
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

double ms_since(Clock::time_point t) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

IpAddr v4(uint32_t x) {
    IpAddr a;
    a.bytes[10] = a.bytes[11] = 0xff;
    a.bytes[12] = static_cast<uint8_t>(x >> 24);
    a.bytes[13] = static_cast<uint8_t>(x >> 16);
    a.bytes[14] = static_cast<uint8_t>(x >> 8);
    a.bytes[15] = static_cast<uint8_t>(x);
    return a;
}

}  // namespace

int main(int argc, char** argv) {
    const int services = argc > 1 ? std::stoi(argv[1]) : 10000;
    const int per = argc > 2 ? std::stoi(argv[2]) : 10;
    MeshState ms;
    Model m;
    for (int i = 0; i < services; i++) {
        Service s;
        s.name = fmt::format("svc-{}", i);
        s.namespace_ = fmt::format("ns-{}", i % 50);
        s.hostname = fmt::format("{}.{}.svc.cluster.local", s.name, s.namespace_);
        s.addresses = {v4(0x0a600000u + i)};
        s.ports = {{80, 8080}};
        for (int j = 0; j < per; j++) {
            Workload w;
            w.name = fmt::format("{}-{}-abcde", s.name, j);
            w.namespace_ = s.namespace_;
            w.uid = fmt::format("Kubernetes//Pod/{}/{}", w.namespace_, w.name);
            w.addresses = {v4(0x0af40000u + static_cast<uint32_t>(i * per + j))};
            w.services[s.key()] = {};
            w.service_account = s.name;
            w.naming = WorkloadNaming::intern({s.name, s.name, "v1"});
            m.workloads[w.uid] = w;
        }
        m.services[s.key()] = s;
    }
    ms.replace(m);
    m = Model{};
    telemetry::TelemetryOptions opt;
    telemetry::Telemetry tel(opt);

    long rss0 = rss_kb();
    auto t0 = Clock::now();
    tel.update_model(ms.model(), ms.take_model_changes());
    double build_ms = ms_since(t0);
    long rss1 = rss_kb();
    fmt::print("name index, first build: {} services, {} workloads: {:.1f} ms, RSS +{:.1f} MB\n", services,
               services * per, build_ms, (rss1 - rss0) / 1024.0);

    std::vector<double> one;
    for (int k = 0; k < 200; k++) {
        Workload w = ms.model().workloads.begin()->second;
        w.naming = WorkloadNaming::intern(
            {w.naming->workload_name, w.naming->canonical_name, fmt::format("v{}", k)});
        ms.upsert_workload(w);
        auto t = Clock::now();
        tel.update_model(ms.model(), ms.take_model_changes());
        one.push_back(ms_since(t));
    }
    std::sort(one.begin(), one.end());
    fmt::print("one workload changed: update_model p50 {:.3f} ms, p99 {:.3f} ms (n=200)\n", one[100],
               one[197]);

    // Clients of the first 100 services' first workload connect to 1000 services' VIPs.
    const int n = 400000;
    uint64_t cookie = 1;
    auto t1 = Clock::now();
    for (int k = 0; k < n / 4; k++) {
        int client = (k % 100) * per, target = k % std::min(services, 1000);
        telemetry::ConnEvent e;
        e.role = telemetry::ConnRole::kSource;
        e.cookie = cookie++;
        e.local = v4(0x0af40000u + client);
        e.local_port = static_cast<uint16_t>(30000 + k % 20000);
        e.remote = v4(0x0af40000u + static_cast<uint32_t>(target * per + k % per));
        e.remote_port = 8080;
        e.translated = true;
        e.orig = v4(0x0a600000u + target);
        e.orig_port = 80;
        e.type = telemetry::ConnEventType::kOpen;
        tel.on_event(e);
        telemetry::ConnEvent d = e;
        d.role = telemetry::ConnRole::kDestination;
        d.cookie = cookie++;
        std::swap(d.local, d.remote);
        std::swap(d.local_port, d.remote_port);
        d.translated = false;
        tel.on_event(d);
        e.type = d.type = telemetry::ConnEventType::kClose;
        e.sent_bytes = d.recv_bytes = 100;
        e.recv_bytes = d.sent_bytes = 1000;
        tel.on_event(e);
        tel.on_event(d);
    }
    double ev_ms = ms_since(t1);
    fmt::print("connection events: {} in {:.0f} ms: {:.0f} events/s on one thread\n", n, ev_ms,
               n / ev_ms * 1000);
    auto t2 = Clock::now();
    std::string text = tel.render();
    double render_ms = ms_since(t2);
    size_t lines = std::count(text.begin(), text.end(), '\n');
    fmt::print("scrape: {} lines, {:.1f} MB, rendered in {:.1f} ms\n", lines, text.size() / 1e6, render_ms);
    return 0;
}
