#include "ctl/admin_client.hpp"

#include <fmt/format.h>
#include <httplib.h>
#include <rapidjson/document.h>

namespace kmesh::ctl {

namespace {

std::optional<httplib::Client> client(const std::string& address, std::string* error) {
    auto colon = address.rfind(':');
    int port = colon == std::string::npos ? 0 : std::atoi(address.c_str() + colon + 1);
    if (colon == std::string::npos || colon == 0 || port <= 0 || port > 65535) {
        *error = fmt::format("--admin '{}' is not host:port", address);
        return std::nullopt;
    }
    std::string host = address.substr(0, colon);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    std::optional<httplib::Client> c(std::in_place, host, port);
    c->set_connection_timeout(2, 0);
    c->set_read_timeout(10, 0);
    return c;
}

std::string unreachable(const std::string& address, httplib::Error e) {
    return fmt::format(
        "cannot reach the admin server at {} ({}): is kmesh-daemon running on this node? Check with "
        "`curl http://{}/ready` and the agent's log, or give --admin HOST:PORT if it listens elsewhere",
        address, httplib::to_string(e), address);
}

}  // namespace

std::optional<Reply> Admin::get(const std::string& path, std::string* error) const {
    auto c = client(address, error);
    if (!c) return std::nullopt;
    auto res = c->Get(path);
    if (!res) {
        *error = unreachable(address, res.error());
        return std::nullopt;
    }
    return Reply{res->status, res->body};
}

std::optional<Reply> Admin::post(const std::string& path, const std::string& json_body,
                                 std::string* error) const {
    auto c = client(address, error);
    if (!c) return std::nullopt;
    auto res = c->Post(path, json_body, "application/json");
    if (!res) {
        *error = unreachable(address, res.error());
        return std::nullopt;
    }
    return Reply{res->status, res->body};
}

std::optional<std::string> Admin::get_json(const std::string& path, std::string* error) const {
    auto r = get(path, error);
    if (!r) return std::nullopt;
    if (r->status == 404) {
        *error = fmt::format("the agent at {} has no {} (an older kmesh-daemon?)", address, path);
        return std::nullopt;
    }
    if (r->status != 200) {
        *error = fmt::format("the agent at {} answered {} to {}: {}", address, r->status, path, error_of(*r));
        return std::nullopt;
    }
    rapidjson::Document d;
    d.Parse(r->body.c_str());
    if (d.HasParseError() || !d.IsObject()) {
        *error = fmt::format("the agent at {} answered {} with something that is not a JSON object", address,
                             path);
        return std::nullopt;
    }
    return r->body;
}

std::string error_of(const Reply& r) {
    rapidjson::Document d;
    d.Parse(r.body.c_str());
    if (!d.HasParseError() && d.IsObject() && d.HasMember("error") && d["error"].IsString())
        return d["error"].GetString();
    std::string b = r.body;
    while (!b.empty() && (b.back() == '\n' || b.back() == '\r')) b.pop_back();
    return b;
}

}  // namespace kmesh::ctl
