#include "agent/src/dataplane/bpf_loader.hpp"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/btf.h>
#include <linux/magic.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "common/cgroup.hpp"
#include "common/pod_links.hpp"
#include "kmesh_sock.skel.h"

namespace fs = std::filesystem;

namespace kmesh {

namespace {

std::string errno_text(int err) { return std::strerror(err < 0 ? -err : err); }

// Checks that a pinned map can be reused with the wanted shape, so that a size flag change gives an
// actionable message instead of libbpf's generic refusal.
std::string check_pinned_map(const std::string& path, bpf_map* map) {
    int fd = bpf_obj_get(path.c_str());
    if (fd < 0) return {};  // not pinned yet: libbpf creates it
    bpf_map_info info{};
    uint32_t len = sizeof info;
    int rc = bpf_obj_get_info_by_fd(fd, &info, &len);
    close(fd);
    if (rc) return fmt::format("{}: cannot inspect pinned map: {}", path, errno_text(errno));
    if (info.key_size != bpf_map__key_size(map) || info.value_size != bpf_map__value_size(map) ||
        info.max_entries != bpf_map__max_entries(map) || info.type != bpf_map__type(map))
        return fmt::format(
            "{} is pinned with key/value size {}/{} and {} entries, but this agent wants {}/{} and {}", path,
            info.key_size, info.value_size, info.max_entries, bpf_map__key_size(map),
            bpf_map__value_size(map), bpf_map__max_entries(map));
    return {};
}

// The maps pinned per generation: every map of the object but .rodata (this load's feature flags)
// and a km_conn_events the kernel cannot make (telemetry off: a one-entry array, never pinned).
std::vector<bpf_map*> pinnable_maps(kmesh_sock* skel, bool telemetry) {
    std::vector<bpf_map*> out;
    bpf_map* map;
    bpf_object__for_each_map(map, skel->obj) {
        if (bpf_map__is_internal(map)) continue;
        if (map == skel->maps.km_conn_events && !telemetry) continue;
        out.push_back(map);
    }
    return out;
}

// Whether every map pinned in dir has the shape this load wants (missing ones are created).
bool generation_fits(const std::string& dir, const std::vector<bpf_map*>& maps) {
    return std::all_of(maps.begin(), maps.end(),
                       [&](bpf_map* m) { return check_pinned_map(dir + "/" + bpf_map__name(m), m).empty(); });
}

// The shapes this load wants, as a short digest: the name of a generation whose sizes differ from
// what maps/v<N> holds. Same flags, same name, so a restart finds its generation again.
std::string shapes_digest(const std::vector<bpf_map*>& maps) {
    std::string text;
    for (bpf_map* m : maps)
        text += fmt::format("{} {} {} {} {}\n", bpf_map__name(m), static_cast<int>(bpf_map__type(m)),
                            bpf_map__key_size(m), bpf_map__value_size(m), bpf_map__max_entries(m));
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    if (EVP_Digest(text.data(), text.size(), md, &len, EVP_sha256(), nullptr) != 1) return "000000000000";
    std::string out;
    for (unsigned i = 0; i < 6 && i < len; i++) out += fmt::format("{:02x}", md[i]);
    return out;
}

// Maps whose contents are kernel-side state rather than the mesh the agent writes: per-socket
// storage (getpeername's VIP, waypoint TLV state, telemetry's per-connection record), per-flow
// LRUs (session affinity, UDP reverse translation), circuit-breaker counts and the socket
// storage that releases them, the sockhashes holding accelerated and
// waypoint-bound sockets, counters, the telemetry ring buffer and switch. A new generation of the
// same layout version pins these very objects again when their shape is unchanged, so a resize
// loses none of it (the agent cannot rebuild it: it never saw the sockets). The mesh maps are
// always new in a new generation and filled before publishing (the tested path of a layout bump):
// sharing them would let the fill rewrite entries the old programs still read against their own
// other maps. km_authz_cache and km_authz_hits belong to the authorization tables (policy slots,
// epochs), so they are new with them.
constexpr const char* kCarriedMaps[] = {
    "km_affinity",    "km_rr",           "km_stats",       "km_udp_rev",     "km_udp_stats",
    "km_sock_peer",   "km_wp_sk",        "km_wp_sockhash", "km_wp_stats",    "km_accel_sockhash",
    "km_accel_state", "km_accel_stats",  "km_conn",        "km_conn_events", "km_tel_config",
    "km_tel_stats",   "km_authz_totals", "km_cb",          "km_native_sk",   "km_ratelimit",
};

bool carried(const char* name) {
    return std::any_of(std::begin(kCarriedMaps), std::end(kCarriedMaps),
                       [&](const char* c) { return std::strcmp(c, name) == 0; });
}

// Entries in a pinned hash-like map (a walk of its keys), or -1 if it cannot be read.
long count_entries(int fd, uint32_t key_size) {
    std::vector<unsigned char> key(key_size), next(key_size);
    long n = 0;
    void* prev = nullptr;
    while (bpf_map_get_next_key(fd, prev, next.data()) == 0) {
        n++;
        key.swap(next);
        prev = key.data();
    }
    return errno == ENOENT ? n : -1;
}

// A smaller generation must hold what the current one holds: refused before anything is created,
// so the current generation goes on serving untouched. Checked on the mesh maps (hash and LPM
// tables, whose entries are all live); the LRUs and sockhashes lose their oldest entries or stop
// taking new sockets, which is what their size means, and arrays are sized by their own flags.
Status check_shrink(const std::string& current_dir, const std::vector<bpf_map*>& maps) {
    std::string refused;
    for (bpf_map* m : maps) {
        const auto type = bpf_map__type(m);
        if (carried(bpf_map__name(m)) || (type != BPF_MAP_TYPE_HASH && type != BPF_MAP_TYPE_LPM_TRIE))
            continue;
        const std::string path = current_dir + "/" + bpf_map__name(m);
        int fd = bpf_obj_get(path.c_str());
        if (fd < 0) continue;
        bpf_map_info info{};
        uint32_t len = sizeof info;
        long live = -1;
        if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0 && info.max_entries > bpf_map__max_entries(m) &&
            info.key_size == bpf_map__key_size(m))
            live = count_entries(fd, info.key_size);
        close(fd);
        if (live > static_cast<long>(bpf_map__max_entries(m)))
            refused +=
                fmt::format("{}{} holds {} entries, more than the {} asked for", refused.empty() ? "" : "; ",
                            bpf_map__name(m), live, bpf_map__max_entries(m));
    }
    if (refused.empty()) return {};
    return {Errc::kResourceExhausted,
            fmt::format("refusing to shrink the maps below what they hold ({}); nothing was changed and {} "
                        "keeps serving: remove services first or keep the size flags",
                        refused, current_dir)};
}

// A link whose cgroup was removed (pod gone without a DEL, e.g. a node crash) reports cgroup id 0;
// a netns link (sk_lookup) whose network namespace is gone reports netns_ino 0.
bool link_detached(int link_fd) {
    bpf_link_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(link_fd, &info, &len) != 0) return false;
    if (info.type == BPF_LINK_TYPE_CGROUP) return info.cgroup.cgroup_id == 0;
    if (info.type == BPF_LINK_TYPE_NETNS) return info.netns.netns_ino == 0;
    return false;
}

