// The incremental authorization path (agent/src/policy/incremental.hpp) against a from-scratch
// compile_authz + AuthzWriter::publish of the same model into empty maps: after every step of a
// random sequence of model changes (workloads added, removed, given another identity or address,
// moved between nodes or onto the host network; policies added and removed), the entries the
// kernel would read (the address -> identity map and the active generation) must be the same.
#include <doctest/doctest.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "agent/src/policy/authz_writer.hpp"
#include "agent/src/policy/compile.hpp"
#include "agent/src/policy/incremental.hpp"

using namespace kmesh;
using namespace kmesh::policy;

namespace {

// In-memory maps behind the AuthzMapOps seam (as in test_authz_compile.cpp).
class MemAuthzOps : public AuthzMapOps {
  public:
    using Bytes = std::string;
    int update(AuthzMap map, const void* key, const void* value) override {
        maps[map][Bytes(static_cast<const char*>(key), authz_key_size(map))] =
            Bytes(static_cast<const char*>(value), authz_value_size(map));
        writes++;
        return 0;
    }
    int remove(AuthzMap map, const void* key) override {
        writes++;
        return maps[map].erase(Bytes(static_cast<const char*>(key), authz_key_size(map))) ? 0 : -ENOENT;
    }
    // Batches as the kernel does them: in order, stopping at the first failure (a delete of a
    // missing key fails), so the writer's batch path is what runs here.
    int update_batch(AuthzMap map, const void* keys, const void* values, uint32_t n,
                     uint32_t* done) override {
        for (*done = 0; *done < n; ++*done)
            if (int err = update(map, static_cast<const char*>(keys) + size_t{*done} * authz_key_size(map),
                                 static_cast<const char*>(values) + size_t{*done} * authz_value_size(map)))
                return err;
        batches++;
        return 0;
    }
    int remove_batch(AuthzMap map, const void* keys, uint32_t n, uint32_t* done) override {
        for (*done = 0; *done < n; ++*done)
            if (int err = remove(map, static_cast<const char*>(keys) + size_t{*done} * authz_key_size(map)))
                return err;
        batches++;
        return 0;
    }
    int lookup(AuthzMap map, const void* key, void* value) const override {
        auto it = maps.find(map);
        if (it == maps.end()) return -ENOENT;
        auto e = it->second.find(Bytes(static_cast<const char*>(key), authz_key_size(map)));
        if (e == it->second.end()) return -ENOENT;
        std::memcpy(value, e->second.data(), e->second.size());
        return 0;
    }
    void for_each_key(AuthzMap map, const std::function<bool(const void*)>& fn) const override {
        auto it = maps.find(map);
        if (it == maps.end()) return;
        auto copy = it->second;
        for (const auto& [k, v] : copy)
            if (!fn(k.data())) return;
    }
    int percpu_sum(AuthzMap, uint32_t, uint64_t* sum) const override {
        *sum = 0;
        return 0;
    }
    int percpu_zero(AuthzMap, uint32_t) override { return 0; }

