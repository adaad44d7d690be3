#include "cni/plugin.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/magic.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "common/agent_query.hpp"
#include "common/cgroup.hpp"
#include "common/enrolment.hpp"

namespace kmesh::cni {

namespace fs = std::filesystem;

namespace {

constexpr std::array<std::string_view, 4> kSupportedVersions = {"0.3.1", "0.4.0", "1.0.0", "1.1.0"};
// Pinned entries must fit bpffs' NAME_MAX (255) after encoding and a prefix.
constexpr std::size_t kMaxEncodedName = 200;
// The agent answers from memory in well under a millisecond; a busy or wedged agent costs an ADD at
// most this before the API server is asked instead.
constexpr std::chrono::milliseconds kAgentQueryTimeout{250};

bool is_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

// The CNI spec's rule for container ids and network names: an alphanumeric, then alphanumerics,
// '_', '.' or '-'. Both become bpffs names (dots encoded), so their encoded length is bounded too.
bool valid_cni_name(std::string_view s) {
    return !s.empty() && is_alnum(s[0]) && encode_pin_name(s).size() <= kMaxEncodedName &&
           std::all_of(s.begin(), s.end(),
                       [](char c) { return is_alnum(c) || c == '_' || c == '.' || c == '-'; });
}

std::string decode_pin_name(std::string_view name) {
    std::string out;
    for (size_t i = 0; i < name.size(); ++i) {
        if (name.substr(i, 3) == "%2E") {
            out += '.';
            i += 2;
        } else {
            out += name[i];
        }
    }
    return out;
}

bool valid_pod_uid(std::string_view uid) {
    return !uid.empty() && uid.size() <= kMaxEncodedName &&
           std::all_of(uid.begin(), uid.end(), [](char c) { return is_alnum(c) || c == '-' || c == '_'; });
}

bool supported_version(std::string_view v) {
    return std::find(kSupportedVersions.begin(), kSupportedVersions.end(), v) != kSupportedVersions.end();
}

// Length of the valid UTF-8 sequence at s[i], 0 when s[i] does not start one (overlongs, surrogates
// and code points above U+10FFFF are invalid).
size_t utf8_len(std::string_view s, size_t i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) return 1;
    size_t n;
    std::uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (i + n > s.size()) return 0;
    for (size_t k = 1; k < n; ++k) {
        const auto b = static_cast<unsigned char>(s[i + k]);
        if ((b & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (b & 0x3F);
    }
    if (n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) return 0;
    if (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) return 0;
    return n;
}

// True when arrays/objects in `json` nest deeper than `limit` (strings skipped). Checked before
// parsing: rapidjson's recursive parser and writer would overflow the stack on deep input.
bool nested_deeper_than(std::string_view json, int limit) {
    bool in_string = false, escaped = false;
    int depth = 0;
    for (char c : json) {
        if (in_string) {
            if (escaped)
                escaped = false;
            else if (c == '\\')
                escaped = true;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > limit) return true;
        } else if (c == ']' || c == '}') {
            --depth;
        }
    }
    return false;
}

constexpr unsigned kParseFlags = rapidjson::kParseValidateEncodingFlag | rapidjson::kParseIterativeFlag;

// Parses stdin into `doc`; CniError code 6 when it is not a JSON object.
void parse_json(rapidjson::Document& doc, std::string_view json) {
    if (nested_deeper_than(json, kMaxJsonDepth)) {
        throw CniError(kErrDecode, "cannot parse the network configuration",
                       fmt::format("nested deeper than {} levels", kMaxJsonDepth));
    }
    doc.Parse<kParseFlags>(json.data(), json.size());
    if (doc.HasParseError()) {
        throw CniError(kErrDecode, "cannot parse the network configuration",
                       fmt::format("offset {}: {}", doc.GetErrorOffset(),
                                   rapidjson::GetParseError_En(doc.GetParseError())));
    }
    if (!doc.IsObject()) throw CniError(kErrDecode, "the network configuration is not a JSON object");
}

// Reads an optional string field; empty values keep the default. NUL bytes (from \u0000) would
// silently cut paths short, so they are refused.
void read_string(const rapidjson::Value& obj, const char* key, std::string& out, bool allow_empty = false) {
    auto it = obj.FindMember(key);
    if (it == obj.MemberEnd()) return;
    if (!it->value.IsString()) throw CniError(kErrInvalidConfig, fmt::format("{} must be a string", key));
    std::string value(it->value.GetString(), it->value.GetStringLength());
    if (value.find('\0') != std::string::npos) {
        throw CniError(kErrInvalidConfig, fmt::format("{} contains a NUL character", key));
    }
    if (!value.empty() || allow_empty) out = std::move(value);
}

// What can be read from stdin even when the request is refused: the version to answer in and the
// log file to write the error to.
struct Peek {
    bool parsed = false;
    std::string cni_version;
    std::string log_file = kDefaultLogFile;
};

Peek peek_config(std::string_view json) {
    Peek peek;
    rapidjson::Document doc;
    try {
        parse_json(doc, json);
    } catch (const CniError&) {
        return peek;
    }
    peek.parsed = true;
    auto v = doc.FindMember("cniVersion");
    if (v != doc.MemberEnd() && v->value.IsString()) peek.cni_version = v->value.GetString();
    try {
        read_string(doc, "logFile", peek.log_file, /*allow_empty=*/true);
    } catch (const CniError&) {
        peek.log_file.clear();  // a logFile that is not a usable string: no log
    }
    return peek;
}

bool is_bpffs(long magic) { return magic == static_cast<long>(BPF_FS_MAGIC); }

// ADD/CHECK: bpffsRoot must be a bpffs. A missing root is left to the program lookup (agent not
// running yet, try again later); any other filesystem is a configuration error that waiting cannot fix.
void require_bpffs(const Config& config, Kernel& kernel) {
    const long magic = kernel.fs_magic(config.bpffs_root);
    if (magic == -ENOENT) return;
    if (magic < 0) {
        throw CniError(kErrIo, fmt::format("cannot stat bpffsRoot {}: {}", config.bpffs_root,
                                           errno_str(static_cast<int>(magic))));
    }
    if (!is_bpffs(magic)) {
        throw CniError(kErrInvalidConfig, fmt::format("bpffsRoot {} is not a bpffs mount", config.bpffs_root),
                       fmt::format("filesystem magic 0x{:x}; mount bpffs there or fix bpffsRoot", magic));
    }
}

// DEL/GC: whether there can be anything of ours under bpffsRoot. Links can only be pinned on a
// bpffs; on any other filesystem the files under kmesh/pods are not ours and must not be deleted,
// and as nothing can have been attached there, succeeding is correct (failing would strand the
// sandbox: runtimes retry DEL forever with the same config).
bool bpffs_holds_pins(const Config& config, Kernel& kernel, spdlog::logger& log) {
    const long magic = kernel.fs_magic(config.bpffs_root);
    if (magic == -ENOENT) {
        log.info("bpffsRoot {} does not exist: nothing attached", config.bpffs_root);
        return false;
    }
    if (magic < 0 || !is_bpffs(magic)) {
        log.warn(
            "bpffsRoot {} is not a bpffs mount ({}): nothing can be attached through it, deleting nothing",
            config.bpffs_root,
            magic < 0 ? errno_str(static_cast<int>(magic)) : fmt::format("magic 0x{:x}", magic));
        return false;
    }
    return true;
}

fs::path resolve_cgroup_root(const Config& config, Kernel& kernel) {
    fs::path root = config.cgroup_root;
    if (root.empty()) {
        auto mount = find_cgroup2_mount();
        if (!mount) {
            throw CniError(kErrPodCgroupNotFound, "no cgroup v2 mount in /proc/self/mountinfo",
                           "set cgroupRoot in the plugin config");
        }
        root = *mount;
    }
    std::error_code ec;
    fs::path canonical = fs::canonical(root, ec);
    if (ec) throw CniError(kErrInvalidConfig, fmt::format("cgroupRoot {}: {}", root.string(), ec.message()));
    // Only a cgroup v2 tree is searched (and attached to): any other root (e.g. "/") is refused
    // rather than walked.
    const long magic = kernel.fs_magic(canonical.string());
    if (magic != static_cast<long>(CGROUP2_SUPER_MAGIC)) {
        throw CniError(
            kErrInvalidConfig, fmt::format("cgroupRoot {} is not on a cgroup v2 mount", canonical.string()),
            magic < 0 ? errno_str(static_cast<int>(magic)) : fmt::format("filesystem magic 0x{:x}", magic));
    }
    return canonical;
}

// True when `p` is strictly below `root` (both canonical or both lexically normal).
bool strictly_below(const fs::path& p, const fs::path& root) {
    const fs::path rel = p.lexically_relative(root);
    return !rel.empty() && rel != "." && *rel.begin() != "..";
}

struct Target {
    fs::path cgroup;
    bool shared = false;  // cgroupPath: one cgroup for many containers
};

Target resolve_target(const Request& req, Kernel& kernel) {
    const Config& config = req.config;
    if (!config.cgroup_path.empty()) {
        const fs::path root = resolve_cgroup_root(config, kernel);
        fs::path p = config.cgroup_path;
        if (p.is_relative()) p = root / p;
        // Lexically first (a "../x" outside the root is refused even when it does not exist), then
        // after resolving symlinks.
        if (!strictly_below(p.lexically_normal(), root)) {
            throw CniError(kErrInvalidConfig, fmt::format("cgroupPath {} is not below cgroupRoot {}",
                                                          config.cgroup_path, root.string()));
        }
        std::error_code ec;
        fs::path canonical = fs::canonical(p, ec);
        if (ec || !fs::is_directory(canonical, ec)) {
            throw CniError(kErrPodCgroupNotFound,
                           fmt::format("cgroupPath {} is not a directory", p.string()));
        }
        if (!strictly_below(canonical, root)) {
            throw CniError(kErrInvalidConfig,
                           fmt::format("cgroupPath {} resolves to {}, not below cgroupRoot {}",
                                       config.cgroup_path, canonical.string(), root.string()));
        }
        return {canonical, true};
    }
    auto uid = req.args.find("K8S_POD_UID");
    if (uid == req.args.end()) {
        throw CniError(kErrPodCgroupNotFound, "cannot find the pod cgroup: no K8S_POD_UID in CNI_ARGS",
                       "set cgroupPath in the plugin config for runtimes that do not pass K8S_POD_UID");
    }
    const fs::path root = resolve_cgroup_root(config, kernel);
    PodCgroupLookup lookup = find_pod_cgroup(root, uid->second);
    if (!lookup.path) {
        throw CniError(kErrPodCgroupNotFound,
                       fmt::format("cgroup of pod {} not found under {}", uid->second, root.string()),
                       fmt::format("tried {}, then searched {} levels deep", fmt::join(lookup.tried, ", "),
                                   kPodCgroupSearchDepth));
    }
    return {*lookup.path, false};
}

// The attach itself, as before issue 8: every pod reaching it is enrolled.
void attach_pod(const Request& req, Kernel& kernel, spdlog::logger& log) {
    const PinLayout layout{req.config.bpffs_root};
    require_bpffs(req.config, kernel);
    const Target target = resolve_target(req, kernel);
    // Open everything before touching the pods dir, so a missing agent leaves nothing behind.
    std::vector<PinnedProg> progs = open_pod_progs(kernel, layout, kErrTryAgainLater);
    std::uint64_t cgroup_id = 0;
    KernelFd cgroup_fd = open_pod_cgroup(target.cgroup, kernel, kErrAttach, &cgroup_id, log);
    // L4 authorization runs on the pod's network namespace (sk_lookup).
    const PodNetns netns = open_pod_netns(kernel, req.netns, kErrAttach, log);

    std::error_code ec;
    fs::create_directories(layout.pods_dir(), ec);
    if (ec) throw CniError(kErrIo, fmt::format("cannot create {}: {}", layout.pods_dir(), ec.message()));
    PodsLock lock(layout.pods_dir());
    attach_locked(kernel, layout, progs, cgroup_fd.get(), cgroup_id, target.shared, req.container_id,
                  req.config.name, log, &netns);
}

std::string arg_or_empty(const Request& req, const char* key) {
    auto it = req.args.find(key);
    return it == req.args.end() ? std::string() : it->second;
}

// ADD with a kubeConfig: the pod is attached only when the labels put it in the mesh. Everything
// that decides "not in the mesh" runs before bpffs is looked at, so a pod outside the mesh is never
// blocked, whatever the agent's state. A selected pod that cannot be asked about or attached fails
// with code 11 (the runtime retries) rather than starting outside the policy it asked for.
void cmd_add(const Request& req, Kernel& kernel, spdlog::logger& log, const ApiFactory& make_api) {
    const Config& config = req.config;
    if (config.kube_config.empty()) {
        attach_pod(req, kernel, log);
        return;
    }
    const std::string ns = arg_or_empty(req, "K8S_POD_NAMESPACE");
    const std::string name = arg_or_empty(req, "K8S_POD_NAME");
    if (ns.empty() || name.empty()) {
        log.info("ADD: no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS: not a Kubernetes pod, not enrolled");
        return;
    }
    const auto& excluded = config.exclude_namespaces;
    if (std::find(excluded.begin(), excluded.end(), ns) != excluded.end()) {
        log.info("ADD: pod {}/{}: namespace {} is in excludeNamespaces: not enrolled", ns, name, ns);
        return;
    }
    const std::string uid = arg_or_empty(req, "K8S_POD_UID");
    // The agent answers from the caches it keeps anyway: no libcurl, no TLS handshake, no API load
    // per pod. Anything short of a clear answer falls through to the API server below.
    if (!config.agent_socket.empty()) {
        auto answer = ask_agent(config.agent_socket, PodQuery{ns, name, uid, config.kmesh_namespace},
                                kAgentQueryTimeout);
        if (answer && answer->known) {
            if (!answer->enrolled) {
                log.info("ADD: pod {}/{} not enrolled (agent): {}", ns, name, answer->reason);
                return;
            }
            log.info("ADD: pod {}/{} enrolled (agent): {}", ns, name, answer->reason);
            // The agent's reconciler writes the kmesh.net/redirection annotation shortly after.
            attach_pod(req, kernel, log);
            return;
        }
        log.info("ADD: pod {}/{}: the agent cannot tell ({}): asking the API server", ns, name,
                 answer ? answer->reason : answer.status().to_string());
    }
    auto unavailable = [&](const Status& st) {
        return CniError(
            kErrTryAgainLater,
            fmt::format("cannot tell whether pod {}/{} is in the mesh: {}", ns, name, st.to_string()),
            fmt::format("kubeConfig {}", config.kube_config));
    };
    if (!make_api) throw unavailable(Status(Errc::kInternal, "no Kubernetes API client in this build"));
    auto api = make_api(config.kube_config);
    if (!api) throw unavailable(api.status());
    auto pod = (*api)->get_pod(ns, name);
    if (!pod) throw unavailable(pod.status());
    // A pod re-created under the same name (StatefulSet) may still be the old object in the API:
    // deciding from it could put the new pod on the wrong side of the mesh.
    if (!uid.empty() && !pod->meta.uid.empty() && uid != pod->meta.uid) {
        throw unavailable(
            Status(Errc::kConflict,
                   fmt::format("the API server has uid {}, the runtime creates {}", pod->meta.uid, uid)));
    }
    // The namespace is asked for only when its labels can change the answer, so a namespace GET
    // that fails never blocks a pod its own fields already keep out of the mesh.
    std::optional<kube::Namespace> nsobj;
    if (namespace_decides(*pod, config.kmesh_namespace)) {
        auto got = (*api)->get_namespace(ns);
        if (!got) throw unavailable(got.status());
        nsobj = std::move(*got);
    }
    const EnrolmentDecision decision =
        decide_enrolment(*pod, nsobj ? &*nsobj : nullptr, config.kmesh_namespace);
    if (!decision.enrolled) {
        log.info("ADD: pod {}/{} not enrolled: {}", ns, name, decision.reason);
        return;
    }
    log.info("ADD: pod {}/{} enrolled: {}", ns, name, decision.reason);
    attach_pod(req, kernel, log);
    // Best effort: the pod is enrolled whether or not the annotation lands; the agent's reconciler
    // writes it when this fails.
    kube::AnnotationPatch patch{{kRedirectionAnnotation, std::string(kRedirectionEnabled)}};
    if (Status st = (*api)->patch_pod_annotations(ns, name, patch); !st)
        log.warn("ADD: pod {}/{}: cannot set {}: {} (the agent will)", ns, name, kRedirectionAnnotation,
                 st.to_string());
}

// Verifies the links in `dir` run the agent's programs on `cgroup_id`.
void check_links(Kernel& kernel, const fs::path& dir, const std::vector<PinnedProg>& progs,
                 std::uint64_t cgroup_id) {
    for (size_t i = 0; i < std::size(kPodProgs); ++i) {
        const ProgSpec& spec = kPodProgs[i];
        const PinnedProg& prog = progs[i];
        if (!prog.present()) continue;  // optional, not loaded by the agent on this kernel
        const std::string pin = (dir / spec.name).string();
        int fd = kernel.obj_get(pin);
        if (fd < 0) {
            throw CniError(kErrNotAttached,
                           fmt::format("{} not attached: {}: {}", spec.name, pin, errno_str(fd)));
        }
        KernelFd link(kernel, fd);
        LinkInfo info;
        if (int err = kernel.link_info(fd, &info); err < 0) {
            throw CniError(kErrNotAttached, fmt::format("{} is not a cgroup link: {}", pin, errno_str(err)));
        }
        if (info.prog_id != prog.id) {
            throw CniError(kErrNotAttached, fmt::format("{} runs program {}, the agent's {} is program {}",
                                                        pin, info.prog_id, spec.name, prog.id));
        }
        if (info.cgroup_id == 0) {
            throw CniError(kErrNotAttached, fmt::format("{} is detached (cgroup gone)", pin));
        }
        if (info.cgroup_id != cgroup_id) {
            throw CniError(kErrNotAttached, fmt::format("{} is attached to cgroup {}, the pod cgroup is {}",
                                                        pin, info.cgroup_id, cgroup_id));
        }
        if (info.attach_type != static_cast<std::uint32_t>(spec.type)) {
            throw CniError(kErrNotAttached, fmt::format("{} has attach type {}, expected {}", pin,
                                                        info.attach_type, static_cast<int>(spec.type)));
        }
    }
}

// Verifies the sk_lookup link pinned at `pin` runs the agent's program on the pod's netns.
void check_netns_link(Kernel& kernel, const fs::path& pin, const PinnedProg& prog, std::uint64_t netns_ino) {
    int fd = kernel.obj_get(pin.string());
    if (fd < 0) {
        throw CniError(kErrNotAttached,
                       fmt::format("{} not attached: {}: {}", kNetnsProg.name, pin.string(), errno_str(fd)));
    }
    KernelFd link(kernel, fd);
    LinkInfo info;
    if (int err = kernel.link_info(fd, &info); err < 0 || !info.netns) {
        throw CniError(kErrNotAttached, fmt::format("{} is not a netns link: {}", pin.string(),
                                                    err < 0 ? errno_str(err) : "a cgroup link"));
    }
    if (info.prog_id != prog.id) {
        throw CniError(kErrNotAttached, fmt::format("{} runs program {}, the agent's {} is program {}",
                                                    pin.string(), info.prog_id, kNetnsProg.name, prog.id));
    }
    if (info.netns_ino == 0)
        throw CniError(kErrNotAttached, fmt::format("{} is detached (netns gone)", pin.string()));
    if (info.netns_ino != netns_ino) {
        throw CniError(kErrNotAttached, fmt::format("{} is attached to netns {}, the pod's CNI_NETNS is {}",
                                                    pin.string(), info.netns_ino, netns_ino));
    }
    if (info.attach_type != static_cast<std::uint32_t>(kNetnsProg.type)) {
        throw CniError(kErrNotAttached, fmt::format("{} has attach type {}, expected {}", pin.string(),
                                                    info.attach_type, static_cast<int>(kNetnsProg.type)));
    }
}

void cmd_check(const Request& req, Kernel& kernel, spdlog::logger& log) {
    const PinLayout layout{req.config.bpffs_root};
    // With enrolment by labels, ADD passes pods that are not in the mesh (and the agent releases
    // pods relabelled out of it): no attachment record is then the expected state, and CHECK must
    // agree with ADD rather than fail a pod that is correctly outside the mesh. A pod the agent
    // enrolled has its links in pods/_pod_<uid>.
    std::optional<fs::path> enrolled_dir;
    if (!req.config.kube_config.empty() && req.config.cgroup_path.empty()) {
        std::error_code ec;
        const fs::path own = layout.pod_dir(req.container_id);
        const auto uid = req.args.find("K8S_POD_UID");
        const fs::path agent = uid != req.args.end() && valid_pod_uid(uid->second)
                                   ? fs::path(layout.pods_dir()) / agent_pod_record(uid->second)
                                   : fs::path();
        if (fs::is_directory(own, ec)) {
            enrolled_dir = own;
        } else if (!agent.empty() && fs::is_directory(agent, ec)) {
            enrolled_dir = agent;
        } else {
            log.info("CHECK: no attachment record: the pod is not in the mesh; ok");
            return;
        }
    }
    require_bpffs(req.config, kernel);
    const Target target = resolve_target(req, kernel);
    std::vector<PinnedProg> progs = open_pod_progs(kernel, layout, kErrTryAgainLater);
    std::uint64_t cgroup_id = 0;
    open_pod_cgroup(target.cgroup, kernel, kErrNotAttached, &cgroup_id, log);  // only the id is needed
    const PodNetns netns = open_pod_netns(kernel, req.netns, kErrNotAttached, log);
    fs::path dir = enrolled_dir.value_or(fs::path(layout.pod_dir(req.container_id)));
    fs::path record = dir;
    if (target.shared) {
        dir = shared_dir(layout, cgroup_id);
        record = dir / kUsersDir / encode_pin_name(req.container_id);
        std::error_code ec;
        if (!fs::is_directory(record, ec)) {
            throw CniError(kErrNotAttached,
                           fmt::format("container not registered as a user of {}", dir.string()));
        }
    }
    check_links(kernel, dir, progs, cgroup_id);
    check_netns_link(kernel, record / kNetnsProg.name, progs.at(std::size(kPodProgs)), netns.ino);
    log.info("CHECK ok");
}

void cmd_del(const Request& req, Kernel& kernel, spdlog::logger& log) {
    if (!req.unusable_config.empty()) {
        log.warn("DEL with an unusable config ({}): ADD cannot have attached anything with it; nothing to do",
                 req.unusable_config);
        return;
    }
    const PinLayout layout{req.config.bpffs_root};
    if (!bpffs_holds_pins(req.config, kernel, log)) return;
    std::error_code ec;
    if (!fs::is_directory(layout.pods_dir(), ec)) return;
    PodsLock lock(layout.pods_dir());
    const std::string name = encode_pin_name(req.container_id);
    if (release_record(layout.pod_dir(req.container_id), req.config.name))
        log.info("removed {}", layout.pod_dir(req.container_id));
    // The links the agent's enrolment reconciler attached to this pod (pods/_pod_<uid>): the
    // sandbox is going away. Were it only recreated, the ADD that follows attaches it again.
    if (auto uid = req.args.find("K8S_POD_UID"); uid != req.args.end()) {
        const fs::path agent_record = fs::path(layout.pods_dir()) / agent_pod_record(uid->second);
        if (release_record(agent_record, "")) log.info("removed {}", agent_record.string());
    }
    // The shared link sets this container uses (found by scanning: cgroupPath may have changed
    // since ADD, or the cgroup be gone).
    for (fs::directory_iterator it(layout.pods_dir(), ec), end; !ec && it != end; it.increment(ec)) {
        const fs::path holder = it->path();
        if (!holder.filename().string().starts_with(kSharedPrefix)) continue;
        if (release_record(holder / kUsersDir / name, req.config.name)) {
            log.info("{}: user {} removed", holder.string(), req.container_id);
            drop_shared_if_unused(holder, log);
        }
    }
    log.info("DEL ok");
}

// GC (spec 1.1): removes this network's attachments that are not in cni.dev/valid-attachments.
// Only records marked with this network's name are released; records of other networks and
// unmarked records of older kmesh-cni versions are kept unless all their links are detached
// (cgroup gone: nothing runs any more), which is always safe to clean.
void cmd_gc(const Request& req, Kernel& kernel, spdlog::logger& log) {
    const PinLayout layout{req.config.bpffs_root};
    if (!bpffs_holds_pins(req.config, kernel, log)) return;
    std::error_code ec;
    if (!fs::is_directory(layout.pods_dir(), ec)) return;
    PodsLock lock(layout.pods_dir());
    std::set<std::string> valid;
    for (const auto& a : *req.config.valid_attachments) valid.insert(a.container_id);
    const std::string marker = net_marker(req.config.name);
    int removed = 0;

    auto collect = [&](const fs::path& record, const fs::path& links_dir) {
        if (valid.count(decode_pin_name(record.filename().string()))) return;
        std::error_code e;
        if (fs::exists(record / marker, e)) {
            if (release_record(record, req.config.name)) ++removed;
            log.info("GC: {} is not a valid attachment of {}: released", record.string(), req.config.name);
        } else if (all_links_detached(kernel, links_dir)) {
            remove_tree(record);
            ++removed;
            log.info("GC: {} has only detached links: removed", record.string());
        }
    };
    std::vector<fs::path> entries;
    for (fs::directory_iterator it(layout.pods_dir(), ec), end; !ec && it != end; it.increment(ec)) {
        entries.push_back(it->path());
    }
    for (const auto& entry : entries) {
        const std::string fname = entry.filename().string();
        if (fname.starts_with(kSharedPrefix)) {
            std::vector<fs::path> users;
            for (fs::directory_iterator u(entry / kUsersDir, ec), end; !ec && u != end; u.increment(ec)) {
                users.push_back(u->path());
            }
            ec.clear();
            for (const auto& user : users) collect(user, entry);
            drop_shared_if_unused(entry, log);
        } else if (!fname.empty() && is_alnum(fname[0])) {  // a container's own dir
            collect(entry, entry);
        }
    }
    log.info("GC ok: {} attachment(s) removed", removed);
}

// STATUS (spec 1.1): ready when the agent's programs are pinned, so an ADD would succeed.
void cmd_status(const Request& req, Kernel& kernel, spdlog::logger& log) {
    const PinLayout layout{req.config.bpffs_root};
    const long magic = kernel.fs_magic(req.config.bpffs_root);
    if (magic >= 0 && !is_bpffs(magic)) {
        throw CniError(kErrPluginNotAvailable,
                       fmt::format("bpffsRoot {} is not a bpffs mount", req.config.bpffs_root));
    }
    open_pod_progs(kernel, layout, kErrPluginNotAvailable);
    log.info("STATUS ok");
}

// `s` re-encoded byte by byte: valid UTF-8 sequences kept, anything else through `bad`.
template <typename Bad>
std::string map_utf8(std::string_view s, Bad bad) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        size_t n = utf8_len(s, i);
        if (n == 0) {
            bad(out, static_cast<unsigned char>(s[i]));
            ++i;
        } else {
            if (n == 1) {
                const auto c = static_cast<unsigned char>(s[i]);
                if (c < 0x20 || c == 0x7f || c == '\\') {
                    bad(out, c);
                    ++i;
                    continue;
                }
            }
            out.append(s.substr(i, n));
            i += n;
        }
    }
    return out;
}

