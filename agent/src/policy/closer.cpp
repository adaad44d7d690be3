#include "agent/src/policy/closer.hpp"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <sstream>

#include "common/file.hpp"
#include "common/pod_links.hpp"

namespace kmesh::policy {

namespace fs = std::filesystem;

namespace {

// Layout of what iter_tcp_authz writes per closed connection (struct authz_closed_record).
struct ClosedRecord {
    uint8_t src[16];
    uint8_t dst[16];
    uint16_t dst_port;
    uint16_t family;
    int32_t err;
};
static_assert(sizeof(ClosedRecord) == 40);

std::string addr_text(const uint8_t a[16]) {
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    char buf[INET6_ADDRSTRLEN] = {};
    if (std::memcmp(a, mapped, 12) == 0)
        inet_ntop(AF_INET, a + 12, buf, sizeof buf);
    else
        inet_ntop(AF_INET6, a, buf, sizeof buf);
    return buf;
}

uint64_t ns_inode_of(const std::string& link_text) {  // "net:[4026531840]"
    if (!link_text.starts_with("net:[") || !link_text.ends_with("]")) return 0;
    try {
        return std::stoull(link_text.substr(5, link_text.size() - 6));
    } catch (...) {
        return 0;
    }
}

// Runs the iterator inside the netns at `path`; on the calling thread (which it moves there).
Status iterate_in(int iter_link, const std::string& path, uint64_t ino, ClosePass* pass) {
    int ns = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (ns < 0) return Status(Errc::kIo, fmt::format("open {}: {}", path, std::strerror(errno)));
    struct stat st {};
    if (fstat(ns, &st) != 0 || st.st_ino != ino) {
        close(ns);
        return Status(Errc::kConflict, fmt::format("{} is no longer netns {}", path, ino));
    }
    if (setns(ns, CLONE_NEWNET) != 0) {
        int err = errno;
        close(ns);
        return Status(Errc::kIo, fmt::format("setns {}: {}", path, std::strerror(err)));
    }
    close(ns);
    int it = bpf_iter_create(iter_link);  // walks the sockets of this thread's netns
    if (it < 0)
        return Status(Errc::kIo, fmt::format("bpf_iter_create in {}: {}", path, std::strerror(errno)));
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = read(it, buf, sizeof buf)) > 0 || (n < 0 && errno == EAGAIN)) {
        if (n > 0) out.append(buf, static_cast<size_t>(n));
    }
    int err = n < 0 ? errno : 0;
    close(it);
    for (size_t off = 0; off + sizeof(ClosedRecord) <= out.size(); off += sizeof(ClosedRecord)) {
        ClosedRecord r;
        std::memcpy(&r, out.data() + off, sizeof r);
        pass->closed.push_back({addr_text(r.src), addr_text(r.dst), r.dst_port, r.err});
    }
    if (err != 0)
        return Status(Errc::kIo, fmt::format("reading the iterator in {}: {}", path, std::strerror(err)));
    return Status::ok();
}

}  // namespace

std::vector<uint64_t> enrolled_netns(const std::string& pods_dir) {
    LinuxKernel kernel;
    std::set<uint64_t> out;
    auto look = [&](const fs::path& record) {
        int fd = kernel.obj_get((record / kProgSkLookup).string());
        if (fd < 0) return;
        LinkInfo info;
        if (kernel.link_info(fd, &info) == 0 && info.netns && info.netns_ino != 0) out.insert(info.netns_ino);
        kernel.close(fd);
    };
    std::error_code ec;
    for (fs::directory_iterator it(pods_dir, ec), end; !ec && it != end; it.increment(ec)) {
        look(it->path());
        std::error_code e;
        for (fs::directory_iterator u(it->path() / kUsersDir, e), uend; !e && u != uend; u.increment(e))
            look(u->path());
    }
    return {out.begin(), out.end()};
}

