// Telemetry (agent/src/telemetry): scripted connection events against a small hand-written model;
// the exposition lines and access-log lines each case expects are written out literally here,
// worked out by hand from Istio's conventions (reference §8) and Kmesh's access-log format, not
// produced by the code under test.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "agent/src/dataplane/dataplane_state.hpp"
#include "agent/src/telemetry/access_log.hpp"
#include "agent/src/telemetry/name_index.hpp"
#include "agent/src/telemetry/telemetry.hpp"

using namespace kmesh;
using namespace kmesh::telemetry;
using namespace std::chrono_literals;

namespace {

IpAddr ip(const char* s) { return *IpAddr::parse(s); }

// echo (VIP 10.96.0.10:80 -> 8080) served by echo-1 (default, cluster "east"); sleep-1 is a
// client in namespace client-ns with the default trust domain and cluster.
Model mesh() {
    Model m;
    Service echo;
    echo.name = "echo";
    echo.namespace_ = "default";
    echo.hostname = "echo.default.svc.cluster.local";
    echo.addresses = {ip("10.96.0.10")};
    echo.ports = {{80, 8080}};
    m.services[echo.key()] = echo;

    Workload server;
    server.uid = "Kubernetes//Pod/default/echo-1";
    server.name = "echo-1";
    server.namespace_ = "default";
    server.addresses = {ip("10.244.0.11")};
    server.services["default/echo.default.svc.cluster.local"] = {};
    server.service_account = "echo";
    server.trust_domain = "example.org";
    server.naming = WorkloadNaming::intern({"echo", "echo", "v2"});
    server.placement = Placement::intern({"node-1", "", "east", {}});
    m.workloads[server.uid] = server;

    Workload client;
    client.uid = "Kubernetes//Pod/client-ns/sleep-1";
    client.name = "sleep-1";
    client.namespace_ = "client-ns";
    client.addresses = {ip("10.244.0.5")};
    client.service_account = "sleep";
    client.naming = WorkloadNaming::intern({"sleep", "sleep", "v1"});
    m.workloads[client.uid] = client;
    return m;
}

struct Clocks {
    std::chrono::steady_clock::time_point mono{1000s};
    std::chrono::system_clock::time_point wall{1796226008s};  // 2026-12-02T15:40:08Z
};

struct Fixture {
    Clocks clocks;
    std::vector<std::string> log;
    Telemetry tel;
    explicit Fixture(TelemetryOptions o = {}) : tel(with_clocks(std::move(o))) {
        tel.update_model(std::make_shared<const Model>(mesh()));
    }
    TelemetryOptions with_clocks(TelemetryOptions o) {
        o.now = [this] { return clocks.mono; };
        o.wall_now = [this] { return clocks.wall; };
        o.access_log_sink = [this](const std::string& l) { log.push_back(l); };
        return o;
    }
    // The exposition's sample lines of the given families (comments left out).
    std::set<std::string> samples(const std::vector<std::string>& families) {
        std::set<std::string> out;
        std::istringstream in(tel.render());
        for (std::string line; std::getline(in, line);) {
            if (line.empty() || line[0] == '#') continue;
            for (const auto& f : families)
                if (line.compare(0, f.size() + 1, f + "{") == 0 ||
                    line.compare(0, f.size() + 1, f + " ") == 0)
                    out.insert(line);
        }
        return out;
    }
};

ConnEvent event(ConnEventType type, ConnRole role, uint64_t cookie, const char* local, uint16_t lport,
                const char* remote, uint16_t rport) {
    ConnEvent e;
    e.type = type;
    e.role = role;
    e.cookie = cookie;
    e.local = ip(local);
    e.local_port = lport;
    e.remote = ip(remote);
    e.remote_port = rport;
    return e;
}

// The client's socket of sleep-1 -> echo's VIP, translated to echo-1.
ConnEvent src_ev(ConnEventType type, uint64_t cookie = 1) {
    ConnEvent e = event(type, ConnRole::kSource, cookie, "10.244.0.5", 40000, "10.244.0.11", 8080);
    e.translated = true;
    e.orig = ip("10.96.0.10");
    e.orig_port = 80;
    return e;
}
// The accepted socket in echo-1.
ConnEvent dst_ev(ConnEventType type, uint64_t cookie = 2) {
    return event(type, ConnRole::kDestination, cookie, "10.244.0.11", 8080, "10.244.0.5", 40000);
}

const std::string kSourceLabels =
    "reporter=\"source\",source_workload=\"sleep\",source_canonical_service=\"sleep\","
    "source_canonical_revision=\"v1\",source_workload_namespace=\"client-ns\","
    "source_principal=\"spiffe://cluster.local/ns/client-ns/sa/sleep\",source_app=\"sleep\","
    "source_version=\"v1\",source_cluster=\"Kubernetes\","
    "destination_service=\"echo.default.svc.cluster.local\",destination_service_namespace=\"default\","
    "destination_service_name=\"echo\",destination_workload=\"echo\",destination_canonical_service=\"echo\","
    "destination_canonical_revision=\"v2\",destination_workload_namespace=\"default\","
    "destination_principal=\"spiffe://example.org/ns/default/sa/echo\",destination_app=\"echo\","
    "destination_version=\"v2\",destination_cluster=\"east\",request_protocol=\"tcp\",response_flags=\"-\","
    "connection_security_policy=\"unknown\"";
const std::string kDestLabels =
    "reporter=\"destination\",source_workload=\"sleep\",source_canonical_service=\"sleep\","
    "source_canonical_revision=\"v1\",source_workload_namespace=\"client-ns\","
    "source_principal=\"spiffe://cluster.local/ns/client-ns/sa/sleep\",source_app=\"sleep\","
    "source_version=\"v1\",source_cluster=\"Kubernetes\","
    "destination_service=\"echo.default.svc.cluster.local\",destination_service_namespace=\"default\","
    "destination_service_name=\"echo\",destination_workload=\"echo\",destination_canonical_service=\"echo\","
    "destination_canonical_revision=\"v2\",destination_workload_namespace=\"default\","
    "destination_principal=\"spiffe://example.org/ns/default/sa/echo\",destination_app=\"echo\","
    "destination_version=\"v2\",destination_cluster=\"east\",request_protocol=\"tcp\",response_flags=\"-\","
    "connection_security_policy=\"none\"";

const std::vector<std::string> kIstio = {"istio_tcp_connections_opened_total",
                                         "istio_tcp_connections_closed_total", "istio_tcp_sent_bytes_total",
                                         "istio_tcp_received_bytes_total"};

std::set<std::string> istio_lines(const std::string& labels, int opened, int closed, int sent, int received) {
    return {"istio_tcp_connections_opened_total{" + labels + "} " + std::to_string(opened),
            "istio_tcp_connections_closed_total{" + labels + "} " + std::to_string(closed),
            "istio_tcp_sent_bytes_total{" + labels + "} " + std::to_string(sent),
            "istio_tcp_received_bytes_total{" + labels + "} " + std::to_string(received)};
}

std::set<std::string> join(std::set<std::string> a, const std::set<std::string>& b) {
    a.insert(b.begin(), b.end());
    return a;
}

}  // namespace

