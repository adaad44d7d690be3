// Loader for the hand-written Istio L4 authorization decision tables, test/authz/decision_table.json
// (h9-pmodel's, format in test/authz/README.md) and test/authz/decision_table_kernel.json (same
// idea, proto-JSON spelling, node placement), shared by the kernel replay (test/authz/authz_kernel_test.cpp),
// the userspace reference evaluator's unit test and the end-to-end tests. Header-only (RapidJSON), throws
// std::runtime_error on a bad file.
#pragma once

#include <rapidjson/document.h>

#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "agent/src/model/model.hpp"

namespace kmesh::test::authz {

struct Conn {
    IpAddr src, dst;
    uint16_t port = 0;
    bool allow = false;
    std::optional<std::string> by;                    // the policy that decides it, when given
    std::optional<std::vector<std::string>> dry_run;  // dry-run policies that match it, when given
    std::string text;                                 // "src -> dst:port", for messages
    bool v6_socket = false;  // written in IPv6 notation (IPv4-mapped included): an AF_INET6 socket
};

struct Case {
    std::string name;
    Model model;  // the table's workloads plus this case's policies
    std::vector<Conn> conns;
};

struct Table {
    std::string node;
    std::vector<Case> cases;
};

namespace detail {

inline std::runtime_error bad(const std::string& what) {
    return std::runtime_error("decision table: " + what);
}

inline std::string str(const rapidjson::Value& v, const char* key, const std::string& dflt = "") {
    auto it = v.FindMember(key);
    if (it == v.MemberEnd() || it->value.IsNull()) return dflt;
    if (!it->value.IsString()) throw bad(std::string(key) + " is not a string");
    return it->value.GetString();
}

inline IpAddr ip(const std::string& text) {
    auto a = IpAddr::parse(text);
    if (!a) throw bad("bad address " + text);
    return *a;
}

inline Cidr cidr(const std::string& text) {
    auto slash = text.find('/');
    IpAddr a = ip(text.substr(0, slash));
    unsigned width = a.is_v4() ? 32 : 128;
    unsigned len =
        slash == std::string::npos ? width : static_cast<unsigned>(std::stoul(text.substr(slash + 1)));
    if (len > width) throw bad("bad prefix " + text);
    return {a, static_cast<uint8_t>(len)};
}

// Both spellings are accepted: proto JSON (camelCase) and the config file's (snake_case).
inline rapidjson::Value::ConstMemberIterator field(const rapidjson::Value& m, const char* camel) {
    auto it = m.FindMember(camel);
    if (it != m.MemberEnd()) return it;
    std::string snake;
    for (const char* c = camel; *c; c++) {
        if (*c >= 'A' && *c <= 'Z') {
            snake += '_';
            snake += static_cast<char>(*c - 'A' + 'a');
        } else {
            snake += *c;
        }
    }
    return m.FindMember(snake.c_str());
}

inline std::vector<StringMatch> strings(const rapidjson::Value& m, const char* key) {
    std::vector<StringMatch> out;
    auto it = field(m, key);
    if (it == m.MemberEnd()) return out;
    for (const auto& s : it->value.GetArray()) {
        StringMatch sm;
        if (s.HasMember("exact")) {
            sm = {StringMatch::Kind::kExact, s["exact"].GetString()};
        } else if (s.HasMember("prefix")) {
            sm = {StringMatch::Kind::kPrefix, s["prefix"].GetString()};
        } else if (s.HasMember("suffix")) {
            sm = {StringMatch::Kind::kSuffix, s["suffix"].GetString()};
        } else if (s.HasMember("presence")) {
            sm = {StringMatch::Kind::kPresence, ""};
        } else {
            throw bad(std::string("empty StringMatch in ") + key);
        }
        out.push_back(sm);
    }
    return out;
}

inline std::vector<ServiceAccountMatch> accounts(const rapidjson::Value& m, const char* key) {
    std::vector<ServiceAccountMatch> out;
    auto it = field(m, key);
    if (it == m.MemberEnd()) return out;
    for (const auto& s : it->value.GetArray())
        out.push_back({str(s, "namespace"), field(s, "serviceAccount") != s.MemberEnd()
                                                ? std::string(field(s, "serviceAccount")->value.GetString())
                                                : std::string()});
    return out;
}

inline std::vector<Cidr> cidrs(const rapidjson::Value& m, const char* key) {
    std::vector<Cidr> out;
    auto it = field(m, key);
    if (it == m.MemberEnd()) return out;
    for (const auto& s : it->value.GetArray()) out.push_back(cidr(s.GetString()));
    return out;
}

inline std::vector<uint16_t> ports(const rapidjson::Value& m, const char* key) {
    std::vector<uint16_t> out;
    auto it = field(m, key);
    if (it == m.MemberEnd()) return out;
    for (const auto& s : it->value.GetArray()) out.push_back(static_cast<uint16_t>(s.GetUint()));
    return out;
}

inline AuthzPolicy policy(const rapidjson::Value& v) {
    AuthzPolicy p;
    p.name = str(v, "name");
    p.namespace_ = str(v, "namespace");
    std::string scope = str(v, "scope", "GLOBAL"), action = str(v, "action", "ALLOW");
    p.scope = scope == "GLOBAL"              ? AuthzScope::kGlobal
              : scope == "NAMESPACE"         ? AuthzScope::kNamespace
              : scope == "WORKLOAD_SELECTOR" ? AuthzScope::kWorkloadSelector
                                             : throw bad("scope " + scope);
    p.action = action == "ALLOW"  ? AuthzAction::kAllow
               : action == "DENY" ? AuthzAction::kDeny
                                  : throw bad("action " + action);
    p.dry_run = field(v, "dryRun") != v.MemberEnd() && field(v, "dryRun")->value.GetBool();
    if (v.HasMember("rules"))
        for (const auto& r : v["rules"].GetArray()) {
            AuthzRule rule;
            if (r.HasMember("clauses"))
                for (const auto& c : r["clauses"].GetArray()) {
                    AuthzClause clause;
                    if (c.HasMember("matches"))
                        for (const auto& m : c["matches"].GetArray()) {
                            AuthzMatch g;
                            g.namespaces = strings(m, "namespaces");
                            g.not_namespaces = strings(m, "notNamespaces");
                            g.principals = strings(m, "principals");
                            g.not_principals = strings(m, "notPrincipals");
                            g.service_accounts = accounts(m, "serviceAccounts");
                            g.not_service_accounts = accounts(m, "notServiceAccounts");
                            g.source_ips = cidrs(m, "sourceIps");
                            g.not_source_ips = cidrs(m, "notSourceIps");
                            g.destination_ips = cidrs(m, "destinationIps");
                            g.not_destination_ips = cidrs(m, "notDestinationIps");
                            g.destination_ports = ports(m, "destinationPorts");
                            g.not_destination_ports = ports(m, "notDestinationPorts");
                            clause.matches.push_back(std::move(g));
                        }
                    rule.clauses.push_back(std::move(clause));
                }
            p.rules.push_back(std::move(rule));
        }
    return p;
}

}  // namespace detail

inline Table load_table(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw detail::bad("cannot open " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    rapidjson::Document doc;
    doc.Parse(ss.str().c_str());
    if (doc.HasParseError() || !doc.IsObject()) throw detail::bad(path + " is not a JSON object");
    Table t;
    t.node = detail::str(doc, "node");
    // h9-pmodel's format: an omitted dry_run means "no dry-run policy matches".
    const bool dry_run_default_empty = doc.HasMember("format");
    Model base;
    std::map<std::string, std::string> uid_of;  // workload name -> uid
    auto workload = [&](const rapidjson::Value& w) {
        Workload wl;
        wl.name = detail::str(w, "name");
        wl.namespace_ = detail::str(w, "namespace");
        wl.uid = detail::str(w, "uid", "Kubernetes//Pod/" + wl.namespace_ + "/" + wl.name);
        wl.service_account = detail::str(w, "service_account");
        wl.trust_domain = detail::str(w, "trust_domain");
        if (detail::str(w, "network_mode") == "HOST_NETWORK") wl.network_mode = NetworkMode::kHostNetwork;
        for (const auto& a : w["addresses"].GetArray()) wl.addresses.push_back(detail::ip(a.GetString()));
        if (w.HasMember("authorization_policies"))
            for (const auto& n : w["authorization_policies"].GetArray())
                wl.authorization_policies.push_back(n.GetString());
        wl.placement = Placement::intern({detail::str(w, "node"), "", "", {}});
        uid_of[wl.name] = wl.uid;
        return wl;
    };
    for (const auto& w : doc["workloads"].GetArray()) {
        Workload wl = workload(w);
        base.workloads[wl.uid] = wl;
    }
    for (const auto& c : doc["cases"].GetArray()) {
        Case k;
        k.name = detail::str(c, "name");
        k.model = base;
        // A case's own workloads replace those with the same uid and add the others.
        if (c.HasMember("workloads"))
            for (const auto& w : c["workloads"].GetArray()) {
                Workload wl = workload(w);
                k.model.workloads[wl.uid] = wl;
            }
        for (const auto& p : c["policies"].GetArray()) {
            AuthzPolicy pol = detail::policy(p);
            k.model.policies[pol.key()] = pol;
        }
        if (c.HasMember("workload_policies"))
            for (const auto& m : c["workload_policies"].GetObject()) {
                auto uid = uid_of.find(m.name.GetString());
                if (uid == uid_of.end())
                    throw detail::bad(std::string("unknown workload ") + m.name.GetString());
                for (const auto& n : m.value.GetArray())
                    k.model.workloads[uid->second].authorization_policies.push_back(n.GetString());
            }
        const char* list = c.HasMember("conns") ? "conns" : "checks";
        for (const auto& x : c[list].GetArray()) {
            Conn conn;
            conn.src = detail::ip(detail::str(x, "src"));
            conn.dst = detail::ip(detail::str(x, "dst"));
            conn.port = static_cast<uint16_t>(x["port"].GetUint());
            std::string expect = detail::str(x, x.HasMember("expect") ? "expect" : "verdict");
            if (expect != "allow" && expect != "deny") throw detail::bad("expect " + expect);
            conn.allow = expect == "allow";
            if (x.HasMember("by")) conn.by = detail::str(x, "by");
            if (x.HasMember("policy") && x["policy"].IsString()) conn.by = x["policy"].GetString();
            if (!x.HasMember("dry_run") && dry_run_default_empty) conn.dry_run.emplace();
            if (x.HasMember("dry_run")) {
                conn.dry_run.emplace();
                for (const auto& d : x["dry_run"].GetArray()) conn.dry_run->push_back(d.GetString());
            }
            conn.v6_socket = detail::str(x, "dst").find(':') != std::string::npos;
            conn.text =
                detail::str(x, "src") + " -> " + detail::str(x, "dst") + ":" + std::to_string(conn.port);
            k.conns.push_back(std::move(conn));
        }
        t.cases.push_back(std::move(k));
    }
    return t;
}

}  // namespace kmesh::test::authz
