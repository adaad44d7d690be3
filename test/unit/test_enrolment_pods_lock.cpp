// The agent's cleanup of pod records whose cgroup is gone (move_pod_links) takes the same pods lock
// as kmesh-cni and the enrolment reconciler, and looks again under it: a record re-attached
// meanwhile (a re-ADD of the same container) is kept.
#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent/src/dataplane/bpf_loader.hpp"
#include "common/pod_links.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;

namespace {

class Links : public kmesh::LinkOps {
  public:
    std::mutex mu;
    std::set<std::string> detached_paths;
    int open(const std::string& path) override {
        std::lock_guard l(mu);
        if (!fs::exists(path)) return -1;
        paths_.push_back(path);
        return static_cast<int>(paths_.size() - 1);
    }
    void close(int) override {}
    bool detached(int fd) override {
        std::lock_guard l(mu);
        return detached_paths.count(paths_[fd]) > 0;
    }
    int update(int, const std::string&) override { return 0; }
    void sleep(std::chrono::milliseconds) override {}

  private:
    std::vector<std::string> paths_;
};

}  // namespace

TEST_CASE("move_pod_links removes a detached record only under the pods lock, after looking again") {
    kmesh::test::TempDir dir;
    const fs::path pods = dir.mkdirs("pods");
    const fs::path rec = dir.mkdirs("pods/ctr");
    for (const char* p : {"cgroup_connect4", "cgroup_connect6"}) std::ofstream(rec / p) << "";
    Links ops;
    ops.detached_paths = {(rec / "cgroup_connect4").string(), (rec / "cgroup_connect6").string()};

    std::optional<kmesh::PodsLock> held(std::in_place, pods.string());  // kmesh-cni is mid-ADD
    auto done = std::async(std::launch::async, [&] { return kmesh::move_pod_links(pods.string(), ops); });
    CHECK(done.wait_for(std::chrono::milliseconds(200)) == std::future_status::timeout);
    CHECK(fs::exists(rec));  // not removed behind the lock holder's back
    {
        std::lock_guard l(ops.mu);  // the ADD re-attached the container: its links are live again
        ops.detached_paths.clear();
    }
    held.reset();
    auto r = done.get();
    CHECK(r.forgotten == 0);
    CHECK(fs::exists(rec / "cgroup_connect4"));

    // Still detached under the lock: removed.
    ops.detached_paths = {(rec / "cgroup_connect4").string()};
    r = kmesh::move_pod_links(pods.string(), ops);
    CHECK(r.forgotten == 1);
    CHECK_FALSE(fs::exists(rec));
}