TEST_CASE("telemetry: a connection between two enrolled pods is reported by both sides, bytes by direction") {
    Fixture f;
    f.tel.on_event(src_ev(ConnEventType::kOpen));
    f.tel.on_event(dst_ev(ConnEventType::kOpen));
    CHECK(f.samples(kIstio) ==
          join(istio_lines(kSourceLabels, 1, 0, 0, 0), istio_lines(kDestLabels, 1, 0, 0, 0)));

    // The client sent 100 request bytes (a periodic update), then 20 more; it received 300.
    ConnEvent up = src_ev(ConnEventType::kUpdate);
    up.sent_bytes = 100;
    f.tel.on_event(up);
    ConnEvent sc = src_ev(ConnEventType::kClose);
    sc.sent_bytes = 20;
    sc.recv_bytes = 300;
    sc.duration_ns = 2236000;
    f.tel.on_event(sc);
    // The server received the 120 request bytes and sent 300 response bytes.
    ConnEvent dc = dst_ev(ConnEventType::kClose);
    dc.sent_bytes = 300;
    dc.recv_bytes = 120;
    f.tel.on_event(dc);
    // istio_tcp_sent_bytes_total is response bytes, istio_tcp_received_bytes_total request bytes,
    // whichever side reports.
    CHECK(f.samples(kIstio) ==
          join(istio_lines(kSourceLabels, 1, 1, 300, 120), istio_lines(kDestLabels, 1, 1, 300, 120)));

    CHECK(f.samples({"kmesh_workload_connections_opened_total", "kmesh_workload_connections_closed_total",
                     "kmesh_service_connections_opened_total", "kmesh_service_connections_closed_total"}) ==
          std::set<std::string>{
              "kmesh_workload_connections_opened_total{reporter=\"destination\",workload=\"echo-1\","
              "workload_namespace=\"default\"} 1",
              "kmesh_workload_connections_opened_total{reporter=\"source\",workload=\"sleep-1\","
              "workload_namespace=\"client-ns\"} 1",
              "kmesh_workload_connections_closed_total{reporter=\"destination\",workload=\"echo-1\","
              "workload_namespace=\"default\"} 1",
              "kmesh_workload_connections_closed_total{reporter=\"source\",workload=\"sleep-1\","
              "workload_namespace=\"client-ns\"} 1",
              "kmesh_service_connections_opened_total{reporter=\"destination\","
              "destination_service=\"echo.default.svc.cluster.local\",destination_service_namespace="
              "\"default\","
              "destination_service_name=\"echo\"} 1",
              "kmesh_service_connections_opened_total{reporter=\"source\","
              "destination_service=\"echo.default.svc.cluster.local\",destination_service_namespace="
              "\"default\","
              "destination_service_name=\"echo\"} 1",
              "kmesh_service_connections_closed_total{reporter=\"destination\","
              "destination_service=\"echo.default.svc.cluster.local\",destination_service_namespace="
              "\"default\","
              "destination_service_name=\"echo\"} 1",
              "kmesh_service_connections_closed_total{reporter=\"source\","
              "destination_service=\"echo.default.svc.cluster.local\",destination_service_namespace="
              "\"default\","
              "destination_service_name=\"echo\"} 1",
          });
    CHECK(f.samples({"kmesh_telemetry_events_processed_total", "kmesh_telemetry_connections_tracked"}) ==
          std::set<std::string>{"kmesh_telemetry_events_processed_total{type=\"open\"} 2",
                                "kmesh_telemetry_events_processed_total{type=\"update\"} 1",
                                "kmesh_telemetry_events_processed_total{type=\"close\"} 2",
                                "kmesh_telemetry_events_processed_total{type=\"denied\"} 0",
                                "kmesh_telemetry_connections_tracked 0"});
    CHECK(f.log.empty());  // the access log is off by default
}

