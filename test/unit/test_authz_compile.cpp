// The authorization compiler (agent/src/policy/compile.hpp) and writer (authz_writer.hpp) against
// an in-memory seam. The kernel half is replayed by test/authz (ctest authz_kernel).
#include <doctest/doctest.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "agent/src/policy/authz_writer.hpp"
#include "agent/src/policy/compile.hpp"

using namespace kmesh;
using namespace kmesh::policy;

namespace {

Workload wl(const std::string& name, const std::string& ns, const std::string& sa, const std::string& addr,
            const std::string& node = "n1") {
    Workload w;
    w.uid = ns + "/" + name;
    w.name = name;
    w.namespace_ = ns;
    w.service_account = sa;
    w.addresses.push_back(*IpAddr::parse(addr));
    w.placement = Placement::intern({node, "", "", {}});
    return w;
}

AuthzMatch ns_match(const std::string& ns, bool negate = false) {
    AuthzMatch m;
    (negate ? m.not_namespaces : m.namespaces).push_back({StringMatch::Kind::kExact, ns});
    return m;
}

AuthzPolicy make_policy(const std::string& name, AuthzAction action, std::vector<AuthzRule> rules) {
    AuthzPolicy p;
    p.name = name;
    p.namespace_ = "istio-system";
    p.action = action;
    p.rules = std::move(rules);
    return p;
}

AuthzRule rule(std::vector<std::vector<AuthzMatch>> clauses) {
    AuthzRule r;
    for (auto& c : clauses) r.clauses.push_back({std::move(c)});
    return r;
}

Model base_model() {
    Model m;
    for (auto w : {wl("sleep", "prod", "sleep", "10.0.0.1"), wl("curl", "dev", "curl", "10.0.0.2"),
                   wl("server", "prod", "server", "10.0.1.1"), wl("far", "dev", "far", "10.0.9.9", "n2")})
        m.workloads[w.uid] = w;
    return m;
}

void add(Model& m, const AuthzPolicy& p) { m.policies[p.key()] = p; }

}  // namespace

TEST_CASE("authz compile: rows follow rules and clauses, with END flags where each ends") {
    Model m = base_model();
    AuthzMatch port80;
    port80.destination_ports = {80};
    add(m, make_policy("p", AuthzAction::kAllow,
                       {rule({{ns_match("prod"), port80}, {ns_match("dev")}}), rule({{port80}})}));
    auto c = compile_authz(m, "n1", {});
    REQUIRE(c.is_ok());
    const auto& t = c->tables;
    REQUIRE(t.policies.size() == 1);
    CHECK(t.policies[0].rows == 4);
    REQUIRE(t.rows.size() == 4);
    CHECK((t.rows[0].flags & (KMESH_AUTHZ_ROW_END_CLAUSE | KMESH_AUTHZ_ROW_END_RULE)) == 0);
    CHECK((t.rows[0].flags & KMESH_AUTHZ_ROW_IDENT) != 0);
    CHECK(t.rows[1].flags == (KMESH_AUTHZ_ROW_PORT | KMESH_AUTHZ_ROW_END_CLAUSE));
    CHECK((t.rows[2].flags & (KMESH_AUTHZ_ROW_END_CLAUSE | KMESH_AUTHZ_ROW_END_RULE)) ==
          (KMESH_AUTHZ_ROW_END_CLAUSE | KMESH_AUTHZ_ROW_END_RULE));
    CHECK(t.rows[3].flags == (KMESH_AUTHZ_ROW_PORT | KMESH_AUTHZ_ROW_END_CLAUSE | KMESH_AUTHZ_ROW_END_RULE));
    CHECK(t.ports.count({1, KMESH_AUTHZ_KIND_PORT, 80}));
    CHECK(t.ports.count({3, KMESH_AUTHZ_KIND_PORT, 80}));
    // Three local workloads (n1), one set: they share the list.
    CHECK(t.dsts.size() == 3);
    CHECK(!t.dsts.count(*IpAddr::parse("10.0.9.9")));
    REQUIRE(t.sets.size() == 1);
    CHECK(t.sets[0].flags == KMESH_AUTHZ_SET_HAS_ALLOW);
}

