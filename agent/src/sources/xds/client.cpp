#include "agent/src/sources/xds/client.hpp"

#include <grpcpp/grpcpp.h>
#include <malloc.h>
#include <spdlog/spdlog.h>

namespace kmesh::xds {

using envoy::service::discovery::v3::DeltaDiscoveryRequest;
using envoy::service::discovery::v3::DeltaDiscoveryResponse;

namespace {

const char* const kDeltaMethod =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

// The gRPC stream behind the DeltaStream seam. Responses are read as bytes (grpc::ByteBuffer),
// not parsed by gRPC: the handler walks them resource by resource (wire.hpp), which is what
// the generated stub cannot do, so the call is made as the stub makes it, with ByteBuffer as
// the response type.
class GrpcStream : public DeltaStream {
  public:
    using Raw = grpc::ClientReaderWriter<DeltaDiscoveryRequest, grpc::ByteBuffer>;
    GrpcStream(Raw& raw, grpc::ClientContext& ctx) : raw_(raw), ctx_(ctx) {}
    bool write(const DeltaDiscoveryRequest& r) override { return raw_.Write(r); }
    bool read(DeltaDiscoveryResponse* r) override {
        WireResponse w;
        return read_wire(&w) && from_wire(w, r);
    }
    bool read_wire(WireResponse* w) override {
        grpc::ByteBuffer bytes;
        if (!raw_.Read(&bytes)) return false;
        w->chunks.clear();
        // The slices are gRPC's own (Dump takes references, no copy); `bytes` drops its
        // references on return, so each slice goes when the walk releases it.
        if (!bytes.Dump(&w->chunks).ok() || !scan(*w)) {
            // As gRPC does when a message does not parse: the stream is over.
            spdlog::warn("xds: a response that is not a DeltaDiscoveryResponse; ending the stream");
            ctx_.TryCancel();
            return false;
        }
        return true;
    }

  private:
    Raw& raw_;
    grpc::ClientContext& ctx_;
};

}  // namespace

bool DeltaStream::read_wire(WireResponse* w) {
    DeltaDiscoveryResponse r;
    if (!read(&r)) return false;
    *w = to_wire(r);
    return true;
}

std::vector<std::string> Handler::consume_wire(WireResponse& w) {
    DeltaDiscoveryResponse r;
    if (!from_wire(w, &r)) return {"the response cannot be decoded as a DeltaDiscoveryResponse"};
    return consume_response(r);
}

Client::Client(ClientOptions options, Handler& handler)
    : options_(std::move(options)),
      handler_(handler),
      runner_(
          options_, "xds: stream to " + options_.address,
          [this](const std::shared_ptr<grpc::Channel>& ch, grpc::ClientContext& ctx) {
              return open_and_serve(ch, ctx);
          },
          [this](bool connected) { handler_.on_connection(connected); }) {}

// Joins the runner's thread before the members its callbacks use go.
Client::~Client() { stop(); }

void Client::start() { runner_.start(); }

void Client::stop() { runner_.stop(); }

ClientStatus Client::status() const { return runner_.status(); }

StreamEnd Client::open_and_serve(const std::shared_ptr<grpc::Channel>& ch, grpc::ClientContext& ctx) {
    // What stub->DeltaAggregatedResources(&ctx) does, with the response left encoded.
    grpc::internal::RpcMethod method(kDeltaMethod, grpc::internal::RpcMethod::BIDI_STREAMING, ch);
    std::unique_ptr<GrpcStream::Raw> stream(
        grpc::internal::ClientReaderWriterFactory<DeltaDiscoveryRequest, grpc::ByteBuffer>::Create(
            ch.get(), method, &ctx));
    GrpcStream adapter(*stream, ctx);
    StreamEnd end;
    end.delivered = serve(adapter);
    end.status = stream->Finish();
    return end;
}

bool Client::serve(DeltaStream& stream) {
    bool first = true;
    for (const char* type : {kAddressType, kAuthorizationType}) {
        DeltaDiscoveryRequest req;
        req.set_type_url(type);
        if (first) {  // only the first request of a stream carries the node
            fill_node(options_, req.mutable_node());
            first = false;
        }
        for (const auto& [name, version] : handler_.versions(type))
            (*req.mutable_initial_resource_versions())[name] = version;
        if (!stream.write(req)) return false;
    }

    bool delivered = false;
    WireResponse resp;
    while (stream.read_wire(&resp)) {
        if (!delivered) {
            delivered = true;
            runner_.mark_connected();
        }
        std::vector<std::string> rejected = handler_.consume_wire(resp);
        DeltaDiscoveryRequest ack;
        ack.set_type_url(resp.type_url);
        ack.set_response_nonce(resp.nonce);
        std::string msg;
        for (const auto& r : rejected) msg += (msg.empty() ? "" : "; ") + r;
        if (!rejected.empty()) {
            ack.mutable_error_detail()->set_code(grpc::StatusCode::INVALID_ARGUMENT);
            ack.mutable_error_detail()->set_message(msg);
            spdlog::warn("xds: NACK {} nonce {}: {}", resp.type_url, resp.nonce, msg);
        }
        runner_.update([&](ClientStatus& s) {  // not across write: see update()
            s.responses++;
            rejected.empty() ? s.acks++ : s.nacks++;
            if (!rejected.empty()) s.last_nack = msg;
        });
        if (!stream.write(ack)) break;
        // A full snapshot is tens of MB: free what is left of it now and hand the pages back,
        // rather than keep the high-water mark for the life of the agent.
        bool large = resp.resources + static_cast<int>(resp.removed.size()) > 1000;
        resp = WireResponse();
        if (large) malloc_trim(0);
    }
    return delivered;
}

}  // namespace kmesh::xds
