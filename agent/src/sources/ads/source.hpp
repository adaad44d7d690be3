// Kernel-native mode's istiod source: applies SotW ADS responses (CDS, EDS, LDS, RDS) to the
// NativeState, resource by resource, and names what EDS and RDS must ask for.
//
// Deletion rules (xds_protocol.rst): a CDS or LDS response is the complete state, so a cluster or
// listener it no longer lists goes; EDS and RDS responses carry only what they carry, and a
// ClusterLoadAssignment or RouteConfiguration goes when no cluster or listener names it any more.
// A rejected resource (NACKed by name) keeps its last good state and is not a deletion; a
// rejected resource never accepted before is simply absent.
//
// Also the file source of the same mode: a bundle (sources/ads/bundle.hpp) replaces the whole
// state, or is refused whole, leaving the last good state serving.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "agent/src/dataplane/native_state.hpp"
#include "agent/src/sources/ads/bundle.hpp"
#include "agent/src/sources/ads/client.hpp"
#include "agent/src/sources/ads/convert.hpp"

namespace kmesh::ads {

class Source : public Handler {
  public:
    // `sync` writes the state's changes to the maps and says whether all of them are in; it runs
    // with `mu` held, after every applied response.
    Source(NativeState& state, std::mutex& mu, std::function<bool()> sync, ConvertOptions opts = {})
        : state_(state), mu_(mu), sync_(std::move(sync)), opts_(opts) {}

    std::vector<std::string> on_response(const envoy::service::discovery::v3::DiscoveryResponse& r) override;
    std::vector<std::string> subscriptions(const std::string& type_url) override;
    void on_connection(bool connected) override;

    // True once a response of every type the state needs has been applied (CDS and LDS, and EDS /
    // RDS when clusters or listeners name any): the first full state.
    bool complete() const;
    // Resources rejected and never accepted, by type URL (name -> reason). Callers hold `mu`.
    const std::map<std::string, std::string>& rejected(const std::string& type_url) {
        return rejected_[type_url];
    }

  private:
    NativeState& state_;
    std::mutex& mu_;
    std::function<bool()> sync_;
    ConvertOptions opts_;
    std::set<std::string> received_;  // type URLs with at least one applied response
    bool synced_ = false;             // the first full state has been written
    std::map<std::string, std::map<std::string, std::string>> rejected_;
};

// Applies a bundle as the complete state: every resource valid, or nothing changes (the errors,
// one "type name: reason" each, are returned). Unlike ADS, a file has no per-resource NACK to
// keep the rest going, and a half-applied file would not be what the operator wrote.
std::vector<std::string> apply_bundle(NativeState& state, const Bundle& bundle);

}  // namespace kmesh::ads
