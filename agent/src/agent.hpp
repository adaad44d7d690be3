// The node agent: owns the loaded data plane, the config source (a YAML file or istiod) and the
// map writer, and keeps the maps in sync: source -> model -> desired state -> diff -> map writer.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "agent/src/admin/metrics.hpp"
#include "agent/src/dataplane/bpf_loader.hpp"
#include "agent/src/dataplane/dataplane_state.hpp"
#include "agent/src/dataplane/map_writer.hpp"
#include "agent/src/dataplane/native_state.hpp"
#include "agent/src/enrolment/reconciler.hpp"
#include "agent/src/installer/installer.hpp"
#include "agent/src/model/model.hpp"
#include "agent/src/policy/closer.hpp"
#include "agent/src/policy/hits.hpp"
#include "agent/src/policy/incremental.hpp"
#include "agent/src/sources/file/config_file.hpp"
#include "agent/src/sources/xds/client.hpp"
#include "agent/src/telemetry/conn_event.hpp"
#include "agent/src/telemetry/event_reader.hpp"
#include "agent/src/telemetry/telemetry.hpp"

namespace httplib {
class Server;
}

namespace kmesh {

namespace xds {
class Source;
}
namespace ads {
class Source;
class Client;
}  // namespace ads

// ambient: Istio's workload API (Delta xDS from istiod, or a YAML file of that shape).
// kernel-native: the Envoy config a sidecar gets (SotW ADS: CDS, EDS, LDS, RDS), or a bundle file
// of the same resources (docs/kernel-native.md).
enum class AgentMode { kAmbient, kKernelNative };
namespace telemetry {
class MetricsServer;
}

struct AgentOptions {
    AgentMode mode = AgentMode::kAmbient;
    PinLayout layout;
    MapSizes sizes;
    std::string config_path;                // standalone source (YAML), or
    std::optional<xds::ClientOptions> xds;  // istiod
    NodeInfo node;
    bool learn_locality = true;  // take this node's locality from its workloads
    std::string admin_address = "127.0.0.1";
    int admin_port = 15200;                              // 0: no admin server
    uint64_t max_config_bytes = kDefaultMaxConfigBytes;  // a bigger config file is refused unread
    // Batched map writes (BPF_MAP_UPDATE_BATCH); off: one bpf() call per entry, as kernels without
    // batch operations get anyway (--map-batch off; e2e_map_batch compares the two).
    bool map_batch = true;
    // --warm-cgroup: an empty cgroup v2 directory the agent creates and links every pod program to,
    // so the kernel's per-hook switches stay on and no pod ADD pays for turning them on (empty: off).
    std::string warm_cgroup;
    std::optional<installer::Options> install_cni;  // --install-cni: keep kmesh-cni installed
    // Enrolment by labels (agent/src/enrolment): set when there is a kube config and a node name.
    std::shared_ptr<kube::Api> kube_api;
    std::optional<enrolment::ReconcilerOptions> enrolment;
    // Connection telemetry (docs/telemetry.md): --monitoring, --metrics-flush-interval.
    bool monitoring = true;
    unsigned metrics_flush_interval_s = 5;
    // Telemetry (docs/telemetry.md): Prometheus on metrics_address:metrics_port/stats/prometheus
    // (0: none), the access log, series grace.
    telemetry::TelemetryOptions telemetry;
    std::string metrics_address = "0.0.0.0";
    int metrics_port = 15020;
};

// Exponential retry delay for failed map writes: 1 s doubling to 30 s. A new source generation
// (new file content, new xDS push) starts it over, so fresh config is never stuck behind a long
// wait earned by an older one.
class RetryBackoff {
  public:
    std::chrono::milliseconds next() {  // the delay before the next retry; doubles the one after
        auto d = delay_;
        delay_ = std::min(delay_ * 2, kMax);
        return d;
    }
    void reset() { delay_ = kMin; }

    static constexpr std::chrono::milliseconds kMin{1000}, kMax{30000};

  private:
    std::chrono::milliseconds delay_ = kMin;
};

class Agent {
  public:
    ~Agent();
    // Loads or reuses the pinned data plane and recovers the written state from the maps.
    static std::unique_ptr<Agent> start(const AgentOptions& options, std::string* error);

