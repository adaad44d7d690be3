#include "agent/src/sources/ads/bundle.hpp"

#include <fmt/format.h>
#include <google/protobuf/util/json_util.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/yaml_tree.hpp"
#include "envoy/service/discovery/v3/discovery.pb.h"

namespace kmesh::ads {

namespace pb = google::protobuf;

namespace {

// YAML tree -> JSON text. Every scalar becomes a string: YAML does not say whether "80" is a
// number, and proto3 JSON takes numbers, booleans and enum names as strings too.
void write_json(const YamlNode& n, rapidjson::Writer<rapidjson::StringBuffer>& w) {
    switch (n.kind) {
        case YamlNode::Kind::kNull:
            w.Null();
            break;
        case YamlNode::Kind::kScalar:
            w.String(n.scalar.data(), static_cast<rapidjson::SizeType>(n.scalar.size()));
            break;
        case YamlNode::Kind::kSequence:
            w.StartArray();
            for (const auto& i : n.items) write_json(i, w);
            w.EndArray();
            break;
        case YamlNode::Kind::kMapping:
            w.StartObject();
            for (const auto& e : n.entries) {
                w.Key(e.first.scalar.data(), static_cast<rapidjson::SizeType>(e.first.scalar.size()));
                write_json(e.second, w);
            }
            w.EndObject();
            break;
    }
}

}  // namespace

Result<Bundle> parse_bundle(const std::string& text, const ConvertOptions& opts) {
    std::string json;
    if (looks_like_json(text)) {
        json = text;
    } else {
        YamlNode root;
        std::string error;
        if (!parse_yaml(text, &root, &error)) return Status(Errc::kDataLoss, "bundle: " + error);
        rapidjson::StringBuffer sb;
        rapidjson::Writer<rapidjson::StringBuffer> w(sb);
        write_json(root, w);
        json = sb.GetString();
    }
    // The file's "resources" is a DiscoveryResponse's `repeated Any resources`; other top-level
    // keys are skipped like the resources' undeclared fields.
    envoy::service::discovery::v3::DiscoveryResponse r;
    pb::util::JsonParseOptions po;
    po.ignore_unknown_fields = true;
    auto st = pb::util::JsonStringToMessage(json, &r, po);
    if (!st.ok()) return Status(Errc::kDataLoss, fmt::format("bundle: {}", std::string(st.message())));

    // Group by type, keeping file order within a type, then convert each group as one response.
    pb::RepeatedPtrField<pb::Any> by_type[4];
    for (const auto& any : r.resources()) {
        auto t = resource_type(any.type_url());
        if (!t)
            return Status(Errc::kInvalidArgument, fmt::format("bundle: resource of type '{}' is not one of "
                                                              "Listener, RouteConfiguration, Cluster, "
                                                              "ClusterLoadAssignment",
                                                              any.type_url()));
        *by_type[static_cast<int>(*t)].Add() = any;
    }
    Bundle b;
    std::vector<ResourceResult>* outs[4] = {&b.listeners, &b.routes, &b.clusters, &b.clas};
    for (int i = 0; i < 4; ++i) {
        auto res = convert_resources(type_url(static_cast<ResourceType>(i)), by_type[i], opts);
        if (!res) return res.status();
        *outs[i] = std::move(res).value();
    }
    return b;
}

Result<Bundle> read_bundle(const std::string& path, const ConvertOptions& opts) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        int err = errno;
        return Status(err == ENOENT ? Errc::kNotFound : Errc::kIo,
                      fmt::format("bundle {}: {}", path, std::strerror(err)));
    }
    std::stringstream ss;
    ss << in.rdbuf();
    return parse_bundle(ss.str(), opts);
}

}  // namespace kmesh::ads
