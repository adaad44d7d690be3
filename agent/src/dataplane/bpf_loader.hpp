// Lifecycle of the BPF programs and maps: load the skeleton, pin (or reuse pinned) maps, pin the
// programs, move already-attached pods to the new programs, and remove everything on uninstall.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "agent/src/dataplane/map_ops.hpp"
#include "agent/src/policy/authz_writer.hpp"
#include "common/abi.hpp"
#include "common/pin_layout.hpp"
#include "common/status.hpp"

struct kmesh_sock;
struct bpf_link;

namespace kmesh {

// Same-node sockmap acceleration (docs/sockmap.md): --sockmap and --max-accel-sockets.
// Off by default for now although it met the latency target in bench/sockmap.sh (docs/sockmap.md):
// the one short run is not enough, and blocking readers see EAGAIN instead of ECONNRESET on a
// peer's RST (tcp_bpf), a behaviour change the suite has not been run against with it on.
inline constexpr bool kSockmapDefault = false;
struct AccelOptions {
    bool enabled = kSockmapDefault;  // sockops inserts connections between enrolled pods
    uint32_t max_sockets = KMESH_DEFAULT_MAX_ACCEL_SOCKETS;
};

struct MapSizes {
    uint32_t frontends = KMESH_DEFAULT_MAX_FRONTENDS;
    uint32_t services = KMESH_DEFAULT_MAX_SERVICES;
    uint32_t endpoints = KMESH_DEFAULT_MAX_ENDPOINTS;
    uint32_t backends = KMESH_DEFAULT_MAX_BACKENDS;
    uint32_t ports = KMESH_DEFAULT_MAX_PORTS;
    policy::AuthzSizes authz;  // per generation (the --max-authz-* flags)
    uint32_t waypoints = KMESH_DEFAULT_MAX_WAYPOINTS;
    uint32_t waypoint_addrs = KMESH_DEFAULT_MAX_WAYPOINT_ADDRS;
    uint32_t waypoint_sockets = KMESH_DEFAULT_MAX_WAYPOINT_SOCKETS;
    uint32_t udp_sockets = KMESH_DEFAULT_MAX_UDP_SOCKETS;  // km_udp_rev (LRU)
    AccelOptions accel;                                    // the sockhash size, and whether it is used
    uint32_t members = KMESH_DEFAULT_MAX_MEMBERS;          // km_member: (service, endpoint backend) pairs
    uint32_t splits = KMESH_DEFAULT_MAX_SPLITS;            // km_split: weighted clusters (kernel-native)
    uint32_t cb = KMESH_DEFAULT_MAX_CB;                    // km_cb: (client netns, service) open connections
    uint32_t limits = KMESH_DEFAULT_MAX_LIMITS;            // km_limit_cfg: local rate limits (kernel-native)
    uint32_t ratelimits = KMESH_DEFAULT_MAX_RATELIMITS;    // km_ratelimit: (client netns, limit) buckets
    uint32_t affinity = KMESH_DEFAULT_MAX_AFFINITY;        // km_affinity LRU: (client netns, service, family)
    // km_conn_events ring buffer bytes (--telemetry-ringbuf-bytes): a power of two, at least a page.
    uint32_t tel_ringbuf_bytes = KMESH_DEFAULT_TEL_RINGBUF_BYTES;
};

// "" when bytes is a size the kernel takes for a BPF ring buffer (a power of two, a multiple of the
// page size), else why not, naming the flag.
std::string check_ringbuf_bytes(uint64_t bytes);

// The programs this binary carries: the SHA-256 of the BPF object embedded in it (the skeleton's
// bytes), computed once at first use. Same digest, same programs; any change to the programs, the
// compiler or its flags changes it. Reported by --version, /version and kmesh_build_info.
struct ProgramBuild {
    std::string sha256;         // 64 hex digits
    size_t object_bytes = 0;    // size of the embedded object
    bool test_variant = false;  // kmesh-daemon-variant (KMESH_PROGRAM_VARIANT, tests only)
    std::string short_id() const { return sha256.substr(0, 12); }
};
const ProgramBuild& program_build();
// The embedded BPF object itself (what program_build() digests), e.g. for kmeshctl doctor to read
// which program types, map types and helpers the programs use.
std::string_view program_object();

// What `<binary> --version` prints: the release, the program digest and the map layout version.
std::string version_text(const std::string& binary);

// A program as this agent loaded it: the kernel's id and tag (the hash of its instructions that
// bpftool shows; maps referenced are zeroed in it, so it names the code alone).
struct LoadedProgram {
    std::string name;
    uint32_t id = 0;
    std::string tag;  // 16 hex digits
};

// Mounts bpffs at root unless one is there already. Returns an error message or "".
std::string ensure_bpffs(const std::string& root);

// The kernel calls made on pinned pod links when moving pods to new programs, behind an interface
// so that failures (which the kernel rarely produces on demand) can be tested.
class LinkOps {
  public:
    virtual ~LinkOps() = default;
    virtual int open(const std::string& path) = 0;  // fd, or -1 (errno set)
    virtual void close(int fd) = 0;
    virtual bool detached(int fd) = 0;  // the link's cgroup is gone
    // Points the link at our program of that name; 0 or an errno value.
    virtual int update(int fd, const std::string& prog_name) = 0;
    virtual void sleep(std::chrono::milliseconds d) = 0;
};

struct LinkMoveResult {
    int updated = 0;                 // links now on our programs
    int forgotten = 0;               // pods whose cgroup is gone, unpinned
    std::vector<std::string> stale;  // links still on older programs (update kept failing)
};

// Moves every pinned pod link under pods_dir (pods_dir/<pod>/<program name>) to our program of the
// same name. A failed update is retried a few times with backoff (all failures of a round share
// one wait); what still fails is returned as stale. Pods whose cgroup is gone are unpinned.
LinkMoveResult move_pod_links(const std::string& pods_dir, LinkOps& ops, int attempts = 4);

// Removes the map directories under maps_root other than keep, unless some pod still runs older
// programs (stale_links > 0), which may read any of them. Returns the directories left in place.
std::vector<std::string> remove_old_maps(const std::string& maps_root, const std::string& keep,
                                         int stale_links);

// Points <maps_root>/current at the layout's generation (maps_name) unless it already does: a new
// symlink renamed over the old one. "" or the error (category io).
std::string point_current_maps(const PinLayout& layout);

class Dataplane {
  public:
    ~Dataplane();
    Dataplane(const Dataplane&) = delete;
    Dataplane& operator=(const Dataplane&) = delete;

