// fake_istiod: an ADS server standing in for istiod in integration tests of the agent.
//
// Kernel-native mode (SotW): StreamAggregatedResources for Envoy's Cluster, ClusterLoadAssignment,
// Listener and RouteConfiguration, as istiod serves a sidecar (README.md). Those resources are
// written in the fixture as proto3 JSON and encoded with the *upstream* Envoy schema, a descriptor
// set given with --envoy-descriptors (built by protoc from envoyproxy's own .proto files), never
// with the agent's vendored subset.
//
// Serves envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources for
// type.googleapis.com/istio.workload.Address and type.googleapis.com/istio.security.Authorization
// from a JSON fixture, like istiod does for ztunnel:
//   - per stream and type, the first request subscribes (wildcard); initial_resource_versions is
//     honoured: only resources whose version differs or is absent are sent, and names the client
//     holds that no longer exist are sent in removed_resources; one response per type, unique nonce;
//   - every later request carrying a nonce is an ACK (no error_detail) or a NACK (error_detail);
//   - on reload (SIGHUP, or <control-dir>/push) the difference is pushed to every stream.
//   - <control-dir>/patch upserts the resources of <control-dir>/patch.json into the current
//     snapshot and pushes them: a cheap change on top of a large snapshot.
// Events are written as JSON lines to <control-dir>/events.jsonl and to stderr. See README.md.
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/descriptor_database.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/type.pb.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/type_resolver.h>
#include <google/protobuf/util/type_resolver_util.h>
#include <google/protobuf/wrappers.pb.h>
#include <grpcpp/grpcpp.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>

#include "envoy/service/discovery/v3/discovery.grpc.pb.h"
#include "istio/security/authorization.pb.h"
#include "istio/workload/workload.pb.h"

namespace {

namespace fs = std::filesystem;
namespace pb = google::protobuf;
using envoy::service::discovery::v3::AggregatedDiscoveryService;
using envoy::service::discovery::v3::DeltaDiscoveryRequest;
using envoy::service::discovery::v3::DeltaDiscoveryResponse;
using envoy::service::discovery::v3::DiscoveryRequest;
using envoy::service::discovery::v3::DiscoveryResponse;
using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

constexpr const char* kAddressType = "type.googleapis.com/istio.workload.Address";
constexpr const char* kAuthorizationType = "type.googleapis.com/istio.security.Authorization";
constexpr const char* kClusterType = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
constexpr const char* kEndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
constexpr const char* kListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener";
constexpr const char* kRouteType = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

// Fixture key -> (type URL, the field naming a resource).
struct EnvoyKind {
    const char* key;
    const char* type_url;
    const char* name_field;
};
constexpr EnvoyKind kEnvoyKinds[] = {
    {"clusters", kClusterType, "name"},
    {"endpoints", kEndpointType, "cluster_name"},
    {"listeners", kListenerType, "name"},
    {"routes", kRouteType, "name"},
};

bool is_named_type(const std::string& type_url) {
    return type_url == kEndpointType || type_url == kRouteType;
}

// ---------------------------------------------------------------------------------------------
// Snapshot

struct Entry {
    std::string version;
    pb::Any any;
};
using TypeSet = std::map<std::string, Entry>;  // resource name -> entry

struct Snapshot {
    std::map<std::string, TypeSet> types;  // type_url -> resources
    uint64_t generation = 0;

    const TypeSet* find(const std::string& type_url) const {
        auto it = types.find(type_url);
        return it == types.end() ? nullptr : &it->second;
    }
};

std::string fnv1a_hex(std::string_view a, std::string_view b) {
    uint64_t h = 14695981039346656037ull;
    for (std::string_view s : {a, std::string_view("\0", 1), b}) {
        for (unsigned char c : s) {
            h ^= c;
            h *= 1099511628211ull;
        }
    }
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return buf;
}

std::string serialize_deterministic(const pb::Message& m) {
    std::string out;
    {
        pb::io::StringOutputStream sos(&out);
        pb::io::CodedOutputStream cos(&sos);
        cos.SetSerializationDeterministic(true);
        m.SerializeToCodedStream(&cos);
    }
    return out;
}

std::string to_json(const rapidjson::Value& v) {
    rapidjson::StringBuffer sb;
    JsonWriter w(sb);
    v.Accept(w);
    return sb.GetString();
}

// The JSON parser converts descriptors to google.protobuf.Type on every call; caching them saves
// ~15% (protobuf 3.21 still needs ~40 us per resource: 4.3 s for the 10k x 10 fixture).
class CachingTypeResolver final : public pb::util::TypeResolver {
  public:
    explicit CachingTypeResolver(const pb::DescriptorPool* pool = pb::DescriptorPool::generated_pool())
        : inner_(pb::util::NewTypeResolverForDescriptorPool("type.googleapis.com", pool)) {}
    pb::util::Status ResolveMessageType(const std::string& url, pb::Type* type) override {
        return resolve(messages_, url, type, [&](pb::Type* t) { return inner_->ResolveMessageType(url, t); });
    }
    pb::util::Status ResolveEnumType(const std::string& url, pb::Enum* type) override {
        return resolve(enums_, url, type, [&](pb::Enum* t) { return inner_->ResolveEnumType(url, t); });
    }

