// load_config_file's reading side: what it refuses to open or read, and why it says so.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "agent/src/sources/file/config_file.hpp"
#include "temp_dir.hpp"

using namespace kmesh;
namespace fs = std::filesystem;

namespace {

std::string error_of(const std::variant<Model, ConfigError>& r) {
    return std::holds_alternative<ConfigError>(r) ? std::get<ConfigError>(r).summary() : "";
}

const char* kMesh = "services: []\nworkloads: []\n";

}  // namespace

TEST_CASE("a config FIFO is refused at once instead of blocking the agent in open()") {
    test::TempDir dir;
    std::string fifo = (dir.path() / "mesh.yaml").string();
    REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
    // With no writer, a blocking open() would never return: run it where a hang can be detected.
    // A detached thread, not std::async: a future's destructor would wait for a hung open().
    auto done = std::make_shared<std::promise<std::string>>();
    auto result = done->get_future();
    std::thread([done, fifo] { done->set_value(error_of(load_config_file(fifo))); }).detach();
    REQUIRE(result.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
    std::string err = result.get();
    CHECK(err.find("is a FIFO") != std::string::npos);
    CHECK(err.find("regular file") != std::string::npos);
}

TEST_CASE("a symlink to /dev/zero is refused, not read until memory runs out") {
    test::TempDir dir;
    fs::create_symlink("/dev/zero", dir.path() / "mesh.yaml");
    std::string err = error_of(load_config_file((dir.path() / "mesh.yaml").string()));
    CHECK(err.find("is a character device") != std::string::npos);
}

TEST_CASE("a symlink to a regular file is followed") {
    test::TempDir dir;
    std::ofstream(dir.path() / "real.yaml") << kMesh;
    fs::create_symlink("real.yaml", dir.path() / "mesh.yaml");
    FileStamp stamp;
    auto r = load_config_file((dir.path() / "mesh.yaml").string(), {}, &stamp);
    CHECK(std::holds_alternative<Model>(r));
    struct stat st {};
    REQUIRE(stat((dir.path() / "real.yaml").c_str(), &st) == 0);
    CHECK(stamp.ino == st.st_ino);
    CHECK(stamp.size == static_cast<uint64_t>(st.st_size));
}

TEST_CASE("a file over the size limit is refused before it is read, naming the flag") {
    test::TempDir dir;
    std::string path = (dir.path() / "mesh.yaml").string();
    std::ofstream(path) << kMesh << std::string(200, '#') << "\n";
    std::string err = error_of(load_config_file(path, {.max_bytes = 100}));
    CHECK(err.find("exceed the limit of 100 bytes") != std::string::npos);
    CHECK(err.find("--max-config-bytes") != std::string::npos);
    CHECK(std::holds_alternative<Model>(load_config_file(path, {.max_bytes = 1000})));
}

TEST_CASE("a directory is reported as a directory, not as an empty config") {
    test::TempDir dir;
    std::string err = error_of(load_config_file(dir.mkdirs("mesh.yaml").string()));
    CHECK(err.find("is a directory") != std::string::npos);
    CHECK(err.find("empty") == std::string::npos);
}

TEST_CASE("a symlink loop and a missing file say why they cannot be read") {
    test::TempDir dir;
    fs::create_symlink("b", dir.path() / "a");
    fs::create_symlink("a", dir.path() / "b");
    CHECK(error_of(load_config_file((dir.path() / "a").string())).find(std::strerror(ELOOP)) !=
          std::string::npos);
    CHECK(error_of(load_config_file((dir.path() / "missing").string())).find(std::strerror(ENOENT)) !=
          std::string::npos);
}

TEST_CASE("stat_config_file: the stamp changes with the content, not with a re-stat") {
    test::TempDir dir;
    std::string path = (dir.path() / "mesh.yaml").string();
    std::ofstream(path) << kMesh;
    FileStamp a, b, c;
    REQUIRE(stat_config_file(path, &a).empty());
    REQUIRE(stat_config_file(path, &b).empty());
    CHECK(a == b);
    std::ofstream((dir.path() / "new.yaml").string()) << kMesh << "# changed\n";
    fs::rename(dir.path() / "new.yaml", path);
    REQUIRE(stat_config_file(path, &c).empty());
    CHECK_FALSE(a == c);
}

TEST_CASE("services are counted from the YAML events, block and flow style alike") {
    CHECK(count_config_services(
              "services:\n- {name: a}\n- name: b\n  ports: [{service_port: 1}]\nworkloads: []\n") == 2);
    CHECK(count_config_services(
              "workloads: [{uid: x, services: {a: }}]\nservices: [{name: a}, {name: b}, c]\n") == 3);
    CHECK(count_config_services("services: []\n") == 0);
    CHECK(count_config_services("workloads: []\n") == -1);
    CHECK(count_config_services("- services\n") == -1);
    CHECK(count_config_services("services: [\n") == -1);  // syntax error: the full parser reports it
}

TEST_CASE("a file with more services than the limit is refused before it is parsed into a model") {
    test::TempDir dir;
    std::string path = (dir.path() / "mesh.yaml").string();
    std::ofstream(path) << "services:\n- {name: a}\n- {name: b}\n- {name: c}\nworkloads: []\n";
    CHECK(error_of(load_config_file(path, {.max_services = 2})) == "3 services exceed --max-services 2");
    // Within the limit the full parser runs (and finds these services incomplete).
    CHECK(error_of(load_config_file(path, {.max_services = 3})).find("exceed") == std::string::npos);
}

TEST_CASE("a file with more workloads than backend entries is refused before it is parsed into a model") {
    CHECK(count_config_entries("services: []\nworkloads:\n- {uid: a}\n- uid: b\n", "workloads") == 2);
    CHECK(count_config_entries("services: [{name: a, workloads: [x, y, z]}]\n", "workloads") == -1);
    test::TempDir dir;
    std::string path = (dir.path() / "mesh.yaml").string();
    std::ofstream(path) << "services: []\nworkloads:\n- {uid: a}\n- {uid: b}\n- {uid: c}\n";
    CHECK(error_of(load_config_file(path, {.max_workloads = 2})) == "3 workloads exceed --max-backends 2");
    CHECK(std::holds_alternative<Model>(load_config_file(path, {.max_workloads = 3})));
}

// JSON configs (issue 12): the same schema through RapidJSON's reader, much faster than libyaml.
TEST_CASE("a JSON config gives the model its YAML twin gives, and says it was JSON") {
    const char* yaml =
        "services:\n"
        "- {name: echo, namespace: default, hostname: echo.default.svc.cluster.local,\n"
        "   addresses: [\"10.96.0.10\", \"fd00::10\"], ports: [{service_port: 80, target_port: 8080}],\n"
        "   load_balancer: ROUND_ROBIN}\n"
        "workloads:\n"
        "- {uid: Kubernetes//Pod/default/echo-1, addresses: [\"10.244.0.11\"], capacity: 3,\n"
        "   services: {default/echo.default.svc.cluster.local: {ports: [{service_port: 80, target_port: "
        "9090}]}}}\n"
        "- {uid: Kubernetes//Pod/default/echo-2, addresses: [\"10.244.0.12\"], status: UNHEALTHY,\n"
        "   services: {default/echo.default.svc.cluster.local: }}\n";
    const char* json = R"({"services": [{"name": "echo", "namespace": "default",
        "hostname": "echo.default.svc.cluster.local", "addresses": ["10.96.0.10", "fd00::10"],
        "ports": [{"service_port": 80, "target_port": 8080}], "loadBalancer": "ROUND_ROBIN"}],
      "workloads": [
        {"uid": "Kubernetes//Pod/default/echo-1", "addresses": ["10.244.0.11"], "capacity": 3,
         "services": {"default/echo.default.svc.cluster.local": {"ports": [{"service_port": 80, "target_port": 9090}]}}},
        {"uid": "Kubernetes//Pod/default/echo-2", "addresses": ["10.244.0.12"], "status": "UNHEALTHY",
         "services": {"default/echo.default.svc.cluster.local": null}}]}
)";
    test::TempDir dir;
    std::string ypath = (dir.path() / "mesh.yaml").string(), jpath = (dir.path() / "mesh.conf").string();
    std::ofstream(ypath) << yaml;
    std::ofstream(jpath) << json;
    bool was_json = true;
    auto y = load_config_file(ypath, {}, nullptr, &was_json);
    CHECK_FALSE(was_json);
    auto j = load_config_file(jpath, {}, nullptr, &was_json);
    CHECK(was_json);
    REQUIRE(error_of(y) == "");
    REQUIRE(error_of(j) == "");
    const Model &ym = std::get<Model>(y), &jm = std::get<Model>(j);
    CHECK(ym == jm);
    REQUIRE(jm.services.size() == 1);
    CHECK(jm.services.begin()->second.round_robin);
    CHECK(jm.workloads.at("Kubernetes//Pod/default/echo-1").capacity == 3);
}

