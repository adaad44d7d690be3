#include "common/agent_query.hpp"

#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kmesh {
namespace {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

void put(Writer& w, const char* key, const std::string& value) {
    w.Key(key);
    w.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
}

Result<rapidjson::Document> parse_object(std::string_view text, const char* what) {
    if (text.size() > kAgentQueryMaxBytes)
        return Status(Errc::kDataLoss,
                      fmt::format("{} of {} bytes: larger than {}", what, text.size(), kAgentQueryMaxBytes));
    rapidjson::Document doc;
    doc.Parse(text.data(), text.size());
    if (doc.HasParseError() || !doc.IsObject())
        return Status(Errc::kDataLoss, fmt::format("{} is not a JSON object", what));
    return doc;
}

// Reads an optional string member; false when present and not a string.
bool get_string(const rapidjson::Value& obj, const char* key, std::string& out) {
    auto it = obj.FindMember(key);
    if (it == obj.MemberEnd()) return true;
    if (!it->value.IsString()) return false;
    out.assign(it->value.GetString(), it->value.GetStringLength());
    return true;
}

struct Fd {
    int fd = -1;
    ~Fd() {
        if (fd >= 0) close(fd);
    }
};

}  // namespace

std::string encode_query(const PodQuery& q) {
    rapidjson::StringBuffer buf;
    Writer w(buf);
    w.StartObject();
    put(w, "namespace", q.ns);
    put(w, "name", q.name);
    put(w, "uid", q.uid);
    put(w, "kmeshNamespace", q.kmesh_namespace);
    w.EndObject();
    return {buf.GetString(), buf.GetSize()};
}

Result<PodQuery> decode_query(std::string_view text) {
    auto doc = parse_object(text, "query");
    if (!doc) return doc.status();
    PodQuery q;
    q.kmesh_namespace.clear();
    if (!get_string(*doc, "namespace", q.ns) || !get_string(*doc, "name", q.name) ||
        !get_string(*doc, "uid", q.uid) || !get_string(*doc, "kmeshNamespace", q.kmesh_namespace))
        return Status(Errc::kDataLoss, "query: namespace, name, uid and kmeshNamespace must be strings");
    if (q.ns.empty() || q.name.empty())
        return Status(Errc::kInvalidArgument, "query: namespace and name are required");
    if (q.kmesh_namespace.empty()) q.kmesh_namespace = "kmesh-system";
    return q;
}

std::string encode_answer(const PodAnswer& a) {
    rapidjson::StringBuffer buf;
    Writer w(buf);
    w.StartObject();
    w.Key("known");
    w.Bool(a.known);
    if (a.known) {
        w.Key("enrolled");
        w.Bool(a.enrolled);
    }
    put(w, "reason", a.reason);
    w.EndObject();
    return {buf.GetString(), buf.GetSize()};
}

Result<PodAnswer> decode_answer(std::string_view text) {
    auto doc = parse_object(text, "answer");
    if (!doc) return doc.status();
    PodAnswer a;
    auto known = doc->FindMember("known");
    if (known == doc->MemberEnd() || !known->value.IsBool())
        return Status(Errc::kDataLoss, "answer: \"known\" must be a boolean");
    a.known = known->value.GetBool();
    if (a.known) {
        // A "known" answer without a verdict must not read as "not enrolled".
        auto enrolled = doc->FindMember("enrolled");
        if (enrolled == doc->MemberEnd() || !enrolled->value.IsBool())
            return Status(Errc::kDataLoss, "answer: \"enrolled\" must be a boolean when known");
        a.enrolled = enrolled->value.GetBool();
    }
    if (!get_string(*doc, "reason", a.reason))
        return Status(Errc::kDataLoss, "answer: reason must be a string");
    return a;
}

Result<PodAnswer> ask_agent(const std::string& socket_path, const PodQuery& q,
                            std::chrono::milliseconds timeout) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (socket_path.empty() || socket_path.size() >= sizeof(addr.sun_path))
        return Status(Errc::kInvalidArgument,
                      fmt::format("agent socket path '{}' is empty or too long", socket_path));
    std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());

    Fd s{socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0)};
    if (s.fd < 0) return Status(Errc::kIo, fmt::format("socket: {}", std::strerror(errno)));
    // The unix socket's connect, send and receive all honour these: no call waits longer.
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
    setsockopt(s.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(s.fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0) {
        const int e = errno;
        return Status(e == EAGAIN || e == EINPROGRESS ? Errc::kTimeout : Errc::kUnavailable,
                      fmt::format("connect {}: {}", socket_path, std::strerror(e)));
    }
    ucred cred{};
    socklen_t len = sizeof cred;
    if (getsockopt(s.fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return Status(Errc::kIo, fmt::format("SO_PEERCRED: {}", std::strerror(errno)));
    if (cred.uid != 0 && cred.uid != geteuid())
        return Status(Errc::kPermissionDenied, fmt::format("{} is served by uid {} (pid {}), not root",
                                                           socket_path, cred.uid, cred.pid));
    const std::string msg = encode_query(q);
    if (send(s.fd, msg.data(), msg.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(msg.size())) {
        const int e = errno;
        return Status(e == EAGAIN ? Errc::kTimeout : Errc::kUnavailable,
                      fmt::format("send: {}", std::strerror(e)));
    }
    char buf[kAgentQueryMaxBytes + 1];
    ssize_t n = recv(s.fd, buf, sizeof buf, 0);
    if (n < 0) {
        const int e = errno;
        return Status(e == EAGAIN ? Errc::kTimeout : Errc::kUnavailable,
                      fmt::format("no answer: {}", std::strerror(e)));
    }
    if (n == 0) return Status(Errc::kUnavailable, "the agent closed the connection without an answer");
    return decode_answer(std::string_view(buf, static_cast<size_t>(n)));
}

}  // namespace kmesh
