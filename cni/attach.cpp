#include "cni/attach.hpp"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <optional>
#include <string>

#include "common/cgroup.hpp"

namespace kmesh::cni {

namespace {

// bpf fds are anon inodes named "bpf-link", "bpf-prog", "bpf-map"; the info syscall alone cannot
// tell a link from a program.
bool is_bpf_link_fd(int fd) {
    std::error_code ec;
    auto target = std::filesystem::read_symlink("/proc/self/fd/" + std::to_string(fd), ec);
    return !ec && target == "anon_inode:bpf-link";
}

}  // namespace

int LinuxKernel::obj_get(const std::string& path) {
    int fd = bpf_obj_get(path.c_str());
    return fd >= 0 ? fd : -errno;
}

int LinuxKernel::obj_pin(int fd, const std::string& path) {
    return bpf_obj_pin(fd, path.c_str()) == 0 ? 0 : -errno;
}

int LinuxKernel::open_cgroup(const std::string& dir, std::uint64_t* id) {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct statfs st {};
    int err = 0;
    std::optional<std::uint64_t> cgid;
    if (fstatfs(fd, &st) != 0) {
        err = errno;
    } else if (st.f_type != CGROUP2_SUPER_MAGIC) {
        err = EMEDIUMTYPE;
    } else if (cgid = cgroup_id(dir); !cgid) {
        err = errno;
    }
    if (err != 0) {
        ::close(fd);
        return -err;
    }
    *id = *cgid;
    return fd;
}

int LinuxKernel::link_create(int prog_fd, int cgroup_fd, bpf_attach_type type) {
    int fd = bpf_link_create(prog_fd, cgroup_fd, type, nullptr);
    return fd >= 0 ? fd : -errno;
}

int LinuxKernel::link_update(int link_fd, int prog_fd) {
    return bpf_link_update(link_fd, prog_fd, nullptr) == 0 ? 0 : -errno;
}

int LinuxKernel::prog_id(int prog_fd, std::uint32_t* id) {
    bpf_prog_info info{};
    __u32 len = sizeof(info);
    if (bpf_obj_get_info_by_fd(prog_fd, &info, &len) != 0) return -errno;
    *id = info.id;
    return 0;
}

int LinuxKernel::link_info(int link_fd, LinkInfo* out) {
    if (!is_bpf_link_fd(link_fd)) return -EINVAL;
    bpf_link_info info{};
    __u32 len = sizeof(info);
    if (bpf_obj_get_info_by_fd(link_fd, &info, &len) != 0) return -errno;
    if (info.type != BPF_LINK_TYPE_CGROUP) return -EINVAL;
    out->prog_id = info.prog_id;
    out->cgroup_id = info.cgroup.cgroup_id;
    out->attach_type = info.cgroup.attach_type;
    return 0;
}

void LinuxKernel::close(int fd) { ::close(fd); }

long LinuxKernel::fs_magic(const std::string& path) {
    struct statfs st {};
    if (statfs(path.c_str(), &st) != 0) return -errno;
    return static_cast<long>(st.f_type);
}

}  // namespace kmesh::cni