  private:
    template <typename T, typename F>
    pb::util::Status resolve(std::map<std::string, T>& cache, const std::string& url, T* out, F&& lookup) {
        std::lock_guard lk(mu_);
        auto it = cache.find(url);
        if (it == cache.end()) {
            T t;
            auto status = lookup(&t);
            if (!status.ok()) return status;
            it = cache.emplace(url, std::move(t)).first;
        }
        *out = it->second;
        return pb::util::Status();
    }

    std::unique_ptr<pb::util::TypeResolver> inner_;
    std::mutex mu_;
    std::map<std::string, pb::Type> messages_;
    std::map<std::string, pb::Enum> enums_;
};

void parse_proto_json(const rapidjson::Value& v, pb::Message* m, const std::string& what) {
    static CachingTypeResolver resolver;
    pb::util::JsonParseOptions opts;
    opts.ignore_unknown_fields = false;  // a typo in a fixture should fail loudly
    std::string binary;
    auto status = pb::util::JsonToBinaryString(&resolver, "type.googleapis.com/" + m->GetTypeName(),
                                               to_json(v), &binary, opts);
    if (!status.ok()) throw std::runtime_error(what + ": " + status.ToString());
    if (!m->ParseFromString(binary)) throw std::runtime_error(what + ": does not parse");
}

// The upstream Envoy schema (--envoy-descriptors): a FileDescriptorSet made by protoc with
// --include_imports from envoyproxy's .proto files.
struct EnvoySchema {
    pb::SimpleDescriptorDatabase db;
    std::unique_ptr<pb::DescriptorPool> pool;
    std::unique_ptr<CachingTypeResolver> resolver;
    pb::DynamicMessageFactory factory;
};
std::unique_ptr<EnvoySchema> g_envoy;

void load_envoy_schema(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    pb::FileDescriptorSet set;
    if (!in || !set.ParseFromIstream(&in))
        throw std::runtime_error("cannot read a FileDescriptorSet from " + path);
    auto schema = std::make_unique<EnvoySchema>();
    for (const auto& f : set.file())
        if (!schema->db.Add(f)) throw std::runtime_error(path + ": cannot add " + f.name());
    schema->pool = std::make_unique<pb::DescriptorPool>(&schema->db);
    for (const auto& kind : kEnvoyKinds) {
        std::string full = std::string(kind.type_url).substr(std::string("type.googleapis.com/").size());
        if (!schema->pool->FindMessageTypeByName(full))
            throw std::runtime_error(path + ": no message " + full);
    }
    schema->resolver = std::make_unique<CachingTypeResolver>(schema->pool.get());
    g_envoy = std::move(schema);
}

// One Envoy resource from proto3 JSON, encoded with the upstream schema; *name from its name field.
std::string parse_envoy_json(const rapidjson::Value& v, const EnvoyKind& kind, std::string* name,
                             const std::string& what) {
    if (!g_envoy) throw std::runtime_error(what + ": Envoy resources need --envoy-descriptors");
    pb::util::JsonParseOptions opts;
    opts.ignore_unknown_fields = false;
    std::string binary;
    auto status =
        pb::util::JsonToBinaryString(g_envoy->resolver.get(), kind.type_url, to_json(v), &binary, opts);
    if (!status.ok()) throw std::runtime_error(what + ": " + status.ToString());
    const auto* desc = g_envoy->pool->FindMessageTypeByName(
        std::string(kind.type_url).substr(std::string("type.googleapis.com/").size()));
    std::unique_ptr<pb::Message> m(g_envoy->factory.GetPrototype(desc)->New());
    if (!m->ParseFromString(binary)) throw std::runtime_error(what + ": does not parse");
    *name = m->GetReflection()->GetString(*m, desc->FindFieldByName(kind.name_field));
    return serialize_deterministic(*m);
}

void add_entry(TypeSet& set, const std::string& name, const std::string& type_url, std::string value,
               const std::string& what) {
    if (name.empty()) throw std::runtime_error(what + ": empty resource name");
    Entry e;
    e.version = fnv1a_hex(type_url, value);
    e.any.set_type_url(type_url);
    e.any.set_value(std::move(value));
    if (!set.emplace(name, std::move(e)).second) throw std::runtime_error(what + ": duplicate name " + name);
}

// {"raw_name": N, "raw_type_url": T (optional), "raw_base64": B}: sent verbatim, for NACK tests.
bool add_raw(const rapidjson::Value& v, const char* default_type, TypeSet& set, const std::string& what) {
    if (!v.HasMember("raw_base64")) return false;
    auto str = [&](const char* key) -> std::optional<std::string> {
        if (!v.HasMember(key)) return std::nullopt;
        if (!v[key].IsString()) throw std::runtime_error(what + ": " + key + " must be a string");
        return std::string(v[key].GetString(), v[key].GetStringLength());
    };
    auto name = str("raw_name");
    if (!name) throw std::runtime_error(what + ": raw_name missing");
    pb::BytesValue bytes;
    parse_proto_json(v["raw_base64"], &bytes, what + ": raw_base64");
    add_entry(set, *name, str("raw_type_url").value_or(default_type), bytes.value(), what);
    return true;
}

std::shared_ptr<Snapshot> load_snapshot(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();

    rapidjson::Document doc;
    doc.Parse(text.data(), text.size());
    if (doc.HasParseError()) {
        throw std::runtime_error(path + ": JSON error at offset " + std::to_string(doc.GetErrorOffset()) +
                                 ": " + rapidjson::GetParseError_En(doc.GetParseError()));
    }
    if (!doc.IsObject()) throw std::runtime_error(path + ": top level must be an object");
    for (auto it = doc.MemberBegin(); it != doc.MemberEnd(); ++it) {
        std::string_view key(it->name.GetString(), it->name.GetStringLength());
        bool envoy = std::any_of(std::begin(kEnvoyKinds), std::end(kEnvoyKinds),
                                 [&](const EnvoyKind& k) { return key == k.key; });
        if (key != "addresses" && key != "authorizations" && !envoy) {
            throw std::runtime_error(path + ": unknown top-level key \"" + std::string(key) + "\"");
        }
        if (!it->value.IsArray())
            throw std::runtime_error(path + ": \"" + std::string(key) + "\" must be an array");
    }

    auto snap = std::make_shared<Snapshot>();
    TypeSet& addresses = snap->types[kAddressType];
    TypeSet& authorizations = snap->types[kAuthorizationType];
    if (doc.HasMember("addresses")) {
        const auto& arr = doc["addresses"];
        for (rapidjson::SizeType i = 0; i < arr.Size(); ++i) {
            const std::string what = path + ": addresses[" + std::to_string(i) + "]";
            if (!arr[i].IsObject()) throw std::runtime_error(what + ": not an object");
            if (add_raw(arr[i], kAddressType, addresses, what)) continue;
            istio::workload::Address a;
            parse_proto_json(arr[i], &a, what);
            std::string name;
            if (a.has_workload()) {
                name = a.workload().uid();
            } else if (a.has_service()) {
                name = a.service().namespace_() + "/" + a.service().hostname();
            } else {
                throw std::runtime_error(what + ": neither \"workload\" nor \"service\"");
            }
            add_entry(addresses, name, kAddressType, serialize_deterministic(a), what);
        }
    }
    if (doc.HasMember("authorizations")) {
        const auto& arr = doc["authorizations"];
        for (rapidjson::SizeType i = 0; i < arr.Size(); ++i) {
            const std::string what = path + ": authorizations[" + std::to_string(i) + "]";
            if (!arr[i].IsObject()) throw std::runtime_error(what + ": not an object");
            if (add_raw(arr[i], kAuthorizationType, authorizations, what)) continue;
            istio::security::Authorization a;
            parse_proto_json(arr[i], &a, what);
            add_entry(authorizations, a.namespace_() + "/" + a.name(), kAuthorizationType,
                      serialize_deterministic(a), what);
        }
    }
    for (const auto& kind : kEnvoyKinds) {
        if (!doc.HasMember(kind.key)) continue;
        TypeSet& set = snap->types[kind.type_url];
        const auto& arr = doc[kind.key];
        for (rapidjson::SizeType i = 0; i < arr.Size(); ++i) {
            const std::string what = path + ": " + kind.key + "[" + std::to_string(i) + "]";
            if (!arr[i].IsObject()) throw std::runtime_error(what + ": not an object");
            if (add_raw(arr[i], kind.type_url, set, what)) continue;
            std::string name;
            std::string value = parse_envoy_json(arr[i], kind, &name, what);
            add_entry(set, name, kind.type_url, std::move(value), what);
        }
    }
    return snap;
}

// ---------------------------------------------------------------------------------------------
// Event log: one JSON object per line, to <control-dir>/events.jsonl (if any) and stderr.

class EventLog {
  public:
    void open(const std::string& path) {
        file_ = std::fopen(path.c_str(), "a");
        if (!file_) throw std::runtime_error("cannot open " + path);
    }

