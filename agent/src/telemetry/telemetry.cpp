// Connection events -> Istio's TCP series, Kmesh's per-workload and per-service series, access-log
// lines (docs/telemetry.md). One lock (mu) guards the name index, the series maps, the open
// connections and the access-log bucket; each event holds it for a few map lookups. Counters are
// atomics, so a scrape copies the series pointers under the lock and formats without it.
#include "agent/src/telemetry/telemetry.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "agent/src/telemetry/access_log.hpp"
#include "agent/src/telemetry/event_reader.hpp"
#include "agent/src/telemetry/name_index.hpp"
#include "agent/src/telemetry/process_metrics.hpp"
#include "agent/src/telemetry/prom_text.hpp"

namespace kmesh::telemetry {

namespace {

using Clock = std::chrono::steady_clock;

struct Counter {
    std::atomic<uint64_t> v{0};
    void add(uint64_t d) { v.fetch_add(d, std::memory_order_relaxed); }
    uint64_t get() const { return v.load(std::memory_order_relaxed); }
};

// Label values are fixed when a series is made. deps name what it stands for ('p' + a peer's
// label key, 'w' + a pod's key, 's' + a service's label key): while one of them is missing from
// the model the series is "left", and it is dropped series_grace after that.
struct Series {
    std::string labels;  // name="value",... (no braces)
    std::vector<std::string> deps;
    std::optional<Clock::time_point> left_at;  // mu
};
struct IstioSeries : Series {
    Counter opened, closed, sent, received;  // sent: response bytes; received: request bytes (Istio)
};
struct WorkloadSeries : Series {
    Counter opened, closed, denied;
};
struct ServiceSeries : Series {
    Counter opened, closed;
};

// What a connection's addresses resolve to: its series and the names the access log prints.
struct Resolved {
    std::shared_ptr<IstioSeries> istio;  // none for denied connections (never opened)
    std::shared_ptr<WorkloadSeries> local;
    std::shared_ptr<ServiceSeries> service;  // none when the service is unknown
    std::string src_workload, src_namespace, dst_service, dst_workload, dst_namespace;
};

struct ResolveKey {
    ConnRole role;
    bool denied;
    bool translated;
    uint16_t server_port, orig_port;
    IpAddr client, server, orig;
    bool operator==(const ResolveKey&) const = default;
};
struct ResolveKeyHash {
    size_t operator()(const ResolveKey& k) const noexcept {
        IpAddrHash h;
        size_t x = h(k.client) * 31 + h(k.server);
        x = x * 31 + h(k.orig);
        return x * 131 + (static_cast<size_t>(k.server_port) << 20) +
               (static_cast<size_t>(k.orig_port) << 3) + (static_cast<size_t>(k.role) << 2) +
               (k.denied ? 2 : 0) + (k.translated ? 1 : 0);
    }
};
constexpr size_t kMaxResolveCache = 65536;

struct ConnKey {
    uint64_t cookie;
    ConnRole role;
    bool operator==(const ConnKey&) const = default;
};
struct ConnKeyHash {
    size_t operator()(const ConnKey& k) const noexcept {
        return std::hash<uint64_t>()(k.cookie * 2 + (k.role == ConnRole::kSource ? 0 : 1));
    }
};
struct Conn {
    std::shared_ptr<const Resolved> resolved;
    uint64_t sent = 0, recv = 0;  // this socket's totals so far
};

template <typename S>
std::shared_ptr<S> series_for(std::unordered_map<std::string, std::shared_ptr<S>>& map, std::string labels,
                              std::vector<std::string> deps) {
    auto it = map.find(labels);
    if (it != map.end()) return it->second;
    auto s = std::make_shared<S>();
    s->labels = labels;
    s->deps = std::move(deps);
    map.emplace(std::move(labels), s);
    return s;
}

void append_peer(std::string& l, const char* side, const PeerInfo* p) {
    const PeerLabels* x = p ? p->labels : nullptr;
    auto label = [&](const char* name, const std::string& v) {
        append_label(l, fmt::format("{}_{}", side, name), x && !v.empty() ? v : std::string(kUnknown));
    };
    static const std::string none;
    label("workload", x ? x->workload : none);
    label("canonical_service", x ? x->canonical_service : none);
    label("canonical_revision", x ? x->canonical_revision : none);
    label("workload_namespace", x ? x->namespace_ : none);
    label("principal", x ? x->principal : none);
    label("app", x ? x->canonical_service : none);
    label("version", x ? x->canonical_revision : none);
    label("cluster", x ? x->cluster : none);
}

void append_service(std::string& l, const ServiceInfo* s) {
    auto v = [&](const std::string& x) { return s && !x.empty() ? x : std::string(kUnknown); };
    append_label(l, "destination_service", v(s ? s->hostname : ""));
    append_label(l, "destination_service_namespace", v(s ? s->namespace_ : ""));
    append_label(l, "destination_service_name", v(s ? s->name : ""));
}

const char* type_name(ConnEventType t) { return event_type_name(t); }  // one naming, the reader's

}  // namespace

struct Telemetry::Impl {
    TelemetryOptions opt;
    mutable std::mutex mu;
    NameIndex index;
    std::unordered_map<std::string, std::shared_ptr<IstioSeries>> istio;
    std::unordered_map<std::string, std::shared_ptr<WorkloadSeries>> workloads;
    std::unordered_map<std::string, std::shared_ptr<ServiceSeries>> services;
    std::unordered_map<ResolveKey, std::shared_ptr<const Resolved>, ResolveKeyHash> cache;
    std::unordered_map<ConnKey, Conn, ConnKeyHash> conns;
    MonitoringSettings settings;
    TokenBucket bucket;
    // Counters of telemetry itself.
    std::array<Counter, 5> events;  // by ConnEventType (1..4)
    Counter untracked, series_dropped, lines, lines_dropped, named_early;
    // hold_events(): events kept until the index follows the model (update_model names them).
    bool holding = false;
    std::vector<ConnEvent> held;

