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
#include <thread>

#include "agent/src/policy/compile.hpp"
#include "agent/src/sources/ads/source.hpp"
#include "agent/src/sources/file/file_watcher.hpp"
#include "agent/src/sources/xds/source.hpp"
#include "agent/src/telemetry/metrics_server.hpp"
#include "common/cgroup.hpp"

namespace kmesh {

namespace {

int64_t micros_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t)
        .count();
}

// Pods stranded on old programs (a failed bpf_link_update) are retried this often.
constexpr auto kStaleLinkRetry = std::chrono::seconds(10);

}  // namespace

std::unique_ptr<Agent> Agent::start(const AgentOptions& options, std::string* error) {
    std::unique_ptr<Agent> agent(new Agent());
    agent->options_ = options;
    agent->mesh_ = MeshState(options.node, options.learn_locality);
    agent->dataplane_ = Dataplane::load(options.layout, options.sizes, error);
    if (!agent->dataplane_) return nullptr;
    // Everything after this (admin /version, kmeshctl-facing paths, publish) names the generation
    // loaded: maps/v<N>, or v<N>-<digest> after a size change.
    agent->options_.layout.maps_name = agent->dataplane_->maps_name();
    // Programs pinned by a previous agent that serve pods from other maps (a map layout bump or a
    // size change):
    // moving the pods to our maps before they hold the mesh would stop translation. Our maps may
    // be new and empty, or pinned but half-filled by an agent killed during the bump.
    agent->hold_publish_ = agent->dataplane_->pinned_programs_use_other_maps(options.layout);
    const ProgramBuild& build = program_build();
    const unsigned maps_version = options.layout.maps_version;
    spdlog::info(
        "kmesh-daemon {}: programs sha256:{}{}, map layout v{}{}{}", KMESH_VERSION, build.short_id(),
        build.test_variant ? " (test variant build)" : "", maps_version,
        maps_version == KMESH_ABI_VERSION
            ? ""
            : fmt::format(" (--maps-version; built for v{})", KMESH_ABI_VERSION),
        agent->hold_publish_ ? "; pods run programs reading other maps until the first state is in" : "");
    agent->ops_ = std::make_unique<KernelMapOps>(agent->dataplane_->map_fds(), agent->options_.map_batch);
    MapState recovered = recover_map_state(*agent->ops_);
    spdlog::info("data plane loaded ({} maps under {}); recovered {} services, {} backends, {} frontends",
                 agent->dataplane_->reused_maps() ? "reused pinned" : "created",
                 agent->options_.layout.maps_dir(), recovered.services.size(), recovered.backends.size(),
                 recovered.frontends.size());
    agent->mesh_.mark_all_dirty();  // the first plan compares everything the maps hold
    agent->writer_ = std::make_unique<MapWriter>(*agent->ops_, std::move(recovered),
                                                 MapCapacity::of(options.sizes), agent->metrics_);
    agent->note_map_entries();
    agent->telemetry_ = std::make_unique<telemetry::Telemetry>(options.telemetry);
    agent->authz_ops_ = std::make_unique<policy::KernelAuthzMapOps>(agent->dataplane_->authz_map_fds());
    agent->authz_writer_ = std::make_unique<policy::AuthzWriter>(*agent->authz_ops_, options.sizes.authz);
    agent->authz_ = std::make_unique<policy::IncrementalAuthz>(options.node.node, options.sizes.authz);
    if (Status st = agent->authz_writer_->recover(); !st)
        spdlog::warn("authz: reading the pinned authorization maps back: {}", st.to_string());
    // The admin server's policy hit counts are the kernel's counters.
    agent->set_authz_hits_reader([a = agent.get()] { return a->authz_report(); });
    agent->start_telemetry();
    agent->wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    // Made before any thread that applies generations exists; its thread starts in run().
    agent->closer_ = std::make_unique<policy::ConnectionCloser>(agent->options_.layout);
    if (options.mode == AgentMode::kKernelNative) {
        agent->native_ = std::make_unique<NativeState>();
        agent->native_->mark_all_dirty();
        if (options.xds) {
            Agent* a = agent.get();
            agent->ads_source_ = std::make_unique<ads::Source>(*a->native_, a->mu_,
                                                               [a] { return a->sync_from_istiod("ads"); });
            agent->ads_client_ = std::make_unique<ads::Client>(*options.xds, *agent->ads_source_);
            agent->set_waiting("waiting for istiod's clusters, listeners, endpoints and routes");
        } else {
            agent->set_waiting("waiting for the native config file to be accepted");
        }
    } else if (options.xds) {
        // Made here, before the admin server's thread exists, so that it never sees them change;
        // the client is started by run().
        Agent* a = agent.get();
        agent->xds_source_ =
            std::make_unique<xds::Source>(a->mesh_, a->mu_, [a] { return a->sync_from_istiod("xds"); });
        agent->xds_client_ = std::make_unique<xds::Client>(*options.xds, *agent->xds_source_);
        agent->set_waiting("waiting for istiod's first Address response");
    } else {
        agent->set_waiting("waiting for the config file to be accepted");
    }
    return agent;
}

