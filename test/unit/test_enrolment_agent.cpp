// The agent's enrolment reconciler: the planner (pure) and the executor against a fake kernel, a
// temp bpffs and fake kubelet cgroup trees (cgroupfs and systemd drivers).
#include <doctest/doctest.h>
#include <spdlog/logger.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "agent/src/enrolment/executor.hpp"
#include "agent/src/enrolment/planner.hpp"
#include "cni/plugin.hpp"
#include "fake_kernel.hpp"
#include "fake_kube_api.hpp"
#include "temp_dir.hpp"

using namespace kmesh::enrolment;
using kmesh::PinLayout;
using kmesh::kube::Namespace;
using kmesh::kube::Pod;
using kmesh::test::FakeKernel;
using kmesh::test::FakeKubeApi;
using kmesh::test::TempDir;
namespace fs = std::filesystem;

namespace {

constexpr const char* kMode = "istio.io/dataplane-mode";

Pod pod(const std::string& ns, const std::string& name, const std::string& uid,
        std::map<std::string, std::string> labels = {}) {
    Pod p;
    p.meta.namespace_ = ns;
    p.meta.name = name;
    p.meta.uid = uid;
    p.meta.labels = std::move(labels);
    p.containers = {"app"};
    return p;
}

Inputs base() {
    Inputs in;
    Namespace meshed, plain;
    meshed.meta.name = "meshed";
    meshed.meta.labels = {{kMode, "Kmesh"}};
    plain.meta.name = "plain";
    in.namespaces = {{"meshed", meshed}, {"plain", plain}};
    return in;
}

int count(const Plan& p, Action::Kind k) {
    int n = 0;
    for (const auto& a : p.actions) n += a.kind == k;
    return n;
}

}  // namespace

TEST_CASE("planner: a selected pod without links is attached as _pod_<uid> and annotated") {
    Inputs in = base();
    in.pods.push_back({pod("meshed", "a", "uid-a"), 501, "/cg/poduid-a"});
    Plan p = plan(in);
    REQUIRE(p.actions.size() == 2);
    CHECK(p.actions[0].kind == Action::kAttach);
    CHECK(p.actions[0].record == "_pod_uid-a");
    CHECK(p.actions[0].cgroup_id == 501);
    CHECK(p.actions[0].cgroup_path == "/cg/poduid-a");
    CHECK(p.actions[1].kind == Action::kAnnotate);
    CHECK(p.actions[1].pod_name == "a");
    CHECK(p.enrolled == 1);
}

TEST_CASE("planner: a selected pod the plugin attached needs nothing but the annotation") {
    Inputs in = base();
    in.pods.push_back({pod("meshed", "a", "uid-a"), 501, "/cg/a"});
    in.records.push_back({"c0ffee", RecordKind::kContainer, {501, 501}, false});
    Plan p = plan(in);
    REQUIRE(p.actions.size() == 1);
    CHECK(p.actions[0].kind == Action::kAnnotate);
    in.pods[0].pod.meta.annotations["kmesh.net/redirection"] = "enabled";
    CHECK(plan(in).actions.empty());
    CHECK(plan(in).enrolled == 1);
}

TEST_CASE(
    "planner: an unselected pod loses every record on its cgroup, whoever made it, and the annotation") {
    Inputs in = base();
    in.pods.push_back({pod("plain", "a", "uid-a"), 501, "/cg/a"});
    in.pods[0].pod.meta.annotations["kmesh.net/redirection"] = "enabled";
    in.records.push_back({"c0ffee", RecordKind::kContainer, {501, 501}, false});
    in.records.push_back({"_pod_uid-a", RecordKind::kAgent, {501, 501}, false});
    in.records.push_back({"other", RecordKind::kContainer, {777, 777}, false});  // another cgroup
    Plan p = plan(in);
    CHECK(count(p, Action::kRemoveRecord) == 2);
    CHECK(count(p, Action::kUnannotate) == 1);
    for (const auto& a : p.actions)
        if (a.kind == Action::kRemoveRecord) CHECK(a.record != "other");
    CHECK(p.enrolled == 0);
    // A pod label "none" in a Kmesh namespace: same.
    in.pods[0].pod.meta.namespace_ = "meshed";
    in.pods[0].pod.meta.labels[kMode] = "none";
    CHECK(count(plan(in), Action::kRemoveRecord) == 2);
}

