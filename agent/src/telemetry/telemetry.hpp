// The metrics and access-log side of telemetry (issue 11; docs/telemetry.md): turns decoded kernel
// connection events (conn_event.hpp) into Istio's standard TCP series and Kmesh's own, and into
// access-log lines. Names come from the model the agent last applied; the kernel reader
// (event_reader.hpp) never looks at the model. Thread-safe: on_event() is called from the reader
// thread, update_model() from the agent's main thread, render()/settings from HTTP threads.
#pragma once

#include <chrono>
#include <cstdint>
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
};

class Telemetry {
  public:
    explicit Telemetry(TelemetryOptions options);
    ~Telemetry();
    Telemetry(const Telemetry&) = delete;
    Telemetry& operator=(const Telemetry&) = delete;

    void on_event(const ConnEvent& ev);
    // After each applied generation: the names behind addresses, and the clock for series GC.
    void update_model(std::shared_ptr<const Model> model);
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