    template <typename Fill>
    void emit(const char* event, Fill&& fill) {
        rapidjson::StringBuffer sb;
        JsonWriter w(sb);
        w.StartObject();
        auto now = std::chrono::system_clock::now().time_since_epoch();
        w.Key("ts_ms");
        w.Int64(std::chrono::duration_cast<std::chrono::milliseconds>(now).count());
        w.Key("ts_us");  // the same instant to the µs: send -> ACK of a small push is ~1 ms
        w.Int64(std::chrono::duration_cast<std::chrono::microseconds>(now).count());
        w.Key("event");
        w.String(event);
        fill(w);
        w.EndObject();
        std::lock_guard lk(mu_);
        for (FILE* f : {file_, stderr}) {
            if (!f) continue;
            std::fprintf(f, "%s\n", sb.GetString());
            std::fflush(f);
        }
    }
    void emit(const char* event) {
        emit(event, [](JsonWriter&) {});
    }

  private:
    std::mutex mu_;
    FILE* file_ = nullptr;
};

EventLog g_events;

void put(JsonWriter& w, const char* key, const std::string& value) {
    w.Key(key);
    w.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
}

void put(JsonWriter& w, const char* key, uint64_t value) {
    w.Key(key);
    w.Uint64(value);
}

void put_bool(JsonWriter& w, const char* key, bool value) {
    w.Key(key);
    w.Bool(value);
}

// ---------------------------------------------------------------------------------------------
// Streams

struct TypeState {
    bool subscribed = false;
    std::map<std::string, std::string> client_has;  // name -> version, as we believe the client holds
    std::set<std::string> unacked_nonces;
};

// A SotW type on one stream: what the client subscribed to and the nonce it must answer.
struct SotwState {
    bool subscribed = false;
    std::vector<std::string> names;  // EDS/RDS: the names asked for, sorted; CDS/LDS: wildcard
    std::string last_nonce;          // istiod ignores a request answering an older nonce
};

template <class Resp>
struct OutgoingOf {
    Resp response;
    bool initial = false;
};

template <class Resp, class State>
struct StreamOf {
    uint64_t id = 0;
    std::map<std::string, State> types;  // guarded by Server::mu_