TEST_CASE("planner: detached records go, records of unknown pods with live links stay") {
    Inputs in = base();
    in.records.push_back({"gone", RecordKind::kContainer, {}, true});
    in.records.push_back({"_pod_old", RecordKind::kAgent, {}, true});
    in.records.push_back({"_cgroup_9", RecordKind::kShared, {}, true});
    in.records.push_back({"standalone", RecordKind::kContainer, {900, 900}, false});
    in.records.push_back({"_pod_unknown", RecordKind::kAgent, {901, 901}, false});
    in.records.push_back({"halfmade", RecordKind::kContainer, {}, false});  // no links at all
    Plan p = plan(in);
    CHECK(p.actions.size() == 3);
    for (const auto& a : p.actions) {
        CHECK(a.kind == Action::kRemoveRecord);
        CHECK((a.record == "gone" || a.record == "_pod_old" || a.record == "_cgroup_9"));
    }
}

TEST_CASE("planner: no cgroup yet means retry later; terminating pods are left to their DEL") {
    Inputs in = base();
    in.pods.push_back({pod("meshed", "new", "uid-n"), std::nullopt, ""});
    Plan p = plan(in);
    CHECK(p.actions.empty());
    CHECK(p.waiting_for_cgroup == 1);
    Inputs t = base();
    t.pods.push_back({pod("plain", "bye", "uid-b"), 501, "/cg/b"});
    t.pods[0].pod.meta.deleting = true;
    t.records.push_back({"c0ffee", RecordKind::kContainer, {501}, false});
    CHECK(plan(t).actions.empty());
}

TEST_CASE("planner: the agent's copy goes when the plugin also attached the pod") {
    Inputs in = base();
    in.pods.push_back({pod("meshed", "a", "uid-a"), 501, "/cg/a"});
    in.pods[0].pod.meta.annotations["kmesh.net/redirection"] = "enabled";
    in.records.push_back({"_pod_uid-a", RecordKind::kAgent, {501, 501}, false});
    CHECK(plan(in).actions.empty());
    in.records.push_back({"c0ffee", RecordKind::kContainer, {501, 501}, false});
    Plan p = plan(in);
    REQUIRE(p.actions.size() == 1);
    CHECK(p.actions[0].kind == Action::kRemoveRecord);
    CHECK(p.actions[0].record == "_pod_uid-a");
}

TEST_CASE("planner: the agent's own pods, waypoints, sidecars and hostNetwork pods are never attached") {
    Inputs in = base();
    Namespace sys;
    sys.meta.name = "kmesh-system";
    sys.meta.labels = {{kMode, "Kmesh"}};
    in.namespaces["kmesh-system"] = sys;
    in.pods.push_back({pod("kmesh-system", "kmesh-x", "u1", {{"app", "kmesh"}}), 1, "/1"});
    in.pods.push_back(
        {pod("meshed", "wp", "u2", {{"gateway.istio.io/managed", "istio.io-mesh-controller"}}), 2, "/2"});
    in.pods.push_back({pod("meshed", "sc", "u3"), 3, "/3"});
    in.pods.back().pod.containers.push_back("istio-proxy");
    in.pods.push_back({pod("meshed", "hn", "u4"), 4, "/4"});
    in.pods.back().pod.host_network = true;
    CHECK(plan(in).actions.empty());
}

namespace {

// A node: a temp bpffs, a fake cgroup v2 tree, the agent's programs pinned, the fake API.
struct Node {
    TempDir bpffs, cgroups;
    FakeKernel kernel;
    FakeKubeApi api;
    spdlog::logger log{"test"};
    PinLayout layout{bpffs.path().string()};
    Executor exec{kernel, api, {layout, cgroups.path().string(), "kmesh-system"}, log};

