// kmesh-cni: chained CNI plugin that attaches the kmesh agent's cgroup connect programs to a pod's
// cgroup (ADD), detaches them (DEL), verifies them (CHECK), reports readiness (STATUS) and cleans up
// stale attachments (GC). Output protocol on stdout only.
#include <spdlog/spdlog.h>

#include <iostream>
#include <iterator>
#include <memory>
#include <string_view>

#include "cni/attach.hpp"
#include "cni/plugin.hpp"

int main(int argc, char** argv) {
    using namespace kmesh::cni;
    // For operators and the image test; runtimes never pass arguments, so the protocol is untouched.
    if (argc == 2 && std::string_view(argv[1]) == "--version") {
        std::cout << "kmesh-cni " KMESH_VERSION "\n";
        return 0;
    }
    // Nothing may reach stdout through spdlog's default (console) logger.
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("null"));
    const Env env = Env::from_process();
    std::string input;
    if (env.command != "VERSION") {  // VERSION may be run by hand, without stdin
        input.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    }
    LinuxKernel kernel;
    std::string out;
    // The kube client is only made for an ADD whose config has a kubeConfig.
    ApiFactory api = [](const std::string& path) -> kmesh::Result<std::unique_ptr<kmesh::kube::Api>> {
        auto config = kmesh::kube::load_kubeconfig(path);
        if (!config) return config.status();
        return kmesh::kube::make_client(*config);
    };
    const int rc = plugin_main(env, input, kernel, out, kDefaultLogFile, api);
    std::cout << out;
    return rc;
}