TEST_CASE("telemetry: peers and services the model does not know are labelled unknown") {
    Fixture f;
    // sleep-1 connects straight to an address outside the mesh.
    ConnEvent e = event(ConnEventType::kOpen, ConnRole::kSource, 7, "10.244.0.5", 40001, "192.0.2.1", 443);
    f.tel.on_event(e);
    // A client outside the mesh connects to echo-1 on a port no service targets.
    f.tel.on_event(
        event(ConnEventType::kOpen, ConnRole::kDestination, 8, "10.244.0.11", 9090, "192.0.2.2", 5555));
    const std::string to_outside =
        "reporter=\"source\",source_workload=\"sleep\",source_canonical_service=\"sleep\","
        "source_canonical_revision=\"v1\",source_workload_namespace=\"client-ns\","
        "source_principal=\"spiffe://cluster.local/ns/client-ns/sa/sleep\",source_app=\"sleep\","
        "source_version=\"v1\",source_cluster=\"Kubernetes\",destination_service=\"unknown\","
        "destination_service_namespace=\"unknown\",destination_service_name=\"unknown\","
        "destination_workload=\"unknown\",destination_canonical_service=\"unknown\","
        "destination_canonical_revision=\"unknown\",destination_workload_namespace=\"unknown\","
        "destination_principal=\"unknown\",destination_app=\"unknown\",destination_version=\"unknown\","
        "destination_cluster=\"unknown\",request_protocol=\"tcp\",response_flags=\"-\","
        "connection_security_policy=\"unknown\"";
    const std::string from_outside =
        "reporter=\"destination\",source_workload=\"unknown\",source_canonical_service=\"unknown\","
        "source_canonical_revision=\"unknown\",source_workload_namespace=\"unknown\","
        "source_principal=\"unknown\",source_app=\"unknown\",source_version=\"unknown\","
        "source_cluster=\"unknown\",destination_service=\"unknown\",destination_service_namespace="
        "\"unknown\","
        "destination_service_name=\"unknown\",destination_workload=\"echo\",destination_canonical_service="
        "\"echo\","
        "destination_canonical_revision=\"v2\",destination_workload_namespace=\"default\","
        "destination_principal=\"spiffe://example.org/ns/default/sa/echo\",destination_app=\"echo\","
        "destination_version=\"v2\",destination_cluster=\"east\",request_protocol=\"tcp\",response_flags=\"-"
        "\","
        "connection_security_policy=\"none\"";
    CHECK(f.samples(kIstio) ==
          join(istio_lines(to_outside, 1, 0, 0, 0), istio_lines(from_outside, 1, 0, 0, 0)));
    // No service: no per-service series.
    CHECK(f.samples({"kmesh_service_connections_opened_total"}).empty());
}

