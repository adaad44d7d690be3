// FileWatcher: events about the watched file, and a kernel event queue that overflowed.
#include <doctest/doctest.h>

#include <fstream>
#include <string>

#include "agent/src/sources/file/file_watcher.hpp"
#include "temp_dir.hpp"

using namespace kmesh;

namespace {

int max_queued_events() {
    std::ifstream in("/proc/sys/fs/inotify/max_queued_events");
    int n = 16384;
    in >> n;
    return n;
}

}  // namespace

TEST_CASE("FileWatcher: other files in the directory are not a reload; the file is") {
    test::TempDir dir;
    FileWatcher w((dir.path() / "mesh.yaml").string());
    REQUIRE(w.error().empty());
    std::ofstream(dir.path() / "other.yaml") << "x";
    CHECK_FALSE(w.drain());
    std::ofstream(dir.path() / "mesh.yaml") << "x";
    CHECK(w.drain());
}

TEST_CASE("FileWatcher: an overflowed event queue counts as a change, since ours may be lost") {
    test::TempDir dir;
    FileWatcher w((dir.path() / "mesh.yaml").string());
    REQUIRE(w.error().empty());
    // More events than the kernel queues, none about mesh.yaml: distinct names, so the kernel
    // cannot merge them. The queue overflows and the change that matters could be among the lost.
    int n = max_queued_events() + 64;
    for (int i = 0; i < n; i++) std::ofstream(dir.path() / ("f" + std::to_string(i % 512)));
    CHECK(w.drain());
    CHECK(w.overflows() == 1);
    CHECK_FALSE(w.drain());  // nothing left after the overflow was consumed
}
