#include "agent/src/installer/chain.hpp"

#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

namespace kmesh::installer {

namespace {

using rapidjson::Document;
using rapidjson::Value;
using Alloc = Document::AllocatorType;

constexpr std::string_view kSavedPrefix = ".kmesh-cni-saved.";
constexpr std::string_view kSavedSuffix = ".orig";

// Go's filepath.Ext: from the last '.' of the name (the whole name for ".conf").
std::string_view extension(std::string_view name) {
    auto dot = name.rfind('.');
    return dot == std::string_view::npos ? std::string_view{} : name.substr(dot);
}

// Builds the document like GenericDocument's own handler, except that each number arrives as its
// token and is converted here, exactly: integers with from_chars, other numbers with glibc's
// strtod (correctly rounded), so a number we re-serialise keeps the value Go's encoding/json reads.
// RapidJSON 1.1's own exact path (kParseFullPrecisionFlag) is not used: on a zero significand it
// calls __builtin_clzll(0) and on long mantissas it indexes past its power table (both found by
// fuzz/conflist_fuzz.cpp under UBSan); its default path may be off by one ulp.
template <class Handler>
struct ExactNumbers {
    Handler& h;
    bool Null() { return h.Null(); }
    bool Bool(bool b) { return h.Bool(b); }
    bool Int(int i) { return h.Int(i); }
    bool Uint(unsigned u) { return h.Uint(u); }
    bool Int64(int64_t i) { return h.Int64(i); }
    bool Uint64(uint64_t u) { return h.Uint64(u); }
    bool Double(double d) { return h.Double(d); }
    bool String(const char* s, rapidjson::SizeType n, bool copy) { return h.String(s, n, copy); }
    bool StartObject() { return h.StartObject(); }
    bool Key(const char* s, rapidjson::SizeType n, bool copy) { return h.Key(s, n, copy); }
    bool EndObject(rapidjson::SizeType members) { return h.EndObject(members); }
    bool StartArray() { return h.StartArray(); }
    bool EndArray(rapidjson::SizeType elements) { return h.EndArray(elements); }
    bool RawNumber(const char* s, rapidjson::SizeType n, bool) {
        const std::string_view token(s, n);
        if (token.find_first_of(".eE") == std::string_view::npos) {
            std::int64_t i = 0;
            if (std::from_chars(token.data(), token.data() + token.size(), i).ec == std::errc{})
                return h.Int64(i);
            std::uint64_t u = 0;
            if (std::from_chars(token.data(), token.data() + token.size(), u).ec == std::errc{})
                return h.Uint64(u);
        }
        const std::string copy(token);  // strtod needs the terminating NUL
        errno = 0;
        char* end = nullptr;
        const double d = std::strtod(copy.c_str(), &end);
        if (end != copy.c_str() + copy.size() || (errno == ERANGE && std::isinf(d))) return false;
        return h.Double(d);
    }
};

Result<Document> parse(std::string_view name, std::string_view bytes) {
    Document doc;
    rapidjson::MemoryStream ms(bytes.data(), bytes.size());
    rapidjson::ParseResult result;
    auto generate = [&](Document& handler) {
        rapidjson::Reader reader;
        ExactNumbers<Document> exact{handler};
        result = reader.Parse<rapidjson::kParseNumbersAsStringsFlag>(ms, exact);
        return !result.IsError();
    };
    doc.Populate(generate);
    if (result.IsError())
        return Status(Errc::kDataLoss,
                      fmt::format("{}: not JSON: {} at offset {}", name,
                                  rapidjson::GetParseError_En(result.Code()), result.Offset()));
    if (!doc.IsObject()) return Status(Errc::kInvalidArgument, fmt::format("{}: not a JSON object", name));
    return doc;
}

bool is_ours(const Value& plugin) {
    if (!plugin.IsObject()) return false;
    auto t = plugin.FindMember("type");
    return t != plugin.MemberEnd() && t->value.IsString() &&
           std::string_view(t->value.GetString()) == kPluginType;
}

Value str(std::string_view s, Alloc& a) {
    return Value(s.data(), static_cast<rapidjson::SizeType>(s.size()), a);
}

Value build_entry(const ChainEntry& e, Alloc& a) {
    Value v(rapidjson::kObjectType);
    v.AddMember("type", str(kPluginType, a), a);
    if (e.kube_config) v.AddMember("kubeConfig", str(*e.kube_config, a), a);
    Value ns(rapidjson::kArrayType);
    for (const auto& n : e.exclude_namespaces) ns.PushBack(str(n, a), a);
    v.AddMember("excludeNamespaces", ns, a);
    v.AddMember("kmeshNamespace", str(e.kmesh_namespace, a), a);
    if (e.bpffs_root != kDefaultBpffsRoot) v.AddMember("bpffsRoot", str(e.bpffs_root, a), a);
    v.AddMember("logFile", str(e.log_file, a), a);
    // Only an ADD that would ask the API server asks the agent first.
    if (e.kube_config && !e.agent_socket.empty()) v.AddMember("agentSocket", str(e.agent_socket, a), a);
    return v;
}

std::string serialise(const Value& v) {
    rapidjson::StringBuffer buf;
    rapidjson::PrettyWriter<rapidjson::StringBuffer> w(buf);
    w.SetIndent(' ', 2);
    v.Accept(w);
    return std::string(buf.GetString(), buf.GetSize()) + "\n";
}

Status check_plugins(std::string_view name, const Value& doc) {
    auto p = doc.FindMember("plugins");
    if (p == doc.MemberEnd() || !p->value.IsArray())
        return Status(Errc::kInvalidArgument, fmt::format("{}: no \"plugins\" array", name));
    if (p->value.Empty())
        return Status(Errc::kInvalidArgument, fmt::format("{}: \"plugins\" is empty", name));
    for (const auto& plugin : p->value.GetArray()) {
        auto t = plugin.IsObject() ? plugin.FindMember("type") : plugin.MemberEnd();
        if (!plugin.IsObject() || t == plugin.MemberEnd() || !t->value.IsString())
            return Status(Errc::kInvalidArgument,
                          fmt::format("{}: a plugin without a string \"type\"", name));
    }
    return Status::ok();
}

// chain() with the entry given as JSON: is_chain_of() replays it with the entry a file holds.
Result<Chained> chain_with(std::string_view name, std::string_view bytes, const Value& entry) {
    auto parsed = parse(name, bytes);
    if (!parsed) return parsed.status();
    Document& doc = *parsed;
    if (auto st = validate_config(name, bytes); !st) return st;
    Alloc& a = doc.GetAllocator();
    Chained out;
    out.name = chained_name(name);
    if (is_conflist_name(name)) {
        Value& plugins = doc["plugins"];
        size_t ours = 0;
        for (const auto& p : plugins.GetArray()) ours += is_ours(p);
        out.had_entry = ours > 0;
        if (ours == 1 && is_ours(plugins[plugins.Size() - 1]) && plugins[plugins.Size() - 1] == entry) {
            out.bytes = std::string(bytes);
            return out;
        }
        for (auto it = plugins.Begin(); it != plugins.End();) it = is_ours(*it) ? plugins.Erase(it) : it + 1;
        plugins.PushBack(Value(entry, a), a);
        out.changed = true;
        out.bytes = serialise(doc);
        return out;
    }
    if (is_ours(doc))
        return Status(Errc::kInvalidArgument,
                      fmt::format("{}: is a kmesh-cni config, not a network to chain into", name));
    // libcni's ConfListFromConf: name and cniVersion copied up, the plugin kept whole.
    Document list(rapidjson::kObjectType);
    Alloc& la = list.GetAllocator();
    if (auto v = doc.FindMember("cniVersion"); v != doc.MemberEnd())
        list.AddMember("cniVersion", Value(v->value, la), la);
    auto n = doc.FindMember("name");
    list.AddMember("name", n != doc.MemberEnd() && n->value.IsString() ? Value(n->value, la) : str("", la),
                   la);
    Value plugins(rapidjson::kArrayType);
    plugins.PushBack(Value(doc, la), la);
    plugins.PushBack(Value(entry, la), la);
    list.AddMember("plugins", plugins, la);
    out.changed = true;
    out.bytes = serialise(list);
    return out;
}

}  // namespace

std::string entry_json(const ChainEntry& entry) {
    Document d;
    Value v = build_entry(entry, d.GetAllocator());
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    v.Accept(w);
    return std::string(buf.GetString(), buf.GetSize());
}

bool is_config_name(std::string_view name) {
    auto ext = extension(name);
    return ext == ".conf" || ext == ".conflist" || ext == ".json";
}

bool is_conflist_name(std::string_view name) { return extension(name) == ".conflist"; }

std::vector<std::string> config_candidates(std::vector<std::string> names) {
    std::erase_if(names, [](const std::string& n) { return !is_config_name(n); });
    std::sort(names.begin(), names.end());  // byte order, as Go's sort.Strings
    return names;
}

Status validate_config(std::string_view name, std::string_view bytes) {
    if (!is_config_name(name))
        return Status(Errc::kInvalidArgument, fmt::format("{}: not a .conf, .conflist or .json file", name));
    auto parsed = parse(name, bytes);
    if (!parsed) return parsed.status();
    const Document& doc = *parsed;
    if (is_conflist_name(name)) {
        auto n = doc.FindMember("name");
        if (n == doc.MemberEnd() || !n->value.IsString())
            return Status(Errc::kInvalidArgument, fmt::format("{}: no string \"name\"", name));
        if (auto v = doc.FindMember("cniVersion"); v != doc.MemberEnd() && !v->value.IsString())
            return Status(Errc::kInvalidArgument, fmt::format("{}: \"cniVersion\" is not a string", name));
        return check_plugins(name, doc);
    }
    auto t = doc.FindMember("type");
    if (t == doc.MemberEnd() || !t->value.IsString() || t->value.GetStringLength() == 0)
        return Status(Errc::kInvalidArgument,
                      fmt::format("{}: no \"type\" (a plugin list in a .conf file?)", name));
    return Status::ok();
}

std::string chained_name(std::string_view name) {
    if (is_conflist_name(name)) return std::string(name);
    auto ext = extension(name);
    return std::string(name.substr(0, name.size() - ext.size())) + ".conflist";
}

Result<Chained> chain(std::string_view name, std::string_view bytes, const ChainEntry& entry) {
    Document d;
    Value e = build_entry(entry, d.GetAllocator());
    return chain_with(name, bytes, e);
}

Result<Unchained> unchain(std::string_view bytes) {
    auto parsed = parse("config", bytes);
    if (!parsed) return parsed.status();
    Document& doc = *parsed;
    auto p = doc.FindMember("plugins");
    Unchained out;
    if (p == doc.MemberEnd() || !p->value.IsArray()) {
        out.bytes = std::string(bytes);
        return out;
    }
    Value& plugins = p->value;
    size_t before = plugins.Size();
    for (auto it = plugins.Begin(); it != plugins.End();) it = is_ours(*it) ? plugins.Erase(it) : it + 1;
    if (plugins.Size() == before) {
        out.bytes = std::string(bytes);
        return out;
    }
    if (plugins.Empty())
        return Status(Errc::kInvalidArgument,
                      "kmesh-cni is the only plugin of the list: removing it leaves no network");
    out.changed = true;
    out.bytes = serialise(doc);
    return out;
}

bool is_chain_of(std::string_view original_name, std::string_view original_bytes, std::string_view current) {
    auto parsed = parse("current", current);
    if (!parsed) return false;
    auto p = parsed->FindMember("plugins");
    if (p == parsed->MemberEnd() || !p->value.IsArray() || p->value.Empty()) return false;
    const Value& last = p->value[p->value.Size() - 1];
    if (!is_ours(last)) return false;
    auto replay = chain_with(original_name, original_bytes, last);
    return replay && replay->changed && replay->bytes == current;
}

std::string saved_name(std::string_view config_name) {
    return fmt::format("{}{}{}", kSavedPrefix, config_name, kSavedSuffix);
}

std::optional<std::string> config_of_saved(std::string_view file) {
    if (file.size() <= kSavedPrefix.size() + kSavedSuffix.size() || !file.starts_with(kSavedPrefix) ||
        !file.ends_with(kSavedSuffix))
        return std::nullopt;
    std::string name(
        file.substr(kSavedPrefix.size(), file.size() - kSavedPrefix.size() - kSavedSuffix.size()));
    if (!is_config_name(name)) return std::nullopt;
    return name;
}

std::string server_url(std::string_view host, std::string_view port) {
    bool v6 = host.find(':') != std::string_view::npos && !host.starts_with('[');
    return fmt::format("https://{}{}{}:{}", v6 ? "[" : "", host, v6 ? "]" : "", port);
}

std::string base64(std::string_view data) {
    static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((data.size() + 2) / 3 * 4);
    size_t i = 0;
    for (; i + 2 < data.size(); i += 3) {
        uint32_t n = (uint8_t(data[i]) << 16) | (uint8_t(data[i + 1]) << 8) | uint8_t(data[i + 2]);
        for (int s : {18, 12, 6, 0}) out += kAlphabet[(n >> s) & 63];
    }
    if (size_t rest = data.size() - i; rest > 0) {
        uint32_t n = uint8_t(data[i]) << 16;
        if (rest == 2) n |= uint8_t(data[i + 1]) << 8;
        out += kAlphabet[(n >> 18) & 63];
        out += kAlphabet[(n >> 12) & 63];
        out += rest == 2 ? kAlphabet[(n >> 6) & 63] : '=';
        out += '=';
    }
    return out;
}

namespace {

// A YAML double-quoted scalar: JSON string escapes are valid YAML escapes, so any byte is safe.
std::string quoted(std::string_view s) {
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
    return std::string(buf.GetString(), buf.GetSize());
}

}  // namespace

std::string kubeconfig_yaml(std::string_view server, std::string_view ca_pem, std::string_view token) {
    std::string ca =
        ca_pem.empty() ? "" : fmt::format("    certificate-authority-data: {}\n", base64(ca_pem));
    return fmt::format(
        "# Written by kmesh-daemon for the kmesh-cni plugin; rewritten when the token rotates.\n"
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        "- name: local\n"
        "  cluster:\n"
        "    server: {}\n"
        "{}"
        "users:\n"
        "- name: kmesh-cni\n"
        "  user:\n"
        "    token: {}\n"
        "contexts:\n"
        "- name: kmesh-cni\n"
        "  context:\n"
        "    cluster: local\n"
        "    user: kmesh-cni\n"
        "current-context: kmesh-cni\n",
        quoted(server), ca, quoted(token));
}

}  // namespace kmesh::installer
