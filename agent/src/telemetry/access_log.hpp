// Access-log lines (docs/telemetry.md, "Access logs"): one per closed or denied connection, in
// Kmesh's format (kmesh-net/kmesh pkg/controller/telemetry/accesslog.go) plus the result, and the
// token bucket that bounds how many are written.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "agent/src/model/ip_addr.hpp"

namespace kmesh::telemetry {

struct AccessRecord {
    std::chrono::system_clock::time_point time;  // of the close (or the denial)
    IpAddr src_addr;
    uint16_t src_port = 0;
    std::string src_workload, src_namespace;  // "" when unknown: printed "-" as Kmesh does
    IpAddr dst_addr;                          // the server actually connected (a backend, not a VIP)
    uint16_t dst_port = 0;
    std::string dst_service, dst_workload, dst_namespace;
    bool inbound = false;     // reported by the server's socket (INBOUND) or the client's (OUTBOUND)
    uint64_t sent_bytes = 0;  // by the reporting socket, over the whole connection
    uint64_t received_bytes = 0;
    uint64_t duration_ns = 0;
    bool denied = false;  // result=denied (refused by authorization), else closed
};

// "2026-12-02T15:40:08.005837Z src.addr=10.244.0.10:47667, src.workload=sleep-1, ..., result=closed"
std::string format_access_line(const AccessRecord& r);

// "10.0.0.1:80" or "[fd00::1]:80".
std::string endpoint_str(const IpAddr& a, uint16_t port);

// Lines per second with a burst of the same size; rate 0 lets everything through.
class TokenBucket {
  public:
    using Clock = std::chrono::steady_clock;
    void set_rate(uint32_t per_second, Clock::time_point now);
    bool take(Clock::time_point now);  // one token, if there is one

  private:
    uint32_t rate_ = 0;
    double tokens_ = 0;
    Clock::time_point last_{};
};

}  // namespace kmesh::telemetry
