#include <doctest/doctest.h>
#include <linux/magic.h>
#include <rapidjson/document.h>
#include <spdlog/logger.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>

#include "cni/plugin.hpp"
#include "common/pin_layout.hpp"
#include "fake_kernel.hpp"
#include "temp_dir.hpp"

using namespace kmesh::cni;
using kmesh::PinLayout;
using kmesh::test::FakeKernel;
using kmesh::test::TempDir;
namespace fs = std::filesystem;

namespace {

constexpr const char* kUid = "1f0e3c6a-8b2d-4c5e-9a7b-0123456789ab";
constexpr const char* kPrevResult =
    R"({"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],)"
    R"("ips":[{"version":"4","address":"10.1.2.3/24","gateway":"10.1.2.1","interface":0}],"dns":{}})";

std::string config_json(const std::string& version, const std::string& extra = "", bool prev = true) {
    std::string json = R"({"cniVersion":")" + version + R"(","name":"k8s-pod-network","type":"kmesh-cni")";
    if (!extra.empty()) json += "," + extra;
    if (prev) json += std::string(R"(,"prevResult":)") + kPrevResult;
    return json + "}";
}

Env env(const std::string& command, const std::string& args = "",
        const std::string& container_id = "c0ffee") {
    return Env{command, container_id, "/var/run/netns/x", "eth0", args, "/opt/cni/bin"};
}

int error_code(const std::function<void()>& f) {
    try {
        f();
    } catch (const CniError& e) {
        return e.code();
    }
    return 0;
}

// A bpffs stand-in with the agent's programs pinned, and a cgroupfs pod cgroup.
struct Fixture {
    TempDir bpffs;
    TempDir cgroups;
    FakeKernel kernel;
    spdlog::logger log{"test"};  // no sinks
    PinLayout layout{bpffs.path().string()};
    std::string container_id = "c0ffee";
    std::uint32_t prog4 = 0, prog6 = 0, prog_sl = 0, progops = 0;

    Fixture() {
        cgroups.mkdirs(std::string("kubepods/besteffort/pod") + kUid);
        kernel.magic[bpffs.path().string()] = BPF_FS_MAGIC;
        kernel.magic[fs::canonical(cgroups.path()).string()] = CGROUP2_SUPER_MAGIC;
        load_agent();
    }
    void load_agent() {
        prog4 = kernel.pin_new_prog(layout.prog(kmesh::kProgConnect4));
        prog6 = kernel.pin_new_prog(layout.prog(kmesh::kProgConnect6));
        prog_sl = kernel.pin_new_prog(layout.prog(kmesh::kProgSkLookup));
        progops = kernel.pin_new_prog(layout.prog(kmesh::kProgSockops));
        for (const auto& spec : kmesh::kPodProgs)  // issue 10's UDP and getpeername programs
            if (spec.optional) kernel.pin_new_prog(layout.prog(spec.name));
    }
    std::string config(const std::string& command, const std::string& extra_config = "",
                       const std::string& version = "1.0.0") {
        std::string cfg = R"("bpffsRoot":")" + bpffs.path().string() + R"(","cgroupRoot":")" +
                          cgroups.path().string() + R"(")";
        if (!extra_config.empty()) cfg += "," + extra_config;
        return config_json(version, cfg, command == "ADD" || command == "CHECK");
    }
    Request request(const std::string& command, const std::string& extra_config = "",
                    const std::string& version = "1.0.0") {
        return parse_request(
            env(command, std::string("K8S_POD_NAMESPACE=ns;K8S_POD_UID=") + kUid, container_id),
            config(command, extra_config, version));
    }
    std::string run_cmd(const std::string& command) { return run(request(command), kernel, log); }
    // A container of a runtime without pod cgroups (podman): no K8S_POD_UID, cgroupPath given.
    std::string run_shared(const std::string& command, const std::string& id,
                           const std::string& cgroup_path = "shared") {
        Env e = env(command, "K8S_POD_NAME=p", id);
        e.netns = "/var/run/netns/" + id;  // each container its own netns (podman without a pod)
        return run(parse_request(e, config(command, R"("cgroupPath":")" + cgroup_path + R"(")")), kernel,
                   log);
    }
    // Object id of the link pinned for program `name`.
    std::uint32_t pinned_id(const char* name) {
        int fd = kernel.obj_get((fs::path(layout.pod_dir(container_id)) / name).string());
        REQUIRE(fd >= 0);
        std::uint32_t id = kernel.fds.at(fd);
        kernel.close(fd);
        return id;
    }
    FakeKernel::Object pinned(const char* name) { return kernel.objects.at(pinned_id(name)); }
    // The kernel detaches a cgroup link when its cgroup is removed; the link info then shows cgroup 0.
    void detach(const char* name) { kernel.objects.at(pinned_id(name)).cgroup_id = 0; }
    // The pod cgroup is gone: every cgroup link of the record reports cgroup id 0.
    void detach_all() {
        for (const auto& spec : kmesh::kPodProgs) detach(spec.name);
    }
    std::uint64_t cgroup_id_of(const fs::path& dir) {
        std::uint64_t id = 0;
        int fd = kernel.open_cgroup(dir.string(), &id);
        REQUIRE(fd >= 0);
        kernel.close(fd);
        return id;
    }
};

}  // namespace

// Programs kmesh-cni attaches per pod (connect4, connect6, sockops).
constexpr int kProgs = static_cast<int>(std::size(kmesh::kPodProgs));

TEST_CASE("parse_config: every supported version, plugin fields, unknown fields ignored") {
    for (const char* v : {"0.3.1", "0.4.0", "1.0.0", "1.1.0"}) {
        Config c = parse_config(config_json(
            v, R"("bpffsRoot":"/b","cgroupRoot":"/c","cgroupPath":"p","logFile":"/l","kubeConfig":"/k",)"
               R"("somethingElse":{"x":[1,2]})"));
        CHECK(c.cni_version == v);
        CHECK(c.name == "k8s-pod-network");
        CHECK(c.bpffs_root == "/b");
        CHECK(c.cgroup_root == "/c");
        CHECK(c.cgroup_path == "p");
        CHECK(c.log_file == "/l");
        CHECK(c.kube_config == "/k");
        REQUIRE(c.prev_result);
    }
    Config d = parse_config(config_json("1.0.0", "", false));
    CHECK(d.bpffs_root == "/sys/fs/bpf");
    CHECK(d.cgroup_root.empty());
    CHECK(d.cgroup_path.empty());
    CHECK(d.log_file == "/var/log/kmesh-cni.log");
    CHECK_FALSE(d.prev_result);
    CHECK(parse_config(config_json("1.0.0", R"("logFile":"")")).log_file.empty());
}

