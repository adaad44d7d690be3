// Attaching and releasing a pod's cgroup links under kmesh/pods: the kernel seam, the pods lock and
// the record layout. Shared by kmesh-cni (ADD/DEL/CHECK/GC) and the agent's enrolment reconciler so
// that both make and remove exactly the same records, under the same lock.
//
// Records under <bpffs>/kmesh/pods:
//   <container id>/            a container's own links (kmesh-cni ADD), net_<network> markers
//   _cgroup_<cgroup id>/       links shared by every container of one cgroupPath, users/<container>
//   _pod_<pod uid>/            links the agent made for a running pod (enrolment reconciler)
// Functions throw PodLinkError (a CNI error code and text); kmesh-cni renders it as its error
// object, the agent turns it into a Status.
#pragma once

#include <linux/bpf.h>
#include <spdlog/logger.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/pin_layout.hpp"

namespace kmesh {

// CNI spec error codes, then kmesh-cni's own (>= 100).
enum CniErrorCode : int {
    kErrIncompatibleVersion = 1,
    kErrInvalidEnv = 4,
    kErrIo = 5,
    kErrDecode = 6,
    kErrInvalidConfig = 7,
    kErrTryAgainLater = 11,
    kErrPluginNotAvailable = 50,  // STATUS: cannot service ADD requests
    kErrPodCgroupNotFound = 100,
    kErrAttach = 101,
    kErrNotAttached = 102,
    kErrInternal = 103,
};

class PodLinkError : public std::runtime_error {
  public:
    PodLinkError(int code, const std::string& msg, std::string details = "")
        : std::runtime_error(msg), code_(code), details_(std::move(details)) {}
    int code() const { return code_; }
    const std::string& details() const { return details_; }

  private:
    int code_;
    std::string details_;
};

struct LinkInfo {
    std::uint32_t prog_id = 0;
    std::uint64_t cgroup_id = 0;  // 0 once the cgroup is gone (the link is then detached)
    std::uint32_t attach_type = 0;
    // A netns link (sk_lookup): cgroup_id stays 0 and netns_ino is the namespace's inode, 0 once
    // the namespace is gone (detached).
    bool netns = false;
    std::uint64_t netns_ino = 0;
    bool detached() const { return netns ? netns_ino == 0 : cgroup_id == 0; }
};

// The few BPF/cgroup kernel calls made on pods, behind an interface so the logic can be
// unit-tested against a fake kernel. All calls return a negative errno on failure.
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
    // Opens a network namespace file (CNI_NETNS, /proc/<pid>/ns/net) and reports its inode: fd or
    // -errno (-EMEDIUMTYPE when the path is not a namespace file).
    virtual int open_netns(const std::string& path, std::uint64_t* netns_ino) = 0;
    // bpf_link_create(prog_fd, target_fd, type), the target a cgroup or (BPF_SK_LOOKUP) a netns fd:
    // link fd or -errno.
    virtual int link_create(int prog_fd, int cgroup_fd, bpf_attach_type type) = 0;
    // bpf_link_update(link_fd, prog_fd): atomically swaps the link's program, the link stays attached
    // throughout. 0 or -errno (-ENOLINK when the link is detached).
    virtual int link_update(int link_fd, int prog_fd) = 0;
    // Id of a program fd: 0 or -errno.
    virtual int prog_id(int prog_fd, std::uint32_t* id) = 0;
    // Info of a cgroup or netns link fd: 0 or -errno (-EINVAL when `fd` is neither).
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
    int open_netns(const std::string& path, std::uint64_t* netns_ino) override;
    int link_create(int prog_fd, int cgroup_fd, bpf_attach_type type) override;
    int link_update(int link_fd, int prog_fd) override;
    int prog_id(int prog_fd, std::uint32_t* id) override;
    int link_info(int link_fd, LinkInfo* info) override;
    void close(int fd) override;
    long fs_magic(const std::string& path) override;
};

// ---- records ----

// Marker directory naming the network an attachment belongs to (bpffs holds only pins and dirs).
inline constexpr std::string_view kNetMarkerPrefix = "net_";
// pods/_cgroup_<cgroup id>: links shared by every container of one cgroupPath. Container ids start
// with an alphanumeric, so neither prefix can be a container's own dir.
inline constexpr std::string_view kSharedPrefix = "_cgroup_";
// pods/_pod_<pod uid>: links the agent's reconciler attached to a running pod's cgroup.
inline constexpr std::string_view kAgentPodPrefix = "_pod_";
inline constexpr const char* kUsersDir = "users";

