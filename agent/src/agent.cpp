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
#include <optional>

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
    spdlog::info("data plane loaded ({} maps under {}); recovered {} services, {} backends, {} frontends",
                 agent->dataplane_->reused_maps() ? "reused pinned" : "created", options.layout.maps_dir(),
                 recovered.services.size(), recovered.backends.size(), recovered.frontends.size());
    agent->writer_ = std::make_unique<MapWriter>(*agent->ops_, std::move(recovered),
                                                 MapCapacity{options.sizes.services, options.sizes.backends},
                                                 agent->metrics_);
    return agent;
}

namespace {

int64_t micros_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

Agent::Reload Agent::apply(const Model& model, std::string* error) {
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::string> problems;
    DesiredState desired = build_desired(model, &problems);
    if (!problems.empty()) {
        *error = problems.front();
        return Reload::kRejected;
    }
    Plan plan = diff(writer_->state(), desired);
    int64_t plan_us = micros_since(t0);
    auto t1 = std::chrono::steady_clock::now();
    std::string err = writer_->apply(plan);
    int64_t write_us = micros_since(t1);
    if (!err.empty()) {
        *error = fmt::format("{} (after {} us; every service in the maps stays consistent)", err, write_us);
        return Reload::kFailed;
    }
    generation_++;
    spdlog::info("config generation {} applied: {} services, {} workloads; {} map changes in {} us (planned in {} us)",
                 generation_, model.services.size(), model.workloads.size(), plan.size(), write_us, plan_us);
    return Reload::kApplied;
}

Agent::Reload Agent::reload_config() {
    auto t0 = std::chrono::steady_clock::now();
    auto parsed = load_config_file(options_.config_path);
    spdlog::debug("parsed {} in {} us", options_.config_path, micros_since(t0));
    if (auto* bad = std::get_if<ConfigError>(&parsed)) {
        metrics_.config_rejected++;
        spdlog::error("config {} rejected, still serving the last good state: {}", options_.config_path,
                      bad->summary());
        return Reload::kRejected;
    }
    auto& model = std::get<Model>(parsed);
    if (applied_ && *applied_ == model) return Reload::kUnchanged;
    std::string err;
    Reload result = apply(model, &err);
    if (result == Reload::kRejected) {
        metrics_.config_rejected++;
        spdlog::error("config {} rejected, still serving the last good state: {}", options_.config_path, err);
        return result;
    }
    if (result == Reload::kFailed) {
        spdlog::error("config {} not fully applied: {}", options_.config_path, err);
        applied_.reset();  // the next reload applies the difference that is left
        return result;
    }
    metrics_.config_applied++;
    applied_ = std::move(model);
    return Reload::kApplied;
}

int Agent::run() {
    sigset_t mask;
    sigemptyset(&mask);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&mask, sig);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    if (sfd < 0) {
        spdlog::error("signalfd: {}", std::strerror(errno));
        return 1;
    }

    FileWatcher watcher(options_.config_path);
    if (!watcher.error().empty()) spdlog::warn("{}; send SIGHUP to reload the config", watcher.error());

    // A failed apply (full map, kernel error) is retried with exponential backoff, 1 s to 30 s.
    using Clock = std::chrono::steady_clock;
    std::optional<Clock::time_point> retry_at;
    auto backoff = std::chrono::milliseconds(1000);
    auto reload = [&] {
        if (reload_config() == Reload::kFailed) {
            retry_at = Clock::now() + backoff;
            spdlog::info("retrying in {} ms", backoff.count());
            backoff = std::min(backoff * 2, std::chrono::milliseconds(30000));
        } else {
            retry_at.reset();
            backoff = std::chrono::milliseconds(1000);
        }
    };

    reload();
    // Only now, with the maps holding the mesh, do new programs serve pods (upgrade included).
    if (auto err = dataplane_->publish(options_.layout); !err.empty()) {
        spdlog::error("{}", err);
        close(sfd);
        return 1;
    }
    spdlog::info("programs published: {} pod links moved to them, {} pods without a cgroup forgotten",
                 dataplane_->links_updated(), dataplane_->pods_forgotten());
    spdlog::info("kmesh-daemon ready");

    for (;;) {
        int timeout = -1;
        if (retry_at)
            timeout = static_cast<int>(std::max<int64_t>(
                0, std::chrono::duration_cast<std::chrono::milliseconds>(*retry_at - Clock::now()).count()));
        pollfd fds[2] = {{sfd, POLLIN, 0}, {watcher.fd(), POLLIN, 0}};
        int n = poll(fds, watcher.fd() >= 0 ? 2 : 1, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            spdlog::error("poll: {}", std::strerror(errno));
            break;
        }
        if (n == 0) {  // retry timer
            reload();
            continue;
        }
        if (fds[0].revents & POLLIN) {
            signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) != sizeof si) continue;
            if (si.ssi_signo == SIGHUP) {
                spdlog::info("SIGHUP: reloading {}", options_.config_path);
                reload();
                continue;
            }
            spdlog::info("signal {}: exiting; pinned maps and pod links keep serving", si.ssi_signo);
            break;
        }
        if (fds[1].revents & POLLIN && watcher.drain()) reload();
    }
    close(sfd);
    return 0;
}

}  // namespace kmesh
