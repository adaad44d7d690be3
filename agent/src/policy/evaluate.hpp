// The userspace reference evaluator of Istio's L4 authorization: what ztunnel decides for a new
// connection (src/rbac.rs, src/state.rs at 62d82653; reference §10), written straight from those
// rules and independent of the kernel compiler. `kmeshctl authz check` asks it through the admin
// server, and tests use it as a second oracle beside the hand-written decision table.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "agent/src/model/model.hpp"

namespace kmesh::policy {

// One new TCP connection. IPv4 addresses, also when written IPv4-mapped (::ffff:a.b.c.d, as an
// IPv6 socket sees a v4 peer), are IPv4: IpAddr stores both alike.
struct Connection {
    IpAddr src;
    IpAddr dst;
    uint16_t dst_port = 0;  // the port connected on the workload (the target port)
};

struct Decision {
    bool allow = true;
    // The enforced policy that decided ("namespace/name"): the first matching DENY by key, else the
    // first matching ALLOW by key; "" when the default decided (no ALLOW policy: allow; ALLOW
    // policies and none matched: deny).
    std::string policy;
    std::vector<std::string> dry_run;  // dry-run policies whose rules match, by key; never enforced
    std::string reason;                // one line for people
};

// cidr holds ip: same family, equal in the first prefix_len bits.
bool cidr_contains(const Cidr& cidr, const IpAddr& ip);

// Whether the policy's rules match the connection from a source with identity `id` (its action and
// dry_run are not looked at). No rules: false; a rule without clauses: true; a clause without
// groups: true; an empty group is skipped.
bool policy_matches(const AuthzPolicy& p, const Connection& c, const SourceIdentity& id);

// The workload owning an address (nullptr: none). A workload with several addresses is found by any.
const Workload* workload_at(const Model& model, const IpAddr& ip);

// The source identity of a connection: that of the workload owning the source address, or none.
SourceIdentity source_identity(const Model& model, const IpAddr& src);

// The decision for a connection to workload `dst` (the caller found it, e.g. with workload_at).
Decision decide(const Model& model, const Workload& dst, const Connection& c);

}  // namespace kmesh::policy