struct ProgSpec {
    const char* name;
    bpf_attach_type type;
    // The agent may not pin it (a kernel without the hook: it logs why at load), and agents before
    // issue 10 did not have it: a missing pin is skipped instead of failing the attach. The
    // required ones are pinned last by the agent, so once connect4 is there every optional program
    // this agent loads is there too.
    bool optional = false;
};
inline constexpr ProgSpec kPodProgs[] = {
    {kProgConnect4, BPF_CGROUP_INET4_CONNECT},
    {kProgConnect6, BPF_CGROUP_INET6_CONNECT},
    {kProgSockops, BPF_CGROUP_SOCK_OPS},
    // Issue 10: UDP translation and address transparency (bpf/sock_udp.c, docs/udp.md).
    {kProgSendmsg4, BPF_CGROUP_UDP4_SENDMSG, true},
    {kProgSendmsg6, BPF_CGROUP_UDP6_SENDMSG, true},
    {kProgRecvmsg4, BPF_CGROUP_UDP4_RECVMSG, true},
    {kProgRecvmsg6, BPF_CGROUP_UDP6_RECVMSG, true},
    {kProgGetpeername4, BPF_CGROUP_INET4_GETPEERNAME, true},
    {kProgGetpeername6, BPF_CGROUP_INET6_GETPEERNAME, true},
    {kProgSockRelease, BPF_CGROUP_INET_SOCK_RELEASE, true},
};
// L4 authorization: attached to the pod's network namespace (not its cgroup), pinned in the
// container's own record (for a shared cgroup: in its users/<container> entry, as each container
// may have its own netns).
inline constexpr ProgSpec kNetnsProg = {kProgSkLookup, BPF_SK_LOOKUP};

struct PinnedProg {
    KernelFd fd;
    std::uint32_t id = 0;
    bool present() const { return fd.get() >= 0; }  // false: an optional program not pinned
};

std::string errno_str(int negative_errno);

// Opens the agent's pinned program; a missing pin means the agent has not (yet) loaded it
// (`missing_code`, "kmesh agent not running: ...").
PinnedProg open_prog(Kernel& kernel, const PinLayout& layout, const char* name, int missing_code);
// The pod programs in kPodProgs order, then kNetnsProg's (index std::size(kPodProgs)). An optional
// program that is not pinned comes back empty (!present()); a missing required one throws.
std::vector<PinnedProg> open_pod_progs(Kernel& kernel, const PinLayout& layout, int missing_code);

// A pod's network namespace, opened.
struct PodNetns {
    KernelFd fd;
    std::uint64_t ino = 0;
};
// Opens `path` as a network namespace; `error_code` for a path that cannot be opened.
PodNetns open_pod_netns(Kernel& kernel, const std::string& path, int error_code, spdlog::logger& log);

// Makes `pin` a link of `prog` (kNetnsProg) on the netns, as ensure_link does for cgroups: an
// existing link on that netns is kept (moved to `prog` when it runs another); a detached link or
// one on another netns is replaced. Returns true when it pinned a new link.
// `fresh_dir`: the caller created pin's directory under the pods lock (no pin can be there).
bool ensure_netns_link(Kernel& kernel, const PinnedProg& prog, const PodNetns& netns,
                       const std::filesystem::path& pin, spdlog::logger& log, bool fresh_dir = false);

// Serialises every change under kmesh/pods between kmesh-cni processes and the agent (runtimes run
// ADDs of different containers in parallel; the agent's reconciler and its cleanup of detached
// records run beside them). The lock is a flock on the pods directory itself (bpffs holds no
// regular files); the agent's own instance lock is on kmesh/, not this. Mutations take
// milliseconds, so one lock for all containers costs nothing measurable and also covers the shared
// per-cgroup link sets. A flock belongs to the open file: never take it twice in one thread.
class PodsLock {
  public:
    explicit PodsLock(const std::string& pods_dir);
    PodsLock(const PodsLock&) = delete;
    PodsLock& operator=(const PodsLock&) = delete;
    ~PodsLock();

  private:
    int fd_ = -1;
};

std::string net_marker(std::string_view network);
std::filesystem::path shared_dir(const PinLayout& layout, std::uint64_t cgroup_id);
std::string agent_pod_record(std::string_view pod_uid);  // "_pod_<uid>"
bool has_net_markers(const std::filesystem::path& record);
bool is_empty_dir(const std::filesystem::path& dir);
void remove_tree(const std::filesystem::path& dir);
// Drops `network`'s claim on an attachment record (a pod dir, or a user entry of a shared set);
// the record goes once no network claims it. Records without markers and an empty network name
// remove the record. Returns true when the record was removed.
bool release_record(const std::filesystem::path& record, const std::string& network);
// The last user of a shared link set gone: unpinning its links detaches the programs.
void drop_shared_if_unused(const std::filesystem::path& holder, spdlog::logger& log);

