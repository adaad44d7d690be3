// The CNI installer's pure transforms. Oracles are hand-written JSON (compared as DOM and in member
// order) and, where the bytes matter, the exact input bytes.
#include <doctest/doctest.h>
#include <rapidjson/document.h>
#include <rapidjson/writer.h>

#include <string>

#include "agent/src/installer/chain.hpp"

using namespace kmesh;
using namespace kmesh::installer;

namespace {

// Compact form of a JSON text: equal for two texts with the same values in the same member order.
std::string canon(const std::string& json) {
    rapidjson::Document d;
    d.Parse(json.c_str());
    REQUIRE_MESSAGE(!d.HasParseError(), json);
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    d.Accept(w);
    return buf.GetString();
}

bool dom_equal(const std::string& a, const std::string& b) {
    rapidjson::Document x, y;
    x.Parse(a.c_str());
    y.Parse(b.c_str());
    return !x.HasParseError() && !y.HasParseError() && x == y;
}

#define CHECK_JSON(actual, expected)              \
    do {                                          \
        CHECK(dom_equal(actual, expected));       \
        CHECK_EQ(canon(actual), canon(expected)); \
    } while (0)

const char* kEntry =
    R"({"type":"kmesh-cni","excludeNamespaces":["kube-system"],"kmeshNamespace":"kmesh-system","logFile":"/var/log/kmesh-cni.log"})";

}  // namespace

TEST_CASE("installer chain: a .conflist gets the entry last; every plugin and unknown field kept, in order") {
    std::string in = R"({ "cniVersion": "1.0.0",
  "name": "k8s-pod-network", "disableCheck": true,
  "plugins": [ {"type": "calico", "log_level": "info", "ipam": {"type": "calico-ipam"}, "mtu": 1440},
               {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}} ],
  "x-vendor": {"a": [1, 2.5, null]} })";
    auto r = chain("10-calico.conflist", in, ChainEntry{});
    REQUIRE(r);
    CHECK(r->changed);
    CHECK_FALSE(r->had_entry);
    CHECK(r->name == "10-calico.conflist");
    CHECK_JSON(r->bytes,
               std::string(R"({"cniVersion":"1.0.0","name":"k8s-pod-network","disableCheck":true,"plugins":[
        {"type":"calico","log_level":"info","ipam":{"type":"calico-ipam"},"mtu":1440},
        {"type":"portmap","snat":true,"capabilities":{"portMappings":true}},)") +
                   kEntry + R"(],"x-vendor":{"a":[1,2.5,null]}})");
    CHECK(r->bytes.back() == '\n');

    SUBCASE("chaining the result again changes nothing, byte for byte") {
        auto again = chain("10-calico.conflist", r->bytes, ChainEntry{});
        REQUIRE(again);
        CHECK_FALSE(again->changed);
        CHECK(again->had_entry);
        CHECK(again->bytes == r->bytes);
    }
    SUBCASE("an already chained file in another formatting is left exactly as it is") {
        std::string odd = "{\"name\":\"n\",\"cniVersion\":\"1.0.0\",\"plugins\":[{\"type\":\"bridge\"},\n\t" +
                          std::string(kEntry) + "]}";
        auto again = chain("a.conflist", odd, ChainEntry{});
        REQUIRE(again);
        CHECK_FALSE(again->changed);
        CHECK(again->bytes == odd);
    }
}

