// The streamed config parser (issue 12: parse straight to the model, no document tree) against the
// whole-tree path it replaced (parse_yaml / parse_json_tree, then parse_config_tree), which stays as
// the oracle: for every input both must give the same model, or the same problems in the same order.
// Inputs: the YAML fuzz corpus, each file cut short at many points (syntax errors and partial
// documents), hand-written edge cases of the top level (where the streaming differs in code), and
// their JSON twins.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "agent/src/sources/file/config_file.hpp"

using namespace kmesh;

namespace {

std::string describe(const std::variant<Model, ConfigError>& r) {
    if (auto* e = std::get_if<ConfigError>(&r)) return "error: " + e->summary();
    const Model& m = std::get<Model>(r);
    return "model: " + std::to_string(m.services.size()) + " services, " +
           std::to_string(m.workloads.size()) + " workloads, " + std::to_string(m.policies.size()) +
           " policies";
}

// The old path, as load_config_file ran it for YAML.
std::variant<Model, ConfigError> tree_yaml(const std::string& text) {
    YamlNode root;
    std::string err;
    if (!parse_yaml(text, &root, &err)) return ConfigError{{"YAML syntax error: " + err}};
    return parse_config_tree(root);
}

void check_same(const std::variant<Model, ConfigError>& streamed,
                const std::variant<Model, ConfigError>& tree, const std::string& what) {
    INFO(what);
    REQUIRE(describe(streamed) == describe(tree));
    if (std::holds_alternative<Model>(tree)) CHECK(std::get<Model>(streamed) == std::get<Model>(tree));
}

void check_yaml(const std::string& text, const std::string& what) {
    check_same(parse_config_yaml(text), tree_yaml(text), what);
}

void check_json(const std::string& text, const std::string& what) {
    YamlNode root;
    std::string err;
    bool was_json = false;
    auto streamed = parse_config_text(text, {}, &was_json);
    bool tree_ok = parse_json_tree(text, &root, &err);
    INFO(what);
    REQUIRE(was_json == tree_ok);
    if (tree_ok) check_same(streamed, parse_config_tree(root), what);
}

std::string slurp(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

}  // namespace

TEST_CASE("streamed parsing gives what the document tree gave: the fuzz corpus, whole and cut short") {
    auto dir = std::filesystem::path(KMESH_TEST_DATA_DIR) / ".." / "fuzz" / "corpus" / "yaml";
    int files = 0;
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
        std::string text = slurp(entry.path());
        std::string name = entry.path().filename().string();
        check_yaml(text, name);
        for (size_t cut = 1; cut < text.size(); cut += 1 + text.size() / 40)
            check_yaml(text.substr(0, cut), name + " cut at " + std::to_string(cut));
        files++;
    }
    CHECK(files >= 10);
}

TEST_CASE("streamed parsing gives what the document tree gave: the top level's edge cases") {
    const char* svc =
        "{name: a, namespace: n, hostname: a.n, addresses: [10.96.0.1], ports: [{service_port: 80}]}";
    std::vector<std::string> cases = {
        "",
        "# only a comment\n",
        "~\n",
        "services\n",
        "- services\n",
        "[1, 2]\n",
        "{}\n",
        "services: []\n",
        "services:\n",
        "services: 3\n",
        "services: {a: 1}\n",
        std::string("services: [") + svc + ", " + svc + "]\n",  // a duplicate service
        std::string("services: [") + svc + "]\nservices: [" + svc + "]\n",
        "services: []\nextra: 1\nextra: 2\nworkloads: []\n",
        "Services: []\nservices: []\n",
        "workloads: [{uid: a, addresses: [10.0.0.1]}, {uid: a}]\npolicies: [{name: p}, {}]\n",
        "policies: [{name: p, namespace: n}, {name: p, namespace: n}]\n",
        std::string("services: [") + svc +
            ", {name: b, namespace: n, hostname: b.n, addresses: [10.96.0.1]}]\n",
        "services: [*x]\n",
        "&a services: []\n",
        "services: []\n---\nservices: []\n",
        "services: [\n",
        "services: [{name: a}]\nworkloads: [\n",
        "{services: [], workloads: [{uid: w, addresses: [10.0.0.300]}]}\n",
        "? [a, b]\n: 1\n",
        "services: "
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"
        "]]]]]"
        "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
    };
    // Nesting at and just past the limit, as an item and as a top-level value.
    for (int depth : {60, 61, 62, 63, 64, 65}) {
        std::string open(depth, '['), close(depth, ']');
        cases.push_back("services: " + open + close + "\n");
        cases.push_back("extra: " + open + close + "\n");
    }
    for (size_t i = 0; i < cases.size(); i++)
        check_yaml(cases[i], "case " + std::to_string(i) + ": " + cases[i]);
}

TEST_CASE("streamed JSON gives what the JSON tree gave, lines and nesting limits included") {
    std::vector<std::string> cases = {
        R"({"services": [{"name": "a", "namespace": "n", "hostname": "a.n", "addresses": ["10.96.0.1"],
             "ports": [{"servicePort": 80, "targetPort": 8080}]}],
            "workloads": [{"uid": "w", "addresses": ["10.0.0.1"], "services": {"n/a.n": null}}]})",
        "{\"services\": [],\n \"workloads\": [{\"uid\": \"a\", \"addresses\": [\"10.0.0.300\"]}]}",
        R"({"services": [], "extra": 1, "extra": [1], "services": null})",
        R"({"services": 7, "workloads": {"a": 1}, "policies": "x"})",
        R"({"policies": [{"name": "p", "rules": [{"clauses": [{"matches": [{"namespaces": [{"exact": "x"}]}]}]}]}]})",
        R"({"services": [], "workloads": []} trailing)",
        "{\"services\": [\n  {\"name\": \"a\",}\n]}",
        "{}",
    };
    for (int depth : {60, 61, 62, 63, 64, 65}) {
        std::string open(depth, '['), close(depth, ']');
        cases.push_back("{\"services\": " + open + close + "}");
        cases.push_back("{\"extra\": " + open + close + "}");
    }
    for (size_t i = 0; i < cases.size(); i++)
        check_json(cases[i], "case " + std::to_string(i) + ": " + cases[i]);
}

TEST_CASE("the limits are counted while streaming: the message names the total, the model is not built") {
    std::string yaml = "services:\n";
    for (int i = 0; i < 50; i++)
        yaml += "- {name: s" + std::to_string(i) + ", namespace: n, hostname: s" + std::to_string(i) +
                ".n, addresses: [10.96.0." + std::to_string(i + 1) + "], ports: [{service_port: 80}]}\n";
    yaml += "workloads:\n- {uid: a}\n- {uid: b}\n- {uid: c, addresses: [not-an-ip]}\n";
    auto r = parse_config_text(yaml, {.max_services = 10});
    REQUIRE(std::holds_alternative<ConfigError>(r));
    CHECK(std::get<ConfigError>(r).summary() == "50 services exceed --max-services 10");
    r = parse_config_text(yaml, {.max_services = 50, .max_workloads = 2});
    CHECK(std::get<ConfigError>(r).summary() == "3 workloads exceed --max-backends 2");
    // Within the limits the field checks run (the workloads are incomplete).
    r = parse_config_text(yaml, {.max_services = 50, .max_workloads = 3});
    CHECK(std::get<ConfigError>(r).summary().find("config.workloads[2].addresses[0]") != std::string::npos);
    CHECK(std::get<ConfigError>(r).summary() == std::get<ConfigError>(tree_yaml(yaml)).summary());
}
