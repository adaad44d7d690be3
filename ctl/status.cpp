// kmeshctl verbs that show or switch the agent's state through its admin server: version, authz
// check/status, waypoint status, log, monitoring.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <httplib.h>
#include <rapidjson/document.h>

#include "agent/src/dataplane/bpf_loader.hpp"
#include "common/abi.hpp"
#include "ctl/verbs.hpp"

namespace kmesh::ctl {

namespace {

std::string member_str(const rapidjson::Value& v, const char* key) {
    if (!v.IsObject() || !v.HasMember(key) || !v[key].IsString()) return {};
    return v[key].GetString();
}
uint64_t member_uint(const rapidjson::Value& v, const char* key) {
    return v.IsObject() && v.HasMember(key) && v[key].IsUint64() ? v[key].GetUint64() : 0;
}
bool member_bool(const rapidjson::Value& v, const char* key) {
    return v.IsObject() && v.HasMember(key) && v[key].IsBool() && v[key].GetBool();
}
const char* yes_no(bool b) { return b ? "yes" : "no"; }

// GET path as a parsed JSON object, or nullopt after printing why to stderr.
std::optional<rapidjson::Document> fetch(const Admin& admin, const std::string& path,
                                         std::string* raw = nullptr) {
    std::string error;
    auto body = admin.get_json(path, &error);
    if (!body) {
        fmt::print(stderr, "kmeshctl: {}\n", error);
        return std::nullopt;
    }
    rapidjson::Document d;
    d.Parse(body->c_str());
    if (raw) *raw = *body;
    return d;
}

void print_json(const std::string& body) { fmt::print("{}", json_pretty(body).value_or(body + "\n")); }

std::string client_json() {
    const ProgramBuild& b = program_build();
    return fmt::format(
        "{{\"version\":\"{}\",\"programs\":{{\"sha256\":\"{}\",\"object_bytes\":{},\"test_variant\":{}}},"
        "\"maps\":{{\"abi\":{}}}}}",
        KMESH_VERSION, b.sha256, b.object_bytes, b.test_variant ? "true" : "false", KMESH_ABI_VERSION);
}

}  // namespace

int version(const Admin& admin, bool ask_agent_explicitly, Output out) {
    std::string error;
    auto body = admin.get_json("/version", &error);
    rapidjson::Document d;
    if (body) d.Parse(body->c_str());
    bool usable = body && d.IsObject() && d.HasMember("programs") && d["programs"].IsObject() &&
                  d.HasMember("maps") && d["maps"].IsObject();
    if (body && !usable) error = fmt::format("unexpected answer from {}/version", admin.address);
    if (out == Output::kJson) {
        std::string doc = fmt::format("{{\"client\":{}", client_json());
        doc += usable ? fmt::format(",\"agent\":{}", *body)
                      : fmt::format(",\"agent_error\":{}", json_quote(error));
        print_json(doc + "}");
    } else {
        std::string client = version_text("kmeshctl");
        for (size_t at = client.find('\n'); at != std::string::npos; at = client.find('\n', at + 3))
            client.replace(at, 1, "\n  ");
        fmt::print("client: {}\n", client);
        if (usable) {
            const auto& p = d["programs"];
            const auto& m = d["maps"];
            const auto& links = d.HasMember("pod_links") ? d["pod_links"] : d["maps"];
            fmt::print("agent ({}): kmesh-daemon {}\n", admin.address, member_str(d, "version"));
            fmt::print("  programs: sha256:{} ({} bytes){}{}{}\n", member_str(p, "sha256"),
                       member_uint(p, "object_bytes"),
                       member_bool(p, "test_variant") ? ", test variant build" : "",
                       member_bool(d, "published") ? "" : ", not published to the pods yet",
                       member_str(p, "sha256") == program_build().sha256 ? ", same as this client"
                                                                         : ", differs from this client's");
            fmt::print("  map layout: v{} in use (compiled for v{}), {}\n", member_uint(m, "version"),
                       member_uint(m, "abi"), member_str(m, "dir"));
            fmt::print("  pod links on these programs: {} of {}\n", member_uint(links, "on_loaded_programs"),
                       member_uint(links, "total"));
            if (p.HasMember("loaded") && p["loaded"].IsArray())
                for (const auto& prog : p["loaded"].GetArray())
                    fmt::print("  {:<22} id {:<6} tag {}\n", member_str(prog, "name"),
                               member_uint(prog, "id"), member_str(prog, "tag"));
        } else {
            fmt::print("agent: not shown: {}\n", error);
        }
    }
    if (usable) return kExitOk;
    // Asked for the agent (--admin) and it did not answer: a failure. Otherwise the client's part
    // is the answer.
    if (ask_agent_explicitly) {
        if (out == Output::kJson) fmt::print(stderr, "kmeshctl: {}\n", error);
        return kExitFailed;
    }
    return kExitOk;
}

int authz_check(const Admin& admin, const std::string& src, const std::string& dst, unsigned port,
                Output out) {
    std::string error;
    auto r = admin.get(
        fmt::format("/debug/authz_check?src={}&dst={}&port={}", httplib::detail::encode_query_param(src),
                    httplib::detail::encode_query_param(dst), port),
        &error);
    if (!r) {
        fmt::print(stderr, "kmeshctl: {}\n", error);
        return kExitFailed;
    }
    rapidjson::Document d;
    d.Parse(r->body.c_str());
    if (d.HasParseError() || !d.IsObject()) {
        fmt::print(stderr, "kmeshctl: the admin server answered {}: {}\n", r->status, r->body);
        return kExitFailed;
    }
    if (r->status == 400) {
        fmt::print(stderr, "kmeshctl: {}\n", member_str(d, "error"));
        return kExitUsage;
    }
    if (r->status != 200) {
        fmt::print(stderr, "kmeshctl: {}\n", error_of(*r));
        return kExitFailed;
    }
    std::string verdict = member_str(d, "verdict");
    if (out == Output::kJson) {
        print_json(r->body);
    } else {
        fmt::print("{}\n", verdict);
        fmt::print("  {}\n", member_str(d, "reason"));
        std::string id = member_str(d, "source_identity");
        fmt::print(
            "  source {} ({}) -> {} port {}{}\n", member_str(d, "src"), id.empty() ? "no identity" : id,
            member_str(d, "dst"), port,
            d.HasMember("destination_workload") ? " (" + member_str(d, "destination_workload") + ")" : "");
        if (d.HasMember("dry_run"))
            for (const auto& k : d["dry_run"].GetArray())
                fmt::print("  dry-run policy {} matches\n", k.GetString());
    }
    return verdict == "allow" ? kExitOk : kExitDenied;
}

int authz_status(const Admin& admin, Output out) {
    std::string raw;
    auto d = fetch(admin, "/debug/authz", &raw);
    if (!d) return kExitFailed;
    if (out == Output::kJson) {
        print_json(raw);
        return kExitOk;
    }
    const auto& p = (*d)["publish"];
    std::string state = member_bool(p, "published")
                            ? "published"
                            : (member_bool(p, "waiting_for_policies")
                                   ? "waiting for istiod's policies (the kernel keeps the last ones)"
                                   : "NOT published (the kernel keeps enforcing the previous policies)");
    fmt::print(
        "publish: {}; {} publishes, {} failed ({} map full); active generation {}, epoch {}; {} policies in "
        "the kernel\n",
        state, member_uint(p, "publishes"), member_uint(p, "failures"), member_uint(p, "map_full"),
        member_uint(p, "active_generation"), member_uint(p, "epoch"), member_uint(p, "kernel_policies"));
    if (!member_str(p, "last_error").empty()) fmt::print("last error: {}\n", member_str(p, "last_error"));
    fmt::print("close-on-change: {}\n", member_bool(p, "can_close_connections")
                                            ? "on (existing connections a change denies are closed)"
                                            : "off (this kernel lacks bpf_sock_destroy)");
    Table t{{"policy", "scope", "action", "dry run", "in kernel", "matched", "dry-run matched", "closed",
             "rules"},
            {}};
    for (const auto& x : (*d)["policies"].GetArray()) {
        const auto& h = x["hits"];
        t.rows.push_back(
            {member_str(x, "namespace") + "/" + member_str(x, "name"), member_str(x, "scope"),
             member_str(x, "action"), yes_no(member_bool(x, "dry_run")), yes_no(member_bool(x, "in_kernel")),
             std::to_string(member_uint(h, "matched")), std::to_string(member_uint(h, "dry_run_matched")),
             std::to_string(member_uint(h, "closed")), std::to_string(x["rules"].GetArray().Size())});
    }
    fmt::print("policies: {}\n", t.rows.size());
    if (!t.rows.empty()) fmt::print("{}", render_table(t));
    const auto& tot = (*d)["authz_totals"];
    fmt::print("totals: allowed={} denied_by_policy={} denied_no_allow={} closed_existing={} cache_hits={}\n",
               member_uint(tot, "allowed"), member_uint(tot, "denied_by_policy"),
               member_uint(tot, "denied_no_allow"), member_uint(tot, "closed_existing"),
               member_uint(tot, "cache_hits"));
    return kExitOk;
}

int waypoint_status(const Admin& admin, Output out) {
    std::string raw;
    auto d = fetch(admin, "/debug/waypoints", &raw);
    if (!d) return kExitFailed;
    if (out == Output::kJson) {
        print_json(raw);
        return kExitOk;
    }
    Table t{{"waypoint", "addresses", "port", "in kernel", "vips", "workload addrs", "services", "workloads"},
            {}};
    for (const auto& w : (*d)["waypoints"].GetArray()) {
        std::vector<std::string> addrs, svcs, wls;
        for (const auto& a : w["addresses"].GetArray()) addrs.push_back(a.GetString());
        for (const auto& a : w["services"].GetArray()) svcs.push_back(a.GetString());
        for (const auto& a : w["workloads"].GetArray()) wls.push_back(a.GetString());
        const auto& kd = w["kernel_destinations"];
        t.rows.push_back({member_str(w, "name"),
                          addrs.empty() ? "-" : fmt::format("{}", fmt::join(addrs, ",")),
                          std::to_string(member_uint(w, "port")), yes_no(member_bool(w, "in_kernel")),
                          std::to_string(member_uint(kd, "service_vips")),
                          std::to_string(member_uint(kd, "workload_addresses")),
                          svcs.empty() ? "-" : fmt::format("{}", fmt::join(svcs, ",")),
                          wls.empty() ? "-" : fmt::format("{}", fmt::join(wls, ","))});
    }
    fmt::print("waypoints: {}\n", t.rows.size());
    if (!t.rows.empty()) fmt::print("{}", render_table(t));
    const auto& lg = (*d)["loop_guard"];
    fmt::print("loop guard (connects not redirected): self={} from_waypoint={}\n", member_uint(lg, "self"),
               member_uint(lg, "from_waypoint"));
    std::string counters;
    for (auto it = (*d)["counters"].MemberBegin(); it != (*d)["counters"].MemberEnd(); ++it)
        counters +=
            fmt::format("{}{}={}", counters.empty() ? "" : " ", it->name.GetString(), it->value.GetUint64());
    fmt::print("counters{}: {}\n", member_bool(*d, "counters_read") ? "" : " (km_wp_stats not readable)",
               counters);
    return kExitOk;
}

int log_level(const Admin& admin, const std::string& set, Output out) {
    std::string error;
    auto r = set.empty()
                 ? admin.get("/debug/loglevel", &error)
                 : admin.post("/debug/loglevel", fmt::format("{{\"level\":{}}}", json_quote(set)), &error);
    if (!r) {
        fmt::print(stderr, "kmeshctl: {}\n", error);
        return kExitFailed;
    }
    if (r->status == 400) {  // the level is not one: a usage error
        fmt::print(stderr, "kmeshctl: {}\n", error_of(*r));
        return kExitUsage;
    }
    rapidjson::Document d;
    d.Parse(r->body.c_str());
    if (r->status != 200 || d.HasParseError() || !d.IsObject()) {
        fmt::print(stderr, "kmeshctl: the agent at {} answered {}: {}\n", admin.address, r->status,
                   error_of(*r));
        return kExitFailed;
    }
    if (out == Output::kJson)
        print_json(r->body);
    else if (d.HasMember("previous"))
        fmt::print("log level: {} (was {})\n", member_str(d, "level"), member_str(d, "previous"));
    else
        fmt::print("log level: {}\n", member_str(d, "level"));
    return kExitOk;
}

int monitoring(const Admin& admin, int enable, const std::string& access_log, Output out) {
    std::string error;
    std::optional<Reply> r;
    if (enable < 0 && access_log.empty()) {
        r = admin.get("/debug/monitoring", &error);
    } else {
        std::string body = "{";
        if (enable >= 0) body += fmt::format("\"enabled\":{}", enable ? "true" : "false");
        if (!access_log.empty())
            body += fmt::format("{}\"access_log\":{}", enable >= 0 ? "," : "",
                                access_log == "on" ? "true" : "false");
        r = admin.post("/debug/monitoring", body + "}", &error);
    }
    if (!r) {
        fmt::print(stderr, "kmeshctl: {}\n", error);
        return kExitFailed;
    }
    if (r->status == 404) {
        fmt::print(stderr,
                   "kmeshctl: the agent at {} has no /debug/monitoring (a kmesh-daemon without telemetry?)\n",
                   admin.address);
        return kExitFailed;
    }
    rapidjson::Document d;
    d.Parse(r->body.c_str());
    if (r->status == 400) {
        fmt::print(stderr, "kmeshctl: {}\n", error_of(*r));
        return kExitUsage;
    }
    if (r->status != 200 || d.HasParseError() || !d.IsObject()) {
        fmt::print(stderr, "kmeshctl: the agent at {} answered {}: {}\n", admin.address, r->status,
                   error_of(*r));
        return kExitFailed;
    }
    if (out == Output::kJson)
        print_json(r->body);
    else
        fmt::print("monitoring: {}, access log: {}\n", member_bool(d, "enabled") ? "on" : "off",
                   member_bool(d, "access_log") ? "on" : "off");
    return kExitOk;
}

}  // namespace kmesh::ctl
