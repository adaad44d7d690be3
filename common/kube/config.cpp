// Where the API server is and how to authenticate: in-cluster (service account) and kubeconfig
// files. A kubeconfig is YAML (JSON is accepted too); both are read into one small tree so the
// lookup code does not care which it was.
#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>

#include <array>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <utility>
#include <vector>

#include "common/file.hpp"
#include "common/kube/api.hpp"
#include "common/yaml_tree.hpp"

namespace kmesh::kube {

namespace {

namespace fs = std::filesystem;

struct Node {
    // Not std::pair<std::string, Node>: a pair needs Node complete where the member is declared,
    // which libstdc++ under clang (the fuzz build) enforces.
    struct Entry;
    enum class Kind { kNull, kScalar, kMap, kSeq } kind = Kind::kNull;
    std::string scalar;
    std::vector<Entry> map;
    std::vector<Node> seq;

    const Node* get(std::string_view key) const;
};

struct Node::Entry {
    std::string first;
    Node second;
};

const Node* Node::get(std::string_view key) const {
    for (const auto& [k, v] : map)
        if (k == key) return &v;
    return nullptr;
}

// ---- YAML (common/yaml_tree, the parser of the standalone config) into the tree ----
Node from_yaml(const YamlNode& y) {
    Node n;
    switch (y.kind) {
        case YamlNode::Kind::kNull:
            break;
        case YamlNode::Kind::kScalar:
            n.kind = Node::Kind::kScalar;
            n.scalar = y.scalar;
            break;
        case YamlNode::Kind::kSequence:
            n.kind = Node::Kind::kSeq;
            for (const auto& item : y.items) n.seq.push_back(from_yaml(item));
            break;
        case YamlNode::Kind::kMapping:
            n.kind = Node::Kind::kMap;
            for (const auto& [k, v] : y.entries) n.map.push_back({k.scalar, from_yaml(v)});
            break;
    }
    return n;
}

// ---- JSON (RapidJSON) into the same tree ----
Node from_json(const rapidjson::Value& v) {
    Node n;
    if (v.IsObject()) {
        n.kind = Node::Kind::kMap;
        for (const auto& m : v.GetObject()) n.map.push_back({m.name.GetString(), from_json(m.value)});
    } else if (v.IsArray()) {
        n.kind = Node::Kind::kSeq;
        for (const auto& e : v.GetArray()) n.seq.push_back(from_json(e));
    } else if (v.IsString()) {
        n.kind = Node::Kind::kScalar;
        n.scalar.assign(v.GetString(), v.GetStringLength());
    } else if (v.IsBool()) {
        n.kind = Node::Kind::kScalar;
        n.scalar = v.GetBool() ? "true" : "false";
    } else if (v.IsNumber()) {
        n.kind = Node::Kind::kScalar;
        n.scalar = v.IsInt64() ? std::to_string(v.GetInt64()) : std::to_string(v.GetDouble());
    }
    return n;
}

Result<Node> parse_tree(const std::string& text) {
    size_t first = text.find_first_not_of(" \t\r\n");
    if (first != std::string::npos && text[first] == '{') {
        rapidjson::Document doc;
        doc.Parse(text.data(), text.size());
        if (doc.HasParseError())
            return Status(Errc::kDataLoss, fmt::format("JSON at offset {}: {}", doc.GetErrorOffset(),
                                                       rapidjson::GetParseError_En(doc.GetParseError())));
        return from_json(doc);
    }
    YamlNode root;
    std::string error;
    if (!parse_yaml(text, &root, &error)) return Status(Errc::kDataLoss, "YAML " + error);
    return from_yaml(root);
}

// common/file's read, with the message naming what the file is for.
Result<std::string> read_file(const fs::path& path, std::string_view what) {
    auto bytes = kmesh::read_file(path.string());
    if (!bytes)
        return Status(bytes.status().code() == Errc::kNotFound ? Errc::kNotFound : Errc::kIo,
                      fmt::format("cannot read {} {}", what, path.string()));
    return bytes;
}

Result<std::string> base64_decode(std::string_view in, std::string_view what) {
    static constexpr std::string_view kAlphabet =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    uint32_t acc = 0;
    int bits = 0;
    bool padding = false;
    for (char c : in) {
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
        if (c == '=') {
            padding = true;
            continue;
        }
        size_t idx = kAlphabet.find(c);
        if (idx == std::string_view::npos || padding)
            return Status(Errc::kInvalidArgument, fmt::format("{} is not valid base64", what));
        acc = (acc << 6) | static_cast<uint32_t>(idx);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(static_cast<char>((acc >> bits) & 0xff));
        }
    }
    return out;
}

std::string scalar(const Node* map, std::string_view key) {
    if (!map) return {};
    const Node* n = map->get(key);
    return n && n->kind == Node::Kind::kScalar ? n->scalar : std::string();
}

// The "<kind>" entry named `name` in a kubeconfig list (clusters/users/contexts): its inner map.
Result<const Node*> named_entry(const Node& root, std::string_view list, std::string_view inner,
                                const std::string& name) {
    const Node* seq = root.get(list);
    if (seq && seq->kind == Node::Kind::kSeq) {
        for (const Node& e : seq->seq) {
            if (e.kind != Node::Kind::kMap || scalar(&e, "name") != name) continue;
            const Node* n = e.get(inner);
            if (!n || n->kind != Node::Kind::kMap)
                return Status(Errc::kInvalidArgument,
                              fmt::format("{} \"{}\" has no {} section", list, name, inner));
            return n;
        }
    }
    return Status(Errc::kInvalidArgument, fmt::format("no {} named \"{}\"", inner, name));
}

fs::path resolve(const fs::path& base_dir, const std::string& p) {
    fs::path path(p);
    return path.is_absolute() ? path : base_dir / path;
}

bool truthy(const std::string& v) { return v == "true" || v == "True" || v == "TRUE" || v == "yes"; }

}  // namespace