// bpf_sock_destroy (6.5) is a kfunc: present when vmlinux BTF has a function of that name.
// Returns "" when present, else why not.
std::string probe_sock_destroy() {
    const char* pretend = getenv("KMESH_PRETEND_NO_SOCK_DESTROY");
    if (pretend && *pretend && std::strcmp(pretend, "0") != 0) return "KMESH_PRETEND_NO_SOCK_DESTROY is set";
    btf* vmlinux = btf__load_vmlinux_btf();
    if (!vmlinux) return fmt::format("cannot read the kernel BTF: {}", errno_text(errno));
    const int id = btf__find_by_name_kind(vmlinux, "bpf_sock_destroy", BTF_KIND_FUNC);
    btf__free(vmlinux);
    return id > 0 ? std::string() : "this kernel lacks the bpf_sock_destroy kfunc (needs 6.5)";
}

std::string hex(const unsigned char* p, size_t n) {
    std::string out;
    out.reserve(2 * n);
    for (size_t i = 0; i < n; i++) out += fmt::format("{:02x}", p[i]);
    return out;
}

// Ids of the maps a program references (at most 64: ours reference fewer than that).
std::vector<uint32_t> prog_map_ids(int prog_fd) {
    std::vector<uint32_t> ids(64);
    bpf_prog_info info{};
    info.nr_map_ids = static_cast<uint32_t>(ids.size());
    info.map_ids = reinterpret_cast<uint64_t>(ids.data());
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(prog_fd, &info, &len) != 0) return {};
    ids.resize(std::min<size_t>(info.nr_map_ids, ids.size()));
    return ids;
}

// Whether the kernel knows a cgroup attach type: it refuses to load a program for an unknown
// expected_attach_type. A two-instruction program (return 1) is loaded and closed. Returns "" when
// supported, else why not. KMESH_PRETEND_NO_<what> forces "not supported" (tests).
std::string probe_attach_type(bpf_prog_type type, bpf_attach_type attach, const char* what,
                              const char* since) {
    const std::string env = fmt::format("KMESH_PRETEND_NO_{}", what);
    const char* pretend = getenv(env.c_str());
    if (pretend && *pretend && std::strcmp(pretend, "0") != 0) return env + " is set";
    const bpf_insn insns[] = {
        {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 1},
        {BPF_JMP | BPF_EXIT, 0, 0, 0, 0},
    };
    LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = attach);
    int fd = bpf_prog_load(type, "kmesh_probe", "GPL", insns, 2, &opts);
    if (fd >= 0) {
        close(fd);
        return {};
    }
    return fmt::format("this kernel refuses the {} hook ({}; needs {})", what, errno_text(errno), since);
}

// The map writer fills km_member (its "members" stage), so a UDP reply is translated only while its
// backend is still one of the service's endpoints (bpf/include/udp.h).
constexpr bool kWriterFillsMembership = true;

// The UDP hooks (bpf/sock_udp.c) are probed one group at a time, and a group the kernel lacks is not
// loaded (kmesh-cni then skips its pin): the rest keeps working.
void probe_udp_hooks(kmesh_sock* skel) {
    if (auto why =
            probe_attach_type(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_UDP4_RECVMSG, "RECVMSG", "5.2");
        !why.empty()) {
        // Without recvmsg a reply would show the endpoint's address, which resolvers drop as a
        // spoof: unconnected datagrams are better left untranslated.
        for (bpf_program* p : {skel->progs.cgroup_sendmsg4, skel->progs.cgroup_sendmsg6,
                               skel->progs.cgroup_recvmsg4, skel->progs.cgroup_recvmsg6})
            bpf_program__set_autoload(p, false);
        spdlog::warn("{}: unconnected UDP to service VIPs is not translated (connected UDP and TCP are)",
                     why);
    }
    if (auto why = probe_attach_type(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_GETPEERNAME,
                                     "GETPEERNAME", "5.8");
        !why.empty()) {
        for (bpf_program* p : {skel->progs.cgroup_getpeername4, skel->progs.cgroup_getpeername6})
            bpf_program__set_autoload(p, false);
        spdlog::warn("{}: getpeername() on sockets connected through a VIP returns the endpoint", why);
    }
    if (auto why =
            probe_attach_type(BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET_SOCK_RELEASE, "SOCK_RELEASE", "5.9");
        !why.empty()) {
        bpf_program__set_autoload(skel->progs.cgroup_sock_release, false);
        spdlog::warn("{}: closed UDP sockets' reverse entries stay until km_udp_rev (LRU) evicts them", why);
    }
}

