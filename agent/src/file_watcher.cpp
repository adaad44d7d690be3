#include "agent/src/file_watcher.hpp"

#include <fmt/format.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace kmesh {

FileWatcher::FileWatcher(const std::string& path) {
    fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd_ < 0) {
        error_ = fmt::format("inotify: {}", std::strerror(errno));
        return;
    }
    std::string dir = std::filesystem::absolute(path).parent_path().string();
    if (inotify_add_watch(fd_, dir.c_str(),
                          IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_ATTRIB | IN_MODIFY) < 0)
        error_ = fmt::format("watch {}: {}", dir, std::strerror(errno));
}

FileWatcher::~FileWatcher() {
    if (fd_ >= 0) close(fd_);
}

bool FileWatcher::drain() {
    alignas(inotify_event) char buf[4096];
    bool any = false;
    for (;;) {
        ssize_t n = read(fd_, buf, sizeof buf);
        if (n <= 0) return any;
        // Any event in the directory may be the file (or the ConfigMap's ..data symlink swap);
        // the caller re-reads and compares, so a spurious wake-up costs one parse.
        any = true;
    }
}

}  // namespace kmesh
