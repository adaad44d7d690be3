// Close-on-change (issue 9 part 1): after a policy change, existing inbound connections of every
// enrolled pod that the new policies deny are closed, as ztunnel does
// (AuthorizationPolicyLateRejection). The BPF TCP iterator iter_tcp_authz (bpf/sock_lookup.c)
// re-checks each accepted connection with authz_check and closes the denied ones with
// bpf_sock_destroy. A TCP iterator walks the sockets of the network namespace it is created in, so
// it is created once per enrolled pod netns, from a thread that entered that netns (setns).
//
// Enrolled pods are found from their sk_lookup links under kmesh/pods (each names its netns by
// inode); the netns itself is opened through a process in it (/proc/<pid>/ns/net) or a bind mount
// of it (nsfs in /proc/self/mountinfo, e.g. /run/netns/<name>).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/pin_layout.hpp"
#include "common/status.hpp"

namespace kmesh::policy {

struct ClosedConnection {
    std::string source;       // "addr:port" is not known (the iterator reports addresses): "addr"
    std::string destination;  // "addr"
    uint16_t port = 0;        // destination (local) port
    int error = 0;            // bpf_sock_destroy's result (0: closed)
};

struct ClosePass {
    int namespaces = 0;  // pod network namespaces walked
    std::vector<ClosedConnection> closed;
    std::vector<std::string> problems;  // namespaces that could not be walked
};

// Network namespace inodes of the live sk_lookup links pinned under `pods_dir` (container, agent and
// shared-cgroup user records).
std::vector<uint64_t> enrolled_netns(const std::string& pods_dir);
// Openable paths for the given netns inodes: nsfs bind mounts from `mountinfo` text, then
// <proc_root>/<pid>/ns/net of any process in them.
std::map<uint64_t, std::string> netns_paths(const std::vector<uint64_t>& inodes, const std::string& mountinfo,
                                            const std::string& proc_root = "/proc");

class ConnectionCloser {
  public:
    explicit ConnectionCloser(PinLayout layout) : layout_(std::move(layout)) {}
    ~ConnectionCloser() { stop(); }

    // One pass over every enrolled pod's netns; runs the iterator there. Synchronous. Without the
    // pinned iterator (kernel < 6.5: no bpf_sock_destroy) it does nothing and says so once.
    Status close_denied_connections(ClosePass* out = nullptr);

    // Background use: request() after each authz publish; the worker thread runs a pass (requests
    // arriving during a pass make one more pass).
    void start();
    void request();
    void stop();
    uint64_t closed_total() const { return closed_total_; }

  private:
    void loop();
    PinLayout layout_;
    std::atomic<uint64_t> closed_total_{0};
    bool warned_missing_ = false;
    std::mutex mu_;
    std::condition_variable cv_;
    bool pending_ = false, stopping_ = false;
    std::thread thread_;
};

}  // namespace kmesh::policy
