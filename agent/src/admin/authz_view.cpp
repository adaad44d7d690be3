#include "agent/src/admin/authz_view.hpp"

#include <fmt/format.h>

#include <optional>

namespace kmesh::admin {

namespace {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

void str(Writer& w, const char* key, const std::string& v) {
    w.Key(key);
    w.String(v.c_str(), static_cast<rapidjson::SizeType>(v.size()));
}

std::string string_match_str(const StringMatch& m) {
    switch (m.kind) {
        case StringMatch::Kind::kExact:
            return fmt::format("\"{}\"", m.value);
        case StringMatch::Kind::kPrefix:
            return fmt::format("\"{}*\"", m.value);
        case StringMatch::Kind::kSuffix:
            return fmt::format("\"*{}\"", m.value);
        case StringMatch::Kind::kPresence:
            return "present";
    }
    return "?";
}

std::string cidr_str(const Cidr& c) { return fmt::format("{}/{}", c.addr.str(), c.prefix_len); }

// One match group for people: "namespace in ["default"] and port in [80]"; the not_ forms read
// "not in".
std::string group_str(const AuthzMatch& m) {
    std::vector<std::string> parts;
    auto add = [&](const char* what, bool negated, const auto& list, auto fn) {
        if (list.empty()) return;
        std::string items;
        for (const auto& x : list) items += (items.empty() ? "" : ", ") + fn(x);
        parts.push_back(fmt::format("{} {} [{}]", what, negated ? "not in" : "in", items));
    };
    auto sa = [](const ServiceAccountMatch& x) { return x.namespace_ + "/" + x.service_account; };
    auto port = [](uint16_t p) { return std::to_string(p); };
    add("namespace", false, m.namespaces, string_match_str);
    add("namespace", true, m.not_namespaces, string_match_str);
    add("principal", false, m.principals, string_match_str);
    add("principal", true, m.not_principals, string_match_str);
    add("service account", false, m.service_accounts, sa);
    add("service account", true, m.not_service_accounts, sa);
    add("source ip", false, m.source_ips, cidr_str);
    add("source ip", true, m.not_source_ips, cidr_str);
    add("destination ip", false, m.destination_ips, cidr_str);
    add("destination ip", true, m.not_destination_ips, cidr_str);
    add("port", false, m.destination_ports, port);
    add("port", true, m.not_destination_ports, port);
    if (parts.empty()) return "(empty group: skipped)";
    std::string out;
    for (const auto& p : parts) out += (out.empty() ? "" : " and ") + p;
    return out;
}

// A rule: its clauses AND-ed, each clause's groups OR-ed.
}  // namespace

std::string rule_str(const AuthzRule& r) {
    if (r.clauses.empty()) return "any connection";
    std::string out;
    for (const auto& c : r.clauses) {
        std::string clause;
        if (c.matches.empty()) clause = "any connection";
        for (const auto& m : c.matches) clause += (clause.empty() ? "" : " OR ") + group_str(m);
        out += (out.empty() ? "" : " AND ") + ("(" + clause + ")");
    }
    return out;
}

namespace {

const char* scope_name(AuthzScope s) {
    switch (s) {
        case AuthzScope::kNamespace:
            return "NAMESPACE";
        case AuthzScope::kWorkloadSelector:
            return "WORKLOAD_SELECTOR";
        default:
            return "GLOBAL";
    }
}

void policy_json(Writer& w, const AuthzPolicy& p, const policy::PolicyHits& hits,
                 std::optional<bool> in_kernel = std::nullopt) {
    w.StartObject();
    str(w, "name", p.name);
    str(w, "namespace", p.namespace_);
    str(w, "scope", scope_name(p.scope));
    str(w, "action", p.action == AuthzAction::kDeny ? "DENY" : "ALLOW");
    w.Key("dry_run");
    w.Bool(p.dry_run);
    w.Key("rules");  // one line per rule (rules are OR-ed); none: the policy matches nothing
    w.StartArray();
    for (const auto& r : p.rules) {
        std::string t = rule_str(r);
        w.String(t.c_str(), static_cast<rapidjson::SizeType>(t.size()));
    }
    w.EndArray();
    w.Key("hits");
    w.StartObject();
    w.Key("matched");
    w.Uint64(hits.matched);
    w.Key("dry_run_matched");
    w.Uint64(hits.dry_run_matched);
    w.Key("closed");
    w.Uint64(hits.closed);
    w.EndObject();
    if (in_kernel) {
        w.Key("in_kernel");
        w.Bool(*in_kernel);
    }
    w.EndObject();
}

void totals_json(Writer& w, const policy::AuthzReport& report) {
    w.Key("authz_totals");
    w.StartObject();
    for (auto [k, v] : {std::pair{"allowed", report.totals.allowed},
                        {"denied_by_policy", report.totals.denied_by_policy},
                        {"denied_no_allow", report.totals.denied_no_allow},
                        {"closed_existing", report.totals.closed_existing},
                        {"cache_hits", report.totals.cache_hits}}) {
        w.Key(k);
        w.Uint64(v);
    }
    w.EndObject();
}

}  // namespace

void write_authz_policies(Writer& w, const Model& m, const policy::AuthzReport& report) {
    w.Key("policies");
    w.StartArray();
    for (const auto& [key, p] : m.policies) {
        auto h = report.policies.find(key);
        policy_json(w, p, h == report.policies.end() ? policy::PolicyHits{} : h->second);
    }
    w.EndArray();
    totals_json(w, report);
}

std::string authz_status_json(const Model& m, const policy::AuthzReport& report,
                              const AuthzPublishState& st) {
    rapidjson::StringBuffer buf;
    Writer w(buf);
    w.StartObject();
    w.Key("publish");
    w.StartObject();
    w.Key("published");
    w.Bool(st.published);
    w.Key("waiting_for_policies");
    w.Bool(st.waiting_for_policies);
    str(w, "last_error", st.last_error);
    for (auto [k, v] : {std::pair{"publishes", st.publishes},
                        {"failures", st.failures},
                        {"map_full", st.map_full},
                        {"identity_updates", st.identity_updates}}) {
        w.Key(k);
        w.Uint64(v);
    }
    w.Key("active_generation");
    w.Uint64(st.state & 1);
    w.Key("epoch");
    w.Uint64(st.state >> 1);
    w.Key("kernel_policies");
    w.Uint64(st.kernel_policies.size());
    w.Key("can_close_connections");
    w.Bool(st.can_close_connections);
    w.EndObject();
    w.Key("policies");
    w.StartArray();
    for (const auto& [key, p] : m.policies) {
        auto h = report.policies.find(key);
        policy_json(w, p, h == report.policies.end() ? policy::PolicyHits{} : h->second,
                    st.kernel_policies.count(key) > 0);
    }
    w.EndArray();
    totals_json(w, report);
    w.EndObject();
    return buf.GetString();
}

}  // namespace kmesh::admin