TEST_CASE(
    "installer chain: an outdated, misplaced or duplicated kmesh-cni entry becomes one wanted entry, last") {
    std::string in = R"({"cniVersion":"0.4.0","name":"n","plugins":[
        {"type":"kmesh-cni","kmeshNamespace":"old","cgroupRoot":"/x"},
        {"type":"bridge","bridge":"cni0"},
        {"type":"kmesh-cni"},
        {"type":"tuning"}]})";
    ChainEntry e;
    e.kube_config = "/etc/cni/net.d/kmesh-cni-kubeconfig";
    e.kmesh_namespace = "mesh";
    e.bpffs_root = "/run/bpf";
    e.log_file = "";
    auto r = chain("05.conflist", in, e);
    REQUIRE(r);
    CHECK(r->changed);
    CHECK(r->had_entry);
    CHECK_JSON(r->bytes, R"({"cniVersion":"0.4.0","name":"n","plugins":[
        {"type":"bridge","bridge":"cni0"},{"type":"tuning"},
        {"type":"kmesh-cni","kubeConfig":"/etc/cni/net.d/kmesh-cni-kubeconfig","excludeNamespaces":["kube-system"],
         "kmeshNamespace":"mesh","bpffsRoot":"/run/bpf","logFile":""}]})");
}

TEST_CASE("installer chain: the last entry with other content is updated in place") {
    std::string in =
        std::string(R"({"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},)") + kEntry + "]}";
    ChainEntry e;
    e.kube_config = "/k";
    auto r = chain("a.conflist", in, e);
    REQUIRE(r);
    CHECK(r->changed);
    CHECK_JSON(r->bytes, R"({"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},
        {"type":"kmesh-cni","kubeConfig":"/k","excludeNamespaces":["kube-system"],"kmeshNamespace":"kmesh-system",
         "logFile":"/var/log/kmesh-cni.log"}]})");
}

TEST_CASE("installer chain: a .conf or .json becomes <stem>.conflist, as libcni's ConfListFromConf") {
    std::string conf =
        R"({"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}})";
    auto r = chain("10-flannel.conf", conf, ChainEntry{});
    REQUIRE(r);
    CHECK(r->changed);
    CHECK(r->name == "10-flannel.conflist");
    CHECK_JSON(r->bytes, std::string(R"({"cniVersion":"0.3.1","name":"cbr0","plugins":[
        {"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},)") +
                             kEntry + "]}");

    // No cniVersion: none in the list either (libcni reads a missing one as ""); no name: "".
    auto j = chain("99-x.json", R"({"type":"bridge","mtu":1500})", ChainEntry{});
    REQUIRE(j);
    CHECK(j->name == "99-x.conflist");
    CHECK_JSON(j->bytes,
               std::string(R"({"name":"","plugins":[{"type":"bridge","mtu":1500},)") + kEntry + "]}");
}

TEST_CASE("installer chain: what the runtime could not load is refused with the reason") {
    CHECK(chain("a.conflist", "{not json", ChainEntry{}).status().code() == Errc::kDataLoss);
    CHECK(chain("a.conflist", R"({"name":"n"})", ChainEntry{}).status().message().find("plugins") !=
          std::string::npos);
    CHECK_FALSE(chain("a.conflist", R"({"name":"n","plugins":[]})", ChainEntry{}));
    CHECK_FALSE(chain("a.conflist", R"({"name":"n","plugins":[{"mtu":1}]})", ChainEntry{}));
    CHECK_FALSE(chain("a.conflist", R"({"plugins":[{"type":"bridge"}]})", ChainEntry{}));  // no name
    CHECK_FALSE(chain("a.conflist", R"([1,2])", ChainEntry{}));
    // A plugin list in a .conf file: libcni finds no type in it.
    CHECK_FALSE(chain("a.conf", R"({"name":"n","plugins":[{"type":"bridge"}]})", ChainEntry{}));
    CHECK(chain("a.conf", R"({"name":"n","type":"kmesh-cni"})", ChainEntry{}).status().code() ==
          Errc::kInvalidArgument);
    CHECK(validate_config("a.conflist", R"({"name":"n","plugins":[{"type":"bridge"}]})"));
    CHECK(validate_config("a.conf", R"({"type":"bridge"})"));
    CHECK_FALSE(validate_config("a.txt", R"({"type":"bridge"})"));
}

