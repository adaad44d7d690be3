// kmesh-cni: chained CNI plugin that attaches the kmesh agent's cgroup connect programs to a pod's
// cgroup (ADD), detaches them (DEL) and verifies them (CHECK). Output protocol on stdout only.
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>

#include <iostream>
#include <iterator>
#include <memory>

#include "cni/attach.hpp"
#include "cni/plugin.hpp"

namespace {

// A logger with no sink drops everything: logging must never break the plugin.
std::shared_ptr<spdlog::logger> open_log(const std::string& path) {
    auto log = std::make_shared<spdlog::logger>("kmesh-cni");
    if (!path.empty()) {
        try {
            // The sink creates missing parent directories.
            log->sinks().push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(path));
        } catch (const spdlog::spdlog_ex&) {
        }
    }
    log->set_pattern("%Y-%m-%dT%H:%M:%S.%e [%l] [%P] %v");
    log->flush_on(spdlog::level::info);
    spdlog::set_default_logger(log);  // nothing may reach stdout through the default logger
    return log;
}

}  // namespace

int main() {
    using namespace kmesh::cni;
    const Env env = Env::from_process();
    std::string cni_version = kCniVersion;
    std::shared_ptr<spdlog::logger> log;
    try {
        std::string input;
        if (parse_command(env.command) != Command::kVersion) {  // VERSION may be run by hand, without stdin
            input.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
        }
        const Request req = parse_request(env, input);
        if (!req.config.cni_version.empty()) cni_version = req.config.cni_version;
        log = open_log(req.config.log_file);
        log->info("{} container={} netns={} args={}", env.command, env.container_id, env.netns, env.args);
        LinuxKernel kernel;
        std::cout << run(req, kernel, *log);
        return 0;
    } catch (const CniError& e) {
        if (!log) log = open_log(kDefaultLogFile);  // failed before the config named a log file
        log->error("{} {} failed: code {}: {} ({})", env.command, env.container_id, e.code(), e.what(),
                   e.details());
        std::cout << render_error(e, cni_version);
    } catch (const std::exception& e) {
        if (!log) log = open_log(kDefaultLogFile);
        log->error("{} {} failed: {}", env.command, env.container_id, e.what());
        std::cout << render_error(CniError(kErrInternal, e.what()), cni_version);
    }
    return 1;
}