void Agent::start_telemetry() {
    const Dataplane& dp = *dataplane_;
    if (!dp.telemetry_available()) return;  // the loader logged why
    auto kernel = telemetry::make_kernel_telemetry(dp.conn_events_fd(), dp.tel_config_fd(), dp.tel_stats_fd(),
                                                   dp.conn_iter_link_fd(), options_.layout.pods_dir());
    if (!kernel) {
        spdlog::error("telemetry off: {}", kernel.status().to_string());
        return;
    }
    // The thread is started by run(), after the signal mask is set (threads inherit it).
    event_reader_ = std::make_unique<telemetry::EventReader>(
        std::move(*kernel), [this](const telemetry::ConnEvent& e) { on_conn_event(e); },
        std::chrono::seconds(options_.metrics_flush_interval_s));
    // The metrics side's hooks: a scrape flushes first; switching monitoring at run time
    // (POST /debug/monitoring) tells the kernel (km_tel_config).
    set_before_scrape([this] { (void)flush_telemetry(); });
    set_on_monitoring_enabled([this](bool on) {
        if (Status st = set_kernel_monitoring(on); !st) spdlog::error("telemetry: {}", st.to_string());
    });
    // Written at every start: the pinned config may hold a previous agent's setting.
    if (Status st = event_reader_->set_enabled(options_.monitoring); !st)
        spdlog::error("telemetry: {}", st.to_string());
    else
        spdlog::info("connection telemetry {} (byte reports every {} s{})",
                     options_.monitoring ? "on" : "off", options_.metrics_flush_interval_s,
                     dp.conn_iter_available() ? "" : "; open connections report at close only");
}

void Agent::on_conn_event(const telemetry::ConnEvent& e) {
    conn_events_.record(e);   // the debug ring (/debug/conn_events)
    telemetry_->on_event(e);  // metrics and access log
}

Status Agent::flush_telemetry() {
    if (!event_reader_) return {Errc::kUnavailable, "connection telemetry is not available"};
    return event_reader_->flush();
}

Status Agent::set_kernel_monitoring(bool enabled) {
    if (!event_reader_) return {Errc::kUnavailable, "connection telemetry is not available"};
    return event_reader_->set_enabled(enabled);
}

void Agent::set_waiting(std::string reason) {
    std::lock_guard lock(status_mu_);
    waiting_for_ = std::move(reason);
}

std::string Agent::not_ready_reason() {
    if (!state_applied_) {
        std::string reason;
        {
            std::lock_guard lock(status_mu_);
            reason = waiting_for_;
        }
        if (xds_client_) {
            auto st = xds_client_->status();
            if (!st.connected && !st.last_error.empty())
                reason += fmt::format(" (last error: {})", st.last_error);
        }
        if (ads_client_) {
            auto st = ads_client_->status();
            if (!st.connected && !st.last_error.empty())
                reason += fmt::format(" (last error: {})", st.last_error);
        }
        return reason;
    }
    if (!published_) return "the first state is applied but the programs are not published yet";
    return {};
}

