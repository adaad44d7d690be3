// The map writer's kernel-native stages (issue 13): rate limits (km_limit_cfg, km_ratelimit),
// weighted splits (km_split), max_connections and backend ports. The oracle is the fake kernel's
// map contents and its call log, read back by name hash and compared with values written out here
// by hand, never the writer's own mirror.
#include <arpa/inet.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>

#include "agent/src/dataplane/map_writer.hpp"
#include "fake_map_ops.hpp"

using namespace kmesh;
using namespace kmesh::test;

namespace {

const Dirty kAll{true, {}, {}};

kmesh_frontend_key fe_key(const std::string& ip, uint16_t port) {
    kmesh_frontend_key k{};
    auto a = *IpAddr::parse(ip);
    std::memcpy(k.addr, a.bytes.data(), 16);
    k.port = htons(port);
    return k;
}

const uint64_t kSvcA = name_hash("default/a"), kSvcB = name_hash("default/b");
const uint64_t kLimit = name_hash("limit/chain-a"), kLimit2 = name_hash("limit/chain-b");

DesiredBackend backend(const std::string& ip, uint16_t port) {
    DesiredBackend b;
    auto a = *IpAddr::parse(ip);
    b.addr4 = a.bytes;
    b.flags = KMESH_BACKEND_HAS_V4 | KMESH_BACKEND_HAS_PORT;
    b.port = htons(port);
    return b;
}

DesiredSplit split_ab() { return DesiredSplit{{{kSvcA, 3}, {kSvcB, 1}}}; }
uint64_t split_hash(const DesiredSplit& s) { return name_hash(split_name(s)); }

// Two services of one backend each, a split 3:1 over them behind 10.96.0.1:80 (limited), and
// service a's own VIP 10.96.0.2:80 (limited by the same bucket), a with max_connections 5.
DesiredState native() {
    DesiredState d;
    d.backends[name_hash("pod-a")] = backend("10.244.0.11", 9080);
    d.backends[name_hash("pod-b")] = backend("10.244.0.12", 9081);
    auto svc = [&](uint64_t h, const char* pod) {
        DesiredService s;
        s.members[name_hash(pod)] = DesiredMember{1, 0, 1u << KMESH_FAMILY_V4};
        d.services[h] = s;
    };
    svc(kSvcA, "pod-a");
    svc(kSvcB, "pod-b");
    d.services[kSvcA].flags = KMESH_SERVICE_MAX_CONN;
    d.services[kSvcA].max_connections = 5;
    d.splits[split_hash(split_ab())] = split_ab();
    d.limits[kLimit] = DesiredLimit{10, 2, 1000000000};
    FrontendTarget via_split{split_hash(split_ab()), htons(8080),
                             KMESH_FRONTEND_SPLIT | KMESH_FRONTEND_LIMITED, kLimit};
    FrontendTarget direct{kSvcA, htons(8080), KMESH_FRONTEND_LIMITED, kLimit};
    d.frontends[fe_key("10.96.0.1", 80)] = via_split;
    d.frontends[fe_key("10.96.0.2", 80)] = direct;
    d.services[kSvcA].frontends[fe_key("10.96.0.2", 80)] = direct;
    return d;
}

// The fake kernel's id of the entry whose value carries `hash` (0 when none), for the maps whose
// values end in a name hash.
template <typename V>
uint32_t id_of(const FakeMapOps& ops, MapId map, uint64_t hash) {
    uint32_t found = 0;
    ops.for_each(map, [&](const void* k, const void* v) {
        V value;
        std::memcpy(&value, v, sizeof value);
        if (value.name_hash == hash) std::memcpy(&found, k, sizeof found);
        return found == 0;
    });
    return found;
}

size_t first_of(const std::vector<std::string>& log, const std::string& op) {
    return std::find(log.begin(), log.end(), op) - log.begin();
}
size_t last_of(const std::vector<std::string>& log, const std::string& op) {
    auto it = std::find(log.rbegin(), log.rend(), op);
    return it == log.rend() ? log.size() : log.size() - 1 - (it - log.rbegin());
}

struct Harness {
    FakeMapOps ops;
    Metrics metrics;
    MapWriter writer;
    std::vector<std::string> violations;
    explicit Harness(MapCapacity cap = {}) : writer(ops, MapState{}, cap, metrics) {
        ops.after_mutation = [this] {
            if (auto v = ops.check_connect_invariant(); !v.empty()) violations.push_back(v);
        };
    }
    std::string apply(const DesiredState& d) { return writer.apply(diff(writer.state(), d, kAll)); }
};

}  // namespace

