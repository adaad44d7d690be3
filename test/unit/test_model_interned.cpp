// The model's compact types (agent/src/model/interned.hpp, WorkloadServices in model.hpp) against
// the standard containers they replace: std::string for InternedString (equality, order, content),
// std::map<std::string, std::vector<ServicePort>> for WorkloadServices, driven by the same random
// sequence of operations. The pool must give an entry back when its last holder goes, including
// when threads copy and drop the same strings concurrently (run under ASan in CI).
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "agent/src/model/model.hpp"
#include "agent/src/sources/xds/versions.hpp"

using namespace kmesh;

namespace {

// A prefix no other test interns, so that the pool's size can be counted around these tests.
std::string word(std::mt19937& rng, int distinct) {
    std::uniform_int_distribution<int> d(0, distinct - 1);
    int n = d(rng);
    // Strings of two lengths, and the empty one.
    if (n == 0) return "";
    return n % 3 ? fmt::format("zz-interned-test/{}", n)
                 : fmt::format("zz-interned-test/a-rather-long-service-name-{}.ns.svc.cluster.local", n);
}

}  // namespace

TEST_CASE("interned strings compare, order and read as the std::strings they hold") {
    std::mt19937 rng(7);
    std::vector<std::string> plain;
    std::vector<InternedString> interned;
    for (int i = 0; i < 300; i++) {
        plain.push_back(word(rng, 40));
        interned.emplace_back(plain.back());
    }
    for (size_t i = 0; i < plain.size(); i++) {
        CHECK(interned[i].str() == plain[i]);
        CHECK(interned[i].size() == plain[i].size());
        CHECK(interned[i].empty() == plain[i].empty());
        CHECK(interned[i] == plain[i]);
        CHECK(interned[i] == std::string_view(plain[i]));
        CHECK(fmt::format("{}", interned[i]) == plain[i]);
        std::ostringstream os;
        os << interned[i];
        CHECK(os.str() == plain[i]);
        CHECK("<" + interned[i] + ">" == "<" + plain[i] + ">");
        for (size_t j = 0; j < plain.size(); j += 7) {
            CHECK((interned[i] == interned[j]) == (plain[i] == plain[j]));
            CHECK((interned[i] < interned[j]) == (plain[i] < plain[j]));
            CHECK((interned[i] < plain[j]) == (plain[i] < plain[j]));
        }
    }
    // Sorted as std::string sorts.
    std::vector<InternedString> sorted = interned;
    std::sort(sorted.begin(), sorted.end());
    std::sort(plain.begin(), plain.end());
    for (size_t i = 0; i < plain.size(); i++) CHECK(sorted[i] == plain[i]);
}

TEST_CASE("an interned string is stored once and goes with its last holder") {
    size_t base = InternedString::pool_size();
    {
        InternedString a("zz-interned-test/once");
        InternedString b(std::string("zz-interned-test/once"));
        InternedString c = a;
        InternedString empty("");
        CHECK(InternedString::pool_size() == base + 1);  // "" is no entry
        CHECK(a.refs() == 3);
        CHECK(a.data() == b.data());  // one copy of the characters
        CHECK(empty.empty());
        CHECK(empty == InternedString());
        InternedString moved = std::move(b);
        CHECK(a.refs() == 3);
        c = "zz-interned-test/other";
        CHECK(a.refs() == 2);
        CHECK(InternedString::pool_size() == base + 2);
        const InternedString& self = c;
        c = self;  // self-assignment keeps it
        CHECK(c == "zz-interned-test/other");
    }
    CHECK(InternedString::pool_size() == base);
}

TEST_CASE("interned strings copied and dropped from several threads leave the pool as it was") {
    size_t base = InternedString::pool_size();
    std::vector<std::thread> threads;
    std::atomic<int> wrong{0};
    for (int t = 0; t < 4; t++)
        threads.emplace_back([t, &wrong] {
            std::mt19937 rng(t);
            std::vector<InternedString> held;
            for (int i = 0; i < 20000; i++) {
                std::string w = word(rng, 12);
                InternedString s(w);
                if (!(s == w) || s.str() != w) wrong++;
                if (i % 3 == 0) held.push_back(s);
                if (held.size() > 8) held.erase(held.begin() + static_cast<long>(rng() % held.size()));
            }
        });
    for (auto& th : threads) th.join();
    CHECK(wrong.load() == 0);
    CHECK(InternedString::pool_size() == base);
}

