// The CNI installer against temp dirs: atomic writes, modes, saved originals, byte-for-byte
// uninstall, the kubeconfig, and the watcher re-chaining a rewritten config.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>

#include "agent/src/installer/installer.hpp"
#include "temp_dir.hpp"

using namespace kmesh;
using namespace kmesh::installer;
namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void put(const fs::path& p, const std::string& bytes, mode_t mode = 0644) {
    std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
    chmod(p.c_str(), mode);
}

mode_t mode_of(const fs::path& p) {
    struct stat st;
    REQUIRE(stat(p.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

// name -> (mode, bytes) of every entry of a directory: the "byte for byte as before" oracle.
std::map<std::string, std::pair<mode_t, std::string>> snapshot(const fs::path& dir) {
    std::map<std::string, std::pair<mode_t, std::string>> out;
    for (const auto& e : fs::directory_iterator(dir))
        out[e.path().filename().string()] = {mode_of(e.path()), slurp(e.path())};
    return out;
}

bool has_entry(const std::string& bytes) { return bytes.find("\"kmesh-cni\"") != std::string::npos; }
size_t count_entries(const std::string& bytes) {
    size_t n = 0;
    for (size_t at = bytes.find("\"kmesh-cni\""); at != std::string::npos;
         at = bytes.find("\"kmesh-cni\"", at + 1))
        n++;
    return n;
}

struct Fixture {
    test::TempDir tmp;
    fs::path conf = tmp.mkdirs("net.d"), bin = tmp.mkdirs("bin"), sa = tmp.path() / "sa";
    fs::path plugin = tmp.path() / "kmesh-cni-src";
    Options opt;
    Fixture() {
        put(plugin, "#!/bin/sh\necho plugin v1\n", 0700);
        opt.bin_dir = bin;
        opt.conf_dir = conf;
        opt.cni_binary = plugin;
        opt.sa_dir = sa;
        unsetenv("KUBERNETES_SERVICE_HOST");
        unsetenv("KUBERNETES_SERVICE_PORT");
    }
};

const char* kOddConf =
    "{\r\n\t\"cniVersion\" : \"0.3.1\",\"name\":\"cbr0\",   \"type\":\"flannel\",\n"
    "  \"delegate\": {\"hairpinMode\": true, \"isDefaultGateway\": true, \"mtu\": 1.50e3}, \"x-unknown\": "
    "[\"\\u00e9\"]\n}";
const char* kOddConflist =
    "{ \"name\": \"k8s-pod-network\", \"cniVersion\": \"1.0.0\",\n  \"plugins\": [\n"
    "    { \"type\": \"calico\", \"nodename\": \"n1\", \"ipam\": { \"type\": \"calico-ipam\" } },\n"
    "    {\"type\":\"portmap\",\"snat\":true,\"capabilities\":{\"portMappings\":true}}\n  ], \"vendor\": "
    "10000000000000000001\n}\n";

}  // namespace

TEST_CASE("installer: install then uninstall leaves the conf and bin dirs byte for byte as before") {
    for (auto [name, content, mode] : {std::tuple{"10-flannel.conf", kOddConf, mode_t(0640)},
                                       std::tuple{"10-calico.conflist", kOddConflist, mode_t(0600)},
                                       std::tuple{"10-x.json", kOddConf, mode_t(0644)}}) {
        CAPTURE(name);
        Fixture f;
        put(f.conf / name, content, mode);
        put(f.conf / "99-loopback.conf", R"({"cniVersion":"0.3.1","name":"lo","type":"loopback"})");
        put(f.conf / "README", "not a config");
        auto before = snapshot(f.conf);

        Installer inst(f.opt);
        REQUIRE(inst.install());
        // The runtime's file now has the entry last, once; the other config is untouched.
        std::string chained = chained_name(name);
        CHECK(count_entries(slurp(f.conf / chained)) == 1);
        CHECK(mode_of(f.conf / chained) == mode);
        CHECK(fs::exists(f.conf / name) == (chained == name));  // exactly one file for the runtime
        CHECK(slurp(f.conf / "99-loopback.conf") == before["99-loopback.conf"].second);
        CHECK(slurp(f.conf / saved_name(name)) == content);
        CHECK(mode_of(f.bin / "kmesh-cni") == 0755);
        CHECK(slurp(f.bin / "kmesh-cni") == slurp(f.plugin));
        CHECK_FALSE(fs::exists(f.conf / kKubeconfigName));  // standalone: no kubeconfig

        // A second install changes nothing.
        auto installed = snapshot(f.conf);
        REQUIRE(inst.install());
        CHECK(snapshot(f.conf) == installed);

        REQUIRE(Installer(f.opt).uninstall());
        CHECK(snapshot(f.conf) == before);
        CHECK(fs::is_empty(f.bin));
    }
}

TEST_CASE(
    "installer: the primary rewriting its file gets chained again; uninstall restores its latest bytes") {
    Fixture f;
    put(f.conf / "10-flannel.conf", kOddConf);
    Installer inst(f.opt);
    REQUIRE(inst.install());
    REQUIRE(fs::exists(f.conf / "10-flannel.conflist"));
    // Flannel restarts: writes its .conf again, next to our .conflist (which sorts after it).
    std::string v2 = R"({"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{"mtu":1400}})";
    put(f.conf / "10-flannel.conf", v2, 0640);
    auto r = inst.sync_chain(std::nullopt);
    REQUIRE(r);
    CHECK(r->outcome == Installer::Outcome::kWritten);
    CHECK(r->file == "10-flannel.conflist");
    CHECK_FALSE(fs::exists(f.conf / "10-flannel.conf"));
    CHECK(count_entries(slurp(f.conf / "10-flannel.conflist")) == 1);
    CHECK(slurp(f.conf / "10-flannel.conflist").find("1400") != std::string::npos);
    CHECK(slurp(f.conf / saved_name("10-flannel.conf")) == v2);
    auto again = inst.sync_chain(std::nullopt);
    REQUIRE(again);
    CHECK(again->outcome == Installer::Outcome::kUnchanged);

    REQUIRE(inst.uninstall());
    CHECK(snapshot(f.conf) ==
          std::map<std::string, std::pair<mode_t, std::string>>{{"10-flannel.conf", {0640, v2}}});
}

