// kmesh-cni ADD with a kubeConfig (issue 8 section 3): the labels the API server reports decide;
// pods outside the mesh are never blocked and never touch bpffs; selected pods that cannot be
// enrolled fail with code 11.
#include <doctest/doctest.h>
#include <linux/magic.h>
#include <rapidjson/document.h>
#include <spdlog/logger.h>

#include <filesystem>
#include <memory>
#include <string>

#include "cni/plugin.hpp"
#include "common/pin_layout.hpp"
#include "fake_kernel.hpp"
#include "fake_kube_api.hpp"
#include "temp_dir.hpp"

using namespace kmesh::cni;
using kmesh::PinLayout;
using kmesh::test::FakeKernel;
using kmesh::test::FakeKubeApi;
using kmesh::test::TempDir;
namespace fs = std::filesystem;

namespace {

constexpr const char* kUid = "0a1b2c3d-0000-4000-8000-00000000beef";
constexpr const char* kPrev = R"({"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[]})";
constexpr const char* kMode = "istio.io/dataplane-mode";

struct KubeFixture {
    TempDir bpffs, cgroups;
    FakeKernel kernel;
    FakeKubeApi api;  // owned here; the factory hands out a forwarding wrapper
    int factory_calls = 0;
    std::optional<kmesh::Status> factory_error;
    spdlog::logger log{"test"};
    PinLayout layout{bpffs.path().string()};
    fs::path pod_cgroup;

    KubeFixture() {
        pod_cgroup = cgroups.mkdirs(std::string("kubepods/besteffort/pod") + kUid);
        kernel.magic[bpffs.path().string()] = BPF_FS_MAGIC;
        kernel.magic[fs::canonical(cgroups.path()).string()] = CGROUP2_SUPER_MAGIC;
        api.add_namespace("plain");
        api.add_namespace("meshed", {{kMode, "Kmesh"}});
        api.add_namespace("kube-system", {{kMode, "Kmesh"}});
        api.add_pod("plain", "web", kUid);
        api.add_pod("meshed", "web", kUid);
        api.add_pod("kube-system", "dns", kUid);
    }
    void load_agent() {
        kernel.pin_new_prog(layout.prog(kmesh::kProgConnect4));
        kernel.pin_new_prog(layout.prog(kmesh::kProgConnect6));
        kernel.pin_new_prog(layout.prog(kmesh::kProgSkLookup));
        kernel.pin_new_prog(layout.prog(kmesh::kProgSockops));
        for (const auto& spec : kmesh::kPodProgs)  // issue 10's UDP and getpeername programs
            if (spec.optional) kernel.pin_new_prog(layout.prog(spec.name));
    }
    ApiFactory factory() {
        return [this](const std::string& path) -> kmesh::Result<std::unique_ptr<kmesh::kube::Api>> {
            ++factory_calls;
            CHECK(path == "/etc/cni/net.d/kmesh-cni-kubeconfig");
            if (factory_error) return *factory_error;
            return std::unique_ptr<kmesh::kube::Api>(new Forward(api));
        };
    }
    std::string config(const std::string& extra = R"("kubeConfig":"/etc/cni/net.d/kmesh-cni-kubeconfig")",
                       bool prev = true) {
        std::string c = R"({"cniVersion":"1.0.0","name":"k8s-pod-network","type":"kmesh-cni","logFile":"",)"
                        R"("bpffsRoot":")" +
                        bpffs.path().string() + R"(","cgroupRoot":")" + cgroups.path().string() + R"(")";
        if (!extra.empty()) c += "," + extra;
        if (prev) c += std::string(R"(,"prevResult":)") + kPrev;
        return c + "}";
    }
    Env env(const std::string& command, const std::string& ns, const std::string& name) {
        return Env{command,
                   "c0ffee",
                   "/var/run/netns/x",
                   "eth0",
                   "K8S_POD_NAMESPACE=" + ns + ";K8S_POD_NAME=" + name + ";K8S_POD_UID=" + kUid,
                   "/opt/cni/bin"};
    }
    // Runs the whole plugin; returns the exit code, fills `out`.
    int add(const std::string& ns, const std::string& name, std::string& out, const std::string& cfg = "") {
        return plugin_main(env("ADD", ns, name), cfg.empty() ? config() : cfg, kernel, out, "", factory());
    }
    bool pods_dir_exists() { return fs::exists(layout.pods_dir()); }
    std::uint64_t cgroup_id() {
        std::uint64_t id = 0;
        int fd = kernel.open_cgroup(pod_cgroup.string(), &id);
        kernel.close(fd);
        return id;
    }

    struct Forward : kmesh::kube::Api {
        explicit Forward(FakeKubeApi& a) : a(a) {}
        FakeKubeApi& a;
        kmesh::Result<kmesh::kube::Pod> get_pod(const std::string& n, const std::string& p) override {
            return a.get_pod(n, p);
        }
        kmesh::Result<kmesh::kube::Namespace> get_namespace(const std::string& n) override {
            return a.get_namespace(n);
        }
        kmesh::Status patch_pod_annotations(const std::string& n, const std::string& p,
                                            const kmesh::kube::AnnotationPatch& patch) override {
            return a.patch_pod_annotations(n, p, patch);
        }
        kmesh::Result<kmesh::kube::List<kmesh::kube::Pod>> list_pods(
            const kmesh::kube::ListOptions& o) override {
            return a.list_pods(o);
        }
        kmesh::Result<kmesh::kube::List<kmesh::kube::Namespace>> list_namespaces(
            const kmesh::kube::ListOptions& o) override {
            return a.list_namespaces(o);
        }
        kmesh::Status watch_pods(const kmesh::kube::ListOptions& o, const std::string& rv, int t,
                                 const kmesh::kube::WatchHandler<kmesh::kube::Pod>& h,
                                 const std::atomic<bool>& s) override {
            return a.watch_pods(o, rv, t, h, s);
        }
        kmesh::Status watch_namespaces(const kmesh::kube::ListOptions& o, const std::string& rv, int t,
                                       const kmesh::kube::WatchHandler<kmesh::kube::Namespace>& h,
                                       const std::atomic<bool>& s) override {
            return a.watch_namespaces(o, rv, t, h, s);
        }
    };
};

