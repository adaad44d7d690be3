// A Delta xDS (ADS) client for istiod's ambient workload API, connecting the way ztunnel does:
// TLS with the mesh root CA, a projected service-account token as "authorization: Bearer", the
// "clusterid" header, and a ztunnel-style node id. One stream carries both type URLs.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent/src/sources/xds/channel.hpp"
#include "agent/src/sources/xds/stream_runner.hpp"
#include "agent/src/sources/xds/wire.hpp"
#include "envoy/service/discovery/v3/discovery.grpc.pb.h"

namespace kmesh::xds {

inline constexpr const char* kAddressType = "type.googleapis.com/istio.workload.Address";
inline constexpr const char* kAuthorizationType = "type.googleapis.com/istio.security.Authorization";

// Receives what istiod sends. Called on the client's thread, one response at a time.
class Handler {
  public:
    virtual ~Handler() = default;
    // Applies the response; returns "name: reason" for each rejected resource (empty: ACK).
    virtual std::vector<std::string> on_response(
        const envoy::service::discovery::v3::DeltaDiscoveryResponse& r) = 0;
    // The same, for a response the caller no longer needs: a handler may free each resource's
    // bytes once it has applied it, so that a full snapshot (110k resources, ~25 MB encoded) and
    // the model built from it are not both whole in memory at the peak.
    virtual std::vector<std::string> consume_response(
        envoy::service::discovery::v3::DeltaDiscoveryResponse& r) {
        return on_response(r);
    }
    // The same, for a response still encoded (scanned: type, nonce and removed names decoded).
    // The client calls this one; by default it parses the response and consumes it.
    virtual std::vector<std::string> consume_wire(WireResponse& w);
    // The resources held for a type (name -> version), sent on reconnect so istiod only sends
    // what changed and names what was removed meanwhile.
    virtual std::map<std::string, std::string> versions(const std::string& type_url) = 0;
    virtual void on_connection(bool connected) = 0;
};

// One open Delta ADS stream, as the client uses it: the seam between the protocol (Client::serve)
// and gRPC, so that tests can script istiod.
class DeltaStream {
  public:
    virtual ~DeltaStream() = default;
    virtual bool write(const envoy::service::discovery::v3::DeltaDiscoveryRequest& r) = 0;
    virtual bool read(envoy::service::discovery::v3::DeltaDiscoveryResponse* r) = 0;
    // The next response as bytes, scanned (see wire.hpp); false when the stream ended or the
    // bytes are not a response. By default: read() and encode it again (scripted streams).
    virtual bool read_wire(WireResponse* w);
};

struct ClientStatus {
    bool connected = false;
    uint64_t connects = 0, responses = 0, acks = 0, nacks = 0;
    std::string last_error, last_nack;
};

class Client {
  public:
    Client(ClientOptions options, Handler& handler);
    ~Client();
    void start();
    void stop();
    ClientStatus status() const;

    // The protocol on one open stream: subscribes to both types (the node on the first request
    // only; the versions held as initial_resource_versions), then hands every response to the
    // handler and answers it (ACK: the nonce; NACK: the nonce and error_detail), until the stream
    // ends. Returns whether any response arrived.
    bool serve(DeltaStream& stream);

  private:
    // One gRPC stream on the runner's channel and context, served until it ends.
    StreamEnd open_and_serve(const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext& ctx);

    ClientOptions options_;  // before runner_, which keeps a reference
    Handler& handler_;
    StreamRunner<ClientStatus> runner_;
};

}  // namespace kmesh::xds