// A log sink that escapes each message before the real sink formats it.
class EscapingSink final : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
  public:
    explicit EscapingSink(std::shared_ptr<spdlog::sinks::sink> inner) : inner_(std::move(inner)) {}

  protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        const std::string escaped = escape_for_log(std::string_view(msg.payload.data(), msg.payload.size()));
        spdlog::details::log_msg copy(msg);
        copy.payload = spdlog::string_view_t(escaped.data(), escaped.size());
        inner_->log(copy);
    }
    void flush_() override { inner_->flush(); }
    void set_pattern_(const std::string& pattern) override { inner_->set_pattern(pattern); }
    void set_formatter_(std::unique_ptr<spdlog::formatter> f) override {
        inner_->set_formatter(std::move(f));
    }

  private:
    std::shared_ptr<spdlog::sinks::sink> inner_;
};

}  // namespace

Env Env::from_process() {
    auto get = [](const char* name) {
        const char* v = std::getenv(name);
        return std::string(v ? v : "");
    };
    return Env{get("CNI_COMMAND"), get("CNI_CONTAINERID"), get("CNI_NETNS"),
               get("CNI_IFNAME"),  get("CNI_ARGS"),        get("CNI_PATH")};
}

Command parse_command(std::string_view command) {
    if (command == "ADD") return Command::kAdd;
    if (command == "DEL") return Command::kDel;
    if (command == "CHECK") return Command::kCheck;
    if (command == "VERSION") return Command::kVersion;
    if (command == "STATUS") return Command::kStatus;
    if (command == "GC") return Command::kGc;
    if (command.empty()) throw CniError(kErrInvalidEnv, "CNI_COMMAND is not set");
    throw CniError(kErrInvalidEnv, fmt::format("unsupported CNI_COMMAND {}", command));
}

