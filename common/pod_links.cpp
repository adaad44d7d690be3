#include "common/pod_links.hpp"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/magic.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "common/cgroup.hpp"

namespace kmesh {

namespace fs = std::filesystem;

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

int LinuxKernel::open_netns(const std::string& path, std::uint64_t* ino) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct statfs sfs {};
    struct stat st {};
    int err = 0;
    if (fstatfs(fd, &sfs) != 0 || fstat(fd, &st) != 0)
        err = errno;
    else if (sfs.f_type != NSFS_MAGIC || ioctl(fd, NS_GET_NSTYPE) != CLONE_NEWNET)
        err = EMEDIUMTYPE;
    if (err != 0) {
        ::close(fd);
        return -err;
    }
    *ino = st.st_ino;
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
    *out = LinkInfo{};
    out->prog_id = info.prog_id;
    if (info.type == BPF_LINK_TYPE_CGROUP) {
        out->cgroup_id = info.cgroup.cgroup_id;
        out->attach_type = info.cgroup.attach_type;
        return 0;
    }
    if (info.type == BPF_LINK_TYPE_NETNS) {
        out->netns = true;
        out->netns_ino = info.netns.netns_ino;
        out->attach_type = info.netns.attach_type;
        return 0;
    }
    return -EINVAL;
}

void LinuxKernel::close(int fd) { ::close(fd); }

long LinuxKernel::fs_magic(const std::string& path) {
    struct statfs st {};
    if (statfs(path.c_str(), &st) != 0) return -errno;
    return static_cast<long>(st.f_type);
}

std::string errno_str(int negative_errno) { return std::strerror(-negative_errno); }

// Opens the agent's pinned program; a missing pin means the agent has not (yet) loaded it.
PinnedProg open_prog(Kernel& kernel, const PinLayout& layout, const char* name, int missing_code) {
    const std::string path = layout.prog(name);
    int fd = kernel.obj_get(path);
    if (fd == -ENOENT) {
        throw PodLinkError(missing_code, fmt::format("kmesh agent not running: {} not found", path));
    }
    if (fd < 0) {
        throw PodLinkError(missing_code == kErrTryAgainLater ? kErrAttach : missing_code,
                           fmt::format("cannot open {}: {}", path, errno_str(fd)));
    }
    PinnedProg prog{KernelFd(kernel, fd)};
    if (int err = kernel.prog_id(fd, &prog.id); err < 0) {
        throw PodLinkError(missing_code == kErrTryAgainLater ? kErrAttach : missing_code,
                           fmt::format("cannot read program info of {}: {}", path, errno_str(err)));
    }
    return prog;
}

std::vector<PinnedProg> open_pod_progs(Kernel& kernel, const PinLayout& layout, int missing_code) {
    std::vector<PinnedProg> progs;
    progs.reserve(std::size(kPodProgs) + 1);
    for (const auto& spec : kPodProgs) {
        if (spec.optional) {
            // One bpf_obj_get per program: a missing optional pin is skipped, any other failure
            // is reported as open_prog would.
            const std::string path = layout.prog(spec.name);
            int fd = kernel.obj_get(path);
            if (fd == -ENOENT) {  // not loaded by this agent (kernel without the hook, older agent)
                progs.emplace_back();
                continue;
            }
            if (fd < 0) {
                throw PodLinkError(missing_code == kErrTryAgainLater ? kErrAttach : missing_code,
                                   fmt::format("cannot open {}: {}", path, errno_str(fd)));
            }
            PinnedProg prog{KernelFd(kernel, fd)};
            if (int err = kernel.prog_id(fd, &prog.id); err < 0) {
                throw PodLinkError(missing_code == kErrTryAgainLater ? kErrAttach : missing_code,
                                   fmt::format("cannot read program info of {}: {}", path, errno_str(err)));
            }
            progs.push_back(std::move(prog));
            continue;
        }
        progs.push_back(open_prog(kernel, layout, spec.name, missing_code));
    }
    progs.push_back(open_prog(kernel, layout, kNetnsProg.name, missing_code));
    return progs;
}

PodNetns open_pod_netns(Kernel& kernel, const std::string& path, int error_code, spdlog::logger& log) {
    PodNetns out;
    int fd = kernel.open_netns(path, &out.ino);
    if (fd < 0) {
        throw PodLinkError(error_code,
                           fmt::format("cannot open pod network namespace {}: {}", path,
                                       fd == -EMEDIUMTYPE ? "not a network namespace" : errno_str(fd)));
    }
    out.fd = KernelFd(kernel, fd);
    log.info("pod netns {} (inode {})", path, out.ino);
    return out;
}

