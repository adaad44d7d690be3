#include "agent/src/sources/file/file_watcher.hpp"

#include <fmt/format.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace kmesh {

FileWatcher::FileWatcher(const std::string& path) {
    // absolute() keeps symlinks: a ConfigMap mount's directory stays the one we watch.
    auto p = std::filesystem::absolute(path);
    dir_ = p.parent_path().string();
    name_ = p.filename().string();
    fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd_ < 0) {
        error_ = fmt::format("inotify: {}", std::strerror(errno));
        return;
    }
    watch();
}

FileWatcher::~FileWatcher() {
    if (fd_ >= 0) close(fd_);
}

// Not IN_MODIFY: a file being written in place is read only once it is closed, never half-written.
void FileWatcher::watch() {
    if (inotify_add_watch(fd_, dir_.c_str(), IN_CLOSE_WRITE | IN_MOVED_TO) < 0)
        error_ = fmt::format("watch {}: {}", dir_, std::strerror(errno));
}

bool FileWatcher::drain() {
    alignas(inotify_event) char buf[4096];
    bool relevant = false;
    for (;;) {
        ssize_t n = read(fd_, buf, sizeof buf);
        if (n <= 0) return relevant;
        for (char* p = buf; p < buf + n;) {
            auto* ev = reinterpret_cast<inotify_event*>(p);
            p += sizeof(inotify_event) + ev->len;
            if (ev->mask & IN_Q_OVERFLOW) {  // events were dropped: one of them may have been ours
                overflows_++;
                relevant = true;
                continue;
            }
            if (ev->mask & IN_IGNORED) {  // the directory went away or was replaced: watch again
                watch();
                relevant = true;
                continue;
            }
            std::string name = ev->len ? ev->name : "";
            if (name == name_ || name == "..data") relevant = true;
        }
    }
}

}  // namespace kmesh
