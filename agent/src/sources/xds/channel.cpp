#include "agent/src/sources/xds/channel.hpp"

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <random>

#include "common/file.hpp"

namespace kmesh::xds {

namespace {

// The file's text without trailing whitespace (a token file's newline).
std::string read_trimmed(const std::string& path, bool* ok) {
    auto bytes = read_file(path);
    *ok = bytes.is_ok();
    std::string s = bytes ? std::move(*bytes) : std::string();
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
    return s;
}

}  // namespace

std::shared_ptr<grpc::Channel> make_channel(const ClientOptions& options, std::string* error) {
    std::shared_ptr<grpc::ChannelCredentials> creds;
    if (options.plaintext) {
        creds = grpc::InsecureChannelCredentials();
    } else {
        grpc::SslCredentialsOptions ssl;
        bool ok = true;
        if (!options.root_cert_path.empty()) ssl.pem_root_certs = read_trimmed(options.root_cert_path, &ok);
        // Never fall back to the system roots: istiod is only trusted through the mesh CA.
        if (!ok || ssl.pem_root_certs.empty()) {
            *error = fmt::format("cannot read the mesh root certificate {}", options.root_cert_path);
            return nullptr;
        }
        creds = grpc::SslCredentials(ssl);
    }
    grpc::ChannelArguments args;
    // istiod sends large snapshots on connect (every workload or cluster of the mesh).
    args.SetMaxReceiveMessageSize(256 << 20);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
    return grpc::CreateCustomChannel(options.address, creds, args);
}

void add_call_metadata(grpc::ClientContext& ctx, const ClientOptions& options) {
    if (!options.token_path.empty()) {
        bool ok = true;
        std::string token = read_trimmed(options.token_path, &ok);
        if (ok && !token.empty())
            ctx.AddMetadata("authorization", "Bearer " + token);
        else
            spdlog::warn("xds: no token in {}; connecting without one", options.token_path);
    }
    ctx.AddMetadata("clusterid", options.cluster_id);
}

void fill_node(const ClientOptions& options, envoy::config::core::v3::Node* node) {
    node->set_id(options.node_id);
    auto& fields = *node->mutable_metadata()->mutable_fields();
    for (const auto& [k, v] : options.node_metadata) fields[k].set_string_value(v);
    for (const auto& [k, object] : options.node_metadata_objects) {
        auto& inner = *fields[k].mutable_struct_value()->mutable_fields();
        for (const auto& [ik, iv] : object) inner[ik].set_string_value(iv);
    }
    const auto& l = options.locality;
    if (!l.region().empty() || !l.zone().empty() || !l.sub_zone().empty()) *node->mutable_locality() = l;
}

void reconnect_forever(const std::atomic<bool>& stopping, std::mutex& mu, std::condition_variable& wake,
                       const std::string& what, const std::function<bool()>& once,
                       const std::function<std::string()>& last_error) {
    std::mt19937 rng(std::random_device{}());
    auto backoff = std::chrono::milliseconds(500);
    while (!stopping) {
        bool delivered = once();
        if (stopping) break;
        if (delivered) backoff = std::chrono::milliseconds(500);
        auto wait = std::chrono::milliseconds(
            std::uniform_int_distribution<int64_t>(backoff.count() / 2, backoff.count())(rng));
        spdlog::warn("{} ended: {}; reconnecting in {} ms", what, last_error(), wait.count());
        std::unique_lock lock(mu);
        wake.wait_for(lock, wait, [&] { return stopping.load(); });
        backoff = std::min(backoff * 2, std::chrono::milliseconds(30000));
    }
}

}  // namespace kmesh::xds
