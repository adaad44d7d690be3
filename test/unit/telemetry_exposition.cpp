// Prints the exposition Telemetry renders after a scripted mix of events (both reporters, unknown
// peers, IPv6, a denial, a label value needing escapes, access-log drops), for `promtool check
// metrics` (ctest telemetry_promtool). Exits 1 if a family it should hold is missing.
#include <cstdio>
#include <memory>
#include <string>

#include "agent/src/telemetry/telemetry.hpp"

using namespace kmesh;
using namespace kmesh::telemetry;

int main() {
    Model m;
    Service s;
    s.name = "echo";
    s.namespace_ = "default";
    s.hostname = "echo.default.svc.cluster.local";
    s.addresses = {*IpAddr::parse("10.96.0.10"), *IpAddr::parse("fd00::10")};
    s.ports = {{80, 8080}};
    m.services[s.key()] = s;
    Workload w;
    w.uid = "Kubernetes//Pod/default/echo-1";
    w.name = "echo-1";
    w.namespace_ = "default";
    w.addresses = {*IpAddr::parse("10.244.0.11"), *IpAddr::parse("fd00::11")};
    w.services[s.key()] = {};
    w.service_account = "echo";
    w.naming = WorkloadNaming::intern({"echo \"quoted\"\\path\nline", "echo", "v1"});
    m.workloads[w.uid] = w;

    TelemetryOptions o;
    o.access_log_rate = 1;
    o.access_log_sink = [](const std::string&) {};
    Telemetry t(o);
    t.update_model(std::make_shared<const Model>(m));
    t.set_settings({true, true});
    auto ev = [](ConnEventType type, ConnRole role, uint64_t cookie, const char* l, uint16_t lp,
                 const char* r, uint16_t rp) {
        ConnEvent e;
        e.type = type;
        e.role = role;
        e.cookie = cookie;
        e.local = *IpAddr::parse(l);
        e.local_port = lp;
        e.remote = *IpAddr::parse(r);
        e.remote_port = rp;
        e.sent_bytes = 10 * cookie;
        e.recv_bytes = 20 * cookie;
        return e;
    };
    for (uint64_t c = 1; c <= 3; c++) {
        ConnEvent src =
            ev(ConnEventType::kOpen, ConnRole::kSource, c, "10.244.0.5", 40000, "10.244.0.11", 8080);
        src.translated = true;
        src.orig = *IpAddr::parse("10.96.0.10");
        src.orig_port = 80;
        t.on_event(src);
        src.type = ConnEventType::kClose;
        t.on_event(src);
        t.on_event(
            ev(ConnEventType::kOpen, ConnRole::kDestination, 10 + c, "fd00::11", 8080, "fd00::99", 5000));
        t.on_event(
            ev(ConnEventType::kUpdate, ConnRole::kDestination, 10 + c, "fd00::11", 8080, "fd00::99", 5000));
    }
    t.on_event(ev(ConnEventType::kDenied, ConnRole::kDestination, 0, "10.244.0.11", 8080, "192.0.2.7", 1234));
    std::string out = t.render();
    std::fwrite(out.data(), 1, out.size(), stdout);
    for (const char* family :
         {"istio_tcp_connections_opened_total{", "istio_tcp_sent_bytes_total{",
          "kmesh_workload_connections_denied_total{", "kmesh_service_connections_opened_total{",
          "kmesh_accesslog_dropped_total ", "process_resident_memory_bytes "})
        if (out.find(std::string("\n") + family) == std::string::npos) {
            std::fprintf(stderr, "missing %s\n", family);
            return 1;
        }
    return 0;
}
