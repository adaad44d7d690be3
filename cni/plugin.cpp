#include "cni/plugin.hpp"

#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <utility>
#include <vector>

#include "common/cgroup.hpp"

namespace kmesh::cni {

namespace fs = std::filesystem;

namespace {

constexpr std::array<std::string_view, 3> kSupportedVersions = {"0.3.1", "0.4.0", "1.0.0"};

struct ProgSpec {
    const char* name;
    bpf_attach_type type;
};
constexpr ProgSpec kProgs[] = {
    {kProgConnect4, BPF_CGROUP_INET4_CONNECT},
    {kProgConnect6, BPF_CGROUP_INET6_CONNECT},
};

std::string errno_str(int negative_errno) { return std::strerror(-negative_errno); }

// CNI container ids become a bpffs directory name (dots encoded, see encode_pin_name): spec charset,
// and never "." or "..".
bool valid_container_id(std::string_view id) {
    return !id.empty() && id != "." && id != ".." && std::all_of(id.begin(), id.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
    });
}

bool valid_pod_uid(std::string_view uid) {
    return !uid.empty() && std::all_of(uid.begin(), uid.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
    });
}

// Reads an optional string field; empty values keep the default.
void read_string(const rapidjson::Value& obj, const char* key, std::string& out, bool allow_empty = false) {
    auto it = obj.FindMember(key);
    if (it == obj.MemberEnd()) return;
    if (!it->value.IsString()) throw CniError(kErrInvalidConfig, fmt::format("{} must be a string", key));
    std::string value(it->value.GetString(), it->value.GetStringLength());
    if (!value.empty() || allow_empty) out = std::move(value);
}

fs::path resolve_cgroup_root(const Config& config) {
    if (!config.cgroup_root.empty()) return config.cgroup_root;
    auto mount = find_cgroup2_mount();
    if (!mount) {
        throw CniError(kErrPodCgroupNotFound, "no cgroup v2 mount in /proc/self/mountinfo",
                       "set cgroupRoot in the plugin config");
    }
    return *mount;
}

fs::path resolve_pod_cgroup(const Request& req) {
    const Config& config = req.config;
    if (!config.cgroup_path.empty()) {
        fs::path p = config.cgroup_path;
        if (p.is_relative()) p = resolve_cgroup_root(config) / p;
        std::error_code ec;
        if (!fs::is_directory(p, ec)) {
            throw CniError(kErrPodCgroupNotFound,
                           fmt::format("cgroupPath {} is not a directory", p.string()));
        }
        return p;
    }
    auto uid = req.args.find("K8S_POD_UID");
    if (uid == req.args.end()) {
        throw CniError(kErrPodCgroupNotFound, "cannot find the pod cgroup: no K8S_POD_UID in CNI_ARGS",
                       "set cgroupPath in the plugin config for runtimes that do not pass K8S_POD_UID");
    }
    const fs::path root = resolve_cgroup_root(config);
    PodCgroupLookup lookup = find_pod_cgroup(root, uid->second);
    if (!lookup.path) {
        throw CniError(kErrPodCgroupNotFound,
                       fmt::format("cgroup of pod {} not found under {}", uid->second, root.string()),
                       fmt::format("tried {}, then searched {} levels deep", fmt::join(lookup.tried, ", "),
                                   kPodCgroupSearchDepth));
    }
    return *lookup.path;
}

struct PinnedProg {
    KernelFd fd;
    std::uint32_t id = 0;
};

// Opens the agent's pinned program; a missing pin means the agent has not (yet) loaded it.
PinnedProg open_prog(Kernel& kernel, const PinLayout& layout, const char* name) {
    const std::string path = layout.prog(name);
    int fd = kernel.obj_get(path);
    if (fd == -ENOENT) {
        throw CniError(kErrTryAgainLater, fmt::format("kmesh agent not running: {} not found", path));
    }
    if (fd < 0) throw CniError(kErrAttach, fmt::format("cannot open {}: {}", path, errno_str(fd)));
    PinnedProg prog{KernelFd(kernel, fd)};
    if (int err = kernel.prog_id(fd, &prog.id); err < 0) {
        throw CniError(kErrAttach, fmt::format("cannot read program info of {}: {}", path, errno_str(err)));
    }
    return prog;
}

void remove_pod_dir(const fs::path& dir) {
    std::error_code ec;
    fs::remove_all(dir, ec);  // unpinning a link detaches it once no fd holds it
    if (ec) throw CniError(kErrIo, fmt::format("cannot remove {}: {}", dir.string(), ec.message()));
}