bool ensure_netns_link(Kernel& kernel, const PinnedProg& prog, const PodNetns& netns, const fs::path& pin,
                       spdlog::logger& log, bool fresh_dir) {
    const ProgSpec& spec = kNetnsProg;
    if (fresh_dir) {
        // `pin` is in a directory this caller created under the pods lock: nothing can be there.
    } else if (int fd = kernel.obj_get(pin); fd >= 0) {
        KernelFd existing(kernel, fd);
        LinkInfo info;
        const bool ours = kernel.link_info(fd, &info) == 0 && info.netns && info.netns_ino != 0 &&
                          info.netns_ino == netns.ino && info.attach_type == spec.type;
        if (ours && info.prog_id == prog.id) {
            log.info("{}: already attached, keeping {}", spec.name, pin.string());
            return false;
        }
        if (ours) {
            int err = kernel.link_update(fd, prog.fd.get());
            if (err == 0) {
                log.info("{}: moved {} from prog {} to prog {}", spec.name, pin.string(), info.prog_id,
                         prog.id);
                return false;
            }
            log.warn("{}: cannot move {} to prog {}: {}; replacing the link", spec.name, pin.string(),
                     prog.id, errno_str(err));
        } else {
            log.info("{}: replacing stale pin {} (prog {}, netns {})", spec.name, pin.string(), info.prog_id,
                     info.netns_ino);
        }
    }
    if (!fresh_dir) {
        std::error_code ec;
        fs::remove(pin, ec);
        if (ec) throw PodLinkError(kErrIo, fmt::format("cannot remove {}: {}", pin.string(), ec.message()));
    }
    int link = kernel.link_create(prog.fd.get(), netns.fd.get(), spec.type);
    if (link < 0) {
        throw PodLinkError(kErrAttach, fmt::format("cannot attach {} to netns {}: {}", spec.name, netns.ino,
                                                   errno_str(link)));
    }
    KernelFd link_fd(kernel, link);
    if (int err = kernel.obj_pin(link, pin); err < 0) {
        throw PodLinkError(kErrAttach, fmt::format("cannot pin {}: {}", pin.string(), errno_str(err)));
    }
    log.info("{}: attached (prog {}, netns {}), pinned {}", spec.name, prog.id, netns.ino, pin.string());
    return true;
}

std::optional<PodNetns> find_pod_netns(Kernel& kernel, const fs::path& cgroup, spdlog::logger& log,
                                       const std::string& proc_root) {
    std::vector<fs::path> queue{cgroup};
    constexpr size_t kMaxDirs = 1024;  // a pod cgroup has a handful of containers
    for (size_t i = 0; i < queue.size() && i < kMaxDirs; ++i) {
        std::ifstream procs(queue[i] / "cgroup.procs");
        long pid = 0;
        while (procs >> pid) {
            const std::string path = fmt::format("{}/{}/ns/net", proc_root, pid);
            PodNetns netns;
            int fd = kernel.open_netns(path, &netns.ino);
            if (fd < 0) continue;  // exited meanwhile
            netns.fd = KernelFd(kernel, fd);
            for (const char* node : {"/1/ns/net", "/self/ns/net"}) {
                std::uint64_t node_ino = 0;
                int nfd = kernel.open_netns(proc_root + node, &node_ino);
                if (nfd < 0) continue;
                kernel.close(nfd);
                if (node_ino == netns.ino) {
                    log.warn("{}: process {} is in the node's network namespace: no sk_lookup link",
                             cgroup.string(), pid);
                    return std::nullopt;
                }
            }
            log.info("{}: netns of process {}: inode {}", cgroup.string(), pid, netns.ino);
            return netns;
        }
        std::error_code ec;
        for (fs::directory_iterator it(queue[i], ec), end; !ec && it != end; it.increment(ec)) {
            if (it->is_directory(ec)) queue.push_back(it->path());
        }
    }
    log.warn("{}: no process in the pod cgroup: cannot find its network namespace", cgroup.string());
    return std::nullopt;
}

