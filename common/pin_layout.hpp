// Where the agent pins maps, programs and per-pod links under a bpffs root. Shared by the agent,
// kmesh-cni and the tests so that every path has exactly one definition.
#pragma once

#include <string>

namespace kmesh {

inline constexpr const char* kDefaultBpffsRoot = "/sys/fs/bpf";

// Program names as pinned under progs/ (the BPF function names in bpf/sock_connect.c).
inline constexpr const char* kProgConnect4 = "cgroup_connect4";
inline constexpr const char* kProgConnect6 = "cgroup_connect6";

struct PinLayout {
    std::string bpffs_root = kDefaultBpffsRoot;

    std::string kmesh_dir() const { return bpffs_root + "/kmesh"; }
    std::string maps_dir() const { return kmesh_dir() + "/maps"; }
    std::string progs_dir() const { return kmesh_dir() + "/progs"; }
    std::string pods_dir() const { return kmesh_dir() + "/pods"; }

    std::string map(const std::string& name) const { return maps_dir() + "/" + name; }
    std::string prog(const std::string& name) const { return progs_dir() + "/" + name; }
    // One directory per CNI container id, holding one pinned bpf_link per attached program.
    std::string pod_dir(const std::string& container_id) const { return pods_dir() + "/" + container_id; }
};

}  // namespace kmesh
