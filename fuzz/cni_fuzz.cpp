// libFuzzer target for kmesh-cni's input path: CNI_* environment + stdin config through parsing,
// validation and error rendering, never the kernel. Input layout (so seeds stay readable):
//   line 1: CNI_COMMAND, line 2: CNI_CONTAINERID, line 3: CNI_ARGS, rest: stdin.
// CNI_NETNS/CNI_IFNAME/CNI_PATH are set, except that a command line ending in '!' clears them.
// Oracles: no crash/sanitizer report; every error object and every re-serialized prevResult is
// strict UTF-8 JSON; log escaping leaves no control character.
#include <rapidjson/document.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "cni/plugin.hpp"

namespace {

std::string_view next_line(std::string_view& in) {
    size_t nl = in.find('\n');
    std::string_view line = in.substr(0, nl);
    in = nl == std::string_view::npos ? std::string_view{} : in.substr(nl + 1);
    return line;
}

void require_json(const std::string& s) {
    rapidjson::Document d;
    d.Parse<rapidjson::kParseValidateEncodingFlag>(s.data(), s.size());
    if (d.HasParseError() || !d.IsObject()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view in(reinterpret_cast<const char*>(data), size);
    std::string command(next_line(in));
    const bool bare = !command.empty() && command.back() == '!';
    if (bare) command.pop_back();
    kmesh::cni::Env env{command,
                        std::string(next_line(in)),
                        bare ? "" : "/var/run/netns/x",
                        bare ? "" : "eth0",
                        std::string(next_line(in)),
                        bare ? "" : "/opt/cni/bin"};
    const std::string_view stdin_json = in;

    try {
        kmesh::cni::Request req = kmesh::cni::parse_request(env, stdin_json);
        if (req.config.prev_result) require_json(*req.config.prev_result);
    } catch (const kmesh::cni::CniError&) {
    }
    const std::string out = kmesh::cni::check_input(env, stdin_json);
    if (!out.empty()) require_json(out);

    const std::string escaped = kmesh::cni::escape_for_log(env.container_id + env.args);
    for (unsigned char c : escaped) {
        if (c < 0x20 || c == 0x7f) std::abort();
    }
    return 0;
}
