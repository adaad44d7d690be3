// The few BPF/cgroup kernel calls kmesh-cni makes, behind an interface so the ADD/DEL/CHECK logic
// can be unit-tested against a fake kernel. All calls return a negative errno on failure.
#pragma once

#include <linux/bpf.h>

#include <cstdint>
#include <string>
#include <utility>

namespace kmesh::cni {

struct LinkInfo {
    std::uint32_t prog_id = 0;
    std::uint64_t cgroup_id = 0;  // 0 once the cgroup is gone (the link is then detached)
    std::uint32_t attach_type = 0;
};

class Kernel {
  public:
    virtual ~Kernel() = default;
    // bpf_obj_get on a bpffs path: fd or -errno (-ENOENT when nothing is pinned there).
    virtual int obj_get(const std::string& path) = 0;
    // Pins `fd` at `path`: 0 or -errno (-EEXIST when the path is taken).
    virtual int obj_pin(int fd, const std::string& path) = 0;
    // Opens a cgroup v2 directory and reports its cgroup id: fd or -errno (-EMEDIUMTYPE when the
    // directory is not on cgroup2).
    virtual int open_cgroup(const std::string& dir, std::uint64_t* cgroup_id) = 0;
    // bpf_link_create(prog_fd, cgroup_fd, type): link fd or -errno.
    virtual int link_create(int prog_fd, int cgroup_fd, bpf_attach_type type) = 0;
    // bpf_link_update(link_fd, prog_fd): atomically swaps the link's program, the link stays attached
    // throughout. 0 or -errno (-ENOLINK when the link is detached).
    virtual int link_update(int link_fd, int prog_fd) = 0;
    // Id of a program fd: 0 or -errno.
    virtual int prog_id(int prog_fd, std::uint32_t* id) = 0;
    // Info of a cgroup link fd: 0 or -errno (-EINVAL when `fd` is not a cgroup bpf_link).
    virtual int link_info(int link_fd, LinkInfo* info) = 0;
    virtual void close(int fd) = 0;
    // statfs(path).f_type (BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, ...) or -errno.
    virtual long fs_magic(const std::string& path) = 0;
};

// Owns one fd obtained from a Kernel.
class KernelFd {
  public:
    KernelFd() = default;
    KernelFd(Kernel& kernel, int fd) : kernel_(&kernel), fd_(fd) {}
    KernelFd(KernelFd&& o) noexcept : kernel_(o.kernel_), fd_(std::exchange(o.fd_, -1)) {}
    KernelFd& operator=(KernelFd&& o) noexcept {
        if (this != &o) {
            reset();
            kernel_ = o.kernel_;
            fd_ = std::exchange(o.fd_, -1);
        }
        return *this;
    }
    KernelFd(const KernelFd&) = delete;
    KernelFd& operator=(const KernelFd&) = delete;
    ~KernelFd() { reset(); }

    int get() const { return fd_; }
    void reset() {
        if (fd_ >= 0) kernel_->close(fd_);
        fd_ = -1;
    }

  private:
    Kernel* kernel_ = nullptr;
    int fd_ = -1;
};

// The real thing: libbpf low-level API and plain syscalls.
class LinuxKernel final : public Kernel {
  public:
    int obj_get(const std::string& path) override;
    int obj_pin(int fd, const std::string& path) override;
    int open_cgroup(const std::string& dir, std::uint64_t* cgroup_id) override;
    int link_create(int prog_fd, int cgroup_fd, bpf_attach_type type) override;
    int link_update(int link_fd, int prog_fd) override;
    int prog_id(int prog_fd, std::uint32_t* id) override;
    int link_info(int link_fd, LinkInfo* info) override;
    void close(int fd) override;
    long fs_magic(const std::string& path) override;
};

}  // namespace kmesh::cni