TEST_CASE("authz compile: identity sets hold the accepted ids, or the rejected ones inverted") {
    Model m = base_model();
    m.workloads["prod/sleep2"] = wl("sleep2", "prod", "sleep", "10.0.0.5");  // same identity as sleep
    add(m, make_policy("a", AuthzAction::kAllow, {rule({{ns_match("dev")}})}));
    add(m, make_policy("b", AuthzAction::kAllow, {rule({{ns_match("dev", true)}})}));
    auto c = compile_authz(m, "", {});
    REQUIRE(c.is_ok());
    // Identities: (dev,curl), (dev,far), (prod,server), (prod,sleep) -> 4 ids, plus 0 for none.
    REQUIRE(c->identities.size() == 4);
    uint32_t curl = c->identities.at({"cluster.local", "dev", "curl"});
    uint32_t far = c->identities.at({"cluster.local", "dev", "far"});
    CHECK(c->addr_identity.at(*IpAddr::parse("10.0.0.5")) == c->addr_identity.at(*IpAddr::parse("10.0.0.1")));
    const auto& t = c->tables;
    REQUIRE(t.rows.size() == 2);
    // a: namespaces [dev] accepts {curl, far}: 2 of 5, stored as is.
    CHECK((t.rows[0].flags & KMESH_AUTHZ_ROW_IDENT_INVERT) == 0);
    CHECK(t.idset.count({t.rows[0].idset, curl}));
    CHECK(t.idset.count({t.rows[0].idset, far}));
    // b: not_namespaces [dev] accepts 3 of 5 (none included): the 2 rejected ones, inverted.
    CHECK((t.rows[1].flags & KMESH_AUTHZ_ROW_IDENT_INVERT) != 0);
    CHECK(t.idset.count({t.rows[1].idset, curl}));
    CHECK(!t.idset.count({t.rows[1].idset, 0}));
    CHECK(t.idset.size() == 4);
}

TEST_CASE("authz compile: what can never match is dropped, what always matches is one row") {
    Model m = base_model();
    add(m, make_policy("nothing", AuthzAction::kAllow, {}));                           // no rules
    add(m, make_policy("empty-group", AuthzAction::kDeny, {rule({{AuthzMatch{}}})}));  // skipped group
    add(m,
        make_policy("nobody", AuthzAction::kDeny, {rule({{ns_match("no-such-ns")}})}));  // no identity fits
    add(m, make_policy("always", AuthzAction::kDeny, {AuthzRule{}, rule({{ns_match("dev")}})}));
    auto c = compile_authz(m, "n1", {});
    REQUIRE(c.is_ok());
    const auto& t = c->tables;
    for (const auto& p : t.policies) {
        INFO(p.key);
        if (p.key == "istio-system/always") {
            CHECK(p.rows == 1);
            CHECK((t.rows[p.first_row].flags & KMESH_AUTHZ_ROW_ALWAYS) != 0);
        } else {
            CHECK(p.rows == 0);
        }
    }
    // Only "always" is listed; the rule-less ALLOW still makes ALLOW policies exist.
    REQUIRE(t.sets.size() == 1);
    CHECK(t.sets[0].count == 1);
    CHECK(t.sets[0].flags == KMESH_AUTHZ_SET_HAS_ALLOW);
}

TEST_CASE("authz compile: set order is dry-run, DENY, ALLOW; scopes pick the policies per workload") {
    Model m = base_model();
    auto allow = make_policy("1-allow", AuthzAction::kAllow, {AuthzRule{}});
    auto deny = make_policy("2-deny", AuthzAction::kDeny, {AuthzRule{}});
    auto dry = make_policy("3-dry", AuthzAction::kAllow, {AuthzRule{}});
    dry.dry_run = true;
    auto ns = make_policy("4-ns", AuthzAction::kDeny, {AuthzRule{}});
    ns.namespace_ = "dev";
    ns.scope = AuthzScope::kNamespace;
    for (const auto& p : {allow, deny, dry, ns}) add(m, p);
    auto c = compile_authz(m, "n1", {});
    REQUIRE(c.is_ok());
    const auto& t = c->tables;
    auto names = [&](const IpAddr& a) {
        std::vector<std::string> out;
        const auto& s = t.sets[t.dsts.at(a)];
        for (uint32_t i = 0; i < s.count; i++) out.push_back(t.policies[t.setpol[s.first + i]].key);
        return out;
    };
    CHECK(names(*IpAddr::parse("10.0.0.1")) ==
          std::vector<std::string>{"istio-system/3-dry", "istio-system/2-deny", "istio-system/1-allow"});
    CHECK(names(*IpAddr::parse("10.0.0.2")) == std::vector<std::string>{"istio-system/3-dry", "dev/4-ns",
                                                                        "istio-system/2-deny",
                                                                        "istio-system/1-allow"});
}