    Node() {
        api.add_namespace("meshed", {{kMode, "Kmesh"}});
        api.add_namespace("plain");
    }
    void load_agent() {
        kernel.pin_new_prog(layout.prog(kmesh::kProgConnect4));
        kernel.pin_new_prog(layout.prog(kmesh::kProgConnect6));
        kernel.pin_new_prog(layout.prog(kmesh::kProgSkLookup));
        kernel.pin_new_prog(layout.prog(kmesh::kProgSockops));
        for (const auto& spec : kmesh::kPodProgs)  // issue 10's UDP and getpeername programs
            if (spec.optional) kernel.pin_new_prog(layout.prog(spec.name));
    }
    PassResult pass() {
        std::vector<Pod> pods;
        for (const auto& [k, p] : api.pods) pods.push_back(p);
        return exec.pass(pods, api.namespaces);
    }
    std::uint64_t id_of(const fs::path& dir) {
        std::uint64_t id = 0;
        int fd = kernel.open_cgroup(dir.string(), &id);
        REQUIRE(fd >= 0);
        kernel.close(fd);
        return id;
    }
    int links(const fs::path& cg) { return kernel.attached_links(id_of(cg), bpffs.path()); }
};

}  // namespace

TEST_CASE("executor: enrols a running pod, is idempotent, releases it when the label goes") {
    Node n;
    n.load_agent();
    const fs::path cg = n.cgroups.mkdirs("kubepods/besteffort/pod1111-aaaa");
    n.api.add_pod("meshed", "web", "1111-aaaa");
    PassResult r = n.pass();
    CHECK(r.errors.empty());
    CHECK(r.plan.enrolled == 1);
    CHECK(n.links(cg) == static_cast<int>(std::size(kmesh::kPodProgs)));
    CHECK(fs::exists(fs::path(n.layout.pods_dir()) / "_pod_1111-aaaa" / kmesh::kProgConnect4));
    CHECK(n.api.pods["meshed/web"].meta.annotations.at("kmesh.net/redirection") == "enabled");
    CHECK(n.kernel.fds.empty());

    const int creates = n.kernel.link_creates;
    r = n.pass();
    CHECK(r.plan.actions.empty());
    CHECK_FALSE(r.retry());
    CHECK(n.kernel.link_creates == creates);

    n.api.namespaces["meshed"].meta.labels.clear();  // namespace relabelled
    r = n.pass();
    CHECK(r.errors.empty());
    CHECK(n.links(cg) == 0);
    CHECK_FALSE(fs::exists(fs::path(n.layout.pods_dir()) / "_pod_1111-aaaa"));
    CHECK(n.api.pods["meshed/web"].meta.annotations.count("kmesh.net/redirection") == 0);
    CHECK(n.pass().plan.actions.empty());
}

TEST_CASE(
    "executor: finds systemd-driver pod cgroups (kubepods-besteffort-pod<uid_with_underscores>.slice)") {
    Node n;
    n.load_agent();
    const fs::path cg = n.cgroups.mkdirs(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2222_bbbb_cccc.slice");
    n.api.add_pod("meshed", "web", "2222-bbbb-cccc");
    PassResult r = n.pass();
    CHECK(r.errors.empty());
    CHECK(n.links(cg) == static_cast<int>(std::size(kmesh::kPodProgs)));
}

TEST_CASE("executor: releases a pod the plugin enrolled once it is no longer selected") {
    Node n;
    n.load_agent();
    const fs::path cg = n.cgroups.mkdirs("kubepods/pod3333");
    n.api.add_pod("plain", "web", "3333");
    // The plugin's ADD (no kubeConfig: it attached) made pods/ctr1.
    auto req = kmesh::cni::parse_request(
        kmesh::cni::Env{"ADD", "ctr1", "/n", "eth0", "K8S_POD_UID=3333", "/opt"},
        R"({"cniVersion":"1.0.0","name":"net","type":"kmesh-cni","logFile":"","bpffsRoot":")" +
            n.bpffs.path().string() + R"(","cgroupRoot":")" + n.cgroups.path().string() +
            R"(","prevResult":{}})");
    n.kernel.magic[n.bpffs.path().string()] = 0xcafe4a11;                   // BPF_FS_MAGIC
    n.kernel.magic[fs::canonical(n.cgroups.path()).string()] = 0x63677270;  // CGROUP2_SUPER_MAGIC
    kmesh::cni::run(req, n.kernel, n.log);
    REQUIRE(n.links(cg) == static_cast<int>(std::size(kmesh::kPodProgs)));
    PassResult r = n.pass();
    CHECK(r.errors.empty());
    CHECK(n.links(cg) == 0);
    CHECK_FALSE(fs::exists(n.layout.pod_dir("ctr1")));
}