TEST_CASE("installer chain: the runtime's file order: .conf/.conflist/.json, dotfiles included, byte order") {
    auto c = config_candidates({"99-z.conf", "10-b.conflist", "kmesh-cni-kubeconfig",
                                ".kmesh-cni-saved.10-a.conf.orig", "README", "05-a.json", "10-b.conflist.bak",
                                "A.conf", ".hidden.conf", ".kmesh-cni.tmp-AbC123", "10-b.conf", "x.CONF"});
    CHECK(c == std::vector<std::string>{".hidden.conf", "05-a.json", "10-b.conf", "10-b.conflist",
                                        "99-z.conf", "A.conf"});
}

TEST_CASE("installer chain: saved originals are named so that libcni never reads them") {
    CHECK(saved_name("10-flannel.conf") == ".kmesh-cni-saved.10-flannel.conf.orig");
    CHECK_FALSE(is_config_name(saved_name("10-flannel.conf")));
    CHECK_FALSE(is_config_name(saved_name("a.conflist")));
    CHECK(config_of_saved(saved_name("a.conflist")) == "a.conflist");
    CHECK(config_of_saved(".kmesh-cni-saved..orig") == std::nullopt);
    CHECK(config_of_saved(".kmesh-cni-saved.notes.orig") == std::nullopt);
    CHECK(config_of_saved("10-flannel.conf") == std::nullopt);
    CHECK(chained_name("a.conf") == "a.conflist");
    CHECK(chained_name("a.json") == "a.conflist");
    CHECK(chained_name("a.b.conflist") == "a.b.conflist");
}

TEST_CASE(
    "installer unchain: removes every kmesh-cni entry, keeps the rest; nothing to remove keeps the bytes") {
    std::string in =
        std::string(
            R"({"cniVersion":"1.0.0","name":"n","z":1,"plugins":[{"type":"kmesh-cni"},{"type":"bridge","b":[1]},)") +
        kEntry + "]}";
    auto r = unchain(in);
    REQUIRE(r);
    CHECK(r->changed);
    CHECK_JSON(r->bytes, R"({"cniVersion":"1.0.0","name":"n","z":1,"plugins":[{"type":"bridge","b":[1]}]})");

    std::string plain = "{\"name\":\"n\", \"plugins\":[ {\"type\":\"bridge\"} ]}\n\n";
    auto u = unchain(plain);
    REQUIRE(u);
    CHECK_FALSE(u->changed);
    CHECK(u->bytes == plain);

    CHECK(unchain(R"({"name":"n","plugins":[{"type":"kmesh-cni"}]})").status().code() ==
          Errc::kInvalidArgument);
}

TEST_CASE("installer is_chain_of: true only for exactly what chain() made of the original") {
    std::string orig =
        "{\n\t\"cniVersion\": \"0.3.1\", \"name\": \"cbr0\", \"type\": \"flannel\",\r\n \"delegate\": {} }";
    ChainEntry e;
    e.kube_config = "/k";
    auto r = chain("10-flannel.conf", orig, e);
    REQUIRE(r);
    CHECK(is_chain_of("10-flannel.conf", orig, r->bytes));
    // Whatever entry the file ends with: it is ours to take out.
    auto other = chain("10-flannel.conf", orig, ChainEntry{});
    REQUIRE(other);
    CHECK(is_chain_of("10-flannel.conf", orig, other->bytes));
    // The primary's plugin changed afterwards: not ours any more.
    std::string changed = r->bytes;
    changed.replace(changed.find("flannel"), 7, "flannel2");
    CHECK_FALSE(is_chain_of("10-flannel.conf", orig, changed));
    // One byte of formatting differs: not what we wrote.
    CHECK_FALSE(is_chain_of("10-flannel.conf", orig, r->bytes + " "));
    // No entry at the end.
    CHECK_FALSE(is_chain_of("10-flannel.conf", orig, orig));
}