TEST_CASE("authz compile: identity ids stay stable; a shared address has no identity; CIDRs are 128-bit") {
    Model m = base_model();
    auto first = compile_authz(m, "", {});
    REQUIRE(first.is_ok());
    uint32_t sleep_id = first->identities.at({"cluster.local", "prod", "sleep"});
    m.workloads.erase("dev/curl");
    m.workloads["a/new"] = wl("new", "a", "new", "10.0.0.7");
    m.workloads["b/other"] = wl("other", "b", "other", "10.0.0.1");  // shares sleep's address
    auto second = compile_authz(m, "", first->identities);
    REQUIRE(second.is_ok());
    CHECK(second->identities.at({"cluster.local", "prod", "sleep"}) == sleep_id);
    CHECK(!second->addr_identity.count(*IpAddr::parse("10.0.0.1")));
    uint32_t new_id = second->identities.at({"cluster.local", "a", "new"});
    // A freed id (curl's) is never handed out again: an address the kernel still maps to it would
    // take the new identity's rights until the address map is rewritten.
    for (const auto& [id, n] : first->identities) CHECK(new_id != n);
    CHECK(new_id >= first->next_identity);
    auto e = cidr_entry(3, KMESH_AUTHZ_KIND_SRC, {*IpAddr::parse("10.1.2.3"), 16});
    CHECK(e.prefix_len == 112);
    CHECK(e.addr == *IpAddr::parse("10.1.0.0"));
    auto e6 = cidr_entry(3, KMESH_AUTHZ_KIND_DST, {*IpAddr::parse("fd00::1:1"), 112});
    CHECK(e6.prefix_len == 112);
    CHECK(e6.addr == *IpAddr::parse("fd00::1:0"));
}