    explicit Impl(TelemetryOptions o) : opt(std::move(o)), index(opt.cluster_id), settings(opt.initial) {
        if (!opt.now) opt.now = [] { return Clock::now(); };
        if (!opt.wall_now) opt.wall_now = [] { return std::chrono::system_clock::now(); };
        if (!opt.access_log_sink)
            opt.access_log_sink = [](const std::string& line) {
                std::string out = "accesslog: " + line + "\n";
                std::fwrite(out.data(), 1, out.size(), stdout);
                std::fflush(stdout);
            };
        bucket.set_rate(opt.access_log_rate, opt.now());
    }

    bool live(const std::string& dep) const {
        switch (dep[0]) {
            case 'p':
                return index.peer_live(dep.substr(1));
            case 'w':
                return index.pod_live(dep.substr(1));
            case 's':
                return index.service_live(dep.substr(1));
        }
        return true;
    }

    // mu held. After the index changed: which series stand for something gone (or back).
    template <typename Map>
    void mark(Map& map, Clock::time_point now) {
        for (auto& [labels, s] : map) {
            bool all =
                std::all_of(s->deps.begin(), s->deps.end(), [&](const std::string& d) { return live(d); });
            if (all)
                s->left_at.reset();
            else if (!s->left_at)
                s->left_at = now;
        }
    }
    // mu held. Drops the series left at least series_grace ago.
    template <typename Map>
    void gc(Map& map, Clock::time_point now) {
        for (auto it = map.begin(); it != map.end();) {
            if (it->second->left_at && now - *it->second->left_at >= opt.series_grace) {
                it = map.erase(it);
                series_dropped.add(1);
            } else {
                ++it;
            }
        }
    }
    void gc_all(Clock::time_point now) {
        gc(istio, now);
        gc(workloads, now);
        gc(services, now);
    }
    void index_changed(Clock::time_point now) {
        cache.clear();  // names may differ now; open connections keep the series they started with
        mark(istio, now);
        mark(workloads, now);
        mark(services, now);
        gc_all(now);
    }