// Makes `pin` a link of `prog` on the cgroup. An existing link on the cgroup is kept, and moved to
// `prog` with bpf_link_update if it runs another program (agent upgrade): the pod never loses the
// hook. Only a detached link or one on another cgroup is replaced by a new link.
void ensure_link(Kernel& kernel, const ProgSpec& spec, const PinnedProg& prog, int cgroup_fd,
                 std::uint64_t cgroup_id, const fs::path& pin, spdlog::logger& log) {
    if (int fd = kernel.obj_get(pin); fd >= 0) {
        KernelFd existing(kernel, fd);
        LinkInfo info;
        const bool ours = kernel.link_info(fd, &info) == 0 && info.cgroup_id != 0 &&
                          info.cgroup_id == cgroup_id && info.attach_type == spec.type;
        if (ours && info.prog_id == prog.id) {
            log.info("{}: already attached, keeping {}", spec.name, pin.string());
            return;
        }
        if (ours) {
            int err = kernel.link_update(fd, prog.fd.get());
            if (err == 0) {
                log.info("{}: moved {} from prog {} to prog {}", spec.name, pin.string(), info.prog_id,
                         prog.id);
                return;
            }
            log.warn("{}: cannot move {} to prog {}: {}; replacing the link", spec.name, pin.string(),
                     prog.id, errno_str(err));
        } else {
            log.info("{}: replacing stale pin {} (prog {}, cgroup {})", spec.name, pin.string(), info.prog_id,
                     info.cgroup_id);
        }
    }
    std::error_code ec;
    fs::remove(pin, ec);
    if (ec) throw CniError(kErrIo, fmt::format("cannot remove {}: {}", pin.string(), ec.message()));

    int link = kernel.link_create(prog.fd.get(), cgroup_fd, spec.type);
    if (link < 0) {
        throw CniError(kErrAttach,
                       fmt::format("cannot attach {} to the pod cgroup: {}", spec.name, errno_str(link)));
    }
    KernelFd link_fd(kernel, link);  // closing it after pinning leaves the pin as the only holder
    if (int err = kernel.obj_pin(link, pin); err < 0) {
        throw CniError(kErrAttach, fmt::format("cannot pin {}: {}", pin.string(), errno_str(err)));
    }
    log.info("{}: attached (prog {}, cgroup {}), pinned {}", spec.name, prog.id, cgroup_id, pin.string());
}

// Opens the pod cgroup; `error_code` is the CNI code for a cgroup that exists but cannot be opened.
KernelFd open_pod_cgroup(const fs::path& cgroup, Kernel& kernel, int error_code, std::uint64_t* cgroup_id,
                         spdlog::logger& log) {
    int cg = kernel.open_cgroup(cgroup.string(), cgroup_id);
    if (cg < 0) {
        throw CniError(error_code, fmt::format("cannot open pod cgroup {}: {}", cgroup.string(),
                                               cg == -EMEDIUMTYPE ? "not on cgroup v2" : errno_str(cg)));
    }
    log.info("pod cgroup {} (id {})", cgroup.string(), *cgroup_id);
    return KernelFd(kernel, cg);
}

void cmd_add(const Request& req, Kernel& kernel, spdlog::logger& log) {
    const PinLayout layout{req.config.bpffs_root};
    const fs::path cgroup = resolve_pod_cgroup(req);
    // Open everything before touching the pod dir, so a missing agent leaves nothing behind.
    std::vector<PinnedProg> progs;
    for (const auto& spec : kProgs) progs.push_back(open_prog(kernel, layout, spec.name));
    std::uint64_t cgroup_id = 0;
    KernelFd cgroup_fd = open_pod_cgroup(cgroup, kernel, kErrAttach, &cgroup_id, log);

    const fs::path dir = layout.pod_dir(req.container_id);
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw CniError(kErrIo, fmt::format("cannot create {}: {}", dir.string(), ec.message()));
    // All or nothing: a failed ADD leaves the pod with no kmesh links.
    try {
        for (size_t i = 0; i < std::size(kProgs); ++i) {
            ensure_link(kernel, kProgs[i], progs[i], cgroup_fd.get(), cgroup_id, dir / kProgs[i].name, log);
        }
    } catch (...) {
        log.error("ADD failed, removing {}", dir.string());
        std::error_code ignored;
        fs::remove_all(dir, ignored);
        throw;
    }
}

