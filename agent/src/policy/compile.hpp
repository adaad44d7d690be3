// Compiles the model's authorization policies into the tables the kernel evaluator walks
// (bpf/include/authz.h, bpf/kmesh_abi.h "authz"). Pure: Model + this node's name (+ the identity
// ids handed out before, so they stay stable) -> desired tables. The writer (authz_writer.hpp)
// puts them into a generation of the maps.
//
// The kernel never compares strings: every match group's identity fields (namespaces, principals,
// service accounts and their not_ forms) become the set of identity ids that satisfy them, where
// an identity id stands for one distinct (trust domain, namespace, service account) of a known
// workload and id 0 for "no identity". Addresses become LPM entries, ports hash entries.
#pragma once

#include <absl/container/btree_map.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "agent/src/model/model.hpp"
#include "common/abi.hpp"
#include "common/status.hpp"

namespace kmesh::policy {

// Per-generation capacities of the authz tables (the --max-authz-* flags). The kernel maps hold two
// generations of each (the address -> identity map and the cache only one).
struct AuthzSizes {
    uint32_t policies = KMESH_AUTHZ_DEFAULT_MAX_POLICIES;  // also the number of counter slots
    uint32_t rows = KMESH_AUTHZ_DEFAULT_MAX_ROWS;          // match groups
    uint32_t sets = KMESH_AUTHZ_DEFAULT_MAX_SETS;          // distinct applicable-policy lists
    uint32_t setpol = KMESH_AUTHZ_DEFAULT_MAX_SETPOL;      // entries of all those lists together
    uint32_t dsts = KMESH_AUTHZ_DEFAULT_MAX_DSTS;          // local workload addresses
    uint32_t entries = KMESH_AUTHZ_DEFAULT_MAX_ENTRIES;    // identity-set, CIDR and port entries (each)
    uint32_t idents = KMESH_AUTHZ_DEFAULT_MAX_IDENTS;      // addresses with an identity
    uint32_t cache = KMESH_AUTHZ_DEFAULT_MAX_CACHE;        // verdict cache
};

// One CIDR of a row, IPv4 as IPv4-mapped with the prefix counted over 128 bits, host bits zeroed.
struct CidrEntry {
    uint32_t row = 0;
    uint32_t kind = 0;  // KMESH_AUTHZ_KIND_{SRC,NOT_SRC,DST,NOT_DST}
    IpAddr addr;
    uint8_t prefix_len = 0;  // 0..128
    auto operator<=>(const CidrEntry&) const = default;
};

struct PortEntry {
    uint32_t row = 0;
    uint32_t kind = 0;  // KMESH_AUTHZ_KIND_{PORT,NOT_PORT}
    uint16_t port = 0;
    auto operator<=>(const PortEntry&) const = default;
};

struct CompiledPolicy {
    std::string key;  // "namespace/name": the writer gives it a stable counter slot
    uint32_t first_row = 0;
    uint32_t rows = 0;   // 0: never matches
    uint32_t flags = 0;  // KMESH_AUTHZ_POLICY_*
    bool operator==(const CompiledPolicy&) const = default;
};

struct CompiledSet {
    uint32_t first = 0;  // into setpol
    uint32_t count = 0;
    uint32_t flags = 0;  // KMESH_AUTHZ_SET_*
    bool operator==(const CompiledSet&) const = default;
};

struct CompiledRow {
    uint32_t idset = 0;
    uint32_t flags = 0;  // KMESH_AUTHZ_ROW_*
    bool operator==(const CompiledRow&) const = default;
};

// One generation's tables, indices relative to the generation.
struct AuthzTables {
    std::vector<CompiledSet> sets;
    std::vector<uint32_t> setpol;  // policy indices; per set: dry-run, then DENY, then ALLOW
    std::vector<CompiledPolicy> policies;
    std::vector<CompiledRow> rows;
    std::map<IpAddr, uint32_t> dsts;                // local workload address -> set
    std::set<std::pair<uint32_t, uint32_t>> idset;  // (identity set, identity id)
    std::set<CidrEntry> cidrs;
    std::set<PortEntry> ports;
    bool operator==(const AuthzTables&) const = default;
};

// Address -> identity id, for every workload address of the mesh (100k at a full push). A
// B-tree, same order as a std::map: ~20 bytes an entry and cache-friendly inserts instead of a
// 64-byte node each.
using AddrIds = absl::btree_map<IpAddr, uint32_t>;

struct CompiledAuthz {
    AuthzTables tables;
    // Identity ids (stable across compiles when passed back in): 1.. for known identities.
    std::map<SourceIdentity, uint32_t> identities;
    uint32_t next_identity = 1;  // the first id this compile did not hand out (IdentityIds::next)
    // Every workload address (any node) whose workload has an identity -> its id. An address that
    // workloads of different identities share (host network) has none: it is left out.
    AddrIds addr_identity;
    // Every policy key of the model (the writer keeps a counter slot for each).
    std::vector<std::string> policy_keys;
};

// The identity ids the kernel may still hold, so that a compile never gives an id a new meaning
// while an address in km_authz_ident (or a cached verdict) still carries the old one.
struct IdentityIds {
    // Ids of the last published compile, kept for identities still present.
    std::map<SourceIdentity, uint32_t> ids;
    // After an agent restart: km_authz_ident as recovered (address -> id). An identity without an
    // id in `ids` takes the id its workloads' addresses carry, when they all agree and no other
    // identity claims it, so a restart does not renumber what the kernel enforces.
    AddrIds addr_ids;
    // Ids from here up were never handed out: new identities are numbered from it, so a freed id
    // is never reused (ids are 32-bit; the space lasts for billions of identity changes).
    uint32_t next = 1;

    IdentityIds() = default;
    IdentityIds(std::map<SourceIdentity, uint32_t> previous) : ids(std::move(previous)) {}  // NOLINT
};

// Which workloads get destination tables: those whose placement node is `node` (all when node is
// empty, as in standalone mode). Fails with kResourceExhausted (naming the flag) when a table
// exceeds `sizes`.
Result<CompiledAuthz> compile_authz(const Model& model, const std::string& node, const IdentityIds& previous,
                                    const AuthzSizes& sizes = {});

// Whether a workload gets destination entries on `node` (every workload when node is empty).
inline bool is_local(const Workload& w, const std::string& node) {
    return (node.empty() || w.placement->node == node) && !w.addresses.empty();
}

// The two halves of compile_authz, shared with the incremental compiler (incremental.hpp):
// the tables of `local` (is_local workloads in uid order) from out.identities and the model's
// policies, replacing out.tables; and the size checks (idents: addresses with an identity).
void compile_tables(const Model& model, const std::vector<const Workload*>& local, CompiledAuthz& out);
Status check_limits(const CompiledAuthz& out, size_t idents, const AuthzSizes& sizes);

// The 128-bit form of a policy CIDR: IPv4 as IPv4-mapped (prefix + 96), host bits zeroed.
CidrEntry cidr_entry(uint32_t row, uint32_t kind, const Cidr& c);

}  // namespace kmesh::policy
