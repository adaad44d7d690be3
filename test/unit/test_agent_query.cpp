// kmesh-cni's question to the agent (common/agent_query.hpp): the client against a peer written
// here with literal bytes (not the library's encoder), so both directions are checked against the
// wire format itself, plus the ways the plugin must fall back to the API server.
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

#include "common/agent_query.hpp"

using namespace kmesh;

namespace {

struct Listener {
    std::string path;
    int fd = -1;
    explicit Listener(const std::string& name) {
        path = (std::filesystem::temp_directory_path() / (name + "-" + std::to_string(getpid()) + ".sock"))
                   .string();
        unlink(path.c_str());
        fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::memcpy(a.sun_path, path.data(), path.size());
        REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        REQUIRE(listen(fd, 4) == 0);
    }
    ~Listener() {
        close(fd);
        unlink(path.c_str());
    }
};

// Accepts one connection, stores what it received, replies `reply` (none when empty).
std::thread serve_once(int listen_fd, std::string reply, std::string* got) {
    return std::thread([=] {
        int c = accept(listen_fd, nullptr, nullptr);
        if (c < 0) return;
        char buf[8192];
        ssize_t n = recv(c, buf, sizeof buf, 0);
        if (n > 0) got->assign(buf, static_cast<size_t>(n));
        if (!reply.empty())
            send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
        else
            std::this_thread::sleep_for(std::chrono::milliseconds(400));
        close(c);
    });
}

}  // namespace

TEST_CASE("agent query: the plugin's question and the agent's verdict on the wire") {
    Listener l("kmesh-aq");
    std::string got;
    auto t = serve_once(
        l.fd, R"({"known":true,"enrolled":true,"reason":"namespace a has istio.io/dataplane-mode=Kmesh"})",
        &got);
    auto r =
        ask_agent(l.path, PodQuery{"a", "p-0", "uid-1", "kmesh-system"}, std::chrono::milliseconds(1000));
    t.join();
    REQUIRE(r.is_ok());
    CHECK(r->known);
    CHECK(r->enrolled);
    CHECK(r->reason == "namespace a has istio.io/dataplane-mode=Kmesh");
    CHECK(got == R"({"namespace":"a","name":"p-0","uid":"uid-1","kmeshNamespace":"kmesh-system"})");
}

TEST_CASE("agent query: 'not enrolled' and 'cannot tell' are different answers") {
    Listener l("kmesh-aq2");
    std::string got;
    auto t = serve_once(l.fd, R"({"known":true,"enrolled":false,"reason":"pod label none"})", &got);
    auto r = ask_agent(l.path, PodQuery{"a", "p", "", "kmesh-system"}, std::chrono::milliseconds(1000));
    t.join();
    REQUIRE(r.is_ok());
    CHECK(r->known);
    CHECK_FALSE(r->enrolled);
    auto t2 = serve_once(l.fd, R"({"known":false,"reason":"not cached"})", &got);
    r = ask_agent(l.path, PodQuery{"a", "p", "", "kmesh-system"}, std::chrono::milliseconds(1000));
    t2.join();
    REQUIRE(r.is_ok());
    CHECK_FALSE(r->known);
}

TEST_CASE("agent query: every failure is a status the plugin falls back on, never a verdict") {
    SUBCASE("nobody listens") {
        auto r = ask_agent("/nonexistent-dir/kmesh.sock", PodQuery{"a", "p", "", "kmesh-system"},
                           std::chrono::milliseconds(100));
        REQUIRE_FALSE(r.is_ok());
        CHECK(r.status().code() == Errc::kUnavailable);
    }
    SUBCASE("the agent says nothing: a timeout, bounded") {
        Listener l("kmesh-aq3");
        std::string got;
        auto t = serve_once(l.fd, "", &got);
        const auto t0 = std::chrono::steady_clock::now();
        auto r = ask_agent(l.path, PodQuery{"a", "p", "", "kmesh-system"}, std::chrono::milliseconds(100));
        const auto took = std::chrono::steady_clock::now() - t0;
        t.join();
        REQUIRE_FALSE(r.is_ok());
        CHECK(r.status().code() == Errc::kTimeout);
        CHECK(took < std::chrono::milliseconds(350));  // the 400 ms the peer holds the connection
    }
    for (const char* bad : {R"({"known":true,"reason":"no verdict"})", R"({"known":"yes"})", R"([true])",
                            R"({"known":true,"enrolled":1})", "not json"}) {
        CAPTURE(bad);
        Listener l("kmesh-aq4");
        std::string got;
        auto t = serve_once(l.fd, bad, &got);
        auto r = ask_agent(l.path, PodQuery{"a", "p", "", "kmesh-system"}, std::chrono::milliseconds(1000));
        t.join();
        REQUIRE_FALSE(r.is_ok());
        CHECK(r.status().code() == Errc::kDataLoss);
    }
}

TEST_CASE("agent query: the agent's side decodes only well-formed questions") {
    auto q = decode_query(R"({"namespace":"a","name":"p","uid":"u"})");
    REQUIRE(q.is_ok());
    CHECK(q->kmesh_namespace == "kmesh-system");  // the plugin's default when it sends none
    CHECK(q->uid == "u");
    CHECK(decode_query(R"({"namespace":"a"})").status().code() == Errc::kInvalidArgument);
    CHECK(decode_query(R"({"namespace":"a","name":7})").status().code() == Errc::kDataLoss);
    CHECK(decode_query(std::string(kAgentQueryMaxBytes + 1, ' ')).status().code() == Errc::kDataLoss);
    CHECK(encode_answer(PodAnswer{false, true, "x"}) == R"({"known":false,"reason":"x"})");
}
