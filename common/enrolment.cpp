#include "common/enrolment.hpp"

#include <algorithm>
#include <cctype>

namespace kmesh {

namespace {

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

const std::string* find(const std::map<std::string, std::string>& m, const char* key) {
    auto it = m.find(key);
    return it == m.end() ? nullptr : &it->second;
}

EnrolmentDecision no(std::string reason) { return {false, std::move(reason)}; }

}  // namespace

EnrolmentDecision decide_enrolment(const kube::Pod& pod, const kube::Namespace* ns,
                                   const std::string& agent_namespace, const std::string& agent_app_label) {
    const auto& meta = pod.meta;
    // Exclusions first: they hold whatever the labels say.
    if (meta.deleting) return no("pod is being deleted");
    if (pod.host_network) return no("hostNetwork pod");
    if (find(meta.annotations, kSidecarStatusAnnotation))
        return no(std::string("has an Istio sidecar (annotation ") + kSidecarStatusAnnotation + ")");
    // Istio's native sidecar (Kubernetes >= 1.28) is an init container with restartPolicy Always.
    for (const auto* list : {&pod.containers, &pod.init_containers})
        if (std::find(list->begin(), list->end(), "istio-proxy") != list->end())
            return no("has an Istio sidecar (container istio-proxy)");
    if (auto* w = find(meta.labels, kWaypointLabel); w && *w == kWaypointLabelValue)
        return no(std::string("waypoint (") + kWaypointLabel + "=" + kWaypointLabelValue + ")");
    // The agent's pods: `app` (Kmesh's manifests) or `app.kubernetes.io/name` (deploy/base).
    for (const char* key : {"app", "app.kubernetes.io/name"})
        if (auto* app = find(meta.labels, key);
            app && *app == agent_app_label && meta.namespace_ == agent_namespace)
            return no("the kmesh agent's own pod");

    // The pod's own label beats its namespace's.
    if (auto* mode = find(meta.labels, kDataplaneModeLabel)) {
        if (iequals(*mode, kDataplaneModeKmesh))
            return {true, std::string("pod has ") + kDataplaneModeLabel + "=" + *mode};
        if (iequals(*mode, kDataplaneModeNone))
            return no(std::string("pod opts out with ") + kDataplaneModeLabel + "=" + *mode);
        // Another data plane (e.g. ambient's ztunnel): not ours, whatever the namespace says.
        return no(std::string("pod has ") + kDataplaneModeLabel + "=" + *mode + " (not Kmesh)");
    }
    if (ns) {
        if (auto* mode = find(ns->meta.labels, kDataplaneModeLabel);
            mode && iequals(*mode, kDataplaneModeKmesh))
            return {true, "namespace " + ns->meta.name + " has " + kDataplaneModeLabel + "=" + *mode};
    }
    return no(std::string("neither the pod nor namespace ") + (ns ? ns->meta.name : meta.namespace_) +
              " has " + kDataplaneModeLabel + "=" + kDataplaneModeKmesh);
}

bool namespace_decides(const kube::Pod& pod, const std::string& agent_namespace,
                       const std::string& agent_app_label) {
    kube::Namespace meshed, plain;
    meshed.meta.labels[kDataplaneModeLabel] = kDataplaneModeKmesh;
    return decide_enrolment(pod, &meshed, agent_namespace, agent_app_label).enrolled !=
           decide_enrolment(pod, &plain, agent_namespace, agent_app_label).enrolled;
}

}  // namespace kmesh