    // Takes the node-wide agent lock, then loads the programs: reuses the current generation of maps
    // when it has this layout version and the sizes asked for (so a restart keeps serving), else
    // makes a new generation (a layout bump or a size change; kernel-state maps of the same shape are
    // carried over). A generation smaller than what the current one holds is refused
    // (resource_exhausted) before anything is created. The programs are not published yet.
    // Returns nullptr with *error set on failure.
    static std::unique_ptr<Dataplane> load(const PinLayout& layout, const MapSizes& sizes,
                                           std::string* error);

    // Call once the maps hold the mesh: pins the programs for kmesh-cni, points maps/current at our
    // generation, moves already-attached pods to them in place, forgets pods whose cgroup is gone,
    // and drops other generations' maps.
    // Maps of other layouts are kept while a pod link still uses older programs (stale_links()).
    std::string publish(const PinLayout& layout);
    // After publish: retries moving stale links, and drops the old maps once none is left.
    void reconcile(const PinLayout& layout);
    // Keeps the kernel's per-hook switches on (docs/enrolment.md, "Why the agent holds warm links"):
    // links every pod cgroup program to `cgroup_dir`, an empty cgroup v2 directory it creates, and
    // holds them (fds of this process, never pinned). The kernel enables a cgroup hook type
    // (a static key: patching its call sites in kernel text, ~0.1-1.3 ms per type on this VM)
    // when the first program of that type is attached anywhere and disables it when the last goes,
    // so without them the node's first pod's ADD (and every ADD after the last DEL) pays that for
    // ten hook types. No process ever runs in the directory, so the programs never run there.
    // Removed (links closed, directory removed) by the destructor. Returns how many it attached.
    Result<int> hold_warm_links(const std::string& cgroup_dir);

