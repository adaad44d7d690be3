// Puts compiled authorization tables (compile.hpp) into the kernel maps without ever letting the
// evaluator see a half-written state, and reads the kernel's counters back as an AuthzReport.
//
// Publish order (docs/authz.md, "kernel evaluation"):
//   1. counter slots for new policy keys are allocated and zeroed;
//   2. the inactive generation is made equal to the new tables (only the entries that differ from
//      what that generation held are written; deletions before additions);
//   3. one write of the state word flips the active generation and bumps the epoch (cached
//      verdicts of older epochs are ignored from then on);
//   4. address -> identity changes are written, and the epoch bumps again if there were any;
//   5. slots of policies gone from the model are freed.
// A failed write in step 2 (a full map, any kernel error) returns an error Status and stops before
// the flip: the last good generation keeps serving, and the next publish redoes the difference.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "agent/src/policy/compile.hpp"
#include "agent/src/policy/hits.hpp"
#include "common/status.hpp"

namespace kmesh::policy {

enum class AuthzMap {
    kConfig = 0,
    kIdent,
    kDst,
    kSet,
    kSetPol,
    kPolicy,
    kRow,
    kIdSet,
    kCidr,
    kPort,
    kCache,
    kHits,
    kTotals
};
inline constexpr int kAuthzMapCount = 13;

const char* authz_map_name(AuthzMap m);  // the pinned name, e.g. "km_authz_row"
size_t authz_key_size(AuthzMap m);
size_t authz_value_size(AuthzMap m);  // per CPU for the per-CPU maps

// The kernel-call seam: production uses KernelAuthzMapOps, unit tests an in-memory fake.
class AuthzMapOps {
  public:
    virtual ~AuthzMapOps() = default;
    // All return 0 or -errno. update() creates or replaces (BPF_ANY).
    virtual int update(AuthzMap map, const void* key, const void* value) = 0;
    virtual int remove(AuthzMap map, const void* key) = 0;
    virtual int lookup(AuthzMap map, const void* key, void* value) const = 0;
    // Batches (BPF_MAP_UPDATE_BATCH, BPF_MAP_DELETE_BATCH) with the contract of MapOps (map_ops.hpp):
    // n keys (values) back to back, done in order up to the first failure; 0, or the -errno of
    // entry *done. -EOPNOTSUPP with *done == 0: no batch here, go one by one (the default).
    virtual int update_batch(AuthzMap, const void*, const void*, uint32_t, uint32_t* done) {
        *done = 0;
        return -EOPNOTSUPP;
    }
    virtual int remove_batch(AuthzMap, const void*, uint32_t, uint32_t* done) {
        *done = 0;
        return -EOPNOTSUPP;
    }
    // Visits every key; fn returns false to stop.
    virtual void for_each_key(AuthzMap map, const std::function<bool(const void* key)>& fn) const = 0;
    // Per-CPU arrays of __u64 (hits, totals): the sum over all CPUs, and zeroing every CPU's copy.
    virtual int percpu_sum(AuthzMap map, uint32_t index, uint64_t* sum) const = 0;
    virtual int percpu_zero(AuthzMap map, uint32_t index) = 0;
};

class KernelAuthzMapOps : public AuthzMapOps {
  public:
    // fds[i] belongs to AuthzMap(i); the caller keeps them open.
    explicit KernelAuthzMapOps(std::array<int, kAuthzMapCount> fds);
    int update(AuthzMap map, const void* key, const void* value) override;
    int remove(AuthzMap map, const void* key) override;
    int lookup(AuthzMap map, const void* key, void* value) const override;
    int update_batch(AuthzMap map, const void* keys, const void* values, uint32_t n, uint32_t* done) override;
    int remove_batch(AuthzMap map, const void* keys, uint32_t n, uint32_t* done) override;
    void for_each_key(AuthzMap map, const std::function<bool(const void* key)>& fn) const override;
    int percpu_sum(AuthzMap map, uint32_t index, uint64_t* sum) const override;
    int percpu_zero(AuthzMap map, uint32_t index) override;

