// kmesh-daemon: the Kmesh node agent.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>

#include "agent/src/agent.hpp"

int main(int argc, char** argv) {
    CLI::App app{
        "kmesh-daemon: loads the Kmesh eBPF data plane and keeps its maps in sync with the mesh config"};
    kmesh::AgentOptions opt;
    std::string log_level = "info";
    app.add_option("--bpffs-root", opt.layout.bpffs_root, "bpffs mount under which kmesh/ is pinned")
        ->capture_default_str();
    app.add_option("--config", opt.config_path, "standalone mesh config (YAML, Istio workload API shape)");
    app.add_option("--max-services", opt.sizes.services, "service map capacity")->capture_default_str();
    app.add_option("--max-frontends", opt.sizes.frontends, "(VIP, port) frontend map capacity")
        ->capture_default_str();
    app.add_option("--max-endpoints", opt.sizes.endpoints, "service endpoint map capacity")
        ->capture_default_str();
    app.add_option("--max-backends", opt.sizes.backends, "workload (backend) map capacity")
        ->capture_default_str();
    app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
    auto* uninstall =
        app.add_subcommand("uninstall", "detach every pod and remove all pinned programs and maps");
    CLI11_PARSE(app, argc, argv);

    spdlog::set_level(spdlog::level::from_str(log_level));
    spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

    if (uninstall->parsed()) {
        auto problems = kmesh::uninstall(opt.layout);
        if (!problems.empty()) {
            spdlog::error("uninstall: {}", problems);
            return 1;
        }
        spdlog::info("removed {}", opt.layout.kmesh_dir());
        return 0;
    }
    if (opt.config_path.empty()) {
        spdlog::error("--config is required (the istiod source is not available yet)");
        return 2;
    }
    std::string error;
    auto agent = kmesh::Agent::start(opt, &error);
    if (!agent) {
        spdlog::error("{}", error);
        return 1;
    }
    return agent->run();
}