// What same-node acceleration needs beyond what the rest of the programs need: sk_msg programs,
// a sockhash, bpf_msg_redirect_hash (4.17), sockhash updates and callback flags from sockops (the
// RTT and state callbacks, 4.17/4.16). Returns "" when all are there.
std::string probe_sockmap() {
    const char* pretend = getenv("KMESH_PRETEND_NO_SOCKMAP");
    if (pretend && *pretend && std::strcmp(pretend, "0") != 0) return "KMESH_PRETEND_NO_SOCKMAP is set";
    if (libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SK_MSG, nullptr) != 1)
        return "this kernel has no sk_msg programs";
    if (libbpf_probe_bpf_map_type(BPF_MAP_TYPE_SOCKHASH, nullptr) != 1)
        return "this kernel has no sockhash maps";
    const std::pair<bpf_prog_type, bpf_func_id> helpers[] = {
        {BPF_PROG_TYPE_SK_MSG, BPF_FUNC_msg_redirect_hash},
        {BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_sock_hash_update},
        {BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_sock_ops_cb_flags_set},
    };
    for (auto [type, helper] : helpers) {
        int rc = libbpf_probe_bpf_helper(type, helper, nullptr);
        if (rc != 1)
            return fmt::format("helper {} unavailable to {} programs{}", static_cast<int>(helper),
                               libbpf_bpf_prog_type_str(type),
                               rc < 0 ? fmt::format(" (probe failed: {})", errno_text(rc)) : "");
    }
    return {};
}

// BPF ring buffers (5.8): the only way connection events reach the agent. "" when present.
std::string probe_ringbuf() {
    const char* pretend = getenv("KMESH_PRETEND_NO_RINGBUF");
    if (pretend && *pretend && std::strcmp(pretend, "0") != 0) return "KMESH_PRETEND_NO_RINGBUF is set";
    int rc = libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, nullptr);
    if (rc == 1) return {};
    return rc == 0 ? "this kernel has no BPF ring buffers (needs 5.8)"
                   : fmt::format("probing BPF ring buffers failed: {}", errno_text(rc));
}

// The TCP socket iterator with socket storage access (5.11): what reports the bytes of open
// connections (bpf/sock_telemetry.c). Its target is a kernel function named bpf_iter_tcp. "" when present.
std::string probe_conn_iter() {
    const char* pretend = getenv("KMESH_PRETEND_NO_CONN_ITER");
    if (pretend && *pretend && std::strcmp(pretend, "0") != 0) return "KMESH_PRETEND_NO_CONN_ITER is set";
    btf* vmlinux = btf__load_vmlinux_btf();
    if (!vmlinux) return fmt::format("cannot read the kernel BTF: {}", errno_text(errno));
    const int id = btf__find_by_name_kind(vmlinux, "bpf_iter_tcp", BTF_KIND_FUNC);
    btf__free(vmlinux);
    return id > 0 ? std::string() : "this kernel has no TCP socket iterator (needs 5.9)";
}

}  // namespace

std::string check_ringbuf_bytes(uint64_t bytes) {
    const long page = sysconf(_SC_PAGESIZE);
    const uint64_t min = page > 0 ? static_cast<uint64_t>(page) : 4096;
    if (bytes < min || bytes > (1ull << 30) || (bytes & (bytes - 1)) != 0)
        return fmt::format(
            "--telemetry-ringbuf-bytes {}: must be a power of two from {} (the page size) to 1073741824",
            bytes, min);
    return {};
}

const ProgramBuild& program_build() {
    static const ProgramBuild build = [] {
        ProgramBuild b;
        const void* data = kmesh_sock__elf_bytes(&b.object_bytes);
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int len = 0;
        if (EVP_Digest(data, b.object_bytes, md, &len, EVP_sha256(), nullptr) == 1)
            b.sha256 = hex(md, len);
        else
            b.sha256 = std::string(64, '0');  // never seen: OpenSSL's SHA-256 does not fail on memory
#ifdef KMESH_PROGRAM_VARIANT
        b.test_variant = true;
#endif
        return b;
    }();
    return build;
}

std::string_view program_object() {
    size_t n = 0;
    const void* data = kmesh_sock__elf_bytes(&n);
    return {static_cast<const char*>(data), n};
}

std::string version_text(const std::string& binary) {
    const ProgramBuild& b = program_build();
    return fmt::format(
        "{} {}\nprograms: sha256:{} (embedded BPF object, {} bytes){}\nmap layout: v{} (KMESH_ABI_VERSION; "
        "maps pinned under maps/v{})",
        binary, KMESH_VERSION, b.sha256, b.object_bytes, b.test_variant ? ", test variant build" : "",
        KMESH_ABI_VERSION, KMESH_ABI_VERSION);
}

std::string ensure_bpffs(const std::string& root) {
    struct statfs st {};
    if (statfs(root.c_str(), &st) == 0 && st.f_type == BPF_FS_MAGIC) return {};
    std::error_code ec;
    fs::create_directories(root, ec);
    if (mount("bpf", root.c_str(), "bpf", 0, "mode=0700") != 0)
        return fmt::format("mount bpffs at {}: {}", root, errno_text(errno));
    spdlog::info("mounted bpffs at {}", root);
    return {};
}