TEST_CASE("executor: records of deleted pods go, records of unknown live cgroups stay") {
    Node n;
    n.load_agent();
    const fs::path a = n.cgroups.mkdirs("kubepods/pod4444"), b = n.cgroups.mkdirs("standalone");
    n.api.add_pod("meshed", "web", "4444");
    CHECK(n.pass().errors.empty());
    REQUIRE(n.links(a) == static_cast<int>(std::size(kmesh::kPodProgs)));
    // A standalone container (no pod) attached by the plugin elsewhere: simulate with a second pass
    // on a pod that then disappears from the API but keeps its cgroup.
    n.api.add_pod("meshed", "other", "5555");
    const fs::path c = n.cgroups.mkdirs("kubepods/pod5555");
    CHECK(n.pass().errors.empty());
    REQUIRE(n.links(c) == static_cast<int>(std::size(kmesh::kPodProgs)));
    n.api.pods.erase("meshed/other");  // unknown now, but its cgroup lives: left alone
    CHECK(n.pass().plan.actions.empty());
    CHECK(n.links(c) == static_cast<int>(std::size(kmesh::kPodProgs)));
    // The pod deleted while the agent was down: its cgroup went, the kernel detached its links.
    const auto id = n.id_of(a);
    for (auto& [oid, o] : n.kernel.objects)
        if (o.kind == FakeKernel::Object::kLink && o.cgroup_id == id) o.cgroup_id = 0;
    n.api.pods.erase("meshed/web");
    PassResult r = n.pass();
    CHECK(r.errors.empty());
    CHECK_FALSE(fs::exists(fs::path(n.layout.pods_dir()) / "_pod_4444"));
    CHECK(fs::exists(fs::path(n.layout.pods_dir()) / "_pod_5555"));
    (void)b;
}

TEST_CASE("executor: agent not loaded or cgroup missing: nothing applied, retried, no annotation") {
    Node n;
    const fs::path cg = n.cgroups.mkdirs("kubepods/pod6666");
    n.api.add_pod("meshed", "web", "6666");
    n.api.add_pod("meshed", "creating", "7777");  // no cgroup yet
    PassResult r = n.pass();
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].message().find("kmesh agent not running") != std::string::npos);
    CHECK(r.plan.waiting_for_cgroup == 1);
    CHECK(r.retry());
    CHECK(n.api.patches.empty());
    CHECK(n.links(cg) == 0);
    CHECK(fs::is_empty(n.layout.pods_dir()));
    n.load_agent();
    r = n.pass();
    CHECK(r.errors.empty());
    CHECK(n.links(cg) == static_cast<int>(std::size(kmesh::kPodProgs)));
    CHECK(r.retry());  // "creating" still has no cgroup
    n.cgroups.mkdirs("kubepods/pod7777");
    r = n.pass();
    CHECK(r.plan.enrolled == 2);
    CHECK_FALSE(n.pass().retry());
}

TEST_CASE("executor: a failed annotation is an error retried, the attachment stays") {
    Node n;
    n.load_agent();
    const fs::path cg = n.cgroups.mkdirs("kubepods/pod8888");
    n.api.add_pod("meshed", "web", "8888");
    n.api.fail_patch = kmesh::Status(kmesh::Errc::kUnavailable, "API down");
    PassResult r = n.pass();
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].message().find("API down") != std::string::npos);
    CHECK(n.links(cg) == static_cast<int>(std::size(kmesh::kPodProgs)));
    n.api.fail_patch.reset();
    r = n.pass();
    CHECK(r.errors.empty());
    CHECK(n.api.pods["meshed/web"].meta.annotations.count("kmesh.net/redirection") == 1);
}

