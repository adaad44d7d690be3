// kmeshctl (docs/kmeshctl.md): table and JSON rendering, doctor's checks that need no kernel
// (against fixture directories and mount tables), and the admin views it reads (/debug/loglevel
// parsing, /debug/waypoints, /debug/authz).
#include <doctest/doctest.h>
#include <rapidjson/document.h>
#include <sys/stat.h>

#include <fstream>

#include "agent/src/admin/authz_view.hpp"
#include "agent/src/admin/ops_view.hpp"
#include "agent/src/dataplane/dataplane_state.hpp"
#include "agent/src/sources/file/config_file.hpp"
#include "ctl/doctor.hpp"
#include "ctl/render.hpp"
#include "model_builders.hpp"
#include "temp_dir.hpp"

using namespace kmesh;
using namespace kmesh::ctl;

namespace {

void write(const std::filesystem::path& p, const std::string& text, mode_t mode = 0644) {
    std::ofstream(p) << text;
    chmod(p.c_str(), mode);
}

rapidjson::Document json(const std::string& s) {
    rapidjson::Document d;
    d.Parse(s.c_str());
    REQUIRE_FALSE(d.HasParseError());
    return d;
}

const char* kBridge = R"({"type":"bridge","bridge":"cni0","ipam":{"type":"host-local"}})";

}  // namespace

TEST_CASE("kmeshctl render: columns padded to the widest cell, upper-case headers, no trailing blanks") {
    Table t{{"check", "status", "detail"},
            {{"bpffs", "ok", "mounted at /sys/fs/bpf"}, {"cni binary installed", "fail", "x"}}};
    CHECK(render_table(t) ==
          "CHECK                 STATUS  DETAIL\n"
          "bpffs                 ok      mounted at /sys/fs/bpf\n"
          "cni binary installed  fail    x\n");
    // A short row leaves its cells empty; multi-byte characters count once.
    Table u{{"a", "b"}, {{"é"}, {"xy", "z"}}};
    CHECK(render_table(u) == "A   B\né\nxy  z\n");
    CHECK(parse_output("json") == Output::kJson);
    CHECK(parse_output("table") == Output::kTable);
    CHECK_FALSE(parse_output("yaml"));
    CHECK(json_quote("a\"b\n") == R"("a\"b\n")");
    CHECK(json_pretty("{\"a\":[1]}") == "{\n  \"a\": [\n    1\n  ]\n}\n");
    CHECK_FALSE(json_pretty("{"));
}

TEST_CASE("kmeshctl doctor: table and JSON of the checks; healthy means no fail") {
    std::vector<Check> checks = {{"bpffs", CheckStatus::kOk, "mounted at /b", ""},
                                 {"helpers", CheckStatus::kWarn, "optional missing", "newer kernel"}};
    CHECK(healthy(checks));
    CHECK(doctor_table(checks) ==
          "CHECK    STATUS  DETAIL\n"
          "bpffs    ok      mounted at /b\n"
          "helpers  warn    optional missing; fix: newer kernel\n");
    checks.push_back({"cni \"x\"", CheckStatus::kFail, "gone", "install it"});
    CHECK_FALSE(healthy(checks));
    auto d = json(doctor_json(checks));
    CHECK(d["healthy"].IsFalse());
    REQUIRE(d["checks"].Size() == 3);
    CHECK(std::string(d["checks"][2]["check"].GetString()) == "cni \"x\"");
    CHECK(std::string(d["checks"][2]["status"].GetString()) == "fail");
    CHECK(std::string(d["checks"][2]["fix"].GetString()) == "install it");
    CHECK_FALSE(d["checks"][0].HasMember("fix"));
}