void Agent::wake_main_loop() {
    uint64_t one = 1;
    if (write(wake_fd_, &one, sizeof one) < 0) spdlog::warn("eventfd: {}", std::strerror(errno));
}

void Agent::note_map_entries() {
    MapCounts n = writer_->entries();
    for (int i = 0; i < kMapCount; i++) metrics_.map_entries[i] = n[i];
}

void Agent::set_before_scrape(std::function<void()> hook) {
    std::lock_guard lock(hooks_mu_);
    before_scrape_ = std::move(hook);
}

void Agent::set_on_monitoring_enabled(std::function<void(bool)> hook) {
    std::lock_guard lock(hooks_mu_);
    on_monitoring_enabled_ = std::move(hook);
}

Agent::Reload Agent::sync_maps(std::string* error) {
    auto t0 = std::chrono::steady_clock::now();
    metrics_.vip_conflicts = mesh_.vip_conflict_count();
    // Telemetry follows the model (names behind addresses), in proportion to what changed. Metric
    // names are not needed to program the maps: a large change (a full push: 100k workloads take
    // ~0.4 s here) is followed after the maps are written and the xDS response acknowledged, by
    // the main loop; a small one at once, so that a connection right after it is named.
    ModelChanges changes = mesh_.take_model_changes();
    constexpr size_t kNamesInline = 1000;
    const size_t names_work = changes.all ? mesh_.model().workloads.size() + mesh_.model().services.size()
                                          : changes.workloads.size() + changes.services.size();
    const bool defer_names = names_work > kNamesInline;
    // Events wait for the names (kept in telemetry, named once they follow): before the maps change.
    if (defer_names) {
        telemetry_->hold_events();
    } else {
        follow_names();  // any held back ones first (they name the same model)
        telemetry_->update_model(mesh_.model(), changes);
    }
    int64_t names_us = micros_since(t0);
    Dirty dirty = native_ ? native_->take_dirty() : mesh_.take_dirty();
    // Authorization first: a policy-only change leaves `dirty` empty. Its failure (a full map) keeps
    // the last good generation serving and makes this sync fail, so it is retried with backoff.
    //
    // Published before the service maps are written, so that no connection reaches a new local
    // pod before its policy is enforced. A large change that touches no workload of this node
    // (a full push to a node hosting none of it, or whose pods did not change) cannot make a
    // local pod reachable, and policies are enforced where the destination runs: then
    // authorization is compiled and published on a second thread beside the diff and the
    // service-map writes (~0.2 s of a 100k-workload push). The two share no state: the
    // authorization thread reads the model (const; nothing below changes it until the join),
    // `changes` (const until the join) and writes only authz_*, the authorization maps and the
    // closer (which locks); this thread reads mesh_.desired()/dirty and writes the writer and
    // the service maps. Both finish before anything looks at either result.
    auto ta = std::chrono::steady_clock::now();
    constexpr size_t kAuthzBeside = 1000;
    const bool authz_beside =
        !dirty.empty() && (changes.all || changes.workloads.size() > kAuthzBeside) && !touches_local(changes);
    std::string authz_err;
    int64_t authz_us = 0;
    std::thread authz_thread;
    if (authz_beside) {
        authz_thread = std::thread([&] {
            authz_err = sync_authz(changes);
            authz_us = micros_since(ta);
        });
    } else {
        authz_err = sync_authz(changes);
        authz_us = micros_since(ta);
    }
    // Joined on every way out of this function, before `changes` or the results are touched.
    struct Join {
        std::thread& t;
        ~Join() {
            if (t.joinable()) t.join();
        }
    } join_authz{authz_thread};
    auto names_follow = [&] {
        if (!defer_names) return;
        if (changes.all || names_pending_.all) {
            names_pending_ = ModelChanges{true, {}, {}};
        } else {
            names_pending_.workloads.merge(changes.workloads);  // moves the nodes: `changes` is done with
            names_pending_.services.merge(changes.services);
        }
        names_due_ = true;
        wake_main_loop();
    };
    if (dirty.empty()) {
        names_follow();
        if (!authz_err.empty()) {
            *error = authz_err;
            return Reload::kFailed;
        }
        return Reload::kUnchanged;
    }
    auto td = std::chrono::steady_clock::now();
    Plan plan = diff(writer_->state(), native_ ? native_->desired() : mesh_.desired(), dirty);
    if (native_) {
        std::lock_guard lock(native_stats_mu_);
        native_stats_ = native_->stats();
    }
    int64_t diff_us = micros_since(td);
    int64_t plan_us = micros_since(t0);
    auto t1 = std::chrono::steady_clock::now();
    // A plan whose result cannot fit is refused whole by the writer (nothing written): half of it
    // would serve some services and not others, and every retry would rewrite the same half.
    std::string err = writer_->apply(plan);
    int64_t write_us = micros_since(t1);
    if (authz_thread.joinable()) authz_thread.join();
    names_follow();
    note_map_entries();
    if (!err.empty()) {
        // The retry compares everything again.
        if (native_)
            native_->mark_all_dirty();
        else
            mesh_.mark_all_dirty();
        *error = fmt::format("{} (after {} us; every service in the maps stays consistent)", err, write_us);
        return Reload::kFailed;
    }
    if (!authz_err.empty()) {
        *error = authz_err;
        return Reload::kFailed;
    }
    generation_++;
    metrics_.config_applied++;
    // Planning's phases: telemetry's names, authorization, the diff (bench/xds_bench.sh reports them).
    spdlog::info(
        "config generation {} applied: {} services, {} workloads; {} map changes in {} us (planned in {} us: "
        "names {} us, authz {} us{}, diff {} us)",
        generation_.load(), mesh_.model().services.size(), mesh_.model().workloads.size(), plan.size(),
        write_us, plan_us, names_us, authz_us, authz_beside ? " beside the writes" : "", diff_us);
    // Parsing and planning peak well above steady state; give the memory back to the system.
    if (plan.size() > 1000) {
        malloc_trim(0);
        spdlog::debug("heap in use after apply: {} MB", mallinfo2().uordblks >> 20);
    }
    return Reload::kApplied;
}