TEST_CASE("telemetry: a connection to a pod address is named by the service whose target port it hits") {
    Fixture f;
    // Not translated: sleep-1 dialled echo-1's address on 8080, echo's target port.
    f.tel.on_event(
        event(ConnEventType::kOpen, ConnRole::kSource, 9, "10.244.0.5", 40002, "10.244.0.11", 8080));
    auto lines = f.samples({"istio_tcp_connections_opened_total"});
    REQUIRE(lines.size() == 1);
    CHECK(*lines.begin() == "istio_tcp_connections_opened_total{" + kSourceLabels + "} 1");
}

TEST_CASE("telemetry: series of workloads that left the model are dropped after the grace period") {
    TelemetryOptions o;
    o.series_grace = 300s;
    Fixture f(o);
    f.tel.on_event(src_ev(ConnEventType::kOpen));
    f.tel.on_event(dst_ev(ConnEventType::kOpen));
    ConnEvent dc = dst_ev(ConnEventType::kClose);
    dc.recv_bytes = 10;
    f.tel.on_event(dc);
    const auto before = join(istio_lines(kSourceLabels, 1, 0, 0, 0), istio_lines(kDestLabels, 1, 1, 0, 10));
    REQUIRE(f.samples(kIstio) == before);

    // echo-1 is deleted at t = 1000 s.
    Model m = mesh();
    m.workloads.erase("Kubernetes//Pod/default/echo-1");
    f.tel.update_model(std::make_shared<const Model>(m));
    f.clocks.mono += 299s;
    CHECK(f.samples(kIstio) == before);  // within the grace: kept, counters unchanged
    // The source's connection still open closes now: it counts in the series it started in.
    ConnEvent sc = src_ev(ConnEventType::kClose);
    sc.sent_bytes = 5;
    f.tel.on_event(sc);
    CHECK(f.samples(kIstio) ==
          join(istio_lines(kSourceLabels, 1, 1, 0, 5), istio_lines(kDestLabels, 1, 1, 0, 10)));
    f.clocks.mono += 1s;  // 300 s after it left
    CHECK(f.samples(kIstio).empty());
    // sleep-1 is still there: its per-workload series stays, echo-1's goes.
    CHECK(f.samples({"kmesh_workload_connections_opened_total"}) ==
          std::set<std::string>{
              "kmesh_workload_connections_opened_total{reporter=\"source\",workload=\"sleep-1\","
              "workload_namespace=\"client-ns\"} 1"});
    CHECK(f.samples({"kmesh_telemetry_series_dropped_total"}) ==
          std::set<std::string>{
              "kmesh_telemetry_series_dropped_total 3"});  // 2 istio, echo-1's workload series
    // The service is still there: its series stay.
    CHECK(f.samples({"kmesh_service_connections_opened_total"}).size() == 2);
}

TEST_CASE("telemetry: a workload back within the grace keeps its series and counters") {
    TelemetryOptions o;
    o.series_grace = 60s;
    Fixture f(o);
    f.tel.on_event(dst_ev(ConnEventType::kOpen));
    Model gone = mesh();
    gone.workloads.erase("Kubernetes//Pod/default/echo-1");
    f.tel.update_model(std::make_shared<const Model>(gone));
    f.clocks.mono += 30s;
    f.tel.update_model(std::make_shared<const Model>(mesh()));  // back
    f.clocks.mono += 60s;
    f.tel.on_event(dst_ev(ConnEventType::kOpen, 3));
    CHECK(f.samples({"istio_tcp_connections_opened_total"}) ==
          std::set<std::string>{"istio_tcp_connections_opened_total{" + kDestLabels + "} 2"});
}

TEST_CASE("telemetry: the model is followed change by change (MeshState::take_model_changes)") {
    MeshState ms;
    Model m = mesh();
    ms.replace(m);
    Fixture f;
    f.tel.update_model(ms.model(), ms.take_model_changes());  // the first: all
    CHECK(ms.take_model_changes().empty());
    // echo-1 gets a new revision: the change names it, and new connections carry it.
    Workload w = m.workloads.at("Kubernetes//Pod/default/echo-1");
    w.naming = WorkloadNaming::intern({"echo", "echo", "v3"});
    ms.upsert_workload(w);
    ModelChanges ch = ms.take_model_changes();
    CHECK(ch.workloads == std::set<std::string>{"Kubernetes//Pod/default/echo-1"});
    CHECK(!ch.all);
    f.tel.update_model(ms.model(), ch);
    f.tel.on_event(dst_ev(ConnEventType::kOpen));
    std::string v3 = kDestLabels;
    for (auto pos = v3.find("\"v2\""); pos != std::string::npos; pos = v3.find("\"v2\""))
        v3.replace(pos, 4, "\"v3\"");
    CHECK(f.samples({"istio_tcp_connections_opened_total"}) ==
          std::set<std::string>{"istio_tcp_connections_opened_total{" + v3 + "} 1"});
    ms.remove_service("default/echo.default.svc.cluster.local");
    CHECK(ms.take_model_changes().services ==
          std::set<std::string>{"default/echo.default.svc.cluster.local"});
}

