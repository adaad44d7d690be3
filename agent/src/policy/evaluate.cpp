#include "agent/src/policy/evaluate.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <optional>

#include "agent/src/policy/match.hpp"

namespace kmesh::policy {

bool cidr_contains(const Cidr& cidr, const IpAddr& ip) {
    if (cidr.addr.is_v4() != ip.is_v4()) return false;
    // IPv4 lives in the last 4 bytes of the 16; the prefix counts from the family's first bit.
    const size_t first = ip.is_v4() ? 12 : 0;
    const unsigned width = ip.is_v4() ? 32 : 128;
    unsigned bits = std::min<unsigned>(cidr.prefix_len, width);
    for (size_t i = first; bits > 0; i++) {
        unsigned take = std::min(bits, 8u);
        uint8_t mask = static_cast<uint8_t>(0xff00u >> take);
        if ((cidr.addr.bytes[i] & mask) != (ip.bytes[i] & mask)) return false;
        bits -= take;
    }
    return true;
}

namespace {

template <typename T, typename Pred>
bool field_ok(const std::vector<T>& positive, const std::vector<T>& negative, Pred pred) {
    if (!positive.empty() && std::none_of(positive.begin(), positive.end(), pred)) return false;
    if (!negative.empty() && std::any_of(negative.begin(), negative.end(), pred)) return false;
    return true;
}

bool group_matches(const AuthzMatch& m, const Connection& c, const SourceIdentity& id) {
    auto src_in = [&](const Cidr& x) { return cidr_contains(x, c.src); };
    auto dst_in = [&](const Cidr& x) { return cidr_contains(x, c.dst); };
    auto port_is = [&](uint16_t p) { return p == c.dst_port; };
    return field_ok(m.source_ips, m.not_source_ips, src_in) &&
           field_ok(m.destination_ips, m.not_destination_ips, dst_in) &&
           field_ok(m.destination_ports, m.not_destination_ports, port_is) && identity_fields_match(m, id);
}

}  // namespace

bool policy_matches(const AuthzPolicy& p, const Connection& c, const SourceIdentity& id) {
    for (const auto& rule : p.rules) {
        bool rule_ok = std::all_of(rule.clauses.begin(), rule.clauses.end(), [&](const AuthzClause& cl) {
            if (cl.matches.empty()) return true;
            return std::any_of(cl.matches.begin(), cl.matches.end(),
                               [&](const AuthzMatch& m) { return !m.empty() && group_matches(m, c, id); });
        });
        if (rule_ok) return true;
    }
    return false;
}

const Workload* workload_at(const Model& model, const IpAddr& ip) {
    for (const auto& [uid, w] : model.workloads)
        if (std::find(w.addresses.begin(), w.addresses.end(), ip) != w.addresses.end()) return &w;
    return nullptr;
}

// The identity an address proves: that of the workloads owning it when they all agree, none when
// workloads of different identities share it or one of them runs on the host network (the node's
// address: probes and host processes come from it too).
SourceIdentity source_identity(const Model& model, const IpAddr& src) {
    std::optional<SourceIdentity> found;
    for (const auto& [uid, w] : model.workloads) {
        if (std::find(w.addresses.begin(), w.addresses.end(), src) == w.addresses.end()) continue;
        SourceIdentity id = w.network_mode == NetworkMode::kHostNetwork ? SourceIdentity{} : identity_of(w);
        if (!id.known() || (found && *found != id)) return {};
        found = id;
    }
    return found.value_or(SourceIdentity{});
}

Decision decide(const Model& model, const Workload& dst, const Connection& c) {
    const SourceIdentity id = source_identity(model, c.src);
    Decision d;
    std::string deny, allow;  // the first matching enforced policy of each action, by key
    bool any_allow = false;
    // applicable_policies is ordered by key.
    for (const AuthzPolicy* p : applicable_policies(model, dst)) {
        bool hit = policy_matches(*p, c, id);
        if (p->dry_run) {
            if (hit) d.dry_run.push_back(p->key());
            continue;
        }
        if (p->action == AuthzAction::kDeny) {
            if (hit && deny.empty()) deny = p->key();
        } else {
            any_allow = true;
            if (hit && allow.empty()) allow = p->key();
        }
    }
    std::string who = id.known() ? id.principal() : "no identity";
    if (!deny.empty()) {
        d.allow = false;
        d.policy = deny;
        d.reason = fmt::format("denied by DENY policy {} (source {})", deny, who);
    } else if (!any_allow) {
        d.allow = true;
        d.reason = fmt::format("allowed: no ALLOW policy applies to {} (source {})", dst.uid, who);
    } else if (!allow.empty()) {
        d.allow = true;
        d.policy = allow;
        d.reason = fmt::format("allowed by ALLOW policy {} (source {})", allow, who);
    } else {
        d.allow = false;
        d.reason =
            fmt::format("denied: ALLOW policies apply to {} and none matches (source {})", dst.uid, who);
    }
    return d;
}

}  // namespace kmesh::policy
