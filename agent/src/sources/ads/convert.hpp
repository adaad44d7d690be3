// Envoy xDS resources (LDS, RDS, CDS, EDS as istiod sends a sidecar) -> kernel-native model
// (agent/src/model/native.hpp). Per resource: a native object, or a Status whose category says
// what kind of problem it is and whose message names the resource and field (it becomes the
// NACK's error_detail). What connect() cannot decide is not an error: it is kept as a Skipped
// reason in the object (docs/kernel-native.md lists every field used and ignored).
//
// One-way: this reads protos and writes the model; it knows nothing of maps or desired state.
#pragma once

#include <google/protobuf/any.pb.h>
#include <google/protobuf/repeated_field.h>

#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "agent/src/model/native.hpp"
#include "agent/src/sources/ads/types.hpp"
#include "common/status.hpp"
#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/endpoint/v3/endpoint.pb.h"
#include "envoy/config/listener/v3/listener.pb.h"
#include "envoy/config/route/v3/route.pb.h"

namespace kmesh::ads {

enum class ResourceType { kListener, kRoute, kCluster, kCla };
// Nullopt for a type URL that is none of the four.
std::optional<ResourceType> resource_type(std::string_view type_url);
std::string_view type_url(ResourceType t);

struct ConvertOptions {
    // max_connections of a cluster whose DEFAULT circuit-breaker thresholds leave the field out.
    // Unset: no limit, as for istiod, which always writes it (UINT32_MAX by default). A source
    // of hand-written Envoy config may pass Envoy's own default, 1024.
    std::optional<uint32_t> absent_max_connections;
};

// Errors: kInvalidArgument (a value Envoy would refuse too: bad address or port, weight 0,
// unknown enum value, terminal filter not last, ...), kDataLoss (a typed_config or TypedStruct
// that does not decode).
Result<native::NativeListener> convert_listener(const envoy::config::listener::v3::Listener& in);
Result<native::NativeRoute> convert_route(const envoy::config::route::v3::RouteConfiguration& in);
Result<native::NativeCluster> convert_cluster(const envoy::config::cluster::v3::Cluster& in,
                                              const ConvertOptions& opts = {});
Result<native::NativeCla> convert_cla(const envoy::config::endpoint::v3::ClusterLoadAssignment& in);

using NativeResource =
    std::variant<native::NativeListener, native::NativeRoute, native::NativeCluster, native::NativeCla>;

struct ResourceResult {
    std::string name;  // the resource's name; "#<index>" when it did not decode far enough to have one
    Result<NativeResource> value;
};

// A response's resources, each decoded (Any of `type_url`) and converted on its own, in order:
// a bad one does not spoil the others. Extra errors: kInvalidArgument for an Any of another type,
// kDataLoss for bytes that do not parse, kAlreadyExists for every resource whose name occurs more
// than once (xDS: a NACK; which copy was meant cannot be told). The whole call fails
// (kInvalidArgument) only for a type_url that is none of the four.
Result<std::vector<ResourceResult>> convert_resources(
    std::string_view type_url, const google::protobuf::RepeatedPtrField<google::protobuf::Any>& resources,
    const ConvertOptions& opts = {});

// "<name>: <category>: <message>" of each failed resource, joined by "; ", for
// DiscoveryRequest.error_detail.message; empty when every resource converted.
std::string error_detail(const std::vector<ResourceResult>& results);

}  // namespace kmesh::ads