std::map<std::string, std::string> parse_cni_args(std::string_view args) {
    std::map<std::string, std::string> out;
    while (!args.empty()) {
        size_t semi = args.find(';');
        std::string_view pair = args.substr(0, semi);
        args = semi == std::string_view::npos ? std::string_view{} : args.substr(semi + 1);
        if (pair.empty()) continue;
        size_t eq = pair.find('=');
        if (eq == std::string_view::npos || eq == 0) {
            throw CniError(kErrInvalidEnv, fmt::format("CNI_ARGS: invalid pair \"{}\"", pair));
        }
        out[std::string(pair.substr(0, eq))] = std::string(pair.substr(eq + 1));
    }
    return out;
}

Config parse_config(std::string_view json, bool lenient) {
    rapidjson::Document doc;
    parse_json(doc, json);

    Config config;
    auto version = doc.FindMember("cniVersion");
    if (version == doc.MemberEnd() || !version->value.IsString()) {
        throw CniError(kErrInvalidConfig, "cniVersion missing or not a string");
    }
    config.cni_version.assign(version->value.GetString(), version->value.GetStringLength());
    if (!lenient && !supported_version(config.cni_version)) {
        throw CniError(kErrIncompatibleVersion,
                       fmt::format("unsupported cniVersion \"{}\"", config.cni_version),
                       fmt::format("supported: {}", fmt::join(kSupportedVersions, ", ")));
    }
    read_string(doc, "name", config.name);
    read_string(doc, "type", config.type);
    if (!lenient) {
        if (config.name.empty()) throw CniError(kErrInvalidConfig, "network name missing");
        if (!valid_cni_name(config.name)) {
            throw CniError(kErrInvalidConfig, fmt::format("invalid network name \"{}\"", config.name),
                           fmt::format("an alphanumeric, then alphanumerics, '_', '.', '-'; at most {} bytes",
                                       kMaxEncodedName));
        }
        if (config.type.empty()) throw CniError(kErrInvalidConfig, "type missing");
    }
    read_string(doc, "bpffsRoot", config.bpffs_root);
    read_string(doc, "cgroupRoot", config.cgroup_root);
    read_string(doc, "cgroupPath", config.cgroup_path);
    read_string(doc, "logFile", config.log_file, /*allow_empty=*/true);
    read_string(doc, "kubeConfig", config.kube_config);
    read_string(doc, "kmeshNamespace", config.kmesh_namespace);
    read_string(doc, "agentSocket", config.agent_socket);
    if (auto ex = doc.FindMember("excludeNamespaces"); ex != doc.MemberEnd()) {
        if (!ex->value.IsArray())
            throw CniError(kErrInvalidConfig, "excludeNamespaces must be a list of strings");
        config.exclude_namespaces.clear();
        for (const auto& n : ex->value.GetArray()) {
            if (!n.IsString())
                throw CniError(kErrInvalidConfig, "excludeNamespaces must be a list of strings");
            config.exclude_namespaces.emplace_back(n.GetString(), n.GetStringLength());
        }
    }

    if (auto va = doc.FindMember("cni.dev/valid-attachments"); va != doc.MemberEnd()) {
        if (!va->value.IsArray())
            throw CniError(kErrInvalidConfig, "cni.dev/valid-attachments is not a list");
        config.valid_attachments.emplace();
        for (const auto& a : va->value.GetArray()) {
            if (!a.IsObject())
                throw CniError(kErrInvalidConfig, "cni.dev/valid-attachments: entry is not an object");
            Attachment att;
            read_string(a, "containerID", att.container_id);
            read_string(a, "ifname", att.ifname);
            if (att.container_id.empty()) {
                throw CniError(kErrInvalidConfig, "cni.dev/valid-attachments: entry without containerID");
            }
            config.valid_attachments->push_back(std::move(att));
        }
    }

    auto prev = doc.FindMember("prevResult");
    if (prev != doc.MemberEnd() && !prev->value.IsNull()) {
        if (!prev->value.IsObject()) throw CniError(kErrInvalidConfig, "prevResult is not a JSON object");
        // A chained plugin passes the result on unchanged, labelled with the config's version.
        rapidjson::Value& result = prev->value;
        rapidjson::Value v(config.cni_version.c_str(), doc.GetAllocator());
        if (auto it = result.FindMember("cniVersion"); it != result.MemberEnd()) {
            it->value = v;
        } else {
            result.AddMember("cniVersion", v, doc.GetAllocator());
        }
        // The input bytes are valid UTF-8, but a \u escape of an unpaired UTF-16 surrogate (e.g.
        // "\udc00") decodes to a code point UTF-8 cannot carry; passing it on would hand the next
        // plugin or the runtime invalid JSON text. Found by fuzz/cni_fuzz.cpp.
        rapidjson::StringBuffer buf;
        rapidjson::Writer<rapidjson::StringBuffer, rapidjson::UTF8<>, rapidjson::UTF8<>,
                          rapidjson::CrtAllocator, rapidjson::kWriteValidateEncodingFlag>
            writer(buf);
        if (!result.Accept(writer))
            throw CniError(kErrDecode, "cannot parse prevResult",
                           "a string holds an unpaired UTF-16 surrogate escape (not valid Unicode)");
        config.prev_result = std::string(buf.GetString(), buf.GetSize());
    }
    return config;
}

