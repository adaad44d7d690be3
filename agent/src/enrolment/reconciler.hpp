// The agent's enrolment reconciler (issue 8 section 3): watches this node's pods and all namespaces
// and, at start (once both are synced), on every change and periodically, makes the pod
// attachments follow the labels: planner.hpp decides, executor.hpp applies. Runs on its own thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "agent/src/admin/metrics.hpp"
#include "agent/src/enrolment/cni_server.hpp"
#include "agent/src/enrolment/executor.hpp"
#include "common/kube/api.hpp"

namespace kmesh::enrolment {

struct ReconcilerOptions {
    ExecutorOptions executor;
    std::string node_name;
    // Periodic pass: records made by kmesh-cni and cgroups appearing change no API object.
    std::chrono::milliseconds resync{10000};
    std::chrono::milliseconds retry_initial{500}, retry_max{30000};
    // kmesh-cni asks here whether a pod is in the mesh (common/agent_query.hpp); empty: no socket.
    std::string cni_socket;
    // After answering "enrolled", a pass this soon annotates the pod (the plugin no longer PATCHes).
    std::chrono::milliseconds annotate_after{500};
};

class Reconciler {
  public:
    // `metrics`: enrolled pods and failed actions are counted there (admin /metrics).
    Reconciler(std::shared_ptr<kube::Api> api, ReconcilerOptions options, Metrics& metrics);
    ~Reconciler();   // stops
    Status start();  // fails only when the cni socket cannot be served
    void stop();
    bool synced() const;
    // kmesh-cni's question, from the informer caches with the plugin's own rule (decide_enrolment).
    // Not known (the plugin asks the API server) when not synced, the pod is not cached or cached
    // under another uid, or its namespace is needed and not cached.
    PodAnswer answer(const PodQuery& q);

  private:
    void poke();
    void poke_at(std::chrono::steady_clock::time_point at);
    void loop();

    std::shared_ptr<kube::Api> api_;
    ReconcilerOptions options_;
    LinuxKernel kernel_;
    std::unique_ptr<Executor> executor_;
    std::unique_ptr<kube::Informer<kube::Pod>> pods_;
    std::unique_ptr<kube::Informer<kube::Namespace>> namespaces_;
    Metrics& metrics_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool dirty_ = true;
    std::optional<std::chrono::steady_clock::time_point> soon_;  // a pass wanted by then (answer())
    bool stopping_ = false;
    std::thread thread_;
    std::unique_ptr<CniServer> cni_server_;  // last member: stopped first
};

}  // namespace kmesh::enrolment