int lock_kmesh_dir(const PinLayout& layout, std::string* error) {
    int fd = open(layout.kmesh_dir().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        *error = fmt::format("open {}: {}", layout.kmesh_dir(), errno_text(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        *error = errno == EWOULDBLOCK
                     ? fmt::format("another kmesh-daemon holds {}; stop it first", layout.kmesh_dir())
                     : fmt::format("lock {}: {}", layout.kmesh_dir(), errno_text(errno));
        close(fd);
        return -1;
    }
    return fd;
}

Dataplane::~Dataplane() {
    for (int fd : warm_links_) close(fd);
    if (!warm_cgroup_.empty()) rmdir(warm_cgroup_.c_str());  // empty: nothing ever joins it
    bpf_link__destroy(conn_iter_link_);                      // the link only; nothing is pinned for it
    kmesh_sock__destroy(skel_);
    close(lock_fd_);
}

std::unique_ptr<Dataplane> Dataplane::load(const PinLayout& layout, const MapSizes& sizes,
                                           std::string* error) {
    // Flags first: a bad one changes nothing on the node.
    if (auto e = check_ringbuf_bytes(sizes.tel_ringbuf_bytes); !e.empty()) {
        *error = e;
        return nullptr;
    }
    if (auto e = ensure_bpffs(layout.bpffs_root); !e.empty()) {
        *error = e;
        return nullptr;
    }
    std::error_code ec;
    // The generation's own directory is made once it is chosen, after the lock and the shrink check.
    for (const auto& dir : {layout.maps_root(), layout.progs_dir(), layout.pods_dir()}) {
        fs::create_directories(dir, ec);
        if (ec) {
            *error = fmt::format("create {}: {}", dir, ec.message());
            return nullptr;
        }
    }
    int lock_fd = lock_kmesh_dir(layout, error);
    if (lock_fd < 0) return nullptr;

    kmesh_sock* skel = kmesh_sock__open();
    if (!skel) {
        *error = fmt::format("open BPF skeleton: {}", errno_text(errno));
        close(lock_fd);
        return nullptr;
    }
    std::unique_ptr<Dataplane> dp(new Dataplane(skel, lock_fd));
    const std::pair<bpf_map*, uint32_t> sized[] = {
        {skel->maps.km_frontend, sizes.frontends},
        {skel->maps.km_service, sizes.services},
        {skel->maps.km_endpoint, sizes.endpoints},
        {skel->maps.km_backend, sizes.backends},
        {skel->maps.km_port, sizes.ports},
        {skel->maps.km_waypoint, sizes.waypoints},
        {skel->maps.km_wp_dest, sizes.waypoint_addrs},
        {skel->maps.km_wp_sockhash, sizes.waypoint_sockets},
        {skel->maps.km_udp_rev, sizes.udp_sockets},
        {skel->maps.km_accel_sockhash, sizes.accel.max_sockets},
        {skel->maps.km_accel_state, sizes.accel.max_sockets},
        {skel->maps.km_member, sizes.members},
        {skel->maps.km_split, sizes.splits},
        {skel->maps.km_cb, sizes.cb},
        {skel->maps.km_limit_cfg, sizes.limits},
        {skel->maps.km_ratelimit, sizes.ratelimits},
        {skel->maps.km_affinity, sizes.affinity},
        // One round-robin counter per service id; ids run 1..services.
        {skel->maps.km_rr, sizes.services + 1},
    };
    if (sizes.udp_sockets == 0) {
        *error = "--max-udp-sockets must be at least 1";
        return nullptr;
    }
    for (auto [map, entries] : sized) bpf_map__set_max_entries(map, entries);
    // Authz tables: arrays and generation-keyed maps hold two generations; the evaluator finds a
    // generation's array slice through the per-generation sizes in rodata.
    const auto& az = sizes.authz;
    const std::pair<bpf_map*, uint64_t> authz_sized[] = {
        {skel->maps.km_authz_ident, az.idents},
        {skel->maps.km_authz_dst, 2ull * az.dsts},
        {skel->maps.km_authz_set, 2ull * az.sets},
        {skel->maps.km_authz_setpol, 2ull * az.setpol},
        {skel->maps.km_authz_policy, 2ull * az.policies},
        {skel->maps.km_authz_row, 2ull * az.rows},
        {skel->maps.km_authz_idset, 2ull * az.entries},
        {skel->maps.km_authz_cidr, 2ull * az.entries},
        {skel->maps.km_authz_port, 2ull * az.entries},
        {skel->maps.km_authz_cache, az.cache},
        {skel->maps.km_authz_hits, uint64_t{az.policies} * KMESH_AUTHZ_HIT_COUNT},
    };
    for (auto [map, entries] : authz_sized) {
        if (entries == 0 || entries > UINT32_MAX || az.rows > KMESH_AUTHZ_MAX_ROWS_LIMIT) {
            *error = fmt::format("authz map {}: {} entries is out of range; check the --max-authz-* flags",
                                 bpf_map__name(map), entries);
            return nullptr;
        }
        bpf_map__set_max_entries(map, static_cast<uint32_t>(entries));
    }
    skel->rodata->kmesh_authz_sets_per_gen = az.sets;
    skel->rodata->kmesh_authz_setpol_per_gen = az.setpol;
    skel->rodata->kmesh_authz_policies_per_gen = az.policies;
    skel->rodata->kmesh_authz_rows_per_gen = az.rows;

    // Kernel feature probe (as Cilium does): bpf_set_retval needs 5.18. Without it the flag stays
    // false in rodata, the verifier prunes the call, and a refused connect fails with EPERM.
    // KMESH_PRETEND_NO_SET_RETVAL=1 forces that path (tests, or to rule the helper out).
    {
        std::string reason;
        const char* pretend = getenv("KMESH_PRETEND_NO_SET_RETVAL");
        if (pretend && *pretend && std::strcmp(pretend, "0") != 0) {
            reason = "KMESH_PRETEND_NO_SET_RETVAL is set";
        } else {
            int probe = libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_set_retval, nullptr);
            if (probe == 0)
                reason = "this kernel lacks it (needs 5.18)";
            else if (probe < 0)
                reason = fmt::format("probing it failed: {}", errno_text(probe));
        }
        skel->rodata->kmesh_has_set_retval = reason.empty();
        if (reason.empty())
            spdlog::info("bpf_set_retval available: refused connects fail with ECONNREFUSED");
        else
            spdlog::warn(
                "bpf_set_retval unavailable ({}): connects to a service without endpoints fail "
                "with EPERM instead of ECONNREFUSED",
                reason);
    }

    skel->rodata->kmesh_udp_check_member = kWriterFillsMembership;
    probe_udp_hooks(skel);

    // Closing connections a policy change now denies needs bpf_sock_destroy; without it the
    // iterator would not load (unknown kfunc), so it is left out and only new connections are
    // checked: existing ones are kept until they close.
    if (auto reason = probe_sock_destroy(); !reason.empty()) {
        bpf_program__set_autoload(skel->progs.iter_tcp_authz, false);
        spdlog::warn(
            "{}: connections that a policy change denies are kept until they close; new connections "
            "are checked",
            reason);
    } else {
        dp->can_close_ = true;
    }

    // Same-node acceleration: asked for and possible, sockops inserts (a rodata flag the verifier
    // prunes on). Without the kernel's support sk_msg_accel is not loaded at all.
    if (auto reason = probe_sockmap(); !reason.empty()) {
        bpf_program__set_autoload(skel->progs.sk_msg_accel, false);
        dp->sockmap_reason_ = reason;
        if (sizes.accel.enabled)
            spdlog::warn("same-node sockmap acceleration off: {}; connections between pods use TCP", reason);
    } else if (!sizes.accel.enabled) {
        dp->sockmap_reason_ = "--sockmap=off";
    }
    dp->sockmap_active_ = sizes.accel.enabled && dp->sockmap_reason_.empty();
    skel->rodata->kmesh_accel_enabled = dp->sockmap_active_;
    if (dp->sockmap_active_) spdlog::info("same-node sockmap acceleration on");

    // Connection telemetry (docs/telemetry.md). Without ring buffers nothing is reported: the
    // rodata flag makes the verifier prune every use of km_conn_events, which becomes a one-entry
    // array (the programs still name a map there) created for this load only, never pinned.
    dp->telemetry_reason_ = probe_ringbuf();
    bpf_map__set_max_entries(skel->maps.km_conn_events, sizes.tel_ringbuf_bytes);
    if (!dp->telemetry_reason_.empty()) {
        skel->rodata->kmesh_tel_supported = false;
        bpf_map__set_type(skel->maps.km_conn_events, BPF_MAP_TYPE_ARRAY);
        bpf_map__set_key_size(skel->maps.km_conn_events, sizeof(uint32_t));
        bpf_map__set_value_size(skel->maps.km_conn_events, sizeof(uint32_t));
        bpf_map__set_max_entries(skel->maps.km_conn_events, 1);
        bpf_program__set_autoload(skel->progs.iter_conn_report, false);
        spdlog::warn("connection telemetry off: {}; no kernel connection metrics (the mesh works as before)",
                     dp->telemetry_reason_);
    } else if (auto why = probe_conn_iter(); !why.empty()) {
        bpf_program__set_autoload(skel->progs.iter_conn_report, false);
        dp->conn_iter_reason_ = why;
        spdlog::warn("{}: open connections report their bytes only when they close", why);
    }
    // Which generation of maps to load (docs/upgrade.md, "A size change"). The current one (the
    // maps/current pointer; maps/v<N> on a node last served by an agent without it) is reused when
    // it is of this layout version and every map in it has the shape wanted: a restart. Otherwise
    // (a layout bump or a size flag changed) the maps go in a new generation: maps/v<N> if free or
    // fitting, else maps/v<N>-<digest of the shapes>. publish() moves the pods to it and drops the
    // previous one, as for a layout bump.
    const std::vector<bpf_map*> maps = pinnable_maps(skel, dp->telemetry_reason_.empty());
    const std::string root = layout.maps_root();
    const std::string base = layout.default_maps_name();
    std::string current = layout.current_maps_name();
    if (current.empty() && fs::is_directory(root + "/" + base)) current = base;
    const bool current_same_version = !current.empty() &&
                                      (current == base || current.rfind(base + "-", 0) == 0) &&
                                      fs::is_directory(root + "/" + current);
    std::string chosen;
    if (current_same_version && generation_fits(root + "/" + current, maps)) {
        chosen = current;
    } else {
        for (const std::string& name : {base, base + "-" + shapes_digest(maps)}) {
            if (name == current) continue;  // it does not fit, and pods read it
            if (!fs::exists(root + "/" + name) || generation_fits(root + "/" + name, maps)) {
                chosen = name;
                break;
            }
        }
        if (chosen.empty()) {
            *error = Status(Errc::kConflict,
                            fmt::format("no free map generation under {}: {} and its digest-named "
                                        "sibling are pinned with other shapes",
                                        root, base))
                         .to_string();
            return nullptr;
        }
        if (current_same_version) {
            if (Status st = check_shrink(root + "/" + current, maps); !st) {
                *error = st.to_string();
                return nullptr;
            }
        }
    }
    dp->maps_name_ = chosen;
    PinLayout gen = layout;
    gen.maps_name = chosen;
    fs::create_directories(gen.maps_dir(), ec);
    if (ec) {
        *error = fmt::format("create {}: {}", gen.maps_dir(), ec.message());
        return nullptr;
    }
    if (chosen != current && !current.empty()) {
        spdlog::info("map generation {} (current: {}){}", gen.maps_dir(), current,
                     current_same_version ? ": a size change; kernel state maps carried over" : "");
        // Same layout version: the kernel-state maps of unchanged shape are the same objects.
        for (bpf_map* m : maps) {
            const char* name = bpf_map__name(m);
            if (!current_same_version || !carried(name)) continue;
            const std::string from = root + "/" + current + "/" + name, to = gen.map(name);
            if (access(to.c_str(), F_OK) == 0 || !check_pinned_map(from, m).empty()) continue;
            int fd = bpf_obj_get(from.c_str());
            if (fd < 0) continue;
            if (bpf_obj_pin(fd, to.c_str()) != 0)
                spdlog::warn("{}: not carried over to {}: {}", from, to, errno_text(errno));
            close(fd);
        }
    }

    for (bpf_map* map : maps) {
        std::string path = gen.map(bpf_map__name(map));
        if (auto e = check_pinned_map(path, map); !e.empty()) {
            *error = e;
            return nullptr;
        }
        // Reused: a mesh map was pinned here already (carried-over state maps alone do not count).
        if (!carried(bpf_map__name(map)) && access(path.c_str(), F_OK) == 0) dp->reused_maps_ = true;
        bpf_map__set_pin_path(map, path.c_str());
    }
    if (int err = kmesh_sock__load(skel)) {
        *error = fmt::format("load BPF programs: {} (see libbpf messages above)", errno_text(err));
        return nullptr;
    }
    bpf_program* prog;
    bpf_object__for_each_program(prog, skel->obj) {
        if (!bpf_program__autoload(prog)) continue;
        bpf_prog_info info{};
        uint32_t len = sizeof info;
        LoadedProgram p{bpf_program__name(prog), 0, {}};
        if (bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &len) == 0) {
            p.id = info.id;
            p.tag = hex(info.tag, sizeof info.tag);
        }
        dp->programs_.push_back(std::move(p));
    }
    // The byte-report iterator's link, made once; each run is a bpf_iter_create on it, from a thread
    // inside a pod's network namespace (a TCP iterator walks the sockets of the netns it runs in).
    if (bpf_program__autoload(skel->progs.iter_conn_report)) {
        dp->conn_iter_link_ = bpf_program__attach_iter(skel->progs.iter_conn_report, nullptr);
        if (!dp->conn_iter_link_) {
            dp->conn_iter_reason_ = fmt::format("attaching iter_conn_report: {}", errno_text(errno));
            spdlog::warn("{}: open connections report their bytes only when they close",
                         dp->conn_iter_reason_);
        }
    }
    // sk_msg has no bpf_link in libbpf 1.1: attach to the sockhash itself. It replaces a previous
    // agent's program on a reused (pinned) map; sockets already in the map keep theirs.
    if (bpf_prog_attach(bpf_program__fd(skel->progs.sk_msg_tlv), bpf_map__fd(skel->maps.km_wp_sockhash),
                        BPF_SK_MSG_VERDICT, 0) != 0) {
        *error = fmt::format("attach {} to km_wp_sockhash: {}", kProgSkMsg, errno_text(errno));
        return nullptr;
    }
    // Attached even with --sockmap=off: connections a previous agent put in the (reused) sockhash
    // go on being redirected by our program until they close, as they would have been.
    if (bpf_program__autoload(skel->progs.sk_msg_accel) &&
        bpf_prog_attach(bpf_program__fd(skel->progs.sk_msg_accel), bpf_map__fd(skel->maps.km_accel_sockhash),
                        BPF_SK_MSG_VERDICT, 0) != 0) {
        *error = fmt::format("attach {} to km_accel_sockhash: {}", kProgSkMsgAccel, errno_text(errno));
        return nullptr;
    }
    return dp;
}