TEST_CASE("parse_config: prevResult is re-serialized verbatim with the config's cniVersion") {
    Config c = parse_config(config_json("1.0.0"));
    std::string expected = kPrevResult;
    expected.replace(expected.find("0.4.0"), 5, "1.0.0");
    CHECK(*c.prev_result == expected);

    Config no_version =
        parse_config(R"({"cniVersion":"0.4.0","name":"n","type":"kmesh-cni","prevResult":{"ips":[]}})");
    CHECK(*no_version.prev_result == R"({"ips":[],"cniVersion":"0.4.0"})");
}

TEST_CASE("parse_config: errors") {
    CHECK(error_code([] { parse_config(config_json("0.2.0")); }) == kErrIncompatibleVersion);
    CHECK(error_code([] { parse_config(R"({"type":"kmesh-cni"})"); }) == kErrInvalidConfig);
    CHECK(error_code([] { parse_config(config_json("1.0.0", R"("bpffsRoot":5)")); }) == kErrInvalidConfig);
    CHECK(error_code([] { parse_config(config_json("1.0.0", R"("prevResult":[])", false)); }) ==
          kErrInvalidConfig);
    CHECK(error_code([] { parse_config("[1]"); }) == kErrDecode);
    try {
        parse_config(R"({"cniVersion":"1.0.0",)");
        FAIL("no error");
    } catch (const CniError& e) {
        CHECK(e.code() == kErrDecode);
        CHECK(e.details().find("offset 22") != std::string::npos);
    }
}

TEST_CASE("parse_cni_args") {
    auto a = parse_cni_args(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
        "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1234-5678;");
    CHECK(a.size() == 5);
    CHECK(a["K8S_POD_NAME"] == "web-0");
    CHECK(a["K8S_POD_UID"] == "1234-5678");
    CHECK(parse_cni_args("").empty());
    CHECK(parse_cni_args("A=b=c;;B=")["A"] == "b=c");
    CHECK(parse_cni_args("A=b=c;;B=").at("B").empty());
    CHECK(error_code([] { parse_cni_args("A=1;junk"); }) == kErrInvalidEnv);
    CHECK(error_code([] { parse_cni_args("=1"); }) == kErrInvalidEnv);
}

TEST_CASE("parse_request: environment and command rules") {
    const std::string cfg = config_json("1.0.0");
    CHECK(parse_request(env("ADD"), cfg).command == Command::kAdd);
    CHECK(error_code([&] { parse_request(env(""), cfg); }) == kErrInvalidEnv);
    CHECK(error_code([&] { parse_request(env("FOO"), cfg); }) == kErrInvalidEnv);
    for (const char* bad : {"", "..", "a/b", "a b"}) {
        Env e = env("ADD");
        e.container_id = bad;
        CHECK(error_code([&] { parse_request(e, cfg); }) == kErrInvalidEnv);
    }
    CHECK(error_code([&] { parse_request(env("ADD", "K8S_POD_UID=../../x"), cfg); }) == kErrInvalidEnv);
    CHECK(parse_request(env("ADD", "K8S_POD_UID=abc-1_2"), cfg).args.at("K8S_POD_UID") == "abc-1_2");

    // VERSION needs neither a container id nor a config.
    Env v = env("VERSION");
    v.container_id.clear();
    CHECK(parse_request(v, "").command == Command::kVersion);
}

TEST_CASE("parse_request: prevResult required for ADD and CHECK, not for DEL") {
    CHECK(error_code([] { parse_request(env("ADD"), config_json("1.0.0", "", false)); }) ==
          kErrInvalidConfig);
    CHECK(error_code([] { parse_request(env("CHECK"), config_json("1.0.0", "", false)); }) ==
          kErrInvalidConfig);
    CHECK(error_code([] { parse_request(env("CHECK"), config_json("0.3.1")); }) == kErrIncompatibleVersion);
    CHECK(error_code([] { parse_request(env("ADD"), "{not json"); }) == kErrDecode);

    // containerd's second DEL: no netns, no prevResult.
    Env del = env("DEL");
    del.netns.clear();
    Request r = parse_request(del, config_json("0.4.0", "", false));
    CHECK(r.command == Command::kDel);
    CHECK(r.container_id == "c0ffee");
}

TEST_CASE("render_error and render_version") {
    rapidjson::Document d;
    d.Parse(render_error(CniError(11, R"(agent "x" down)", "d"), "0.4.0").c_str());
    REQUIRE(d.IsObject());
    CHECK(d.MemberCount() == 4);
    CHECK(std::string(d["cniVersion"].GetString()) == "0.4.0");
    CHECK(d["code"].GetInt() == 11);
    CHECK(std::string(d["msg"].GetString()) == R"(agent "x" down)");
    CHECK(std::string(d["details"].GetString()) == "d");
    CHECK(render_version() ==
          R"({"cniVersion":"1.1.0","supportedVersions":["0.3.1","0.4.0","1.0.0","1.1.0"]})");
}

TEST_CASE("ADD attaches both programs, prints prevResult, and is idempotent") {
    Fixture f;
    std::string out = f.run_cmd("ADD");
    CHECK(out == *f.request("ADD").config.prev_result);
    auto l4 = f.pinned(kmesh::kProgConnect4);
    auto l6 = f.pinned(kmesh::kProgConnect6);
    CHECK(l4.kind == FakeKernel::Object::kLink);
    CHECK(l4.prog_id == f.prog4);
    CHECK(l4.attach_type == BPF_CGROUP_INET4_CONNECT);
    CHECK(l6.prog_id == f.prog6);
    CHECK(l6.attach_type == BPF_CGROUP_INET6_CONNECT);
    auto sl = f.pinned(kmesh::kProgSkLookup);
    CHECK(sl.kind == FakeKernel::Object::kLink);
    CHECK(sl.prog_id == f.prog_sl);
    CHECK(sl.attach_type == BPF_SK_LOOKUP);
    CHECK(sl.netns_ino == f.kernel.netns_ino_of("/var/run/netns/x"));
    CHECK(f.kernel.link_creates == kProgs + 1);
    CHECK(f.kernel.fds.empty());

    f.run_cmd("ADD");
    CHECK(f.kernel.link_creates == kProgs + 1);  // all kept
    CHECK(f.kernel.attached_netns_links(sl.netns_ino, f.bpffs.path()) == 1);
    CHECK(f.pinned(kmesh::kProgConnect4).prog_id == f.prog4);
    CHECK(f.kernel.fds.empty());
}

