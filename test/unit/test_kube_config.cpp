// load_kubeconfig / load_in_cluster over temp files. The expectations follow kubeconfig's
// documented format (clientcmd v1), not the loader's code.
#include <doctest/doctest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/kube/api.hpp"
#include "temp_dir.hpp"

using namespace kmesh;
using namespace kmesh::kube;
using kmesh::test::TempDir;

namespace {

void write(const std::filesystem::path& p, const std::string& text) {
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p) << text;
}

// base64 of "CA-PEM", "CERT-PEM", "KEY-PEM" (printf 'CA-PEM' | base64)
constexpr const char* kCaB64 = "Q0EtUEVN";
constexpr const char* kCertB64 = "Q0VSVC1QRU0=";
constexpr const char* kKeyB64 = "S0VZLVBFTQ==";

class EnvGuard {
  public:
    EnvGuard(const char* name, const char* value) : name_(name) {
        if (const char* old = getenv(name)) old_ = old, had_ = true;
        if (value) {
            setenv(name, value, 1);
        } else {
            unsetenv(name);
        }
    }
    ~EnvGuard() {
        if (had_) {
            setenv(name_, old_.c_str(), 1);
        } else {
            unsetenv(name_);
        }
    }

  private:
    const char* name_;
    std::string old_;
    bool had_ = false;
};

}  // namespace

TEST_CASE("kubeconfig: YAML, current-context, relative file paths against the kubeconfig's dir") {
    TempDir tmp;
    write(tmp.path() / "cfg/certs/ca.crt", "CA");
    write(tmp.path() / "cfg/kubeconfig", R"(apiVersion: v1
kind: Config
clusters:
- name: other
  cluster:
    server: https://other:6443
- name: main
  cluster:
    server: https://10.0.0.1:6443/
    certificate-authority: certs/ca.crt
users:
- name: u
  user:
    tokenFile: ../tok
    client-certificate: certs/c.crt
    client-key: /abs/c.key
contexts:
- name: ctx-other
  context: {cluster: other, user: u}
- name: ctx-main
  context:
    cluster: main
    user: u
current-context: ctx-main
)");
    auto c = load_kubeconfig((tmp.path() / "cfg/kubeconfig").string());
    REQUIRE_MESSAGE(c.is_ok(), c.status().to_string());
    CHECK(c->server == "https://10.0.0.1:6443");  // trailing slash dropped
    CHECK(c->ca_file == (tmp.path() / "cfg/certs/ca.crt").string());
    CHECK(c->token_file == (tmp.path() / "cfg/../tok").string());
    CHECK(c->client_cert_file == (tmp.path() / "cfg/certs/c.crt").string());
    CHECK(c->client_key_file == "/abs/c.key");
    CHECK(c->token.empty());
    CHECK_FALSE(c->insecure_skip_tls_verify);

    auto other = load_kubeconfig((tmp.path() / "cfg/kubeconfig").string(), "ctx-other");
    REQUIRE(other.is_ok());
    CHECK(other->server == "https://other:6443");
    CHECK(load_kubeconfig((tmp.path() / "cfg/kubeconfig").string(), "nope").status().code() ==
          Errc::kInvalidArgument);
}

TEST_CASE("kubeconfig: JSON with -data fields (base64) and an inline token") {
    TempDir tmp;
    write(tmp.path() / "kc.json", std::string(R"({"apiVersion":"v1","kind":"Config","current-context":"c",
      "clusters":[{"name":"k","cluster":{"server":"https://[fd00::1]:443","certificate-authority-data":")") +
                                      kCaB64 + R"("}}],
      "users":[{"name":"u","user":{"token":"abc.def","client-certificate-data":")" +
                                      kCertB64 + R"(","client-key-data":")" + kKeyB64 + R"("}}],
      "contexts":[{"name":"c","context":{"cluster":"k","user":"u"}}]})");
    auto c = load_kubeconfig((tmp.path() / "kc.json").string());
    REQUIRE_MESSAGE(c.is_ok(), c.status().to_string());
    CHECK(c->server == "https://[fd00::1]:443");
    CHECK(c->ca_pem == "CA-PEM");
    CHECK(c->ca_file.empty());
    CHECK(c->token == "abc.def");
    CHECK(c->client_cert_pem == "CERT-PEM");
    CHECK(c->client_key_pem == "KEY-PEM");
}