namespace {

// Cgroup ids to directories under `root`: one bounded breadth-first walk for all of `wanted`.
std::map<std::uint64_t, fs::path> find_cgroup_dirs(Kernel& kernel, const fs::path& root,
                                                   const std::set<std::uint64_t>& wanted) {
    std::map<std::uint64_t, fs::path> dirs;
    std::vector<std::pair<fs::path, int>> queue{{root, 0}};
    for (size_t i = 0; i < queue.size() && i < 65536 && dirs.size() < wanted.size(); ++i) {
        std::uint64_t id = 0;
        int fd = kernel.open_cgroup(queue[i].first.string(), &id);
        if (fd >= 0) {
            kernel.close(fd);
            if (wanted.count(id)) dirs[id] = queue[i].first;
        }
        if (queue[i].second >= kPodCgroupSearchDepth + 2) continue;
        std::error_code e;
        for (fs::directory_iterator d(queue[i].first, e), end; !e && d != end; d.increment(e)) {
            if (d->is_directory(e) && !d->is_symlink(e)) queue.push_back({d->path(), queue[i].second + 1});
        }
    }
    return dirs;
}

}  // namespace

int attach_missing_cgroup_links(Kernel& kernel, const PinLayout& layout, const fs::path& cgroup_root,
                                spdlog::logger& log) {
    // Which programs this agent pinned: only those can be missing from a record.
    std::vector<std::optional<PinnedProg>> progs(std::size(kPodProgs));
    std::vector<bool> pinned(std::size(kPodProgs));
    for (size_t i = 0; i < std::size(kPodProgs); ++i) {
        int fd = kernel.obj_get(layout.prog(kPodProgs[i].name));
        pinned[i] = fd >= 0;
        if (fd >= 0) kernel.close(fd);
    }
    struct Todo {
        fs::path record;
        std::uint64_t cgroup_id;
        std::vector<size_t> missing;  // kPodProgs indexes
    };
    std::vector<Todo> todo;
    std::error_code ec;
    for (fs::directory_iterator it(layout.pods_dir(), ec), end; !ec && it != end; it.increment(ec)) {
        std::optional<std::uint64_t> live;
        std::vector<size_t> missing;
        bool mixed = false;
        for (size_t i = 0; i < std::size(kPodProgs); ++i) {
            int fd = kernel.obj_get((it->path() / kPodProgs[i].name).string());
            LinkInfo info;
            bool ok = false;
            if (fd >= 0) {
                KernelFd link(kernel, fd);
                ok = kernel.link_info(fd, &info) == 0 && !info.netns && !info.detached();
            }
            if (!ok) {
                if (pinned[i]) missing.push_back(i);
                continue;
            }
            if (live && *live != info.cgroup_id) mixed = true;
            live = info.cgroup_id;
        }
        if (!live || missing.empty()) continue;  // nothing attached (a dead record), or complete
        if (mixed) {
            log.warn("{}: links on different cgroups; not completing it", it->path().string());
            continue;
        }
        todo.push_back({it->path(), *live, std::move(missing)});
    }
    if (todo.empty()) return 0;
    std::set<std::uint64_t> wanted;
    for (const auto& t : todo) wanted.insert(t.cgroup_id);
    const std::map<std::uint64_t, fs::path> dirs = find_cgroup_dirs(kernel, cgroup_root, wanted);
    int attached = 0;
    for (const auto& t : todo) {
        auto dir = dirs.find(t.cgroup_id);
        if (dir == dirs.end()) {
            log.warn("{}: cgroup {} not found under {}: its missing links are not attached",
                     t.record.string(), t.cgroup_id, cgroup_root.string());
            continue;
        }
        std::vector<fs::path> created;
        try {
            std::uint64_t id = 0;
            KernelFd cg = open_pod_cgroup(dir->second, kernel, kErrAttach, &id, log);
            if (id != t.cgroup_id) continue;  // replaced by a new cgroup of the same path meanwhile
            for (size_t i : t.missing) {
                if (!progs[i]) progs[i] = open_prog(kernel, layout, kPodProgs[i].name, kErrTryAgainLater);
                const fs::path pin = t.record / kPodProgs[i].name;
                if (ensure_link(kernel, kPodProgs[i], *progs[i], cg.get(), id, pin, log))
                    created.push_back(pin);
            }
            attached += static_cast<int>(created.size());
        } catch (const PodLinkError& e) {
            // All or nothing per record: what this call pinned goes again.
            for (const auto& pin : created) fs::remove(pin, ec);
            log.warn("{}: cannot attach its missing links: {}", t.record.string(), e.what());
        }
    }
    return attached;
}