TEST_CASE("ADD moves links of an old program to the new one in place, without a new link") {
    Fixture f;
    f.run_cmd("ADD");
    const std::uint32_t link4 = f.pinned_id(kmesh::kProgConnect4);
    const std::uint32_t link6 = f.pinned_id(kmesh::kProgConnect6);
    const std::uint32_t link_sl = f.pinned_id(kmesh::kProgSkLookup);
    const std::uint64_t pod_cgroup = f.pinned(kmesh::kProgConnect4).cgroup_id;
    f.load_agent();  // agent upgraded: new programs pinned
    f.run_cmd("ADD");
    CHECK(f.kernel.link_updates == kProgs + 1);
    CHECK(f.kernel.link_creates == kProgs + 1);  // no new link: the pod is never without the hook
    CHECK(f.pinned_id(kmesh::kProgSkLookup) == link_sl);
    CHECK(f.pinned(kmesh::kProgSkLookup).prog_id == f.prog_sl);
    CHECK(f.pinned_id(kmesh::kProgConnect4) == link4);
    CHECK(f.pinned_id(kmesh::kProgConnect6) == link6);
    CHECK(f.pinned(kmesh::kProgConnect4).prog_id == f.prog4);
    CHECK(f.pinned(kmesh::kProgConnect6).prog_id == f.prog6);
    CHECK(f.pinned(kmesh::kProgConnect4).cgroup_id == pod_cgroup);
    CHECK(f.run_cmd("CHECK").empty());
    CHECK(f.kernel.fds.empty());
}

TEST_CASE("ADD replaces links on another cgroup and detached links") {
    Fixture f;
    f.run_cmd("ADD");
    // The pod's cgroup is now another directory (another cgroup) than at the first ADD.
    fs::remove_all(f.cgroups.path() / "kubepods/besteffort");
    auto other = f.cgroups.mkdirs(std::string("kubepods/burstable/pod") + kUid);
    f.run_cmd("ADD");
    CHECK(f.kernel.link_creates == 2 * kProgs + 1);  // the cgroup links again; the netns link is kept
    CHECK(f.kernel.link_updates == 0);
    const std::uint64_t other_id = f.cgroup_id_of(other);
    CHECK(f.pinned(kmesh::kProgConnect4).cgroup_id == other_id);
    CHECK(f.pinned(kmesh::kProgConnect6).cgroup_id == other_id);

    // A detached link (its cgroup was removed) is replaced even when the program is current.
    const std::uint32_t link6 = f.pinned_id(kmesh::kProgConnect6);
    f.detach(kmesh::kProgConnect4);
    f.run_cmd("ADD");
    CHECK(f.kernel.link_creates == 2 * kProgs + 2);
    CHECK(f.pinned(kmesh::kProgConnect4).cgroup_id == other_id);
    CHECK(f.pinned_id(kmesh::kProgConnect6) == link6);

    // Detached and running an old program: replaced, not updated.
    f.load_agent();
    f.detach(kmesh::kProgConnect6);
    f.run_cmd("ADD");
    CHECK(f.kernel.link_creates == 2 * kProgs + 3);
    CHECK(f.kernel.link_updates == kProgs);  // all but connect6 (the netns link included)
    CHECK(f.pinned(kmesh::kProgConnect6).prog_id == f.prog6);
    CHECK(f.pinned(kmesh::kProgConnect6).cgroup_id == other_id);
    CHECK(f.pinned(kmesh::kProgConnect4).prog_id == f.prog4);
    CHECK(f.kernel.fds.empty());
}

TEST_CASE("ADD falls back to a new link when bpf_link_update fails") {
    Fixture f;
    f.run_cmd("ADD");
    f.load_agent();
    f.kernel.fail_link_update = -EINVAL;
    f.run_cmd("ADD");
    CHECK(f.kernel.link_updates == kProgs + 1);
    CHECK(f.kernel.link_creates == 2 * (kProgs + 1));
    CHECK(f.pinned(kmesh::kProgConnect4).prog_id == f.prog4);
    CHECK(f.pinned(kmesh::kProgConnect6).prog_id == f.prog6);
    CHECK(f.run_cmd("CHECK").empty());
    CHECK(f.kernel.fds.empty());
}

TEST_CASE("encode_pin_name: dots are encoded, other ids unchanged") {
    CHECK(kmesh::encode_pin_name("c0ffee") == "c0ffee");
    CHECK(kmesh::encode_pin_name("a_b-C9") == "a_b-C9");
    CHECK(kmesh::encode_pin_name("pod.1") == "pod%2E1");
    CHECK(kmesh::encode_pin_name("a..b.") == "a%2E%2Eb%2E");
    CHECK(kmesh::encode_pin_name("") == "");
    PinLayout layout{"/b"};
    CHECK(layout.pod_dir("c0ffee") == "/b/kmesh/pods/c0ffee");
    CHECK(layout.pod_dir("k8s.io.abc") == "/b/kmesh/pods/k8s%2Eio%2Eabc");
}

TEST_CASE("ADD, CHECK, DEL, DEL with a container id containing dots") {
    Fixture f;
    f.container_id = "k8s.pod.0";
    CHECK(f.run_cmd("ADD") == *f.request("ADD").config.prev_result);
    const fs::path dir = f.layout.pods_dir() + "/k8s%2Epod%2E0";
    REQUIRE(fs::is_directory(dir));
    for (const auto& entry : fs::directory_iterator(f.layout.pods_dir())) {
        CHECK(entry.path().filename().string().find('.') == std::string::npos);  // bpffs refuses dots
    }
    CHECK(fs::exists(dir / kmesh::kProgConnect4));
    CHECK(fs::exists(dir / kmesh::kProgConnect6));
    CHECK(f.run_cmd("CHECK").empty());
    CHECK(f.run_cmd("DEL").empty());
    CHECK_FALSE(fs::exists(dir));
    CHECK(f.run_cmd("DEL").empty());
    CHECK(error_code([&] { f.run_cmd("CHECK"); }) == kErrNotAttached);
    CHECK(f.kernel.fds.empty());
}

