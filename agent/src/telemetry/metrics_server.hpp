// The Prometheus endpoint (Istio's port and path: :15020/stats/prometheus): one HTTP server that
// serves that path and nothing else (every other path: 404). Binding is retried in the background
// (1 s doubling to 30 s) like the admin server's: the agent serves traffic without it.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace kmesh::telemetry {

class MetricsServer {
  public:
    using Render = std::function<std::string()>;
    // Starts serving address:port in a thread of its own. bind_failures counts failed binds.
    MetricsServer(std::string address, int port, Render render, std::atomic<uint64_t>& bind_failures);
    ~MetricsServer();  // stops and joins
    MetricsServer(const MetricsServer&) = delete;
    MetricsServer& operator=(const MetricsServer&) = delete;

    bool listening() const;

    static constexpr const char* kPath = "/stats/prometheus";

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace kmesh::telemetry