Request parse_request(const Env& env, std::string_view stdin_json) {
    Request req;
    req.command = parse_command(env.command);
    if (req.command == Command::kVersion) return req;
    if (req.command == Command::kStatus) {
        req.config = parse_config(stdin_json);
        return req;
    }
    if (req.command == Command::kGc) {
        req.config = parse_config(stdin_json);
        if (!req.config.valid_attachments) {
            throw CniError(kErrInvalidConfig, "GC without cni.dev/valid-attachments",
                           "refusing to treat every attachment as stale");
        }
        return req;
    }
    if (env.container_id.empty()) throw CniError(kErrInvalidEnv, "CNI_CONTAINERID is not set");
    if (!valid_cni_name(env.container_id)) {
        throw CniError(kErrInvalidEnv, fmt::format("invalid CNI_CONTAINERID \"{}\"", env.container_id),
                       fmt::format("an alphanumeric, then alphanumerics, '_', '.', '-'; at most {} bytes",
                                   kMaxEncodedName));
    }
    req.container_id = env.container_id;
    req.netns = env.netns;
    req.args = parse_cni_args(env.args);
    if (auto uid = req.args.find("K8S_POD_UID"); uid != req.args.end() && !valid_pod_uid(uid->second)) {
        throw CniError(kErrInvalidEnv, fmt::format("CNI_ARGS: invalid K8S_POD_UID \"{}\"", uid->second));
    }
    if (req.command == Command::kDel) {
        // DEL never fails on what it cannot use: any cniVersion, no name/type/netns/ifname needed.
        try {
            req.config = parse_config(stdin_json, /*lenient=*/true);
        } catch (const CniError& e) {
            if (e.code() == kErrDecode) throw;
            req.unusable_config = e.what();
            const Peek peek = peek_config(stdin_json);  // still log where the config says
            req.config.cni_version = peek.cni_version;
            req.config.log_file = peek.log_file;
        }
        return req;
    }
    req.config = parse_config(stdin_json);
    // Required for ADD and CHECK by the spec.
    for (auto [value, name] :
         {std::pair{&env.netns, "CNI_NETNS"}, {&env.ifname, "CNI_IFNAME"}, {&env.path, "CNI_PATH"}}) {
        if (value->empty()) throw CniError(kErrInvalidEnv, fmt::format("{} is not set", name));
    }
    if (req.command == Command::kCheck && req.config.cni_version == "0.3.1") {
        throw CniError(kErrIncompatibleVersion, "CHECK is not supported by cniVersion 0.3.1");
    }
    if ((req.command == Command::kAdd || req.command == Command::kCheck) && !req.config.prev_result) {
        throw CniError(kErrInvalidConfig, "kmesh-cni is a chained plugin: prevResult is required",
                       "list kmesh-cni after the main plugin in the conflist");
    }
    return req;
}