TEST_CASE("ADD is all-or-nothing when the second link fails") {
    Fixture f;
    f.kernel.fail_link_type = BPF_CGROUP_INET6_CONNECT;
    try {
        f.run_cmd("ADD");
        FAIL("no error");
    } catch (const CniError& e) {
        CHECK(e.code() == kErrAttach);
        CHECK(std::string(e.what()).find(kmesh::kProgConnect6) != std::string::npos);
    }
    CHECK(f.kernel.link_creates == 2);
    CHECK_FALSE(fs::exists(f.layout.pod_dir("c0ffee")));
    CHECK(f.kernel.fds.empty());  // the connect4 link has no pin and no fd left: detached
}

TEST_CASE("ADD errors: agent not running, pod cgroup not found") {
    Fixture f;
    fs::remove(f.layout.prog(kmesh::kProgConnect6));
    try {
        f.run_cmd("ADD");
        FAIL("no error");
    } catch (const CniError& e) {
        CHECK(e.code() == kErrTryAgainLater);
        CHECK(std::string(e.what()) ==
              "kmesh agent not running: " + f.layout.prog(kmesh::kProgConnect6) + " not found");
    }
    CHECK_FALSE(fs::exists(f.layout.pod_dir("c0ffee")));
    CHECK(f.kernel.link_creates == 0);

    Fixture g;
    fs::remove_all(g.cgroups.path() / "kubepods");
    try {
        g.run_cmd("ADD");
        FAIL("no error");
    } catch (const CniError& e) {
        CHECK(e.code() == kErrPodCgroupNotFound);
        CHECK(std::string(e.what()).find(kUid) != std::string::npos);
        CHECK(e.details().find("kubepods/burstable/pod") != std::string::npos);
        CHECK(e.details().find("kubepods-besteffort-pod") != std::string::npos);
    }

    // Without K8S_POD_UID only an explicit cgroupPath works.
    Request r =
        parse_request(env("ADD", "K8S_POD_NAME=web"),
                      config_json("1.0.0", R"("cgroupRoot":")" + g.cgroups.path().string() +
                                               R"(","bpffsRoot":")" + g.bpffs.path().string() + R"(")"));
    CHECK(error_code([&] { run(r, g.kernel, g.log); }) == kErrPodCgroupNotFound);
}

TEST_CASE("DEL removes the pod's links and succeeds when already gone or the agent is down") {
    Fixture f;
    f.run_cmd("ADD");
    REQUIRE(fs::exists(f.layout.pod_dir("c0ffee")));
    CHECK(f.run_cmd("DEL").empty());
    CHECK_FALSE(fs::exists(f.layout.pod_dir("c0ffee")));
    CHECK(f.run_cmd("DEL").empty());

    fs::remove_all(f.layout.progs_dir());
    CHECK(f.run_cmd("DEL").empty());
    CHECK(f.kernel.fds.empty());
}

TEST_CASE("CHECK verifies the links run the agent's current programs") {
    Fixture f;
    f.run_cmd("ADD");
    CHECK(f.run_cmd("CHECK").empty());

    f.load_agent();
    CHECK(error_code([&] { f.run_cmd("CHECK"); }) == kErrNotAttached);
    f.run_cmd("ADD");
    CHECK(f.run_cmd("CHECK").empty());

    fs::remove(fs::path(f.layout.pod_dir("c0ffee")) / kmesh::kProgConnect6);
    CHECK(error_code([&] { f.run_cmd("CHECK"); }) == kErrNotAttached);

    f.run_cmd("DEL");
    CHECK(error_code([&] { f.run_cmd("CHECK"); }) == kErrNotAttached);
    fs::remove_all(f.layout.progs_dir());
    CHECK(error_code([&] { f.run_cmd("CHECK"); }) == kErrTryAgainLater);
    CHECK(f.kernel.fds.empty());
}

TEST_CASE("CHECK verifies the links are on the pod's cgroup") {
    Fixture f;
    // Links of the current programs, but on another cgroup than the pod's (found from K8S_POD_UID).
    f.run_cmd("ADD");
    CHECK(f.run_cmd("CHECK").empty());
    fs::remove_all(f.cgroups.path() / "kubepods/besteffort");
    f.cgroups.mkdirs(std::string("kubepods/burstable/pod") + kUid);
    try {
        f.run_cmd("CHECK");
        FAIL("no error");
    } catch (const CniError& e) {
        CHECK(e.code() == kErrNotAttached);
        CHECK(std::string(e.what()).find("is attached to cgroup") != std::string::npos);
    }

    // Back on the pod cgroup; then the link detaches (cgroup removed under it).
    f.run_cmd("ADD");
    CHECK(f.run_cmd("CHECK").empty());
    f.detach(kmesh::kProgConnect6);
    CHECK(error_code([&] { f.run_cmd("CHECK"); }) == kErrNotAttached);
    CHECK(f.kernel.fds.empty());
}

// ---- CNI 1.1: DEL of any version, STATUS, GC ----

TEST_CASE("cniVersion 1.1.0: ADD, CHECK, DEL work; DEL succeeds for any version string") {
    Fixture f;
    CHECK(run(f.request("ADD", "", "1.1.0"), f.kernel, f.log) ==
          *f.request("ADD", "", "1.1.0").config.prev_result);
    CHECK(f.request("ADD", "", "1.1.0").config.prev_result->find(R"("cniVersion":"1.1.0")") !=
          std::string::npos);
    CHECK(run(f.request("CHECK", "", "1.1.0"), f.kernel, f.log).empty());
    CHECK(run(f.request("DEL", "", "1.1.0"), f.kernel, f.log).empty());
    CHECK_FALSE(fs::exists(f.layout.pod_dir("c0ffee")));

    // A version we do not know still cleans up: refusing would strand the sandbox.
    f.run_cmd("ADD");
    REQUIRE(fs::exists(f.layout.pod_dir("c0ffee")));
    CHECK(error_code([&] { f.request("ADD", "", "9.9.9"); }) == kErrIncompatibleVersion);
    CHECK(run(f.request("DEL", "", "9.9.9"), f.kernel, f.log).empty());
    CHECK_FALSE(fs::exists(f.layout.pod_dir("c0ffee")));
    CHECK(f.kernel.fds.empty());
}

