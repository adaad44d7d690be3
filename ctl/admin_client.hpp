// kmeshctl's client of the agent's admin server (cpp-httplib). kmeshctl never writes BPF maps: every
// change goes through the agent.
#pragma once

#include <optional>
#include <string>

namespace kmesh::ctl {

struct Reply {
    int status = 0;
    std::string body;
};

struct Admin {
    std::string address = "127.0.0.1:15200";  // host:port ([v6]:port)
    // The reply, or nullopt with *error a sentence saying the agent could not be reached and how
    // to check.
    std::optional<Reply> get(const std::string& path, std::string* error) const;
    std::optional<Reply> post(const std::string& path, const std::string& json_body,
                              std::string* error) const;
    // GET that must answer 200 with a JSON object; else nullopt with *error set.
    std::optional<std::string> get_json(const std::string& path, std::string* error) const;
};

// The admin server's {"error": "..."} message, else the body itself.
std::string error_of(const Reply& r);

}  // namespace kmesh::ctl
