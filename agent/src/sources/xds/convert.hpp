// istio.workload / istio.security resources -> the model, with the validation that decides what
// gets NACKed. Each function returns "" or why the resource is invalid.
#pragma once

#include <string>

#include "agent/src/model/model.hpp"
#include "istio/security/authorization.pb.h"
#include "istio/workload/workload.pb.h"

namespace kmesh::xds {

std::string convert_service(const istio::workload::Service& in, Service* out);
std::string convert_workload(const istio::workload::Workload& in, Workload* out);
// The same, moving the strings out of `in` (left in a valid but unspecified state).
std::string convert_workload(istio::workload::Workload&& in, Workload* out);
// An istio.security.Authorization as the model holds it. Stricter than ztunnel, which drops what it
// cannot read from a match (widening or narrowing a policy unseen): a bad address, prefix length,
// port, enum or a string match of no kind refuses the whole policy (NACK; the last good one serves).
std::string convert_authorization(const istio::security::Authorization& in, AuthzPolicy* out);
// convert_authorization without the result.
std::string validate_authorization(const istio::security::Authorization& in);

// The resource name istiod uses: a workload's uid, a service's "namespace/hostname", a policy's
// "namespace/name".
std::string resource_name(const istio::workload::Address& a);
std::string resource_name(const istio::security::Authorization& p);

}  // namespace kmesh::xds