TEST_CASE("DEL with a config ADD would refuse succeeds and deletes nothing") {
    Fixture f;
    f.run_cmd("ADD");
    Request r = parse_request(env("DEL"), R"({"cniVersion":"1.0.0","name":"n","type":"t","bpffsRoot":5})");
    CHECK_FALSE(r.unusable_config.empty());
    CHECK(run(r, f.kernel, f.log).empty());
    CHECK(fs::exists(f.layout.pod_dir("c0ffee")));
    // Undecodable stdin is still an error (a runtime bug, not a config).
    CHECK(error_code([] { parse_request(env("DEL"), "{"); }) == kErrDecode);
}

TEST_CASE("STATUS: ready when the agent's programs are pinned, code 50 otherwise") {
    Fixture f;
    auto status = [&] {
        return run(parse_request(env("STATUS"), f.config("STATUS", "", "1.1.0")), f.kernel, f.log);
    };
    CHECK(status().empty());
    fs::remove(f.layout.prog(kmesh::kProgConnect4));
    CHECK(error_code(status) == kErrPluginNotAvailable);
    f.load_agent();
    CHECK(status().empty());
    f.kernel.magic[f.bpffs.path().string()] = 0x01021994;  // tmpfs
    CHECK(error_code(status) == kErrPluginNotAvailable);
    // STATUS needs no container.
    Env e = env("STATUS");
    e.container_id.clear();
    e.netns.clear();
    CHECK(parse_request(e, f.config("STATUS", "", "1.1.0")).command == Command::kStatus);
    CHECK(f.kernel.fds.empty());
}

namespace {
std::string gc_config(Fixture& f, const std::string& network, const std::vector<std::string>& valid) {
    std::string list;
    for (const auto& id : valid) {
        list += std::string(list.empty() ? "" : ",") + R"({"containerID":")" + id + R"(","ifname":"eth0"})";
    }
    return R"({"cniVersion":"1.1.0","name":")" + network + R"(","type":"kmesh-cni","bpffsRoot":")" +
           f.bpffs.path().string() + R"(","cni.dev/valid-attachments":[)" + list + "]}";
}
void add_as(Fixture& f, const std::string& id, const std::string& network) {
    Request r =
        parse_request(env("ADD", std::string("K8S_POD_UID=") + kUid, id),
                      R"({"cniVersion":"1.1.0","name":")" + network +
                          R"(","type":"kmesh-cni","bpffsRoot":")" + f.bpffs.path().string() +
                          R"(","cgroupRoot":")" + f.cgroups.path().string() + R"(","prevResult":{}})");
    run(r, f.kernel, f.log);
}
}  // namespace

TEST_CASE("GC removes this network's attachments that are not valid, and nothing else") {
    Fixture f;
    add_as(f, "keep", "net-a");
    add_as(f, "stale", "net-a");
    add_as(f, "other", "net-b");  // another network chaining kmesh-cni
    add_as(f, "both", "net-a");
    add_as(f, "both", "net-b");
    // A dir of an older kmesh-cni (no network marker), still attached: not knowably ours.
    add_as(f, "legacy", "net-a");
    fs::remove(fs::path(f.layout.pod_dir("legacy")) / "net_net-a");
    f.container_id = "legacy";

    auto gc = [&](const std::string& network, const std::vector<std::string>& valid) {
        return run(parse_request(env("GC", "", ""), gc_config(f, network, valid)), f.kernel, f.log);
    };
    CHECK(gc("net-a", {"keep"}).empty());
    CHECK(fs::exists(f.layout.pod_dir("keep")));
    CHECK_FALSE(fs::exists(f.layout.pod_dir("stale")));
    CHECK(fs::exists(f.layout.pod_dir("other")));
    CHECK(fs::exists(f.layout.pod_dir("legacy")));
    // "both" loses net-a's claim but stays attached for net-b.
    CHECK(fs::exists(fs::path(f.layout.pod_dir("both")) / kmesh::kProgConnect4));
    CHECK_FALSE(fs::exists(fs::path(f.layout.pod_dir("both")) / "net_net-a"));
    CHECK(gc("net-b", {"other"}).empty());
    CHECK_FALSE(fs::exists(f.layout.pod_dir("both")));
    CHECK(fs::exists(f.layout.pod_dir("other")));

    // The legacy dir goes once its links are detached (its cgroup and netns are gone): always safe.
    f.detach_all();
    CHECK(gc("net-a", {"keep"}).empty());
    CHECK(fs::exists(f.layout.pod_dir("legacy")));  // its netns link is still attached
    f.kernel.destroy_netns("/var/run/netns/x");
    CHECK(gc("net-a", {"keep"}).empty());
    CHECK_FALSE(fs::exists(f.layout.pod_dir("legacy")));
    CHECK(fs::exists(f.layout.pod_dir("keep")));

    // Another network's record whose cgroup is gone (links detached) is safe to clean too.
    add_as(f, "gone", "net-b");
    f.container_id = "gone";
    f.detach_all();
    f.kernel.destroy_netns("/var/run/netns/x");
    CHECK(gc("net-a", {"keep"}).empty());
    CHECK_FALSE(fs::exists(f.layout.pod_dir("gone")));
    CHECK(fs::exists(f.layout.pod_dir("other")));

    // Files that are not pod dirs of ours are left alone.
    fs::create_directories(fs::path(f.layout.pods_dir()) / "_unknown");
    CHECK(gc("net-a", {}).empty());
    CHECK(fs::exists(fs::path(f.layout.pods_dir()) / "_unknown"));
    CHECK_FALSE(fs::exists(f.layout.pod_dir("keep")));

    // GC without the list would mean "everything is stale": refused.
    CHECK(error_code([&] {
              parse_request(env("GC"), R"({"cniVersion":"1.1.0","name":"net-a","type":"kmesh-cni"})");
          }) == kErrInvalidConfig);
    CHECK(f.kernel.fds.empty());
}

// ---- cgroupPath: one link per program on a shared cgroup ----

