// Counters the agent exports about its own work (map writes, config reloads).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

#include "agent/src/dataplane/map_ops.hpp"

namespace kmesh {

struct Metrics {
    std::array<std::atomic<uint64_t>, kMapCount> map_write_errors{};  // per MapId
    std::array<std::atomic<uint64_t>, kMapCount> map_full_errors{};   // E2BIG/ENOSPC: capacity reached
    std::atomic<uint64_t> map_writes{0};
    // Kernel calls the map writer made for its updates and deletes (a batch is one call), and
    // batches the kernel stopped at a failing entry (the rest was resumed after it).
    std::atomic<uint64_t> map_calls{0};
    std::atomic<uint64_t> map_batches_stopped{0};
    std::atomic<uint64_t> config_applied{0};
    std::atomic<uint64_t> config_rejected{0};
    // New services held back (no frontend written) because their endpoints could not all be
    // written: their connects pass through untouched instead of being refused.
    std::atomic<uint64_t> services_unpublished{0};
    // Kernel-native frontends held back because their split (or one of its services) or their
    // rate limit could not be written: never published pointing at an id that is not there.
    std::atomic<uint64_t> frontends_unpublished{0};
    std::atomic<uint64_t> admin_bind_failures{0};
    std::atomic<uint64_t> vip_conflicts{0};  // MeshState's count, copied after each sync
    // Enrolment reconciler (agent/src/enrolment), after its last pass.
    std::atomic<int64_t> enrolled_pods{0};      // selected pods of this node attached
    std::atomic<int64_t> enrolment_waiting{0};  // selected pods whose cgroup is not there yet
    std::atomic<uint64_t> enrolment_passes{0};
    std::atomic<uint64_t> enrolment_errors{0};  // failed attach/release/annotate actions
    // kmesh-cni's queries on --cni-socket, by answer (unknown: the plugin asked the API server).
    std::atomic<uint64_t> cni_queries_enrolled{0}, cni_queries_not_enrolled{0}, cni_queries_unknown{0},
        cni_queries_refused{0};
    // Entries the map writer's mirror says each map holds (after the last sync), per MapId.
    std::array<std::atomic<uint64_t>, kMapCount> map_entries{};
    std::atomic<uint64_t> metrics_bind_failures{0};  // the :15020 server
};

}  // namespace kmesh
