// The string-valued half of Istio's L4 authorization, shared by the compiler (which turns a match
// group's identity fields into the set of known identities they accept, so the kernel never compares
// strings) and by the reference evaluator. Semantics: ztunnel src/rbac.rs at 62d82653, reference §10.
#pragma once

#include <string_view>
#include <vector>

#include "agent/src/model/model.hpp"

namespace kmesh::policy {

// StringMatch against a value: exact / prefix / suffix, presence = non-empty.
bool string_matches(const StringMatch& m, std::string_view value);

// The identity fields of one match group (namespaces, principals, service accounts and their not_
// forms) against a source identity; the address and port fields are not looked at. An unknown
// identity has namespace "" and no principal: positive lists fail on it, not_ lists pass.
bool identity_fields_match(const AuthzMatch& m, const SourceIdentity& id);

// The identity a workload's connections carry (trust domain defaults to "cluster.local").
SourceIdentity identity_of(const Workload& w);

// The policies that apply to connections to workload w (reference §10): every GLOBAL policy, the
// NAMESPACE ones of w's namespace, and the WORKLOAD_SELECTOR ones w names (a name with no policy
// received yet is skipped). Ordered by key.
std::vector<const AuthzPolicy*> applicable_policies(const Model& model, const Workload& w);

}  // namespace kmesh::policy