TEST_CASE("cgroupPath: many containers share one attachment; the last DEL detaches") {
    Fixture f;
    const fs::path shared = f.cgroups.mkdirs("shared");
    const std::uint64_t cgid = f.cgroup_id_of(shared);
    for (int i = 0; i < 70; ++i) f.run_shared("ADD", "ctr" + std::to_string(i));
    // Not 140 cgroup links: the kernel allows 64 programs per hook; one netns link per container.
    CHECK(f.kernel.link_creates == kProgs + 70);
    CHECK(f.kernel.attached_links(cgid, f.bpffs.path()) == kProgs);
    CHECK(f.kernel.attached_netns_links(f.kernel.netns_ino_of("/var/run/netns/ctr5"), f.bpffs.path()) == 1);
    for (int i = 0; i < 70; ++i) CHECK(f.run_shared("CHECK", "ctr" + std::to_string(i)).empty());
    for (int i = 0; i < 69; ++i) f.run_shared("DEL", "ctr" + std::to_string(i));
    CHECK(f.kernel.attached_links(cgid, f.bpffs.path()) == kProgs);
    CHECK(f.kernel.attached_netns_links(f.kernel.netns_ino_of("/var/run/netns/ctr5"), f.bpffs.path()) == 0);
    CHECK(f.kernel.attached_netns_links(f.kernel.netns_ino_of("/var/run/netns/ctr69"), f.bpffs.path()) == 1);
    CHECK(error_code([&] { f.run_shared("CHECK", "ctr0"); }) == kErrNotAttached);
    CHECK(f.run_shared("CHECK", "ctr69").empty());
    f.run_shared("DEL", "ctr69");
    CHECK(f.kernel.attached_links(cgid, f.bpffs.path()) == 0);
    CHECK(std::distance(fs::directory_iterator(f.layout.pods_dir()), fs::directory_iterator{}) == 0);
    f.run_shared("DEL", "ctr69");  // repeated DEL
    CHECK(f.kernel.fds.empty());
}

TEST_CASE("a failed ADD removes only what it created") {
    Fixture f;
    f.run_cmd("ADD");
    const std::uint32_t link4 = f.pinned_id(kmesh::kProgConnect4);
    f.detach(kmesh::kProgConnect6);  // must be re-created, and that fails
    f.kernel.fail_link_type = BPF_CGROUP_INET6_CONNECT;
    CHECK(error_code([&] { f.run_cmd("ADD"); }) == kErrAttach);
    // The pod dir and the connect4 link were there before this ADD: kept.
    CHECK(f.pinned_id(kmesh::kProgConnect4) == link4);
    CHECK(fs::exists(fs::path(f.layout.pod_dir("c0ffee")) / "net_k8s-pod-network"));
    f.kernel.fail_link_type.reset();
    f.run_cmd("ADD");
    CHECK(f.run_cmd("CHECK").empty());

    // Shared cgroup: a failing first user leaves no link set behind.
    const std::uint64_t cgid = f.cgroup_id_of(f.cgroups.mkdirs("shared"));
    f.kernel.fail_link_type = BPF_CGROUP_INET6_CONNECT;
    CHECK(error_code([&] { f.run_shared("ADD", "a"); }) == kErrAttach);
    CHECK(f.kernel.attached_links(cgid, f.bpffs.path()) == 0);
    CHECK_FALSE(fs::exists(fs::path(f.layout.pods_dir()) / ("_cgroup_" + std::to_string(cgid))));
    CHECK(f.kernel.fds.empty());
}

TEST_CASE("cgroupPath must be strictly below cgroupRoot") {
    Fixture f;
    f.cgroups.mkdirs("shared");
    TempDir outside;
    f.kernel.magic[fs::canonical(outside.path()).string()] = CGROUP2_SUPER_MAGIC;
    fs::create_symlink(outside.path(), f.cgroups.path() / "escape");
    for (const std::string& bad : std::vector<std::string>{"..", "../x", "shared/../..", ".", "/",
                                                           outside.path().string(), "escape"}) {
        CAPTURE(bad);
        CHECK(error_code([&] { f.run_shared("ADD", "a", bad); }) == kErrInvalidConfig);
    }
    CHECK(f.kernel.link_creates == 0);
    // An absolute path below the root is fine.
    f.run_shared("ADD", "a", (f.cgroups.path() / "shared").string());
    CHECK(f.kernel.link_creates == kProgs + 1);
}

TEST_CASE("cgroupRoot must be on cgroup v2") {
    Fixture f;
    TempDir plain;
    auto r = parse_request(env("ADD", std::string("K8S_POD_UID=") + kUid),
                           config_json("1.0.0", R"("bpffsRoot":")" + f.bpffs.path().string() +
                                                    R"(","cgroupRoot":")" + plain.path().string() + R"(")"));
    CHECK(error_code([&] { run(r, f.kernel, f.log); }) == kErrInvalidConfig);
    auto root = parse_request(
        env("ADD", std::string("K8S_POD_UID=") + kUid),
        config_json("1.0.0", R"("bpffsRoot":")" + f.bpffs.path().string() + R"(","cgroupRoot":"/")"));
    CHECK(error_code([&] { run(root, f.kernel, f.log); }) == kErrInvalidConfig);
}

// ---- bpffsRoot must be a bpffs ----

TEST_CASE("bpffsRoot on another filesystem: ADD/CHECK refuse (code 7), DEL deletes nothing and succeeds") {
    Fixture f;
    f.kernel.magic[f.bpffs.path().string()] = 0x01021994;  // a plain tmpfs dir
    const fs::path victim = fs::path(f.layout.pod_dir("c0ffee")) / "precious";
    fs::create_directories(victim.parent_path());
    std::ofstream(victim) << "data";
    try {
        f.run_cmd("ADD");
        FAIL("no error");
    } catch (const CniError& e) {
        CHECK(e.code() == kErrInvalidConfig);
        CHECK(std::string(e.what()).find("not a bpffs") != std::string::npos);
    }
    CHECK(error_code([&] { f.run_cmd("CHECK"); }) == kErrInvalidConfig);
    CHECK(f.run_cmd("DEL").empty());
    CHECK(fs::exists(victim));
    CHECK(run(parse_request(env("GC"), gc_config(f, "k8s-pod-network", {})), f.kernel, f.log).empty());
    CHECK(fs::exists(victim));
}

// ---- hostile input ----

TEST_CASE("deeply nested JSON is a decode error, not a crash") {
    for (const std::string& json :
         {std::string(200000, '['), "{\"a\":" + std::string(100000, '{'),
          config_json("1.0.0", R"("x":)" + std::string(70, '[') + std::string(70, ']'))}) {
        CHECK(error_code([&] { parse_config(json); }) == kErrDecode);
        CHECK(error_code([&] { parse_request(env("ADD"), json); }) == kErrDecode);
        CHECK(error_code([&] { parse_request(env("DEL"), json); }) == kErrDecode);
    }
    // Brackets inside strings do not count; moderate nesting is fine.
    CHECK(parse_config(config_json("1.0.0", R"("x":")" + std::string(1000, '[') + R"(")")).name ==
          "k8s-pod-network");
    CHECK(parse_config(config_json("1.0.0", R"("x":)" + std::string(30, '[') + std::string(30, ']'))).name ==
          "k8s-pod-network");
}