LinkMoveResult move_pod_links(const std::string& pods_dir, LinkOps& ops, int attempts) {
    LinkMoveResult result;
    std::vector<std::string> pending;  // link pins to move
    std::error_code ec;
    // The pins of one record: live links, and whether one is detached.
    auto scan = [&](const fs::path& dir, std::vector<std::string>* links) {
        bool detached = false;
        std::error_code e;
        for (const auto& link : fs::directory_iterator(dir, e)) {
            int fd = ops.open(link.path().string());
            if (fd < 0) continue;
            if (ops.detached(fd))
                detached = true;
            else if (links)
                links->push_back(link.path().string());
            ops.close(fd);
        }
        return detached;
    };
    std::vector<fs::path> gone;
    for (const auto& pod : fs::directory_iterator(pods_dir, ec)) {
        std::vector<std::string> links;
        if (scan(pod.path(), &links))  // its cgroup/netns is gone: deleted without a CNI DEL
            gone.push_back(pod.path());
        else
            pending.insert(pending.end(), links.begin(), links.end());
        // A shared cgroup's users/<container> entries hold each container's own netns link.
        std::error_code e;
        for (const auto& user : fs::directory_iterator(pod.path() / kUsersDir, e)) {
            std::vector<std::string> user_links;
            if (!scan(user.path(), &user_links))
                pending.insert(pending.end(), user_links.begin(), user_links.end());
        }
    }
    if (!gone.empty()) {
        // Removed under the pods lock, after looking again: kmesh-cni or the enrolment reconciler
        // may have replaced the record's links (a re-ADD of the same container) since the scan.
        try {
            PodsLock lock(pods_dir);
            for (const auto& dir : gone) {
                if (!scan(dir, nullptr)) continue;
                fs::remove_all(dir, ec);
                result.forgotten++;
            }
        } catch (const PodLinkError& e) {
            spdlog::warn("pods whose cgroup is gone left in place: {}", e.what());
        }
    }
    auto wait = std::chrono::milliseconds(20);
    for (int attempt = 1; attempt <= attempts && !pending.empty(); attempt++) {
        if (attempt > 1) {
            ops.sleep(wait);
            wait *= 4;
        }
        std::vector<std::string> failed;
        for (const auto& path : pending) {
            int fd = ops.open(path);
            if (fd < 0) continue;  // unpinned meanwhile (CNI DEL): nothing to move
            int err = ops.update(fd, fs::path(path).filename().string());
            ops.close(fd);
            if (err == 0) {
                result.updated++;
                continue;
            }
            spdlog::warn("moving {} to the new program (attempt {} of {}): {}", path, attempt, attempts,
                         errno_text(err));
            failed.push_back(path);
        }
        pending = std::move(failed);
    }
    result.stale = std::move(pending);
    return result;
}

