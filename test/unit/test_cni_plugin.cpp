#include <doctest/doctest.h>
#include <rapidjson/document.h>
#include <spdlog/logger.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "cni/plugin.hpp"
#include "common/pin_layout.hpp"
#include "temp_dir.hpp"

using namespace kmesh::cni;
using kmesh::PinLayout;
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

// Pins are files holding an object id; fds map to objects. A link stays attached while a pin or an
// open fd refers to it.
class FakeKernel : public Kernel {
  public:
    struct Object {
        enum Kind { kProg, kLink, kCgroup } kind;
        std::uint32_t prog_id = 0;
        std::uint64_t cgroup_id = 0;
        std::uint32_t attach_type = 0;
    };

    std::map<std::uint32_t, Object> objects;
    std::map<int, std::uint32_t> fds;
    std::optional<bpf_attach_type> fail_link_type;
    int fail_link_update = 0;  // -errno returned by link_update when non-zero
    int link_creates = 0;
    int link_updates = 0;

    std::uint32_t pin_new_prog(const std::string& path) {
        std::uint32_t id = next_id_++;
        objects[id] = {Object::kProg};
        fs::create_directories(fs::path(path).parent_path());
        std::ofstream(path, std::ios::trunc) << id;
        return id;
    }

    int obj_get(const std::string& path) override {
        std::ifstream in(path);
        std::uint32_t id = 0;
        if (!(in >> id)) return -ENOENT;
        return new_fd(id);
    }
    int obj_pin(int fd, const std::string& path) override {
        if (fs::exists(path)) return -EEXIST;
        if (!fs::is_directory(fs::path(path).parent_path())) return -ENOENT;
        std::ofstream(path) << fds.at(fd);
        return 0;
    }
    int open_cgroup(const std::string& dir, std::uint64_t* cgroup_id) override {
        if (!fs::is_directory(dir)) return -ENOENT;
        auto [it, added] = cgroups_.try_emplace(fs::canonical(dir).string(), 0);
        if (added) {
            it->second = next_id_++;
            objects[it->second] = {Object::kCgroup, 0, 1000 + it->second};
        }
        *cgroup_id = objects[it->second].cgroup_id;
        return new_fd(it->second);
    }
    int link_create(int prog_fd, int cgroup_fd, bpf_attach_type type) override {
        ++link_creates;
        if (type == fail_link_type) return -EPERM;
        const Object& prog = objects.at(fds.at(prog_fd));
        const Object& cg = objects.at(fds.at(cgroup_fd));
        REQUIRE(prog.kind == Object::kProg);
        REQUIRE(cg.kind == Object::kCgroup);
        std::uint32_t id = next_id_++;
        objects[id] = {Object::kLink, fds.at(prog_fd), cg.cgroup_id, static_cast<std::uint32_t>(type)};
        return new_fd(id);
    }
    int link_update(int link_fd, int prog_fd) override {
        ++link_updates;
        if (fail_link_update != 0) return fail_link_update;
        Object& link = objects.at(fds.at(link_fd));
        REQUIRE(link.kind == Object::kLink);
        REQUIRE(objects.at(fds.at(prog_fd)).kind == Object::kProg);
        if (link.cgroup_id == 0) return -ENOLINK;
        link.prog_id = fds.at(prog_fd);
        return 0;
    }
    int prog_id(int prog_fd, std::uint32_t* id) override {
        *id = fds.at(prog_fd);
        return objects.at(*id).kind == Object::kProg ? 0 : -EINVAL;
    }
    int link_info(int link_fd, LinkInfo* info) override {
        const Object& o = objects.at(fds.at(link_fd));
        if (o.kind != Object::kLink) return -EINVAL;
        *info = {o.prog_id, o.cgroup_id, o.attach_type};
        return 0;
    }
    void close(int fd) override { CHECK(fds.erase(fd) == 1); }

  private:
    int new_fd(std::uint32_t id) {
        fds[next_fd_] = id;
        return next_fd_++;
    }
    std::map<std::string, std::uint32_t> cgroups_;  // cgroup dir -> object id
    int next_fd_ = 100;
    std::uint32_t next_id_ = 1;
};

// A bpffs stand-in with the agent's programs pinned, and a cgroupfs pod cgroup.
struct Fixture {
    TempDir bpffs;
    TempDir cgroups;
    FakeKernel kernel;
    spdlog::logger log{"test"};  // no sinks
    PinLayout layout{bpffs.path().string()};
    std::string container_id = "c0ffee";
    std::uint32_t prog4 = 0, prog6 = 0;

