// kmeshctl's verbs (docs/kmeshctl.md). Each prints to stdout, errors to stderr, and returns the exit
// status: 0 done, 1 failed (the agent unreachable, a bad answer), 2 usage (CLI11 or a bad value).
#pragma once

#include <string>

#include "common/pin_layout.hpp"
#include "ctl/admin_client.hpp"
#include "ctl/render.hpp"

namespace kmesh::ctl {

inline constexpr int kExitOk = 0, kExitFailed = 1, kExitUsage = 2;
inline constexpr int kExitDenied = 3;  // authz check: the policies deny

// dump.cpp: the pinned maps as connect() sees them, then the agent's model (policies, waypoints,
// identities). JSON: the agent's /debug/maps, /debug/config_dump, /debug/authz and /debug/waypoints.
int dump(const PinLayout& layout, const Admin& admin, Output out);

// status.cpp
int version(const Admin& admin, bool ask_agent, Output out);
int authz_check(const Admin& admin, const std::string& src, const std::string& dst, unsigned port,
                Output out);
int authz_status(const Admin& admin, Output out);
int waypoint_status(const Admin& admin, Output out);
int log_level(const Admin& admin, const std::string& set, Output out);  // set empty: show
// enable: 1 on, 0 off, -1 unchanged; access_log: "on", "off" or "" (unchanged).
int monitoring(const Admin& admin, int enable, const std::string& access_log, Output out);

}  // namespace kmesh::ctl
