#include "common/file.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
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
    // One read() of the size fstat gives (plus a byte to see the end) instead of 64 KiB chunks
    // appended, which copied a large file twice and regrew the string; a file that grows meanwhile
    // or reports no size (/proc) is read on until EOF all the same.
    struct stat st {};
    size_t size = fstat(fd, &st) == 0 && st.st_size > 0 ? static_cast<size_t>(st.st_size) : 0;
    std::string out(size + 1, '\0');
    size_t got = 0;
    for (;;) {
        if (got == out.size()) out.resize(std::max<size_t>(out.size() * 2, 65536));
        ssize_t n = read(fd, out.data() + got, out.size() - got);
        if (n < 0) {
            if (errno == EINTR) continue;
            auto st_err = errno_status("read " + path);
            close(fd);
            return st_err;
        }
        if (n == 0) break;
        got += static_cast<size_t>(n);
    }
    close(fd);
    out.resize(got);
    return out;
}

}  // namespace kmesh