std::vector<std::string> remove_old_maps(const std::string& maps_root, const std::string& keep,
                                         int stale_links) {
    std::vector<std::string> kept;
    std::error_code ec;
    for (const auto& dir : fs::directory_iterator(maps_root, ec)) {
        if (dir.path() == fs::path(keep)) continue;
        std::error_code e;
        if (dir.is_symlink(e)) continue;  // the maps/current pointer, not a generation
        if (stale_links > 0)
            kept.push_back(dir.path().string());
        else
            fs::remove_all(dir.path(), ec);
    }
    return kept;
}

namespace {

class KernelLinkOps : public LinkOps {
  public:
    explicit KernelLinkOps(bpf_object* obj) : obj_(obj) {}
    int open(const std::string& path) override { return bpf_obj_get(path.c_str()); }
    void close(int fd) override { ::close(fd); }
    bool detached(int fd) override { return link_detached(fd); }
    int update(int fd, const std::string& prog_name) override {
        bpf_program* prog = bpf_object__find_program_by_name(obj_, prog_name.c_str());
        if (!prog) return ENOENT;
        return bpf_link_update(fd, bpf_program__fd(prog), nullptr) == 0 ? 0 : errno;
    }
    void sleep(std::chrono::milliseconds d) override { usleep(static_cast<useconds_t>(d.count() * 1000)); }

