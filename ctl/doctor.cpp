#include "ctl/doctor.hpp"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <linux/bpf.h>
#include <linux/magic.h>
#include <rapidjson/document.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "agent/src/dataplane/bpf_loader.hpp"
#include "agent/src/installer/chain.hpp"
#include "common/abi.hpp"
#include "common/cgroup.hpp"
#include "common/file.hpp"
#include "ctl/render.hpp"

namespace kmesh::ctl {

namespace fs = std::filesystem;

const char* status_name(CheckStatus s) {
    switch (s) {
        case CheckStatus::kOk:
            return "ok";
        case CheckStatus::kWarn:
            return "warn";
        default:
            return "fail";
    }
}

namespace {

Check ok(std::string name, std::string detail) {
    return {std::move(name), CheckStatus::kOk, std::move(detail), {}};
}
Check fail(std::string name, std::string detail, std::string fix) {
    return {std::move(name), CheckStatus::kFail, std::move(detail), std::move(fix)};
}
Check warn(std::string name, std::string detail, std::string fix) {
    return {std::move(name), CheckStatus::kWarn, std::move(detail), std::move(fix)};
}

std::string errno_str(int e) { return std::strerror(e < 0 ? -e : e); }

const std::string kInstallFix =
    "start the agent with --install-cni (the DaemonSet does) or run `kmesh-daemon cni install`";

}  // namespace

// --- CNI ------------------------------------------------------------------------------------------

Check check_cni_config(const std::string& conf_dir) {
    const char* name = "cni config chained";
    std::error_code ec;
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(conf_dir, ec)) {
        std::error_code e2;
        if (!e.is_directory(e2)) names.push_back(e.path().filename().string());
    }
    if (ec)
        return fail(
            name, fmt::format("cannot read the CNI config dir {} ({})", conf_dir, ec.message()),
            "give the node's config dir with --cni-conf-dir (kubelet/containerd default: /etc/cni/net.d)");
    std::vector<std::string> skipped;
    for (const auto& f : installer::config_candidates(names)) {
        auto bytes = read_file(conf_dir + "/" + f);
        if (!bytes) {
            skipped.push_back(f);
            continue;
        }
        if (!installer::validate_config(f, *bytes)) {  // the runtime skips it too
            skipped.push_back(f);
            continue;
        }
        std::string skip_note =
            skipped.empty() ? "" : fmt::format(" (skipped as unloadable: {})", fmt::join(skipped, ", "));
        if (!installer::is_conflist_name(f))
            return fail(
                name,
                fmt::format("{}/{}, the config the runtime reads{}, is a single plugin without kmesh-cni, "
                            "so new pods are not enrolled",
                            conf_dir, f, skip_note),
                kInstallFix + " to chain kmesh-cni into it");
        rapidjson::Document d;
        d.Parse(bytes->c_str());
        const auto& plugins = d["plugins"].GetArray();  // validate_config checked the shape
        size_t n = plugins.Size(), at = 0;
        for (size_t i = 0; i < n; i++)
            if (std::string_view(plugins[static_cast<rapidjson::SizeType>(i)]["type"].GetString()) ==
                installer::kPluginType)
                at = i + 1;
        if (!at)
            return fail(
                name,
                fmt::format("{}/{}, the config the runtime reads{}, does not chain kmesh-cni, so new pods "
                            "are not enrolled",
                            conf_dir, f, skip_note),
                kInstallFix);
        if (at != n)
            return warn(
                name,
                fmt::format("{}/{} has kmesh-cni as plugin {} of {}, not last: the plugins after it run "
                            "on pods it may have refused",
                            conf_dir, f, at, n),
                kInstallFix + ", which moves the entry to the end");
        return ok(name,
                  fmt::format("{}/{} chains kmesh-cni (plugin {} of {}){}", conf_dir, f, at, n, skip_note));
    }
    return fail(
        name,
        fmt::format("no loadable CNI config in {}{}: the runtime has no network to chain kmesh-cni into",
                    conf_dir,
                    skipped.empty() ? "" : fmt::format(" (unloadable: {})", fmt::join(skipped, ", "))),
        "install the cluster's network plugin first; the agent chains kmesh-cni into its config once "
        "it is there");
}