TEST_CASE("kubeconfig: insecure-skip-tls-verify is refused unless allowed") {
    TempDir tmp;
    write(tmp.path() / "kc", R"(clusters:
- name: k
  cluster: {server: "https://h:1", insecure-skip-tls-verify: true}
contexts:
- name: c
  context: {cluster: k}
current-context: c
)");
    auto refused = load_kubeconfig((tmp.path() / "kc").string());
    CHECK(refused.status().code() == Errc::kInvalidArgument);
    CHECK(refused.status().message().find("insecure-skip-tls-verify") != std::string::npos);
    auto allowed = load_kubeconfig((tmp.path() / "kc").string(), "", true);
    REQUIRE(allowed.is_ok());
    CHECK(allowed->insecure_skip_tls_verify);
}

TEST_CASE("kubeconfig: exec and auth-provider users are refused by name") {
    TempDir tmp;
    for (const char* kind : {"exec", "auth-provider"}) {
        write(tmp.path() / "kc", std::string(R"(clusters:
- name: k
  cluster: {server: "https://h:1"}
users:
- name: u
  user:
    )") + kind + R"(:
      command: aws
contexts:
- name: c
  context: {cluster: k, user: u}
current-context: c
)");
        auto r = load_kubeconfig((tmp.path() / "kc").string());
        CHECK(r.status().code() == Errc::kInvalidArgument);
        CHECK(r.status().message().find(kind) != std::string::npos);
    }
}

TEST_CASE("kubeconfig: errors name the problem") {
    TempDir tmp;
    CHECK(load_kubeconfig((tmp.path() / "missing").string()).status().code() == Errc::kNotFound);
    write(tmp.path() / "bad", "clusters: [\n");
    CHECK(load_kubeconfig((tmp.path() / "bad").string()).status().code() == Errc::kDataLoss);
    write(tmp.path() / "noctx", "clusters: []\n");
    CHECK(load_kubeconfig((tmp.path() / "noctx").string()).status().code() == Errc::kInvalidArgument);
    write(tmp.path() / "cafile", R"(clusters:
- name: k
  cluster: {server: "https://h:1", certificate-authority: nothere.crt}
contexts: [{name: c, context: {cluster: k}}]
current-context: c
)");
    auto r = load_kubeconfig((tmp.path() / "cafile").string());
    CHECK(r.status().code() == Errc::kNotFound);
    CHECK(r.status().message().find("nothere.crt") != std::string::npos);
    write(tmp.path() / "half", R"(clusters: [{name: k, cluster: {server: "https://h:1"}}]
users: [{name: u, user: {client-certificate-data: Q0E=}}]
contexts: [{name: c, context: {cluster: k, user: u}}]
current-context: c
)");
    CHECK(load_kubeconfig((tmp.path() / "half").string()).status().code() == Errc::kInvalidArgument);
}

TEST_CASE("in-cluster config: env host/port (IPv6 bracketed), SA token and CA files") {
    TempDir tmp;
    write(tmp.path() / "sa/token", "tok\n");
    write(tmp.path() / "sa/ca.crt", "CA");
    {
        EnvGuard h("KUBERNETES_SERVICE_HOST", "fd00:10:96::1");
        EnvGuard p("KUBERNETES_SERVICE_PORT", "443");
        auto c = load_in_cluster((tmp.path() / "sa").string());
        REQUIRE_MESSAGE(c.is_ok(), c.status().to_string());
        CHECK(c->server == "https://[fd00:10:96::1]:443");
        CHECK(c->token_file == (tmp.path() / "sa/token").string());
        CHECK(c->ca_file == (tmp.path() / "sa/ca.crt").string());
        CHECK(c->token.empty());  // read per request, so a rotated token is used
    }
    {
        EnvGuard h("KUBERNETES_SERVICE_HOST", "10.96.0.1");
        EnvGuard p("KUBERNETES_SERVICE_PORT", "6443");
        auto c = load_in_cluster((tmp.path() / "sa").string());
        REQUIRE(c.is_ok());
        CHECK(c->server == "https://10.96.0.1:6443");
        CHECK(load_in_cluster((tmp.path() / "nosa").string()).status().code() == Errc::kNotFound);
    }
    {
        EnvGuard h("KUBERNETES_SERVICE_HOST", nullptr);
        CHECK(load_in_cluster((tmp.path() / "sa").string()).status().code() == Errc::kNotFound);
    }
}