// The CNI error object's code, 0 when `out` is not one.
int code_of(const std::string& out) {
    rapidjson::Document d;
    d.Parse(out.c_str());
    if (d.HasParseError() || !d.IsObject() || !d.HasMember("code")) return 0;
    return d["code"].GetInt();
}
std::string msg_of(const std::string& out) {
    rapidjson::Document d;
    d.Parse(out.c_str());
    return d.IsObject() && d.HasMember("msg") ? d["msg"].GetString() : "";
}
bool is_prev_result(const std::string& out) {
    rapidjson::Document a, b;
    a.Parse(out.c_str());
    b.Parse(kPrev);
    return !a.HasParseError() && a == b;
}

}  // namespace

TEST_CASE("kubeConfig: a pod in an excluded namespace passes without the API and without the agent") {
    KubeFixture f;  // agent not loaded
    f.factory_error = kmesh::Status(kmesh::Errc::kUnavailable, "API server down");
    std::string out;
    CHECK(f.add("kube-system", "dns", out) == 0);
    CHECK(is_prev_result(out));
    CHECK(f.factory_calls == 0);
    CHECK(f.api.gets == 0);
    CHECK_FALSE(f.pods_dir_exists());
    // A custom list replaces the default.
    const std::string cfg =
        f.config(R"("kubeConfig":"/etc/cni/net.d/kmesh-cni-kubeconfig","excludeNamespaces":["infra"])");
    CHECK(f.add("infra", "x", out, cfg) == 0);
    CHECK(is_prev_result(out));
    CHECK(f.factory_calls == 0);
    CHECK(f.add("kube-system", "dns", out, cfg) == 1);  // no longer excluded: the API is asked
    CHECK(code_of(out) == kErrTryAgainLater);
    CHECK(f.factory_calls == 1);
}

TEST_CASE("kubeConfig: a pod that is not selected passes with prevResult, whatever the agent's state") {
    KubeFixture f;
    f.kernel.magic.clear();  // even bpffsRoot being unusable does not matter: it is never looked at
    std::string out;
    CHECK(f.add("plain", "web", out) == 0);  // agent not loaded
    CHECK(is_prev_result(out));
    CHECK(f.api.gets == 2);
    CHECK_FALSE(f.pods_dir_exists());
    CHECK(f.api.patches.empty());
    // Opted out in a Kmesh namespace, and a hostNetwork pod: same.
    f.api.pods["meshed/web"].meta.labels[kMode] = "none";
    CHECK(f.add("meshed", "web", out) == 0);
    CHECK(is_prev_result(out));
    f.api.pods["meshed/web"].meta.labels.erase(kMode);
    f.api.pods["meshed/web"].host_network = true;
    CHECK(f.add("meshed", "web", out) == 0);
    CHECK_FALSE(f.pods_dir_exists());
    CHECK(f.kernel.fds.empty());
}