  private:
    std::array<int, kAuthzMapCount> fds_;
    int ncpus_;
};

// One generation's contents as the maps hold them (indices relative to the generation).
struct AuthzGeneration {
    bool arrays_known = false;  // false after a restart or a failed write: rewrite every array entry
    std::vector<kmesh_authz_set_value> sets;
    std::vector<kmesh_authz_setpol_value> setpol;
    std::vector<kmesh_authz_policy_value> policies;
    std::vector<kmesh_authz_row_value> rows;
    std::map<IpAddr, uint32_t> dsts;
    std::set<std::pair<uint32_t, uint32_t>> idset;
    std::set<CidrEntry> cidrs;
    std::set<PortEntry> ports;
};

struct AuthzWriterStats {
    std::atomic<uint64_t> publishes{0};         // generations flipped
    std::atomic<uint64_t> identity_updates{0};  // publishes that changed address -> identity
    std::atomic<uint64_t> failures{0};          // publishes that stopped before the flip
    std::atomic<uint64_t> map_full{0};          // ... because a map was full
};

// What changed since the last publish, from the incremental compiler (incremental.hpp), so that a
// publish costs in proportion to the change. Only taken when the writer's previous publish
// completed (the mirrors are exact); publishing with a hint after a failed or no publish fails
// with kInternal (the caller publishes a full CompiledAuthz instead).
struct PublishHint {
    bool tables = true;      // the tables or the policy keys may differ from the last publish
    bool identities = true;  // the identity -> id map may differ
    // The addresses whose identity may have changed, with the wanted id (0: none). The compiled
    // addr_identity is not read when this is set.
    const std::vector<std::pair<IpAddr, uint32_t>>* idents = nullptr;
};

class AuthzWriter {
  public:
    AuthzWriter(AuthzMapOps& ops, AuthzSizes sizes) : ops_(ops), sizes_(sizes) {}

    // After an agent restart on reused maps: reads the state word and the identity map, learns the
    // active generation's hash entries and deletes the inactive one's (it may hold anything).
    Status recover();

    Status publish(const CompiledAuthz& compiled, const PublishHint* hint = nullptr);
    bool can_take_hint() const { return exact_; }

    // Identity ids in the maps, for the next compile_authz (so that they stay stable and a freed
    // id is never handed out again). Until the first publish after recover(), the kernel's
    // address -> id map stands in for the identities, which the kernel does not record.
    IdentityIds identities() const;
    uint32_t next_identity() const { return next_identity_; }  // identities().next, without the copy
    uint64_t state() const { return state_; }                  // bit 0: active generation; >> 1: epoch
    const AuthzGeneration& generation(unsigned g) const { return gens_[g & 1]; }
    // Counter slot of a policy key, or KMESH_AUTHZ_NO_SLOT.
    uint32_t slot_of(const std::string& key) const;
    const AuthzWriterStats& stats() const { return stats_; }

    // The kernel's counters by policy key, and the totals. Safe from another thread.
    AuthzReport report() const;

  private:
    Status fail(AuthzMap map, int err, const std::string& what);
    Status write_generation(unsigned g, const AuthzGeneration& want);
    Status write_state(uint64_t state);
    AuthzGeneration desired(const CompiledAuthz& c) const;
    // km_authz_ident writes in batches where the kernel takes them (100k addresses at a full push);
    // the mirror follows every entry done. *changed is set when anything was written.
    Status remove_idents(const std::vector<IpAddr>& addrs, bool* changed);
    Status put_idents(const std::vector<std::pair<IpAddr, uint32_t>>& puts, bool* changed);

    AuthzMapOps& ops_;
    AuthzSizes sizes_;
    uint64_t state_ = 0;
    std::array<AuthzGeneration, 2> gens_;
    AddrIds idents_;                                 // what km_authz_ident holds
    std::map<SourceIdentity, uint32_t> identities_;  // of the tables the kernel reads
    uint32_t next_identity_ = 1;                     // no id from here up was ever handed out
    bool recovered_ = false;                         // recover() ran, no publish since
    bool exact_ = false;                             // the last publish completed
    bool no_ident_batch_ = false;                    // the kernel refused a batch on km_authz_ident
    mutable std::mutex slots_mu_;                    // report() runs on the admin thread
    std::map<std::string, uint32_t> slots_;          // slots_mu_
    AuthzWriterStats stats_;
};

}  // namespace kmesh::policy