    // mu held.
    std::shared_ptr<const Resolved> resolve(const ConnEvent& ev) {
        const bool src_role = ev.role == ConnRole::kSource;
        const bool denied = ev.type == ConnEventType::kDenied;
        const uint16_t server_port = src_role ? ev.remote_port : ev.local_port;
        ResolveKey key{ev.role,
                       denied,
                       src_role && ev.translated,
                       server_port,
                       src_role && ev.translated ? ev.orig_port : uint16_t(0),
                       ev.client_addr(),
                       ev.server_addr(),
                       src_role && ev.translated ? ev.orig : IpAddr{}};
        if (auto it = cache.find(key); it != cache.end()) return it->second;

        const PeerInfo* src = index.workload_at(key.client);
        const PeerInfo* dst = index.workload_at(key.server);
        // The service: the VIP the client asked for, else the server address if it is a VIP (not
        // translated), else the destination workload's service reached on that port.
        const ServiceInfo* svc = nullptr;
        if (key.translated) svc = index.service_at(key.orig, key.orig_port);
        if (!svc) svc = index.service_at(key.server, server_port);
        if (!svc && dst) svc = index.service_of(*dst, server_port);
        const PeerInfo* local = src_role ? src : dst;
        const char* reporter = src_role ? "source" : "destination";

        auto r = std::make_shared<Resolved>();
        if (!denied) {
            std::string l;
            append_label(l, "reporter", reporter);
            append_peer(l, "source", src);
            append_service(l, svc);
            append_peer(l, "destination", dst);
            append_label(l, "request_protocol", "tcp");
            append_label(l, "response_flags", "-");
            // Only the server's side knows whether the connection was mutual TLS; Kmesh's kernel
            // path carries plain TCP.
            append_label(l, "connection_security_policy", src_role ? kUnknown : "none");
            std::vector<std::string> deps;
            if (src) deps.push_back("p" + src->labels->label_key);
            if (dst) deps.push_back("p" + dst->labels->label_key);
            if (svc) deps.push_back("s" + svc->label_key);
            r->istio = series_for(istio, std::move(l), std::move(deps));
        }
        {
            std::string l;
            append_label(l, "reporter", reporter);
            append_label(l, "workload", local && !local->name().empty() ? local->name() : kUnknown);
            append_label(l, "workload_namespace",
                         local && !local->labels->namespace_.empty() ? local->labels->namespace_ : kUnknown);
            std::vector<std::string> deps;
            if (local) deps.push_back("w" + std::string(local->pod_key()));
            r->local = series_for(workloads, std::move(l), std::move(deps));
        }
        if (svc && !denied) {
            std::string l;
            append_label(l, "reporter", reporter);
            append_service(l, svc);
            r->service = series_for(services, std::move(l), {"s" + svc->label_key});
        }
        if (src) {
            r->src_workload = src->name();
            r->src_namespace = src->labels->namespace_;
        }
        if (svc) r->dst_service = svc->hostname;
        if (dst) {
            r->dst_workload = dst->name();
            r->dst_namespace = dst->labels->namespace_;
        } else if (svc) {
            r->dst_namespace = svc->namespace_;
        }
        if (cache.size() >= kMaxResolveCache) cache.clear();
        cache.emplace(key, r);
        return r;
    }

