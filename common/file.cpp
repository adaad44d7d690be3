#include "common/file.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kmesh {

Status errno_status(const std::string& what) {
    int e = errno;
    return Status(e == ENOENT                 ? Errc::kNotFound
                  : e == EACCES || e == EPERM ? Errc::kPermissionDenied
                                              : Errc::kIo,
                  fmt::format("{}: {}", what, std::strerror(e)));
}

Result<std::string> read_file(const std::string& path) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno_status("open " + path);
    std::string out;
    char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            auto st = errno_status("read " + path);
            close(fd);
            return st;
        }
        if (n == 0) break;
        out.append(buf, static_cast<size_t>(n));
    }
    close(fd);
    return out;
}

}  // namespace kmesh