void Agent::follow_names() {
    if (names_pending_.empty()) return;
    auto t0 = std::chrono::steady_clock::now();
    telemetry_->update_model(mesh_.model(), names_pending_);
    spdlog::info("telemetry: names follow the model ({} workloads, {} services changed{}) in {} us",
                 names_pending_.workloads.size(), names_pending_.services.size(),
                 names_pending_.all ? ", all" : "", micros_since(t0));
    names_pending_ = {};
}

bool Agent::touches_local(const ModelChanges& changes) const {
    const std::string& node = options_.node.node;
    if (node.empty()) return true;  // every workload counts as local (policy::is_local)
    const Model& model = mesh_.model();
    auto local_now = [&](const Workload& w) { return policy::is_local(w, node); };
    if (changes.all) {
        // Removed local workloads are among what authorization indexed; present ones are counted
        // by the model's state (policy::is_local's test, on the same node name), not walked.
        return authz_->indexed_locals() > 0 || mesh_.local_workloads() > 0;
    }
    for (const auto& uid : changes.workloads) {
        if (authz_->indexed_local(uid)) return true;
        if (auto it = model.workloads.find(uid); it != model.workloads.end() && local_now(it->second))
            return true;
    }
    return false;
}

std::string Agent::sync_authz(const ModelChanges& changes) {
    const Model& model = mesh_.model();
    // Workloads changed since the last successful publish (many: compare everything instead).
    if (!authz_changes_.all) {
        if (changes.all || authz_changes_.workloads.size() + changes.workloads.size() > 50000) {
            authz_changes_.all = true;
            authz_changes_.workloads.clear();
        } else {
            authz_changes_.workloads.insert(changes.workloads.begin(), changes.workloads.end());
        }
    }
    // A restarted agent keeps the policies the kernel enforces until istiod has sent its own: the
    // first Address response alone carries none, and publishing then would open every pod.
    if (xds_source_ && !xds_source_->policies_received()) {
        authz_pending_ = true;
        return {};
    }
    const bool policies_changed = mesh_.policies_version() != authz_policies_version_;
    if (authz_changes_.empty() && !policies_changed && !authz_pending_) return {};
    auto t0 = std::chrono::steady_clock::now();
    // Only the touched workloads' addresses are recomputed and written (policy/incremental.hpp).
    Status st = authz_->sync(model, authz_changes_, policies_changed, *authz_writer_);
    if (!st) {
        authz_pending_ = true;
        authz_error_ = st.to_string();
        spdlog::error("authz: policies not published, the previous ones keep being enforced: {}",
                      st.to_string());
        return "authorization: " + st.to_string();
    }
    authz_pending_ = false;
    authz_error_.clear();
    authz_changes_ = {};
    if (policies_changed) authz_policies_ = model.policies;
    authz_policies_version_ = mesh_.policies_version();
    const policy::AuthzSyncStats& s = authz_->last();
    // Existing connections the new policies (or identities) deny are closed (on the closer's thread).
    if (closer_ && (s.full || s.tables || s.addresses > 0)) closer_->request();
    spdlog::info(
        "authz: {} policies published ({} match groups, {} local destination sets; {}, {} workloads, {} "
        "addresses) in {} us",
        model.policies.size(), s.rows, s.sets,
        s.full     ? "full"
        : s.tables ? "tables + delta"
                   : "delta",
        s.workloads, s.addresses, micros_since(t0));
    return {};
}

