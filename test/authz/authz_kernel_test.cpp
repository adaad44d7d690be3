// The kernel replay of the authorization decision table: the real evaluator (bpf/include/authz.h,
// run by the test-only sk_lookup program bpf/test/authz_probe.c through BPF_PROG_TEST_RUN) over
// tables made by the real compiler and writer, against verdicts written by hand
// (test/authz/decision_table.json). Needs root and BPF. Also: the 1,000 x 10 scale load, and
// (KMESH_AUTHZ_BENCH=1) cold / cached per-decision timings.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "agent/src/policy/authz_writer.hpp"
#include "agent/src/policy/compile.hpp"
#include "authz_probe.skel.h"
#include "test/authz/decision_table.hpp"

using namespace kmesh;
using namespace kmesh::policy;

#ifndef KMESH_SOURCE_DIR
#error "KMESH_SOURCE_DIR must point at the source tree"
#endif

namespace {

struct Probe {
    authz_probe* skel = nullptr;
    std::unique_ptr<KernelAuthzMapOps> ops;
    std::unique_ptr<AuthzWriter> writer;

    Probe() {
        skel = authz_probe__open_and_load();
        REQUIRE_MESSAGE(skel, "loading bpf/test/authz_probe.c failed (root and BPF needed)");
        auto& m = skel->maps;
        std::array<int, kAuthzMapCount> fds{
            bpf_map__fd(m.km_authz_config), bpf_map__fd(m.km_authz_ident),  bpf_map__fd(m.km_authz_dst),
            bpf_map__fd(m.km_authz_set),    bpf_map__fd(m.km_authz_setpol), bpf_map__fd(m.km_authz_policy),
            bpf_map__fd(m.km_authz_row),    bpf_map__fd(m.km_authz_idset),  bpf_map__fd(m.km_authz_cidr),
            bpf_map__fd(m.km_authz_port),   bpf_map__fd(m.km_authz_cache),  bpf_map__fd(m.km_authz_hits),
            bpf_map__fd(m.km_authz_totals)};
        ops = std::make_unique<KernelAuthzMapOps>(fds);
        writer = std::make_unique<AuthzWriter>(*ops, AuthzSizes{});
    }
    ~Probe() { authz_probe__destroy(skel); }

    void publish(const Model& model, const std::string& node) {
        auto compiled = compile_authz(model, node, writer->identities());
        REQUIRE_MESSAGE(compiled.is_ok(), compiled.status().to_string());
        Status st = writer->publish(*compiled);
        REQUIRE_MESSAGE(st.is_ok(), st.to_string());
    }

    static bpf_sk_lookup ctx_of(const IpAddr& src, const IpAddr& dst, uint16_t port, bool v6_socket) {
        bpf_sk_lookup ctx{};
        ctx.protocol = IPPROTO_TCP;
        ctx.local_port = port;
        ctx.remote_port = htons(40000);
        if (!v6_socket && src.is_v4() && dst.is_v4()) {
            ctx.family = AF_INET;
            std::memcpy(&ctx.remote_ip4, src.bytes.data() + 12, 4);
            std::memcpy(&ctx.local_ip4, dst.bytes.data() + 12, 4);
        } else {
            ctx.family = AF_INET6;
            std::memcpy(ctx.remote_ip6, src.bytes.data(), 16);
            std::memcpy(ctx.local_ip6, dst.bytes.data(), 16);
        }
        return ctx;
    }

    // Runs the program `repeat` times; returns SK_PASS (1) or SK_DROP (0), *ns the mean run time.
    int run(bpf_sk_lookup ctx, int repeat = 1, uint32_t* ns = nullptr) {
        LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = &ctx, .ctx_size_in = sizeof ctx, .repeat = repeat);
        int err = bpf_prog_test_run_opts(bpf_program__fd(skel->progs.authz_probe), &opts);
        REQUIRE_MESSAGE(err == 0, fmt::format("BPF_PROG_TEST_RUN: {}", std::strerror(errno)));
        if (ns) *ns = opts.duration;
        return static_cast<int>(opts.retval);
    }

    int check(const kmesh::test::authz::Conn& c) { return run(ctx_of(c.src, c.dst, c.port, c.v6_socket)); }

    void drop_cache() {
        int fd = bpf_map__fd(skel->maps.km_authz_cache);
        kmesh_authz_cache_key k{}, next{};
        while (bpf_map_get_next_key(fd, nullptr, &next) == 0) {
            k = next;
            bpf_map_delete_elem(fd, &k);
        }
    }
};

constexpr int kSkPass = 1, kSkDrop = 0;

}  // namespace

