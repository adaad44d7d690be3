// Decoding of Pod and Namespace objects (core/v1) into the few fields Kmesh reads. Unknown fields
// are ignored, as every Kubernetes client does; a field of the wrong JSON type is an error so a
// malformed object is never mistaken for an empty one.
#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>

#include "common/kube/api.hpp"
#include "common/kube/json_util.hpp"

namespace kmesh::kube {

namespace detail {

namespace {

Status bad(std::string_view what) { return {Errc::kDataLoss, fmt::format("{}: wrong JSON type", what)}; }

// Optional string member: absent or null leaves `out` untouched.
Status get_string(const rapidjson::Value& obj, const char* name, std::string* out, std::string_view ctx) {
    auto it = obj.FindMember(name);
    if (it == obj.MemberEnd() || it->value.IsNull()) return {};
    if (!it->value.IsString()) return bad(fmt::format("{}.{}", ctx, name));
    out->assign(it->value.GetString(), it->value.GetStringLength());
    return {};
}

Status get_string_map(const rapidjson::Value& obj, const char* name, std::map<std::string, std::string>* out,
                      std::string_view ctx) {
    auto it = obj.FindMember(name);
    if (it == obj.MemberEnd() || it->value.IsNull()) return {};
    if (!it->value.IsObject()) return bad(fmt::format("{}.{}", ctx, name));
    for (const auto& m : it->value.GetObject()) {
        if (!m.value.IsString()) return bad(fmt::format("{}.{}[{}]", ctx, name, m.name.GetString()));
        out->emplace(std::string(m.name.GetString(), m.name.GetStringLength()),
                     std::string(m.value.GetString(), m.value.GetStringLength()));
    }
    return {};
}

// Optional object member; nullptr when absent or null.
Result<const rapidjson::Value*> get_object(const rapidjson::Value& obj, const char* name,
                                           std::string_view ctx) {
    auto it = obj.FindMember(name);
    if (it == obj.MemberEnd() || it->value.IsNull()) return static_cast<const rapidjson::Value*>(nullptr);
    if (!it->value.IsObject()) return bad(fmt::format("{}.{}", ctx, name));
    return &it->value;
}

// names of the objects of an optional array member ("containers": [{"name": ...}])
Status get_names(const rapidjson::Value& obj, const char* name, const char* field,
                 std::vector<std::string>* out, std::string_view ctx) {
    auto it = obj.FindMember(name);
    if (it == obj.MemberEnd() || it->value.IsNull()) return {};
    if (!it->value.IsArray()) return bad(fmt::format("{}.{}", ctx, name));
    for (const auto& item : it->value.GetArray()) {
        if (!item.IsObject()) return bad(fmt::format("{}.{}[]", ctx, name));
        std::string v;
        if (auto s = get_string(item, field, &v, fmt::format("{}.{}[]", ctx, name)); !s) return s;
        out->push_back(std::move(v));
    }
    return {};
}

Status decode_meta(const rapidjson::Value& obj, ObjectMeta* meta) {
    auto m = get_object(obj, "metadata", "object");
    if (!m) return m.status();
    if (!*m) return {Errc::kDataLoss, "object has no metadata"};
    const rapidjson::Value& md = **m;
    Status s;
    if (!(s = get_string(md, "name", &meta->name, "metadata"))) return s;
    if (!(s = get_string(md, "namespace", &meta->namespace_, "metadata"))) return s;
    if (!(s = get_string(md, "uid", &meta->uid, "metadata"))) return s;
    if (!(s = get_string(md, "resourceVersion", &meta->resource_version, "metadata"))) return s;
    if (!(s = get_string_map(md, "labels", &meta->labels, "metadata"))) return s;
    if (!(s = get_string_map(md, "annotations", &meta->annotations, "metadata"))) return s;
    std::string deletion;
    if (!(s = get_string(md, "deletionTimestamp", &deletion, "metadata"))) return s;
    meta->deleting = !deletion.empty();
    return {};
}

}  // namespace

Status decode_pod(const rapidjson::Value& v, Pod* out) {
    if (!v.IsObject()) return {Errc::kDataLoss, "pod is not a JSON object"};
    Pod pod;
    if (auto s = decode_meta(v, &pod.meta); !s) return s;
    auto spec = get_object(v, "spec", "pod");
    if (!spec) return spec.status();
    if (*spec) {
        const rapidjson::Value& sp = **spec;
        Status s;
        if (!(s = get_string(sp, "nodeName", &pod.node_name, "spec"))) return s;
        if (auto it = sp.FindMember("hostNetwork"); it != sp.MemberEnd() && !it->value.IsNull()) {
            if (!it->value.IsBool()) return bad("spec.hostNetwork");
            pod.host_network = it->value.GetBool();
        }
        if (!(s = get_names(sp, "containers", "name", &pod.containers, "spec"))) return s;
        if (!(s = get_names(sp, "initContainers", "name", &pod.init_containers, "spec"))) return s;
    }
    auto status = get_object(v, "status", "pod");
    if (!status) return status.status();
    if (*status) {
        const rapidjson::Value& st = **status;
        Status s;
        if (!(s = get_string(st, "phase", &pod.phase, "status"))) return s;
        if (!(s = get_names(st, "podIPs", "ip", &pod.pod_ips, "status"))) return s;
        if (pod.pod_ips.empty()) {
            std::string ip;
            if (!(s = get_string(st, "podIP", &ip, "status"))) return s;
            if (!ip.empty()) pod.pod_ips.push_back(std::move(ip));
        }
    }
    *out = std::move(pod);
    return {};
}

Status decode_namespace(const rapidjson::Value& v, Namespace* out) {
    if (!v.IsObject()) return {Errc::kDataLoss, "namespace is not a JSON object"};
    Namespace ns;
    if (auto s = decode_meta(v, &ns.meta); !s) return s;
    *out = std::move(ns);
    return {};
}

ApiStatus decode_status(const rapidjson::Value& v) {
    ApiStatus st;
    if (!v.IsObject()) return st;
    auto kind = v.FindMember("kind");
    if (kind == v.MemberEnd() || !kind->value.IsString() ||
        std::string_view(kind->value.GetString()) != "Status")
        return st;
    if (auto c = v.FindMember("code"); c != v.MemberEnd() && c->value.IsInt()) st.code = c->value.GetInt();
    if (auto m = v.FindMember("message"); m != v.MemberEnd() && m->value.IsString())
        st.message = m->value.GetString();
    if (auto r = v.FindMember("reason"); r != v.MemberEnd() && r->value.IsString())
        st.reason = r->value.GetString();
    return st;
}

ApiStatus decode_status_body(std::string_view body) {
    rapidjson::Document doc;
    doc.Parse(body.data(), body.size());
    if (doc.HasParseError()) return {};
    return decode_status(doc);
}

Errc errc_for_http(long http_code) {
    switch (http_code) {
        case 401:
            return Errc::kUnauthenticated;
        case 403:
            return Errc::kPermissionDenied;
        case 404:
            return Errc::kNotFound;
        case 409:
            return Errc::kConflict;
        case 410:
            return Errc::kGone;
        default:
            break;
    }
    if (http_code >= 400 && http_code < 500) return Errc::kInvalidArgument;
    return Errc::kUnavailable;  // 5xx and anything unexpected (1xx, 3xx)
}

std::string object_key(const ObjectMeta& meta) {
    return meta.namespace_.empty() ? meta.name : meta.namespace_ + "/" + meta.name;
}

}  // namespace detail

namespace {

template <class T>
Result<T> parse_text(std::string_view json, const char* what) {
    rapidjson::Document doc;
    doc.Parse(json.data(), json.size());
    if (doc.HasParseError())
        return Result<T>(Errc::kDataLoss, fmt::format("{} JSON at offset {}: {}", what, doc.GetErrorOffset(),
                                                      rapidjson::GetParseError_En(doc.GetParseError())));
    T out;
    if (auto s = detail::decode(doc, &out); !s)
        return Status(s.code(), fmt::format("{}: {}", what, s.message()));
    return out;
}

}  // namespace

Result<Pod> parse_pod(std::string_view json) { return parse_text<Pod>(json, "pod"); }
Result<Namespace> parse_namespace(std::string_view json) { return parse_text<Namespace>(json, "namespace"); }

}  // namespace kmesh::kube
