#include "agent/src/agent.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "agent/src/config_file.hpp"
#include "agent/src/dataplane_state.hpp"
#include "agent/src/file_watcher.hpp"

namespace kmesh {

std::unique_ptr<Agent> Agent::start(const AgentOptions& options, std::string* error) {
    auto agent = std::make_unique<Agent>();
    agent->options_ = options;
    agent->dataplane_ = Dataplane::load(options.layout, options.sizes, error);
    if (!agent->dataplane_) return nullptr;
    agent->ops_ = std::make_unique<KernelMapOps>(agent->dataplane_->map_fds());
    MapState recovered = recover_map_state(*agent->ops_);
    spdlog::info(
        "data plane loaded ({} maps under {}); recovered {} services, {} backends, {} frontends; "
        "{} pod links moved to the new programs",
        agent->dataplane_->reused_maps() ? "reused pinned" : "created", options.layout.maps_dir(),
        recovered.services.size(), recovered.backends.size(), recovered.frontends.size(),
        agent->dataplane_->pods_updated());
    agent->writer_ = std::make_unique<MapWriter>(*agent->ops_, std::move(recovered),
                                                 MapCapacity{options.sizes.services, options.sizes.backends},
                                                 agent->metrics_);
    return agent;
}

std::string Agent::apply(const Model& model) {
    std::vector<std::string> problems;
    DesiredState desired = build_desired(model, &problems);
    if (!problems.empty()) return problems.front();
    Plan plan = diff(writer_->state(), desired);
    auto t0 = std::chrono::steady_clock::now();
    std::string err = writer_->apply(plan);
    auto us =
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
    if (!err.empty())
        return fmt::format("{} (after {} us; the maps hold a consistent mix of old and new)", err, us);
    generation_++;
    spdlog::info("config generation {} applied: {} services, {} workloads; {} map changes in {} us",
                 generation_, model.services.size(), model.workloads.size(), plan.size(), us);
    return {};
}

void Agent::reload_config() {
    auto parsed = load_config_file(options_.config_path);
    if (auto* bad = std::get_if<ConfigError>(&parsed)) {
        metrics_.config_rejected++;
        spdlog::error("config {} rejected, still serving the last good state: {}", options_.config_path,
                      bad->summary());
        return;
    }
    auto& model = std::get<Model>(parsed);
    if (applied_ && *applied_ == model) return;
    if (auto err = apply(model); !err.empty()) {
        metrics_.config_rejected++;
        spdlog::error("config {} not fully applied: {}", options_.config_path, err);
        applied_.reset();  // retry on the next change even if the file is the same
        return;
    }
    metrics_.config_applied++;
    applied_ = std::move(model);
}

int Agent::run() {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    if (sfd < 0) {
        spdlog::error("signalfd: {}", std::strerror(errno));
        return 1;
    }

    FileWatcher watcher(options_.config_path);
    if (!watcher.error().empty()) spdlog::warn("{}; config changes need a restart", watcher.error());
    reload_config();
    spdlog::info("kmesh-daemon ready");

    for (;;) {
        pollfd fds[2] = {{sfd, POLLIN, 0}, {watcher.fd(), POLLIN, 0}};
        if (poll(fds, watcher.fd() >= 0 ? 2 : 1, -1) < 0) {
            if (errno == EINTR) continue;
            spdlog::error("poll: {}", std::strerror(errno));
            break;
        }
        if (fds[0].revents & POLLIN) {
            signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) == sizeof si)
                spdlog::info("signal {}: exiting; pinned maps and pod links keep serving", si.ssi_signo);
            break;
        }
        if (fds[1].revents & POLLIN && watcher.drain()) {
            // Writers often produce several events (truncate, write, close); let them settle.
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            watcher.drain();
            reload_config();
        }
    }
    close(sfd);
    return 0;
}

}  // namespace kmesh