  private:
    bpf_object* obj_;
};

}  // namespace

void Dataplane::move_links_and_clean(const PinLayout& layout) {
    KernelLinkOps ops(skel_->obj);
    LinkMoveResult moved = move_pod_links(layout.pods_dir(), ops);
    links_updated_ = moved.updated;
    pods_forgotten_ += moved.forgotten;
    stale_links_ = static_cast<int>(moved.stale.size());
    // Maps of other ABI versions are used only by the programs just replaced, unless a pod could
    // not be moved: then its programs still read them, and unpinning would strand it.
    auto kept = remove_old_maps(layout.maps_root(), layout.maps_dir(), stale_links_);
    old_maps_kept_ = static_cast<int>(kept.size());
    if (!moved.stale.empty()) {
        std::string dirs;
        for (const auto& d : kept) dirs += (dirs.empty() ? "" : ", ") + d;
        spdlog::error(
            "{} pod links still run the previous programs (first: {}); keeping the old maps ({}) until "
            "they are moved or their pods are gone; retrying",
            moved.stale.size(), moved.stale.front(), dirs.empty() ? "none" : dirs);
    }
}

// Each program is pinned under a temporary name and renamed over the old pin, so kmesh-cni never
// finds it missing. Pods attached by an older agent move to the new program in place with
// bpf_link_update: no detach window, no reconnects (hitless upgrade).
std::string Dataplane::publish(const PinLayout& layout) {
    // connect4 last: kmesh-cni takes a pinned connect4 as "the agent's programs are there" and skips
    // optional programs that are not pinned (common/pod_links.hpp), so they must be there before it.
    for (bool last : {false, true}) {
        bpf_program* prog;
        bpf_object__for_each_program(prog, skel_->obj) {
            if ((std::strcmp(bpf_program__name(prog), kProgConnect4) == 0) != last) continue;
            if (!bpf_program__autoload(prog)) {  // not loaded on this kernel: no pin, no stale one
                unlink(layout.prog(bpf_program__name(prog)).c_str());
                continue;
            }
            std::string path = layout.prog(bpf_program__name(prog));
            std::string tmp = path + "_new";  // bpffs refuses names with dots
            unlink(tmp.c_str());
            if (bpf_obj_pin(bpf_program__fd(prog), tmp.c_str()) != 0)
                return fmt::format("pin {}: {}", tmp, errno_text(errno));
            if (rename(tmp.c_str(), path.c_str()) != 0)
                return fmt::format("pin {}: {}", path, errno_text(errno));
        }
    }
    // The programs pinned now read this generation: point maps/current at it (a new symlink
    // renamed over the old one, so a reader never finds none).
    PinLayout gen = layout;
    gen.maps_name = maps_name_;
    if (auto err = point_current_maps(gen); !err.empty()) return err;
    move_links_and_clean(gen);
    // Pods attached by an older agent (fewer pod programs) get the cgroup links they lack.
    if (auto root = find_cgroup2_mount()) {
        try {
            PodsLock lock(layout.pods_dir());
            LinuxKernel kernel;
            int n = attach_missing_cgroup_links(kernel, layout, *root, *spdlog::default_logger());
            if (n > 0) spdlog::info("{} missing pod cgroup links attached", n);
        } catch (const PodLinkError& e) {
            spdlog::warn("pods lacking newer cgroup links left as they are: {}", e.what());
        }
    }
    // Pods attached by an agent before issue 9 have no sk_lookup link: attached where a process of
    // the pod shows its netns (kmesh-cni's next ADD or CHECK-driven repair covers the others).
    if (auto root = find_cgroup2_mount()) {
        try {
            PodsLock lock(layout.pods_dir());
            LinuxKernel kernel;
            int n = attach_missing_netns_links(kernel, layout, *root, *spdlog::default_logger());
            if (n > 0) spdlog::info("{} pods without an sk_lookup link got one", n);
        } catch (const PodLinkError& e) {
            spdlog::warn("pods without an sk_lookup link left as they are: {}", e.what());
        }
    }
    return {};
}

Result<int> Dataplane::hold_warm_links(const std::string& cgroup_dir) {
    if (!warm_links_.empty()) return static_cast<int>(warm_links_.size());
    std::error_code ec;
    const bool created = fs::create_directory(cgroup_dir, ec);
    if (ec) return Status(Errc::kIo, fmt::format("create {}: {}", cgroup_dir, ec.message()));
    if (created) warm_cgroup_ = cgroup_dir;
    int cg = open(cgroup_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cg < 0) return Status(Errc::kIo, fmt::format("open {}: {}", cgroup_dir, errno_text(errno)));
    struct statfs st {};
    if (fstatfs(cg, &st) != 0 || st.f_type != CGROUP2_SUPER_MAGIC) {
        close(cg);
        return Status(Errc::kInvalidArgument, fmt::format("{} is not on a cgroup v2 mount", cgroup_dir));
    }
    for (const auto& spec : kPodProgs) {
        bpf_program* prog = bpf_object__find_program_by_name(skel_->obj, spec.name);
        if (!prog || !bpf_program__autoload(prog)) continue;  // not loaded on this kernel
        int link = bpf_link_create(bpf_program__fd(prog), cg, spec.type, nullptr);
        if (link < 0) {
            int err = errno;
            close(cg);
            return Status(Errc::kIo,
                          fmt::format("attach {} to {}: {}", spec.name, cgroup_dir, errno_text(err)));
        }
        warm_links_.push_back(link);
    }
    close(cg);
    return static_cast<int>(warm_links_.size());
}