TEST_CASE("JSON: errors name the line; limits and field checks are those of YAML") {
    YamlNode root;
    std::string err;
    CHECK_FALSE(parse_json_tree("{\"services\": [\n  {\"name\": \"a\",}\n]}", &root, &err));
    CHECK(err.rfind("line 2:", 0) == 0);
    CHECK_FALSE(parse_json_tree("{\"services\": []} trailing", &root, &err));
    CHECK(err.find("after the JSON value") != std::string::npos);
    REQUIRE(parse_json_tree("{\"a\": [1, true, null, \"x\"],\n \"b\": {}}", &root, &err));
    REQUIRE(root.is_mapping());
    const auto& items = root.entries[0].second.items;
    REQUIRE(items.size() == 4);
    CHECK(items[0].scalar == "1");
    CHECK(items[1].scalar == "true");
    CHECK(items[2].is_null());
    CHECK(items[3].scalar == "x");
    CHECK(root.entries[1].first.line == 2);

    test::TempDir dir;
    std::string path = (dir.path() / "mesh.json").string();
    std::ofstream(path) << R"({"services": [{"name": "a"}, {"name": "b"}, {"name": "c"}], "workloads": []})";
    CHECK(error_of(load_config_file(path, {.max_services = 2})) == "3 services exceed --max-services 2");
    std::ofstream(path)
        << "{\"services\": [],\n \"workloads\": [{\"uid\": \"a\", \"addresses\": [\"10.0.0.300\"]}]}";
    std::string e = error_of(load_config_file(path));
    CHECK(e.find("config.workloads[0].addresses[0] (line 2)") != std::string::npos);
    CHECK(e.find("not an IP address") != std::string::npos);
    std::ofstream(path) << R"({"services": [], "extra": 1})";
    CHECK(error_of(load_config_file(path)).find("unknown field 'extra'") != std::string::npos);
}

TEST_CASE("a YAML flow mapping that is not JSON still parses as YAML") {
    test::TempDir dir;
    std::string path = (dir.path() / "mesh.yaml").string();
    std::ofstream(path) << "{services: [], workloads: []}\n";
    bool was_json = true;
    auto r = load_config_file(path, {}, nullptr, &was_json);
    CHECK(error_of(r) == "");
    CHECK_FALSE(was_json);
    // Broken either way: the YAML parser's error, as before.
    std::ofstream(path) << "{services: [\n";
    CHECK(error_of(load_config_file(path)).rfind("YAML syntax error", 0) == 0);
}