TEST_CASE("kmeshctl doctor: the CNI config the runtime reads must chain kmesh-cni") {
    test::TempDir dir;
    const std::string conf = dir.path().string();
    SUBCASE("chained as the last plugin: ok") {
        write(dir.path() / "10-net.conflist",
              std::string(R"({"cniVersion":"1.0.0","name":"net","plugins":[)") + kBridge +
                  R"(,{"type":"kmesh-cni"}]})");
        Check c = check_cni_config(conf);
        CHECK(c.status == CheckStatus::kOk);
        CHECK(c.detail == conf + "/10-net.conflist chains kmesh-cni (plugin 2 of 2)");
    }
    SUBCASE("not chained: fail, in one sentence with the fix") {
        write(dir.path() / "10-net.conflist",
              std::string(R"({"cniVersion":"1.0.0","name":"net","plugins":[)") + kBridge + "]}");
        // A later file that is chained does not count: the runtime reads the first.
        write(dir.path() / "20-other.conflist",
              std::string(R"({"name":"o","plugins":[)") + kBridge + R"(,{"type":"kmesh-cni"}]})");
        Check c = check_cni_config(conf);
        CHECK(c.status == CheckStatus::kFail);
        CHECK(c.detail ==
              conf +
                  "/10-net.conflist, the config the runtime reads, does not chain kmesh-cni, so new "
                  "pods are not enrolled");
        CHECK(c.fix.find("--install-cni") != std::string::npos);
    }
    SUBCASE("an unloadable first file is skipped, as the runtime skips it") {
        write(dir.path() / "00-broken.conflist", "{not json");
        write(dir.path() / "10-net.conflist",
              std::string(R"({"name":"net","plugins":[)") + kBridge + R"(,{"type":"kmesh-cni"}]})");
        Check c = check_cni_config(conf);
        CHECK(c.status == CheckStatus::kOk);
        CHECK(c.detail.find("10-net.conflist chains kmesh-cni") != std::string::npos);
        CHECK(c.detail.find("skipped as unloadable: 00-broken.conflist") != std::string::npos);
    }
    SUBCASE("kmesh-cni not last: warn") {
        write(dir.path() / "10-net.conflist",
              std::string(R"({"name":"net","plugins":[{"type":"kmesh-cni"},)") + kBridge + "]}");
        CHECK(check_cni_config(conf).status == CheckStatus::kWarn);
    }
    SUBCASE("a single-plugin .conf: fail") {
        write(dir.path() / "10-net.conf", R"({"cniVersion":"0.4.0","name":"net","type":"bridge"})");
        Check c = check_cni_config(conf);
        CHECK(c.status == CheckStatus::kFail);
        CHECK(c.detail.find("single plugin without kmesh-cni") != std::string::npos);
    }
    SUBCASE("no config at all, or no directory: fail") {
        write(dir.path() / "README", "not a config");
        CHECK(check_cni_config(conf).status == CheckStatus::kFail);
        CHECK(check_cni_config(conf).detail.find("no loadable CNI config in " + conf) == 0);
        Check c = check_cni_config(conf + "/missing");
        CHECK(c.status == CheckStatus::kFail);
        CHECK(c.detail.find("cannot read the CNI config dir") == 0);
    }
}

TEST_CASE("kmeshctl doctor: kmesh-cni must be an executable file in a CNI bin dir") {
    test::TempDir dir;
    auto a = dir.mkdirs("a"), b = dir.mkdirs("b");
    const std::string dirs = a.string() + ":" + b.string();
    Check missing = check_cni_binary(dirs);
    CHECK(missing.status == CheckStatus::kFail);
    CHECK(missing.detail == "kmesh-cni is not in the CNI bin dir " + dirs +
                                ", so the runtime fails every pod ADD that chains it");
    write(b / "kmesh-cni", "#!/bin/sh\n", 0644);
    Check noexec = check_cni_binary(dirs);
    CHECK(noexec.status == CheckStatus::kFail);
    CHECK(noexec.detail.find("is not executable (mode 0644)") != std::string::npos);
    CHECK(noexec.fix == "chmod 0755 " + (b / "kmesh-cni").string() + " (the installer writes it 0755)");
    chmod((b / "kmesh-cni").c_str(), 0755);
    Check good = check_cni_binary(dirs);
    CHECK(good.status == CheckStatus::kOk);
    CHECK(good.detail.find((b / "kmesh-cni").string()) == 0);
}

