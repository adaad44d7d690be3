// What every stream to istiod shares, whichever API it speaks (the Delta workload API of ambient
// mode, or the SotW Envoy API of kernel-native mode): the channel (TLS with the mesh root CA
// only), the call's metadata (a projected service-account token, the "clusterid" header), the
// node identity, and the reconnect loop with backoff.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "envoy/config/core/v3/base.pb.h"

namespace grpc {
class Channel;
class ClientContext;
}  // namespace grpc

namespace kmesh::xds {

struct ClientOptions {
    std::string address;         // host:port of istiod
    bool plaintext = false;      // tests only
    std::string root_cert_path;  // PEM bundle of the mesh root CA
    std::string token_path;      // re-read at every (re)connect; never logged
    std::string cluster_id = "Kubernetes";
    std::string node_id;  // ztunnel~IP~pod.ns~ns.svc.cluster.local, or sidecar~... (kernel-native)
    std::map<std::string, std::string> node_metadata;
    // Metadata values that are JSON objects rather than strings (a sidecar's LABELS).
    std::map<std::string, std::map<std::string, std::string>> node_metadata_objects;
    envoy::config::core::v3::Locality locality;  // sent when a field is set
};

// The channel to istiod; nullptr (and *error set) when the mesh root CA cannot be read: istiod is
// never trusted through the system roots.
std::shared_ptr<grpc::Channel> make_channel(const ClientOptions& options, std::string* error);

// The token (read again for every stream: projected tokens rotate) and the cluster id.
void add_call_metadata(grpc::ClientContext& ctx, const ClientOptions& options);

// The node as the first request of a stream carries it.
void fill_node(const ClientOptions& options, envoy::config::core::v3::Node* node);

// Runs `once` (one stream, until it breaks; true when it delivered responses and stayed up)
// until `stopping`, with exponential backoff and full jitter from 0.5 s up to 30 s between
// streams; a stream that delivered something resets the backoff. `wake` (under `mu`) cuts a
// wait short when stopping is set.
void reconnect_forever(const std::atomic<bool>& stopping, std::mutex& mu, std::condition_variable& wake,
                       const std::string& what, const std::function<bool()>& once,
                       const std::function<std::string()>& last_error);

}  // namespace kmesh::xds
