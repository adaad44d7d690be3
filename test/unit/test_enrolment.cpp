// decide_enrolment against a table written from ../shared/reference.md section 6 and issue 8
// section 3 (not from the code): which pods Kmesh manages.
#include <doctest/doctest.h>

#include <map>
#include <string>
#include <vector>

#include "common/enrolment.hpp"

using kmesh::decide_enrolment;
using kmesh::namespace_decides;
using kmesh::kube::Namespace;
using kmesh::kube::Pod;

namespace {

using Labels = std::map<std::string, std::string>;

struct Row {
    const char* what;
    Labels pod_labels;
    Labels ns_labels;
    bool enrolled;
    // extras
    bool host_network = false;
    Labels annotations = {};
    std::vector<std::string> containers = {"app"};
    std::string ns = "default";
    bool deleting = false;
    bool no_namespace_object = false;
};

const char* M = "istio.io/dataplane-mode";

}  // namespace

TEST_CASE("decide_enrolment: the rule of reference.md section 6 and issue 8 section 3") {
    const std::vector<Row> rows = {
        {"nothing labelled", {}, {}, false},
        {"namespace Kmesh", {}, {{M, "Kmesh"}}, true},
        {"namespace kmesh, lower case", {}, {{M, "kmesh"}}, true},
        {"namespace KMESH, upper case", {}, {{M, "KMESH"}}, true},
        {"pod Kmesh, namespace unlabelled", {{M, "Kmesh"}}, {}, true},
        {"pod kMeSh", {{M, "kMeSh"}}, {}, true},
        {"pod none opts out of a Kmesh namespace", {{M, "none"}}, {{M, "Kmesh"}}, false},
        {"pod NONE opts out too (case-insensitive)", {{M, "NONE"}}, {{M, "Kmesh"}}, false},
        {"pod Kmesh in a namespace labelled none", {{M, "Kmesh"}}, {{M, "none"}}, true},
        {"namespace ambient is not Kmesh", {}, {{M, "ambient"}}, false},
        {"namespace label with another value", {}, {{M, "Kmeshx"}}, false},
        {"other labels only", {{"app", "web"}}, {{"istio-injection", "enabled"}}, false},
        {"hostNetwork pod in a Kmesh namespace", {}, {{M, "Kmesh"}}, false, true},
        {"hostNetwork pod labelled Kmesh", {{M, "Kmesh"}}, {}, false, true},
        {"sidecar-injected pod (annotation)",
         {},
         {{M, "Kmesh"}},
         false,
         false,
         {{"sidecar.istio.io/status", "{\"containers\":[\"istio-proxy\"]}"}}},
        {"sidecar-injected pod (istio-proxy container)",
         {{M, "Kmesh"}},
         {},
         false,
         false,
         {},
         {"app", "istio-proxy"}},
        {"waypoint", {{"gateway.istio.io/managed", "istio.io-mesh-controller"}}, {{M, "Kmesh"}}, false},
        {"gateway.istio.io/managed with another value is a normal pod",
         {{"gateway.istio.io/managed", "something-else"}},
         {{M, "Kmesh"}},
         true},
        {"the agent's own pod",
         {{"app", "kmesh"}},
         {{M, "Kmesh"}},
         false,
         false,
         {},
         {"app"},
         "kmesh-system"},
        {"app=kmesh outside the agent namespace is a normal pod", {{"app", "kmesh"}}, {{M, "Kmesh"}}, true},
        {"another app in the agent namespace",
         {{"app", "other"}},
         {{M, "Kmesh"}},
         true,
         false,
         {},
         {"app"},
         "kmesh-system"},
        {"pod being deleted", {{M, "Kmesh"}}, {{M, "Kmesh"}}, false, false, {}, {"app"}, "default", true},
        {"no namespace object, pod labelled",
         {{M, "Kmesh"}},
         {},
         true,
         false,
         {},
         {"app"},
         "default",
         false,
         true},
        {"no namespace object, pod unlabelled", {}, {}, false, false, {}, {"app"}, "default", false, true},
    };
    for (const auto& r : rows) {
        CAPTURE(r.what);
        Pod pod;
        pod.meta.name = "p";
        pod.meta.namespace_ = r.ns;
        pod.meta.uid = "u";
        pod.meta.labels = r.pod_labels;
        pod.meta.annotations = r.annotations;
        pod.meta.deleting = r.deleting;
        pod.host_network = r.host_network;
        pod.containers = r.containers;
        Namespace ns;
        ns.meta.name = r.ns;
        ns.meta.labels = r.ns_labels;
        auto d = decide_enrolment(pod, r.no_namespace_object ? nullptr : &ns);
        CHECK(d.enrolled == r.enrolled);
        CHECK(!d.reason.empty());
    }
}

TEST_CASE("decide_enrolment: the agent's namespace and app label are parameters") {
    Pod pod;
    pod.meta.namespace_ = "mesh";
    pod.meta.labels = {{"app", "agent"}, {M, "Kmesh"}};
    CHECK(decide_enrolment(pod, nullptr, "mesh", "agent").enrolled == false);
    CHECK(decide_enrolment(pod, nullptr).enrolled == true);  // defaults: kmesh-system, app=kmesh
}

TEST_CASE("decide_enrolment: Istio's native sidecar (init container) and deploy/base's agent label") {
    Namespace meshed;
    meshed.meta.name = "default";
    meshed.meta.labels = {{M, "Kmesh"}};
    Pod pod;
    pod.meta.namespace_ = "default";
    pod.init_containers = {"istio-proxy"};
    CHECK_FALSE(decide_enrolment(pod, &meshed).enrolled);
    pod.init_containers = {"istio-init"};
    CHECK(decide_enrolment(pod, &meshed).enrolled);
    // The DaemonSet in deploy/base labels its pods app.kubernetes.io/name: kmesh.
    Pod agent;
    agent.meta.namespace_ = "kmesh-system";
    agent.meta.labels = {{"app.kubernetes.io/name", "kmesh"}, {M, "Kmesh"}};
    CHECK_FALSE(decide_enrolment(agent, nullptr).enrolled);
    CHECK_FALSE(namespace_decides(agent));
    Pod plain;
    plain.meta.namespace_ = "default";
    CHECK(namespace_decides(plain));
    plain.meta.labels = {{M, "Kmesh"}};
    CHECK_FALSE(namespace_decides(plain));
}