Agent::Reload Agent::reload_config(bool force) {
    if (native_) return reload_native_file(force);
    const std::string& path = options_.config_path;
    std::string err;
    // A timed retry of a file that has not changed since it was parsed needs no new parse: the
    // verdict would be the same, and parsing a large file is the agent's most expensive step.
    if (!force && last_stamp_) {
        FileStamp now;
        if (stat_config_file(path, &now).empty() && now == *last_stamp_) {
            Reload result = retry_pending_apply();
            return !last_parse_ok_ && result != Reload::kFailed ? Reload::kRejected : result;
        }
    }
    auto t0 = std::chrono::steady_clock::now();
    FileStamp stamp;
    bool json = false;
    auto parsed = load_config_file(
        path, {options_.max_config_bytes, options_.sizes.services, options_.sizes.backends}, &stamp, &json);
    int64_t parse_us = micros_since(t0);
    // Every parse, accepted or not (the info line below is only for an accepted, changed file):
    // tests count these to see that a timed retry does not parse an unchanged file again.
    spdlog::debug("parsed {} in {} us", path, parse_us);
    if (auto* bad = std::get_if<ConfigError>(&parsed)) {
        err = bad->summary();
    } else if (auto problems = hash_collisions(std::get<Model>(parsed)); !problems.empty()) {
        err = problems.front();
    } else if (size_t n = std::get<Model>(parsed).services.size(); n > options_.sizes.services) {
        err = fmt::format("{} services exceed --max-services {}", n, options_.sizes.services);
    }
    last_stamp_ = stamp;  // zero when the file could not be opened: then it never matches
    last_parse_ok_ = err.empty();
    if (!err.empty()) {
        parsed = ConfigError{};  // free the parsed model now, not after the next reload
        malloc_trim(0);
        metrics_.config_rejected++;
        spdlog::error("config {} rejected, still serving the last good state: {}", path, err);
        if (!state_applied_) set_waiting("config file rejected: " + err);
        // The last accepted config may still be half-way into the maps (a map was full): a bad
        // new file must not cancel its retries.
        return retry_pending_apply() == Reload::kFailed ? Reload::kFailed : Reload::kRejected;
    }
    std::lock_guard lock(mu_);
    auto& model = std::get<Model>(parsed);
    if (applied_once_ && mesh_.model() == model) return Reload::kUnchanged;
    auto t1 = std::chrono::steady_clock::now();
    mesh_.replace(model);
    // The phases of programming a file (bench/programming.sh reads this line): read and parse
    // (YAML or JSON) to the model, then the model to the desired map contents; sync_maps' line
    // below has the plan and the map writes.
    spdlog::info("config {}: read and parsed in {} us ({} bytes, {}), desired state in {} us", path, parse_us,
                 stamp.size, json ? "JSON" : "YAML", micros_since(t1));
    Reload result = sync_maps(&err);
    if (result == Reload::kFailed) {
        spdlog::error("config {} not fully applied: {}", path, err);
        applied_once_ = false;  // a retry must apply even though the file is the same
        apply_pending_ = true;
        if (!state_applied_) set_waiting("config not fully written to the maps: " + err);
        return result;
    }
    applied_once_ = true;
    apply_pending_ = false;
    state_applied_ = true;
    return result;
}

