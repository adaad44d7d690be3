// Watches one file for replacement or rewrite with inotify. Watches the directory, not the file,
// because editors and Kubernetes ConfigMap volumes replace the file (rename or symlink swap)
// rather than writing it in place, which would orphan a watch on the file itself.
#pragma once

#include <cstdint>
#include <string>

namespace kmesh {

class FileWatcher {
  public:
    explicit FileWatcher(const std::string& path);
    ~FileWatcher();
    FileWatcher(const FileWatcher&) = delete;
    FileWatcher& operator=(const FileWatcher&) = delete;

    int fd() const { return fd_; }  // readable when something in the directory changed
    const std::string& error() const { return error_; }
    // Drains pending events; true if one concerns the file: it was closed after writing, or renamed
    // into place, or the ConfigMap's "..data" symlink was swapped; or the kernel's event queue
    // overflowed (IN_Q_OVERFLOW), so that an event about the file may have been lost.
    bool drain();
    uint64_t overflows() const { return overflows_; }

  private:
    void watch();

    int fd_ = -1;
    uint64_t overflows_ = 0;
    std::string dir_, name_;
    std::string error_;
};

}  // namespace kmesh