    std::array<int, kMapCount> map_fds() const;
    int stats_fd() const;           // per-CPU km_stats (enum kmesh_stat slots)
    int udp_stats_fd() const;       // per-CPU km_udp_stats (enum kmesh_udp_stat slots)
    int accel_stats_fd() const;     // per-CPU km_accel_stats (enum kmesh_accel_stat slots)
    int accel_sockhash_fd() const;  // km_accel_sockhash
    // Same-node acceleration: whether sockops inserts connections, and why not when asked to.
    bool sockmap_active() const { return sockmap_active_; }
    const std::string& sockmap_reason() const { return sockmap_reason_; }
    // The iterator that closes denied connections was loaded (bpf_sock_destroy, kernel >= 6.5).
    bool can_close_connections() const { return can_close_; }
    std::array<int, policy::kAuthzMapCount> authz_map_fds() const;  // by policy::AuthzMap
    // Connection telemetry (docs/telemetry.md): whether the kernel reports connections at all (BPF
    // ring buffers), and why not; whether open connections report bytes periodically (the TCP
    // iterator, run in each enrolled pod's netns), and why not. The reader (telemetry/event_reader) takes the
    // fds below.
    bool telemetry_available() const { return telemetry_reason_.empty(); }
    const std::string& telemetry_reason() const { return telemetry_reason_; }
    bool conn_iter_available() const { return conn_iter_link_ != nullptr; }
    const std::string& conn_iter_reason() const { return conn_iter_reason_; }
    int conn_events_fd() const;     // km_conn_events (ring buffer); meaningful when telemetry_available()
    int tel_config_fd() const;      // km_tel_config (array[1] of struct kmesh_tel_config)
    int tel_stats_fd() const;       // per-CPU km_tel_stats (enum kmesh_tel_stat slots)
    int conn_iter_link_fd() const;  // iter_conn_report's link (bpf_iter_create in a pod netns), or -1
    bool reused_maps() const { return reused_maps_; }
    // The map generation loaded (a directory under layout.maps_root()): maps/v<N>, or
    // v<N>-<digest> when the sizes differ from what v<N> holds. Set it as the layout's maps_name.
    const std::string& maps_name() const { return maps_name_; }
    // The programs loaded (those this kernel supports), in the object's order.
    const std::vector<LoadedProgram>& programs() const { return programs_; }
    // Whether the programs pinned now (by a previous agent; publish() replaces them) read maps other
    // than ours, i.e. pods run programs of another map layout: publishing before our maps hold the
    // mesh would then take translation away from them. False when nothing is pinned. Checked on
    // the programs' own map ids, not on whether our maps were just created: a layout bump killed
    // half-way through filling leaves this layout's maps pinned but incomplete.
    bool pinned_programs_use_other_maps(const PinLayout& layout) const;
    int links_updated() const { return links_updated_; }
    int pods_forgotten() const { return pods_forgotten_; }
    // Read by the admin thread.
    int stale_links() const { return stale_links_; }
    int old_maps_kept() const { return old_maps_kept_; }

  private:
    Dataplane(kmesh_sock* skel, int lock_fd) : skel_(skel), lock_fd_(lock_fd) {}

    kmesh_sock* skel_;
    int lock_fd_;
    bool reused_maps_ = false;
    std::string maps_name_;
    bool can_close_ = false;
    std::vector<LoadedProgram> programs_;
    bool sockmap_active_ = false;
    std::string sockmap_reason_;
    std::string telemetry_reason_;
    std::string conn_iter_reason_;
    bpf_link* conn_iter_link_ = nullptr;
    std::vector<int> warm_links_;  // hold_warm_links: fds, closed by the destructor
    std::string warm_cgroup_;      // the directory it created, removed by the destructor
    int links_updated_ = 0;
    int pods_forgotten_ = 0;
    std::atomic<int> stale_links_{0};
    std::atomic<int> old_maps_kept_{0};
    void move_links_and_clean(const PinLayout& layout);
};

// Holds an exclusive lock on <bpffs>/kmesh while alive, so that two agents (or an agent and
// uninstall) never write the same maps. Returns -1 with *error set when another holder exists.
int lock_kmesh_dir(const PinLayout& layout, std::string* error);

// Detaches every pod (unpins its links), then removes the pinned programs and maps. Refuses while an
// agent runs. Returns the problems met; an already clean state is not a problem.
std::string uninstall(const PinLayout& layout);

}  // namespace kmesh
