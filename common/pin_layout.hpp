// Where the agent pins maps, programs and per-pod links under a bpffs root. Shared by the agent,
// kmesh-cni and the tests so that every path has exactly one definition.
#pragma once

#include <unistd.h>

#include <string>
#include <string_view>

#include "bpf/kmesh_abi.h"

namespace kmesh {

inline constexpr const char* kDefaultBpffsRoot = "/sys/fs/bpf";

// Program names as pinned under progs/ (the BPF function names in bpf/sock_connect.c).
inline constexpr const char* kProgConnect4 = "cgroup_connect4";
inline constexpr const char* kProgConnect6 = "cgroup_connect6";
// Issue 9 (names fixed before the work is split): L4 authorization on each enrolled pod's netns
// (sk_lookup: a refused SYN gets an RST), the waypoint TLV path (sockops on the pod cgroup puts
// waypoint-bound sockets in a sockhash whose sk_msg program prepends the TLV), and the TCP socket
// iterator that closes connections a policy change now denies.
inline constexpr const char* kProgSkLookup = "sk_lookup_authz";
inline constexpr const char* kProgSockops = "cgroup_sockops";
inline constexpr const char* kProgSkMsg = "sk_msg_tlv";
inline constexpr const char* kProgAuthzIter = "iter_tcp_authz";
// Issue 10 (names fixed before the work is split). UDP translation and address transparency on the
// pod cgroup (bpf/sock_udp.c): unconnected datagrams to a VIP, replies' source back to the VIP,
// getpeername() answering the VIP; the socket release hook drops a socket's reverse entries.
inline constexpr const char* kProgSendmsg4 = "cgroup_sendmsg4";
inline constexpr const char* kProgSendmsg6 = "cgroup_sendmsg6";
inline constexpr const char* kProgRecvmsg4 = "cgroup_recvmsg4";
inline constexpr const char* kProgRecvmsg6 = "cgroup_recvmsg6";
inline constexpr const char* kProgGetpeername4 = "cgroup_getpeername4";
inline constexpr const char* kProgGetpeername6 = "cgroup_getpeername6";
inline constexpr const char* kProgSockRelease = "cgroup_sock_release";
// Same-node acceleration (bpf/sock_accel.c): the sk_msg program attached to km_accel_sockhash,
// which redirects a send straight into the peer socket's receive queue.
inline constexpr const char* kProgSkMsgAccel = "sk_msg_accel";

// A CNI container id as a bpffs directory name. bpffs refuses any name containing '.' (EPERM), which
// the CNI spec allows in ids, so '.' becomes "%2E"; unambiguous because '%' is not allowed in ids.
// Ids without dots are unchanged.
inline std::string encode_pin_name(std::string_view container_id) {
    std::string out;
    out.reserve(container_id.size());
    for (char c : container_id) {
        if (c == '.')
            out += "%2E";
        else
            out += c;
    }
    return out;
}

struct PinLayout {
    std::string bpffs_root = kDefaultBpffsRoot;
    // The map layout version this build pins under; only tests change it (to act out an upgrade
    // across a layout bump with one binary).
    unsigned maps_version = KMESH_ABI_VERSION;

    // The directory under maps_root() holding the maps; empty means "v<maps_version>". The agent
    // sets it to the generation it loaded (Dataplane::maps_name()); readers take the published one
    // with with_current_maps().
    std::string maps_name;

    std::string kmesh_dir() const { return bpffs_root + "/kmesh"; }
    // All map generations live side by side during an upgrade or a resize: maps/v<N> for a layout
    // version, maps/v<N>-<digest> for one whose sizes differ from what v<N> holds (docs/upgrade.md).
    std::string maps_root() const { return kmesh_dir() + "/maps"; }
    std::string default_maps_name() const { return "v" + std::to_string(maps_version); }
    std::string maps_dir() const {
        return maps_root() + "/" + (maps_name.empty() ? default_maps_name() : maps_name);
    }
    // The one answer to "where are the current maps": a symlink maps/current -> <generation>,
    // replaced atomically (rename) by the agent when it publishes programs reading that generation.
    // Nodes last served by an agent before this pointer existed have none: maps/v<N> then.
    std::string current_maps_link() const { return maps_root() + "/current"; }
    // The generation the pointer names ("" when there is no pointer).
    std::string current_maps_name() const {
        char buf[256];
        ssize_t n = readlink(current_maps_link().c_str(), buf, sizeof buf - 1);
        if (n <= 0) return {};
        std::string name(buf, static_cast<size_t>(n));
        // Written relative (a name in maps_root); an absolute target is reduced to its last part.
        if (auto slash = name.rfind('/'); slash != std::string::npos) name = name.substr(slash + 1);
        return name;
    }
    // This layout reading the published maps (kmeshctl, tests): resolved once, so that every map
    // a reader opens belongs to the same generation even if the agent switches meanwhile.
    PinLayout with_current_maps() const {
        PinLayout l = *this;
        l.maps_name = current_maps_name();
        return l;
    }
    std::string progs_dir() const { return kmesh_dir() + "/progs"; }
    std::string pods_dir() const { return kmesh_dir() + "/pods"; }

    std::string map(const std::string& name) const { return maps_dir() + "/" + name; }
    std::string prog(const std::string& name) const { return progs_dir() + "/" + name; }
    // One directory per CNI container id (encoded by encode_pin_name), holding one pinned bpf_link per
    // attached program.
    std::string pod_dir(std::string_view container_id) const {
        return pods_dir() + "/" + encode_pin_name(container_id);
    }
};

}  // namespace kmesh
