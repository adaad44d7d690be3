#include "agent/src/enrolment/reconciler.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <vector>

#include "common/enrolment.hpp"

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

Status Reconciler::start() {
    spdlog::info("enrolment: watching pods on node {} and all namespaces", options_.node_name);
    pods_->start();
    namespaces_->start();
    thread_ = std::thread([this] { loop(); });
    if (!options_.cni_socket.empty()) {
        cni_server_ = std::make_unique<CniServer>(
            options_.cni_socket, [this](const PodQuery& q) { return answer(q); }, metrics_);
        if (Status st = cni_server_->start(); !st) {
            cni_server_.reset();
            return st;
        }
    }
    return Status::ok();
}

PodAnswer Reconciler::answer(const PodQuery& q) {
    auto unknown = [](std::string why) { return PodAnswer{false, false, std::move(why)}; };
    if (!synced()) return unknown("the agent's pod and namespace caches are not synced yet");
    auto pod = pods_->get(q.ns + "/" + q.name);
    // A pod the runtime creates now may not have reached the agent's watch yet.
    if (!pod) return unknown(fmt::format("pod {}/{} is not in the agent's cache", q.ns, q.name));
    if (pod->node_name != options_.node_name)
        return unknown(fmt::format("pod {}/{} is cached on node '{}'", q.ns, q.name, pod->node_name));
    // Re-created under the same name (StatefulSet): the cache may still hold the old object.
    if (!q.uid.empty() && pod->meta.uid != q.uid)
        return unknown(fmt::format("the agent has uid {}, the runtime creates {}", pod->meta.uid, q.uid));
    std::optional<kube::Namespace> ns;
    if (namespace_decides(*pod, q.kmesh_namespace)) {
        ns = namespaces_->get(q.ns);
        if (!ns) return unknown(fmt::format("namespace {} is not in the agent's cache", q.ns));
    }
    const EnrolmentDecision d = decide_enrolment(*pod, ns ? &*ns : nullptr, q.kmesh_namespace);
    // The plugin attaches and leaves the kmesh.net/redirection annotation to the next pass.
    if (d.enrolled) poke_at(std::chrono::steady_clock::now() + options_.annotate_after);
    return PodAnswer{true, d.enrolled, d.reason};
}

void Reconciler::stop() {
    if (cni_server_) cni_server_->stop();  // answer() reads the informers stopped below
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

void Reconciler::poke_at(std::chrono::steady_clock::time_point at) {
    {
        std::lock_guard l(mu_);
        if (soon_ && *soon_ <= at) return;
        soon_ = at;
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
            // A pass wanted soon (answer()) comes forward; it is not a change, so no dirty flag.
            for (;;) {
                const auto until = soon_ ? std::min(next, *soon_) : next;
                if (cv_.wait_until(l, until, [this] { return stopping_ || dirty_; })) break;
                if (Clock::now() >= until) break;
            }
            if (stopping_) return;
            dirty_ = false;
            soon_.reset();
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