TEST_CASE("kubeConfig: API unreachable or erroring fails ADD with code 11 and the reason, nothing applied") {
    KubeFixture f;
    f.load_agent();
    std::string out;
    f.factory_error = kmesh::Status(kmesh::Errc::kInvalidArgument, "kubeconfig: no current-context");
    CHECK(f.add("meshed", "web", out) == 1);
    CHECK(code_of(out) == kErrTryAgainLater);
    CHECK(msg_of(out).find("no current-context") != std::string::npos);
    f.factory_error.reset();
    f.api.fail_get = kmesh::Status(kmesh::Errc::kUnavailable, "GET pods/web: connection refused");
    CHECK(f.add("meshed", "web", out) == 1);
    CHECK(code_of(out) == kErrTryAgainLater);
    CHECK(msg_of(out).find("connection refused") != std::string::npos);
    CHECK(msg_of(out).find("meshed/web") != std::string::npos);
    f.api.fail_get.reset();
    CHECK(f.add("meshed", "gone", out) == 1);  // 404: cannot decide either
    CHECK(code_of(out) == kErrTryAgainLater);
    CHECK_FALSE(f.pods_dir_exists());
    CHECK(f.kernel.link_creates == 0);
}

TEST_CASE(
    "kubeConfig: a selected pod with the agent not loaded fails with code 11 'kmesh agent not running'") {
    KubeFixture f;
    std::string out;
    CHECK(f.add("meshed", "web", out) == 1);
    CHECK(code_of(out) == kErrTryAgainLater);
    CHECK(msg_of(out).find("kmesh agent not running") == 0);
    CHECK(f.kernel.link_creates == 0);
    CHECK(f.api.patches.empty());
    CHECK((!f.pods_dir_exists() || fs::is_empty(f.layout.pods_dir())));
}

TEST_CASE("kubeConfig: a selected pod is attached, then annotated kmesh.net/redirection=enabled") {
    KubeFixture f;
    f.load_agent();
    std::string out;
    CHECK(f.add("meshed", "web", out) == 0);
    CHECK(is_prev_result(out));
    CHECK(f.kernel.attached_links(f.cgroup_id(), f.bpffs.path()) ==
          static_cast<int>(std::size(kmesh::kPodProgs)));
    CHECK(fs::exists(fs::path(f.layout.pod_dir("c0ffee")) / kmesh::kProgConnect4));
    REQUIRE(f.api.patches.size() == 1);
    CHECK(f.api.patches[0].first == "meshed/web");
    CHECK(f.api.pods["meshed/web"].meta.annotations.at("kmesh.net/redirection") == "enabled");
    // Pod label Kmesh in an unlabelled namespace: enrolled as well.
    f.api.pods["plain/web"].meta.labels[kMode] = "kmesh";
    CHECK(f.add("plain", "web", out) == 0);
    CHECK(f.api.pods["plain/web"].meta.annotations.count("kmesh.net/redirection") == 1);
    // DEL needs no API.
    CHECK(plugin_main(f.env("DEL", "meshed", "web"), f.config(R"("kubeConfig":"/nonexistent")", false),
                      f.kernel, out, "", f.factory()) == 0);
    CHECK(f.factory_calls == 2);
    CHECK(f.kernel.attached_links(f.cgroup_id(), f.bpffs.path()) == 0);
}

TEST_CASE("kubeConfig: a failed annotation PATCH does not fail ADD") {
    KubeFixture f;
    f.load_agent();
    f.api.fail_patch = kmesh::Status(kmesh::Errc::kPermissionDenied, "patch pods: forbidden");
    std::string out;
    CHECK(f.add("meshed", "web", out) == 0);
    CHECK(is_prev_result(out));
    CHECK(f.kernel.attached_links(f.cgroup_id(), f.bpffs.path()) ==
          static_cast<int>(std::size(kmesh::kPodProgs)));
    CHECK(f.api.patches.size() == 1);
}

TEST_CASE("kubeConfig: the agent's own pods (kmeshNamespace) are never enrolled") {
    KubeFixture f;
    f.load_agent();
    f.api.add_namespace("mesh-ops", {{kMode, "Kmesh"}});
    f.api.add_pod("mesh-ops", "kmesh-abc", kUid, {{"app", "kmesh"}});
    std::string out;
    CHECK(f.add("mesh-ops", "kmesh-abc", out,
                f.config(
                    R"("kubeConfig":"/etc/cni/net.d/kmesh-cni-kubeconfig","kmeshNamespace":"mesh-ops")")) ==
          0);
    CHECK_FALSE(f.pods_dir_exists());
}

