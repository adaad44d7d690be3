// Private helpers of the kube client: decoding objects from RapidJSON values and reading the API
// server's Status objects. Not part of the public surface (api.hpp).
#pragma once

#include <rapidjson/document.h>

#include <string>
#include <string_view>

#include "common/kube/api.hpp"

namespace kmesh::kube::detail {

// A decoded field of the wrong type is an error (kDataLoss); a missing optional field is not.
Status decode_pod(const rapidjson::Value& v, Pod* out);
Status decode_namespace(const rapidjson::Value& v, Namespace* out);
inline Status decode(const rapidjson::Value& v, Pod* out) { return decode_pod(v, out); }
inline Status decode(const rapidjson::Value& v, Namespace* out) { return decode_namespace(v, out); }

// A Kubernetes Status object ({"kind":"Status","code":410,"message":...}): its code and message,
// or code 0 when `v` is not one.
struct ApiStatus {
    int code = 0;
    std::string reason;
    std::string message;
};
ApiStatus decode_status(const rapidjson::Value& v);
ApiStatus decode_status_body(std::string_view body);

// The Errc an HTTP status maps to (api.hpp's table).
Errc errc_for_http(long http_code);

// The key an informer caches an object under: "<namespace>/<name>" or "<name>".
std::string object_key(const ObjectMeta& meta);

}  // namespace kmesh::kube::detail