Check check_cni_binary(const std::string& bin_dirs) {
    const char* name = "cni binary installed";
    std::vector<std::string> dirs;
    std::stringstream ss(bin_dirs);
    for (std::string d; std::getline(ss, d, ':');)
        if (!d.empty()) dirs.push_back(d);
    std::optional<Check> bad;
    for (const auto& d : dirs) {
        std::string p = d + "/" + installer::kPluginType;
        struct stat st;
        if (stat(p.c_str(), &st) != 0) continue;
        if (!S_ISREG(st.st_mode)) {
            if (!bad)
                bad = fail(name, fmt::format("{} is not a regular file, so the runtime cannot run it", p),
                           fmt::format("remove it and {}", kInstallFix));
            continue;
        }
        if ((st.st_mode & 0111) == 0 || access(p.c_str(), X_OK) != 0) {
            if (!bad)
                bad = fail(
                    name,
                    fmt::format("{} is not executable (mode {:04o}), so every pod ADD that chains it fails",
                                p, st.st_mode & 07777),
                    fmt::format("chmod 0755 {} (the installer writes it 0755)", p));
            continue;
        }
        return ok(name, fmt::format("{} ({} bytes, mode {:04o})", p, st.st_size, st.st_mode & 07777));
    }
    if (bad) return *bad;
    return fail(
        name,
        fmt::format(
            "kmesh-cni is not in the CNI bin dir {}, so the runtime fails every pod ADD that chains it",
            bin_dirs),
        fmt::format("{} (with --cni-bin-dir {})", kInstallFix, dirs.empty() ? bin_dirs : dirs.front()));
}

// --- cgroup v2 ------------------------------------------------------------------------------------

CgroupMounts parse_cgroup_mounts(std::string_view mountinfo) {
    CgroupMounts m;
    m.v2 = find_cgroup2_mount(mountinfo);
    std::istringstream in{std::string(mountinfo)};
    for (std::string line; std::getline(in, line);) {
        std::istringstream fields(line);
        std::vector<std::string> f;
        for (std::string w; fields >> w;) f.push_back(std::move(w));
        auto sep = std::find(f.begin(), f.end(), "-");
        if (f.size() < 6 || sep == f.end() || sep - f.begin() < 6 || sep + 1 == f.end()) continue;
        if (*(sep + 1) == "cgroup") m.v1.push_back(f[4]);
    }
    return m;
}

Check check_cgroup2(const CgroupMounts& m, const std::string& cgroup_root, bool root_is_cgroup2) {
    const char* name = "cgroup v2";
    if (!m.v2)
        return fail(
            name, "no cgroup v2 hierarchy is mounted, and Kmesh's connect programs attach to cgroup v2 only",
            "mount it (`mount -t cgroup2 none /sys/fs/cgroup/unified`) or boot with "
            "systemd.unified_cgroup_hierarchy=1");
    std::string layout =
        m.v1.empty()
            ? "unified layout"
            : fmt::format("hybrid layout: {} cgroup v1 controller mount(s) beside it, fine", m.v1.size());
    if (!cgroup_root.empty() && !root_is_cgroup2)
        return fail(
            name,
            fmt::format("--cgroup-root {} is not on the cgroup v2 hierarchy (mounted at {}), so pod "
                        "cgroups would not be found there",
                        cgroup_root, *m.v2),
            fmt::format("give kmesh-cni and the agent a cgroupRoot on {} (or leave it unset: they detect it)",
                        *m.v2));
    return ok(name,
              fmt::format("mounted at {} ({}){}", *m.v2, layout,
                          cgroup_root.empty() ? "" : fmt::format("; pod cgroups under {}", cgroup_root)));
}

// --- map layout -----------------------------------------------------------------------------------