int attach_missing_netns_links(Kernel& kernel, const PinLayout& layout, const fs::path& cgroup_root,
                               spdlog::logger& log, const std::string& proc_root) {
    struct Todo {
        fs::path record;
        std::uint64_t cgroup_id;
    };
    std::vector<Todo> todo;
    std::error_code ec;
    for (fs::directory_iterator it(layout.pods_dir(), ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.starts_with(kSharedPrefix)) continue;
        const RecordLinks links = read_record_links(kernel, it->path());
        if (!links.live_netns.empty() || links.live_cgroups.empty()) continue;
        todo.push_back({it->path(), links.live_cgroups.front()});
    }
    if (todo.empty()) return 0;
    // Cgroup ids to directories: one bounded walk of the tree for all records.
    std::set<std::uint64_t> wanted;
    for (const auto& t : todo) wanted.insert(t.cgroup_id);
    const std::map<std::uint64_t, fs::path> dirs = find_cgroup_dirs(kernel, cgroup_root, wanted);
    int attached = 0;
    std::optional<PinnedProg> prog;
    for (const auto& t : todo) {
        auto dir = dirs.find(t.cgroup_id);
        if (dir == dirs.end()) {
            log.warn("{}: cgroup {} not found under {}: no sk_lookup link", t.record.string(), t.cgroup_id,
                     cgroup_root.string());
            continue;
        }
        try {
            std::optional<PodNetns> netns = find_pod_netns(kernel, dir->second, log, proc_root);
            if (!netns) continue;
            if (!prog) prog = open_prog(kernel, layout, kNetnsProg.name, kErrTryAgainLater);
            if (ensure_netns_link(kernel, *prog, *netns, t.record / kNetnsProg.name, log)) ++attached;
        } catch (const PodLinkError& e) {
            log.warn("{}: cannot attach {}: {}", t.record.string(), kNetnsProg.name, e.what());
        }
    }
    return attached;
}

fs::path netns_link_pin(const PinLayout& layout, bool shared, std::uint64_t cgroup_id,
                        const std::string& record_name) {
    const fs::path record = shared ? shared_dir(layout, cgroup_id) / kUsersDir / encode_pin_name(record_name)
                                   : fs::path(layout.pod_dir(record_name));
    return record / kNetnsProg.name;
}

PodsLock::PodsLock(const std::string& pods_dir) {
    fd_ = ::open(pods_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd_ < 0)
        throw PodLinkError(kErrIo, fmt::format("cannot open {}: {}", pods_dir, std::strerror(errno)));
    int rc;
    while ((rc = flock(fd_, LOCK_EX)) != 0 && errno == EINTR) {
    }
    if (rc != 0) {
        int err = errno;
        ::close(fd_);
        throw PodLinkError(kErrIo, fmt::format("cannot lock {}: {}", pods_dir, std::strerror(err)));
    }
}

PodsLock::~PodsLock() { ::close(fd_); }

std::string agent_pod_record(std::string_view pod_uid) {
    return std::string(kAgentPodPrefix) + std::string(pod_uid);
}

std::string net_marker(std::string_view network) {
    return std::string(kNetMarkerPrefix) + encode_pin_name(network);
}

fs::path shared_dir(const PinLayout& layout, std::uint64_t cgroup_id) {
    return fs::path(layout.pods_dir()) / (std::string(kSharedPrefix) + std::to_string(cgroup_id));
}

bool has_net_markers(const fs::path& record) {
    std::error_code ec;
    for (fs::directory_iterator it(record, ec), end; !ec && it != end; it.increment(ec)) {
        if (it->path().filename().string().starts_with(kNetMarkerPrefix)) return true;
    }
    return false;
}

bool is_empty_dir(const fs::path& dir) {
    std::error_code ec;
    return fs::is_empty(dir, ec) || ec;
}

void remove_tree(const fs::path& dir) {
    std::error_code ec;
    fs::remove_all(dir, ec);  // unpinning a link detaches it once no fd holds it
    if (ec) throw PodLinkError(kErrIo, fmt::format("cannot remove {}: {}", dir.string(), ec.message()));
}

