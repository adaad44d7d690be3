#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/cgroup.hpp"
#include "temp_dir.hpp"

using kmesh::find_cgroup2_mount;
using kmesh::find_pod_cgroup;
using kmesh::test::TempDir;

namespace {

constexpr const char* kUid = "1f0e3c6a-8b2d-4c5e-9a7b-0123456789ab";
constexpr const char* kUidUnderscore = "1f0e3c6a_8b2d_4c5e_9a7b_0123456789ab";

}  // namespace

TEST_CASE("find_cgroup2_mount: hybrid layout picks the unified mount") {
    const char* mountinfo =
        "25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
        "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
    CHECK(find_cgroup2_mount(mountinfo) == "/sys/fs/cgroup/unified");
}

TEST_CASE("find_cgroup2_mount: pure v2 with optional fields") {
    const char* mountinfo =
        "28 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 master:1 - cgroup2 cgroup2 "
        "rw,nsdelegate,memory_recursiveprot\n";
    CHECK(find_cgroup2_mount(mountinfo) == "/sys/fs/cgroup");
}

TEST_CASE("find_cgroup2_mount: prefers the hierarchy root over a subtree bind mount") {
    const char* mountinfo =
        "50 22 0:26 /kubepods /var/lib/cg rw - cgroup2 cgroup2 rw\n"
        "28 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
    CHECK(find_cgroup2_mount(mountinfo) == "/sys/fs/cgroup");
    CHECK(find_cgroup2_mount("50 22 0:26 /kubepods /var/lib/cg rw - cgroup2 cgroup2 rw\n") == "/var/lib/cg");
}

TEST_CASE("find_cgroup2_mount: octal escapes, none found, junk") {
    CHECK(find_cgroup2_mount("41 31 0:38 / /mnt/my\\040cg rw - cgroup2 none rw\n") == "/mnt/my cg");
    CHECK_FALSE(find_cgroup2_mount("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"));
    CHECK_FALSE(find_cgroup2_mount(""));
    CHECK_FALSE(find_cgroup2_mount("garbage - cgroup2\n"));
}

TEST_CASE("find_cgroup2_mount: this machine has one") { CHECK(find_cgroup2_mount().has_value()); }

TEST_CASE("find_pod_cgroup: kubelet cgroupfs layouts") {
    for (const char* qos : {"", "burstable/", "besteffort/"}) {
        TempDir root;
        root.mkdirs("kubepods/burstable/podother");
        auto pod = root.mkdirs(std::string("kubepods/") + qos + "pod" + kUid);
        root.mkdirs(std::string("kubepods/") + qos + "pod" + kUid + "/sandbox123");
        auto found = find_pod_cgroup(root.path(), kUid);
        REQUIRE(found.path);
        CHECK(*found.path == pod);
    }
}