TEST_CASE(
    "installer: uninstall while the primary's new .conf sits next to our stale .conflist keeps the new one") {
    Fixture f;
    put(f.conf / "10-flannel.conf", kOddConf);
    REQUIRE(Installer(f.opt).install());
    std::string v2 = R"({"cniVersion":"0.3.1","name":"cbr0","type":"flannel"})";
    put(f.conf / "10-flannel.conf", v2);  // the agent was down: not chained yet
    REQUIRE(Installer(f.opt).uninstall());
    CHECK(snapshot(f.conf) ==
          std::map<std::string, std::pair<mode_t, std::string>>{{"10-flannel.conf", {0644, v2}}});
}

TEST_CASE("installer: a file changed by someone else after chaining loses only our entry at uninstall") {
    Fixture f;
    put(f.conf / "10-calico.conflist", kOddConflist);
    REQUIRE(Installer(f.opt).install());
    // The operator adds a plugin after ours and keeps ours (e.g. an edit by hand).
    std::string cur = slurp(f.conf / "10-calico.conflist");
    cur.replace(cur.find("\"portmap\""), 9, "\"portmap2\"");
    put(f.conf / "10-calico.conflist", cur);
    REQUIRE(Installer(f.opt).uninstall());
    std::string after = slurp(f.conf / "10-calico.conflist");
    CHECK_FALSE(has_entry(after));
    CHECK(after.find("portmap2") != std::string::npos);
    CHECK(after.find("calico-ipam") != std::string::npos);
    CHECK_FALSE(fs::exists(f.conf / saved_name("10-calico.conflist")));
}