TEST_CASE("kmesh-cni DEL of a pod also removes the agent's record of it (pods/_pod_<uid>)") {
    Node n;
    n.load_agent();
    const fs::path cg = n.cgroups.mkdirs("kubepods/pod9999");
    n.api.add_pod("meshed", "web", "9999");
    CHECK(n.pass().errors.empty());
    REQUIRE(n.links(cg) == static_cast<int>(std::size(kmesh::kPodProgs)));
    n.kernel.magic[n.bpffs.path().string()] = 0xcafe4a11;  // BPF_FS_MAGIC
    auto del = [&](const std::string& uid) {
        return kmesh::cni::run(
            kmesh::cni::parse_request(kmesh::cni::Env{"DEL", "sandbox1", "", "", "K8S_POD_UID=" + uid, ""},
                                      R"({"cniVersion":"1.0.0","name":"net","type":"kmesh-cni","logFile":"",)"
                                      R"("bpffsRoot":")" +
                                          n.bpffs.path().string() + R"("})"),
            n.kernel, n.log);
    };
    del("1234");  // another pod: untouched
    CHECK(n.links(cg) == static_cast<int>(std::size(kmesh::kPodProgs)));
    del("9999");
    CHECK(n.links(cg) == 0);
    CHECK_FALSE(fs::exists(fs::path(n.layout.pods_dir()) / "_pod_9999"));
}

TEST_CASE("planner: excluded namespaces are never enrolled by the agent, labels or not (as kmesh-cni)") {
    Inputs in = base();
    Namespace sys;
    sys.meta.name = "kube-system";
    sys.meta.labels = {{kMode, "Kmesh"}};
    in.namespaces["kube-system"] = sys;
    in.pods.push_back({pod("kube-system", "coredns", "uid-dns", {{kMode, "Kmesh"}}), 601, "/cg/dns"});
    Plan p = plan(in);
    CHECK(count(p, Action::kAttach) == 0);
    CHECK(p.enrolled == 0);
    // Attached earlier (e.g. by a chain without kubeConfig): released, as any unselected pod.
    in.records.push_back({"dnsbox", RecordKind::kContainer, {601, 601}, false});
    CHECK(count(plan(in), Action::kRemoveRecord) == 1);
    // The list is an option: with none excluded the same pod is enrolled.
    in.exclude_namespaces.clear();
    in.records.clear();
    CHECK(count(plan(in), Action::kAttach) == 1);
}

TEST_CASE("planner: a pod whose namespace is not known yet is neither enrolled nor released") {
    Inputs in = base();
    // The plugin attached it after a fresh GET of a new Kmesh namespace the watch has not delivered.
    in.pods.push_back({pod("brand-new", "a", "uid-a"), 701, "/cg/a"});
    in.records.push_back({"c0ffee", RecordKind::kContainer, {701, 701}, false});
    Plan p = plan(in);
    CHECK(p.actions.empty());
    CHECK(p.waiting_for_namespace == 1);
    // Its own label decides without the namespace: planned as usual.
    in.pods[0].pod.meta.labels[kMode] = "none";
    CHECK(count(plan(in), Action::kRemoveRecord) == 1);
}

// ---- the sk_lookup link on the pod's network namespace, found from a process of the pod ----

namespace {
void write_procs(const fs::path& cgroup, const std::string& pids) {
    std::ofstream(cgroup / "cgroup.procs") << pids;
}
int netns_links(Node& n, const std::string& path) {
    return n.kernel.attached_netns_links(n.kernel.netns_ino_of(path), n.bpffs.path());
}
}  // namespace