TEST_CASE("kmeshctl doctor: cgroup v2 found in unified and hybrid layouts, refused when absent") {
    // This machine's shape: v1 controllers under a tmpfs, v2 at /sys/fs/cgroup/unified.
    const char* hybrid =
        "30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
        "34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
    CgroupMounts h = parse_cgroup_mounts(hybrid);
    REQUIRE(h.v2);
    CHECK(*h.v2 == "/sys/fs/cgroup/unified");
    CHECK(h.v1 == std::vector<std::string>{"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/memory"});
    Check c = check_cgroup2(h, "", false);
    CHECK(c.status == CheckStatus::kOk);
    CHECK(
        c.detail ==
        "mounted at /sys/fs/cgroup/unified (hybrid layout: 2 cgroup v1 controller mount(s) beside it, fine)");

    CgroupMounts u =
        parse_cgroup_mounts("25 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n");
    CHECK(check_cgroup2(u, "", false).detail == "mounted at /sys/fs/cgroup (unified layout)");
    CHECK(check_cgroup2(u, "/sys/fs/cgroup/kubepods", true).status == CheckStatus::kOk);
    Check wrong_root = check_cgroup2(u, "/tmp/x", false);
    CHECK(wrong_root.status == CheckStatus::kFail);
    CHECK(wrong_root.detail.find("--cgroup-root /tmp/x is not on the cgroup v2 hierarchy") == 0);

    CgroupMounts none = parse_cgroup_mounts("31 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n");
    CHECK_FALSE(none.v2);
    Check n = check_cgroup2(none, "", false);
    CHECK(n.status == CheckStatus::kFail);
    CHECK(n.fix.find("mount -t cgroup2") != std::string::npos);
}

TEST_CASE("kmeshctl doctor: pinned map layout against the programs' own") {
    std::map<std::string, MapShape> want = {{"km_frontend", {1, 20, 8}}, {"km_stats", {6, 4, 8}}};
    std::map<std::string, std::optional<MapShape>> have = {{"km_frontend", MapShape{1, 20, 8}},
                                                           {"km_stats", MapShape{6, 4, 8}}};
    CHECK(compare_map_layout(want, have, "/b/kmesh/maps/v6").status == CheckStatus::kOk);
    have["km_stats"] = std::nullopt;
    Check missing = compare_map_layout(want, have, "/b/kmesh/maps/v6");
    CHECK(missing.status == CheckStatus::kFail);
    CHECK(missing.detail == "1 of 2 maps are not pinned in /b/kmesh/maps/v6: km_stats");
    have["km_stats"] = MapShape{6, 4, 16};
    Check differ = compare_map_layout(want, have, "/b");
    CHECK(differ.status == CheckStatus::kFail);
    CHECK(differ.detail.find("km_stats (type/key/value 6/4/16, expected 6/4/8)") != std::string::npos);
}

TEST_CASE("admin /debug/loglevel: level names as --log-level takes them, nothing else") {
    CHECK(admin::parse_log_level("debug") == spdlog::level::debug);
    CHECK(admin::parse_log_level("warning") == spdlog::level::warn);
    CHECK(admin::parse_log_level("error") == spdlog::level::err);
    CHECK(admin::parse_log_level("off") == spdlog::level::off);
    // spdlog::level::from_str would turn these into "off": silence by typo.
    CHECK_FALSE(admin::parse_log_level("verbose"));
    CHECK_FALSE(admin::parse_log_level("DEBUG"));
    CHECK_FALSE(admin::parse_log_level(""));
}