    std::map<AuthzMap, std::map<Bytes, Bytes>> maps;
    size_t writes = 0;
    size_t batches = 0;
};

uint32_t u32(const std::string& b, size_t off) {
    uint32_t v;
    std::memcpy(&v, b.data() + off, 4);
    return v;
}

// What the kernel reads: km_authz_ident whole; of the generation-tagged maps, the active
// generation's entries with the generation stripped; of the arrays, the active generation's first
// `n` entries (n from the tables compiled from scratch), policy counter slots replaced by the key.
std::map<std::string, std::string> kernel_view(const MemAuthzOps& ops, const AuthzWriter& w,
                                               const CompiledAuthz& ref, const AuthzSizes& s) {
    std::map<std::string, std::string> v;
    const uint32_t g = static_cast<uint32_t>(w.state() & 1);
    auto get = [&](AuthzMap m) -> const std::map<std::string, std::string>& {
        static const std::map<std::string, std::string> none;
        auto it = ops.maps.find(m);
        return it == ops.maps.end() ? none : it->second;
    };
    for (const auto& [k, val] : get(AuthzMap::kIdent)) v["ident " + k] = val;
    for (const auto& [k, val] : get(AuthzMap::kDst))
        if (u32(k, 0) == g) v["dst " + k.substr(4)] = val;
    for (const auto& [k, val] : get(AuthzMap::kIdSet))
        if (u32(k, 0) == g) v["idset " + k.substr(4)] = val;
    for (const auto& [key, val] : get(AuthzMap::kCidr)) {
        std::string k = key;
        uint32_t match = u32(k, 4);
        if (match >> 31 != g) continue;
        match &= ~(1u << 31);
        std::memcpy(k.data() + 4, &match, 4);
        v["cidr " + k] = val;
    }
    for (const auto& [key, val] : get(AuthzMap::kPort)) {
        std::string k = key;
        uint32_t match = u32(k, 0);
        if (match >> 31 != g) continue;
        match &= ~(1u << 31);
        std::memcpy(k.data(), &match, 4);
        v["port " + k] = val;
    }
    auto array = [&](AuthzMap m, const char* name, size_t n, uint32_t per_gen) {
        const auto& map = get(m);
        for (uint32_t i = 0; i < n; i++) {
            uint32_t key = g * per_gen + i;
            auto it = map.find(std::string(reinterpret_cast<const char*>(&key), 4));
            std::string val = it == map.end() ? "missing" : it->second;
            if (m == AuthzMap::kPolicy && it != map.end()) {
                // The slot is the writer's own bookkeeping: it must be the key's, whatever number.
                CHECK(u32(val, 8) == w.slot_of(ref.tables.policies[i].key));
                val = val.substr(0, 8) + ref.tables.policies[i].key + val.substr(12);
            }
            v[std::string(name) + " " + std::to_string(i)] = val;
        }
    };
    array(AuthzMap::kSet, "set", ref.tables.sets.size(), s.sets);
    array(AuthzMap::kSetPol, "setpol", ref.tables.setpol.size(), s.setpol);
    array(AuthzMap::kPolicy, "policy", ref.tables.policies.size(), s.policies);
    array(AuthzMap::kRow, "row", ref.tables.rows.size(), s.rows);
    return v;
}

AuthzMatch match_of(std::mt19937& rng) {
    AuthzMatch m;
    switch (rng() % 5) {
        case 0:
            m.namespaces.push_back({StringMatch::Kind::kExact, "ns" + std::to_string(rng() % 3)});
            break;
        case 1:
            m.not_principals.push_back({StringMatch::Kind::kSuffix, "/sa/sa" + std::to_string(rng() % 3)});
            break;
        case 2:
            m.service_accounts.push_back(
                {"ns" + std::to_string(rng() % 3), "sa" + std::to_string(rng() % 3)});
            break;
        case 3:
            m.source_ips.push_back({*IpAddr::parse("10.0.0.0"), static_cast<uint8_t>(24 + rng() % 8)});
            break;
        default:
            m.destination_ports.push_back(static_cast<uint16_t>(80 + rng() % 3));
    }
    return m;
}

AuthzPolicy random_policy(std::mt19937& rng) {
    AuthzPolicy p;
    p.name = "p" + std::to_string(rng() % 6);
    p.namespace_ = rng() % 3 == 0 ? "istio-system" : "ns" + std::to_string(rng() % 3);
    p.scope = static_cast<AuthzScope>(rng() % 3);
    p.action = rng() % 2 ? AuthzAction::kAllow : AuthzAction::kDeny;
    p.dry_run = rng() % 5 == 0;
    for (unsigned r = rng() % 3; r > 0; r--) {
        AuthzRule rule;
        for (unsigned c = 1 + rng() % 2; c > 0; c--) {
            AuthzClause clause;
            for (unsigned g = 1 + rng() % 2; g > 0; g--) clause.matches.push_back(match_of(rng));
            rule.clauses.push_back(std::move(clause));
        }
        p.rules.push_back(std::move(rule));
    }
    return p;
}

IpAddr random_addr(std::mt19937& rng) {
    // A small pool, so that workloads share addresses (host network, reused pod IPs).
    unsigned n = rng() % 14;
    return *IpAddr::parse(n < 12 ? "10.0.0." + std::to_string(n + 1) : "fd00::" + std::to_string(n));
}

void set_identity(Workload& w, std::mt19937& rng) {
    unsigned k = rng() % 8;
    w.namespace_ = k == 7 ? "" : "ns" + std::to_string(k % 3);  // 7: no identity at all
    w.service_account = k == 7 ? "" : "sa" + std::to_string(rng() % 3);
    w.trust_domain = rng() % 6 == 0 ? "other.td" : "";
}

Workload random_workload(const std::string& uid, std::mt19937& rng) {
    Workload w;
    w.uid = uid;
    w.name = uid;
    set_identity(w, rng);
    for (unsigned a = rng() % 3; a > 0; a--) w.addresses.push_back(random_addr(rng));
    w.placement = Placement::intern({rng() % 3 == 0 ? "n2" : "n1", "", "", {}});
    w.network_mode = rng() % 8 == 0 ? NetworkMode::kHostNetwork : NetworkMode::kStandard;
    if (rng() % 3 == 0)
        w.authorization_policies.push_back("ns" + std::to_string(rng() % 3) + "/p" +
                                           std::to_string(rng() % 6));
    return w;
}

}  // namespace