TEST_CASE("executor: attaches sk_lookup to the netns of a process in the pod cgroup") {
    Node n;
    n.load_agent();
    const fs::path cg = n.cgroups.mkdirs("kubepods/besteffort/pod1111-aaaa");
    write_procs(n.cgroups.mkdirs("kubepods/besteffort/pod1111-aaaa/ctr1"), "4242\n4243\n");
    n.api.add_pod("meshed", "web", "1111-aaaa");
    PassResult r = n.pass();
    CHECK(r.errors.empty());
    CHECK(n.links(cg) == static_cast<int>(std::size(kmesh::kPodProgs)));
    CHECK(netns_links(n, "/proc/4242/ns/net") == 1);
    CHECK(fs::exists(fs::path(n.layout.pods_dir()) / "_pod_1111-aaaa" / kmesh::kProgSkLookup));
    const int creates = n.kernel.link_creates;
    CHECK(n.pass().plan.actions.empty());
    CHECK(n.kernel.link_creates == creates);

    n.api.namespaces["meshed"].meta.labels.clear();  // released: the netns link goes too
    n.pass();
    CHECK(netns_links(n, "/proc/4242/ns/net") == 0);
    CHECK(n.kernel.fds.empty());
}

TEST_CASE("executor: never attaches sk_lookup to the node's own netns") {
    Node n;
    n.load_agent();
    const fs::path cg = n.cgroups.mkdirs("kubepods/besteffort/pod1111-aaaa");
    write_procs(cg, "1\n");  // a process in the node's namespace (/proc/1/ns/net)
    n.api.add_pod("meshed", "web", "1111-aaaa");
    CHECK(n.pass().errors.empty());
    CHECK(n.links(cg) == static_cast<int>(std::size(kmesh::kPodProgs)));
    CHECK(netns_links(n, "/proc/1/ns/net") == 0);
    CHECK_FALSE(fs::exists(fs::path(n.layout.pods_dir()) / "_pod_1111-aaaa" / kmesh::kProgSkLookup));
    CHECK(n.kernel.fds.empty());
}

TEST_CASE("records without the sk_lookup link (older kmesh, no process yet) get it once a process is found") {
    Node n;
    n.load_agent();
    const fs::path cg = n.cgroups.mkdirs("kubepods/besteffort/pod1111-aaaa");
    n.api.add_pod("meshed", "web", "1111-aaaa");
    CHECK(n.pass().errors.empty());  // no process yet: enrolled without it
    CHECK(n.links(cg) == static_cast<int>(std::size(kmesh::kPodProgs)));
    CHECK_FALSE(fs::exists(fs::path(n.layout.pods_dir()) / "_pod_1111-aaaa" / kmesh::kProgSkLookup));
    write_procs(cg, "777\n");
    CHECK(n.pass().errors.empty());
    CHECK(netns_links(n, "/proc/777/ns/net") == 1);

    // A container record made by kmesh-cni before issue 9: cgroup links only.
    const fs::path cg2 = n.cgroups.mkdirs("kubepods/burstable/pod2222");
    std::vector<kmesh::PinnedProg> progs =
        kmesh::open_pod_progs(n.kernel, n.layout, kmesh::kErrTryAgainLater);
    std::uint64_t id = 0;
    kmesh::KernelFd cgfd = kmesh::open_pod_cgroup(cg2, n.kernel, kmesh::kErrAttach, &id, n.log);
    kmesh::attach_locked(n.kernel, n.layout, progs, cgfd.get(), id, false, "oldctr", "net", n.log);
    cgfd.reset();
    progs.clear();
    CHECK_FALSE(fs::exists(fs::path(n.layout.pod_dir("oldctr")) / kmesh::kProgSkLookup));
    // No process: nothing to attach to, nothing attached.
    CHECK(kmesh::attach_missing_netns_links(n.kernel, n.layout, n.cgroups.path(), n.log) == 0);
    write_procs(n.cgroups.mkdirs("kubepods/burstable/pod2222/sandbox"), "888\n");
    CHECK(kmesh::attach_missing_netns_links(n.kernel, n.layout, n.cgroups.path(), n.log) == 1);
    CHECK(netns_links(n, "/proc/888/ns/net") == 1);
    CHECK(fs::exists(fs::path(n.layout.pod_dir("oldctr")) / kmesh::kProgSkLookup));
    CHECK(kmesh::attach_missing_netns_links(n.kernel, n.layout, n.cgroups.path(), n.log) == 0);
    CHECK(n.kernel.fds.empty());
}