    std::mutex q_mu;
    std::condition_variable q_cv;
    std::deque<OutgoingOf<Resp>> queue;
    bool closed = false;
};
using Stream = StreamOf<DeltaDiscoveryResponse, TypeState>;
using SotwStream = StreamOf<DiscoveryResponse, SotwState>;

struct Options {
    std::string listen;
    std::string snapshot;
    std::string control_dir;
    std::string tls_cert;
    std::string tls_key;
    std::string expect_token_file;
    std::string envoy_descriptors;
};

std::optional<std::string> header(const grpc::ServerContext& ctx, const std::string& key) {
    const auto& md = ctx.client_metadata();
    auto it = md.find(key);
    if (it == md.end()) return std::nullopt;
    return std::string(it->second.data(), it->second.size());
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::string trim(std::string s) {
    const char* ws = " \t\r\n";
    s.erase(s.find_last_not_of(ws) + 1);
    s.erase(0, s.find_first_not_of(ws));
    return s;
}

class Server final : public AggregatedDiscoveryService::Service {
  public:
    Server(Options opts, std::shared_ptr<Snapshot> initial)
        : opts_(std::move(opts)), snapshot_(std::move(initial)) {
        snapshot_->generation = ++generation_;
        nonce_prefix_ = fnv1a_hex(std::to_string(::getpid()),
                                  std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()))
                            .substr(0, 8);
    }

    grpc::Status DeltaAggregatedResources(
        grpc::ServerContext* ctx,
        grpc::ServerReaderWriter<DeltaDiscoveryResponse, DeltaDiscoveryRequest>* rw) override {
        return serve(ctx, rw, streams_,
                     [this](Stream& s, const DeltaDiscoveryRequest& r) { handle_request(s, r); });
    }

    // Kernel-native mode: Envoy's resources to a sidecar, state of the world.
    grpc::Status StreamAggregatedResources(
        grpc::ServerContext* ctx,
        grpc::ServerReaderWriter<DiscoveryResponse, DiscoveryRequest>* rw) override {
        return serve(ctx, rw, sotw_streams_,
                     [this](SotwStream& s, const DiscoveryRequest& r) { handle_sotw_request(s, r); });
    }

    // One stream of either API: the token check, the connect/disconnect events (the node of the
    // first request), a writer thread draining the stream's queue, and each request to `handle`.
    template <class Req, class Resp, class State, class Handle>
    grpc::Status serve(grpc::ServerContext* ctx, grpc::ServerReaderWriter<Resp, Req>* rw,
                       std::set<std::shared_ptr<StreamOf<Resp, State>>>& streams, Handle&& handle) {
        auto stream = std::make_shared<StreamOf<Resp, State>>();
        stream->id = ++next_stream_id_;
        const auto auth = header(*ctx, "authorization");
        const auto clusterid = header(*ctx, "clusterid");
        const std::optional<bool> matched = check_token(auth);
        if (matched == false) {
            g_events.emit("unauthenticated", [&](JsonWriter& w) {
                put(w, "stream", stream->id);
                put_auth(w, auth, matched);
            });
            return {grpc::StatusCode::UNAUTHENTICATED,
                    "authorization header does not match the expected token"};
        }
        {
            std::lock_guard lk(mu_);
            streams.insert(stream);
        }
        std::thread writer([&] { write_loop(*stream, rw); });

        Req req;
        bool first = true;
        while (rw->Read(&req)) {
            if (first) {
                first = false;
                std::string node_json;
                pb::util::JsonPrintOptions jopts;
                jopts.preserve_proto_field_names = true;
                (void)pb::util::MessageToJsonString(req.node(), &node_json, jopts);
                g_events.emit("connect", [&](JsonWriter& w) {
                    put(w, "stream", stream->id);
                    put(w, "api", std::string(std::is_same_v<Req, DiscoveryRequest> ? "sotw" : "delta"));
                    put(w, "peer", ctx->peer());
                    w.Key("node");
                    w.RawValue(node_json.data(), node_json.size(), rapidjson::kObjectType);
                    put_auth(w, auth, matched);
                    w.Key("clusterid");
                    if (clusterid) {
                        w.String(clusterid->data(), static_cast<rapidjson::SizeType>(clusterid->size()));
                    } else {
                        w.Null();
                    }
                });
            }
            handle(*stream, req);
        }

        {
            std::lock_guard lk(mu_);
            streams.erase(stream);
        }
        {
            std::lock_guard lk(stream->q_mu);
            stream->closed = true;
        }
        stream->q_cv.notify_all();
        writer.join();
        g_events.emit("disconnect", [&](JsonWriter& w) {
            put(w, "stream", stream->id);
            put_bool(w, "cancelled", ctx->IsCancelled());
        });
        return grpc::Status::OK;
    }

    // Loads `path` and pushes the difference to every stream. Keeps the old snapshot on error.
    void reload(const std::string& path, const char* trigger) {
        std::shared_ptr<Snapshot> snap;
        try {
            snap = load_snapshot(path);
        } catch (const std::exception& e) {
            g_events.emit("reload", [&](JsonWriter& w) {
                put(w, "trigger", std::string(trigger));
                put_bool(w, "ok", false);
                put(w, "error", std::string(e.what()));
            });
            return;
        }
        std::lock_guard lk(mu_);
        snap->generation = ++generation_;
        snapshot_ = snap;
        g_events.emit("reload", [&](JsonWriter& w) {
            put(w, "trigger", std::string(trigger));
            put_bool(w, "ok", true);
            put(w, "generation", snap->generation);
            put(w, "addresses", static_cast<uint64_t>(snap->types[kAddressType].size()));
            put(w, "authorizations", static_cast<uint64_t>(snap->types[kAuthorizationType].size()));
            put(w, "streams", static_cast<uint64_t>(streams_.size()));
        });
        for (const auto& stream : streams_) {
            for (auto& [type_url, ts] : stream->types) {
                if (!ts.subscribed) continue;
                DeltaDiscoveryResponse resp;
                if (build_delta(snapshot_->find(type_url), ts.client_has, resp)) {
                    enqueue(*stream, ts, type_url, std::move(resp), false);
                }
            }
        }
        // istiod pushes the full state of every subscribed type to a sidecar on a change.
        for (const auto& stream : sotw_streams_)
            for (auto& [type_url, ts] : stream->types)
                if (ts.subscribed) respond_sotw(*stream, ts, type_url, false);
    }

    // Upserts the resources of the fixture at `path` into the current snapshot and pushes the
    // difference: a cheap single-resource change on top of a large snapshot (for benchmarks).
    void patch(const std::string& path) {
        std::shared_ptr<Snapshot> delta;
        try {
            delta = load_snapshot(path);
        } catch (const std::exception& e) {
            g_events.emit("patch", [&](JsonWriter& w) {
                put_bool(w, "ok", false);
                put(w, "error", std::string(e.what()));
            });
            return;
        }
        std::lock_guard lk(mu_);
        uint64_t changed = 0;
        for (auto& [type_url, set] : delta->types)
            for (auto& [name, entry] : set) {
                snapshot_->types[type_url][name] = entry;
                changed++;
            }
        snapshot_->generation = ++generation_;
        g_events.emit("patch", [&](JsonWriter& w) {
            put_bool(w, "ok", true);
            put(w, "resources", changed);
        });
        for (const auto& stream : streams_)
            for (auto& [type_url, ts] : stream->types) {
                if (!ts.subscribed) continue;
                DeltaDiscoveryResponse resp;
                if (build_delta(snapshot_->find(type_url), ts.client_has, resp))
                    enqueue(*stream, ts, type_url, std::move(resp), false);
            }
    }

  private:
    // nullopt: no token expected; otherwise whether the header is exactly "Bearer <token>".
    std::optional<bool> check_token(const std::optional<std::string>& auth) const {
        if (opts_.expect_token_file.empty()) return std::nullopt;
        std::string token;
        try {
            token = trim(read_file(opts_.expect_token_file));  // re-read: tests may rotate it
        } catch (const std::exception& e) {
            g_events.emit("error", [&](JsonWriter& w) { put(w, "message", std::string(e.what())); });
            return false;
        }
        return auth && !token.empty() && *auth == "Bearer " + token;
    }

    static void put_auth(JsonWriter& w, const std::optional<std::string>& auth, std::optional<bool> matched) {
        w.Key("authorization");
        w.StartObject();
        put_bool(w, "present", auth.has_value());
        const bool bearer = auth && auth->starts_with("Bearer ");
        put_bool(w, "bearer", bearer);
        put(w, "token_length", static_cast<uint64_t>(!auth ? 0 : bearer ? auth->size() - 7 : auth->size()));
        w.Key("matched");
        if (matched) {
            w.Bool(*matched);
        } else {
            w.Null();
        }
        w.EndObject();
    }

    // Fills `out` with what brings a client holding `have` to `want`, and updates `have`.
    // Returns whether there is anything to send.
    static bool build_delta(const TypeSet* want, std::map<std::string, std::string>& have,
                            DeltaDiscoveryResponse& out) {
        static const TypeSet kEmpty;
        if (!want) want = &kEmpty;
        for (const auto& [name, entry] : *want) {
            auto it = have.find(name);
            if (it != have.end() && it->second == entry.version) continue;
            auto* r = out.add_resources();
            r->set_name(name);
            r->set_version(entry.version);
            *r->mutable_resource() = entry.any;
            have[name] = entry.version;
        }
        for (auto it = have.begin(); it != have.end();) {
            if (want->contains(it->first)) {
                ++it;
            } else {
                out.add_removed_resources(it->first);
                it = have.erase(it);
            }
        }
        return out.resources_size() > 0 || out.removed_resources_size() > 0;
    }

    // Caller holds mu_.
    void enqueue(Stream& s, TypeState& ts, const std::string& type_url, DeltaDiscoveryResponse resp,
                 bool initial) {
        resp.set_type_url(type_url);
        resp.set_system_version_info(std::to_string(snapshot_->generation));
        resp.set_nonce(nonce_prefix_ + "-" + std::to_string(++next_nonce_));
        ts.unacked_nonces.insert(resp.nonce());
        {
            std::lock_guard lk(s.q_mu);
            s.queue.push_back({std::move(resp), initial});
        }
        s.q_cv.notify_all();
    }

    void handle_request(Stream& s, const DeltaDiscoveryRequest& req) {
        std::lock_guard lk(mu_);
        TypeState& ts = s.types[req.type_url()];
        const bool initial = !ts.subscribed;
        if (initial || req.response_nonce().empty()) {
            g_events.emit("request", [&](JsonWriter& w) {
                put(w, "stream", s.id);
                put(w, "type_url", req.type_url());
                put_bool(w, "initial", initial);
                put(w, "initial_versions", static_cast<uint64_t>(req.initial_resource_versions_size()));
                put(w, "subscribe", static_cast<uint64_t>(req.resource_names_subscribe_size()));
                put(w, "unsubscribe", static_cast<uint64_t>(req.resource_names_unsubscribe_size()));
                put_bool(
                    w, "wildcard",
                    req.resource_names_subscribe().empty() ||
                        (req.resource_names_subscribe_size() == 1 && req.resource_names_subscribe(0) == "*"));
                put(w, "nonce", req.response_nonce());
            });
        }
        if (initial) {
            ts.subscribed = true;
            ts.client_has.clear();
            for (const auto& [name, version] : req.initial_resource_versions()) ts.client_has[name] = version;
            DeltaDiscoveryResponse resp;
            build_delta(snapshot_->find(req.type_url()), ts.client_has, resp);
            enqueue(s, ts, req.type_url(), std::move(resp), true);  // istiod always answers the first request
            return;
        }
        if (req.response_nonce().empty()) return;
        const bool known = ts.unacked_nonces.erase(req.response_nonce()) > 0;
        const bool nack = req.has_error_detail();
        g_events.emit(nack ? "nack" : "ack", [&](JsonWriter& w) {
            put(w, "stream", s.id);
            put(w, "type_url", req.type_url());
            put(w, "nonce", req.response_nonce());
            put_bool(w, "known_nonce", known);
            if (nack) {
                w.Key("code");
                w.Int(req.error_detail().code());
                put(w, "message", req.error_detail().message());
            }
        });
    }

    // Caller holds mu_. The type's resources for this stream: all of them for CDS and LDS, the
    // named ones that exist for EDS and RDS; version = the snapshot generation.
    void respond_sotw(SotwStream& s, SotwState& ts, const std::string& type_url, bool initial) {
        DiscoveryResponse resp;
        resp.set_type_url(type_url);
        resp.set_version_info(std::to_string(snapshot_->generation));
        if (const TypeSet* set = snapshot_->find(type_url)) {
            if (is_named_type(type_url)) {
                for (const auto& name : ts.names)
                    if (auto it = set->find(name); it != set->end()) *resp.add_resources() = it->second.any;
            } else {
                for (const auto& [name, entry] : *set) *resp.add_resources() = entry.any;
            }
        }
        resp.set_nonce(nonce_prefix_ + "-" + std::to_string(++next_nonce_));
        ts.last_nonce = resp.nonce();
        {
            std::lock_guard lk(s.q_mu);
            s.queue.push_back({std::move(resp), initial});
        }
        s.q_cv.notify_all();
    }

    // As istiod for a sidecar: the first request of a type subscribes and is answered; a request
    // carrying the type's latest nonce is an ACK or NACK, and is answered again when it changes
    // the names of EDS/RDS; one carrying an older nonce is stale and ignored.
    void handle_sotw_request(SotwStream& s, const DiscoveryRequest& req) {
        std::lock_guard lk(mu_);
        const std::string& type = req.type_url();
        SotwState& ts = s.types[type];
        std::vector<std::string> names(req.resource_names().begin(), req.resource_names().end());
        std::sort(names.begin(), names.end());
        names.erase(std::unique(names.begin(), names.end()), names.end());
        const bool initial = !ts.subscribed;
        auto put_names = [&](JsonWriter& w) {
            w.Key("names");
            w.StartArray();
            for (const auto& n : names) w.String(n.c_str(), static_cast<rapidjson::SizeType>(n.size()));
            w.EndArray();
        };
        if (initial || req.response_nonce().empty()) {
            g_events.emit("request", [&](JsonWriter& w) {
                put(w, "stream", s.id);
                put(w, "type_url", type);
                put_bool(w, "initial", initial);
                put(w, "version_info", req.version_info());
                put(w, "nonce", req.response_nonce());
                put_names(w);
            });
            if (initial || names != ts.names) {
                ts.subscribed = true;
                ts.names = names;
                respond_sotw(s, ts, type, initial);
            }
            return;
        }
        const bool latest = req.response_nonce() == ts.last_nonce;
        const bool nack = req.has_error_detail();
        g_events.emit(!latest ? "stale"
                      : nack  ? "nack"
                              : "ack",
                      [&](JsonWriter& w) {
                          put(w, "stream", s.id);
                          put(w, "type_url", type);
                          put(w, "nonce", req.response_nonce());
                          put(w, "version_info", req.version_info());
                          put_names(w);
                          if (nack) {
                              w.Key("code");
                              w.Int(req.error_detail().code());
                              put(w, "message", req.error_detail().message());
                          }
                      });
        if (!latest) return;
        if (is_named_type(type) && names != ts.names) {
            ts.names = names;
            respond_sotw(s, ts, type, false);
        }
    }

    template <class Resp, class Req, class State>
    void write_loop(StreamOf<Resp, State>& s, grpc::ServerReaderWriter<Resp, Req>* rw) {
        for (;;) {
            OutgoingOf<Resp> out;
            {
                std::unique_lock lk(s.q_mu);
                s.q_cv.wait(lk, [&] { return s.closed || !s.queue.empty(); });
                if (s.closed) return;
                out = std::move(s.queue.front());
                s.queue.pop_front();
            }
            const auto& r = out.response;
            g_events.emit("push", [&](JsonWriter& w) {
                put(w, "stream", s.id);
                put(w, "type_url", r.type_url());
                put(w, "nonce", r.nonce());
                put_bool(w, "initial", out.initial);
                put(w, "resources", static_cast<uint64_t>(r.resources_size()));
                if constexpr (std::is_same_v<Resp, DeltaDiscoveryResponse>)
                    put(w, "removed", static_cast<uint64_t>(r.removed_resources_size()));
                else
                    put(w, "version_info", r.version_info());
                put(w, "bytes", static_cast<uint64_t>(r.ByteSizeLong()));
            });
            if (!rw->Write(r)) {
                g_events.emit("write_failed", [&](JsonWriter& w) { put(w, "stream", s.id); });
                std::lock_guard lk(s.q_mu);
                s.closed = true;
                return;
            }
        }
    }

    const Options opts_;
    std::mutex mu_;  // guards snapshot_, streams_, Stream::types, generation_
    std::shared_ptr<Snapshot> snapshot_;
    std::set<std::shared_ptr<Stream>> streams_;
    std::set<std::shared_ptr<SotwStream>> sotw_streams_;
    uint64_t generation_ = 0;
    std::string nonce_prefix_;
    std::atomic<uint64_t> next_nonce_{0};
    std::atomic<uint64_t> next_stream_id_{0};
};

std::shared_ptr<grpc::ServerCredentials> make_credentials(const Options& o) {
    if (o.tls_cert.empty() && o.tls_key.empty()) return grpc::InsecureServerCredentials();
    if (o.tls_cert.empty() || o.tls_key.empty())
        throw std::runtime_error("--tls-cert and --tls-key go together");
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({read_file(o.tls_key), read_file(o.tls_cert)});
    return grpc::SslServerCredentials(ssl);
}

// Where a reload reads from: <control-dir>/snapshot.json if present, else --snapshot.
std::string reload_source(const Options& o) {
    if (!o.control_dir.empty()) {
        auto p = fs::path(o.control_dir) / "snapshot.json";
        if (fs::exists(p)) return p.string();
    }
    return o.snapshot;
}

int run(const Options& opts) {
    // Signals are taken synchronously by the main loop; block them before gRPC starts threads.
    sigset_t sigs;
    sigemptyset(&sigs);
    for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&sigs, s);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