// Drops `network`'s claim on an attachment record (a pod dir, or a user entry of a shared set);
// the record goes once no network claims it. Records without markers (made before markers
// existed) and an unknown network name (lenient DEL) remove the record.
// Returns true when the record was removed.
bool release_record(const fs::path& record, const std::string& network) {
    std::error_code ec;
    if (!fs::exists(record, ec)) return false;
    if (!network.empty()) fs::remove(record / net_marker(network), ec);
    if (!network.empty() && has_net_markers(record)) return false;
    remove_tree(record);
    return true;
}

// The last user of a shared link set gone: unpinning its links detaches the programs.
void drop_shared_if_unused(const fs::path& holder, spdlog::logger& log) {
    if (is_empty_dir(holder / kUsersDir)) {
        remove_tree(holder);
        log.info("{}: last user gone, links removed", holder.string());
    }
}

// Makes `pin` a link of `prog` on the cgroup. An existing link on the cgroup is kept, and moved to
// `prog` with bpf_link_update if it runs another program (agent upgrade): the pod never loses the
// hook. Only a detached link or one on another cgroup is replaced by a new link.
// Returns true when it pinned a new link.
bool ensure_link(Kernel& kernel, const ProgSpec& spec, const PinnedProg& prog, int cgroup_fd,
                 std::uint64_t cgroup_id, const fs::path& pin, spdlog::logger& log, bool fresh_dir) {
    if (fresh_dir) {
        // `pin` is in a directory this caller created under the pods lock: nothing can be there.
    } else if (int fd = kernel.obj_get(pin); fd >= 0) {
        KernelFd existing(kernel, fd);
        LinkInfo info;
        const bool ours = kernel.link_info(fd, &info) == 0 && info.cgroup_id != 0 &&
                          info.cgroup_id == cgroup_id && info.attach_type == spec.type;
        if (ours && info.prog_id == prog.id) {
            log.info("{}: already attached, keeping {}", spec.name, pin.string());
            return false;
        }
        if (ours) {
            int err = kernel.link_update(fd, prog.fd.get());
            if (err == 0) {
                log.info("{}: moved {} from prog {} to prog {}", spec.name, pin.string(), info.prog_id,
                         prog.id);
                return false;
            }
            log.warn("{}: cannot move {} to prog {}: {}; replacing the link", spec.name, pin.string(),
                     prog.id, errno_str(err));
        } else {
            log.info("{}: replacing stale pin {} (prog {}, cgroup {})", spec.name, pin.string(), info.prog_id,
                     info.cgroup_id);
        }
    }
    if (!fresh_dir) {
        std::error_code ec;
        fs::remove(pin, ec);
        if (ec) throw PodLinkError(kErrIo, fmt::format("cannot remove {}: {}", pin.string(), ec.message()));
    }
    int link = kernel.link_create(prog.fd.get(), cgroup_fd, spec.type);
    if (link < 0) {
        throw PodLinkError(kErrAttach, fmt::format("cannot attach {} to cgroup {}: {}", spec.name, cgroup_id,
                                                   errno_str(link)));
    }
    KernelFd link_fd(kernel, link);  // closing it after pinning leaves the pin as the only holder
    if (int err = kernel.obj_pin(link, pin); err < 0) {
        throw PodLinkError(kErrAttach, fmt::format("cannot pin {}: {}", pin.string(), errno_str(err)));
    }
    log.info("{}: attached (prog {}, cgroup {}), pinned {}", spec.name, prog.id, cgroup_id, pin.string());
    return true;
}

// Opens the pod cgroup; `error_code` is the CNI code for a cgroup that exists but cannot be opened.
KernelFd open_pod_cgroup(const fs::path& cgroup, Kernel& kernel, int error_code, std::uint64_t* cgroup_id,
                         spdlog::logger& log) {
    int cg = kernel.open_cgroup(cgroup.string(), cgroup_id);
    if (cg < 0) {
        throw PodLinkError(error_code, fmt::format("cannot open pod cgroup {}: {}", cgroup.string(),
                                                   cg == -EMEDIUMTYPE ? "not on cgroup v2" : errno_str(cg)));
    }
    log.info("pod cgroup {} (id {})", cgroup.string(), *cgroup_id);
    return KernelFd(kernel, cg);
}

namespace {

// Creates `dir` if missing; true when this call created it.
bool make_dir(const fs::path& dir) {
    std::error_code ec;
    bool created = fs::create_directory(dir, ec);
    if (ec) throw PodLinkError(kErrIo, fmt::format("cannot create {}: {}", dir.string(), ec.message()));
    return created;
}

// What one ADD created, so that a failing ADD removes exactly that and nothing another
// invocation made.
struct Undo {
    std::vector<fs::path> paths;  // removed in reverse order
    void created(const fs::path& p) { paths.push_back(p); }
    void run() {
        for (auto it = paths.rbegin(); it != paths.rend(); ++it) {
            std::error_code ec;
            fs::remove_all(*it, ec);
        }
    }
};

}  // namespace

