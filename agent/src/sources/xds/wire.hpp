// A DeltaDiscoveryResponse as gRPC received it: the encoded bytes (gRPC's slices), with only the
// top-level fields the client needs decoded. The resources stay encoded until the handler walks
// them one at a time.
//
// Why: letting gRPC parse a full push (110k resources, ~25 MB) into a DeltaDiscoveryResponse made
// ~10 heap blocks per resource on the xDS thread before the agent could start on the first one
// (~0.5 s of the push), and the parsed response was larger than its bytes. Walking the bytes
// instead decodes each resource into reused messages, lets that decoding run on a second thread
// beside the model updates, and frees each slice once the walk is past it, so that the encoded
// response shrinks while the model grows.
#pragma once

#include <grpcpp/support/slice.h>

#include <cstdint>
#include <string>
#include <vector>

#include "envoy/service/discovery/v3/discovery.pb.h"

namespace kmesh::xds {

struct WireResponse {
    // The encoded DeltaDiscoveryResponse, in order.
    std::vector<grpc::Slice> chunks;
    // Filled by scan():
    std::string type_url, nonce, system_version_info;
    std::vector<std::string> removed;  // removed_resources
    int resources = 0;                 // how many `resources` entries the bytes hold
};

// Decodes the top-level fields but for the resources (counted and skipped); false when the bytes
// are not a DeltaDiscoveryResponse's framing (gRPC would have failed the Read).
bool scan(WireResponse& w);

// The same response, encoded (tests, and streams that deliver parsed messages).
WireResponse to_wire(const envoy::service::discovery::v3::DeltaDiscoveryResponse& r);
// The same response, parsed (handlers without a wire path).
bool from_wire(const WireResponse& w, envoy::service::discovery::v3::DeltaDiscoveryResponse* r);

// Walks the `resources` of a scanned response in order, decoding each into one reused Resource
// (its strings keep their capacity from one resource to the next). `release`: each chunk is
// freed once the walk has passed it (the response is consumed; walk it once). Not thread-safe;
// one walker per response, on any one thread.
class ResourceWalker {
  public:
    ResourceWalker(WireResponse& w, bool release);
    ~ResourceWalker();
    ResourceWalker(const ResourceWalker&) = delete;
    ResourceWalker& operator=(const ResourceWalker&) = delete;
    // The next resource, or null at the end. `*ok` is false when this entry's bytes are not a
    // Resource (the entry is skipped; the walk goes on with the next one).
    envoy::service::discovery::v3::Resource* next(bool* ok);

  private:
    struct Impl;
    Impl* impl_;
};

}  // namespace kmesh::xds