TEST_CASE("installer: config choice: the runtime's first loadable file, or --cni-conf-name") {
    Fixture f;
    Installer inst(f.opt);
    auto none = inst.sync_chain(std::nullopt);
    REQUIRE(none);
    CHECK(none->outcome == Installer::Outcome::kNoConfig);
    CHECK(inst.install().code() == Errc::kNotFound);

    put(f.conf / "20-b.conflist", R"({"name":"b","cniVersion":"1.0.0","plugins":[{"type":"bridge"}]})");
    put(f.conf / "05-broken.conflist", "{half a fi");
    fs::create_directories(f.conf / "01-dir.conf");
    // Fresh: maybe being written in place; the next file is not chained meanwhile.
    CHECK(inst.sync_chain(std::nullopt).status().code() == Errc::kUnavailable);
    CHECK_FALSE(has_entry(slurp(f.conf / "20-b.conflist")));
    timespec old_times[2] = {{1, 0}, {1, 0}};
    REQUIRE(utimensat(AT_FDCWD, (f.conf / "05-broken.conflist").c_str(), old_times, 0) == 0);
    auto r = inst.sync_chain(std::nullopt);
    REQUIRE(r);
    CHECK(r->file == "20-b.conflist");  // the broken one and the directory are skipped
    put(f.conf / "10-a.conflist", R"({"name":"a","cniVersion":"1.0.0","plugins":[{"type":"ptp"}]})");
    r = inst.sync_chain(std::nullopt);
    REQUIRE(r);
    CHECK(r->outcome == Installer::Outcome::kWritten);
    CHECK(r->file == "10-a.conflist");  // an earlier file became the runtime's choice

    Options named = f.opt;
    named.conf_name = "20-b.conflist";
    put(f.conf / "20-b.conflist", R"({"name":"b","cniVersion":"1.0.0","plugins":[{"type":"bridge"}]})");
    auto n = Installer(named).sync_chain(std::nullopt);
    REQUIRE(n);
    CHECK(n->file == "20-b.conflist");
    CHECK(has_entry(slurp(f.conf / "20-b.conflist")));
}

TEST_CASE("installer: a .conf is not converted over a .conflist the installer did not write") {
    Fixture f;
    put(f.conf / "10-a.conf", R"({"name":"a","type":"bridge"})");
    put(f.conf / "10-a.conflist", R"({"name":"other","plugins":[{"type":"ptp"}]})");
    auto r = Installer(f.opt).sync_chain(std::nullopt);
    CHECK(r.status().code() == Errc::kAlreadyExists);
    CHECK(slurp(f.conf / "10-a.conflist") == R"({"name":"other","plugins":[{"type":"ptp"}]})");
    CHECK(fs::exists(f.conf / "10-a.conf"));
}

TEST_CASE("installer: the binary is copied with mode 0755 and skipped when identical") {
    Fixture f;
    Installer inst(f.opt);
    auto w = inst.install_binary();
    REQUIRE(w);
    CHECK(*w);
    CHECK(mode_of(f.bin / "kmesh-cni") == 0755);
    w = inst.install_binary();
    REQUIRE(w);
    CHECK_FALSE(*w);
    put(f.plugin, "#!/bin/sh\necho plugin v2\n", 0700);
    w = inst.install_binary();
    REQUIRE(w);
    CHECK(*w);
    CHECK(slurp(f.bin / "kmesh-cni") == slurp(f.plugin));
    for (const auto& e : fs::directory_iterator(f.bin))
        CHECK(e.path().filename() == "kmesh-cni");  // no temp left

    Options missing = f.opt;
    missing.cni_binary = (f.tmp.path() / "nope").string();
    CHECK(Installer(missing).install_binary().status().code() == Errc::kNotFound);
}