TEST_CASE("authz kernel replay of the hand-written decision table") {
    auto table = kmesh::test::authz::load_table(KMESH_SOURCE_DIR "/test/authz/decision_table.json");
    REQUIRE(table.cases.size() >= 30);
    Probe probe;
    int checked = 0;
    for (const auto& c : table.cases) {
        INFO("case: " << c.name);
        probe.publish(c.model, table.node);
        for (const auto& conn : c.conns) {
            INFO("conn: " << conn.text << " expected " << (conn.allow ? "allow" : "deny"));
            probe.drop_cache();  // an IPv4 and an IPv4-mapped conn share one cache key
            AuthzReport before = probe.writer->report();
            // Twice: the first decision is computed (cold path), the second served by the cache.
            int cold = probe.check(conn);
            int cached = probe.check(conn);
            CHECK(cold == (conn.allow ? kSkPass : kSkDrop));
            CHECK(cached == cold);
            AuthzReport after = probe.writer->report();
            bool ours = false;
            for (const auto& [uid, w] : c.model.workloads)
                for (const auto& a : w.addresses)
                    if (a == conn.dst && w.placement->node == table.node) ours = true;
            if (ours) {
                CHECK(after.totals.cache_hits == before.totals.cache_hits + 1);
                uint64_t decided = (after.totals.allowed - before.totals.allowed) +
                                   (after.totals.denied_by_policy - before.totals.denied_by_policy) +
                                   (after.totals.denied_no_allow - before.totals.denied_no_allow);
                CHECK(decided == 2);
                CHECK((after.totals.allowed - before.totals.allowed) == (conn.allow ? 2u : 0u));
            }
            if (conn.by) CHECK(after.policies[*conn.by].matched - before.policies[*conn.by].matched == 2);
            if (conn.dry_run) {
                for (const auto& [key, p] : c.model.policies) {
                    if (!p.dry_run) continue;
                    bool listed =
                        std::find(conn.dry_run->begin(), conn.dry_run->end(), key) != conn.dry_run->end();
                    INFO("dry-run policy " << key);
                    CHECK(after.policies[key].dry_run_matched - before.policies[key].dry_run_matched ==
                          (listed ? 2u : 0u));
                }
            }
            checked++;
        }
    }
    MESSAGE(checked << " decisions replayed through the kernel");
}

TEST_CASE(
    "authz kernel: a re-check (count == false) counts nothing; a policy change invalidates cached verdicts") {
    auto table = kmesh::test::authz::load_table(KMESH_SOURCE_DIR "/test/authz/decision_table.json");
    Probe probe;
    Model model = table.cases.front().model;  // no policies
    probe.publish(model, table.node);
    auto sleep = *IpAddr::parse("10.0.0.1"), server = *IpAddr::parse("10.0.1.1");
    auto ctx = Probe::ctx_of(sleep, server, 80, false);
    CHECK(probe.run(ctx) == kSkPass);  // cached now
    AuthzPolicy deny;
    deny.name = "deny-all";
    deny.namespace_ = "istio-system";
    deny.action = AuthzAction::kDeny;
    deny.rules.push_back({});
    model.policies[deny.key()] = deny;
    probe.publish(model, table.node);
    probe.skel->data->probe_count = false;
    AuthzReport before = probe.writer->report();
    CHECK(probe.run(ctx) == kSkDrop);  // the cached allow is of an older epoch
    AuthzReport after = probe.writer->report();
    CHECK(after.totals.denied_by_policy == before.totals.denied_by_policy);
    CHECK(after.policies[deny.key()].matched == before.policies[deny.key()].matched);
    probe.skel->data->probe_count = true;
    // An address changing identity is a decision input too: prod/sleep's address becomes dev/curl's.
    model.policies.clear();
    AuthzPolicy allow;
    allow.name = "allow-prod";
    allow.namespace_ = "istio-system";
    AuthzRule rule;
    AuthzClause clause;
    AuthzMatch m;
    m.namespaces.push_back({StringMatch::Kind::kExact, "prod"});
    clause.matches.push_back(m);
    rule.clauses.push_back(clause);
    allow.rules.push_back(rule);
    model.policies[allow.key()] = allow;
    probe.publish(model, table.node);
    CHECK(probe.run(ctx) == kSkPass);
    CHECK(probe.run(ctx) == kSkPass);  // cached
    for (auto& [uid, w] : model.workloads)
        if (w.name == "sleep") w.namespace_ = "dev";
    uint64_t state = probe.writer->state();
    probe.publish(model, table.node);
    CHECK(probe.writer->state() != state);
    CHECK(probe.run(ctx) == kSkDrop);
}

