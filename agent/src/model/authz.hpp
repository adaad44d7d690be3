// Istio ambient L4 authorization as the config sources describe it, shaped like
// istio.security.Authorization (ztunnel proto/authorization.proto at 62d82653). Both the xDS source
// and the standalone file source produce this; agent/src/policy compiles it into the kernel's maps.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "agent/src/model/ip_addr.hpp"

namespace kmesh {

enum class AuthzScope { kGlobal = 0, kNamespace = 1, kWorkloadSelector = 2 };
enum class AuthzAction { kAllow = 0, kDeny = 1 };

// istio.security.StringMatch: exactly one of exact / prefix / suffix / presence.
struct StringMatch {
    enum class Kind { kExact, kPrefix, kSuffix, kPresence };
    Kind kind = Kind::kExact;
    std::string value;  // unused for kPresence
    auto operator<=>(const StringMatch&) const = default;
};

// istio.security.Address: an IP and a prefix length (a CIDR; length = full width for one host).
struct Cidr {
    IpAddr addr;
    uint8_t prefix_len = 0;
    auto operator<=>(const Cidr&) const = default;
};

// istio.security.ServiceAccountMatch (ztunnel src/rbac.rs): both compared exactly with the source
// identity's namespace and service account; a source without identity never matches.
struct ServiceAccountMatch {
    std::string namespace_;
    std::string service_account;
    auto operator<=>(const ServiceAccountMatch&) const = default;
};

// One match group: every field type present must match (AND), any entry within a type matches
// (OR), a not_ list fails the group when any entry matches, an absent (empty) list imposes nothing.
struct AuthzMatch {
    std::vector<StringMatch> namespaces, not_namespaces;
    std::vector<StringMatch> principals, not_principals;  // compared without "spiffe://"
    std::vector<ServiceAccountMatch> service_accounts, not_service_accounts;
    std::vector<Cidr> source_ips, not_source_ips;
    std::vector<Cidr> destination_ips, not_destination_ips;
    std::vector<uint16_t> destination_ports, not_destination_ports;
    bool operator==(const AuthzMatch&) const = default;
    // ztunnel skips an empty group inside a clause (it matches nothing there).
    bool empty() const {
        return namespaces.empty() && not_namespaces.empty() && principals.empty() && not_principals.empty() &&
               service_accounts.empty() && not_service_accounts.empty() && source_ips.empty() &&
               not_source_ips.empty() && destination_ips.empty() && not_destination_ips.empty() &&
               destination_ports.empty() && not_destination_ports.empty();
    }
};

struct AuthzClause {
    std::vector<AuthzMatch> matches;  // OR-ed; a clause with no groups at all matches (ztunnel)
    bool operator==(const AuthzClause&) const = default;
};

struct AuthzRule {
    std::vector<AuthzClause> clauses;  // AND-ed; a rule with no clauses matches (ztunnel)
    bool operator==(const AuthzRule&) const = default;
};

struct AuthzPolicy {
    std::string name;
    std::string namespace_;
    AuthzScope scope = AuthzScope::kGlobal;
    AuthzAction action = AuthzAction::kAllow;
    std::vector<AuthzRule> rules;  // OR-ed; no rules: never matches
    bool dry_run = false;

    // Resource name in the workload API: "namespace/name".
    std::string key() const { return namespace_ + "/" + name; }
    bool operator==(const AuthzPolicy&) const = default;
};

// Who a connection's source is, as far as the workload API tells (from the source IP's workload).
// A source whose IP is no known workload has no identity: every field empty.
struct SourceIdentity {
    std::string trust_domain;  // "cluster.local" when the workload does not say
    std::string namespace_;
    std::string service_account;
    bool known() const { return !namespace_.empty() || !service_account.empty(); }
    // "cluster.local/ns/<ns>/sa/<sa>" (principals are matched without "spiffe://"), "" when unknown.
    std::string principal() const {
        return known() ? trust_domain + "/ns/" + namespace_ + "/sa/" + service_account : std::string();
    }
    auto operator<=>(const SourceIdentity&) const = default;
};

}  // namespace kmesh
