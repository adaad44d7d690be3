// Keeps the compiled authorization (compile.hpp) up to date one workload at a time and publishes
// only what changed (authz_writer.hpp, PublishHint), so that a model change touching N workloads
// costs O(N log n) to compile and publish instead of O(all workloads): at 100k workloads the full
// compile + publish took 240-370 ms for every single change, even with no policy at all.
//
// What is incremental:
//   - address -> identity: an index of every workload's identity and addresses (with a count of
//     the workloads claiming each (address, identity)), so a change recomputes only the addresses
//     of the workloads it touched, and publishes only those;
//   - identity ids: kept while any workload has the identity, new ones numbered as compile_authz
//     numbers them;
//   - the tables (policies, rows, sets, local destinations) are recompiled whole, but only when a
//     policy changed, a local workload changed, or the identity universe changed while policies
//     exist. Their size is bounded by this node's workloads and the policies, not by the mesh.
// After every sync the maps hold what compile_authz + AuthzWriter::publish of the same model (with
// the same identity ids) would put there (test/unit/test_authz_incremental.cpp).
#pragma once

#include <absl/container/btree_map.h>

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "agent/src/model/model.hpp"
#include "agent/src/policy/authz_writer.hpp"
#include "agent/src/policy/compile.hpp"
#include "common/status.hpp"

namespace kmesh::policy {

struct AuthzSyncStats {
    bool full = false;          // rebuilt from the whole model (first sync, after a failure, "all")
    bool tables = false;        // the tables were recompiled
    size_t workloads = 0;       // workloads looked at
    size_t addresses = 0;       // addresses whose identity was recomputed
    size_t rows = 0, sets = 0;  // of the compiled tables
};

class IncrementalAuthz {
  public:
    IncrementalAuthz(std::string node, AuthzSizes sizes) : node_(std::move(node)), sizes_(sizes) {}

    // Brings the maps to `model`. changes.workloads: the uids upserted or removed since the last
    // successful sync (changes.all: anything may have changed); policies_changed: a policy was
    // upserted or removed. A failure (a full table or map) leaves the last good state serving and
    // makes the next sync rebuild from the whole model.
    Status sync(const Model& model, const ModelChanges& changes, bool policies_changed, AuthzWriter& writer);

    const CompiledAuthz& compiled() const { return out_; }  // addr_identity is left empty
    const AuthzSyncStats& last() const { return last_; }
    // This node's workloads as last indexed (uids), whose policies the published state holds.
    bool indexed_local(const std::string& uid) const { return local_.count(uid) > 0; }
    size_t indexed_locals() const { return local_.size(); }
    void invalidate() { valid_ = false; }

  private:
    // 40 bytes: the first address inline (a workload almost always has one or two), the others
    // in a block of their own. (As a std::vector and keyed by uid string, an entry cost ~180 bytes
    // with its heap blocks: 100k workloads, ~18 MB.)
    struct Entry {
        const SourceIdentity* ident = nullptr;  // key of refs_; null: no known identity
        bool host = false;                      // host network: claims its addresses with no identity
        uint32_t count = 0;                     // addresses
        IpAddr first{};
        std::unique_ptr<IpAddr[]> rest;  // count - 1 of them
        void assign(std::span<const IpAddr> addrs);
        template <typename F>
        void each(F f) const {
            if (count) f(first);
            for (uint32_t i = 1; i < count; i++) f(rest[i - 1]);
        }
    };
    using ClaimKey = std::pair<IpAddr, const SourceIdentity*>;

    Status rebuild(const Model& model, AuthzWriter& writer);
    // Moves one workload's contributions from its indexed form to its form in the model.
    void reindex(const std::string& uid, const Workload* now, std::set<SourceIdentity>& touched_idents);
    void unindex(uint64_t hash, std::set<SourceIdentity>& touched_idents);
    uint32_t id_of(const IpAddr& a) const;  // 0: none (no claim, shared, or no identity)
    bool number_identities(const std::set<SourceIdentity>& touched, const IdentityIds& previous);
    void compile_local_tables(const Model& model);

    std::string node_;
    AuthzSizes sizes_;
    bool valid_ = false;
    CompiledAuthz out_;
    std::map<SourceIdentity, uint32_t> refs_;  // known identity -> workloads having it
    // name_hash(uid) -> what it contributed. The model has no two names of one hash (MeshState
    // refuses a colliding name), so the hash names one workload; sync() drops the removed names
    // before it indexes the present ones, so a name that took a removed one's hash in the same
    // batch keeps its entry.
    std::unordered_map<uint64_t, Entry> index_;
    // (address, identity or null) -> workloads. A B-tree: a full push inserts one claim per
    // workload (100k), in a node of ~20 bytes each rather than a 64-byte tree node.
    absl::btree_map<ClaimKey, uint32_t> claims_;
    std::set<std::string> local_;  // uids of this node's workloads with addresses
    size_t ident_count_ = 0;       // addresses with an identity
    AuthzSyncStats last_;
};

}  // namespace kmesh::policy