Check compare_map_layout(const std::map<std::string, MapShape>& expected,
                         const std::map<std::string, std::optional<MapShape>>& pinned,
                         const std::string& dir) {
    const char* name = "map layout";
    std::vector<std::string> missing, differ;
    for (const auto& [n, want] : expected) {
        auto it = pinned.find(n);
        if (it == pinned.end() || !it->second) {
            missing.push_back(n);
        } else if (!(*it->second == want)) {
            const MapShape& have = *it->second;
            differ.push_back(fmt::format("{} (type/key/value {}/{}/{}, expected {}/{}/{})", n, have.type,
                                         have.key_size, have.value_size, want.type, want.key_size,
                                         want.value_size));
        }
    }
    if (!differ.empty())
        return fail(
            name,
            fmt::format("pinned maps in {} differ from the layout the programs expect: {}", dir,
                        fmt::join(differ, ", ")),
            "the maps belong to another build of the same layout version: run `kmesh-daemon uninstall` "
            "and start the agent again");
    if (!missing.empty())
        return fail(
            name,
            fmt::format("{} of {} maps are not pinned in {}: {}", missing.size(), expected.size(), dir,
                        fmt::join(missing, ", ")),
            "the agent has not loaded its programs there: check its log, and that --bpffs-root is the "
            "agent's");
    return ok(name, fmt::format("{} maps pinned in {} with the expected type, key and value sizes",
                                expected.size(), dir));
}

// --- kernel probes --------------------------------------------------------------------------------

namespace {

#define KM_HELPER_NAME(x, ...) "bpf_" #x
const char* const kHelperNames[] = {__BPF_FUNC_MAPPER(KM_HELPER_NAME)};
#undef KM_HELPER_NAME

std::string helper_name(int id) {
    if (id >= 0 && static_cast<size_t>(id) < std::size(kHelperNames)) return kHelperNames[id];
    return fmt::format("helper #{}", id);
}

std::string prog_type_name(bpf_prog_type t) {
    const char* s = libbpf_bpf_prog_type_str(t);
    return s ? s : fmt::format("type {}", static_cast<int>(t));
}
std::string map_type_name(bpf_map_type t) {
    const char* s = libbpf_bpf_map_type_str(t);
    return s ? s : fmt::format("type {}", static_cast<int>(t));
}

// Programs the agent leaves out when the kernel lacks their hook or helper (bpf_loader.cpp): their
// absence degrades a feature, it does not stop the agent.
const std::set<std::string> kOptionalPrograms = {
    "cgroup_sendmsg4",     "cgroup_sendmsg6",     "cgroup_recvmsg4", "cgroup_recvmsg6", "cgroup_getpeername4",
    "cgroup_getpeername6", "cgroup_sock_release", "iter_tcp_authz",  "sk_msg_accel",    "iter_conn_report",
};
// Helpers probed at load with a fallback (bpf_set_retval: EPERM instead of ECONNREFUSED).
const std::set<int> kOptionalHelpers = {BPF_FUNC_set_retval};

struct ObjectNeeds {
    std::map<bpf_prog_type, bool> prog_types;  // -> required
    std::map<bpf_map_type, std::vector<std::string>> map_types;
    std::map<std::pair<bpf_prog_type, int>, bool> helpers;  // (type, helper id) -> required
    std::map<std::string, MapShape> maps;                   // pinned maps: name -> shape
    std::string error;
};

// What the embedded object needs, read without loading it.
ObjectNeeds object_needs() {
    ObjectNeeds n;
    std::string_view obj = program_object();
    LIBBPF_OPTS(bpf_object_open_opts, oo, .object_name = "kmesh_doctor");
    bpf_object* o = bpf_object__open_mem(obj.data(), obj.size(), &oo);
    if (!o) {
        n.error = fmt::format("cannot open the embedded BPF object: {}", errno_str(errno));
        return n;
    }
    bpf_program* p;
    bpf_object__for_each_program(p, o) {
        bool required = !kOptionalPrograms.count(bpf_program__name(p));
        bpf_prog_type t = bpf_program__type(p);
        n.prog_types[t] = n.prog_types[t] || required;
        const bpf_insn* insns = bpf_program__insns(p);
        size_t cnt = bpf_program__insn_cnt(p);
        for (size_t i = 0; i < cnt; i++)
            if (insns[i].code == (BPF_JMP | BPF_CALL) && insns[i].src_reg == 0) {
                auto key = std::pair{t, insns[i].imm};
                n.helpers[key] = n.helpers[key] || (required && !kOptionalHelpers.count(insns[i].imm));
            }
    }
    bpf_map* m;
    bpf_object__for_each_map(m, o) {
        if (bpf_map__is_internal(m)) continue;
        n.map_types[bpf_map__type(m)].push_back(bpf_map__name(m));
        n.maps[bpf_map__name(m)] = {static_cast<uint32_t>(bpf_map__type(m)), bpf_map__key_size(m),
                                    bpf_map__value_size(m)};
    }
    bpf_object__close(o);
    return n;
}

const bpf_insn kReturn1[] = {
    {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 1},
    {BPF_JMP | BPF_EXIT, 0, 0, 0, 0},
};

// Loads a trivial iter/tcp program: what the close-on-change iterator (and any tracing iterator)
// needs from the kernel. "" or why not.
std::string probe_tcp_iterator(const btf* vmlinux) {
    if (!vmlinux) return "no kernel BTF to find the iterator's attach point";
    int id = btf__find_by_name_kind(vmlinux, "bpf_iter_tcp", BTF_KIND_FUNC);
    if (id < 0) return "the kernel has no bpf_iter_tcp (TCP socket iterators need 5.9)";
    const bpf_insn insns[] = {
        {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0},
        {BPF_JMP | BPF_EXIT, 0, 0, 0, 0},
    };
    LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = BPF_TRACE_ITER,
                .attach_btf_id = static_cast<uint32_t>(id));
    int fd = bpf_prog_load(BPF_PROG_TYPE_TRACING, "kmesh_doctor", "GPL", insns, 2, &opts);
    if (fd < 0) return fmt::format("loading an iter/tcp program failed: {}", errno_str(errno));
    close(fd);
    return {};
}