void cmd_check(const Request& req, Kernel& kernel, spdlog::logger& log) {
    const PinLayout layout{req.config.bpffs_root};
    const fs::path dir = layout.pod_dir(req.container_id);
    const fs::path cgroup = resolve_pod_cgroup(req);
    std::vector<PinnedProg> progs;
    for (const auto& spec : kProgs) progs.push_back(open_prog(kernel, layout, spec.name));
    std::uint64_t cgroup_id = 0;
    open_pod_cgroup(cgroup, kernel, kErrNotAttached, &cgroup_id, log);  // only the id is needed
    for (size_t i = 0; i < std::size(kProgs); ++i) {
        const ProgSpec& spec = kProgs[i];
        const PinnedProg& prog = progs[i];
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
    log.info("CHECK ok");
}

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

Config parse_config(std::string_view json) {
    rapidjson::Document doc;
    doc.Parse(json.data(), json.size());
    if (doc.HasParseError()) {
        throw CniError(kErrDecode, "cannot parse the network configuration",
                       fmt::format("offset {}: {}", doc.GetErrorOffset(),
                                   rapidjson::GetParseError_En(doc.GetParseError())));
    }
    if (!doc.IsObject()) throw CniError(kErrDecode, "the network configuration is not a JSON object");

    Config config;
    auto version = doc.FindMember("cniVersion");
    if (version == doc.MemberEnd() || !version->value.IsString()) {
        throw CniError(kErrInvalidConfig, "cniVersion missing or not a string");
    }
    config.cni_version.assign(version->value.GetString(), version->value.GetStringLength());
    if (std::find(kSupportedVersions.begin(), kSupportedVersions.end(), config.cni_version) ==
        kSupportedVersions.end()) {
        throw CniError(kErrIncompatibleVersion,
                       fmt::format("unsupported cniVersion \"{}\"", config.cni_version),
                       fmt::format("supported: {}", fmt::join(kSupportedVersions, ", ")));
    }
    read_string(doc, "name", config.name);
    read_string(doc, "bpffsRoot", config.bpffs_root);
    read_string(doc, "cgroupRoot", config.cgroup_root);
    read_string(doc, "cgroupPath", config.cgroup_path);
    read_string(doc, "logFile", config.log_file, /*allow_empty=*/true);
    read_string(doc, "kubeConfig", config.kube_config);

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
        rapidjson::StringBuffer buf;
        rapidjson::Writer<rapidjson::StringBuffer> writer(buf);
        result.Accept(writer);
        config.prev_result = std::string(buf.GetString(), buf.GetSize());
    }
    return config;
}

Request parse_request(const Env& env, std::string_view stdin_json) {
    Request req;
    req.command = parse_command(env.command);
    if (req.command == Command::kVersion) return req;
    if (env.container_id.empty()) throw CniError(kErrInvalidEnv, "CNI_CONTAINERID is not set");
    if (!valid_container_id(env.container_id)) {
        throw CniError(kErrInvalidEnv, fmt::format("invalid CNI_CONTAINERID \"{}\"", env.container_id),
                       "allowed: alphanumerics, '_', '.', '-'");
    }
    req.container_id = env.container_id;
    req.args = parse_cni_args(env.args);
    if (auto uid = req.args.find("K8S_POD_UID"); uid != req.args.end() && !valid_pod_uid(uid->second)) {
        throw CniError(kErrInvalidEnv, fmt::format("CNI_ARGS: invalid K8S_POD_UID \"{}\"", uid->second));
    }
    req.config = parse_config(stdin_json);
    if (req.command == Command::kCheck && req.config.cni_version == "0.3.1") {
        throw CniError(kErrIncompatibleVersion, "CHECK is not supported by cniVersion 0.3.1");
    }
    if ((req.command == Command::kAdd || req.command == Command::kCheck) && !req.config.prev_result) {
        throw CniError(kErrInvalidConfig, "kmesh-cni is a chained plugin: prevResult is required",
                       "list kmesh-cni after the main plugin in the conflist");
    }
    return req;
}

std::string render_error(const CniError& error, std::string_view cni_version) {
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    w.StartObject();
    w.Key("cniVersion");
    w.String(cni_version.data(), static_cast<rapidjson::SizeType>(cni_version.size()));
    w.Key("code");
    w.Int(error.code());
    w.Key("msg");
    w.String(error.what());
    w.Key("details");
    w.String(error.details().c_str(), static_cast<rapidjson::SizeType>(error.details().size()));
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

std::string run(const Request& req, Kernel& kernel, spdlog::logger& log) {
    switch (req.command) {
        case Command::kVersion:
            return render_version();
        case Command::kAdd:
            cmd_add(req, kernel, log);
            return *req.config.prev_result;
        case Command::kDel:
            remove_pod_dir(PinLayout{req.config.bpffs_root}.pod_dir(req.container_id));
            log.info("DEL ok");
            return "";
        case Command::kCheck:
            cmd_check(req, kernel, log);
            return "";
    }
    throw CniError(kErrInternal, "unhandled command");
}

}  // namespace kmesh::cni