namespace {
// Parses `json` strictly: UTF-8 validated.
bool valid_json(const std::string& json, rapidjson::Document* out = nullptr) {
    rapidjson::Document d;
    d.Parse<rapidjson::kParseValidateEncodingFlag>(json.c_str(), json.size());
    if (out) out->CopyFrom(d, out->GetAllocator());
    return !d.HasParseError();
}
}  // namespace

TEST_CASE("error objects are valid UTF-8 JSON whatever the input; invalid UTF-8 in stdin is a decode error") {
    Env bad_id = env("ADD");
    bad_id.container_id = "a\xff\xfe\n\"b";
    std::string out = check_input(bad_id, config_json("1.0.0"));
    CHECK(valid_json(out));
    CHECK(out.find("\"code\":4") != std::string::npos);
    CHECK(valid_json(render_error(CniError(5, "x\xc3", "\xed\xa0\x80 \x01"), "1.0.0")));
    CHECK(to_valid_utf8("ok \xc3\xa9 \xff") == "ok \xc3\xa9 \xEF\xBF\xBD");
    // Raw invalid UTF-8 in the config would be echoed in prevResult: refused.
    CHECK(error_code([] { parse_config(config_json("1.0.0", "\"x\":\"\xff\"")); }) == kErrDecode);
    // Valid bytes, but an escaped unpaired surrogate in prevResult would be passed on as invalid
    // UTF-8 (found by fuzz/cni_fuzz.cpp): refused as a decode error; a proper pair passes.
    CHECK(error_code([] {
              parse_config(R"({"cniVersion":"1.0.0","name":"n","type":"t","prevResult":{"s":"\udc00"}})");
          }) == kErrDecode);
    auto paired =
        parse_config(R"({"cniVersion":"1.0.0","name":"n","type":"t","prevResult":{"s":"\ud83d\ude00"}})");
    REQUIRE(paired.prev_result);
    CHECK(valid_json(*paired.prev_result));
}

TEST_CASE("errors report the config's cniVersion") {
    rapidjson::Document d;
    REQUIRE(valid_json(check_input(env("ADD"), config_json("1.1.0", "", false)), &d));
    CHECK(d["code"].GetInt() == kErrInvalidConfig);
    CHECK(std::string(d["cniVersion"].GetString()) == "1.1.0");
    Env no_netns = env("ADD");
    no_netns.netns.clear();
    REQUIRE(valid_json(check_input(no_netns, config_json("0.4.0")), &d));
    CHECK(std::string(d["cniVersion"].GetString()) == "0.4.0");
    REQUIRE(valid_json(check_input(env("ADD"), config_json("7.0.0")), &d));
    CHECK(d["code"].GetInt() == kErrIncompatibleVersion);
    CHECK(std::string(d["cniVersion"].GetString()) == kCniVersion);
}

TEST_CASE("spec-required fields and environment") {
    CHECK(error_code([] { parse_config(R"({"cniVersion":"1.0.0","type":"kmesh-cni"})"); }) ==
          kErrInvalidConfig);
    CHECK(error_code([] { parse_config(R"({"cniVersion":"1.0.0","name":"n"})"); }) == kErrInvalidConfig);
    CHECK(error_code([] { parse_config(R"({"cniVersion":"1.0.0","name":"-n","type":"t"})"); }) ==
          kErrInvalidConfig);
    CHECK(error_code([] {
              parse_config(R"({"cniVersion":"1.0.0","name":"n","type":"t","bpffsRoot":"/a\u0000b"})");
          }) == kErrInvalidConfig);
    for (const char* cmd : {"ADD", "CHECK"}) {
        for (auto field : {&Env::netns, &Env::ifname, &Env::path}) {
            Env e = env(cmd);
            e.*field = "";
            CHECK(error_code([&] { parse_request(e, config_json("1.0.0")); }) == kErrInvalidEnv);
        }
    }
    Env del = env("DEL");
    del.netns.clear();
    del.ifname.clear();
    del.path.clear();
    CHECK(parse_request(del, config_json("1.0.0", "", false)).command == Command::kDel);
    for (const std::string& bad : {std::string("-abc"), std::string("_x"), std::string(".a"),
                                   std::string(300, 'a'), std::string(100, '.'), std::string("a\nb")}) {
        Env e = env("ADD");
        e.container_id = bad;
        CHECK(error_code([&] { parse_request(e, config_json("1.0.0")); }) == kErrInvalidEnv);
    }
    Env ok = env("ADD");
    ok.container_id = std::string(200, 'a');
    CHECK(parse_request(ok, config_json("1.0.0")).container_id.size() == 200);
}

// ---- logging ----

namespace {
std::string slurp(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}
}  // namespace

TEST_CASE("log: VERSION is not logged; early errors go to the config's logFile; lines are escaped") {
    Fixture f;
    TempDir logs;
    const fs::path def = logs.path() / "default.log";
    const fs::path mine = logs.path() / "mine.log";
    std::string out;
    Env v = env("VERSION");
    CHECK(plugin_main(v, "", f.kernel, out, def.string()) == 0);
    CHECK(out == render_version());
    CHECK_FALSE(fs::exists(def));

    // Refused before the config is accepted (bad container id): logged where the config says.
    Env forged = env("ADD");
    forged.container_id = "x\n2030-01-01T00:00:00.000 [info] FORGED";
    const std::string cfg = config_json("1.0.0", R"("logFile":")" + mine.string() + R"(")");
    CHECK(plugin_main(forged, cfg, f.kernel, out, def.string()) == 1);
    CHECK(valid_json(out));
    CHECK_FALSE(fs::exists(def));
    const std::string text = slurp(mine);
    CHECK(text.find("x\\x0a2030") != std::string::npos);
    CHECK(text.find("\n2030-01-01") == std::string::npos);  // no forged line
    // "logFile": "" means no log at all, even for errors.
    CHECK(plugin_main(forged, config_json("1.0.0", R"("logFile":"")"), f.kernel, out, def.string()) == 1);
    CHECK_FALSE(fs::exists(def));
    // Unreadable stdin: only then the default file.
    CHECK(plugin_main(env("ADD"), "{", f.kernel, out, def.string()) == 1);
    CHECK(fs::exists(def));
    CHECK(escape_for_log("a\tb\\c\x7f\xff\xc3\xa9") == "a\\x09b\\x5cc\\x7f\\xff\xc3\xa9");
}

