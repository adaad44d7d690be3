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
#include <string_view>
#include <vector>

#include "envoy/service/discovery/v3/discovery.pb.h"

namespace kmesh::xds {

// Names in one block: the text back to back and where each ends. A mass removal lists every
// resource (110k names, ~35 bytes each): as std::strings they took ~80 bytes each (the string and
// its heap block, ~9 MB) while the whole model was still alive; here ~39.
class NameList {
  public:
    void push_back(std::string_view name) {
        text_.append(name);
        ends_.push_back(static_cast<uint32_t>(text_.size()));
    }
    size_t size() const { return ends_.size(); }
    bool empty() const { return ends_.empty(); }
    std::string_view operator[](size_t i) const {
        uint32_t begin = i == 0 ? 0 : ends_[i - 1];
        return std::string_view(text_).substr(begin, ends_[i] - begin);
    }
    void clear() {
        text_.clear();
        ends_.clear();
    }
    std::vector<std::string> to_vector() const {
        std::vector<std::string> out;
        out.reserve(size());
        for (size_t i = 0; i < size(); i++) out.emplace_back((*this)[i]);
        return out;
    }

  private:
    std::string text_;
    std::vector<uint32_t> ends_;  // offsets past each name (a response is far below 4 GB)
};

struct WireResponse {
    // The encoded DeltaDiscoveryResponse, in order.
    std::vector<grpc::Slice> chunks;
    // Filled by scan():
    std::string type_url, nonce, system_version_info;
    NameList removed;   // removed_resources
    int resources = 0;  // how many `resources` entries the bytes hold
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