TEST_CASE(
    "installer: in a cluster the kubeconfig is written 0600, referenced by the entry, and follows the "
    "token") {
    Fixture f;
    fs::create_directories(f.sa);
    put(f.sa / "token", "token-one\n");
    put(f.sa / "ca.crt", "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n");
    setenv("KUBERNETES_SERVICE_HOST", "fd00:10:96::1", 1);
    setenv("KUBERNETES_SERVICE_PORT", "443", 1);
    put(f.conf / "10-a.conflist", R"({"name":"a","cniVersion":"1.0.0","plugins":[{"type":"ptp"}]})");
    umask(0);  // a permissive umask must not widen the kubeconfig
    REQUIRE(Installer(f.opt).install());
    umask(022);
    fs::path kc = f.conf / kKubeconfigName;
    CHECK(mode_of(kc) == 0600);
    std::string k1 = slurp(kc);
    CHECK(k1.find("server: \"https://[fd00:10:96::1]:443\"") != std::string::npos);
    CHECK(k1.find("token: \"token-one\"") != std::string::npos);
    CHECK(k1.find("certificate-authority-data: " + base64(slurp(f.sa / "ca.crt"))) != std::string::npos);
    CHECK(slurp(f.conf / "10-a.conflist").find("\"kubeConfig\": \"" + kc.string() + "\"") !=
          std::string::npos);

    Installer inst(f.opt);
    auto same = inst.sync_kubeconfig();
    REQUIRE(same);
    CHECK_FALSE(same->written);
    // The kubelet swaps the projected token.
    put(f.sa / "token", "token-two");
    auto rotated = inst.sync_kubeconfig();
    REQUIRE(rotated);
    CHECK(rotated->written);
    CHECK(slurp(kc).find("token: \"token-two\"") != std::string::npos);
    CHECK(mode_of(kc) == 0600);

    // A token or CA that cannot be read for a moment (the kubelet swapping ..data) is an error that
    // keeps the last kubeconfig, never standalone mode (which would drop kubeConfig from the entry
    // and make kmesh-cni enrol every pod).
    fs::remove(f.sa / "token");
    auto hiccup = inst.sync_kubeconfig();
    CHECK(hiccup.status().code() == Errc::kUnavailable);
    REQUIRE(inst.sync_chain(kc.string()));
    fs::remove(f.sa / "ca.crt");
    put(f.sa / "token", "token-three");
    CHECK(inst.sync_kubeconfig().status().code() == Errc::kUnavailable);
    CHECK(slurp(kc).find("token: \"token-two\"") != std::string::npos);
    CHECK(slurp(f.conf / "10-a.conflist").find("\"kubeConfig\"") != std::string::npos);

    REQUIRE(inst.uninstall());
    CHECK_FALSE(fs::exists(kc));
    unsetenv("KUBERNETES_SERVICE_HOST");
    unsetenv("KUBERNETES_SERVICE_PORT");
}

TEST_CASE(
    "installer watcher: a config appearing later and rewritten by its owner is chained within a second") {
    Fixture f;
    auto w = Watcher::start(f.opt);
    REQUIRE(w);
    auto wait_chained = [&](const fs::path& p) {
        for (int i = 0; i < 100; i++) {
            if (fs::exists(p) && count_entries(slurp(p)) == 1) return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return false;
    };
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::string primary = R"({"name":"a","cniVersion":"1.0.0","plugins":[{"type":"ptp"}]})";
    put(f.conf / ".tmp", primary);
    fs::rename(f.conf / ".tmp", f.conf / "10-a.conflist");
    CHECK(wait_chained(f.conf / "10-a.conflist"));
    for (int i = 0; i < 5; i++) {
        put(f.conf / ".tmp", primary);
        fs::rename(f.conf / ".tmp", f.conf / "10-a.conflist");  // the primary drops our entry
        CHECK(wait_chained(f.conf / "10-a.conflist"));
    }
    w->reset();  // stops the thread; everything stays installed
    CHECK(count_entries(slurp(f.conf / "10-a.conflist")) == 1);
    CHECK(fs::exists(f.bin / "kmesh-cni"));
}

TEST_CASE("installer: --cni-conf-name naming a .conf follows it into the .conflist it became") {
    Fixture f;
    f.opt.conf_name = "20-b.conf";
    put(f.conf / "10-a.conflist", R"({"name":"a","cniVersion":"1.0.0","plugins":[{"type":"ptp"}]})");
    std::string b = R"({"cniVersion":"0.4.0","name":"b","type":"bridge"})";
    put(f.conf / "20-b.conf", b);
    Installer inst(f.opt);
    REQUIRE(inst.install());
    CHECK_FALSE(has_entry(slurp(f.conf / "10-a.conflist")));  // not the runtime's first: the named one
    CHECK(count_entries(slurp(f.conf / "20-b.conflist")) == 1);
    auto again = inst.sync_chain(std::nullopt);
    REQUIRE(again);
    CHECK(again->outcome == Installer::Outcome::kUnchanged);
    CHECK(again->file == "20-b.conflist");
    put(f.conf / "20-b.conf", b);  // its owner writes it again
    auto r = inst.sync_chain(std::nullopt);
    REQUIRE(r);
    CHECK(r->outcome == Installer::Outcome::kWritten);
    CHECK_FALSE(fs::exists(f.conf / "20-b.conf"));
    REQUIRE(inst.uninstall());
    CHECK(slurp(f.conf / "20-b.conf") == b);
    CHECK_FALSE(fs::exists(f.conf / "20-b.conflist"));
}
