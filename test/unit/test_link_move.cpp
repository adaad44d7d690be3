// Moving pinned pod links to new programs on upgrade: failed updates are retried, and the maps of
// older layouts are kept while a pod still runs the older programs.
#include <doctest/doctest.h>

#include <fstream>
#include <map>
#include <set>
#include <string>

#include "agent/src/dataplane/bpf_loader.hpp"
#include "temp_dir.hpp"

using namespace kmesh;
namespace fs = std::filesystem;

namespace {

// Pins are plain files here; each path has a scripted number of failing updates.
class FakeLinks : public LinkOps {
  public:
    std::map<std::string, int> failures_left;  // path -> updates that fail before one succeeds
    std::set<std::string> detached_paths;
    std::map<std::string, std::string> program;  // path -> program the link runs after updates
    int updates = 0;
    std::vector<std::chrono::milliseconds> sleeps;

    int open(const std::string& path) override {
        if (!fs::is_regular_file(path)) return -1;  // bpf_obj_get fails on directories
        paths_.push_back(path);
        return static_cast<int>(paths_.size() - 1);
    }
    void close(int) override {}
    bool detached(int fd) override { return detached_paths.count(paths_[fd]) > 0; }
    int update(int fd, const std::string& prog_name) override {
        updates++;
        auto& left = failures_left[paths_[fd]];
        if (left != 0) {
            if (left > 0) left--;
            return EBUSY;
        }
        program[paths_[fd]] = prog_name;
        return 0;
    }
    void sleep(std::chrono::milliseconds d) override { sleeps.push_back(d); }

  private:
    std::vector<std::string> paths_;
};

struct Node {
    test::TempDir dir;
    fs::path pods = dir.mkdirs("pods"), maps = dir.mkdirs("maps");
    std::string pod(const std::string& name) {
        auto d = dir.mkdirs("pods/" + name);
        for (const char* p : {"cgroup_connect4", "cgroup_connect6"}) std::ofstream(d / p) << "";
        return (d / "cgroup_connect4").string();
    }
};

}  // namespace

TEST_CASE("a link update that fails a few times is retried with growing waits") {
    Node n;
    std::string link = n.pod("a");
    FakeLinks ops;
    ops.failures_left[link] = 2;
    LinkMoveResult r = move_pod_links(n.pods.string(), ops);
    CHECK(r.updated == 2);
    CHECK(r.stale.empty());
    CHECK(ops.program[link] == "cgroup_connect4");
    REQUIRE(ops.sleeps.size() == 2);  // one wait per retry round, not per link
    CHECK(ops.sleeps[1] > ops.sleeps[0]);
}

TEST_CASE("a link that cannot be moved is reported stale and keeps the old maps") {
    Node n;
    std::string stuck = n.pod("stuck");
    n.pod("fine");
    n.dir.mkdirs("maps/v1");
    n.dir.mkdirs("maps/v2");
    FakeLinks ops;
    ops.failures_left[stuck] = -1;  // always fails
    LinkMoveResult r = move_pod_links(n.pods.string(), ops, 3);
    CHECK(r.updated == 3);
    REQUIRE(r.stale.size() == 1);
    CHECK(r.stale[0] == stuck);
    auto kept = remove_old_maps(n.maps.string(), (n.maps / "v2").string(), static_cast<int>(r.stale.size()));
    CHECK(kept == std::vector<std::string>{(n.maps / "v1").string()});
    CHECK(fs::exists(n.maps / "v1"));  // the stuck pod's programs still read these
    CHECK(fs::exists(n.maps / "v2"));

    // Later the pod is gone (CNI DEL unpinned it): the old maps go with the next reconcile.
    fs::remove_all(n.pods / "stuck");
    r = move_pod_links(n.pods.string(), ops, 3);
    CHECK(r.stale.empty());
    kept = remove_old_maps(n.maps.string(), (n.maps / "v2").string(), static_cast<int>(r.stale.size()));
    CHECK(kept.empty());
    CHECK_FALSE(fs::exists(n.maps / "v1"));
    CHECK(fs::exists(n.maps / "v2"));
}

TEST_CASE("pods whose cgroup is gone are unpinned, not updated") {
    Node n;
    std::string ghost = n.pod("ghost");
    FakeLinks ops;
    ops.detached_paths.insert(ghost);
    LinkMoveResult r = move_pod_links(n.pods.string(), ops);
    CHECK(r.forgotten == 1);
    CHECK(r.updated == 0);
    CHECK_FALSE(fs::exists(n.pods / "ghost"));
}

TEST_CASE("netns links in a shared cgroup's users/<container> entries are moved too") {
    Node n;
    n.pod("ctr");
    const fs::path own_sl = n.pods / "ctr" / "sk_lookup_authz";
    std::ofstream(own_sl) << "";
    const fs::path holder = n.dir.mkdirs("pods/_cgroup_42");
    for (const char* p : {"cgroup_connect4", "cgroup_connect6"}) std::ofstream(holder / p) << "";
    const fs::path user = n.dir.mkdirs("pods/_cgroup_42/users/pm1");
    std::ofstream(user / "sk_lookup_authz") << "";
    FakeLinks ops;
    LinkMoveResult r = move_pod_links(n.pods.string(), ops);
    CHECK(r.updated == 6);
    CHECK(ops.program[own_sl.string()] == "sk_lookup_authz");
    CHECK(ops.program[(user / "sk_lookup_authz").string()] == "sk_lookup_authz");

    // A container whose netns is gone: its record is forgotten like one whose cgroup is gone.
    FakeLinks gone;
    gone.detached_paths.insert(own_sl.string());
    r = move_pod_links(n.pods.string(), gone);
    CHECK(r.forgotten == 1);
    CHECK_FALSE(fs::exists(n.pods / "ctr"));
}

TEST_CASE("maps/current names the published generation and is never dropped as an old one") {
    test::TempDir dir;
    PinLayout layout{dir.path().string()};
    fs::create_directories(layout.maps_root());
    CHECK(layout.current_maps_name().empty());  // a node served by an agent without the pointer
    CHECK(layout.with_current_maps().maps_dir() ==
          layout.maps_root() + "/v" + std::to_string(KMESH_ABI_VERSION));

    layout.maps_name = "v6-0123456789ab";
    fs::create_directories(layout.maps_dir());
    fs::create_directories(layout.maps_root() + "/v6");
    REQUIRE(point_current_maps(layout).empty());
    CHECK(fs::read_symlink(layout.current_maps_link()) == "v6-0123456789ab");  // relative: bpffs can move
    PinLayout reader{dir.path().string()};
    CHECK(reader.with_current_maps().maps_dir() == layout.maps_root() + "/v6-0123456789ab");

    // The previous generation goes; the pointer and the generation it names stay.
    auto kept = remove_old_maps(layout.maps_root(), layout.maps_dir(), 0);
    CHECK(kept.empty());
    CHECK_FALSE(fs::exists(layout.maps_root() + "/v6"));
    CHECK(fs::is_symlink(layout.current_maps_link()));
    CHECK(fs::exists(layout.maps_dir()));

    // Replaced, not removed and re-made: a reader in between finds one or the other.
    layout.maps_name = "v6";
    fs::create_directories(layout.maps_dir());
    REQUIRE(point_current_maps(layout).empty());
    CHECK(reader.current_maps_name() == "v6");
    CHECK_FALSE(fs::exists(layout.current_maps_link() + "_new"));
}
