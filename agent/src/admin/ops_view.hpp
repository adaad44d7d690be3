// Admin views for kmeshctl that are not part of the config dump (docs/kmeshctl.md): the run-time
// log level (/debug/loglevel) and the waypoints as the kernel holds them (/debug/waypoints). Apart
// from the agent so that they can be tested without a data plane.
#pragma once

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <spdlog/common.h>

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "agent/src/model/model.hpp"
#include "bpf/kmesh_abi.h"
#include "common/abi.hpp"

namespace kmesh::admin {

// A level name as --log-level takes it: trace, debug, info, warn (or warning), error (or err),
// critical, off. Unlike spdlog::level::from_str, anything else is nullopt, not "off".
std::optional<spdlog::level::level_enum> parse_log_level(std::string_view name);
// "trace, debug, info, warn, error, critical, off", for error messages.
const char* log_level_names();

// The waypoint tables read back from the kernel (km_waypoint, km_wp_dest) and km_wp_stats summed
// over CPUs.
struct WaypointKernelView {
    std::map<uint64_t, kmesh_waypoint_value> waypoints;
    std::map<kmesh_wp_dest_key, kmesh_wp_dest_value> dests;
    std::array<uint64_t, KMESH_WP_STAT_MAX> stats{};
    bool stats_read = false;  // km_wp_stats could be opened
};

// Counter names of km_wp_stats, by slot (enum kmesh_wp_stat).
const char* wp_stat_name(int slot);

// The /debug/waypoints document: every waypoint the model names or the kernel holds (id, name,
// addresses and port in the kernel, the services and workloads whose connects go through it, how
// many addresses point at it in km_wp_dest by kind), the counters, and the loop-guard ones apart.
std::string waypoints_json(const Model& m, const WaypointKernelView& k);

}  // namespace kmesh::admin
