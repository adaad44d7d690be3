// kmeshctl doctor: can this node run Kmesh? Kernel checks (BTF, program and map types, the helpers
// the programs call, cgroup v2, bpffs, bpf_link on cgroups) and node checks (the CNI config chains
// kmesh-cni, the plugin is installed, the agent is ready, the pinned maps have the agent's layout).
// Every check that is not ok says in one sentence what is wrong and how to fix it.
//
// The checks that need no kernel (the CNI config and binary, the cgroup mount table, comparing map
// layouts) are functions of their inputs, unit-tested on fixture directories and strings.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ctl/admin_client.hpp"

namespace kmesh::ctl {

enum class CheckStatus { kOk, kWarn, kFail };
const char* status_name(CheckStatus s);  // "ok", "warn", "fail"

struct Check {
    std::string name;
    CheckStatus status = CheckStatus::kOk;
    std::string detail;  // what was found; for warn/fail, what is wrong and why it matters
    std::string fix;     // for warn/fail: what to do
};

struct DoctorOptions {
    std::string cni_conf_dir = "/etc/cni/net.d";
    std::string cni_bin_dir = "/opt/cni/bin";  // ':'-separated, as CNI_PATH
    std::string bpffs_root = "/sys/fs/bpf";
    std::string cgroup_root;  // empty: the cgroup v2 mount found in /proc/self/mountinfo
    std::string btf_path = "/sys/kernel/btf/vmlinux";
    Admin admin;
};

// --- pure checks --------------------------------------------------------------------------------

// The config the runtime reads in conf_dir (libcni's rules: the first loadable .conf/.conflist/.json
// in byte order, as the installer picks it) chains kmesh-cni.
Check check_cni_config(const std::string& conf_dir);
// <dir>/kmesh-cni is a regular, executable file in one of the ':'-separated dirs.
Check check_cni_binary(const std::string& bin_dirs);

// The cgroup mounts in a /proc/<pid>/mountinfo text.
struct CgroupMounts {
    std::optional<std::string> v2;  // the cgroup2 mount (the hierarchy's root preferred)
    std::vector<std::string> v1;    // cgroup (v1) mount points
};
CgroupMounts parse_cgroup_mounts(std::string_view mountinfo);
// cgroup v2 is mounted (a hybrid layout is fine: programs attach to the v2 hierarchy). When
// cgroup_root is given it must be on that hierarchy (is_cgroup2: statfs says cgroup2).
Check check_cgroup2(const CgroupMounts& m, const std::string& cgroup_root, bool root_is_cgroup2);

// A BPF map's shape, as the object defines it or the kernel reports a pinned one.
struct MapShape {
    uint32_t type = 0, key_size = 0, value_size = 0;
    bool operator==(const MapShape&) const = default;
};
// Every map of `expected` is pinned (present in `pinned`, by name) with the same type, key and
// value size. dir is only for the message.
Check compare_map_layout(const std::map<std::string, MapShape>& expected,
                         const std::map<std::string, std::optional<MapShape>>& pinned,
                         const std::string& dir);

// --- everything ---------------------------------------------------------------------------------

std::vector<Check> run_doctor(const DoctorOptions& o);
bool healthy(const std::vector<Check>& checks);  // no fail (warnings allowed)
std::string doctor_table(const std::vector<Check>& checks);
std::string doctor_json(const std::vector<Check>& checks);

}  // namespace kmesh::ctl