// Makes `pin` a link of `prog` on the cgroup. An existing link on the cgroup is kept, and moved to
// `prog` with bpf_link_update if it runs another program (agent upgrade): the pod never loses the
// hook. Only a detached link or one on another cgroup is replaced by a new link.
// Returns true when it pinned a new link.
// `fresh_dir`: the caller created pin's directory under the pods lock (no pin can be there).
bool ensure_link(Kernel& kernel, const ProgSpec& spec, const PinnedProg& prog, int cgroup_fd,
                 std::uint64_t cgroup_id, const std::filesystem::path& pin, spdlog::logger& log,
                 bool fresh_dir = false);

// Opens a pod cgroup; `error_code` is the code for a cgroup that exists but cannot be opened.
KernelFd open_pod_cgroup(const std::filesystem::path& cgroup, Kernel& kernel, int error_code,
                         std::uint64_t* cgroup_id, spdlog::logger& log);

// The network namespace of a pod found from its processes: the first process (breadth first) in
// `cgroup` or below, as <proc_root>/<pid>/ns/net. nullopt (with the reason logged) when the cgroup
// holds no process, or when that namespace is the node's own (a hostNetwork pod: authorization
// must never be attached to the node's namespace).
std::optional<PodNetns> find_pod_netns(Kernel& kernel, const std::filesystem::path& cgroup,
                                       spdlog::logger& log, const std::string& proc_root = "/proc");

// Pods attached before issue 9 (or whose process could not be found then) have cgroup links but
// no sk_lookup link: for each container and agent record under pods/ whose netns link is missing
// or detached while a cgroup link is live, finds the cgroup (by id, under `cgroup_root`), a
// process in it and attaches the netns link. Shared-cgroup records (cgroupPath) are left alone:
// which process is which container cannot be told; their next ADD attaches it. Returns how many
// links it attached; failures are logged. The caller holds the PodsLock.
int attach_missing_netns_links(Kernel& kernel, const PinLayout& layout,
                               const std::filesystem::path& cgroup_root, spdlog::logger& log,
                               const std::string& proc_root = "/proc");

// Records attached by an agent with fewer pod programs (before issue 10: connect4, connect6 and
// sockops only) lack the newer cgroup links: for each record under pods/ (container, agent and
// shared-cgroup records) with a live cgroup link, attaches every pinned program of kPodProgs it has
// no live link for, on the cgroup of its live links (found by id under `cgroup_root`, one bounded
// walk for all records). A program the agent did not pin (this kernel lacks the hook) is skipped.
// Returns how many links it attached; failures are logged and leave the record as it was. The
// caller holds the PodsLock.
int attach_missing_cgroup_links(Kernel& kernel, const PinLayout& layout,
                                const std::filesystem::path& cgroup_root, spdlog::logger& log);

// Attaches the pod programs to the cgroup and the sk_lookup program to `netns` (when given) and
// records it: under pods/<record_name> (a container's or the agent's record), or, `shared`, in
// pods/_cgroup_<id> with users/<record_name> (the netns link in the users/ entry). `network`
// (may be empty) marks the record. `progs` as open_pod_progs returns them. All or nothing: a
// failure removes exactly what this call created. The caller holds the PodsLock.
void attach_locked(Kernel& kernel, const PinLayout& layout, const std::vector<PinnedProg>& progs,
                   int cgroup_fd, std::uint64_t cgroup_id, bool shared, const std::string& record_name,
                   const std::string& network, spdlog::logger& log, const PodNetns* netns = nullptr);

// Where a record's netns link is pinned.
std::filesystem::path netns_link_pin(const PinLayout& layout, bool shared, std::uint64_t cgroup_id,
                                     const std::string& record_name);

// What one record's pins say: cgroup ids of its live links, and how many are detached.
struct RecordLinks {
    std::vector<std::uint64_t> live_cgroups;
    std::vector<std::uint64_t> live_netns;  // inode of the netns link's namespace, when live
    int detached = 0;
    bool all_detached() const { return detached > 0 && live_cgroups.empty() && live_netns.empty(); }
};
RecordLinks read_record_links(Kernel& kernel, const std::filesystem::path& links_dir);

// True when `dir` holds at least one link pin and every one is detached (its cgroup is gone):
// removing such a record can never take the hook away from a live container.
bool all_links_detached(Kernel& kernel, const std::filesystem::path& dir);

}  // namespace kmesh
