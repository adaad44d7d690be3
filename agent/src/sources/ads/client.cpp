#include "agent/src/sources/ads/client.hpp"

#include <grpcpp/grpcpp.h>
#include <malloc.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "envoy/service/discovery/v3/discovery.grpc.pb.h"

namespace kmesh::ads {

using envoy::service::discovery::v3::AggregatedDiscoveryService;
using envoy::service::discovery::v3::DiscoveryRequest;
using envoy::service::discovery::v3::DiscoveryResponse;

bool is_named_type(const std::string& type_url) {
    return type_url == kEndpointType || type_url == kRouteType;
}

namespace {

class GrpcStream : public SotwStream {
  public:
    using Raw = grpc::ClientReaderWriter<DiscoveryRequest, DiscoveryResponse>;
    explicit GrpcStream(Raw& raw) : raw_(raw) {}
    bool write(const DiscoveryRequest& r) override { return raw_.Write(r); }
    bool read(DiscoveryResponse* r) override { return raw_.Read(r); }

  private:
    Raw& raw_;
};

std::vector<std::string> sorted_unique(std::vector<std::string> v) {
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
    return v;
}

const char* short_name(const std::string& type_url) {
    if (type_url == kClusterType) return "CDS";
    if (type_url == kEndpointType) return "EDS";
    if (type_url == kListenerType) return "LDS";
    if (type_url == kRouteType) return "RDS";
    return "unknown type";
}

}  // namespace

Client::Client(ClientOptions options, Handler& handler)
    : options_(std::move(options)),
      handler_(handler),
      runner_(
          options_, "ads: stream to " + options_.address,
          [this](const std::shared_ptr<grpc::Channel>& ch, grpc::ClientContext& ctx) {
              return open_and_serve(ch, ctx);
          },
          [this](bool connected) { handler_.on_connection(connected); }) {}

// Joins the runner's thread before the members its callbacks use go.
Client::~Client() { stop(); }

void Client::start() { runner_.start(); }

void Client::stop() { runner_.stop(); }

ClientStatus Client::status() const { return runner_.status(); }

xds::StreamEnd Client::open_and_serve(const std::shared_ptr<grpc::Channel>& ch, grpc::ClientContext& ctx) {
    auto stub = AggregatedDiscoveryService::NewStub(ch);
    auto raw = stub->StreamAggregatedResources(&ctx);
    GrpcStream adapter(*raw);
    xds::StreamEnd end;
    end.delivered = serve(adapter);
    raw->WritesDone();
    end.status = raw->Finish();
    return end;
}

bool Client::serve(SotwStream& stream) {
    std::map<std::string, Subscription> subs;
    std::map<std::string, std::string> accepted;
    runner_.update([&](ClientStatus& s) { accepted = s.versions; });
    bool node_sent = false;
    auto send = [&](const std::string& type, const std::string* error) {
        Subscription& sub = subs[type];
        DiscoveryRequest req;
        req.set_type_url(type);
        req.set_version_info(accepted[type]);  // on a NACK too: the last *accepted* version
        req.set_response_nonce(sub.nonce);
        for (const auto& n : sub.names) req.add_resource_names(n);
        if (!node_sent) {  // only the first request of a stream carries the node
            xds::fill_node(options_, req.mutable_node());
            node_sent = true;
        }
        if (error) {
            req.mutable_error_detail()->set_code(grpc::StatusCode::INVALID_ARGUMENT);
            req.mutable_error_detail()->set_message(*error);
        }
        sub.requested = true;
        return stream.write(req);
    };
    // A named type is asked for once the handler names something, and again whenever the list
    // changes (an empty list then unsubscribes from all: the stream is past its first request).
    auto follow = [&](const std::string& type) {
        auto names = sorted_unique(handler_.subscriptions(type));
        Subscription& sub = subs[type];
        if (names == sub.names && (sub.requested || names.empty())) return true;
        sub.names = std::move(names);
        return send(type, nullptr);
    };

    // A reconnect (versions accepted before) asks for everything at once, with what it holds;
    // a first connect asks for CDS and waits for it before the rest, as Envoy warms clusters
    // before listeners.
    bool reconnect = !accepted[kClusterType].empty() || !accepted[kListenerType].empty();
    if (!send(kClusterType, nullptr)) return false;
    if (reconnect && !(follow(kEndpointType) && send(kListenerType, nullptr) && follow(kRouteType)))
        return false;

    bool delivered = false;
    DiscoveryResponse resp;
    while (stream.read(&resp)) {
        if (!delivered) {
            delivered = true;
            runner_.mark_connected();
        }
        const std::string type = resp.type_url();
        if (type != kClusterType && type != kEndpointType && type != kListenerType && type != kRouteType) {
            // Not answered: any request of that type would subscribe to it.
            spdlog::warn("ads: ignoring a response of type {}, which was not asked for", type);
            continue;
        }
        std::vector<std::string> rejected = handler_.on_response(resp);
        subs[type].nonce = resp.nonce();
        std::string msg;
        for (const auto& r : rejected) msg += (msg.empty() ? "" : "; ") + r;
        if (rejected.empty())
            accepted[type] = resp.version_info();
        else
            spdlog::warn("ads: NACK {} version {} nonce {}: {}", short_name(type), resp.version_info(),
                         resp.nonce(), msg);
        runner_.update([&](ClientStatus& s) {  // not across write: see update()
            s.responses++;
            rejected.empty() ? s.acks++ : s.nacks++;
            if (!rejected.empty()) s.last_nack = msg;
            s.versions = accepted;
        });
        if (!send(type, rejected.empty() ? nullptr : &msg)) break;
        // What the applied response changed in the names EDS and RDS ask for, and the next
        // step of the warming order.
        bool ok = true;
        if (type == kClusterType) {
            ok = follow(kEndpointType) && (subs[kListenerType].requested || send(kListenerType, nullptr));
        } else if (type == kListenerType) {
            ok = follow(kRouteType);
        }
        if (!ok) break;
        bool large = resp.resources_size() > 1000;
        resp = DiscoveryResponse();
        if (large) malloc_trim(0);  // a full snapshot: hand its pages back
    }
    return delivered;
}

}  // namespace kmesh::ads