TEST_CASE("authz compile: a table over its size fails naming the flag") {
    Model m = base_model();
    add(m, make_policy("p", AuthzAction::kAllow, {rule({{ns_match("dev")}}), rule({{ns_match("prod")}})}));
    AuthzSizes sizes;
    sizes.rows = 1;
    auto c = compile_authz(m, "", {}, sizes);
    REQUIRE(!c.is_ok());
    CHECK(c.status().code() == Errc::kResourceExhausted);
    CHECK(c.status().message().find("--max-authz-rows") != std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Writer

namespace {

class FakeAuthzOps : public AuthzMapOps {
  public:
    using Bytes = std::string;
    struct Op {
        std::string what;  // "put" / "del"
        AuthzMap map;
        Bytes key;
    };

    int update(AuthzMap map, const void* key, const void* value) override {
        auto& m = maps_[map];
        Bytes k(static_cast<const char*>(key), authz_key_size(map));
        if (!m.count(k) && capacity_.count(map) && m.size() >= capacity_[map]) return -E2BIG;
        m[k] = Bytes(static_cast<const char*>(value), authz_value_size(map));
        log.push_back({"put", map, k});
        return 0;
    }
    int remove(AuthzMap map, const void* key) override {
        if (!maps_[map].erase(Bytes(static_cast<const char*>(key), authz_key_size(map)))) return -ENOENT;
        log.push_back({"del", map, Bytes(static_cast<const char*>(key), authz_key_size(map))});
        return 0;
    }
    int lookup(AuthzMap map, const void* key, void* value) const override {
        auto it = maps_.find(map);
        if (it == maps_.end()) return -ENOENT;
        auto e = it->second.find(Bytes(static_cast<const char*>(key), authz_key_size(map)));
        if (e == it->second.end()) return -ENOENT;
        std::memcpy(value, e->second.data(), e->second.size());
        return 0;
    }
    void for_each_key(AuthzMap map, const std::function<bool(const void*)>& fn) const override {
        auto it = maps_.find(map);
        if (it == maps_.end()) return;
        auto copy = it->second;
        for (const auto& [k, v] : copy)
            if (!fn(k.data())) return;
    }
    int percpu_sum(AuthzMap map, uint32_t index, uint64_t* sum) const override {
        auto it = percpu.find({map, index});
        *sum = 0;
        if (it != percpu.end())
            for (auto v : it->second) *sum += v;
        return 0;
    }
    int percpu_zero(AuthzMap map, uint32_t index) override {
        percpu[{map, index}] = {0, 0};
        return 0;
    }

    size_t size(AuthzMap map) { return maps_[map].size(); }
    std::map<AuthzMap, size_t> capacity_;
    std::map<std::pair<AuthzMap, uint32_t>, std::vector<uint64_t>> percpu;  // two CPUs
    std::vector<Op> log;

  private:
    std::map<AuthzMap, std::map<Bytes, Bytes>> maps_;
};

uint32_t u32_at(const std::string& bytes, size_t off = 0) {
    uint32_t v;
    std::memcpy(&v, bytes.data() + off, 4);
    return v;
}

// The generation an op's key belongs to, or -1 for maps without generations.
int gen_of(const FakeAuthzOps::Op& op, const AuthzSizes& s) {
    switch (op.map) {
        case AuthzMap::kDst:
        case AuthzMap::kIdSet:
            return static_cast<int>(u32_at(op.key));
        case AuthzMap::kCidr:
            return static_cast<int>(u32_at(op.key, 4) >> 31);
        case AuthzMap::kPort:
            return static_cast<int>(u32_at(op.key) >> 31);
        case AuthzMap::kSet:
            return u32_at(op.key) >= s.sets;
        case AuthzMap::kSetPol:
            return u32_at(op.key) >= s.setpol;
        case AuthzMap::kPolicy:
            return u32_at(op.key) >= s.policies;
        case AuthzMap::kRow:
            return u32_at(op.key) >= s.rows;
        default:
            return -1;
    }
}

Model writer_model() {
    Model m = base_model();
    AuthzMatch g = ns_match("prod");
    g.source_ips.push_back({*IpAddr::parse("10.0.0.0"), 24});
    g.destination_ports = {80};
    add(m, make_policy("allow", AuthzAction::kAllow, {rule({{g}})}));
    add(m, make_policy("deny", AuthzAction::kDeny, {rule({{ns_match("dev")}})}));
    return m;
}

}  // namespace

TEST_CASE("authz writer: the inactive generation is written completely before the flip, identities after") {
    FakeAuthzOps ops;
    AuthzSizes sizes;
    AuthzWriter w(ops, sizes);
    auto c = compile_authz(writer_model(), "n1", {});
    REQUIRE(c.is_ok());
    REQUIRE(w.publish(*c).is_ok());
    // find the flip
    size_t flip = 0;
    int config_writes = 0;
    for (size_t i = 0; i < ops.log.size(); i++)
        if (ops.log[i].map == AuthzMap::kConfig && config_writes++ == 0) flip = i;
    REQUIRE(config_writes == 2);  // the flip, and the epoch bump after the identities
    for (size_t i = 0; i < ops.log.size(); i++) {
        const auto& op = ops.log[i];
        INFO("op " << i << " on " << authz_map_name(op.map));
        int g = gen_of(op, sizes);
        if (g >= 0) {
            CHECK(g == 1);    // never the generation the kernel reads
            CHECK(i < flip);  // and all of it before the flip
        }
        if (op.map == AuthzMap::kIdent) CHECK(i > flip);
    }
    CHECK(ops.size(AuthzMap::kIdent) == 4);
    CHECK(w.state() == ((2u << 1) | 1u));  // generation 1; epoch 2: the flip, then the identities

    // An unchanged model writes nothing at all.
    ops.log.clear();
    auto again = compile_authz(writer_model(), "n1", w.identities());
    REQUIRE(w.publish(*again).is_ok());
    CHECK(ops.log.empty());

    // A change goes to generation 0 (now inactive) and flips to it.
    Model m = writer_model();
    m.policies.erase("istio-system/deny");
    ops.log.clear();
    auto changed = compile_authz(m, "n1", w.identities());
    REQUIRE(w.publish(*changed).is_ok());
    CHECK((w.state() & 1) == 0);
    for (const auto& op : ops.log)
        if (int g = gen_of(op, sizes); g >= 0) CHECK(g == 0);
}

TEST_CASE("authz writer: a full map stops before the flip; the last good generation keeps serving") {
    FakeAuthzOps ops;
    AuthzSizes sizes;
    AuthzWriter w(ops, sizes);
    auto c = compile_authz(writer_model(), "n1", {});
    REQUIRE(w.publish(*c).is_ok());
    uint64_t good = w.state();

    Model m = writer_model();
    AuthzMatch many;
    for (int i = 0; i < 5; i++)
        many.source_ips.push_back({*IpAddr::parse("10.9." + std::to_string(i) + ".0"), 24});
    add(m, make_policy("more", AuthzAction::kAllow, {rule({{many}})}));
    ops.capacity_[AuthzMap::kCidr] = ops.size(AuthzMap::kCidr) + 2;
    ops.log.clear();
    auto bigger = compile_authz(m, "n1", w.identities());
    REQUIRE(bigger.is_ok());
    Status st = w.publish(*bigger);
    CHECK(st.code() == Errc::kResourceExhausted);
    CHECK(st.message().find("km_authz_cidr") != std::string::npos);
    CHECK(w.state() == good);
    CHECK(w.stats().map_full == 1);
    for (const auto& op : ops.log) {
        CHECK(op.map != AuthzMap::kConfig);
        if (int g = gen_of(op, sizes); g >= 0) CHECK(g == static_cast<int>((good & 1) ^ 1));
    }
    // Room again: the retry completes the generation and flips.
    ops.capacity_.erase(AuthzMap::kCidr);
    REQUIRE(w.publish(*bigger).is_ok());
    CHECK((w.state() & 1) != (good & 1));
}

TEST_CASE("authz writer: counters by stable slot, summed over CPUs, zeroed when a slot is reused") {
    FakeAuthzOps ops;
    AuthzWriter w(ops, AuthzSizes{});
    Model m = writer_model();
    REQUIRE(w.publish(*compile_authz(m, "n1", {})).is_ok());
    uint32_t allow = w.slot_of("istio-system/allow"), deny = w.slot_of("istio-system/deny");
    REQUIRE(allow != KMESH_AUTHZ_NO_SLOT);
    REQUIRE(deny != KMESH_AUTHZ_NO_SLOT);
    CHECK(allow != deny);
    ops.percpu[{AuthzMap::kHits, deny * KMESH_AUTHZ_HIT_COUNT + KMESH_AUTHZ_HIT_MATCHED}] = {3, 4};
    ops.percpu[{AuthzMap::kHits, allow * KMESH_AUTHZ_HIT_COUNT + KMESH_AUTHZ_HIT_DRY_RUN}] = {1, 0};
    ops.percpu[{AuthzMap::kTotals, KMESH_AUTHZ_TOTAL_DENIED_POLICY}] = {3, 4};
    ops.percpu[{AuthzMap::kTotals, KMESH_AUTHZ_TOTAL_CACHE_HITS}] = {5, 5};
    AuthzReport r = w.report();
    CHECK(r.policies["istio-system/deny"].matched == 7);
    CHECK(r.policies["istio-system/allow"].dry_run_matched == 1);
    CHECK(r.totals.denied_by_policy == 7);
    CHECK(r.totals.cache_hits == 10);
    // Slots are kept across republishes, freed on delete, and a new policy's counters start at 0.
    m.policies.erase("istio-system/deny");
    REQUIRE(w.publish(*compile_authz(m, "n1", w.identities())).is_ok());
    CHECK(w.slot_of("istio-system/allow") == allow);
    CHECK(w.slot_of("istio-system/deny") == KMESH_AUTHZ_NO_SLOT);
    add(m, make_policy("newer", AuthzAction::kDeny, {rule({{ns_match("dev")}})}));
    REQUIRE(w.publish(*compile_authz(m, "n1", w.identities())).is_ok());
    CHECK(w.slot_of("istio-system/newer") == deny);
    CHECK(w.report().policies["istio-system/newer"].matched == 0);
}

TEST_CASE("authz writer: recover learns the active generation and clears the inactive one") {
    FakeAuthzOps ops;
    AuthzSizes sizes;
    {
        AuthzWriter w(ops, sizes);
        REQUIRE(w.publish(*compile_authz(writer_model(), "n1", {})).is_ok());
        Model m = writer_model();
        m.policies.erase("istio-system/deny");
        REQUIRE(w.publish(*compile_authz(m, "n1", w.identities())).is_ok());  // both generations used
    }
    uint32_t zero = 0;
    kmesh_authz_config cfg{};
    REQUIRE(ops.lookup(AuthzMap::kConfig, &zero, &cfg) == 0);
    AuthzWriter restarted(ops, sizes);
    REQUIRE(restarted.recover().is_ok());
    CHECK(restarted.state() == cfg.state);
    const unsigned inactive = static_cast<unsigned>((cfg.state & 1) ^ 1);
    ops.log.clear();
    ops.for_each_key(AuthzMap::kCidr, [&](const void* k) {
        kmesh_authz_cidr_key key;
        std::memcpy(&key, k, sizeof key);
        CHECK((key.match >> 31) != inactive);
        return true;
    });
    ops.for_each_key(AuthzMap::kDst, [&](const void* k) {
        CHECK(u32_at(std::string(static_cast<const char*>(k), 4)) != inactive);
        return true;
    });
    CHECK(restarted.generation(cfg.state & 1).dsts.size() == 3);
}

TEST_CASE("authz writer: a restarted agent keeps the kernel's identity ids and never reuses one") {
    FakeAuthzOps ops;
    AuthzSizes sizes;
    const SourceIdentity curl{"cluster.local", "dev", "curl"}, curl_v2{"cluster.local", "dev", "curl-v2"};
    auto model = [] {
        Model m = writer_model();
        m.workloads["dev/curl-b"] = wl("curl-b", "dev", "curl", "10.0.0.3");  // a second curl pod
        return m;
    };
    std::map<SourceIdentity, uint32_t> before;
    uint32_t next_before = 0;
    {
        AuthzWriter w(ops, sizes);
        Model m = model();
        // Numbered in an order a fresh compile would not give: a workload that came and went.
        m.workloads["a/early"] = wl("early", "a", "early", "10.0.0.30");
        REQUIRE(w.publish(*compile_authz(m, "n1", w.identities())).is_ok());
        m.workloads.erase("a/early");
        auto second = compile_authz(m, "n1", w.identities());
        REQUIRE(second.is_ok());
        REQUIRE(w.publish(*second).is_ok());
        before = second->identities;
        next_before = second->next_identity;
    }
    AuthzWriter restarted(ops, sizes);
    REQUIRE(restarted.recover().is_ok());
    Model m = model();
    m.workloads["z/late"] = wl("late", "z", "late", "10.0.0.40");  // arrived while the agent was down
    // One curl pod moved to another identity while the agent was down: the kernel's id for curl
    // now sits on addresses of two identities, so neither may keep it.
    m.workloads["dev/curl"].service_account = "curl-v2";
    auto c = compile_authz(m, "n1", restarted.identities());
    REQUIRE(c.is_ok());
    for (const auto& [id, n] : before) {
        if (id == curl) continue;
        CHECK(c->identities.at(id) == n);  // the kernel's meaning of n is kept
    }
    uint32_t late = c->identities.at({"cluster.local", "z", "late"});
    CHECK(late >= next_before);
    CHECK(c->identities.at(curl) >= next_before);
    CHECK(c->identities.at(curl_v2) >= next_before);
    CHECK(c->identities.at(curl) != c->identities.at(curl_v2));
    REQUIRE(restarted.publish(*c).is_ok());
    auto ids = restarted.identities();
    CHECK(ids.addr_ids.empty());  // joined: the model's identities stand from now on
    CHECK(ids.next == c->next_identity);

    // In a running agent a freed id stays retired too.
    m.workloads.erase("z/late");
    m.workloads["y/later"] = wl("later", "y", "later", "10.0.0.41");
    auto d = compile_authz(m, "n1", restarted.identities());
    REQUIRE(d.is_ok());
    CHECK(d->identities.at({"cluster.local", "y", "later"}) >= c->next_identity);
}
