// Pods enrolled by an agent with fewer pod programs (before issue 10: connect4, connect6, sockops)
// get the cgroup links they lack (attach_missing_cgroup_links), and optional programs the agent did
// not pin (a kernel without the hook) are skipped, not an error.
#include <doctest/doctest.h>
#include <spdlog/logger.h>

#include <filesystem>
#include <string>

#include "common/pod_links.hpp"
#include "test/unit/fake_kernel.hpp"
#include "test/unit/temp_dir.hpp"

namespace fs = std::filesystem;
using kmesh::kPodProgs;
using kmesh::test::FakeKernel;
using kmesh::test::TempDir;

namespace {

constexpr size_t kRequired = 3;  // connect4, connect6, sockops

struct Node {
    TempDir bpffs, cgroups;
    FakeKernel kernel;
    spdlog::logger log{"test"};
    kmesh::PinLayout layout{bpffs.path().string()};

    Node() { fs::create_directories(layout.pods_dir()); }
    // An agent that pins the required programs, and the optional ones when `all`.
    void pin_programs(bool all) {
        for (const auto& spec : kPodProgs)
            if (!spec.optional || all) kernel.pin_new_prog(layout.prog(spec.name));
        kernel.pin_new_prog(layout.prog(kmesh::kNetnsProg.name));
    }
    std::uint64_t cgroup(const std::string& rel, fs::path* dir = nullptr) {
        fs::path d = cgroups.mkdirs(rel);
        if (dir) *dir = d;
        std::uint64_t id = 0;
        int fd = kernel.open_cgroup(d.string(), &id);
        REQUIRE(fd >= 0);
        kernel.close(fd);
        return id;
    }
    // Attaches what the pinned programs allow, as kmesh-cni does.
    void attach(const fs::path& cg_dir, const std::string& record) {
        auto progs = kmesh::open_pod_progs(kernel, layout, kmesh::kErrTryAgainLater);
        std::uint64_t id = 0;
        int fd = kernel.open_cgroup(cg_dir.string(), &id);
        REQUIRE(fd >= 0);
        kmesh::attach_locked(kernel, layout, progs, fd, id, false, record, "", log);
        kernel.close(fd);
    }
    int links(std::uint64_t cg) { return kernel.attached_links(cg, bpffs.path()); }
};

}  // namespace

TEST_CASE("an older agent's pins: the optional programs are skipped, the required ones attached") {
    Node n;
    n.pin_programs(false);
    fs::path dir;
    auto cg = n.cgroup("kubepods/pod1", &dir);
    auto progs = kmesh::open_pod_progs(n.kernel, n.layout, kmesh::kErrTryAgainLater);
    REQUIRE(progs.size() == std::size(kPodProgs) + 1);
    for (size_t i = 0; i < std::size(kPodProgs); ++i) CHECK(progs[i].present() == !kPodProgs[i].optional);
    progs.clear();
    n.attach(dir, "c1");
    CHECK(n.links(cg) == static_cast<int>(kRequired));
    for (const auto& spec : kPodProgs)
        CHECK(fs::exists(fs::path(n.layout.pod_dir("c1")) / spec.name) == !spec.optional);
}

TEST_CASE("a missing required program is still an error") {
    Node n;
    n.kernel.pin_new_prog(n.layout.prog(kmesh::kProgConnect4));
    CHECK_THROWS_AS(kmesh::open_pod_progs(n.kernel, n.layout, kmesh::kErrTryAgainLater), kmesh::PodLinkError);
}