    // mu held: the access-log line of a closed or denied connection, if it is to be written.
    std::optional<std::string> access_line(const ConnEvent& ev, const Resolved& r, uint64_t sent,
                                           uint64_t recv) {
        if (!settings.access_log) return std::nullopt;
        Clock::time_point now = opt.now();
        if (!bucket.take(now)) {
            lines_dropped.add(1);
            return std::nullopt;
        }
        lines.add(1);
        AccessRecord a;
        // The event's CLOCK_MONOTONIC stamp on the wall clock (steady_clock is CLOCK_MONOTONIC).
        auto mono = std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count();
        auto wall = opt.wall_now();
        if (ev.ts_ns && static_cast<int64_t>(ev.ts_ns) <= mono)
            wall -= std::chrono::duration_cast<std::chrono::system_clock::duration>(
                std::chrono::nanoseconds(mono - static_cast<int64_t>(ev.ts_ns)));
        a.time = wall;
        const bool src_role = ev.role == ConnRole::kSource;
        a.src_addr = ev.client_addr();
        a.src_port = src_role ? ev.local_port : ev.remote_port;
        a.dst_addr = ev.server_addr();
        a.dst_port = src_role ? ev.remote_port : ev.local_port;
        a.src_workload = r.src_workload;
        a.src_namespace = r.src_namespace;
        a.dst_service = r.dst_service;
        a.dst_workload = r.dst_workload;
        a.dst_namespace = r.dst_namespace;
        a.inbound = !src_role;
        a.sent_bytes = sent;
        a.received_bytes = recv;
        a.duration_ns = ev.duration_ns;
        a.denied = ev.type == ConnEventType::kDenied;
        return format_access_line(a);
    }

    std::optional<std::string> on_event(const ConnEvent& ev) {
        std::lock_guard lock(mu);
        if (holding) {
            if (held.size() < Telemetry::kHeldEvents) {
                held.push_back(ev);
                return std::nullopt;
            }
            named_early.add(1);
        }
        return handle(ev);
    }