std::string to_valid_utf8(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        size_t n = utf8_len(s, i);
        if (n == 0) {
            out += "\xEF\xBF\xBD";
            ++i;
        } else {
            out.append(s.substr(i, n));
            i += n;
        }
    }
    return out;
}

std::string escape_for_log(std::string_view s) {
    return map_utf8(s, [](std::string& out, unsigned char c) { out += fmt::format("\\x{:02x}", c); });
}

std::string render_error(const CniError& error, std::string_view cni_version) {
    // rapidjson escapes control characters; bytes that are not UTF-8 must be replaced first.
    const std::string version = to_valid_utf8(cni_version);
    const std::string msg = to_valid_utf8(error.what());
    const std::string details = to_valid_utf8(error.details());
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    w.StartObject();
    w.Key("cniVersion");
    w.String(version.data(), static_cast<rapidjson::SizeType>(version.size()));
    w.Key("code");
    w.Int(error.code());
    w.Key("msg");
    w.String(msg.data(), static_cast<rapidjson::SizeType>(msg.size()));
    w.Key("details");
    w.String(details.data(), static_cast<rapidjson::SizeType>(details.size()));
    w.EndObject();
    return std::string(buf.GetString(), buf.GetSize());
}

std::string render_version() {
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    w.StartObject();
    w.Key("cniVersion");
    w.String(kCniVersion);
    w.Key("supportedVersions");
    w.StartArray();
    for (auto v : kSupportedVersions) w.String(v.data(), static_cast<rapidjson::SizeType>(v.size()));
    w.EndArray();
    w.EndObject();
    return std::string(buf.GetString(), buf.GetSize());
}