TEST_CASE("without kubeConfig every pod of the chain is enrolled, the API is never asked") {
    KubeFixture f;
    std::string out;
    CHECK(f.add("plain", "web", out, f.config("")) == 1);  // agent not loaded: today's refusal
    CHECK(code_of(out) == kErrTryAgainLater);
    f.load_agent();
    CHECK(f.add("plain", "web", out, f.config("")) == 0);
    CHECK(f.kernel.attached_links(f.cgroup_id(), f.bpffs.path()) ==
          static_cast<int>(std::size(kmesh::kPodProgs)));
    CHECK(f.factory_calls == 0);
}

TEST_CASE("parse_config: excludeNamespaces and kmeshNamespace") {
    auto c = parse_config(R"({"cniVersion":"1.0.0","name":"n","type":"kmesh-cni"})");
    CHECK(c.exclude_namespaces == std::vector<std::string>{"kube-system"});
    CHECK(c.kmesh_namespace == "kmesh-system");
    c = parse_config(
        R"({"cniVersion":"1.0.0","name":"n","type":"kmesh-cni","excludeNamespaces":[],"kmeshNamespace":"k"})");
    CHECK(c.exclude_namespaces.empty());
    CHECK(c.kmesh_namespace == "k");
    CHECK_THROWS_AS(parse_config(R"({"cniVersion":"1.0.0","name":"n","type":"t","excludeNamespaces":"a"})"),
                    CniError);
    CHECK_THROWS_AS(parse_config(R"({"cniVersion":"1.0.0","name":"n","type":"t","excludeNamespaces":[1]})"),
                    CniError);
}

TEST_CASE("kubeConfig: CHECK agrees with ADD: a pod outside the mesh has nothing to verify") {
    KubeFixture f;
    std::string out;
    // Not selected: ADD passed it; CHECK must not fail it (agent not even loaded).
    CHECK(f.add("plain", "web", out) == 0);
    CHECK(plugin_main(f.env("CHECK", "plain", "web"), f.config(), f.kernel, out, "", f.factory()) == 0);
    CHECK(f.api.gets == 2);  // CHECK never asks the API
    // Selected and attached: CHECK verifies the links, and fails when they are gone.
    f.load_agent();
    CHECK(f.add("meshed", "web", out) == 0);
    CHECK(plugin_main(f.env("CHECK", "meshed", "web"), f.config(), f.kernel, out, "", f.factory()) == 0);
    fs::remove(fs::path(f.layout.pod_dir("c0ffee")) / kmesh::kProgConnect4);
    CHECK(plugin_main(f.env("CHECK", "meshed", "web"), f.config(), f.kernel, out, "", f.factory()) == 1);
    CHECK(code_of(out) == kErrNotAttached);
}

TEST_CASE(
    "kubeConfig: the namespace is asked for only when its labels decide; a stale pod object is refused") {
    KubeFixture f;
    std::string out;
    f.api.fail_namespace_get = kmesh::Status(kmesh::Errc::kPermissionDenied, "namespaces is forbidden");
    // Opted out by its own label, or hostNetwork: passes though the namespace cannot be read.
    f.api.pods["meshed/web"].meta.labels[kMode] = "none";
    CHECK(f.add("meshed", "web", out) == 0);
    CHECK(is_prev_result(out));
    f.api.pods["meshed/web"].meta.labels.erase(kMode);
    f.api.pods["meshed/web"].host_network = true;
    CHECK(f.add("meshed", "web", out) == 0);
    CHECK(f.api.namespace_gets == 0);
    // Only the namespace can decide: its GET failing is "try again later".
    f.api.pods["meshed/web"].host_network = false;
    CHECK(f.add("meshed", "web", out) == 1);
    CHECK(code_of(out) == kErrTryAgainLater);
    CHECK(f.api.namespace_gets == 1);
    // The API's pod is an older object of the same name (uid differs): not decided from it.
    f.api.fail_namespace_get.reset();
    f.load_agent();
    f.api.pods["meshed/web"].meta.uid = "11111111-0000-4000-8000-000000000000";
    CHECK(f.add("meshed", "web", out) == 1);
    CHECK(code_of(out) == kErrTryAgainLater);
    CHECK(msg_of(out).find("uid") != std::string::npos);
    CHECK(f.kernel.link_creates == 0);
}