    // mu held.
    std::optional<std::string> handle(const ConnEvent& ev) {
        auto t = static_cast<size_t>(ev.type);
        if (t < events.size()) events[t].add(1);
        if (ev.type == ConnEventType::kDenied) {
            auto r = resolve(ev);
            r->local->denied.add(1);
            return access_line(ev, *r, 0, 0);
        }
        if (ev.type != ConnEventType::kOpen && ev.type != ConnEventType::kUpdate &&
            ev.type != ConnEventType::kClose)
            return std::nullopt;
        ConnKey key{ev.cookie, ev.role};
        auto it = conns.find(key);
        std::shared_ptr<const Resolved> r;
        if (it != conns.end()) {
            r = it->second.resolved;
        } else {
            // Not seen open (opened before this agent, or its open event was lost): named now.
            r = resolve(ev);
            if (ev.type != ConnEventType::kClose) {
                if (conns.size() < opt.max_connections)
                    it = conns.emplace(key, Conn{r, 0, 0}).first;
                else
                    untracked.add(1);
            }
        }
        // Request bytes go client -> server, response bytes server -> client.
        const bool src_role = ev.role == ConnRole::kSource;
        r->istio->received.add(src_role ? ev.sent_bytes : ev.recv_bytes);
        r->istio->sent.add(src_role ? ev.recv_bytes : ev.sent_bytes);
        if (ev.type == ConnEventType::kOpen) {
            r->istio->opened.add(1);
            r->local->opened.add(1);
            if (r->service) r->service->opened.add(1);
        }
        uint64_t sent = ev.sent_bytes, recv = ev.recv_bytes;
        if (it != conns.end()) {
            sent = it->second.sent += ev.sent_bytes;
            recv = it->second.recv += ev.recv_bytes;
        }
        if (ev.type != ConnEventType::kClose) return std::nullopt;
        r->istio->closed.add(1);
        r->local->closed.add(1);
        if (r->service) r->service->closed.add(1);
        if (it != conns.end()) conns.erase(it);
        return access_line(ev, *r, sent, recv);
    }
};

Telemetry::Telemetry(TelemetryOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Telemetry::~Telemetry() = default;

void Telemetry::on_event(const ConnEvent& ev) {
    auto line = impl_->on_event(ev);
    if (line) impl_->opt.access_log_sink(*line);  // without the lock: the sink may block
}

void Telemetry::update_model(std::shared_ptr<const Model> model) {
    if (!model) return;
    update_model(*model, ModelChanges{true, {}, {}});
}

void Telemetry::update_model(const Model& model, const ModelChanges& changes) {
    std::vector<std::string> lines;
    {
        std::lock_guard lock(impl_->mu);
        auto now = impl_->opt.now();
        if (impl_->index.apply(model, changes))
            impl_->index_changed(now);
        else
            impl_->gc_all(now);
        if (impl_->holding) {
            // In arrival order, with the names that now follow the model.
            impl_->holding = false;
            std::vector<ConnEvent> held;
            held.swap(impl_->held);
            for (const auto& ev : held)
                if (auto line = impl_->handle(ev)) lines.push_back(std::move(*line));
        }
    }
    for (const auto& line : lines) impl_->opt.access_log_sink(line);  // without the lock: the sink may block
}

void Telemetry::hold_events() {
    std::lock_guard lock(impl_->mu);
    impl_->holding = true;
}

MonitoringSettings Telemetry::settings() const {
    std::lock_guard lock(impl_->mu);
    return impl_->settings;
}

void Telemetry::set_settings(const MonitoringSettings& s) {
    std::lock_guard lock(impl_->mu);
    if (s.access_log && !impl_->settings.access_log)
        impl_->bucket.set_rate(impl_->opt.access_log_rate, impl_->opt.now());
    impl_->settings = s;
}

std::string Telemetry::render() {
    std::vector<std::shared_ptr<IstioSeries>> istio;
    std::vector<std::shared_ptr<WorkloadSeries>> workloads;
    std::vector<std::shared_ptr<ServiceSeries>> services;
    MonitoringSettings settings;
    size_t tracked = 0;
    {
        std::lock_guard lock(impl_->mu);
        impl_->gc_all(impl_->opt.now());
        istio.reserve(impl_->istio.size());
        for (const auto& [l, s] : impl_->istio) istio.push_back(s);
        workloads.reserve(impl_->workloads.size());
        for (const auto& [l, s] : impl_->workloads) workloads.push_back(s);
        services.reserve(impl_->services.size());
        for (const auto& [l, s] : impl_->services) services.push_back(s);
        settings = impl_->settings;
        tracked = impl_->conns.size();
    }
    auto by_labels = [](const auto& a, const auto& b) { return a->labels < b->labels; };
    std::sort(istio.begin(), istio.end(), by_labels);
    std::sort(workloads.begin(), workloads.end(), by_labels);
    std::sort(services.begin(), services.end(), by_labels);

    std::string out;
    out.reserve(1024 + istio.size() * 4 * 900 + (workloads.size() + services.size()) * 3 * 200);
    auto it = std::back_inserter(out);
    auto family = [&](const char* name, const char* help, const auto& list, auto value) {
        append_header(out, name, help, "counter");
        for (const auto& s : list) fmt::format_to(it, "{}{{{}}} {}\n", name, s->labels, value(*s));
    };
    family("istio_tcp_connections_opened_total", "TCP connections opened (Istio standard metric).", istio,
           [](const IstioSeries& s) { return s.opened.get(); });
    family("istio_tcp_connections_closed_total", "TCP connections closed (Istio standard metric).", istio,
           [](const IstioSeries& s) { return s.closed.get(); });
    family("istio_tcp_sent_bytes_total",
           "Response bytes (server to client) of TCP connections (Istio standard metric).", istio,
           [](const IstioSeries& s) { return s.sent.get(); });
    family("istio_tcp_received_bytes_total",
           "Request bytes (client to server) of TCP connections (Istio standard metric).", istio,
           [](const IstioSeries& s) { return s.received.get(); });
    family("kmesh_workload_connections_opened_total",
           "TCP connections opened by the sockets of a workload (reporter source: as client; destination: "
           "as server).",
           workloads, [](const WorkloadSeries& s) { return s.opened.get(); });
    family("kmesh_workload_connections_closed_total", "TCP connections of a workload closed.", workloads,
           [](const WorkloadSeries& s) { return s.closed.get(); });
    family("kmesh_workload_connections_denied_total",
           "Connections to a workload refused by authorization (kernel events).", workloads,
           [](const WorkloadSeries& s) { return s.denied.get(); });
    family("kmesh_service_connections_opened_total", "TCP connections opened to a service.", services,
           [](const ServiceSeries& s) { return s.opened.get(); });
    family("kmesh_service_connections_closed_total", "TCP connections to a service closed.", services,
           [](const ServiceSeries& s) { return s.closed.get(); });

    const Impl& m = *impl_;
    append_header(out, "kmesh_telemetry_events_processed_total",
                  "Connection events the metrics side processed, by type.", "counter");
    for (auto t :
         {ConnEventType::kOpen, ConnEventType::kUpdate, ConnEventType::kClose, ConnEventType::kDenied})
        fmt::format_to(it, "kmesh_telemetry_events_processed_total{{type=\"{}\"}} {}\n", type_name(t),
                       m.events[static_cast<size_t>(t)].get());
    append_header(out, "kmesh_telemetry_connections_tracked",
                  "Open connections the agent remembers (series and byte totals).", "gauge");
    fmt::format_to(it, "kmesh_telemetry_connections_tracked {}\n", tracked);
    append_header(out, "kmesh_telemetry_untracked_connections_total",
                  "Connections not remembered because --max connections were open (counted, but their "
                  "access-log line lacks bytes reported before the close).",
                  "counter");
    fmt::format_to(it, "kmesh_telemetry_untracked_connections_total {}\n", m.untracked.get());
    append_header(out, "kmesh_telemetry_events_named_early_total",
                  "Connection events named before the names followed a large model change, because more "
                  "than the held-event cap arrived meanwhile (their series may say unknown).",
                  "counter");
    fmt::format_to(it, "kmesh_telemetry_events_named_early_total {}\n", m.named_early.get());
    append_header(out, "kmesh_telemetry_series", "Telemetry series exported now, by family.", "gauge");
    fmt::format_to(it, "kmesh_telemetry_series{{family=\"istio_tcp\"}} {}\n", istio.size());
    fmt::format_to(it, "kmesh_telemetry_series{{family=\"workload\"}} {}\n", workloads.size());
    fmt::format_to(it, "kmesh_telemetry_series{{family=\"service\"}} {}\n", services.size());
    append_header(out, "kmesh_telemetry_series_dropped_total",
                  "Series dropped after their workload or service left the model (series grace).", "counter");
    fmt::format_to(it, "kmesh_telemetry_series_dropped_total {}\n", m.series_dropped.get());
    append_header(out, "kmesh_monitoring_enabled", "1 while connection tracking for metrics is on.", "gauge");
    fmt::format_to(it, "kmesh_monitoring_enabled {}\n", settings.enabled ? 1 : 0);
    append_header(out, "kmesh_accesslog_enabled", "1 while access-log lines are written.", "gauge");
    fmt::format_to(it, "kmesh_accesslog_enabled {}\n", settings.access_log ? 1 : 0);
    append_header(out, "kmesh_accesslog_lines_total", "Access-log lines written.", "counter");
    fmt::format_to(it, "kmesh_accesslog_lines_total {}\n", m.lines.get());
    append_header(out, "kmesh_accesslog_dropped_total",
                  "Access-log lines not written: over --accesslog-rate (token bucket).", "counter");
    fmt::format_to(it, "kmesh_accesslog_dropped_total {}\n", m.lines_dropped.get());
    append_process_metrics(out);
    return out;
}

}  // namespace kmesh::telemetry