    // Runs until SIGINT/SIGTERM: feeds the maps from the source, retries failed map writes.
    int run();

    // Admin views, as JSON.
    std::string config_dump();   // the model as the sources gave it
    std::string maps_dump();     // read back from the BPF maps, with names
    std::string metrics_text();  // Prometheus text format
    std::string version_json();  // /version: release, programs (digest, tags), map layout in use
    // What the reference evaluator (policy/evaluate.hpp) decides for a new connection src -> dst:port
    // on the current model, as JSON; *status is the HTTP status (400: bad arguments).
    std::string authz_check(const std::string& src, const std::string& dst, const std::string& port,
                            int* status);
    // Where the config dump takes the authorization hit counts from (the authz writer's counters).
    // Unset: every policy shows zero hits.
    void set_authz_hits_reader(policy::HitsReader reader);
    // The kernel's authorization counters by policy (any thread): a policy::HitsReader for the admin.
    policy::AuthzReport authz_report() const { return authz_writer_->report(); }
    // Readiness: "" once the first full state is applied and the programs are published; else why not.
    std::string not_ready_reason();
    // kmeshctl's views (agent/src/admin/ops.cpp, docs/kmeshctl.md): /debug/authz (publish state,
    // policies with hit counts) and /debug/waypoints (kernel tables, users, loop-guard counters).
    std::string authz_status();
    std::string waypoints_status();

    // Connection telemetry from the kernel (docs/telemetry.md). Any thread.
    // The last connection events decoded, as JSON (admin GET /debug/conn_events).
    std::string conn_events_json() const { return conn_events_.json(); }
    // Open connections report their bytes and the ring buffer is read out, before this returns:
    // called before a scrape is served. kUnavailable when the kernel reports no connections.
    Status flush_telemetry();
    // Whether the kernel tracks new connections (--monitoring; kmeshctl monitoring at run time).
    Status set_kernel_monitoring(bool enabled);
    // Telemetry. A decoded kernel connection event (any thread: the event reader's).
    void on_conn_event(const telemetry::ConnEvent& ev);
    telemetry::Telemetry& telemetry() { return *telemetry_; }
    // Hooks, set before run(): called before each scrape renders (the event reader's flush, so
    // that long-lived connections' bytes are in), and when monitoring is switched on or off at
    // run time (and once at start) to tell the kernel (km_tel_config).
    void set_before_scrape(std::function<void()> hook);
    void set_on_monitoring_enabled(std::function<void(bool)> hook);
    // GET/POST /debug/monitoring: the settings as JSON; a POST changes them from its query
    // (enabled=true|false, accesslog=on|off) or JSON body ({"enabled": bool, "access_log": bool}).
    // *status is the HTTP status (400: bad arguments, nothing changed).
    std::string monitoring_json();
    std::string set_monitoring(const std::string& body, const std::string& enabled_param,
                               const std::string& accesslog_param, int* status);

  private:
    enum class Reload { kApplied, kUnchanged, kRejected, kFailed };
    Agent();
    // force: parse even if the file looks unchanged (a watcher event, SIGHUP); a timed retry doesn't.
    Reload reload_config(bool force);
    Reload sync_maps(std::string* error);  // mu_ held
    // Kernel-native mode's file: a bundle of Envoy resources, applied whole or refused whole.
    Reload reload_native_file(bool force);
    bool istiod() const { return options_.xds.has_value(); }
    // Compiles the model's authorization policies and publishes them when the model changed (or a
    // previous publish failed); "" or the error. mu_ held.
    std::string sync_authz(const ModelChanges& changes);
    // Whether `changes` adds, changes or removes a workload of this node (or may: no node name).
    bool touches_local(const ModelChanges& changes) const;
    // mu_ held, on the istiod client's thread ("xds" or "ads", for logs); false: not all written.
    bool sync_from_istiod(const char* api);
    // Telemetry's names follow the model changes held back by sync_maps (mu_ held).
    void follow_names();
    void start_admin();                         // never fails: binding is retried in the background
    void add_ctl_routes(httplib::Server& srv);  // /debug/loglevel, /debug/authz, /debug/waypoints
    // Moves pods to this agent's programs once the first full state is in the maps; "" or an error.
    std::string publish_if_ready();
    void set_waiting(std::string reason);
    void wake_main_loop();
    void start_telemetry();  // makes the event reader when the kernel reports connections

