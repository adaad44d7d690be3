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
std::string validate_authorization(const istio::security::Authorization& in);

// The resource name istiod uses: a workload's uid, a service's "namespace/hostname", a policy's
// "namespace/name".
std::string resource_name(const istio::workload::Address& a);
std::string resource_name(const istio::security::Authorization& p);

}  // namespace kmesh::xds