std::string point_current_maps(const PinLayout& layout) {
    const std::string link = layout.current_maps_link();
    const std::string name = layout.maps_name.empty() ? layout.default_maps_name() : layout.maps_name;
    if (layout.current_maps_name() == name) return {};
    const std::string tmp = link + "_new";
    unlink(tmp.c_str());
    if (symlink(name.c_str(), tmp.c_str()) != 0 || rename(tmp.c_str(), link.c_str()) != 0)
        return Status(Errc::kIo, fmt::format("point {} at {}: {}", link, name, errno_text(errno)))
            .to_string();
    return {};
}

void Dataplane::reconcile(const PinLayout& layout) {
    int before = stale_links_;
    PinLayout gen = layout;
    gen.maps_name = maps_name_;
    move_links_and_clean(gen);
    if (before > 0 && stale_links_ == 0)
        spdlog::info("every pod link now runs the current programs; old maps removed");
}

bool Dataplane::pinned_programs_use_other_maps(const PinLayout& layout) const {
    // Every pinned program, not connect4 alone: after a resize connect4 may read only carried-over
    // maps while sk_lookup reads new, still empty authorization tables.
    std::vector<uint32_t> ours;
    bpf_map* map;
    bpf_object__for_each_map(map, skel_->obj) {
        bpf_map_info info{};
        uint32_t len = sizeof info;
        if (bpf_obj_get_info_by_fd(bpf_map__fd(map), &info, &len) == 0) ours.push_back(info.id);
    }
    std::error_code ec;
    for (const auto& pin : fs::directory_iterator(layout.progs_dir(), ec)) {
        int fd = bpf_obj_get(pin.path().c_str());
        if (fd < 0) continue;
        std::vector<uint32_t> theirs = prog_map_ids(fd);
        close(fd);
        for (uint32_t id : theirs) {
            if (std::find(ours.begin(), ours.end(), id) != ours.end()) continue;
            // Their .rodata/.bss (named <object>.<section>) belong to their load, never shared.
            int mfd = bpf_map_get_fd_by_id(id);
            if (mfd < 0) continue;
            bpf_map_info info{};
            uint32_t len = sizeof info;
            const bool internal =
                bpf_obj_get_info_by_fd(mfd, &info, &len) == 0 && std::strchr(info.name, '.') != nullptr;
            close(mfd);
            if (!internal) return true;
        }
    }
    return false;  // nothing pinned: no pod runs older programs we know of
}

int Dataplane::stats_fd() const { return bpf_map__fd(skel_->maps.km_stats); }
int Dataplane::udp_stats_fd() const { return bpf_map__fd(skel_->maps.km_udp_stats); }
int Dataplane::accel_stats_fd() const { return bpf_map__fd(skel_->maps.km_accel_stats); }
int Dataplane::accel_sockhash_fd() const { return bpf_map__fd(skel_->maps.km_accel_sockhash); }
int Dataplane::conn_events_fd() const { return bpf_map__fd(skel_->maps.km_conn_events); }
int Dataplane::tel_config_fd() const { return bpf_map__fd(skel_->maps.km_tel_config); }
int Dataplane::tel_stats_fd() const { return bpf_map__fd(skel_->maps.km_tel_stats); }
int Dataplane::conn_iter_link_fd() const { return conn_iter_link_ ? bpf_link__fd(conn_iter_link_) : -1; }

std::array<int, policy::kAuthzMapCount> Dataplane::authz_map_fds() const {
    const auto& m = skel_->maps;
    return {bpf_map__fd(m.km_authz_config), bpf_map__fd(m.km_authz_ident),  bpf_map__fd(m.km_authz_dst),
            bpf_map__fd(m.km_authz_set),    bpf_map__fd(m.km_authz_setpol), bpf_map__fd(m.km_authz_policy),
            bpf_map__fd(m.km_authz_row),    bpf_map__fd(m.km_authz_idset),  bpf_map__fd(m.km_authz_cidr),
            bpf_map__fd(m.km_authz_port),   bpf_map__fd(m.km_authz_cache),  bpf_map__fd(m.km_authz_hits),
            bpf_map__fd(m.km_authz_totals)};
}

std::array<int, kMapCount> Dataplane::map_fds() const {
    return {bpf_map__fd(skel_->maps.km_frontend), bpf_map__fd(skel_->maps.km_service),
            bpf_map__fd(skel_->maps.km_endpoint), bpf_map__fd(skel_->maps.km_backend),
            bpf_map__fd(skel_->maps.km_port),     bpf_map__fd(skel_->maps.km_waypoint),
            bpf_map__fd(skel_->maps.km_wp_dest),  bpf_map__fd(skel_->maps.km_member),
            bpf_map__fd(skel_->maps.km_split),    bpf_map__fd(skel_->maps.km_limit_cfg),
            bpf_map__fd(skel_->maps.km_ratelimit)};
}

std::string uninstall(const PinLayout& layout) {
    if (!fs::exists(layout.kmesh_dir())) return {};
    std::string error;
    int lock_fd = lock_kmesh_dir(layout, &error);
    if (lock_fd < 0) return error;
    std::string problems;
    std::error_code ec;
    // Pods first: unpinning a link detaches the program from that pod's cgroup.
    for (const auto& dir : {layout.pods_dir(), layout.progs_dir(), layout.maps_root()}) {
        fs::remove_all(dir, ec);
        if (ec) problems += fmt::format("remove {}: {}; ", dir, ec.message());
    }
    close(lock_fd);
    fs::remove(layout.kmesh_dir(), ec);
    if (ec) problems += fmt::format("remove {}: {}; ", layout.kmesh_dir(), ec.message());
    return problems;
}

}  // namespace kmesh