TEST_CASE("native: limits first, splits after their services, frontends last, with the right ids") {
    Harness h;
    REQUIRE(h.apply(native()) == "");
    CHECK(h.violations.empty());
    const auto& log = h.ops.ops;
    CHECK(log.front() == "put km_limit_cfg");
    CHECK(last_of(log, "put km_service") < first_of(log, "put km_split"));
    CHECK(last_of(log, "put km_endpoint") < first_of(log, "put km_split"));
    CHECK(last_of(log, "put km_split") < first_of(log, "put km_frontend"));

    uint32_t a = id_of<kmesh_service_value>(h.ops, MapId::kService, kSvcA);
    uint32_t b = id_of<kmesh_service_value>(h.ops, MapId::kService, kSvcB);
    uint32_t sp = id_of<kmesh_split_value>(h.ops, MapId::kSplit, split_hash(split_ab()));
    uint32_t lim = id_of<kmesh_limit_cfg>(h.ops, MapId::kLimitCfg, kLimit);
    REQUIRE(a);
    REQUIRE(b);
    REQUIRE(sp);
    REQUIRE(lim);

    kmesh_split_value sv;
    REQUIRE(h.ops.get(MapId::kSplit, sp, &sv));
    CHECK(sv.count == 2);
    CHECK(sv.total == 4);
    CHECK(sv.service_id[0] == a);
    CHECK(sv.service_id[1] == b);
    CHECK(sv.cum_weight[0] == 3);
    CHECK(sv.cum_weight[1] == 4);

    kmesh_limit_cfg lc;
    REQUIRE(h.ops.get(MapId::kLimitCfg, lim, &lc));
    CHECK(lc.max_tokens == 10);
    CHECK(lc.tokens_per_fill == 2);
    CHECK(lc.fill_interval_ns == 1000000000);

    kmesh_frontend_value fe;
    REQUIRE(h.ops.get(MapId::kFrontend, fe_key("10.96.0.1", 80), &fe));
    CHECK(fe.service_id == sp);
    CHECK(fe.flags == (KMESH_FRONTEND_SPLIT | KMESH_FRONTEND_LIMITED));
    CHECK(fe.limit_id == lim);
    REQUIRE(h.ops.get(MapId::kFrontend, fe_key("10.96.0.2", 80), &fe));
    CHECK(fe.service_id == a);
    CHECK(fe.limit_id == lim);

    kmesh_service_value svc;
    REQUIRE(h.ops.get(MapId::kService, a, &svc));
    CHECK(svc.max_connections == 5);
    CHECK(svc.flags == KMESH_SERVICE_MAX_CONN);
    kmesh_backend_value bv;
    REQUIRE(h.ops.get(MapId::kBackend, id_of<kmesh_backend_value>(h.ops, MapId::kBackend, name_hash("pod-b")),
                      &bv));
    CHECK(bv.port == htons(9081));
    CHECK(bv.flags == (KMESH_BACKEND_HAS_V4 | KMESH_BACKEND_HAS_PORT));
}

