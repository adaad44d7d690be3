// One connection event from the kernel (bpf/kmesh_abi.h, struct kmesh_conn_event), decoded: the
// only type the kernel side of telemetry (event_reader: ring buffer, iterator) hands to the
// metrics and access-log side (tcp_metrics, access_log). Flow: kernel -> EventReader -> sink.
#pragma once

#include <cstdint>
#include <functional>

#include "agent/src/model/ip_addr.hpp"

namespace kmesh::telemetry {

enum class ConnEventType : uint8_t { kOpen = 1, kUpdate = 2, kClose = 3, kDenied = 4 };
enum class ConnRole : uint8_t { kSource = 1, kDestination = 2 };

struct ConnEvent {
    ConnEventType type = ConnEventType::kOpen;
    ConnRole role = ConnRole::kSource;
    uint64_t cookie = 0;
    uint64_t ts_ns = 0;        // CLOCK_MONOTONIC (bpf_ktime_get_ns)
    uint64_t duration_ns = 0;  // kClose
    uint64_t sent_bytes = 0;   // delta since this connection's previous event
    uint64_t recv_bytes = 0;   // delta since this connection's previous event
    IpAddr local;              // this socket's own address
    uint16_t local_port = 0;
    IpAddr remote;  // the peer actually connected (a backend, not a VIP)
    uint16_t remote_port = 0;
    bool translated = false;  // kSource: connect() was given a service VIP, in orig/orig_port
    IpAddr orig;
    uint16_t orig_port = 0;
    bool waypoint = false;  // sent to a waypoint
    bool accelerated = false;
    uint32_t reason = 0;  // kDenied: detail (0 = denied by policy)

    // The client and the server of the connection, whatever the role.
    const IpAddr& client_addr() const { return role == ConnRole::kSource ? local : remote; }
    const IpAddr& server_addr() const { return role == ConnRole::kSource ? remote : local; }
};

using ConnEventSink = std::function<void(const ConnEvent&)>;

// What the operator switches at run time (kmeshctl monitoring; admin POST /debug/monitoring).
struct MonitoringSettings {
    bool enabled = true;      // kernel tracks new connections, metrics exported
    bool access_log = false;  // one log line per closed or denied connection (rate-limited)
};

}  // namespace kmesh::telemetry
