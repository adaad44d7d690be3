// The istiod source: turns Delta xDS responses into MeshState changes (resource by resource, so a
// bad resource is NACKed while the rest of the response applies), keeps the versions held for
// reconnects. Authorization policies go into the same model (Model.policies).
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

#include "agent/src/dataplane/dataplane_state.hpp"
#include "agent/src/sources/xds/client.hpp"
#include "agent/src/sources/xds/versions.hpp"
#include "agent/src/sources/xds/wire.hpp"
#include "istio/security/authorization.pb.h"
#include "istio/workload/workload.pb.h"

namespace kmesh::xds {

class Source : public Handler {
  public:
    // `sync` writes the model's changes to the maps and says whether all of them are in; it runs
    // with `mu` held.
    Source(MeshState& mesh, std::mutex& mu, std::function<bool()> sync)
        : mesh_(mesh), mu_(mu), sync_(std::move(sync)) {}

    std::vector<std::string> on_response(
        const envoy::service::discovery::v3::DeltaDiscoveryResponse& r) override;
    // Frees each resource's strings once applied (they are left empty in `r`), and the handled
    // Resource objects themselves every kConsumeChunk resources (~150 B each: freed while the
    // model grows, their holes take the model's next allocations instead of leaving 110k
    // emptied shells between model nodes until the response goes). At most kConsumeChunk
    // emptied resources stay in `r`.
    static constexpr int kConsumeChunk = 4096;
    std::vector<std::string> consume_response(
        envoy::service::discovery::v3::DeltaDiscoveryResponse& r) override;
    // The client's path: the response walked from its bytes, each slice freed once passed.
    // From kPipelineMin Address resources on, a second thread decodes and converts them while
    // this one applies them to the model in the same order (a full push: 110k resources), so that
    // the decoding overlaps the model updates. Applies exactly as on_response would.
    static constexpr int kPipelineMin = 4096;
    std::vector<std::string> consume_wire(WireResponse& w) override;
    std::map<std::string, std::string> versions(const std::string& type_url) override;
    void on_connection(bool connected) override;
    // True once istiod's first Authorization response was handled (any thread).
    bool policies_received() const { return policies_received_.load(); }

    // Callers hold `mu`.
    const std::map<std::string, AuthzPolicy>& policies() const { return mesh_.model().policies; }
    // Rejected resources the model holds no good state of (name -> rejected version).
    const std::map<std::string, std::string>& rejected(const std::string& type_url) {
        return rejected_[type_url];
    }
    size_t resources(const std::string& type_url) const;

    // One Address resource, decoded and converted without the model (any thread).
    struct Decoded {
        std::string name, version;  // the Resource's
        std::string err;            // why it is refused, if it is
        bool is_workload = false;
        Workload workload;
        Service service;
    };

  private:
    // `consumable`: the same response, whose resources may be freed as they are applied.
    std::vector<std::string> handle(const envoy::service::discovery::v3::DeltaDiscoveryResponse& resp,
                                    envoy::service::discovery::v3::DeltaDiscoveryResponse* consumable);
    std::string apply_address(const envoy::service::discovery::v3::Resource& r);
    // `r`'s strings move into `d` when `take` (the walker's reused Resource).
    static void decode_address(envoy::service::discovery::v3::Resource& r, bool take,
                               istio::workload::Address& scratch, Decoded* d);
    // The model's part of applying an address (mu_): "" or why it is refused.
    std::string apply_decoded(Decoded& d);
    // After a resource: its version held, or its rejection recorded (mu_).
    void settle(const std::string& type, const std::string& name, const std::string& version,
                const std::string& err, std::vector<std::string>* rejected);
    // After the resources: the removals, then the maps (mu_); whether every map is written.
    bool finish(const std::string& type, const NameList& removed);
    void log_handled(const std::string& type, int total, size_t removed, size_t rejected,
                     const std::string& nonce, bool programmed, std::chrono::steady_clock::time_point t0);
    std::string apply_authorization(const envoy::service::discovery::v3::Resource& r);
    void remove(const std::string& type_url, const std::string& name);
    void reject(const std::string& type_url, const std::string& name, const std::string& version);

    MeshState& mesh_;
    std::mutex& mu_;
    std::function<bool()> sync_;
    // type -> name hash -> version. Keyed by hash, not by a fifth copy of each name: the names
    // are the model's (and the policies') keys, listed again only on reconnect.
    std::map<std::string, VersionTable> versions_;
    // type -> name -> version of resources rejected while the model held no good state of them.
    std::map<std::string, std::map<std::string, std::string>> rejected_;
    bool addresses_received_ = false;
    istio::workload::Address address_;  // apply_address's decode buffer (mu_)
    // Until istiod's first Authorization response, the policies in the model are not istiod's:
    // the agent keeps enforcing what the kernel holds (a restart must not open every pod).
    std::atomic<bool> policies_received_{false};
};

}  // namespace kmesh::xds