TEST_CASE("native: removal mirrors: frontends, then the split, then services; limits zeroed last") {
    Harness h;
    REQUIRE(h.apply(native()) == "");
    uint32_t lim = id_of<kmesh_limit_cfg>(h.ops, MapId::kLimitCfg, kLimit);
    h.ops.ops.clear();
    REQUIRE(h.apply(DesiredState{}) == "");
    CHECK(h.violations.empty());
    const auto& log = h.ops.ops;
    CHECK(last_of(log, "del km_frontend") < first_of(log, "del km_split"));
    CHECK(last_of(log, "del km_split") < first_of(log, "del km_service"));
    CHECK(last_of(log, "del km_frontend") < first_of(log, "put km_limit_cfg"));
    CHECK(log.back() == "put km_limit_cfg");
    CHECK(h.ops.size(MapId::kFrontend) == 0);
    CHECK(h.ops.size(MapId::kSplit) == 0);
    CHECK(h.ops.size(MapId::kService) == 0);
    kmesh_limit_cfg lc;
    REQUIRE(h.ops.get(MapId::kLimitCfg, lim, &lc));  // an ARRAY element: zeroed, not deleted
    CHECK(lc.max_tokens == 0);
    CHECK(lc.name_hash == 0);
}

TEST_CASE("native: a restarted agent recovers split and limit ids; the re-diff is empty") {
    FakeMapOps ops;
    Metrics metrics;
    {
        MapWriter w(ops, MapState{}, MapCapacity{}, metrics);
        REQUIRE(w.apply(diff(w.state(), native(), kAll)) == "");
    }
    MapState st = recover_map_state(ops);
    CHECK(st.stray_splits.empty());
    CHECK(st.stray_limits.empty());
    REQUIRE(st.splits.count(split_hash(split_ab())));
    CHECK(st.splits.at(split_hash(split_ab())).value == split_ab());
    CHECK(st.splits.at(split_hash(split_ab())).id ==
          id_of<kmesh_split_value>(ops, MapId::kSplit, split_hash(split_ab())));
    REQUIRE(st.limits.count(kLimit));
    CHECK(st.limits.at(kLimit).value == DesiredLimit{10, 2, 1000000000});
    CHECK(st.services.at(kSvcA).max_connections == 5);
    CHECK(st.backends.at(name_hash("pod-a")).value.port == htons(9080));
    Plan p = diff(st, native(), kAll);
    CHECK(p.empty());
    MapWriter w(ops, std::move(st), MapCapacity{}, metrics);
    ops.ops.clear();
    REQUIRE(w.apply(p) == "");
    CHECK(ops.ops.empty());
}

TEST_CASE("native: recovery treats a split of an unknown service and an unnamed limit as strays") {
    FakeMapOps ops;
    Metrics metrics;
    kmesh_split_value bad{};
    bad.count = 1;
    bad.total = 1;
    bad.service_id[0] = 77;  // no such service
    bad.cum_weight[0] = 1;
    bad.name_hash = 1234;
    uint32_t split_id = 3, limit_id = 5;
    REQUIRE(ops.update(MapId::kSplit, &split_id, &bad) == 0);
    kmesh_limit_cfg orphan{10, 1, 1000, 4321};
    REQUIRE(ops.update(MapId::kLimitCfg, &limit_id, &orphan) == 0);
    kmesh_ratelimit_key bucket{42, limit_id, 0};
    kmesh_ratelimit_value tokens{0, 0, 3, 0};
    REQUIRE(ops.update(MapId::kRateLimit, &bucket, &tokens) == 0);
    MapState st = recover_map_state(ops);
    CHECK(st.stray_splits == std::vector<uint32_t>{3});
    CHECK(st.stray_limits == std::vector<uint32_t>{5});
    MapWriter w(ops, std::move(st), MapCapacity{}, metrics);
    REQUIRE(w.apply(diff(w.state(), DesiredState{}, kAll)) == "");
    CHECK(ops.size(MapId::kSplit) == 0);
    CHECK(ops.size(MapId::kRateLimit) == 0);
    kmesh_limit_cfg lc;
    REQUIRE(ops.get(MapId::kLimitCfg, limit_id, &lc));
    CHECK(lc.name_hash == 0);
}

TEST_CASE("native: too many splits or limits are refused before anything is written") {
    SUBCASE("splits") {
        MapCapacity cap;
        cap.splits = 0;
        Harness h(cap);
        CHECK(h.apply(native()).find("km_split") != std::string::npos);
        CHECK(h.ops.ops.empty());
    }
    SUBCASE("limits") {
        MapCapacity cap;
        cap.limits = 1;
        Harness h(cap);
        DesiredState d = native();
        d.limits[kLimit2] = DesiredLimit{1, 1, 1};
        CHECK(h.apply(d).find("km_limit_cfg") != std::string::npos);
        CHECK(h.ops.ops.empty());
        CHECK(fits(d, cap).find("km_limit_cfg") != std::string::npos);
    }
}

