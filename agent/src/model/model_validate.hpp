// The rules a model object must meet, the same for every config source: the YAML file and istiod
// (xDS) run each Service and Workload through these, so a resource is accepted or refused, with
// the same words, whichever way it came. The rules follow what ztunnel refuses
// (src/state/workload.rs, service.rs): it accepts any VIP (loopback and unspecified included: its
// capture never sees traffic to them, and neither does ours, see MeshState), duplicate service
// ports (TCP and UDP of one number) and per-workload target ports; it needs a resource name.
//
// Enum values are checked where they are read (a typed model cannot hold an unknown one); the
// sources word those problems with unknown_enum() so they read alike.
#pragma once

#include <string>
#include <vector>

#include "agent/src/model/model.hpp"

namespace kmesh {

// Each problem is one sentence naming the resource and the field; empty when the object is valid.
std::vector<std::string> validate_service(const Service& s);
std::vector<std::string> validate_workload(const Workload& w);

// How a resource is named in messages before it is known to be valid: a service as
// "namespace/hostname", a workload by its uid or, without one, as "namespace/name".
std::string describe(const Service& s);
std::string describe(const Workload& w);

// "<field> has the unknown value <value>": a value of an enum this agent (and ztunnel) does not know.
std::string unknown_enum(const std::string& field, const std::string& value);

}  // namespace kmesh