    Fixture() {
        cgroups.mkdirs(std::string("kubepods/besteffort/pod") + kUid);
        load_agent();
    }
    void load_agent() {
        prog4 = kernel.pin_new_prog(layout.prog(kmesh::kProgConnect4));
        prog6 = kernel.pin_new_prog(layout.prog(kmesh::kProgConnect6));
    }
    Request request(const std::string& command, const std::string& extra_config = "") {
        std::string cfg = R"("bpffsRoot":")" + bpffs.path().string() + R"(","cgroupRoot":")" +
                          cgroups.path().string() + R"(")";
        if (!extra_config.empty()) cfg += "," + extra_config;
        return parse_request(
            env(command, std::string("K8S_POD_NAMESPACE=ns;K8S_POD_UID=") + kUid, container_id),
            config_json("1.0.0", cfg, command != "DEL"));
    }
    std::string run_cmd(const std::string& command) { return run(request(command), kernel, log); }
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
    std::uint64_t cgroup_id_of(const fs::path& dir) {
        std::uint64_t id = 0;
        int fd = kernel.open_cgroup(dir.string(), &id);
        REQUIRE(fd >= 0);
        kernel.close(fd);
        return id;
    }
};

}  // namespace

TEST_CASE("parse_config: every supported version, plugin fields, unknown fields ignored") {
    for (const char* v : {"0.3.1", "0.4.0", "1.0.0"}) {
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

    Config no_version = parse_config(R"({"cniVersion":"0.4.0","type":"kmesh-cni","prevResult":{"ips":[]}})");
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
    CHECK(error_code([&] { parse_request(env("STATUS"), cfg); }) == kErrInvalidEnv);
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
    CHECK(render_version() == R"({"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0"]})");
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
    CHECK(f.kernel.link_creates == 2);
    CHECK(f.kernel.fds.empty());

    f.run_cmd("ADD");
    CHECK(f.kernel.link_creates == 2);  // both kept
    CHECK(f.pinned(kmesh::kProgConnect4).prog_id == f.prog4);
    CHECK(f.kernel.fds.empty());
}

TEST_CASE("ADD moves links of an old program to the new one in place, without a new link") {
    Fixture f;
    f.run_cmd("ADD");
    const std::uint32_t link4 = f.pinned_id(kmesh::kProgConnect4);
    const std::uint32_t link6 = f.pinned_id(kmesh::kProgConnect6);
    const std::uint64_t pod_cgroup = f.pinned(kmesh::kProgConnect4).cgroup_id;
    f.load_agent();  // agent upgraded: new programs pinned
    f.run_cmd("ADD");
    CHECK(f.kernel.link_updates == 2);
    CHECK(f.kernel.link_creates == 2);  // no new link: the pod is never without the hook
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
    auto other = f.cgroups.mkdirs("other");
    run(f.request("ADD", R"("cgroupPath":"other")"), f.kernel, f.log);
    CHECK(f.kernel.link_creates == 4);
    CHECK(f.kernel.link_updates == 0);
    const std::uint64_t other_id = f.cgroup_id_of(other);
    CHECK(f.pinned(kmesh::kProgConnect4).cgroup_id == other_id);
    CHECK(f.pinned(kmesh::kProgConnect6).cgroup_id == other_id);

    // A detached link (its cgroup was removed) is replaced even when the program is current.
    const std::uint32_t link6 = f.pinned_id(kmesh::kProgConnect6);
    f.detach(kmesh::kProgConnect4);
    run(f.request("ADD", R"("cgroupPath":"other")"), f.kernel, f.log);
    CHECK(f.kernel.link_creates == 5);
    CHECK(f.pinned(kmesh::kProgConnect4).cgroup_id == other_id);
    CHECK(f.pinned_id(kmesh::kProgConnect6) == link6);

    // Detached and running an old program: replaced, not updated.
    f.load_agent();
    f.detach(kmesh::kProgConnect6);
    run(f.request("ADD", R"("cgroupPath":"other")"), f.kernel, f.log);
    CHECK(f.kernel.link_creates == 6);
    CHECK(f.kernel.link_updates == 1);  // connect4 only
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
    CHECK(f.kernel.link_updates == 2);
    CHECK(f.kernel.link_creates == 4);
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
    Request r = parse_request(env("ADD", "K8S_POD_NAME=web"),
                              config_json("1.0.0", R"("cgroupRoot":")" + g.cgroups.path().string() + R"(")"));
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
    f.cgroups.mkdirs("other");
    // Links of the current programs, but on another cgroup than the pod's (found from K8S_POD_UID).
    run(f.request("ADD", R"("cgroupPath":"other")"), f.kernel, f.log);
    CHECK(run(f.request("CHECK", R"("cgroupPath":"other")"), f.kernel, f.log).empty());
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
