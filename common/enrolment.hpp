// Which pods Kmesh manages: one rule, used by kmesh-cni at ADD and by the agent's reconciler.
// Facts: ../shared/reference.md section 6 (Istio ambient / Kmesh conventions).
#pragma once

#include <string>

#include "common/kube/api.hpp"

namespace kmesh {

inline constexpr const char* kDataplaneModeLabel = "istio.io/dataplane-mode";
inline constexpr const char* kDataplaneModeKmesh = "Kmesh";  // compared case-insensitively
inline constexpr const char* kDataplaneModeNone = "none";
inline constexpr const char* kSidecarStatusAnnotation = "sidecar.istio.io/status";
inline constexpr const char* kWaypointLabel = "gateway.istio.io/managed";
inline constexpr const char* kWaypointLabelValue = "istio.io-mesh-controller";
inline constexpr const char* kRedirectionAnnotation = "kmesh.net/redirection";
inline constexpr const char* kRedirectionEnabled = "enabled";

struct EnrolmentDecision {
    bool enrolled = false;
    std::string reason;  // why, for logs: "namespace default has istio.io/dataplane-mode=Kmesh", ...
};

// `agent_namespace`/`agent_app_label`: the agent's own pods (label app or app.kubernetes.io/name =
// <agent_app_label> in that namespace) are never enrolled. `ns` nullptr: the namespace is unknown
// (see namespace_decides).
EnrolmentDecision decide_enrolment(const kube::Pod& pod, const kube::Namespace* ns,
                                   const std::string& agent_namespace = "kmesh-system",
                                   const std::string& agent_app_label = "kmesh");

// True when the pod's namespace labels can change the decision for this pod (no exclusion and no
// dataplane-mode label of its own apply): only then does the namespace have to be known.
bool namespace_decides(const kube::Pod& pod, const std::string& agent_namespace = "kmesh-system",
                       const std::string& agent_app_label = "kmesh");

}  // namespace kmesh
