// What the agent reports about its build: the program digest of the embedded BPF object, the
// /version document and the kmesh_build_info metric. (Against sha256sum and bpftool on a real
// kernel: test/e2e/e2e_zero_loss.sh.)
#include <doctest/doctest.h>
#include <rapidjson/document.h>

#include <algorithm>
#include <fstream>

#include "agent/src/admin/version_view.hpp"
#include "temp_dir.hpp"

using namespace kmesh;

TEST_CASE("program build: a SHA-256 of the embedded object, stable across calls") {
    const ProgramBuild& b = program_build();
    CHECK(b.sha256.size() == 64);
    CHECK(std::all_of(b.sha256.begin(), b.sha256.end(),
                      [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }));
    CHECK(b.object_bytes > 1000);
    CHECK(b.short_id() == b.sha256.substr(0, 12));
    CHECK(&program_build() == &b);
    CHECK_FALSE(b.test_variant);  // the unit tests link the regular build
    std::string text = version_text("kmesh-daemon");
    CHECK(text.find("kmesh-daemon " KMESH_VERSION "\n") == 0);
    CHECK(text.find("programs: sha256:" + b.sha256) != std::string::npos);
    CHECK(text.find("map layout: v" + std::to_string(KMESH_ABI_VERSION)) != std::string::npos);
}

TEST_CASE("/version document and kmesh_build_info") {
    admin::VersionInfo v;
    v.build.sha256 = std::string(60, 'a') + "beef";
    v.build.object_bytes = 4242;
    v.programs = {{"cgroup_connect4", 17, "0123456789abcdef"}, {"cgroup_connect6", 18, "fedcba9876543210"}};
    v.abi = 5;
    v.maps_version = 99;
    v.maps_dir = "/sys/fs/bpf/kmesh/maps/v99";
    v.published = true;
    v.pod_links = {8, 6};

    rapidjson::Document d;
    d.Parse(admin::version_json(v).c_str());
    REQUIRE_FALSE(d.HasParseError());
    CHECK(std::string(d["version"].GetString()) == KMESH_VERSION);
    CHECK(std::string(d["programs"]["sha256"].GetString()) == v.build.sha256);
    CHECK(d["programs"]["object_bytes"].GetUint64() == 4242);
    CHECK_FALSE(d["programs"]["test_variant"].GetBool());
    REQUIRE(d["programs"]["loaded"].Size() == 2);
    CHECK(std::string(d["programs"]["loaded"][1]["name"].GetString()) == "cgroup_connect6");
    CHECK(d["programs"]["loaded"][1]["id"].GetUint() == 18);
    CHECK(std::string(d["programs"]["loaded"][1]["tag"].GetString()) == "fedcba9876543210");
    CHECK(d["maps"]["abi"].GetUint() == 5);
    CHECK(d["maps"]["version"].GetUint() == 99);
    CHECK(std::string(d["maps"]["dir"].GetString()) == v.maps_dir);
    CHECK(d["published"].GetBool());
    CHECK(d["pod_links"]["total"].GetInt() == 8);
    CHECK(d["pod_links"]["on_loaded_programs"].GetInt() == 6);

    std::string metric = admin::build_info_metric(v);
    CHECK(metric.find("# TYPE kmesh_build_info gauge\n") != std::string::npos);
    CHECK(metric.find("kmesh_build_info{version=\"" KMESH_VERSION
                      "\",abi=\"5\",maps_version=\"99\",programs=\"aaaaaaaaaaaa\"} 1\n") !=
          std::string::npos);
}

TEST_CASE("pod link count: files that are not links and missing directories count nothing") {
    test::TempDir tmp;
    auto pod = tmp.mkdirs("pods/ctr-1");
    tmp.mkdirs("pods/ctr-1/net_kmbr0");
    std::ofstream(pod / "cgroup_connect4") << "not a bpffs pin";
    auto count = admin::count_pod_links((tmp.path() / "pods").string(), {1, 2});
    CHECK(count.total == 0);
    CHECK(count.on_loaded == 0);
    count = admin::count_pod_links((tmp.path() / "missing").string(), {1});
    CHECK(count.total == 0);
}