TEST_CASE("log: rotated to .1 at kLogRotateBytes") {
    Fixture f;
    TempDir logs;
    const fs::path log = logs.path() / "cni.log";
    std::ofstream(log) << std::string(kLogRotateBytes, 'x') << "\n";
    std::string out;
    const std::string cfg = f.config("DEL", R"("logFile":")" + log.string() + R"(")");
    CHECK(plugin_main(env("DEL"), cfg, f.kernel, out, "") == 0);
    REQUIRE(fs::exists(log.string() + ".1"));
    CHECK(fs::file_size(log.string() + ".1") > kLogRotateBytes);
    CHECK(fs::file_size(log) < 4096);
    CHECK(slurp(log).find("DEL") != std::string::npos);
    for (int i = 0; i < 3; ++i) plugin_main(env("DEL"), cfg, f.kernel, out, "");
    CHECK(!fs::exists(log.string() + ".2"));
}

// ---- the sk_lookup link on the pod's network namespace (L4 authorization) ----

TEST_CASE("ADD attaches sk_lookup to CNI_NETNS; CHECK verifies it; DEL removes it") {
    Fixture f;
    f.run_cmd("ADD");
    const std::uint64_t ino = f.kernel.netns_ino_of("/var/run/netns/x");
    CHECK(f.kernel.attached_netns_links(ino, f.bpffs.path()) == 1);
    CHECK(f.run_cmd("CHECK").empty());

    // CHECK: missing, detached (netns gone) or on another netns are all "not attached".
    fs::remove(fs::path(f.layout.pod_dir("c0ffee")) / kmesh::kProgSkLookup);
    CHECK(f.kernel.attached_netns_links(ino, f.bpffs.path()) == 0);  // unpinned: detached
    try {
        f.run_cmd("CHECK");
        FAIL("no error");
    } catch (const CniError& e) {
        CHECK(e.code() == kErrNotAttached);
        CHECK(std::string(e.what()).find(kmesh::kProgSkLookup) != std::string::npos);
    }
    f.run_cmd("ADD");  // repairs it
    CHECK(f.run_cmd("CHECK").empty());
    f.kernel.destroy_netns("/var/run/netns/x");
    try {
        f.run_cmd("CHECK");
        FAIL("no error");
    } catch (const CniError& e) {
        CHECK(e.code() == kErrNotAttached);
        CHECK(std::string(e.what()).find("detached (netns gone)") != std::string::npos);
    }
    // A new netns at that path (sandbox re-created): ADD replaces the detached link.
    const int creates = f.kernel.link_creates;
    f.run_cmd("ADD");
    CHECK(f.kernel.link_creates == creates + 1);
    CHECK(f.pinned(kmesh::kProgSkLookup).netns_ino == f.kernel.netns_ino_of("/var/run/netns/x"));
    CHECK(f.run_cmd("CHECK").empty());

    CHECK(f.run_cmd("DEL").empty());
    CHECK(f.kernel.attached_netns_links(f.kernel.netns_ino_of("/var/run/netns/x"), f.bpffs.path()) == 0);
    CHECK(f.kernel.fds.empty());
}

TEST_CASE("ADD is all-or-nothing when the netns cannot be opened or the sk_lookup link fails") {
    Fixture f;
    f.kernel.missing_netns.insert("/var/run/netns/x");
    CHECK(error_code([&] { f.run_cmd("ADD"); }) == kErrAttach);
    CHECK(f.kernel.link_creates == 0);  // opened before anything is attached
    CHECK_FALSE(fs::exists(f.layout.pod_dir("c0ffee")));
    f.kernel.missing_netns.clear();

    f.kernel.fail_link_type = BPF_SK_LOOKUP;
    CHECK(error_code([&] { f.run_cmd("ADD"); }) == kErrAttach);
    CHECK_FALSE(fs::exists(f.layout.pod_dir("c0ffee")));
    const std::uint64_t cgid =
        f.cgroup_id_of(f.cgroups.path() / "kubepods/besteffort" / (std::string("pod") + kUid));
    CHECK(f.kernel.attached_links(cgid, f.bpffs.path()) == 0);  // the cgroup links it made are gone
    f.kernel.fail_link_type.reset();

    // The agent has not pinned the sk_lookup program (older agent still running): try again later.
    fs::remove(f.layout.prog(kmesh::kProgSkLookup));
    CHECK(error_code([&] { f.run_cmd("ADD"); }) == kErrTryAgainLater);
    CHECK(f.kernel.link_creates == kProgs + 1);  // the cgroup links and the failed one above; none now
    CHECK(f.kernel.fds.empty());
}

TEST_CASE("an old record without the netns link gets it at ADD; CHECK fails until then") {
    Fixture f;
    f.run_cmd("ADD");
    // As kmesh-cni before issue 9 left it: cgroup links only.
    fs::remove(fs::path(f.layout.pod_dir("c0ffee")) / kmesh::kProgSkLookup);
    CHECK(error_code([&] { f.run_cmd("CHECK"); }) == kErrNotAttached);
    const int creates = f.kernel.link_creates;
    f.run_cmd("ADD");
    CHECK(f.kernel.link_creates == creates + 1);
    CHECK(f.run_cmd("CHECK").empty());
}

TEST_CASE("record links: a live netns link keeps a record, a detached one counts as detached") {
    Fixture f;
    f.run_cmd("ADD");
    const fs::path dir = f.layout.pod_dir("c0ffee");
    kmesh::RecordLinks links = kmesh::read_record_links(f.kernel, dir);
    CHECK(links.live_cgroups.size() == kProgs);
    REQUIRE(links.live_netns.size() == 1);
    CHECK(links.live_netns[0] == f.kernel.netns_ino_of("/var/run/netns/x"));
    f.detach_all();
    CHECK_FALSE(kmesh::read_record_links(f.kernel, dir).all_detached());
    CHECK_FALSE(kmesh::all_links_detached(f.kernel, dir));
    f.kernel.destroy_netns("/var/run/netns/x");
    links = kmesh::read_record_links(f.kernel, dir);
    CHECK(links.detached == kProgs + 1);
    CHECK(links.all_detached());
    CHECK(kmesh::all_links_detached(f.kernel, dir));
    CHECK(f.kernel.fds.empty());
}
