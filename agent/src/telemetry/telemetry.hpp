// The metrics and access-log side of telemetry (issue 11; docs/telemetry.md): turns decoded kernel
// connection events (conn_event.hpp) into Istio's standard TCP series and Kmesh's own, and into
// access-log lines. Names come from the model the agent last applied; the kernel reader
// (event_reader.hpp) never looks at the model. Thread-safe: on_event() is called from the reader
// thread, update_model() from the agent's main thread, render()/settings from HTTP threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "agent/src/model/model.hpp"
#include "agent/src/telemetry/conn_event.hpp"

namespace kmesh::telemetry {

struct TelemetryOptions {
    // Series of workloads and services no longer in the model are dropped this long after they left
    // (bounded cardinality under pod churn). --metrics-series-grace.
    std::chrono::seconds series_grace{300};
    // Access log: lines per second (token bucket, burst = rate); lines over it are counted, not logged.
    uint32_t access_log_rate = 100;
    std::string cluster_id = "Kubernetes";  // source_cluster / destination_cluster when a workload has none
    MonitoringSettings initial;
    // Open connections remembered (cookie -> series and byte totals for the access log). Beyond it
    // a connection is counted when it opens and closes but its access-log line lacks earlier bytes.
    size_t max_connections = 262144;
    // Where access-log lines go: by default stdout, "accesslog: <line>", as Kmesh prints them.
    std::function<void(const std::string&)> access_log_sink;
    // Tests: the clocks (series grace, token bucket; access-log timestamps). Default: the real ones.
    std::function<std::chrono::steady_clock::time_point()> now;
    std::function<std::chrono::system_clock::time_point()> wall_now;
};

class Telemetry {
  public:
    explicit Telemetry(TelemetryOptions options);
    ~Telemetry();
    Telemetry(const Telemetry&) = delete;
    Telemetry& operator=(const Telemetry&) = delete;

    void on_event(const ConnEvent& ev);
    // After each applied generation: the names behind addresses, and the clock for series GC.
    void update_model(std::shared_ptr<const Model> model);  // reads the whole model
    // The same, reading only what changed (MeshState::take_model_changes): the agent's path, so a
    // one-workload change costs one workload whatever the size of the mesh. Call with the model
    // not changing underneath (the agent holds its lock).
    void update_model(const Model& model, const ModelChanges& changes);
    // Until the next update_model: connection events are kept (up to kHeldEvents) instead of named,
    // and named after the index has followed the model. The agent calls it when a large change's
    // names are built after its maps are written: a connection opened in between (to a pod the
    // change just added) is then named by the new model, not "unknown" for its whole life. Events
    // past the cap are named at once with the names of the moment (counted:
    // kmesh_telemetry_events_named_early_total).
    void hold_events();
    static constexpr size_t kHeldEvents = 65536;
    // Prometheus text of every telemetry series (istio_tcp_*, kmesh per-workload/service, access
    // log counters, process_*). The agent appends its own counters for the admin port's /metrics.
    std::string render();

    MonitoringSettings settings() const;
    void set_settings(const MonitoringSettings& s);

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace kmesh::telemetry
