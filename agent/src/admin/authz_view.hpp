// The authorization part of the admin server's config dump: every policy with its rules in words
// and the hit counts a policy::HitsReader reported, and the totals. Apart from the agent so that
// it can be tested without a data plane.
#pragma once

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <set>
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

// Whether the model's policies are what the kernel enforces, for /debug/authz (kmeshctl authz status).
struct AuthzPublishState {
    bool published = false;  // the model's policies are published (nothing pending)
    bool waiting_for_policies =
        false;               // xDS: istiod has not sent its policies yet (the kernel keeps the last)
    std::string last_error;  // why the last publish stopped before the flip ("" after a success)
    uint64_t publishes = 0, failures = 0, map_full = 0, identity_updates = 0;  // AuthzWriterStats
    uint64_t state = 0;                     // the kernel's state word: bit 0 active generation, >> 1 epoch
    std::set<std::string> kernel_policies;  // keys of the policies last published
    bool can_close_connections = false;     // the close-on-change iterator is loaded
};

// The /debug/authz document: "publish" (the state above), "policies" and "authz_totals" as in the
// config dump, each policy with "in_kernel" (it is among the published ones).
std::string authz_status_json(const Model& m, const policy::AuthzReport& report, const AuthzPublishState& st);

}  // namespace kmesh::admin