TEST_CASE("telemetry: a change to most of the model is named as 'all', and the index follows it") {
    // A full push would otherwise hold a copy of every name until the next sync.
    MeshState ms;
    ms.replace(mesh());
    NameIndex index("Kubernetes");
    index.apply(ms.model(), ms.take_model_changes());
    auto pod = [](int i) {
        Workload w;
        w.uid = "Kubernetes//Pod/bulk/p-" + std::to_string(i);
        w.name = "p-" + std::to_string(i);
        w.namespace_ = "bulk";
        w.addresses = {*IpAddr::parse(fmt::format("10.9.{}.{}", i >> 8, i & 0xff))};
        return w;
    };
    for (int i = 0; i < 1100; i++) ms.upsert_workload(pod(i));
    ModelChanges ch = ms.take_model_changes();
    CHECK(ch.all);
    CHECK(ch.workloads.empty());
    CHECK(index.apply(ms.model(), ch));
    CHECK(index.workloads() == ms.model().workloads.size());
    REQUIRE(index.workload_at(*IpAddr::parse("10.9.4.75")) != nullptr);  // p-1099
    CHECK(index.workload_at(*IpAddr::parse("10.9.4.75"))->name() == "p-1099");
    // A small change is named again.
    ms.remove_workload(pod(7).uid);
    ch = ms.take_model_changes();
    CHECK(!ch.all);
    CHECK(ch.workloads == std::set<std::string>{pod(7).uid});
    index.apply(ms.model(), ch);
    CHECK(index.workload_at(*IpAddr::parse("10.9.0.7")) == nullptr);
    CHECK(index.workloads() == ms.model().workloads.size());
}

TEST_CASE("telemetry: workloads sharing a pod key or an address, removed in either order") {
    // The index keeps one entry per pod key viewing a holder's own text, and one list per address:
    // removing the holder whose text the key views must leave the other's pod live.
    for (int first_removed : {0, 1}) {
        Model m;
        auto pod = [](const std::string& uid, const std::string& addr, bool host) {
            Workload w;
            w.uid = uid;
            w.name = "shared-pod";  // same namespace/name in two clusters
            w.namespace_ = "ns";
            w.addresses = {*IpAddr::parse(addr)};
            if (host) w.network_mode = NetworkMode::kHostNetwork;
            return w;
        };
        const std::string a = "c1//Pod/ns/shared-pod", b = "c2//Pod/ns/shared-pod";
        m.workloads[a] = pod(a, "10.1.0.1", false);
        m.workloads[b] = pod(b, "10.1.0.1", false);
        NameIndex index("Kubernetes");
        index.apply(m, ModelChanges{true, {}, {}});
        CHECK(index.pod_live("ns/shared-pod"));
        CHECK(!index.pod_live("ns/other"));
        // Same address, both on the pod network: the smaller uid.
        REQUIRE(index.workload_at(*IpAddr::parse("10.1.0.1")) != nullptr);
        CHECK(index.workload_at(*IpAddr::parse("10.1.0.1"))->uid() == a);
        const std::string gone = first_removed == 0 ? a : b, kept = first_removed == 0 ? b : a;
        m.workloads.erase(gone);
        index.apply(m, ModelChanges{false, {gone}, {}});
        CHECK(index.pod_live("ns/shared-pod"));
        REQUIRE(index.workload_at(*IpAddr::parse("10.1.0.1")) != nullptr);
        CHECK(index.workload_at(*IpAddr::parse("10.1.0.1"))->uid() == kept);
        CHECK(index.workload_at(*IpAddr::parse("10.1.0.1"))->pod_key() == "ns/shared-pod");
        // A host-network workload at the same address ranks after the pod-network one.
        const std::string h = "a0//Pod/ns/host";
        m.workloads[h] = pod(h, "10.1.0.1", true);
        index.apply(m, ModelChanges{false, {h}, {}});
        CHECK(index.workload_at(*IpAddr::parse("10.1.0.1"))->uid() == kept);
        m.workloads.erase(kept);
        index.apply(m, ModelChanges{false, {kept}, {}});
        CHECK(index.pod_live("ns/shared-pod"));  // the host-network one has the same namespace/name
        CHECK(index.workload_at(*IpAddr::parse("10.1.0.1"))->uid() == h);
        m.workloads.erase(h);
        index.apply(m, ModelChanges{false, {h}, {}});
        CHECK(!index.pod_live("ns/shared-pod"));
        CHECK(index.workload_at(*IpAddr::parse("10.1.0.1")) == nullptr);
        CHECK(index.workloads() == 0);
    }
}