Agent::Reload Agent::retry_pending_apply() {
    std::lock_guard lock(mu_);
    if (!apply_pending_) return Reload::kUnchanged;
    std::string err;
    Reload result = sync_maps(&err);
    if (result == Reload::kFailed) {
        spdlog::error("config {} (last accepted) still not fully applied: {}", options_.config_path, err);
        return result;
    }
    applied_once_ = true;
    apply_pending_ = false;
    state_applied_ = true;
    return result;
}

Agent::Reload Agent::reload_native_file(bool force) {
    const std::string& path = options_.config_path;
    if (!force && last_stamp_) {
        FileStamp now;
        if (stat_config_file(path, &now).empty() && now == *last_stamp_) {
            Reload result = retry_pending_apply();
            return !last_parse_ok_ && result != Reload::kFailed ? Reload::kRejected : result;
        }
    }
    auto t0 = std::chrono::steady_clock::now();
    FileStamp stamp;
    std::string err = stat_config_file(path, &stamp);
    std::optional<ads::Bundle> bundle;
    if (err.empty()) {
        if (stamp.size > options_.max_config_bytes) {
            err = fmt::format("{} bytes exceed the {} byte limit", stamp.size, options_.max_config_bytes);
        } else if (auto b = ads::read_bundle(path); !b) {
            err = b.status().to_string();
        } else {
            bundle = std::move(*b);
        }
    }
    last_stamp_ = err.empty() ? std::optional<FileStamp>(stamp) : std::nullopt;
    std::lock_guard lock(mu_);
    if (bundle) {
        NativeState trial = *native_;
        auto problems = ads::apply_bundle(trial, *bundle);
        if (!problems.empty()) {
            err = fmt::format("{} resources refused: {}", problems.size(), problems.front());
        } else if (auto fit = fits(trial.desired(), options_.sizes); !fit.empty()) {
            err = fit;
        } else {
            ads::apply_bundle(*native_, *bundle);
        }
    }
    last_parse_ok_ = err.empty();
    if (!err.empty()) {
        metrics_.config_rejected++;
        spdlog::error("native config {} rejected, still serving the last good state: {}", path, err);
        if (!state_applied_) set_waiting("native config file rejected: " + err);
        return Reload::kRejected;
    }
    const NativeStats& st = native_->stats();
    spdlog::info(
        "native config {}: {} listeners, {} routes, {} clusters, {} endpoint sets -> {} frontends, {} "
        "splits, "
        "{} limits ({} warming, {} routes approximated) in {} us",
        path, native_->listeners().size(), native_->routes().size(), native_->clusters().size(),
        native_->clas().size(), st.frontends, st.splits, st.limits, st.warming, st.routes_approximated,
        micros_since(t0));
    Reload result = sync_maps(&err);
    if (result == Reload::kFailed) {
        spdlog::error("native config {} not fully applied: {}", path, err);
        apply_pending_ = true;
        if (!state_applied_) set_waiting("config not fully written to the maps: " + err);
        return result;
    }
    apply_pending_ = false;
    state_applied_ = true;
    return result;
}

bool Agent::sync_from_istiod(const char* api) {
    // Both sources hold their writes back until istiod's first full state is in (xds::Source:
    // the first Address response; ads::Source: CDS, LDS and the EDS/RDS they name), so success
    // here means the first full state is in the maps.
    std::string err;
    if (sync_maps(&err) == Reload::kFailed) {
        spdlog::error("{} update not fully applied to the maps: {}", api, err);
        if (!state_applied_) set_waiting("istiod's state not fully written to the maps: " + err);
        retry_pending_ = true;
        wake_main_loop();
        return false;
    }
    if (!state_applied_.exchange(true)) wake_main_loop();  // the main loop publishes
    return true;
}

