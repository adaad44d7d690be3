// What the maps should hold (DesiredState, from the model), what they do hold (MapState, a mirror
// kept by the writer or recovered from pinned maps after a restart), and the Plan between them.
//
// Services and backends are identified by a 64-bit hash of their resource name, which is also
// stored in the map values: a restarted agent recovers name -> id from the maps themselves, so ids
// stay stable without a side file that could drift.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "agent/src/model.hpp"
#include "common/abi.hpp"

namespace kmesh {

uint64_t name_hash(std::string_view name);

struct FrontendTarget {
    uint64_t service = 0;      // service name hash
    uint16_t target_port = 0;  // network byte order
    auto operator<=>(const FrontendTarget&) const = default;
};

struct DesiredService {
    uint32_t lb_mode = KMESH_LB_RANDOM;
    std::array<std::set<uint64_t>, KMESH_PRIO_COUNT> endpoints;  // backend hashes per priority
    bool operator==(const DesiredService&) const = default;
};

struct DesiredBackend {
    std::array<uint8_t, 16> addr4{}, addr6{};
    uint32_t flags = 0;
    bool operator==(const DesiredBackend&) const = default;
};

struct DesiredState {
    std::map<uint64_t, DesiredService> services;
    std::map<uint64_t, DesiredBackend> backends;
    std::map<kmesh_frontend_key, FrontendTarget> frontends;
    // For dumps and logs: hash -> resource name.
    std::map<uint64_t, std::string> names;
};

// Fails (returns problems) only on hash collisions between distinct names.
DesiredState build_desired(const Model& model, std::vector<std::string>* problems);

struct MapState {
    struct Service {
        uint32_t id = 0;
        uint32_t lb_mode = KMESH_LB_RANDOM;
        // slots[prio][i] is the backend id at endpoint index i + 1; 0 = entry missing or unknown.
        std::array<std::vector<uint32_t>, KMESH_PRIO_COUNT> slots;
    };
    struct Backend {
        uint32_t id = 0;
        DesiredBackend value;
    };
    std::map<uint64_t, Service> services;
    std::map<uint64_t, Backend> backends;
    std::map<uint32_t, uint64_t> backend_hash_by_id;
    std::map<kmesh_frontend_key, FrontendTarget> frontends;  // service hash 0: points at an unknown id

    // Left over by a crash or a failed cleanup, found unreachable: endpoint entries beyond their
    // service's count, and duplicate service/backend ids (a hash seen twice). Removed by the next apply.
    std::vector<kmesh_endpoint_key> stray_endpoints;
    std::vector<uint32_t> stray_services;
    std::vector<uint32_t> stray_backends;
    // Every id the maps referenced at recovery; never handed out again by this agent.
    std::set<uint32_t> reserved_service_ids, reserved_backend_ids;
};

struct EndpointAdd {
    uint64_t service;
    uint32_t prio;
    uint64_t backend;
    bool operator==(const EndpointAdd&) const = default;
};

struct EndpointRemove {
    uint64_t service;
    uint32_t prio;
    uint32_t index;  // 1-based slot in the current state
    bool operator==(const EndpointRemove&) const = default;
};

// Executed phase by phase in member order; the order is what keeps every connect() consistent:
// new backends and endpoints exist before anything points at them, and a frontend disappears
// before its service, which disappears before its endpoints and backends.
struct Plan {
    std::vector<std::pair<uint64_t, DesiredBackend>> put_backends;
    std::vector<std::pair<uint64_t, uint32_t>> put_services;  // new or LB mode changed: (hash, lb_mode)
    std::vector<EndpointAdd> add_endpoints;                   // grouped by service
    std::vector<std::pair<kmesh_frontend_key, FrontendTarget>> put_frontends;
    std::vector<kmesh_frontend_key> delete_frontends;
    std::vector<EndpointRemove> remove_endpoints;  // grouped by service and priority
    std::vector<uint64_t> delete_services;
    std::vector<uint64_t> delete_backends;

    bool empty() const;
    size_t size() const;
};

Plan diff(const MapState& current, const DesiredState& desired);

}  // namespace kmesh