TEST_CASE("telemetry: the name index against a from-scratch reading of the model, over random changes") {
    // The index keeps its own compact copy of each workload (one block: addresses, services with
    // pooled port lists, "namespace/name\0uid") and chains the workloads of one pod key. After each
    // random batch of upserts and removals, every address, pod key and (workload, port) pair is
    // answered as a direct reading of the model says: the pod-network workload first, then the
    // smallest uid; a pod key is live while some workload has it; a workload's service on a port is
    // the first by key whose target port (its own ports, else the service's) matches.
    std::mt19937 rng(12);
    auto pick = [&](int n) { return int(rng() % uint32_t(n)); };
    const std::vector<IpAddr> addrs = {*IpAddr::parse("10.0.0.1"), *IpAddr::parse("10.0.0.2"),
                                       *IpAddr::parse("10.0.0.3"), *IpAddr::parse("fd00::4"),
                                       *IpAddr::parse("10.0.0.5")};
    const std::vector<std::string> names = {"a", "b", "c"}, nss = {"ns1", "ns2"};
    const std::vector<uint16_t> ports = {80, 8080, 9090};
    auto svc_key = [](int i) { return "ns1/s" + std::to_string(i) + ".ns1.svc.cluster.local"; };
    Model m;
    NameIndex index("Kubernetes");
    for (int round = 0; round < 300; round++) {
        ModelChanges ch;
        for (int k = 0, n = 1 + pick(4); k < n; k++) {
            const int what = pick(10);
            if (what < 2) {  // a service, upserted or removed
                const int i = pick(4);
                if (pick(3) == 0) {
                    m.services.erase(svc_key(i));
                } else {
                    Service s;
                    s.name = "s" + std::to_string(i);
                    s.namespace_ = "ns1";
                    s.hostname = s.name + ".ns1.svc.cluster.local";
                    s.ports = {{80, ports[size_t(pick(3))]}};
                    m.services[s.key()] = s;
                }
                ch.services.insert(svc_key(i));
                continue;
            }
            const std::string uid = "c//Pod/x/" + std::to_string(pick(12));
            ch.workloads.insert(uid);
            if (what < 4) {
                m.workloads.erase(uid);
                continue;
            }
            Workload w;
            w.uid = uid;
            w.name = names[size_t(pick(3))];
            w.namespace_ = nss[size_t(pick(2))];
            for (int a = 0, na = pick(3); a < na; a++) {
                const IpAddr& addr = addrs[size_t(pick(5))];
                if (std::find(w.addresses.begin(), w.addresses.end(), addr) == w.addresses.end())
                    w.addresses.push_back(addr);
            }
            if (pick(4) == 0) w.network_mode = NetworkMode::kHostNetwork;
            for (int j = 0, nj = pick(3); j < nj; j++) {
                auto& own = w.services[svc_key(pick(4))];
                if (pick(2)) own = {{80, ports[size_t(pick(3))]}};  // else the service's ports
            }
            m.workloads[uid] = w;
        }
        index.apply(m, ch);
        INFO("round " << round);
        REQUIRE(index.workloads() == m.workloads.size());
        for (const auto& a : addrs) {
            const Workload* want = nullptr;
            for (const auto& [uid, w] : m.workloads) {
                if (std::find(w.addresses.begin(), w.addresses.end(), a) == w.addresses.end()) continue;
                const bool host = w.network_mode == NetworkMode::kHostNetwork;
                if (!want || std::make_pair(host, w.uid) <
                                 std::make_pair(want->network_mode == NetworkMode::kHostNetwork, want->uid))
                    want = &w;
            }
            const PeerInfo* got = index.workload_at(a);
            REQUIRE((got != nullptr) == (want != nullptr));
            if (!want) continue;
            CHECK(got->uid() == want->uid);
            CHECK(got->name() == want->name);
            CHECK(got->pod_key() == want->namespace_ + "/" + want->name);
            CHECK(got->host_network == (want->network_mode == NetworkMode::kHostNetwork));
            CHECK(got->labels->namespace_ == want->namespace_.str());
            CHECK(std::equal(got->addresses().begin(), got->addresses().end(), want->addresses.begin(),
                             want->addresses.end()));
            for (uint16_t port : ports) {
                const Service* want_svc = nullptr;
                for (const auto& [key, own] : want->services) {
                    auto s = m.services.find(key.str());
                    if (s == m.services.end()) continue;
                    const auto& list = own.empty() ? s->second.ports : own;
                    if (std::any_of(list.begin(), list.end(), [&](const ServicePort& p) {
                            return (p.target_port ? p.target_port : p.service_port) == port;
                        })) {
                        want_svc = &s->second;
                        break;
                    }
                }
                const ServiceInfo* got_svc = index.service_of(*got, port);
                REQUIRE((got_svc != nullptr) == (want_svc != nullptr));
                if (want_svc) CHECK(got_svc->key == want_svc->key());
            }
        }
        for (const auto& ns : nss)
            for (const auto& n : names) {
                const bool want = std::any_of(m.workloads.begin(), m.workloads.end(), [&](const auto& e) {
                    return e.second.namespace_ == ns && e.second.name == n;
                });
                CHECK(index.pod_live(ns + "/" + n) == want);
            }
    }
    // Everything removed: nothing left behind.
    ModelChanges all_gone;
    for (const auto& [uid, w] : m.workloads) all_gone.workloads.insert(uid);
    m.workloads.clear();
    index.apply(m, all_gone);
    CHECK(index.workloads() == 0);
    CHECK(index.port_lists() == 0);
    for (const auto& a : addrs) CHECK(index.workload_at(a) == nullptr);
    for (const auto& ns : nss)
        for (const auto& n : names) CHECK(!index.pod_live(ns + "/" + n));
}