TEST_CASE("WorkloadServices behaves as std::map<std::string, std::vector<ServicePort>>") {
    std::mt19937 rng(11);
    WorkloadServices flat;
    std::map<std::string, std::vector<ServicePort>> oracle;
    std::uniform_int_distribution<int> op(0, 9), port(1, 5);
    for (int step = 0; step < 3000; step++) {
        std::string key = word(rng, 25);
        switch (op(rng)) {
            case 0:
            case 1:
            case 2: {  // operator[] inserts or updates
                ServicePort p{static_cast<uint16_t>(port(rng)), static_cast<uint16_t>(port(rng) * 1000)};
                flat[key].push_back(p);
                oracle[key].push_back(p);
                break;
            }
            case 3:
                CHECK(flat.erase(key) == oracle.erase(key));
                break;
            case 4: {  // by interned key
                InternedString k(key);
                flat[k];
                oracle[key];
                break;
            }
            case 5:
                if (step % 50 == 0) {
                    flat.clear();
                    oracle.clear();
                }
                break;
            default: {
                CHECK(flat.count(key) == oracle.count(key));
                auto f = flat.find(key);
                auto o = oracle.find(key);
                REQUIRE((f == flat.end()) == (o == oracle.end()));
                if (o != oracle.end()) CHECK(f->second == o->second);
                CHECK(flat.find(InternedString(key)) == f);
            }
        }
        REQUIRE(flat.size() == oracle.size());
        auto o = oracle.begin();
        for (const auto& [k, ports] : flat) {  // same keys in the same order, same ports
            CHECK(k == o->first);
            CHECK(ports == o->second);
            ++o;
        }
    }
    // Copies compare equal; a changed port makes them differ.
    WorkloadServices copy = flat;
    CHECK(copy == flat);
    copy["zz-interned-test/extra"];
    CHECK_FALSE(copy == flat);
}

TEST_CASE("a Workload with interned fields equals one built from the same strings") {
    Workload a, b;
    a.namespace_ = std::string("zz-ns");
    b.namespace_ = "zz-ns";
    a.trust_domain = b.trust_domain = "zz.example";
    a.service_account = std::string_view("zz-sa");
    b.service_account = "zz-sa";
    a.services = {{"zz-ns/svc", {{80, 8080}}}};
    b.services["zz-ns/svc"].push_back({80, 8080});
    CHECK(a == b);
    b.service_account = "zz-sa2";
    CHECK_FALSE(a == b);
    // The interned fields are a pointer each; the first address and the first service entry are
    // inline (216: no heap block for them in the common case).
    CHECK(sizeof(Workload) <= 216);
    CHECK(a.services.size() == 1);
    Workload c = a;
    c.addresses = {*IpAddr::parse("10.0.0.1")};
    CHECK(c.addresses.capacity() == 1);  // inline: no heap block
    c.addresses.push_back(*IpAddr::parse("fd00::1"));
    CHECK(c.addresses[1] == *IpAddr::parse("fd00::1"));
}

TEST_CASE("the xDS version table gives back every version as it was set (std::map oracle)") {
    std::mt19937_64 rng(5);
    xds::VersionTable table;
    std::map<uint64_t, std::string> oracle;
    auto version = [&]() -> std::string {
        switch (rng() % 6) {
            case 0:
                return "";
            case 1:
                return "v" + std::to_string(rng() % 100);
            case 2:  // 16 hex digits, but upper case: kept as text
                return fmt::format("{:016X}", rng());
            case 3:  // 15 or 17 digits
                return fmt::format("{:015x}", rng() >> 4);
            default:  // a 64-bit hash, leading zeros included
                return fmt::format("{:016x}", rng() >> (rng() % 64));
        }
    };
    for (int step = 0; step < 5000; step++) {
        uint64_t name = rng() % 300;
        if (rng() % 4 == 0) {
            table.erase(name);
            oracle.erase(name);
        } else {
            std::string v = version();
            table.set(name, v);
            oracle[name] = v;
        }
        REQUIRE(table.size() == oracle.size());
        for (uint64_t n = name; n < name + 3; n++) {
            auto got = table.get(n);
            auto want = oracle.find(n);
            REQUIRE(got.has_value() == (want != oracle.end()));
            if (got) CHECK(*got == want->second);
        }
    }
    for (const auto& [n, v] : oracle) CHECK(table.get(n) == v);
    CHECK(xds::VersionTable::pack("00000000000000ff") == 255u);
    CHECK_FALSE(xds::VersionTable::pack("00000000000000FF").has_value());
}
