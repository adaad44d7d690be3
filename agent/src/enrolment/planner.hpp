// Enrolment reconciler, pure part: from what the API server says about this node's pods (and their
// namespaces) and what kmesh/pods holds, the actions that make the attachments follow the labels.
// Level-triggered: the same inputs always give the same actions, and applying them gives inputs
// that plan to nothing (except retries of pods whose cgroup is not there yet).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/kube/api.hpp"

namespace kmesh::enrolment {

enum class RecordKind {
    kContainer,  // pods/<container id>: kmesh-cni ADD
    kShared,     // pods/_cgroup_<id>: kmesh-cni ADD with cgroupPath (one link set, many containers)
    kAgent,      // pods/_pod_<uid>: this reconciler
};

// One entry under kmesh/pods and what its pinned links say.
struct Record {
    std::string name;  // the entry's name under pods/
    RecordKind kind = RecordKind::kContainer;
    std::vector<std::uint64_t> live_cgroups;  // cgroup ids of its attached links
    bool all_detached = false;                // it has links and every one lost its cgroup
};

// A pod of this node with its cgroup as found on the node.
struct PodView {
    kube::Pod pod;
    std::optional<std::uint64_t> cgroup_id;  // nullopt: no cgroup (yet)
    std::string cgroup_path;
};

struct Inputs {
    std::vector<PodView> pods;
    std::map<std::string, kube::Namespace> namespaces;  // by name
    std::vector<Record> records;
    std::string agent_namespace = "kmesh-system";
    // Never enrolled here, whatever their labels: kmesh-cni's excludeNamespaces (the same list), so
    // that the agent does not enrol what the plugin passes through.
    std::vector<std::string> exclude_namespaces{"kube-system"};
};

struct Action {
    enum Kind {
        kRemoveRecord,  // remove pods/<record> (and so its links)
        kAttach,        // attach both programs to the pod cgroup as pods/<record>
        kAnnotate,      // set kmesh.net/redirection=enabled on the pod
        kUnannotate,    // remove it
    } kind;
    std::string record;  // kRemoveRecord, kAttach
    std::string pod_namespace, pod_name, pod_uid;
    std::string cgroup_path;  // kAttach
    std::uint64_t cgroup_id = 0;
    std::string reason;  // for the log
};

struct Plan {
    std::vector<Action> actions;    // in order: removals, attaches, annotations
    int enrolled = 0;               // selected pods attached (or attached by this plan)
    int waiting_for_cgroup = 0;     // selected pods whose cgroup is not there yet: plan again later
    int waiting_for_namespace = 0;  // pods whose namespace (which decides) is not known yet
};

Plan plan(const Inputs& in);

}  // namespace kmesh::enrolment