Result<ClientConfig> load_in_cluster(const std::string& sa_dir) {
    const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
    const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
    if (!host || !*host || !port || !*port)
        return Status(Errc::kNotFound, "not in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set");
    fs::path dir(sa_dir);
    std::error_code ec;
    if (!fs::exists(dir / "token", ec))
        return Status(Errc::kNotFound,
                      fmt::format("not in a cluster: no service-account token in {}", sa_dir));
    if (!fs::exists(dir / "ca.crt", ec))
        return Status(Errc::kNotFound,
                      fmt::format("service-account CA {} is missing", (dir / "ca.crt").string()));
    ClientConfig c;
    std::string h = host;
    if (h.find(':') != std::string::npos && h.front() != '[') h = "[" + h + "]";
    c.server = fmt::format("https://{}:{}", h, port);
    c.token_file = (dir / "token").string();
    c.ca_file = (dir / "ca.crt").string();
    return c;
}

Result<ClientConfig> load_kubeconfig(const std::string& path, const std::string& context,
                                     bool allow_insecure) {
    auto text = read_file(path, "kubeconfig");
    if (!text) return text.status();
    auto tree = parse_tree(*text);
    if (!tree)
        return Status(tree.status().code(), fmt::format("kubeconfig {}: {}", path, tree.status().message()));
    const Node& root = *tree;
    auto fail = [&](Errc code, const std::string& msg) {
        return Result<ClientConfig>(code, fmt::format("kubeconfig {}: {}", path, msg));
    };
    if (root.kind != Node::Kind::kMap) return fail(Errc::kInvalidArgument, "not a mapping");

    std::string ctx_name = context.empty() ? scalar(&root, "current-context") : context;
    if (ctx_name.empty()) return fail(Errc::kInvalidArgument, "no context given and no current-context");
    auto ctx = named_entry(root, "contexts", "context", ctx_name);
    if (!ctx) return fail(ctx.status().code(), ctx.status().message());
    std::string cluster_name = scalar(*ctx, "cluster"), user_name = scalar(*ctx, "user");
    if (cluster_name.empty())
        return fail(Errc::kInvalidArgument, fmt::format("context \"{}\" names no cluster", ctx_name));
    auto cluster = named_entry(root, "clusters", "cluster", cluster_name);
    if (!cluster) return fail(cluster.status().code(), cluster.status().message());

    fs::path base_dir = fs::absolute(fs::path(path)).parent_path();
    ClientConfig c;
    c.server = scalar(*cluster, "server");
    while (!c.server.empty() && c.server.back() == '/') c.server.pop_back();
    if (c.server.empty())
        return fail(Errc::kInvalidArgument, fmt::format("cluster \"{}\" has no server", cluster_name));

    if (truthy(scalar(*cluster, "insecure-skip-tls-verify"))) {
        if (!allow_insecure)
            return fail(
                Errc::kInvalidArgument,
                fmt::format("cluster \"{}\" sets insecure-skip-tls-verify, which is refused", cluster_name));
        c.insecure_skip_tls_verify = true;
    }
    if (std::string d = scalar(*cluster, "certificate-authority-data"); !d.empty()) {
        auto pem = base64_decode(d, "certificate-authority-data");
        if (!pem) return fail(pem.status().code(), pem.status().message());
        c.ca_pem = std::move(*pem);
    } else if (std::string f = scalar(*cluster, "certificate-authority"); !f.empty()) {
        c.ca_file = resolve(base_dir, f).string();
        std::error_code ec;
        if (!fs::exists(c.ca_file, ec))
            return fail(Errc::kNotFound, fmt::format("certificate-authority {} does not exist", c.ca_file));
    }

    if (!user_name.empty()) {
        auto user = named_entry(root, "users", "user", user_name);
        if (!user) return fail(user.status().code(), user.status().message());
        const Node* u = *user;
        for (const char* unsupported : {"exec", "auth-provider"}) {
            if (u->get(unsupported))
                return fail(Errc::kInvalidArgument,
                            fmt::format("user \"{}\" uses {} credentials, which kmesh does not run",
                                        user_name, unsupported));
        }
        if (!scalar(u, "username").empty() || !scalar(u, "password").empty())
            return fail(
                Errc::kInvalidArgument,
                fmt::format("user \"{}\" uses basic auth, which Kubernetes no longer supports", user_name));
        c.token = scalar(u, "token");
        if (std::string f = scalar(u, "tokenFile"); !f.empty() && c.token.empty())
            c.token_file = resolve(base_dir, f).string();
        struct Pair {
            const char *data_key, *file_key;
            std::string *pem, *file;
        };
        for (const Pair& p : std::array<Pair, 2>{
                 {{"client-certificate-data", "client-certificate", &c.client_cert_pem, &c.client_cert_file},
                  {"client-key-data", "client-key", &c.client_key_pem, &c.client_key_file}}}) {
            if (std::string d = scalar(u, p.data_key); !d.empty()) {
                auto pem = base64_decode(d, p.data_key);
                if (!pem) return fail(pem.status().code(), pem.status().message());
                *p.pem = std::move(*pem);
            } else if (std::string f = scalar(u, p.file_key); !f.empty()) {
                *p.file = resolve(base_dir, f).string();
            }
        }
        bool has_cert = !c.client_cert_pem.empty() || !c.client_cert_file.empty();
        bool has_key = !c.client_key_pem.empty() || !c.client_key_file.empty();
        if (has_cert != has_key)
            return fail(
                Errc::kInvalidArgument,
                fmt::format("user \"{}\" has a client certificate without its key (or a key without a "
                            "certificate)",
                            user_name));
    }
    return c;
}

}  // namespace kmesh::kube
