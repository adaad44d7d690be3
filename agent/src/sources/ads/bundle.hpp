// Kernel-native mode from a file instead of istiod (design §4.5): a standalone bundle of Envoy
// resources, for tests and for clusters without Istio. The file is one object
//   {"resources": [ {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", ...}, ... ]}
// in proto3 JSON, or the same in YAML (scalars are read as strings, which proto3 JSON accepts for
// numbers, booleans and enums). Resources of the four types may be mixed; each goes through the
// same converter as ADS (convert.hpp), so a file and istiod are accepted or refused alike.
// Fields our proto subset does not declare are skipped, as on the wire.
#pragma once

#include <string>
#include <vector>

#include "agent/src/sources/ads/convert.hpp"

namespace kmesh::ads {

struct Bundle {
    std::vector<ResourceResult> listeners, routes, clusters, clas;  // each in file order
};

// Hand-written configs get Envoy's own default for an absent max_connections (1024), not istiod's
// "no limit": the file source stands in for Envoy, not for istiod.
inline ConvertOptions bundle_defaults() { return ConvertOptions{.absent_max_connections = 1024}; }

// Errors: kDataLoss when the text is not JSON/YAML of that shape or a resource does not parse,
// kInvalidArgument for a resource type other than the four. Per-resource problems are in the
// results, as for ADS.
Result<Bundle> parse_bundle(const std::string& text, const ConvertOptions& opts = bundle_defaults());
// kNotFound / kIo when the file cannot be read.
Result<Bundle> read_bundle(const std::string& path, const ConvertOptions& opts = bundle_defaults());

}  // namespace kmesh::ads