TEST_CASE("telemetry: access log lines for closed and denied connections, rate-limited") {
    TelemetryOptions o;
    o.access_log_rate = 2;
    Fixture f(o);
    f.tel.set_settings({true, true});
    f.tel.on_event(src_ev(ConnEventType::kOpen));
    ConnEvent up = src_ev(ConnEventType::kUpdate);
    up.sent_bytes = 40;
    f.tel.on_event(up);
    ConnEvent sc = src_ev(ConnEventType::kClose);
    sc.ts_ns = 999'750'000'000;  // 250 ms before "now" (1000 s)
    sc.sent_bytes = 20;
    sc.recv_bytes = 172;
    sc.duration_ns = 2236000;
    f.tel.on_event(sc);
    ConnEvent denied =
        event(ConnEventType::kDenied, ConnRole::kDestination, 0, "10.244.0.11", 8080, "10.244.0.5", 41000);
    denied.ts_ns = 1000'000'000'000;
    f.tel.on_event(denied);
    // The bucket holds 2: a third line in the same instant is dropped, and counted.
    f.tel.on_event(denied);
    REQUIRE(f.log.size() == 2);
    CHECK(f.log[0] ==
          "2026-12-02T15:40:07.750000Z src.addr=10.244.0.5:40000, src.workload=sleep-1, "
          "src.namespace=client-ns, "
          "dst.addr=10.244.0.11:8080, dst.service=echo.default.svc.cluster.local, dst.workload=echo-1, "
          "dst.namespace=default, direction=OUTBOUND, sent_bytes=60, received_bytes=172, duration=2.236ms, "
          "result=closed");
    CHECK(f.log[1] ==
          "2026-12-02T15:40:08.000000Z src.addr=10.244.0.5:41000, src.workload=sleep-1, "
          "src.namespace=client-ns, "
          "dst.addr=10.244.0.11:8080, dst.service=echo.default.svc.cluster.local, dst.workload=echo-1, "
          "dst.namespace=default, direction=INBOUND, sent_bytes=0, received_bytes=0, duration=0ms, "
          "result=denied");
    CHECK(f.samples({"kmesh_accesslog_lines_total", "kmesh_accesslog_dropped_total",
                     "kmesh_workload_connections_denied_total"}) ==
          std::set<std::string>{
              "kmesh_accesslog_lines_total 2", "kmesh_accesslog_dropped_total 1",
              "kmesh_workload_connections_denied_total{reporter=\"destination\",workload=\"echo-1\","
              "workload_namespace=\"default\"} 2",
              // sleep-1's series as a client (made by its open) has none
              "kmesh_workload_connections_denied_total{reporter=\"source\",workload=\"sleep-1\","
              "workload_namespace=\"client-ns\"} 0"});
    // Half a second later one token is back (2 per second).
    f.clocks.mono += 500ms;
    f.clocks.wall += 500ms;
    f.tel.on_event(denied);
    f.tel.on_event(denied);
    CHECK(f.log.size() == 3);
    CHECK(f.samples({"kmesh_accesslog_dropped_total"}) ==
          std::set<std::string>{"kmesh_accesslog_dropped_total 2"});

    // Switched off at run time: nothing written, nothing counted.
    f.tel.set_settings({true, false});
    f.clocks.mono += 10s;
    f.tel.on_event(denied);
    CHECK(f.log.size() == 3);
    CHECK(f.samples({"kmesh_accesslog_lines_total", "kmesh_accesslog_enabled"}) ==
          std::set<std::string>{"kmesh_accesslog_lines_total 3", "kmesh_accesslog_enabled 0"});
}

