// kmeshctl: the operator CLI of a Kmesh node (docs/kmeshctl.md). It talks to the local agent's admin
// server and never writes BPF maps itself; `dump` also reads the pinned maps directly (read-only),
// and `doctor` probes the kernel with throwaway programs. The verbs live in dump.cpp, status.cpp and
// doctor.cpp; this file is the command line.
//
// Exit status: 0 done (doctor: healthy), 1 failed (the agent unreachable, a doctor check failed),
// 2 usage error, 3 `authz check` denies.
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include "agent/src/dataplane/bpf_loader.hpp"
#include "ctl/doctor.hpp"
#include "ctl/verbs.hpp"

using namespace kmesh::ctl;

int main(int argc, char** argv) {
    CLI::App app{"kmeshctl: inspect and operate the Kmesh data plane on this node"};
    kmesh::PinLayout layout;
    Admin admin;
    std::string output = "table";
    app.set_version_flag("--version", [] { return kmesh::version_text("kmeshctl"); });
    app.add_option("--bpffs-root", layout.bpffs_root, "bpffs mount under which kmesh/ is pinned")
        ->capture_default_str();
    auto* admin_opt = app.add_option("--admin", admin.address, "the agent's admin server (host:port)")
                          ->capture_default_str();
    app.add_option("-o,--output", output, "table (for people) or json (for scripts)")
        ->check(CLI::IsMember({"table", "json"}))
        ->capture_default_str();

    auto* version_cmd = app.add_subcommand(
        "version", "this client's release, BPF programs (SHA-256) and map layout, and the running agent's");
    auto* dump_cmd = app.add_subcommand("dump",
                                        "the BPF maps as connect() sees them (services, endpoints, backends, "
                                        "counters), then from the agent the "
                                        "authorization policies with hit counts, waypoints (model and kernel "
                                        "tables) and workload identities");
    auto* log_cmd = app.add_subcommand("log", "show the agent's log level, or set it at run time");
    std::string set_level;
    log_cmd->add_option("--set", set_level, "trace, debug, info, warn, error, critical or off");
    auto* mon_cmd = app.add_subcommand(
        "monitoring",
        "show, or switch at run time, connection metrics and access logs (off: no events from the kernel)");
    bool enable = false, disable = false;
    std::string accesslog;
    auto* en = mon_cmd->add_flag("--enable", enable, "turn connection metrics on");
    auto* dis = mon_cmd->add_flag("--disable", disable, "turn connection metrics off");
    en->excludes(dis);
    mon_cmd->add_option("--accesslog", accesslog, "access log lines per closed or denied connection")
        ->check(CLI::IsMember({"on", "off"}));
    auto* authz_cmd = app.add_subcommand("authz", "authorization policies");
    auto* authz_status_cmd = authz_cmd->add_subcommand(
        "status", "policies the agent knows, their hit counts in the kernel, and whether they are published");
    auto* check_cmd = authz_cmd->add_subcommand(
        "check", "what the policies decide for a new connection (exit 0: allow, 3: deny, 1: error)");
    std::string src, dst;
    unsigned port = 0;
    check_cmd->add_option("--src", src, "source IP")->required();
    check_cmd->add_option("--dst", dst, "destination IP (a workload's address)")->required();
    check_cmd->add_option("--port", port, "destination port")->required()->check(CLI::Range(1, 65535));
    authz_cmd->require_subcommand(1);
    auto* wp_cmd = app.add_subcommand("waypoint", "waypoints");
    auto* wp_status_cmd = wp_cmd->add_subcommand(
        "status",
        "waypoints in the kernel, the services and workloads using each, and the loop-guard counters");
    wp_cmd->require_subcommand(1);
    auto* doctor_cmd = app.add_subcommand(
        "doctor",
        "check that this node can run Kmesh: kernel features, cgroup v2, bpffs, the CNI chain, the "
        "agent (exit 0: healthy, 1: a check failed)");
    DoctorOptions dopt;
    doctor_cmd->add_option("--cni-conf-dir", dopt.cni_conf_dir, "CNI config directory")
        ->capture_default_str();
    doctor_cmd->add_option("--cni-bin-dir", dopt.cni_bin_dir, "CNI plugin directories (':'-separated)")
        ->capture_default_str();
    doctor_cmd->add_option(
        "--cgroup-root", dopt.cgroup_root,
        "cgroup v2 directory for the pod cgroups and the bpf_link probe (default: the v2 mount)");
    for (auto* c : {version_cmd, dump_cmd, log_cmd, mon_cmd, authz_cmd, authz_status_cmd, check_cmd, wp_cmd,
                    wp_status_cmd, doctor_cmd})
        c->fallthrough();  // global options (-o, --admin) after the verb too
    app.require_subcommand(1);

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        app.exit(e);  // prints the message and the hint to --help
        return kExitUsage;
    }
    Output out = parse_output(output).value_or(Output::kTable);
    if (dump_cmd->parsed()) return dump(layout, admin, out);
    if (version_cmd->parsed()) return version(admin, admin_opt->count() > 0, out);
    if (log_cmd->parsed()) return log_level(admin, set_level, out);
    if (mon_cmd->parsed()) return monitoring(admin, enable ? 1 : disable ? 0 : -1, accesslog, out);
    if (check_cmd->parsed()) return authz_check(admin, src, dst, port, out);
    if (authz_status_cmd->parsed()) return authz_status(admin, out);
    if (wp_status_cmd->parsed()) return waypoint_status(admin, out);
    if (doctor_cmd->parsed()) {
        dopt.bpffs_root = layout.bpffs_root;
        dopt.admin = admin;
        auto checks = run_doctor(dopt);
        fmt::print("{}", out == Output::kJson ? doctor_json(checks) + "\n" : doctor_table(checks));
        return healthy(checks) ? kExitOk : kExitFailed;
    }
    return kExitUsage;
}
