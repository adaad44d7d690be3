// cgroup v2 helpers: locating the v2 mount and a Kubernetes pod's cgroup directory. Discovery works
// on any directory tree, so tests can build fake kubelet layouts in a temp dir.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kmesh {

// How many directory levels below the cgroup root the fallback search descends (covers kubelet
// --cgroup-root prefixes in front of kubepods/<qos>/pod<uid>).
inline constexpr int kPodCgroupSearchDepth = 5;
// How many directories the fallback search lists at most: a node's cgroup tree has a few hundred
// below kubepods; the bound keeps a misconfigured root from turning one ADD into a long walk.
inline constexpr int kPodCgroupSearchMaxDirs = 4096;

// Mount point of the cgroup v2 hierarchy in the given /proc/<pid>/mountinfo text. Prefers a mount
// of the hierarchy's root over bind mounts of a subtree.
std::optional<std::string> find_cgroup2_mount(std::string_view mountinfo);
// Same, reading /proc/self/mountinfo.
std::optional<std::string> find_cgroup2_mount();

struct PodCgroupLookup {
    std::optional<std::filesystem::path> path;  // found pod cgroup directory
    std::vector<std::string> tried;             // fixed candidates probed, for error messages
};

// Finds the pod cgroup of `pod_uid` under `cgroup_root`: first the kubelet cgroupfs and systemd
// layouts, then a breadth-first search up to `max_depth` levels for `pod<uid>` or
// `*-pod<uid with - as _>.slice`, listing at most `max_dirs` directories. The uid must already be
// validated (no '/' or dots).
PodCgroupLookup find_pod_cgroup(const std::filesystem::path& cgroup_root, std::string_view pod_uid,
                                int max_depth = kPodCgroupSearchDepth,
                                int max_dirs = kPodCgroupSearchMaxDirs);

// Kernel cgroup id of a cgroup v2 directory (what bpf_link_info.cgroup.cgroup_id reports); nullopt
// with errno set on failure.
std::optional<std::uint64_t> cgroup_id(const std::filesystem::path& dir);

}  // namespace kmesh
