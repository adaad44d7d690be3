// The agent's enrolment reconciler (issue 8 section 3): watches this node's pods and all namespaces
// and, at start (once both are synced), on every change and periodically, makes the pod
// attachments follow the labels: planner.hpp decides, executor.hpp applies. Runs on its own thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "agent/src/admin/metrics.hpp"
#include "agent/src/enrolment/executor.hpp"
#include "common/kube/api.hpp"

namespace kmesh::enrolment {

struct ReconcilerOptions {
    ExecutorOptions executor;
    std::string node_name;
    // Periodic pass: records made by kmesh-cni and cgroups appearing change no API object.
    std::chrono::milliseconds resync{10000};
    std::chrono::milliseconds retry_initial{500}, retry_max{30000};
};

class Reconciler {
  public:
    // `metrics`: enrolled pods and failed actions are counted there (admin /metrics).
    Reconciler(std::shared_ptr<kube::Api> api, ReconcilerOptions options, Metrics& metrics);
    ~Reconciler();  // stops
    void start();
    void stop();
    bool synced() const;

  private:
    void poke();
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
    bool stopping_ = false;
    std::thread thread_;
};

}  // namespace kmesh::enrolment