    AgentOptions options_;
    std::unique_ptr<Dataplane> dataplane_;
    std::unique_ptr<KernelMapOps> ops_;
    std::unique_ptr<MapWriter> writer_;
    std::unique_ptr<policy::KernelAuthzMapOps> authz_ops_;
    std::unique_ptr<policy::AuthzWriter> authz_writer_;
    std::unique_ptr<policy::IncrementalAuthz> authz_;
    ModelChanges authz_changes_{true, {}, {}};           // since the last successful publish
    uint64_t authz_policies_version_ = ~0ull;            // MeshState::policies_version() published
    std::map<std::string, AuthzPolicy> authz_policies_;  // the policies last published
    bool authz_pending_ = true;                          // the model is not (fully) published yet
    std::string authz_error_;                            // why the last publish failed; mu_
    Metrics metrics_;

    std::mutex mu_;  // guards mesh_, writer_ and the sources' state
    MeshState mesh_;
    bool applied_once_ = false;
    // The model last accepted from the file is in mesh_ but not (fully) in the maps yet: it is
    // retried even while newer versions of the file are rejected.
    bool apply_pending_ = false;
    Reload retry_pending_apply();  // mu_ not held
    std::atomic<uint64_t> generation_{0};
    std::atomic<bool> retry_pending_{false};
    // Model changes telemetry's names have not followed yet: a large change (a full push) is
    // followed after its maps are written and acknowledged, by the main loop (mu_).
    ModelChanges names_pending_;
    std::atomic<bool> names_due_{false};
    int wake_fd_ = -1;  // eventfd: the xDS thread asks the main loop for a retry or a publish

    // File source: the stamp of the last file parsed and whether it parsed (and fitted).
    std::optional<FileStamp> last_stamp_;
    bool last_parse_ok_ = false;

    // Readiness. Pods are moved to this agent's programs only once the first full state (the file
    // accepted, or istiod's first Address response applied) is in the maps: on a map layout bump
    // the new maps start empty, and moving pods onto them earlier would stop translation on the node.
    std::atomic<bool> state_applied_{false};
    std::atomic<bool> published_{false};
    bool hold_publish_ = false;  // set at start: would publishing now lose what pods see?
    std::mutex status_mu_;
    std::string waiting_for_;  // status_mu_

    std::mutex hits_mu_;
    policy::HitsReader hits_reader_;  // hits_mu_

    std::unique_ptr<xds::Source> xds_source_;
    std::unique_ptr<xds::Client> xds_client_;
    // Kernel-native mode: the state (instead of mesh_'s model) and its istiod source.
    std::unique_ptr<NativeState> native_;
    std::unique_ptr<ads::Source> ads_source_;
    std::unique_ptr<ads::Client> ads_client_;
    // The native state's counts as of the last sync, for scrapes that must not wait for mu_.
    std::mutex native_stats_mu_;
    NativeStats native_stats_;  // native_stats_mu_
    struct Admin;
    std::unique_ptr<Admin> admin_;
    std::unique_ptr<installer::Watcher> cni_installer_;  // --install-cni
    std::unique_ptr<enrolment::Reconciler> enrolment_;   // started by run() when configured
    // Closes existing connections a policy change now denies (after every applied generation).
    std::unique_ptr<policy::ConnectionCloser> closer_;
    // Connection telemetry. Declared after dataplane_ (its fds) and conn_events_ (its sink writes
    // there): destroyed, and its thread stopped, before either.
    telemetry::ConnEventLog conn_events_{256};
    std::unique_ptr<telemetry::EventReader> event_reader_;

    std::unique_ptr<telemetry::Telemetry> telemetry_;           // made by start()
    std::unique_ptr<telemetry::MetricsServer> metrics_server_;  // started by run()
    std::mutex hooks_mu_;
    std::function<void()> before_scrape_;              // hooks_mu_
    std::function<void(bool)> on_monitoring_enabled_;  // hooks_mu_
    std::mutex monitoring_mu_;                         // one settings change at a time
    void start_metrics_server();
    void note_map_entries();  // the writer's entry counts into metrics_ (mu_ held, or before threads)
};

}  // namespace kmesh