TEST_CASE("authz incremental: every step publishes what a from-scratch publish of the same model would") {
    for (uint32_t seed : {1u, 2u, 3u, 4u}) {
        INFO("seed " << seed);
        std::mt19937 rng(seed);
        AuthzSizes sizes;
        MemAuthzOps ops;
        AuthzWriter writer(ops, sizes);
        IncrementalAuthz inc("n1", sizes);
        Model model;
        std::map<SourceIdentity, uint32_t> ids_before;
        uint32_t max_id_ever = 0;
        size_t incremental_writes = 0, from_scratch_writes = 0;
        for (int step = 0; step < 120; step++) {
            INFO("step " << step);
            ModelChanges changes;
            changes.all = step == 0 || rng() % 40 == 0;  // the first sync, and now and then a full one
            bool policies_changed = step == 0;
            for (unsigned n = 1 + rng() % 3; n > 0; n--) {
                std::string uid = "w" + std::to_string(rng() % 24);
                auto it = model.workloads.find(uid);
                switch (rng() % 8) {
                    case 0:
                    case 1:  // add or replace
                        model.workloads[uid] = random_workload(uid, rng);
                        break;
                    case 2:  // remove
                        model.workloads.erase(uid);
                        break;
                    case 3:  // identity only
                        if (it != model.workloads.end()) set_identity(it->second, rng);
                        break;
                    case 4:  // address only
                        if (it != model.workloads.end()) {
                            if (it->second.addresses.empty())
                                it->second.addresses.push_back(random_addr(rng));
                            else
                                it->second.addresses[0] = random_addr(rng);
                        }
                        break;
                    case 5: {  // policy added or replaced
                        AuthzPolicy p = random_policy(rng);
                        model.policies[p.key()] = p;
                        policies_changed = true;
                        break;
                    }
                    case 6:  // policy removed
                        if (!model.policies.empty()) {
                            auto p = model.policies.begin();
                            std::advance(p, rng() % model.policies.size());
                            model.policies.erase(p);
                            policies_changed = true;
                        }
                        break;
                    default:  // a node move or the host network
                        if (it != model.workloads.end()) {
                            if (rng() % 2)
                                it->second.network_mode = it->second.network_mode == NetworkMode::kHostNetwork
                                                              ? NetworkMode::kStandard
                                                              : NetworkMode::kHostNetwork;
                            else
                                it->second.placement = Placement::intern(
                                    {it->second.placement->node == "n1" ? "n2" : "n1", "", "", {}});
                        }
                }
                changes.workloads.insert(uid);  // removed, changed, or (no-op) unchanged
            }
            size_t before = ops.writes;
            REQUIRE(inc.sync(model, changes, policies_changed, writer).is_ok());
            incremental_writes += ops.writes - before;
            if (!changes.all) CHECK_FALSE(inc.last().full);

            // From scratch, into empty maps, with the identity ids the incremental path published.
            IdentityIds ids = writer.identities();
            MemAuthzOps fresh_ops;
            AuthzWriter fresh(fresh_ops, sizes);
            auto c = compile_authz(model, "n1", IdentityIds(ids.ids), sizes);
            REQUIRE(c.is_ok());
            REQUIRE(fresh.publish(*c).is_ok());
            from_scratch_writes += fresh_ops.writes;
            CHECK(c->identities == ids.ids);  // every present identity has an id, none more
            CHECK(kernel_view(ops, writer, *c, sizes) == kernel_view(fresh_ops, fresh, *c, sizes));

            // Ids are stable while an identity stays, and a new identity never gets an old id.
            for (const auto& [id, n] : ids.ids) {
                auto b = ids_before.find(id);
                if (b != ids_before.end())
                    CHECK(b->second == n);
                else
                    CHECK(n > max_id_ever);
            }
            for (const auto& [id, n] : ids.ids) max_id_ever = std::max(max_id_ever, n);
            ids_before = ids.ids;
        }
        // The point of it: far fewer map writes than publishing everything each time.
        CHECK(incremental_writes < from_scratch_writes);
    }
}

TEST_CASE("authz incremental: a change to one non-local workload writes only its addresses") {
    AuthzSizes sizes;
    MemAuthzOps ops;
    AuthzWriter writer(ops, sizes);
    IncrementalAuthz inc("n1", sizes);
    Model model;
    for (int i = 0; i < 200; i++) {
        Workload w;
        w.uid = "w" + std::to_string(i);
        w.namespace_ = "ns";
        w.service_account = "sa" + std::to_string(i % 5);
        w.addresses.push_back(
            *IpAddr::parse("10.1." + std::to_string(i / 200) + "." + std::to_string(i % 200 + 1)));
        w.placement = Placement::intern({"n2", "", "", {}});
        model.workloads[w.uid] = w;
    }
    ModelChanges all{true, {}, {}};
    REQUIRE(inc.sync(model, all, true, writer).is_ok());
    CHECK(inc.last().full);
    CHECK(ops.batches == 1);  // the 200 addresses in one batch
    // Workload w7 moves to another address.
    model.workloads["w7"].addresses = {*IpAddr::parse("10.2.0.1")};
    ModelChanges one;
    one.workloads.insert("w7");
    size_t before = ops.writes;
    uint64_t state = writer.state();
    REQUIRE(inc.sync(model, one, false, writer).is_ok());
    CHECK_FALSE(inc.last().full);
    CHECK_FALSE(inc.last().tables);
    CHECK(inc.last().addresses == 2);
    // One delete, one add, one epoch bump; no new generation.
    CHECK(ops.writes - before == 3);
    CHECK((writer.state() & 1) == (state & 1));
    CHECK(ops.maps[AuthzMap::kIdent].size() == 200);
}