// A real bpf_link on a throwaway cgroup: create, check the kernel reports it on that cgroup and
// that the cgroup lists the program, remove. "" or why not.
std::string probe_cgroup_link(const std::string& cgroup_root, std::string* where) {
    std::string dir = fmt::format("{}/kmesh-doctor-{}", cgroup_root, getpid());
    *where = dir;
    if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
        return fmt::format("cannot create the test cgroup {}: {}", dir, errno_str(errno));
    std::string why;
    int cg = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int prog = -1, link = -1;
    if (cg < 0) {
        why = fmt::format("open {}: {}", dir, errno_str(errno));
    } else {
        LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = BPF_CGROUP_INET4_CONNECT);
        prog = bpf_prog_load(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, "kmesh_doctor", "GPL", kReturn1, 2, &opts);
        if (prog < 0) why = fmt::format("loading a connect4 program failed: {}", errno_str(errno));
    }
    if (why.empty()) {
        link = bpf_link_create(prog, cg, BPF_CGROUP_INET4_CONNECT, nullptr);
        if (link < 0)
            why = fmt::format("BPF_LINK_CREATE on a cgroup failed: {} (needs 5.7)", errno_str(errno));
    }
    if (why.empty()) {
        bpf_link_info info{};
        uint32_t len = sizeof info;
        auto id = cgroup_id(dir);
        bpf_prog_info pinfo{};
        uint32_t plen = sizeof pinfo;
        uint32_t ids[8] = {}, cnt = 8;
        if (bpf_obj_get_info_by_fd(link, &info, &len) != 0)
            why = fmt::format("reading the link's info failed: {}", errno_str(errno));
        else if (info.type != BPF_LINK_TYPE_CGROUP || !id || info.cgroup.cgroup_id != *id)
            why = "the kernel reports the link on another object than the test cgroup";
        else if (bpf_obj_get_info_by_fd(prog, &pinfo, &plen) != 0 ||
                 bpf_prog_query(cg, BPF_CGROUP_INET4_CONNECT, 0, nullptr, ids, &cnt) != 0 || cnt != 1 ||
                 ids[0] != pinfo.id)
            why = "the test cgroup does not list the linked program";
    }
    if (link >= 0) close(link);  // the only reference: closing it detaches the program
    if (prog >= 0) close(prog);
    if (cg >= 0) close(cg);
    if (rmdir(dir.c_str()) != 0 && why.empty())
        why = fmt::format("removing the test cgroup {} failed: {}", dir, errno_str(errno));
    return why;
}