TEST_CASE("telemetry: an IPv6 connection and an unknown source in the access log") {
    TelemetryOptions o;
    Fixture f(o);
    f.tel.set_settings({true, true});
    ConnEvent c =
        event(ConnEventType::kClose, ConnRole::kDestination, 5, "fd00::11", 8080, "fd00::99", 50000);
    c.sent_bytes = 7;
    c.recv_bytes = 9;
    c.duration_ns = 1500000000;
    f.tel.on_event(c);
    REQUIRE(f.log.size() == 1);
    CHECK(f.log[0] ==
          "2026-12-02T15:40:08.000000Z src.addr=[fd00::99]:50000, src.workload=-, src.namespace=-, "
          "dst.addr=[fd00::11]:8080, dst.service=-, dst.workload=-, dst.namespace=-, direction=INBOUND, "
          "sent_bytes=7, received_bytes=9, duration=1500ms, result=closed");
}

TEST_CASE("telemetry: label values are escaped") {
    Model m = mesh();
    m.workloads.at("Kubernetes//Pod/client-ns/sleep-1").naming =
        WorkloadNaming::intern({"a\"b\\c\nd", "", ""});
    Fixture f;
    f.tel.update_model(std::make_shared<const Model>(m));
    f.tel.on_event(src_ev(ConnEventType::kOpen));
    auto lines = f.samples({"istio_tcp_connections_opened_total"});
    REQUIRE(lines.size() == 1);
    CHECK(lines.begin()->find("source_workload=\"a\\\"b\\\\c\\nd\",source_canonical_service=\"unknown\"") !=
          std::string::npos);
}

TEST_CASE("telemetry: the token bucket refills at its rate and never beyond its burst") {
    TokenBucket b;
    std::chrono::steady_clock::time_point t{100s};
    b.set_rate(3, t);
    int taken = 0;
    for (int i = 0; i < 10; i++) taken += b.take(t);
    CHECK(taken == 3);
    t += 10s;  // refilled to the burst (3), not 30
    taken = 0;
    for (int i = 0; i < 10; i++) taken += b.take(t);
    CHECK(taken == 3);
    TokenBucket unlimited;
    unlimited.set_rate(0, t);
    for (int i = 0; i < 1000; i++) REQUIRE(unlimited.take(t));
}

TEST_CASE("telemetry: process metrics come from /proc/self") {
    Fixture f;
    std::string out = f.tel.render();
    for (const char* name :
         {"process_resident_memory_bytes ", "process_virtual_memory_bytes ", "process_cpu_seconds_total ",
          "process_open_fds ", "process_max_fds ", "process_start_time_seconds "}) {
        auto pos = out.find(std::string("\n") + name);
        REQUIRE_MESSAGE(pos != std::string::npos, name);
        double v = std::stod(out.substr(pos + 1 + std::strlen(name)));
        CHECK(v > 0);
    }
}

TEST_CASE("telemetry: events held during a large change are named by the model the change brings") {
    // The agent programs the maps of a large change before telemetry's names follow it, and holds
    // the events meanwhile: a connection sleep-1 opens in that window is named sleep-1's, not
    // "unknown" for the rest of its life.
    Fixture f;
    Model without_client = mesh();
    without_client.workloads.erase("Kubernetes//Pod/client-ns/sleep-1");
    f.tel.update_model(std::make_shared<const Model>(without_client));
    f.tel.hold_events();
    ConnEvent open = src_ev(ConnEventType::kOpen);
    f.tel.on_event(open);
    ConnEvent close = src_ev(ConnEventType::kClose);
    close.sent_bytes = 10;
    close.recv_bytes = 20;
    f.tel.on_event(close);
    CHECK(f.samples(kIstio).empty());  // held, not named yet
    f.tel.update_model(std::make_shared<const Model>(mesh()));
    CHECK(f.samples(kIstio) == istio_lines(kSourceLabels, 1, 1, 20, 10));
    CHECK(f.samples({"kmesh_telemetry_events_named_early_total"}) ==
          std::set<std::string>{"kmesh_telemetry_events_named_early_total 0"});
    // Released: the next event is named at once.
    f.tel.on_event(src_ev(ConnEventType::kOpen, 5));
    CHECK(f.samples({"istio_tcp_connections_opened_total"}) ==
          std::set<std::string>{"istio_tcp_connections_opened_total{" + kSourceLabels + "} 2"});
}