    if (!opts.control_dir.empty()) {
        fs::create_directories(opts.control_dir);
        g_events.open((fs::path(opts.control_dir) / "events.jsonl").string());
    }
    if (!opts.envoy_descriptors.empty()) load_envoy_schema(opts.envoy_descriptors);
    auto initial = opts.snapshot.empty() ? std::make_shared<Snapshot>() : load_snapshot(opts.snapshot);
    const auto counts = [&](const char* t) { return static_cast<uint64_t>(initial->types[t].size()); };
    const uint64_t n_addresses = counts(kAddressType), n_authorizations = counts(kAuthorizationType);

    Server service(opts, initial);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(opts.listen, make_credentials(opts), &port);
    builder.SetMaxReceiveMessageSize(INT_MAX);  // 100k initial_resource_versions exceed the 4 MiB default
    builder.SetMaxSendMessageSize(INT_MAX);
    builder.RegisterService(&service);
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    if (!server || (port == 0 && !opts.listen.starts_with("unix:"))) {
        std::fprintf(stderr, "fake_istiod: cannot listen on %s\n", opts.listen.c_str());
        return 1;
    }
    std::string shown = opts.listen;
    if (!shown.starts_with("unix:")) shown = shown.substr(0, shown.rfind(':') + 1) + std::to_string(port);
    g_events.emit("listening", [&](JsonWriter& w) {
        put(w, "address", shown);
        put_bool(w, "tls", !opts.tls_cert.empty());
        put(w, "addresses", n_addresses);
        put(w, "authorizations", n_authorizations);
        for (const auto& kind : kEnvoyKinds) put(w, kind.key, counts(kind.type_url));
    });
    std::printf("listening on %s\n", shown.c_str());
    std::fflush(stdout);