namespace {

// n policies of 10 rules each, every one applying to the server (GLOBAL), none matching the
// allowed connection until the last ALLOW: the cold path walks all of them.
Model scale_model(const kmesh::test::authz::Table& table, int n) {
    Model model = table.cases.front().model;
    for (int i = 0; i < n; i++) {
        AuthzPolicy p;
        p.name = fmt::format("p{:04}", i);
        p.namespace_ = "istio-system";
        p.action = i % 2 ? AuthzAction::kDeny : AuthzAction::kAllow;
        for (int r = 0; r < 10; r++) {
            AuthzRule rule;
            AuthzClause c1, c2;
            AuthzMatch a, b;
            // Nothing here matches the measured connection (prod/sleep -> server:80), but every
            // group survives compilation (each can match some known source).
            a.namespaces.push_back({StringMatch::Kind::kExact, "prod"});
            a.destination_ports.push_back(static_cast<uint16_t>(1000 + r));
            b.source_ips.push_back({*IpAddr::parse(fmt::format("10.{}.{}.0", 100 + i % 100, r)), 24});
            b.not_destination_ports.push_back(static_cast<uint16_t>(2000 + i % 50));
            c1.matches = {a, b};
            AuthzMatch d;
            d.principals.push_back({StringMatch::Kind::kPrefix, "cluster.local/ns/prod/"});
            c2.matches = {d};
            rule.clauses = {c1, c2};
            p.rules.push_back(rule);
        }
        model.policies[p.key()] = p;
    }
    if (n > 0) {
        // The allowed path: one ALLOW that lets prod in, sorted last.
        AuthzPolicy last;
        last.name = "zz-allow-prod";
        last.namespace_ = "istio-system";
        AuthzRule rule;
        AuthzClause clause;
        AuthzMatch m;
        m.namespaces.push_back({StringMatch::Kind::kExact, "prod"});
        clause.matches.push_back(m);
        rule.clauses.push_back(clause);
        last.rules.push_back(rule);
        model.policies[last.key()] = last;
    }
    return model;
}

}  // namespace

TEST_CASE("authz scale: 1,000 policies x 10 rules compile and load with default sizes") {
    auto table = kmesh::test::authz::load_table(KMESH_SOURCE_DIR "/test/authz/decision_table.json");
    Probe probe;
    Model model = scale_model(table, 1000);
    auto t0 = std::chrono::steady_clock::now();
    auto compiled = compile_authz(model, table.node, probe.writer->identities());
    auto t1 = std::chrono::steady_clock::now();
    REQUIRE_MESSAGE(compiled.is_ok(), compiled.status().to_string());
    Status st = probe.writer->publish(*compiled);
    auto t2 = std::chrono::steady_clock::now();
    REQUIRE_MESSAGE(st.is_ok(), st.to_string());
    CHECK(compiled->tables.policies.size() == 1001);
    CHECK(compiled->tables.rows.size() >= 1000 * 10 * 3);
    auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
    MESSAGE(fmt::format(
        "1000x10: {} rows, {} idset, {} cidr, {} port entries; compile {:.1f} ms, publish {:.1f} ms",
        compiled->tables.rows.size(), compiled->tables.idset.size(), compiled->tables.cidrs.size(),
        compiled->tables.ports.size(), ms(t0, t1), ms(t1, t2)));
    auto ctx = Probe::ctx_of(*IpAddr::parse("10.0.0.1"), *IpAddr::parse("10.0.1.1"), 80, false);
    CHECK(probe.run(ctx) == kSkPass);
    auto ctx_dev = Probe::ctx_of(*IpAddr::parse("10.0.0.2"), *IpAddr::parse("10.0.1.1"), 80, false);
    CHECK(probe.run(ctx_dev) == kSkDrop);
    // A republish of the same model writes nothing and keeps the generation.
    uint64_t state = probe.writer->state();
    auto again = compile_authz(model, table.node, probe.writer->identities());
    auto t3 = std::chrono::steady_clock::now();
    REQUIRE(probe.writer->publish(*again).is_ok());
    auto t4 = std::chrono::steady_clock::now();
    CHECK(probe.writer->state() == state);
    MESSAGE(fmt::format("1000x10 unchanged republish: {:.1f} ms", ms(t3, t4)));
    // One policy changed: only its rows differ, and the flip happens.
    model.policies.erase("istio-system/p0500");
    auto changed = compile_authz(model, table.node, probe.writer->identities());
    auto t5 = std::chrono::steady_clock::now();
    REQUIRE(probe.writer->publish(*changed).is_ok());
    auto t6 = std::chrono::steady_clock::now();
    CHECK(probe.writer->state() != state);
    CHECK(probe.run(ctx) == kSkPass);
    MESSAGE(fmt::format("1000x10 with one policy removed: publish {:.1f} ms", ms(t5, t6)));
}

TEST_CASE("authz bench: cold and cached decision time for N policies applying to the destination" *
          doctest::skip(getenv("KMESH_AUTHZ_BENCH") == nullptr)) {
    auto table = kmesh::test::authz::load_table(KMESH_SOURCE_DIR "/test/authz/decision_table.json");
    for (int n : {0, 100, 1000}) {
        Probe probe;
        probe.publish(scale_model(table, n), table.node);
        auto ctx = Probe::ctx_of(*IpAddr::parse("10.0.0.1"), *IpAddr::parse("10.0.1.1"), 80, false);
        // Cold: the cache is emptied before every run.
        uint64_t cold_total = 0;
        const int cold_runs = 200;
        for (int i = 0; i < cold_runs; i++) {
            probe.drop_cache();
            uint32_t ns = 0;
            CHECK(probe.run(ctx, 1, &ns) == kSkPass);
            cold_total += ns;
        }
        uint32_t cached_ns = 0;
        CHECK(probe.run(ctx, 100000, &cached_ns) == kSkPass);
        MESSAGE(fmt::format("N={:4}: cold {:8.0f} ns/decision, cached {:4} ns/decision", n,
                            static_cast<double>(cold_total) / cold_runs, cached_ns));
    }
}