TEST_CASE("admin /debug/waypoints: the kernel tables as the writer builds them, with their users") {
    Model m;
    Service echo = test::service("echo", {"10.96.0.10", "fd00:96::10"});
    Waypoint host;
    host.hostname = "default/waypoint.default.svc.cluster.local";
    host.port = 15008;
    echo.waypoint = host;
    test::add(m, echo);
    test::add(m, test::service("waypoint", {"10.96.0.50"}, {{15019, 15019}}));
    test::add(m, test::workload("wp", {"10.244.0.9"}, {"waypoint"}));
    Workload w1 = test::workload("w1", {"10.244.0.21", "fd00:10:244::21"}, {});
    Waypoint addr;
    addr.address = *IpAddr::parse("10.244.0.9");
    w1.waypoint = Waypoint::intern(addr);
    test::add(m, w1);
    // The kernel side: what the map writer's desired state holds (an independent computation of
    // the ids and destinations), plus counters.
    DesiredState desired = build_desired(m);
    admin::WaypointKernelView k;
    k.waypoints = desired.waypoints;
    k.dests = desired.waypoint_dests;
    k.stats[KMESH_WP_STAT_SELF] = 3;
    k.stats[KMESH_WP_STAT_FROM_WAYPOINT] = 4;
    k.stats[KMESH_WP_STAT_REDIRECTED] = 9;
    k.stats_read = true;
    auto d = json(admin::waypoints_json(m, k));
    std::map<std::string, const rapidjson::Value*> by_name;
    for (const auto& w : d["waypoints"].GetArray()) by_name[w["name"].GetString()] = &w;
    REQUIRE(by_name.size() == 2);  // one entry per waypoint: the model's names found the kernel's ids
    const auto& h = *by_name.at("hostname/default/waypoint.default.svc.cluster.local");
    CHECK(h["in_kernel"].IsTrue());
    CHECK(std::string(h["addresses"][0].GetString()) == "10.96.0.50");
    CHECK(h["port"].GetUint() == 15019);
    CHECK(std::string(h["services"][0].GetString()) == "default/echo.default.svc.cluster.local");
    CHECK(h["kernel_destinations"]["service_vips"].GetUint64() == 2);
    CHECK(h["kernel_destinations"]["workload_addresses"].GetUint64() == 0);
    const auto& a = *by_name.at("address/10.244.0.9");
    CHECK(a["in_kernel"].IsTrue());
    CHECK(std::string(a["workloads"][0].GetString()) == "Kubernetes//Pod/default/w1");
    CHECK(a["kernel_destinations"]["workload_addresses"].GetUint64() == 2);
    CHECK(d["loop_guard"]["self"].GetUint64() == 3);
    CHECK(d["loop_guard"]["from_waypoint"].GetUint64() == 4);
    CHECK(d["counters"]["redirected"].GetUint64() == 9);
    CHECK(d["counters"].MemberCount() == KMESH_WP_STAT_MAX);

    // A waypoint the kernel still holds that the model no longer names shows as unknown.
    m.services.erase(echo.key());
    auto d2 = json(admin::waypoints_json(m, k));
    bool unknown = false;
    for (const auto& w : d2["waypoints"].GetArray())
        unknown |= std::string(w["name"].GetString()).rfind("unknown:", 0) == 0 && w["in_kernel"].IsTrue();
    CHECK(unknown);
}

TEST_CASE("admin /debug/authz: publish state and per-policy hits, in_kernel from the published set") {
    auto r = parse_config_yaml(R"(
policies:
- {name: deny-foo, namespace: default, scope: NAMESPACE, action: DENY, rules: [{clauses: [{matches: [{namespaces: [{exact: foo}]}]}]}]}
- {name: new-one, namespace: default, rules: [{}]}
)");
    REQUIRE(std::holds_alternative<Model>(r));
    const Model& m = std::get<Model>(r);
    policy::AuthzReport rep;
    rep.policies["default/deny-foo"] = {7, 0, 2};
    rep.totals.denied_by_policy = 7;
    admin::AuthzPublishState st;
    st.published = false;
    st.last_error = "map km_authz_row is full";
    st.publishes = 4;
    st.failures = 1;
    st.map_full = 1;
    st.state = (5 << 1) | 1;
    st.kernel_policies = {"default/deny-foo"};
    auto d = json(admin::authz_status_json(m, rep, st));
    CHECK(d["publish"]["published"].IsFalse());
    CHECK(std::string(d["publish"]["last_error"].GetString()) == "map km_authz_row is full");
    CHECK(d["publish"]["active_generation"].GetUint64() == 1);
    CHECK(d["publish"]["epoch"].GetUint64() == 5);
    CHECK(d["publish"]["kernel_policies"].GetUint64() == 1);
    REQUIRE(d["policies"].Size() == 2);
    for (const auto& p : d["policies"].GetArray()) {
        std::string name = p["name"].GetString();
        CHECK(p["in_kernel"].GetBool() == (name == "deny-foo"));
        CHECK(p["hits"]["matched"].GetUint64() == (name == "deny-foo" ? 7u : 0u));
    }
    CHECK(d["authz_totals"]["denied_by_policy"].GetUint64() == 7);
}
