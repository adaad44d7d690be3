// parse_pod / parse_namespace over the fake API server's fixtures (real-shaped core/v1 JSON) and
// over hand-made edge cases. The expected values are read off the fixture files by eye.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "common/kube/api.hpp"

using namespace kmesh;
using namespace kmesh::kube;

namespace {

std::string fixture(const std::string& name) {
    // __FILE__ is relative to the compiler's working directory (the test's build dir) under ccache.
    std::filesystem::path src(__FILE__);
    if (src.is_relative()) src = std::filesystem::read_symlink("/proc/self/exe").parent_path() / src;
    auto path = src.parent_path() / "../kube/fixtures" / name;
    std::ifstream in(path);
    REQUIRE_MESSAGE(in.good(), "cannot open fixture " << path);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

}  // namespace

TEST_CASE("kube parse_pod: kubectl-shaped pod fixture") {
    auto pod = parse_pod(fixture("pod-httpbin.json"));
    REQUIRE_MESSAGE(pod.is_ok(), pod.status().to_string());
    CHECK(pod->meta.name == "httpbin-5c5c5c9d8b-x7k2p");
    CHECK(pod->meta.namespace_ == "demo");
    CHECK(pod->meta.uid == "d8aa9a47-ad0f-4bbe-bc12-ab31605d3211");
    CHECK(pod->meta.resource_version == "550088");
    CHECK(pod->meta.labels.at("app") == "httpbin");
    CHECK(pod->meta.labels.size() == 3);
    CHECK(pod->meta.annotations.at("kubectl.kubernetes.io/restartedAt") == "2026-11-30T10:12:44Z");
    CHECK_FALSE(pod->meta.deleting);
    CHECK(pod->node_name == "node-1");
    CHECK_FALSE(pod->host_network);
    CHECK(pod->containers == std::vector<std::string>{"httpbin"});
    CHECK(pod->init_containers == std::vector<std::string>{"init-config"});
    CHECK(pod->phase == "Running");
    CHECK(pod->pod_ips == std::vector<std::string>{"10.244.0.17", "fd00:10:244::11"});
}

TEST_CASE("kube parse_namespace: fixture") {
    auto ns = parse_namespace(fixture("namespace-demo.json"));
    REQUIRE_MESSAGE(ns.is_ok(), ns.status().to_string());
    CHECK(ns->meta.name == "demo");
    CHECK(ns->meta.namespace_.empty());
    CHECK(ns->meta.labels.at("istio.io/dataplane-mode") == "Kmesh");
    CHECK(ns->meta.resource_version == "549870");
}

TEST_CASE("kube parse_pod: podIP fallback, hostNetwork, deletionTimestamp, null fields") {
    auto pod =
        parse_pod(R"({"metadata":{"name":"p","namespace":"n","deletionTimestamp":"2026-01-01T00:00:00Z",
        "labels":null},"spec":{"hostNetwork":true,"containers":null,"nodeName":"n1"},
        "status":{"podIP":"10.0.0.9"}})");
    REQUIRE_MESSAGE(pod.is_ok(), pod.status().to_string());
    CHECK(pod->meta.deleting);
    CHECK(pod->host_network);
    CHECK(pod->containers.empty());
    CHECK(pod->pod_ips == std::vector<std::string>{"10.0.0.9"});
}

TEST_CASE("kube parse_pod: a watch BOOKMARK object decodes to its resourceVersion") {
    auto pod = parse_pod(R"({"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"1005",
        "creationTimestamp":null},"spec":{"containers":null},"status":{}})");
    REQUIRE(pod.is_ok());
    CHECK(pod->meta.resource_version == "1005");
}

TEST_CASE("kube parse_pod: malformed input is kDataLoss, never an empty pod") {
    CHECK(parse_pod("{").status().code() == Errc::kDataLoss);
    CHECK(parse_pod("[]").status().code() == Errc::kDataLoss);
    CHECK(parse_pod(R"({"spec":{}})").status().code() == Errc::kDataLoss);  // no metadata
    CHECK(parse_pod(R"({"metadata":{"name":5}})").status().code() == Errc::kDataLoss);
    CHECK(parse_pod(R"({"metadata":{"name":"p","labels":{"a":1}}})").status().code() == Errc::kDataLoss);
    CHECK(parse_pod(R"({"metadata":{"name":"p"},"spec":{"hostNetwork":"yes"}})").status().code() ==
          Errc::kDataLoss);
    CHECK(parse_pod(R"({"metadata":{"name":"p"},"spec":{"containers":[{"name":7}]}})").status().code() ==
          Errc::kDataLoss);
    CHECK(parse_namespace(R"({"metadata":[]})").status().code() == Errc::kDataLoss);
}
