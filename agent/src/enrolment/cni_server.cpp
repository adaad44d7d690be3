#include "agent/src/enrolment/cni_server.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace kmesh::enrolment {

namespace {
// A client that connected but says nothing is dropped after this: the plugin sends its query right
// after connect, and the one serving thread must not be held by a stuck peer.
constexpr int kQueryWaitMs = 200;
}  // namespace

CniServer::CniServer(std::string path, AnswerFn answer, Metrics& metrics)
    : path_(std::move(path)), answer_(std::move(answer)), metrics_(metrics) {}

CniServer::~CniServer() { stop(); }

Status CniServer::start() {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path_.empty() || path_.size() >= sizeof(addr.sun_path))
        return Status(Errc::kInvalidArgument, fmt::format("--cni-socket '{}': empty or too long", path_));
    std::memcpy(addr.sun_path, path_.data(), path_.size());
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::path parent = fs::path(path_).parent_path();
    if (!parent.empty() && !fs::exists(parent, ec)) {
        fs::create_directories(parent, ec);
        if (ec) return Status(Errc::kIo, fmt::format("cannot create {}: {}", parent.string(), ec.message()));
        chmod(parent.c_str(), 0700);
    }
    // A socket file left by an earlier agent is replaced; anything else at the path is not ours.
    struct stat st {};
    if (lstat(path_.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return Status(Errc::kAlreadyExists,
                          fmt::format("--cni-socket {}: exists and is not a socket", path_));
        unlink(path_.c_str());
    }
    listen_fd_ = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (listen_fd_ < 0) return Status(Errc::kIo, fmt::format("socket: {}", std::strerror(errno)));
    // Created 0600 from the start (no window where another user could connect).
    const mode_t old = umask(0177);
    const int rc = bind(listen_fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
    const int bind_errno = errno;
    umask(old);
    if (rc < 0) return Status(Errc::kIo, fmt::format("bind {}: {}", path_, std::strerror(bind_errno)));
    bound_ = true;
    if (listen(listen_fd_, 64) < 0)
        return Status(Errc::kIo, fmt::format("listen {}: {}", path_, std::strerror(errno)));
    stop_fd_ = eventfd(0, EFD_CLOEXEC);
    if (stop_fd_ < 0) return Status(Errc::kIo, fmt::format("eventfd: {}", std::strerror(errno)));
    thread_ = std::thread([this] { loop(); });
    spdlog::info("enrolment: answering kmesh-cni on {}", path_);
    return Status::ok();
}

void CniServer::stop() {
    if (thread_.joinable()) {
        const std::uint64_t one = 1;
        if (write(stop_fd_, &one, sizeof one) < 0) spdlog::warn("cni socket: stop: {}", std::strerror(errno));
        thread_.join();
    }
    if (listen_fd_ >= 0) close(listen_fd_);
    if (stop_fd_ >= 0) close(stop_fd_);
    listen_fd_ = stop_fd_ = -1;
    // Unlinked only if still ours: a plugin then gets ENOENT (API fallback) instead of a dead socket.
    if (bound_) unlink(path_.c_str());
    bound_ = false;
}

void CniServer::loop() {
    for (;;) {
        pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            spdlog::error("cni socket: poll: {}", std::strerror(errno));
            return;
        }
        if (fds[1].revents) return;
        for (;;) {
            const int conn = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (conn < 0) break;  // EAGAIN: drained (the listening socket is non-blocking)
            serve(conn);
            close(conn);
        }
    }
}

void CniServer::serve(int conn) {
    ucred cred{};
    socklen_t len = sizeof cred;
    if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
        (cred.uid != 0 && cred.uid != geteuid())) {
        // The socket is 0600 already; this also covers a descriptor passed to another user.
        metrics_.cni_queries_refused++;
        spdlog::warn("cni socket: refused a query from uid {} (pid {})", cred.uid, cred.pid);
        return;
    }
    pollfd p{conn, POLLIN, 0};
    if (poll(&p, 1, kQueryWaitMs) <= 0) {
        metrics_.cni_queries_refused++;
        return;
    }
    char buf[kAgentQueryMaxBytes + 1];
    const ssize_t n = recv(conn, buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) return;
    PodAnswer answer;
    auto query = decode_query(std::string_view(buf, static_cast<size_t>(n)));
    if (!query) {
        metrics_.cni_queries_refused++;
        answer.reason = query.status().to_string();
    } else {
        answer = answer_(*query);
        (answer.known ? (answer.enrolled ? metrics_.cni_queries_enrolled : metrics_.cni_queries_not_enrolled)
                      : metrics_.cni_queries_unknown)++;
        spdlog::debug("cni socket: pod {}/{}: {} ({})", query->ns, query->name,
                      answer.known ? (answer.enrolled ? "enrolled" : "not enrolled") : "unknown",
                      answer.reason);
    }
    const std::string out = encode_answer(answer);
    if (send(conn, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        spdlog::debug("cni socket: answer not sent: {}", std::strerror(errno));
}

}  // namespace kmesh::enrolment