void attach_locked(Kernel& kernel, const PinLayout& layout, const std::vector<PinnedProg>& progs,
                   int cgroup_fd, std::uint64_t cgroup_id, bool shared, const std::string& record_name,
                   const std::string& network, spdlog::logger& log, const PodNetns* netns) {
    // Pod cgroup: the links live in the container's own dir. Shared cgroup (cgroupPath): one link
    // per program on the cgroup, in pods/_cgroup_<id>, with one users/<container> entry per
    // container; the last DEL detaches. Attaching per container would stack a program per
    // container on the cgroup (the kernel allows 64 per hook: E2BIG after that).
    fs::path links_dir, record;
    Undo undo;
    // Directories this call created hold no pins yet: their links are created without first
    // looking for (and removing) an old pin, two syscalls fewer per link.
    bool fresh_links_dir = false, fresh_record = false;
    try {
        if (shared) {
            links_dir = shared_dir(layout, cgroup_id);
            if ((fresh_links_dir = make_dir(links_dir))) undo.created(links_dir);
            if (make_dir(links_dir / kUsersDir)) undo.created(links_dir / kUsersDir);
            record = links_dir / kUsersDir / encode_pin_name(record_name);
        } else {
            links_dir = record = layout.pod_dir(record_name);
        }
        if ((fresh_record = make_dir(record))) undo.created(record);
        if (!shared) fresh_links_dir = fresh_record;
        if (!network.empty() && make_dir(record / net_marker(network)))
            undo.created(record / net_marker(network));
        // All or nothing: a failed attach leaves the record owner with no kmesh links of its own.
        for (size_t i = 0; i < std::size(kPodProgs); ++i) {
            if (!progs[i].present()) continue;  // optional, not loaded by the agent on this kernel
            const fs::path pin = links_dir / kPodProgs[i].name;
            if (ensure_link(kernel, kPodProgs[i], progs[i], cgroup_fd, cgroup_id, pin, log, fresh_links_dir))
                undo.created(pin);
        }
        if (netns != nullptr) {
            const fs::path pin = record / kNetnsProg.name;
            if (ensure_netns_link(kernel, progs.at(std::size(kPodProgs)), *netns, pin, log, fresh_record))
                undo.created(pin);
        }
    } catch (...) {
        log.error("attach failed, undoing what it created in {}", links_dir.string());
        undo.run();
        if (shared && !links_dir.empty()) {
            std::error_code ignored;
            if (fs::exists(links_dir, ignored) && is_empty_dir(links_dir / kUsersDir))
                fs::remove_all(links_dir, ignored);
        }
        throw;
    }
}

namespace {
// Every link pin name a record can hold.
std::vector<const char*> record_pin_names() {
    std::vector<const char*> names;
    for (const auto& spec : kPodProgs) names.push_back(spec.name);
    names.push_back(kNetnsProg.name);
    return names;
}
}  // namespace

RecordLinks read_record_links(Kernel& kernel, const fs::path& links_dir) {
    RecordLinks out;
    for (const char* name : record_pin_names()) {
        int fd = kernel.obj_get((links_dir / name).string());
        if (fd < 0) continue;
        KernelFd link(kernel, fd);
        LinkInfo info;
        if (kernel.link_info(fd, &info) != 0) continue;
        if (info.detached())
            ++out.detached;
        else if (info.netns)
            out.live_netns.push_back(info.netns_ino);
        else
            out.live_cgroups.push_back(info.cgroup_id);
    }
    return out;
}

// True when `dir` holds at least one link pin and every one is detached (its cgroup is gone):
// removing such a record can never take the hook away from a live container.
bool all_links_detached(Kernel& kernel, const fs::path& dir) {
    int links = 0;
    for (const char* name : record_pin_names()) {
        int fd = kernel.obj_get((dir / name).string());
        if (fd < 0) continue;
        KernelFd link(kernel, fd);
        LinkInfo info;
        if (kernel.link_info(fd, &info) != 0 || !info.detached()) return false;
        ++links;
    }
    return links > 0;
}

}  // namespace kmesh