TEST_CASE("the new agent completes records made with fewer programs, on their own cgroups") {
    Node n;
    n.pin_programs(false);
    fs::path d1, d2, d3;
    auto cg1 = n.cgroup("kubepods/pod1", &d1);
    auto cg2 = n.cgroup("kubepods/besteffort/pod2", &d2);
    auto cg3 = n.cgroup("kubepods/besteffort/pod3", &d3);
    n.attach(d1, "c1");
    n.attach(d2, "_pod_uid2");
    n.attach(d3, "c3");
    REQUIRE(n.links(cg1) == static_cast<int>(kRequired));

    // Upgrade: the new agent pins every program (the required ones again: new program ids).
    n.pin_programs(true);
    // A record whose cgroup is gone (links detached) is left alone: nothing to attach to.
    fs::remove(d3);
    for (auto& [id, o] : n.kernel.objects)
        if (o.kind == FakeKernel::Object::kLink && o.cgroup_id == cg3) o.cgroup_id = 0;

    const int optional = static_cast<int>(std::size(kPodProgs) - kRequired);
    CHECK(kmesh::attach_missing_cgroup_links(n.kernel, n.layout, n.cgroups.path(), n.log) == 2 * optional);
    CHECK(n.links(cg1) == static_cast<int>(std::size(kPodProgs)));
    CHECK(n.links(cg2) == static_cast<int>(std::size(kPodProgs)));
    for (const auto& spec : kPodProgs) {
        CHECK(fs::exists(fs::path(n.layout.pod_dir("c1")) / spec.name));
        CHECK(fs::exists(fs::path(n.layout.pod_dir("_pod_uid2")) / spec.name));
        CHECK(fs::exists(fs::path(n.layout.pod_dir("c3")) / spec.name) == !spec.optional);
    }
    // Each new link runs the program pinned under its name, with its attach type.
    for (const auto& spec : kPodProgs) {
        int link = n.kernel.obj_get((fs::path(n.layout.pod_dir("c1")) / spec.name).string());
        int prog = n.kernel.obj_get(n.layout.prog(spec.name));
        kmesh::LinkInfo info;
        REQUIRE(n.kernel.link_info(link, &info) == 0);
        std::uint32_t id = 0;
        REQUIRE(n.kernel.prog_id(prog, &id) == 0);
        if (spec.optional) CHECK(info.prog_id == id);
        CHECK(info.attach_type == static_cast<std::uint32_t>(spec.type));
        CHECK(info.cgroup_id == cg1);
        n.kernel.close(link);
        n.kernel.close(prog);
    }
    // Complete records: a second pass attaches nothing.
    const int creates = n.kernel.link_creates;
    CHECK(kmesh::attach_missing_cgroup_links(n.kernel, n.layout, n.cgroups.path(), n.log) == 0);
    CHECK(n.kernel.link_creates == creates);
}

TEST_CASE("one unpinned link is put back; a failing attach leaves the record as it was") {
    Node n;
    n.pin_programs(true);
    fs::path d1;
    auto cg1 = n.cgroup("kubepods/pod1", &d1);
    n.attach(d1, "c1");
    const fs::path rec = n.layout.pod_dir("c1");
    fs::remove(rec / kmesh::kProgRecvmsg4);
    fs::remove(rec / kmesh::kProgGetpeername6);
    REQUIRE(n.links(cg1) == static_cast<int>(std::size(kPodProgs)) - 2);

    n.kernel.fail_link_type = BPF_CGROUP_INET6_GETPEERNAME;
    CHECK(kmesh::attach_missing_cgroup_links(n.kernel, n.layout, n.cgroups.path(), n.log) == 0);
    CHECK_FALSE(fs::exists(rec / kmesh::kProgRecvmsg4));  // undone with the failed record
    CHECK(n.links(cg1) == static_cast<int>(std::size(kPodProgs)) - 2);

    n.kernel.fail_link_type.reset();
    CHECK(kmesh::attach_missing_cgroup_links(n.kernel, n.layout, n.cgroups.path(), n.log) == 2);
    CHECK(n.links(cg1) == static_cast<int>(std::size(kPodProgs)));
}

TEST_CASE("shared-cgroup records are completed too") {
    Node n;
    n.pin_programs(false);
    fs::path d;
    auto cg = n.cgroup("meshed", &d);
    auto progs = kmesh::open_pod_progs(n.kernel, n.layout, kmesh::kErrTryAgainLater);
    std::uint64_t id = 0;
    int fd = n.kernel.open_cgroup(d.string(), &id);
    kmesh::attach_locked(n.kernel, n.layout, progs, fd, id, true, "ctr1", "net", n.log);
    n.kernel.close(fd);
    progs.clear();
    n.pin_programs(true);
    CHECK(kmesh::attach_missing_cgroup_links(n.kernel, n.layout, n.cgroups.path(), n.log) ==
          static_cast<int>(std::size(kPodProgs) - kRequired));
    CHECK(n.links(cg) == static_cast<int>(std::size(kPodProgs)));
    CHECK(fs::exists(kmesh::shared_dir(n.layout, cg) / kmesh::kProgSockRelease));
}
