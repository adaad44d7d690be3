// The node agent: owns the loaded data plane, the config source and the map writer, and keeps
// the maps in sync with the config: source -> model -> desired state -> diff -> map writer.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "agent/src/bpf_loader.hpp"
#include "agent/src/map_writer.hpp"
#include "agent/src/metrics.hpp"
#include "agent/src/model.hpp"

namespace kmesh {

struct AgentOptions {
    PinLayout layout;
    MapSizes sizes;
    std::string config_path;  // standalone source (YAML)
};

class Agent {
  public:
    // Loads or reuses the pinned data plane and recovers the written state from the maps.
    static std::unique_ptr<Agent> start(const AgentOptions& options, std::string* error);

    enum class Reload { kApplied, kUnchanged, kRejected, kFailed };

    // Applies a new model: only the difference to what the maps hold is written. kRejected when it
    // cannot be turned into map contents, kFailed when map writes failed; *error says why.
    Reload apply(const Model& model, std::string* error);

    // Re-reads the config file; a bad file is logged and the last good state keeps serving.
    // kFailed: the file is good but some map writes failed (e.g. a full map); worth a retry.
    Reload reload_config();

    // Runs until SIGINT/SIGTERM, reloading the config file when it changes.
    int run();

    const Metrics& metrics() const { return metrics_; }

  private:
    AgentOptions options_;
    std::unique_ptr<Dataplane> dataplane_;
    std::unique_ptr<KernelMapOps> ops_;
    std::unique_ptr<MapWriter> writer_;
    Metrics metrics_;
    std::optional<Model> applied_;
    uint64_t generation_ = 0;
};

}  // namespace kmesh