TEST_CASE("native: a freed limit id loses its buckets before it is reused") {
    MapCapacity cap;
    cap.limits = 2;  // two ids: the third limit must reuse the first one's
    Harness h(cap);
    REQUIRE(h.apply(native()) == "");
    REQUIRE(id_of<kmesh_limit_cfg>(h.ops, MapId::kLimitCfg, kLimit) == 1);
    auto bucket = [&](uint64_t netns, uint32_t id) {
        kmesh_ratelimit_key k{netns, id, 0};
        kmesh_ratelimit_value v{0, 0, 0, 5};  // drained
        REQUIRE(h.ops.update(MapId::kRateLimit, &k, &v) == 0);
    };
    // BPF made buckets of limit 1 for two client pods.
    bucket(101, 1);
    bucket(102, 1);
    auto move_to = [](uint64_t limit, DesiredLimit l) {
        DesiredState d = native();
        d.limits.clear();
        d.limits[limit] = l;
        for (auto& [k, t] : d.frontends) t.limit = limit;
        for (auto& [k, t] : d.services[kSvcA].frontends) t.limit = limit;
        return d;
    };
    const uint64_t kLimit3 = name_hash("limit/chain-c");

    // Both frontends move to another filter chain's bucket: id 2; id 1 is zeroed and its buckets go,
    // after the frontends stopped naming it.
    h.ops.ops.clear();
    REQUIRE(h.apply(move_to(kLimit2, DesiredLimit{3, 1, 500})) == "");
    CHECK(h.violations.empty());
    CHECK(id_of<kmesh_limit_cfg>(h.ops, MapId::kLimitCfg, kLimit2) == 2);
    CHECK(h.ops.size(MapId::kRateLimit) == 0);
    CHECK(last_of(h.ops.ops, "put km_frontend") < first_of(h.ops.ops, "del km_ratelimit"));
    kmesh_limit_cfg lc;
    REQUIRE(h.ops.get(MapId::kLimitCfg, uint32_t{1}, &lc));
    CHECK(lc.name_hash == 0);

    // A bucket of limit 2; then a third limit: it gets id 1 back, with no bucket, and limit 2's goes.
    bucket(101, 2);
    REQUIRE(h.apply(move_to(kLimit3, DesiredLimit{4, 1, 500})) == "");
    CHECK(h.violations.empty());
    REQUIRE(h.ops.get(MapId::kLimitCfg, uint32_t{1}, &lc));
    CHECK(lc.name_hash == kLimit3);
    CHECK(lc.max_tokens == 4);
    CHECK(h.ops.size(MapId::kRateLimit) == 0);
    kmesh_frontend_value fe;
    REQUIRE(h.ops.get(MapId::kFrontend, fe_key("10.96.0.1", 80), &fe));
    CHECK(fe.limit_id == 1);
}

TEST_CASE("native: a split whose service cannot be written is not written, nor its frontend") {
    Harness h;
    h.ops.set_capacity(MapId::kService, 1);  // the kernel refuses service b
    CHECK(h.apply(native()) != "");
    CHECK(h.violations.empty());
    CHECK(h.ops.size(MapId::kSplit) == 0);
    kmesh_frontend_value fe;
    CHECK_FALSE(h.ops.get(MapId::kFrontend, fe_key("10.96.0.1", 80), &fe));
    CHECK(h.metrics.frontends_unpublished == 1);
    // Once the kernel has room, a fresh diff finishes the work.
    h.ops.set_capacity(MapId::kService, 100);
    REQUIRE(h.apply(native()) == "");
    CHECK(h.ops.get(MapId::kFrontend, fe_key("10.96.0.1", 80), &fe));
    CHECK(h.violations.empty());
}
