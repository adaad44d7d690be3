#include "agent/src/enrolment/planner.hpp"

#include <algorithm>
#include <set>

#include "common/enrolment.hpp"
#include "common/pod_links.hpp"

namespace kmesh::enrolment {

namespace {

bool covers(const Record& r, std::uint64_t cgroup_id) {
    return std::find(r.live_cgroups.begin(), r.live_cgroups.end(), cgroup_id) != r.live_cgroups.end();
}

bool annotated(const kube::Pod& pod) {
    auto it = pod.meta.annotations.find(kRedirectionAnnotation);
    return it != pod.meta.annotations.end() && it->second == kRedirectionEnabled;
}

Action pod_action(Action::Kind kind, const kube::Pod& pod, std::string reason) {
    Action a{kind};
    a.pod_namespace = pod.meta.namespace_;
    a.pod_name = pod.meta.name;
    a.pod_uid = pod.meta.uid;
    a.reason = std::move(reason);
    return a;
}

}  // namespace

Plan plan(const Inputs& in) {
    Plan out;
    std::vector<Action> removals, attaches, annotations;
    std::set<std::string> removed;
    auto remove = [&](const Record& r, const kube::Pod* pod, std::string reason) {
        if (!removed.insert(r.name).second) return;
        Action a = pod ? pod_action(Action::kRemoveRecord, *pod, std::move(reason))
                       : Action{Action::kRemoveRecord, {}, {}, {}, {}, {}, 0, std::move(reason)};
        a.record = r.name;
        removals.push_back(std::move(a));
    };

    // Records whose links all lost their cgroup belong to pods deleted without a CNI DEL (e.g.
    // while the agent was down): nothing runs there any more, whoever made them.
    for (const auto& r : in.records)
        if (r.all_detached) remove(r, nullptr, "every link is detached (its cgroup is gone)");

    for (const auto& view : in.pods) {
        const kube::Pod& pod = view.pod;
        // A terminating pod keeps what it has until its CNI DEL: releasing it now would change its
        // traffic during graceful shutdown.
        if (pod.meta.deleting) continue;
        auto ns = in.namespaces.find(pod.meta.namespace_);
        const bool excluded = std::find(in.exclude_namespaces.begin(), in.exclude_namespaces.end(),
                                        pod.meta.namespace_) != in.exclude_namespaces.end();
        // Namespace not (yet) in the cache while its labels would decide: neither enrol nor release
        // on a guess (the plugin may have enrolled the pod from a fresher GET); the namespace event
        // brings the next pass.
        if (!excluded && ns == in.namespaces.end() && namespace_decides(pod, in.agent_namespace)) {
            ++out.waiting_for_namespace;
            continue;
        }
        const EnrolmentDecision d =
            excluded ? EnrolmentDecision{false, "namespace " + pod.meta.namespace_ + " is excluded"}
                     : decide_enrolment(pod, ns == in.namespaces.end() ? nullptr : &ns->second,
                                        in.agent_namespace);
        std::vector<const Record*> mine;  // live records on this pod's cgroup
        if (view.cgroup_id) {
            for (const auto& r : in.records)
                if (!r.all_detached && covers(r, *view.cgroup_id)) mine.push_back(&r);
        }
        if (d.enrolled) {
            if (!view.cgroup_id) {
                // Being created (the plugin attaches it) or a cgroup layout not found: try later.
                ++out.waiting_for_cgroup;
                continue;
            }
            ++out.enrolled;
            if (mine.empty()) {
                Action a = pod_action(Action::kAttach, pod, d.reason);
                a.record = agent_pod_record(pod.meta.uid);
                a.cgroup_path = view.cgroup_path;
                a.cgroup_id = *view.cgroup_id;
                attaches.push_back(std::move(a));
            } else {
                // The plugin's ADD and this reconciler can both attach a pod that is being created;
                // the plugin's record is the one DEL removes, so the agent's copy goes.
                const bool has_plugin_record = std::any_of(
                    mine.begin(), mine.end(), [](const Record* r) { return r->kind != RecordKind::kAgent; });
                if (has_plugin_record)
                    for (const Record* r : mine)
                        if (r->kind == RecordKind::kAgent)
                            remove(*r, &pod, "duplicate of the plugin's attachment");
            }
            if (!annotated(pod)) annotations.push_back(pod_action(Action::kAnnotate, pod, d.reason));
        } else {
            for (const Record* r : mine) remove(*r, &pod, "released: " + d.reason);
            if (pod.meta.annotations.count(kRedirectionAnnotation))
                annotations.push_back(pod_action(Action::kUnannotate, pod, d.reason));
        }
    }
    // Records of no known pod (standalone containers, pods of other nodes' bpffs in tests, pods not
    // synced yet) are left alone unless detached (above).
    for (auto* list : {&removals, &attaches, &annotations})
        for (auto& a : *list) out.actions.push_back(std::move(a));
    return out;
}

}  // namespace kmesh::enrolment
