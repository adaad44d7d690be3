#include "agent/src/enrolment/reconciler.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <vector>

namespace kmesh::enrolment {

Reconciler::Reconciler(std::shared_ptr<kube::Api> api, ReconcilerOptions options, Metrics& metrics)
    : api_(std::move(api)), options_(std::move(options)), metrics_(metrics) {
    executor_ = std::make_unique<Executor>(kernel_, *api_, options_.executor, *spdlog::default_logger());
    auto on_error = [](const char* what) {
        return [what](const Status& st) { spdlog::warn("enrolment: {} informer: {}", what, st.to_string()); };
    };
    kube::Informer<kube::Pod>::Options po;
    po.list.field_selector = "spec.nodeName=" + options_.node_name;
    pods_ = std::make_unique<kube::Informer<kube::Pod>>(
        *api_, po, [this](const kube::Pod*, const kube::Pod*) { poke(); }, [this] { poke(); },
        on_error("pods"));
    namespaces_ = std::make_unique<kube::Informer<kube::Namespace>>(
        *api_, kube::Informer<kube::Namespace>::Options{},
        [this](const kube::Namespace*, const kube::Namespace*) { poke(); }, [this] { poke(); },
        on_error("namespaces"));
}

Reconciler::~Reconciler() { stop(); }

bool Reconciler::synced() const { return pods_->synced() && namespaces_->synced(); }

void Reconciler::start() {
    spdlog::info("enrolment: watching pods on node {} and all namespaces", options_.node_name);
    pods_->start();
    namespaces_->start();
    thread_ = std::thread([this] { loop(); });
}

void Reconciler::stop() {
    {
        std::lock_guard l(mu_);
        if (stopping_) return;
        stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    pods_->stop();
    namespaces_->stop();
}

void Reconciler::poke() {
    {
        std::lock_guard l(mu_);
        dirty_ = true;
    }
    cv_.notify_all();
}

void Reconciler::loop() {
    using Clock = std::chrono::steady_clock;
    auto retry = options_.retry_initial;
    Clock::time_point next = Clock::now() + options_.resync;
    for (;;) {
        {
            std::unique_lock l(mu_);
            cv_.wait_until(l, next, [this] { return stopping_ || dirty_; });
            if (stopping_) return;
            dirty_ = false;
        }
        // Level-triggered: nothing is planned from a partial view of the node.
        if (!synced()) {
            next = Clock::now() + options_.resync;
            continue;
        }
        std::vector<kube::Pod> pods;
        for (auto& [key, pod] : pods_->snapshot())
            if (pod.node_name == options_.node_name) pods.push_back(std::move(pod));
        std::map<std::string, kube::Namespace> namespaces;
        for (auto& [key, ns] : namespaces_->snapshot()) namespaces.emplace(ns.meta.name, std::move(ns));

        PassResult r = executor_->pass(pods, namespaces);
        metrics_.enrolment_passes++;
        metrics_.enrolment_errors += r.errors.size();
        metrics_.enrolled_pods = r.plan.enrolled;
        metrics_.enrolment_waiting = r.plan.waiting_for_cgroup;
        for (const auto& e : r.errors) spdlog::warn("enrolment: {}", e.to_string());
        if (!r.plan.actions.empty() || !r.errors.empty())
            spdlog::info("enrolment: {} pods enrolled, {} actions, {} failed, {} waiting for their cgroup",
                         r.plan.enrolled, r.plan.actions.size(), r.errors.size(), r.plan.waiting_for_cgroup);
        if (r.retry()) {
            next = Clock::now() + retry;
            retry = std::min(retry * 2, options_.retry_max);
        } else {
            retry = options_.retry_initial;
            next = Clock::now() + options_.resync;
        }
    }
}

}  // namespace kmesh::enrolment
