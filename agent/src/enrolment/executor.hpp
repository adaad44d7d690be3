// Enrolment reconciler, kernel part: observes kmesh/pods and the pods' cgroups, runs the planner
// and applies its actions with the same attach/release code as kmesh-cni (common/pod_links.hpp),
// under the same pods lock.
#pragma once

#include <spdlog/logger.h>

#include <map>
#include <string>
#include <vector>

#include "agent/src/enrolment/planner.hpp"
#include "common/kube/api.hpp"
#include "common/pin_layout.hpp"
#include "common/pod_links.hpp"
#include "common/status.hpp"

namespace kmesh::enrolment {

struct ExecutorOptions {
    PinLayout layout;
    std::string cgroup_root;  // empty: the cgroup v2 mount (hybrid: the unified one)
    std::string agent_namespace = "kmesh-system";
    std::vector<std::string> exclude_namespaces{"kube-system"};  // as Inputs::exclude_namespaces
    std::string proc_root = "/proc";  // where pods' processes (and their ns/net) are found
};

struct PassResult {
    Plan plan;
    std::vector<Status> errors;  // actions that failed (retried on the next pass)
    bool retry() const { return !errors.empty() || plan.waiting_for_cgroup > 0; }
};

class Executor {
  public:
    Executor(Kernel& kernel, kube::Api& api, ExecutorOptions options, spdlog::logger& log);

    // One level-triggered pass: `pods` are this node's pods, `namespaces` by name.
    PassResult pass(const std::vector<kube::Pod>& pods,
                    const std::map<std::string, kube::Namespace>& namespaces);

    // What kmesh/pods holds (the caller holds the PodsLock).
    std::vector<Record> scan_records();

  private:
    Status apply(const Action& a, std::vector<PinnedProg>& progs);

    Kernel& kernel_;
    kube::Api& api_;
    ExecutorOptions options_;
    spdlog::logger& log_;
};

}  // namespace kmesh::enrolment
