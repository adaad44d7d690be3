// A state-of-the-world ADS client (kernel-native mode): one StreamAggregatedResources stream to
// istiod, connected as a sidecar with the same channel, TLS, token and cluster id as the ambient
// mode's Delta client (sources/xds/channel.hpp). The client speaks the protocol and knows nothing
// of the resources: the Handler applies each response and names what EDS and RDS must ask for.
//
// Protocol (envoy api docs, xds_protocol.rst): each type has its own version and nonce; every
// response is answered, an ACK with its version, or a NACK with the last accepted version and an
// error_detail; only the first request of a stream carries the node. CDS and LDS are wildcard
// (the complete state in every response); EDS and RDS name their resources, and the complete name
// list is sent again whenever it changes, with the type's last nonce. Requests go in Envoy's
// warming order: CDS first, EDS and LDS once the first CDS response is applied, RDS once LDS is.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent/src/sources/ads/types.hpp"
#include "agent/src/sources/xds/channel.hpp"
#include "agent/src/sources/xds/stream_runner.hpp"
#include "envoy/service/discovery/v3/discovery.pb.h"

namespace kmesh::ads {

using xds::ClientOptions;

// Whether the type is asked for by name (EDS, RDS) rather than as a wildcard (CDS, LDS).
bool is_named_type(const std::string& type_url);

// Receives what istiod sends. Called on the client's thread, one response at a time.
class Handler {
  public:
    virtual ~Handler() = default;
    // Applies one response: for CDS and LDS the complete state (a resource missing from it is
    // deleted), for EDS and RDS the named resources (a missing one is not). Returns one
    // "name: reason" per rejected resource; empty means ACK. A rejected resource keeps its last
    // good state; the others of the response are applied.
    virtual std::vector<std::string> on_response(
        const envoy::service::discovery::v3::DiscoveryResponse& r) = 0;
    // The names to ask for, as of what has been applied: for kEndpointType the EDS service names
    // of the clusters, for kRouteType the route configuration names of the listeners.
    virtual std::vector<std::string> subscriptions(const std::string& type_url) = 0;
    virtual void on_connection(bool connected) = 0;
};

// One open stream, as the client uses it: the seam between the protocol (Client::serve) and
// gRPC, so that tests can script istiod.
class SotwStream {
  public:
    virtual ~SotwStream() = default;
    virtual bool write(const envoy::service::discovery::v3::DiscoveryRequest& r) = 0;
    virtual bool read(envoy::service::discovery::v3::DiscoveryResponse* r) = 0;
};

struct ClientStatus {
    bool connected = false;
    uint64_t connects = 0, responses = 0, acks = 0, nacks = 0;
    std::string last_error, last_nack;
    std::map<std::string, std::string> versions;  // type URL -> last accepted version
};

class Client {
  public:
    Client(ClientOptions options, Handler& handler);
    ~Client();
    void start();
    void stop();
    ClientStatus status() const;

    // The protocol on one open stream, until it ends. The versions accepted on an earlier
    // stream are sent again on the first request of each type, with the current names, so that
    // istiod can tell a reconnect from a new client. Returns whether any response arrived.
    bool serve(SotwStream& stream);

  private:
    struct Subscription {  // one type on one stream
        bool requested = false;
        std::string nonce;               // of the last response of the type
        std::vector<std::string> names;  // as last sent (named types), sorted
    };
    // One gRPC stream on the runner's channel and context, served until it ends.
    xds::StreamEnd open_and_serve(const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext& ctx);

    ClientOptions options_;  // before runner_, which keeps a reference
    Handler& handler_;
    xds::StreamRunner<ClientStatus> runner_;
};

}  // namespace kmesh::ads