    const fs::path push_file = opts.control_dir.empty() ? fs::path() : fs::path(opts.control_dir) / "push";
    const fs::path patch_file = opts.control_dir.empty() ? fs::path() : fs::path(opts.control_dir) / "patch";
    for (;;) {
        timespec timeout{0, 20'000'000};
        const int sig = sigtimedwait(&sigs, nullptr, &timeout);
        if (sig == SIGINT || sig == SIGTERM) break;
        if (sig == SIGHUP) service.reload(reload_source(opts), "sighup");
        std::error_code ec;
        if (!push_file.empty() && fs::exists(push_file, ec)) {
            service.reload(reload_source(opts), "push");
            fs::remove(push_file, ec);  // removed only once the diff is queued: scripts wait for this
        }
        if (!patch_file.empty() && fs::exists(patch_file, ec)) {
            service.patch((fs::path(opts.control_dir) / "patch.json").string());
            fs::remove(patch_file, ec);
        }
    }
    g_events.emit("shutdown");
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    Options opts;
    CLI::App app{
        "fake_istiod: ADS server from fixtures: Delta for Istio workload/authorization resources (ambient), "
        "SotW for Envoy clusters/endpoints/listeners/routes (kernel-native)"};
    app.add_option("--listen", opts.listen, "HOST:PORT (port 0 picks one) or unix:PATH")->required();
    app.add_option("--snapshot", opts.snapshot, "initial fixture JSON");
    app.add_option("--control-dir", opts.control_dir,
                   "control directory (snapshot.json, push, events.jsonl)");
    app.add_option("--tls-cert", opts.tls_cert, "PEM certificate chain; serve TLS");
    app.add_option("--tls-key", opts.tls_key, "PEM private key");
    app.add_option("--expect-token-file", opts.expect_token_file,
                   "reject streams whose authorization header is not \"Bearer <contents>\"");
    app.add_option("--envoy-descriptors", opts.envoy_descriptors,
                   "FileDescriptorSet of the upstream Envoy API (protoc --include_imports): needed to serve "
                   "clusters, endpoints, listeners and routes (kernel-native mode)");
    CLI11_PARSE(app, argc, argv);
    try {
        return run(opts);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "fake_istiod: %s\n", e.what());
        return 1;
    }
}