std::string Agent::publish_if_ready() {
    if (published_ || (hold_publish_ && !state_applied_)) return {};
    if (auto err = dataplane_->publish(options_.layout); !err.empty()) return err;
    published_ = true;
    if (!options_.warm_cgroup.empty()) {
        // Not fatal: without them a pod's ADD is slower (docs/enrolment.md), nothing else changes.
        // A relative name is below the cgroup v2 mount (/sys/fs/cgroup, or /sys/fs/cgroup/unified on
        // hybrid nodes), so one DaemonSet argument fits both.
        std::string dir = options_.warm_cgroup;
        if (dir.front() != '/') {
            auto mount = find_cgroup2_mount();
            dir = mount ? *mount + "/" + dir : std::string();
        }
        if (dir.empty())
            spdlog::warn("no warm links: no cgroup v2 mount for {}", options_.warm_cgroup);
        else if (auto n = dataplane_->hold_warm_links(dir))
            spdlog::info("{} warm links held on {}", *n, dir);
        else
            spdlog::warn("no warm links on {}: {}", dir, n.status().to_string());
    }
    spdlog::info("programs published: {} pod links moved to them, {} pods without a cgroup forgotten{}",
                 dataplane_->links_updated(), dataplane_->pods_forgotten(),
                 hold_publish_ ? " (held until the first full state was applied)" : "");
    return {};
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
    start_admin();
    start_metrics_server();
    {
        // The kernel learns the monitoring setting the agent starts with.
        std::function<void(bool)> hook;
        {
            std::lock_guard lock(hooks_mu_);
            hook = on_monitoring_enabled_;
        }
        if (hook) hook(telemetry_->settings().enabled);
    }
    if (options_.install_cni) {
        // On its own thread, started after the signal mask so that it inherits it. Stopping it (or
        // a restart) leaves everything installed: pods keep being created while the agent is down.
        if (auto w = installer::Watcher::start(*options_.install_cni); w)
            cni_installer_ = std::move(*w);
        else
            spdlog::error("cni installer not started: {}", w.status().message());
    }

    // A failed apply (full map, kernel error) is retried with exponential backoff, 1 s to 30 s.
    using Clock = std::chrono::steady_clock;
    std::optional<Clock::time_point> retry_at, relink_at;
    RetryBackoff backoff;
    auto schedule = [&](bool failed) {
        if (failed) {
            auto delay = backoff.next();
            retry_at = Clock::now() + delay;
            spdlog::info("retrying in {} ms", delay.count());
        } else {
            retry_at.reset();
            backoff.reset();
        }
    };
    auto retry = [&] {
        if (options_.xds) {
            std::lock_guard lock(mu_);
            std::string err;
            bool failed = sync_maps(&err) == Reload::kFailed;
            if (failed) {
                spdlog::error("retry: {}", err);
                if (!state_applied_) set_waiting("istiod's state not fully written to the maps: " + err);
            } else {
                // Retries follow a failed sync, which only runs with istiod's state (kernel-native:
                // maybe not all of it yet).
                if (!ads_source_ || ads_source_->complete()) state_applied_ = true;
            }
            schedule(failed);
        } else {
            schedule(reload_config(false) == Reload::kFailed);
        }
    };
    // A new source generation (file event, SIGHUP) is tried at once with a fresh backoff.
    auto new_file_generation = [&](bool force) {
        backoff.reset();
        schedule(reload_config(force) == Reload::kFailed);
    };

    std::unique_ptr<FileWatcher> watcher;
    if (ads_client_) {
        ads_client_->start();
        spdlog::info("ads: connecting to {} as {} (kernel-native mode)", options_.xds->address,
                     options_.xds->node_id);
    } else if (options_.xds) {
        // The maps keep what they held (recovered) until istiod has sent its state.
        xds_client_->start();
        spdlog::info("xds: connecting to {} as {}", options_.xds->address, options_.xds->node_id);
    } else {
        watcher = std::make_unique<FileWatcher>(options_.config_path);
        if (!watcher->error().empty()) spdlog::warn("{}; send SIGHUP to reload the config", watcher->error());
        new_file_generation(true);
    }
    if (hold_publish_ && !state_applied_)
        spdlog::warn(
            "programs of another map layout serve the pods: they keep them (and their maps) until the "
            "first full state is applied here");
    bool ready_logged = false;
    auto after_event = [&]() -> bool {
        if (auto err = publish_if_ready(); !err.empty()) {
            spdlog::error("{}", err);
            return false;
        }
        if (published_ && dataplane_->stale_links() > 0 && !relink_at)
            relink_at = Clock::now() + kStaleLinkRetry;
        if (!ready_logged && not_ready_reason().empty()) {
            ready_logged = true;
            set_waiting("");
            spdlog::info("kmesh-daemon ready");
        }
        return true;
    };
    if (!after_event()) {
        close(sfd);
        return 1;
    }
    spdlog::info("kmesh-daemon started");
    if (event_reader_) event_reader_->start();
    closer_->start();
    closer_->request();  // policies recovered from the maps apply to connections made while down
    if (options_.enrolment && options_.kube_api) {
        // Pods are attached to the programs pinned now; a later publish moves their links too.
        enrolment_ =
            std::make_unique<enrolment::Reconciler>(options_.kube_api, *options_.enrolment, metrics_);
        // Not fatal: without the socket kmesh-cni asks the API server, as before.
        if (Status st = enrolment_->start(); !st)
            spdlog::error("enrolment: no kmesh-cni socket: {} (kmesh-cni asks the API server)",
                          st.to_string());
    }

    int rc = 0;
    for (;;) {
        int timeout = -1;
        for (const auto& at : {retry_at, relink_at})
            if (at) {
                int ms = static_cast<int>(std::max<int64_t>(
                    0, std::chrono::duration_cast<std::chrono::milliseconds>(*at - Clock::now()).count()));
                timeout = timeout < 0 ? ms : std::min(timeout, ms);
            }
        pollfd fds[3] = {{sfd, POLLIN, 0}, {wake_fd_, POLLIN, 0}, {watcher ? watcher->fd() : -1, POLLIN, 0}};
        int n = poll(fds, 3, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            spdlog::error("poll: {}", std::strerror(errno));
            break;
        }
        if (retry_at && Clock::now() >= *retry_at) retry();
        if (relink_at && Clock::now() >= *relink_at) {
            relink_at.reset();
            dataplane_->reconcile(options_.layout);
        }
        if (fds[0].revents & POLLIN) {
            signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) != sizeof si) continue;
            if (si.ssi_signo == SIGHUP && !options_.xds) {
                spdlog::info("SIGHUP: reloading {}", options_.config_path);
                new_file_generation(true);
            } else if (si.ssi_signo != SIGHUP) {
                spdlog::info("signal {}: exiting; pinned maps and pod links keep serving", si.ssi_signo);
                break;
            }
        }
        if (fds[1].revents & POLLIN) {
            uint64_t v;
            // A failed xDS push: the push itself was the immediate try; a new push restarts the
            // backoff rather than waiting out the one an older failure earned.
            if (read(wake_fd_, &v, sizeof v) == sizeof v && retry_pending_.exchange(false)) {
                backoff.reset();
                schedule(true);
            }
            if (names_due_.exchange(false)) {
                std::lock_guard lock(mu_);
                follow_names();
            }
        }
        if (fds[2].revents & POLLIN && watcher->drain()) new_file_generation(true);
        if (!after_event()) {
            rc = 1;
            break;
        }
    }
    if (enrolment_) enrolment_->stop();
    if (xds_client_) xds_client_->stop();
    if (ads_client_) ads_client_->stop();
    if (closer_) closer_->stop();
    if (event_reader_) event_reader_->stop();
    cni_installer_.reset();
    metrics_server_.reset();
    close(sfd);
    return rc;
}

}  // namespace kmesh
