#include "agent/src/agent.hpp"

#include <fmt/format.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "agent/src/config_file.hpp"
#include "agent/src/file_watcher.hpp"
#include "agent/src/xds/source.hpp"

namespace kmesh {

namespace {

int64_t micros_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t)
        .count();
}

}  // namespace

std::unique_ptr<Agent> Agent::start(const AgentOptions& options, std::string* error) {
    std::unique_ptr<Agent> agent(new Agent());
    agent->options_ = options;
    agent->mesh_ = MeshState(options.node, options.learn_locality);
    agent->dataplane_ = Dataplane::load(options.layout, options.sizes, error);
    if (!agent->dataplane_) return nullptr;
    agent->ops_ = std::make_unique<KernelMapOps>(agent->dataplane_->map_fds());
    MapState recovered = recover_map_state(*agent->ops_);
    spdlog::info("data plane loaded ({} maps under {}); recovered {} services, {} backends, {} frontends",
                 agent->dataplane_->reused_maps() ? "reused pinned" : "created", options.layout.maps_dir(),
                 recovered.services.size(), recovered.backends.size(), recovered.frontends.size());
    agent->mesh_.mark_all_dirty();  // the first plan compares everything the maps hold
    agent->writer_ = std::make_unique<MapWriter>(*agent->ops_, std::move(recovered),
                                                 MapCapacity{options.sizes.services, options.sizes.backends},
                                                 agent->metrics_);
    agent->wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return agent;
}

Agent::Reload Agent::sync_maps(std::string* error) {
    auto t0 = std::chrono::steady_clock::now();
    Dirty dirty = mesh_.take_dirty();
    if (dirty.empty()) return Reload::kUnchanged;
    Plan plan = diff(writer_->state(), mesh_.desired(), dirty);
    int64_t plan_us = micros_since(t0);
    auto t1 = std::chrono::steady_clock::now();
    std::string err = writer_->apply(plan);
    int64_t write_us = micros_since(t1);
    if (!err.empty()) {
        mesh_.mark_all_dirty();  // the retry compares everything again
        *error = fmt::format("{} (after {} us; every service in the maps stays consistent)", err, write_us);
        return Reload::kFailed;
    }
    generation_++;
    metrics_.config_applied++;
    spdlog::info(
        "config generation {} applied: {} services, {} workloads; {} map changes in {} us (planned in {} us)",
        generation_, mesh_.model().services.size(), mesh_.model().workloads.size(), plan.size(), write_us,
        plan_us);
    // Parsing and planning peak well above steady state; give the memory back to the system.
    if (plan.size() > 1000) {
        malloc_trim(0);
        spdlog::debug("heap in use after apply: {} MB", mallinfo2().uordblks >> 20);
    }
    return Reload::kApplied;
}

Agent::Reload Agent::reload_config() {
    auto t0 = std::chrono::steady_clock::now();
    auto parsed = load_config_file(options_.config_path);
    spdlog::debug("parsed {} in {} us", options_.config_path, micros_since(t0));
    std::string err;
    if (auto* bad = std::get_if<ConfigError>(&parsed)) {
        err = bad->summary();
    } else if (auto problems = hash_collisions(std::get<Model>(parsed)); !problems.empty()) {
        err = problems.front();
    }
    if (!err.empty()) {
        metrics_.config_rejected++;
        spdlog::error("config {} rejected, still serving the last good state: {}", options_.config_path, err);
        return Reload::kRejected;
    }
    std::lock_guard lock(mu_);
    auto& model = std::get<Model>(parsed);
    if (applied_once_ && mesh_.model() == model) return Reload::kUnchanged;
    mesh_.replace(model);
    Reload result = sync_maps(&err);
    if (result == Reload::kFailed) {
        spdlog::error("config {} not fully applied: {}", options_.config_path, err);
        applied_once_ = false;  // a retry must apply even though the file is the same
        return result;
    }
    applied_once_ = true;
    return result;
}

void Agent::sync_from_xds() {
    std::string err;
    if (sync_maps(&err) == Reload::kFailed) {
        spdlog::error("xds update not fully applied to the maps: {}", err);
        retry_pending_ = true;
        uint64_t one = 1;
        if (write(wake_fd_, &one, sizeof one) < 0) spdlog::warn("eventfd: {}", std::strerror(errno));
    }
}

int Agent::run() {
    sigset_t mask;
    sigemptyset(&mask);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&mask, sig);
    sigprocmask(SIG_BLOCK, &mask, nullptr);  // before any thread starts, so they inherit it
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    if (sfd < 0) {
        spdlog::error("signalfd: {}", std::strerror(errno));
        return 1;
    }
    if (!start_admin()) return 1;

    // A failed apply (full map, kernel error) is retried with exponential backoff, 1 s to 30 s.
    using Clock = std::chrono::steady_clock;
    std::optional<Clock::time_point> retry_at;
    auto backoff = std::chrono::milliseconds(1000);
    auto schedule = [&](bool failed) {
        if (failed) {
            retry_at = Clock::now() + backoff;
            spdlog::info("retrying in {} ms", backoff.count());
            backoff = std::min(backoff * 2, std::chrono::milliseconds(30000));
        } else {
            retry_at.reset();
            backoff = std::chrono::milliseconds(1000);
        }
    };
    auto retry = [&] {
        if (options_.xds) {
            std::lock_guard lock(mu_);
            std::string err;
            bool failed = sync_maps(&err) == Reload::kFailed;
            if (failed) spdlog::error("retry: {}", err);
            schedule(failed);
        } else {
            schedule(reload_config() == Reload::kFailed);
        }
    };

    std::unique_ptr<FileWatcher> watcher;
    if (options_.xds) {
        // The maps keep what they held (recovered) until istiod has sent its state.
        xds_source_ = std::make_unique<xds::Source>(mesh_, mu_, [this] { sync_from_xds(); });
        xds_client_ = std::make_unique<xds::Client>(*options_.xds, *xds_source_);
        xds_client_->start();
        spdlog::info("xds: connecting to {} as {}", options_.xds->address, options_.xds->node_id);
    } else {
        watcher = std::make_unique<FileWatcher>(options_.config_path);
        if (!watcher->error().empty()) spdlog::warn("{}; send SIGHUP to reload the config", watcher->error());
        schedule(reload_config() == Reload::kFailed);
    }
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
        pollfd fds[3] = {{sfd, POLLIN, 0}, {wake_fd_, POLLIN, 0}, {watcher ? watcher->fd() : -1, POLLIN, 0}};
        int n = poll(fds, 3, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            spdlog::error("poll: {}", std::strerror(errno));
            break;
        }
        if (n == 0) {
            retry();
            continue;
        }
        if (fds[0].revents & POLLIN) {
            signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) != sizeof si) continue;
            if (si.ssi_signo == SIGHUP && !options_.xds) {
                spdlog::info("SIGHUP: reloading {}", options_.config_path);
                schedule(reload_config() == Reload::kFailed);
                continue;
            }
            if (si.ssi_signo == SIGHUP) continue;
            spdlog::info("signal {}: exiting; pinned maps and pod links keep serving", si.ssi_signo);
            break;
        }
        if (fds[1].revents & POLLIN) {
            uint64_t v;
            if (read(wake_fd_, &v, sizeof v) == sizeof v && retry_pending_.exchange(false) && !retry_at)
                schedule(true);
        }
        if (fds[2].revents & POLLIN && watcher->drain()) schedule(reload_config() == Reload::kFailed);
    }
    if (xds_client_) xds_client_->stop();
    close(sfd);
    return 0;
}

}  // namespace kmesh