std::string run(const Request& req, Kernel& kernel, spdlog::logger& log, const ApiFactory& api) {
    switch (req.command) {
        case Command::kVersion:
            return render_version();
        case Command::kAdd:
            cmd_add(req, kernel, log, api);
            return *req.config.prev_result;
        case Command::kDel:
            cmd_del(req, kernel, log);
            return "";
        case Command::kCheck:
            cmd_check(req, kernel, log);
            return "";
        case Command::kStatus:
            cmd_status(req, kernel, log);
            return "";
        case Command::kGc:
            cmd_gc(req, kernel, log);
            return "";
    }
    throw CniError(kErrInternal, "unhandled command");
}

// The version an error is reported in: the config's when it names one we speak.
static std::string error_version(std::string_view stdin_json) {
    Peek peek = peek_config(stdin_json);
    return supported_version(peek.cni_version) ? peek.cni_version : std::string(kCniVersion);
}

std::string check_input(const Env& env, std::string_view stdin_json) {
    try {
        parse_request(env, stdin_json);
        return "";
    } catch (const CniError& e) {
        return render_error(e, error_version(stdin_json));
    }
}

std::shared_ptr<spdlog::logger> open_log(const std::string& path) {
    auto log = std::make_shared<spdlog::logger>("kmesh-cni");
    if (!path.empty()) {
        try {
            // Each plugin process writes a few lines, so checking the size at open bounds the log:
            // at most kLogRotateBytes plus one invocation, and one old file. Concurrent plugins
            // may both rename; the loser's rename just moves a fresh file (lines lost, never the
            // bound).
            std::error_code ec;
            if (fs::file_size(path, ec) >= kLogRotateBytes && !ec) fs::rename(path, path + ".1", ec);
            // The sink creates missing parent directories.
            auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path);
            log->sinks().push_back(std::make_shared<EscapingSink>(std::move(file)));
        } catch (const spdlog::spdlog_ex&) {
        }
    }
    log->set_pattern("%Y-%m-%dT%H:%M:%S.%e [%l] [%P] %v");
    // One write at the end of the call (plugin_main flushes before returning) instead of one per
    // line; warnings and errors are written at once.
    log->flush_on(spdlog::level::warn);
    return log;
}

int plugin_main(const Env& env, std::string_view stdin_json, Kernel& kernel, std::string& out,
                const std::string& default_log, const ApiFactory& api) {
    std::shared_ptr<spdlog::logger> log;
    std::optional<CniError> error;
    try {
        const Request req = parse_request(env, stdin_json);
        if (req.command == Command::kVersion) {  // runtimes call it constantly: not logged
            out = render_version();
            return 0;
        }
        log = open_log(req.config.log_file);
        log->info("{} container={} netns={} ifname={} args={}", env.command, env.container_id, env.netns,
                  env.ifname, env.args);
        out = run(req, kernel, *log, api);
        log->flush();
        return 0;
    } catch (const CniError& e) {
        error = e;
    } catch (const std::exception& e) {
        error = CniError(kErrInternal, e.what());
    }
    if (!log) {
        // Refused before the config was accepted: still log where the config says, when it can
        // be read at all.
        Peek peek = peek_config(stdin_json);
        log = open_log(peek.parsed ? peek.log_file : default_log);
    }
    log->error("{} {} failed: code {}: {} ({})", env.command, env.container_id, error->code(), error->what(),
               error->details());
    out = render_error(*error, error_version(stdin_json));
    return 1;
}

}  // namespace kmesh::cni
