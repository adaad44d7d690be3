// What the kernel counted for authorization, as the admin server and kmeshctl show it. The
// authz writer (agent/src/policy) fills it from its per-CPU counter maps; the admin server takes a
// HitsReader so it never touches BPF maps itself.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>

namespace kmesh::policy {

struct PolicyHits {
    uint64_t matched = 0;          // new connections this policy decided (DENY: denied; ALLOW: allowed)
    uint64_t dry_run_matched = 0;  // dry-run policy: connections it would have decided
    uint64_t closed = 0;           // existing connections closed after a change made it deny them
};

struct AuthzTotals {
    uint64_t allowed = 0;           // new connections allowed (no policy, or an ALLOW matched)
    uint64_t denied_by_policy = 0;  // a DENY policy matched
    uint64_t denied_no_allow = 0;   // ALLOW policies apply and none matched
    uint64_t closed_existing = 0;   // connections closed after a policy change
    uint64_t cache_hits = 0;        // decisions served from the verdict cache
};

struct AuthzReport {
    std::map<std::string, PolicyHits> policies;  // by "namespace/name"
    AuthzTotals totals;
};

using HitsReader = std::function<AuthzReport()>;

}  // namespace kmesh::policy
