// The node agent: owns the loaded data plane, the config source (a YAML file or istiod) and the
// map writer, and keeps the maps in sync: source -> model -> desired state -> diff -> map writer.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "agent/src/bpf_loader.hpp"
#include "agent/src/dataplane_state.hpp"
#include "agent/src/map_writer.hpp"
#include "agent/src/metrics.hpp"
#include "agent/src/model.hpp"
#include "agent/src/xds/client.hpp"

namespace kmesh {

namespace xds {
class Source;
}

struct AgentOptions {
    PinLayout layout;
    MapSizes sizes;
    std::string config_path;                // standalone source (YAML), or
    std::optional<xds::ClientOptions> xds;  // istiod
    NodeInfo node;
    bool learn_locality = true;  // take this node's locality from its workloads
    std::string admin_address = "127.0.0.1";
    int admin_port = 15200;  // 0: no admin server
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

  private:
    enum class Reload { kApplied, kUnchanged, kRejected, kFailed };
    Agent();
    Reload reload_config();
    Reload sync_maps(std::string* error);  // mu_ held
    void sync_from_xds();                  // mu_ held, on the xDS thread
    bool start_admin();

    AgentOptions options_;
    std::unique_ptr<Dataplane> dataplane_;
    std::unique_ptr<KernelMapOps> ops_;
    std::unique_ptr<MapWriter> writer_;
    Metrics metrics_;

    std::mutex mu_;  // guards mesh_, writer_ and the sources' state
    MeshState mesh_;
    bool applied_once_ = false;
    uint64_t generation_ = 0;
    std::atomic<bool> retry_pending_{false};
    int wake_fd_ = -1;  // eventfd: the xDS thread asks the main loop for a retry

    std::unique_ptr<xds::Source> xds_source_;
    std::unique_ptr<xds::Client> xds_client_;
    struct Admin;
    std::unique_ptr<Admin> admin_;
};

}  // namespace kmesh
