// What runs on this node, for /version, kmesh_build_info and `kmeshctl version`: the release, the
// programs (digest of the embedded BPF object, and the kernel's id and tag of each loaded program),
// the map layout (the ABI this build was compiled for and the maps directory in use), and how many
// pod links run these programs. Apart from the agent so that it can be tested without a data plane.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "agent/src/dataplane/bpf_loader.hpp"

namespace kmesh::admin {

struct PodLinkCount {
    int total = 0;      // pinned pod links (cgroup and netns) that are still attached
    int on_loaded = 0;  // of which run one of the loaded programs
};

struct VersionInfo {
    ProgramBuild build;
    std::vector<LoadedProgram> programs;
    unsigned abi = 0;           // KMESH_ABI_VERSION of this build
    unsigned maps_version = 0;  // the maps/v<N> in use (--maps-version; tests only differ)
    std::string maps_dir;
    bool published = false;  // the pods were moved to these programs
    PodLinkCount pod_links;
};

// Counts the pinned links under pods_dir (pods_dir/<pod>/<prog>, pods_dir/<pod>/users/<ctr>/<prog>)
// by whether their program is one of prog_ids. Links whose cgroup or netns is gone are not counted.
PodLinkCount count_pod_links(const std::string& pods_dir, const std::set<uint32_t>& prog_ids);

// The /version document (JSON).
std::string version_json(const VersionInfo& v);

// The kmesh_build_info gauge (HELP, TYPE and one sample of value 1), Prometheus text format.
std::string build_info_metric(const VersionInfo& v);

}  // namespace kmesh::admin