TEST_CASE("installer kubeconfig: server URL, CA as base64, token quoted") {
    CHECK(server_url("10.96.0.1", "443") == "https://10.96.0.1:443");
    CHECK(server_url("fd00:10:96::1", "443") == "https://[fd00:10:96::1]:443");
    CHECK(server_url("[fd00::1]", "6443") == "https://[fd00::1]:6443");
    // RFC 4648 test vectors.
    CHECK(base64("") == "");
    CHECK(base64("f") == "Zg==");
    CHECK(base64("fo") == "Zm8=");
    CHECK(base64("foo") == "Zm9v");
    CHECK(base64("foob") == "Zm9vYg==");
    CHECK(base64("fooba") == "Zm9vYmE=");
    CHECK(base64("foobar") == "Zm9vYmFy");
    CHECK(kubeconfig_yaml("https://[fd00::1]:443", "foobar", "ey.J\"x") ==
          "# Written by kmesh-daemon for the kmesh-cni plugin; rewritten when the token rotates.\n"
          "apiVersion: v1\n"
          "kind: Config\n"
          "clusters:\n"
          "- name: local\n"
          "  cluster:\n"
          "    server: \"https://[fd00::1]:443\"\n"
          "    certificate-authority-data: Zm9vYmFy\n"
          "users:\n"
          "- name: kmesh-cni\n"
          "  user:\n"
          "    token: \"ey.J\\\"x\"\n"
          "contexts:\n"
          "- name: kmesh-cni\n"
          "  context:\n"
          "    cluster: local\n"
          "    user: kmesh-cni\n"
          "current-context: kmesh-cni\n");
    CHECK(kubeconfig_yaml("https://h:1", "", "t").find("certificate-authority-data") == std::string::npos);
}

TEST_CASE("installer entry_json: optional members only when they apply") {
    CHECK(entry_json(ChainEntry{}) == kEntry);
    ChainEntry e;
    e.bpffs_root = "/sys/fs/bpf";  // the default: not written
    e.kube_config = "/etc/cni/net.d/kmesh-cni-kubeconfig";
    CHECK(
        entry_json(e) ==
        R"({"type":"kmesh-cni","kubeConfig":"/etc/cni/net.d/kmesh-cni-kubeconfig","excludeNamespaces":["kube-system"],"kmeshNamespace":"kmesh-system","logFile":"/var/log/kmesh-cni.log"})");
    // The agent's socket only matters to an ADD that would ask the API server.
    e.agent_socket = "/var/run/kmesh/cni.sock";
    CHECK(
        entry_json(e) ==
        R"({"type":"kmesh-cni","kubeConfig":"/etc/cni/net.d/kmesh-cni-kubeconfig","excludeNamespaces":["kube-system"],"kmeshNamespace":"kmesh-system","logFile":"/var/log/kmesh-cni.log","agentSocket":"/var/run/kmesh/cni.sock"})");
    e.kube_config.reset();
    CHECK(entry_json(e) == kEntry);
}

TEST_CASE("installer chain: numbers keep their value; a zero with an exponent is zero (no UB in RapidJSON)") {
    // "0e140" and "0.000...0" sent RapidJSON 1.1's full-precision path into __builtin_clzll(0)
    // (UBSan: invalid-builtin-use, found by fuzz/conflist_fuzz.cpp); the stage-2 sanitizer run
    // fails on it. The expected texts are parsed by RapidJSON's default path, which has no such bug.
    auto r = chain("10-x.conflist",
                   R"({"name":"n","plugins":[{"type":"bridge","a":0e140,"b":-0E-3,"c":1.50e3,"d":7,"e":-9,)"
                   R"("f":18446744073709551615,"g":0.1,"h":0,"i":0.00000000000000000000000000000000}]})",
                   ChainEntry{});
    REQUIRE(r);
    CHECK_JSON(r->bytes, std::string(R"({"name":"n","plugins":[{"type":"bridge","a":0.0,"b":-0.0,"c":1500.0,)"
                                     R"("d":7,"e":-9,"f":18446744073709551615,"g":0.1,"h":0,"i":0.0},)") +
                             kEntry + "]}");
    auto bad =
        chain("10-x.conflist", R"({"name":"n","plugins":[{"type":"bridge","a":1e400}]})", ChainEntry{});
    CHECK_FALSE(bad);
}