int quiet_print(enum libbpf_print_level, const char*, va_list) { return 0; }

}  // namespace

std::vector<Check> run_doctor(const DoctorOptions& o) {
    std::vector<Check> out;
    libbpf_set_print(quiet_print);  // probes fail on purpose; their reasons are in the checks

    // Kernel BTF.
    btf* vmlinux = nullptr;
    if (access(o.btf_path.c_str(), R_OK) != 0) {
        out.push_back(
            fail("kernel BTF",
                 fmt::format("{} is missing ({}), and the programs' CO-RE relocations need the kernel's BTF",
                             o.btf_path, errno_str(errno)),
                 "run a kernel built with CONFIG_DEBUG_INFO_BTF=y (5.4 or later)"));
    } else {
        vmlinux = btf__parse(o.btf_path.c_str(), nullptr);
        if (!vmlinux)
            out.push_back(fail("kernel BTF",
                               fmt::format("{} cannot be parsed: {}", o.btf_path, errno_str(errno)),
                               "run a kernel built with CONFIG_DEBUG_INFO_BTF=y"));
        else
            out.push_back(ok("kernel BTF", fmt::format("{} ({} types)", o.btf_path, btf__type_cnt(vmlinux))));
    }

    ObjectNeeds needs = object_needs();
    if (!needs.error.empty())
        out.push_back(fail("program object", needs.error, "reinstall kmeshctl; the binary is damaged"));

    // Program types: the object's, and the ones Kmesh's features rest on.
    std::map<bpf_prog_type, bool> types = needs.prog_types;
    for (auto t : {BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_PROG_TYPE_SOCK_OPS, BPF_PROG_TYPE_SK_MSG,
                   BPF_PROG_TYPE_SK_LOOKUP})
        types.emplace(t, true);
    types.emplace(BPF_PROG_TYPE_TRACING, false);
    std::string iter_why = probe_tcp_iterator(vmlinux);
    for (auto [t, required] : types) {
        std::string n = "program type " + prog_type_name(t);
        if (t == BPF_PROG_TYPE_TRACING) {  // libbpf cannot probe it alone: an iterator is loaded
            if (iter_why.empty())
                out.push_back(ok(n, "an iter/tcp iterator program loads"));
            else
                out.push_back(
                    warn(n, iter_why + ": connections a policy change denies stay open until they close",
                         "run kernel 6.5 or later for close-on-change"));
            continue;
        }
        int rc = libbpf_probe_bpf_prog_type(t, nullptr);
        if (rc == 1)
            out.push_back(ok(n, "supported"));
        else if (required)
            out.push_back(
                fail(n,
                     fmt::format("the kernel refuses {} programs{}, which Kmesh needs", prog_type_name(t),
                                 rc < 0 ? " (probe: " + errno_str(rc) + ")" : ""),
                     "run kernel 5.10 or later with CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF"));
        else
            out.push_back(warn(n,
                               fmt::format("the kernel refuses {} programs: the features using them are off",
                                           prog_type_name(t)),
                               "run a newer kernel (the agent logs which features it left out)"));
    }
    if (vmlinux) {
        if (btf__find_by_name_kind(vmlinux, "bpf_sock_destroy", BTF_KIND_FUNC) >= 0)
            out.push_back(
                ok("kfunc bpf_sock_destroy", "present: connections a policy change denies are closed"));
        else
            out.push_back(warn("kfunc bpf_sock_destroy",
                               "absent: connections a policy change denies stay open until they close",
                               "run kernel 6.5 or later for close-on-change"));
    }

    // Map types.
    std::map<bpf_map_type, std::vector<std::string>> maps = needs.map_types;
    for (auto t : {BPF_MAP_TYPE_SK_STORAGE, BPF_MAP_TYPE_SOCKHASH, BPF_MAP_TYPE_RINGBUF,
                   BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY})
        maps.emplace(t, std::vector<std::string>{});
    for (const auto& [t, names] : maps) {
        std::string n = "map type " + map_type_name(t);
        int rc = libbpf_probe_bpf_map_type(t, nullptr);
        std::string used = names.empty() ? "" : fmt::format(" ({})", fmt::join(names, ", "));
        if (rc == 1)
            out.push_back(ok(n, "supported" + used));
        else if (t == BPF_MAP_TYPE_RINGBUF)  // the agent turns connection telemetry off without it
            out.push_back(
                warn(n, "the kernel cannot create ringbuf maps: connection metrics and access logs are off",
                     "run kernel 5.8 or later for connection telemetry"));
        else
            out.push_back(fail(n,
                               fmt::format("the kernel cannot create {} maps{}{}", map_type_name(t), used,
                                           rc < 0 ? " (probe: " + errno_str(rc) + ")" : ""),
                               "run kernel 5.10 or later (ringbuf 5.8, sk_storage 5.2)"));
    }

    // Helpers the programs call, per program type.
    {
        std::vector<std::string> missing_req, missing_opt;
        size_t probed = 0;
        for (const auto& [key, required] : needs.helpers) {
            auto [t, id] = key;
            if (t == BPF_PROG_TYPE_TRACING) continue;  // covered by the iterator load above
            int rc = libbpf_probe_bpf_helper(t, static_cast<bpf_func_id>(id), nullptr);
            probed++;
            if (rc == 1) continue;
            std::string s = fmt::format("{} in {}", helper_name(id), prog_type_name(t));
            (required ? missing_req : missing_opt).push_back(s);
        }
        if (!missing_req.empty())
            out.push_back(fail(
                "helpers",
                fmt::format("the kernel lacks helpers the programs call: {}", fmt::join(missing_req, ", ")),
                "run kernel 5.10 or later; the agent cannot load its programs here"));
        else if (!missing_opt.empty())
            out.push_back(warn("helpers",
                               fmt::format("optional helpers missing (the agent falls back): {}",
                                           fmt::join(missing_opt, ", ")),
                               "run a newer kernel for the full feature set (bpf_set_retval: 5.18)"));
        else
            out.push_back(ok(
                "helpers",
                fmt::format("all {} (program type, helper) pairs the programs use are available", probed)));
    }
    if (vmlinux) btf__free(vmlinux);

    // cgroup v2.
    std::string mountinfo;
    {
        std::ifstream in("/proc/self/mountinfo");
        std::stringstream s;
        s << in.rdbuf();
        mountinfo = s.str();
    }
    CgroupMounts cg = parse_cgroup_mounts(mountinfo);
    bool root_v2 = false;
    if (!o.cgroup_root.empty()) {
        struct statfs st {};
        root_v2 = statfs(o.cgroup_root.c_str(), &st) == 0 && st.f_type == CGROUP2_SUPER_MAGIC;
    }
    out.push_back(check_cgroup2(cg, o.cgroup_root, root_v2));

    // bpffs.
    {
        struct statfs st {};
        if (statfs(o.bpffs_root.c_str(), &st) != 0)
            out.push_back(fail("bpffs", fmt::format("{} does not exist ({})", o.bpffs_root, errno_str(errno)),
                               fmt::format("mount it: `mount -t bpf bpf {}`", o.bpffs_root)));
        else if (st.f_type != BPF_FS_MAGIC)
            out.push_back(fail(
                "bpffs",
                fmt::format("{} is not a bpffs mount, so pinned maps and links would not outlive the agent",
                            o.bpffs_root),
                fmt::format("mount it: `mount -t bpf bpf {}`", o.bpffs_root)));
        else
            out.push_back(ok("bpffs", fmt::format("mounted at {}", o.bpffs_root)));
    }

    // bpf_link on a cgroup (needs a cgroup v2 directory to create a test cgroup in).
    std::string link_root = !o.cgroup_root.empty() ? o.cgroup_root : cg.v2.value_or("");
    if (link_root.empty()) {
        out.push_back(fail("bpf_link (cgroup)",
                           "not tried: there is no cgroup v2 hierarchy to create a test cgroup in",
                           "mount cgroup v2 (see the cgroup v2 check)"));
    } else {
        std::string where;
        std::string why = probe_cgroup_link(link_root, &where);
        if (why.empty())
            out.push_back(
                ok("bpf_link (cgroup)", fmt::format("a connect4 link was created on {} and removed", where)));
        else
            out.push_back(fail("bpf_link (cgroup)",
                               why + "; kmesh-cni attaches every pod with cgroup bpf_links",
                               "run kernel 5.7 or later as root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"));
    }

    // Node: CNI.
    out.push_back(check_cni_config(o.cni_conf_dir));
    out.push_back(check_cni_binary(o.cni_bin_dir));

    // Node: the agent, and the layout of its pinned maps.
    std::string error;
    auto ready = o.admin.get("/ready", &error);
    if (!ready) {
        out.push_back(
            fail("agent ready", error, "start kmesh-daemon (kubectl -n kmesh-system get pods -o wide)"));
    } else if (ready->status != 200) {
        out.push_back(fail("agent ready",
                           fmt::format("the agent at {} is {}", o.admin.address, error_of(*ready)),
                           "see the agent's log for what it waits for"));
    } else {
        out.push_back(ok("agent ready", fmt::format("{} answers /ready", o.admin.address)));
    }
    std::string v_error;
    auto version = ready ? o.admin.get_json("/version", &v_error) : std::nullopt;
    if (!version) {
        out.push_back(warn("map layout",
                           ready ? "not checked: " + v_error : "not checked: the agent is not reachable",
                           "fix the agent check first"));
    } else {
        rapidjson::Document d;
        d.Parse(version->c_str());
        unsigned abi = 0, in_use = 0;
        if (d.HasMember("maps") && d["maps"].IsObject()) {
            const auto& m = d["maps"];
            if (m.HasMember("abi") && m["abi"].IsUint()) abi = m["abi"].GetUint();
            if (m.HasMember("version") && m["version"].IsUint()) in_use = m["version"].GetUint();
        }
        if (abi != KMESH_ABI_VERSION) {
            out.push_back(
                warn("map layout",
                     fmt::format("not compared: this kmeshctl is built for map layout v{}, the agent for v{}",
                                 KMESH_ABI_VERSION, abi),
                     "use the kmeshctl of the agent's release (the one in its image)"));
        } else {
            PinLayout layout;
            layout.bpffs_root = o.bpffs_root;
            layout.maps_version = in_use;
            // The generation the agent published (maps/v<N>, or v<N>-<digest> after a resize).
            layout = layout.with_current_maps();
            std::map<std::string, std::optional<MapShape>> pinned;
            for (const auto& [n, shape] : needs.maps) {
                int fd = bpf_obj_get(layout.map(n).c_str());
                if (fd < 0) {
                    pinned[n] = std::nullopt;
                    continue;
                }
                bpf_map_info info{};
                uint32_t len = sizeof info;
                if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0)
                    pinned[n] = MapShape{info.type, info.key_size, info.value_size};
                else
                    pinned[n] = std::nullopt;
                close(fd);
            }
            out.push_back(compare_map_layout(needs.maps, pinned, layout.maps_dir()));
        }
    }
    return out;
}

bool healthy(const std::vector<Check>& checks) {
    return std::none_of(checks.begin(), checks.end(),
                        [](const Check& c) { return c.status == CheckStatus::kFail; });
}

std::string doctor_table(const std::vector<Check>& checks) {
    Table t{{"check", "status", "detail"}, {}};
    for (const auto& c : checks)
        t.rows.push_back(
            {c.name, status_name(c.status), c.fix.empty() ? c.detail : c.detail + "; fix: " + c.fix});
    return render_table(t);
}

std::string doctor_json(const std::vector<Check>& checks) {
    std::string out = fmt::format("{{\"healthy\":{},\"checks\":[", healthy(checks) ? "true" : "false");
    for (size_t i = 0; i < checks.size(); i++) {
        const Check& c = checks[i];
        out += fmt::format("{}{{\"check\":{},\"status\":\"{}\",\"detail\":{}", i ? "," : "",
                           json_quote(c.name), status_name(c.status), json_quote(c.detail));
        if (!c.fix.empty()) out += fmt::format(",\"fix\":{}", json_quote(c.fix));
        out += "}";
    }
    return out + "]}";
}

}  // namespace kmesh::ctl