std::map<uint64_t, std::string> netns_paths(const std::vector<uint64_t>& inodes, const std::string& mountinfo,
                                            const std::string& proc_root) {
    std::set<uint64_t> wanted(inodes.begin(), inodes.end());
    std::map<uint64_t, std::string> out;
    // mountinfo: id parent major:minor root mountpoint options ... - fstype source superopts
    std::istringstream lines(mountinfo);
    for (std::string line; std::getline(lines, line);) {
        std::istringstream f(line);
        std::string id, parent, dev, root, mountpoint;
        f >> id >> parent >> dev >> root >> mountpoint;
        const auto dash = line.find(" - ");
        if (dash == std::string::npos || line.compare(dash + 3, 5, "nsfs ") != 0) continue;
        const uint64_t ino = ns_inode_of(root);
        if (wanted.count(ino) && !out.count(ino)) out[ino] = mountpoint;
    }
    std::error_code ec;
    for (fs::directory_iterator it(proc_root, ec), end; !ec && it != end && out.size() < wanted.size();
         it.increment(ec)) {
        const std::string pid = it->path().filename().string();
        if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) continue;
        std::error_code e;
        const fs::path link = it->path() / "ns" / "net";
        const uint64_t ino = ns_inode_of(fs::read_symlink(link, e).string());
        if (!e && wanted.count(ino) && !out.count(ino)) out[ino] = link.string();
    }
    return out;
}

Status ConnectionCloser::close_denied_connections(ClosePass* result) {
    ClosePass pass;
    const std::string prog_path = layout_.prog(kProgAuthzIter);
    int prog = bpf_obj_get(prog_path.c_str());
    if (prog < 0) {
        if (errno == ENOENT) {
            if (!warned_missing_)
                spdlog::warn(
                    "authz: no {} (the kernel lacks bpf_sock_destroy, < 6.5): existing connections a "
                    "policy change denies are kept until they close",
                    prog_path);
            warned_missing_ = true;
            return Status::ok();
        }
        return Status(Errc::kIo, fmt::format("open {}: {}", prog_path, std::strerror(errno)));
    }
    int link = bpf_link_create(prog, 0, BPF_TRACE_ITER, nullptr);
    int link_err = errno;
    close(prog);
    if (link < 0)
        return Status(Errc::kIo, fmt::format("attach {}: {}", kProgAuthzIter, std::strerror(link_err)));

    const std::vector<uint64_t> inodes = enrolled_netns(layout_.pods_dir());
    auto mountinfo = read_file("/proc/self/mountinfo");
    const std::map<uint64_t, std::string> paths = netns_paths(inodes, mountinfo ? *mountinfo : std::string());
    for (uint64_t ino : inodes)
        if (!paths.count(ino))
            pass.problems.push_back(fmt::format("netns {}: no process or bind mount found to enter it", ino));
    // setns moves only the calling thread; a dedicated one leaves the agent's threads alone and
    // takes its namespace with it when it ends.
    std::thread worker([&] {
        for (const auto& [ino, path] : paths) {
            ++pass.namespaces;
            if (Status st = iterate_in(link, path, ino, &pass); !st) pass.problems.push_back(st.message());
        }
    });
    worker.join();
    close(link);

    uint64_t closed = 0;
    for (const auto& c : pass.closed) {
        if (c.error == 0) {
            ++closed;
            spdlog::info("authz: closed {} -> {}:{}: a policy change denies it", c.source, c.destination,
                         c.port);
        } else {
            spdlog::warn("authz: cannot close {} -> {}:{}: {}", c.source, c.destination, c.port,
                         std::strerror(-c.error));
        }
    }
    closed_total_ += closed;
    for (const auto& p : pass.problems) spdlog::warn("authz: close-on-change: {}", p);
    spdlog::debug("authz: close-on-change walked {} pod netns, closed {}", pass.namespaces, closed);
    if (result) *result = std::move(pass);
    return Status::ok();
}

void ConnectionCloser::start() {
    if (thread_.joinable()) return;
    stopping_ = false;
    thread_ = std::thread([this] { loop(); });
}

void ConnectionCloser::request() {
    {
        std::lock_guard lock(mu_);
        pending_ = true;
    }
    cv_.notify_one();
}

void ConnectionCloser::stop() {
    {
        std::lock_guard lock(mu_);
        stopping_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
}

void ConnectionCloser::loop() {
    std::unique_lock lock(mu_);
    for (;;) {
        cv_.wait(lock, [this] { return pending_ || stopping_; });
        if (stopping_) return;
        pending_ = false;
        lock.unlock();
        if (Status st = close_denied_connections(); !st)
            spdlog::warn("authz: close-on-change: {}", st.message());
        lock.lock();
    }
}

}  // namespace kmesh::policy
