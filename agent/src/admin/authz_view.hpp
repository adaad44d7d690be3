// The authorization part of the admin server's config dump: every policy with its rules in words
// and the hit counts a policy::HitsReader reported, and the totals. Apart from the agent so that
// it can be tested without a data plane.
#pragma once

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <string>

#include "agent/src/model/model.hpp"
#include "agent/src/policy/hits.hpp"

namespace kmesh::admin {

// One rule for people: its clauses AND-ed, each clause's match groups OR-ed, e.g.
// `(namespace in ["foo"] and port not in [22]) AND (principal in ["*/sa/sleep"])`.
std::string rule_str(const AuthzRule& r);

// Writes the keys "policies" (a list, by key; a policy the report does not name has zero hits) and
// "authz_totals" into the object `w` is in.
void write_authz_policies(rapidjson::Writer<rapidjson::StringBuffer>& w, const Model& m,
                          const policy::AuthzReport& report);

}  // namespace kmesh::admin