TEST_CASE("find_pod_cgroup: kubelet systemd layouts") {
    const std::string u = kUidUnderscore;
    for (const std::string& rel :
         {"kubepods.slice/kubepods-pod" + u + ".slice",
          "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + u + ".slice",
          "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + u + ".slice"}) {
        TempDir root;
        auto pod = root.mkdirs(rel);
        root.mkdirs(rel + "/cri-containerd-abc.scope");
        auto found = find_pod_cgroup(root.path(), kUid);
        REQUIRE(found.path);
        CHECK(*found.path == pod);
    }
}

TEST_CASE("find_pod_cgroup: kubelet --cgroup-root prefixes are found by the search") {
    TempDir root;
    auto pod = root.mkdirs(std::string("node/kubepods/burstable/pod") + kUid);
    auto found = find_pod_cgroup(root.path(), kUid);
    REQUIRE(found.path);
    CHECK(*found.path == pod);

    TempDir sd;
    auto sd_pod = sd.mkdirs(std::string("custom.slice/custom-kubepods.slice/custom-kubepods-besteffort.slice/"
                                        "custom-kubepods-besteffort-pod") +
                            kUidUnderscore + ".slice");
    found = find_pod_cgroup(sd.path(), kUid);
    REQUIRE(found.path);
    CHECK(*found.path == sd_pod);
}

TEST_CASE("find_pod_cgroup: not found reports the candidates tried") {
    TempDir root;
    root.mkdirs("kubepods/burstable/podsomeoneelse");
    root.mkdirs("a/b/c/d/e/pod" + std::string(kUid));                       // deeper than the search goes
    std::ofstream(root.path() / "kubepods" / ("pod" + std::string(kUid)));  // a file, not a cgroup
    auto found = find_pod_cgroup(root.path(), kUid);
    CHECK_FALSE(found.path);
    REQUIRE(found.tried.size() == 6);
    CHECK(found.tried[0] == (root.path() / "kubepods" / ("pod" + std::string(kUid))).string());
    CHECK(found.tried[5].find("kubepods-besteffort-pod" + std::string(kUidUnderscore) + ".slice") !=
          std::string::npos);
}

TEST_CASE("find_pod_cgroup: does not follow symlinks or descend into other pods") {
    TempDir root;
    auto elsewhere = root.mkdirs(std::string("elsewhere/pod") + kUid);
    std::filesystem::create_directory_symlink(root.path() / "elsewhere", root.mkdirs("x") / "link");
    root.mkdirs(std::string("kubepods/podother/pod") + kUid);
    auto found = find_pod_cgroup(root.path(), kUid);
    REQUIRE(found.path);
    CHECK(*found.path == elsewhere);  // the real directory, not the nested or symlinked copies

    std::filesystem::remove_all(root.path() / "elsewhere");
    CHECK_FALSE(find_pod_cgroup(root.path(), kUid).path);
}

TEST_CASE("find_pod_cgroup: the search lists a bounded number of directories") {
    TempDir root;
    // 60 siblings before the branch holding the pod (directory order is not sorted: put the pod
    // two levels below every sibling's child, so any listing order needs > 60 listings).
    for (int i = 0; i < 60; ++i) root.mkdirs("d" + std::to_string(i) + "/x");
    root.mkdirs(std::string("d59/x/pod") + kUid);
    CHECK(find_pod_cgroup(root.path(), kUid).path == root.path() / "d59/x" / (std::string("pod") + kUid));
    // Listing the root and 9 more directories cannot reach depth 3 behind 60 siblings.
    CHECK_FALSE(find_pod_cgroup(root.path(), kUid, kmesh::kPodCgroupSearchDepth, 10).path);
}

TEST_CASE("cgroup_id: fails on a missing directory") {
    errno = 0;
    auto id = kmesh::cgroup_id("/nonexistent/cgroup");
    const int err = errno;  // before any assertion macro can change it
    CHECK_FALSE(id);
    CHECK(err == ENOENT);
}

TEST_CASE("cgroup_id: the inode number of a cgroup v2 directory") {
    auto mount = find_cgroup2_mount();
    if (!mount) {
        MESSAGE("skipped: no cgroup v2 mount in /proc/self/mountinfo");
        return;
    }
    struct stat st {};
    REQUIRE(stat(mount->c_str(), &st) == 0);
    auto id = kmesh::cgroup_id(*mount);
    REQUIRE(id);
    CHECK(*id != 0);
    if constexpr (sizeof(ino_t) >= sizeof(std::uint64_t)) CHECK(*id == st.st_ino);
}

TEST_CASE("cgroup_id: a freshly created child cgroup") {
    auto mount = find_cgroup2_mount();
    if (!mount) {
        MESSAGE("skipped: no cgroup v2 mount in /proc/self/mountinfo");
        return;
    }
    if (geteuid() != 0) {
        MESSAGE("skipped: creating a cgroup under " << *mount << " needs root");
        return;
    }
    const std::string child = *mount + "/kmesh-unit-test-" + std::to_string(getpid());
    if (mkdir(child.c_str(), 0755) != 0) {
        MESSAGE("skipped: cannot create " << child << ": " << std::strerror(errno));
        return;
    }
    struct Rmdir {
        std::string path;
        ~Rmdir() { rmdir(path.c_str()); }
    } remove_child{child};

    auto parent_id = kmesh::cgroup_id(*mount);
    auto id = kmesh::cgroup_id(child);
    REQUIRE(parent_id);
    REQUIRE(id);
    CHECK(*id != 0);
    CHECK(*id != *parent_id);
    struct stat st {};
    REQUIRE(stat(child.c_str(), &st) == 0);
    if constexpr (sizeof(ino_t) >= sizeof(std::uint64_t)) CHECK(*id == st.st_ino);
    CHECK(kmesh::cgroup_id(child) == id);  // stable

    // A cgroup id is never reused: a new cgroup at the same path gets a new one.
    REQUIRE(rmdir(child.c_str()) == 0);
    CHECK_FALSE(kmesh::cgroup_id(child));
    REQUIRE(mkdir(child.c_str(), 0755) == 0);
    auto again = kmesh::cgroup_id(child);
    REQUIRE(again);
    CHECK(*again != *id);
}
