#include "agent/src/policy/match.hpp"

#include <algorithm>

namespace kmesh::policy {

bool string_matches(const StringMatch& m, std::string_view value) {
    switch (m.kind) {
        case StringMatch::Kind::kExact:
            return value == m.value;
        case StringMatch::Kind::kPrefix:
            return value.starts_with(m.value);
        case StringMatch::Kind::kSuffix:
            return value.ends_with(m.value);
        case StringMatch::Kind::kPresence:
            return !value.empty();
    }
    return false;
}

namespace {

// ztunnel's matches_internal: a present positive list needs one hit, a present negative list none.
template <typename T, typename Pred>
bool field_matches(const std::vector<T>& positive, const std::vector<T>& negative, Pred pred) {
    if (!positive.empty() && std::none_of(positive.begin(), positive.end(), pred)) return false;
    if (!negative.empty() && std::any_of(negative.begin(), negative.end(), pred)) return false;
    return true;
}

}  // namespace

bool identity_fields_match(const AuthzMatch& m, const SourceIdentity& id) {
    // Principals are compared without "spiffe://"; a source without identity has none, so no
    // principal match (not even a prefix "" or presence) can accept it.
    const std::string principal = id.principal();
    const bool known = id.known();
    auto principal_ok = [&](const StringMatch& s) { return known && string_matches(s, principal); };
    auto ns_ok = [&](const StringMatch& s) { return string_matches(s, id.namespace_); };
    auto sa_ok = [&](const ServiceAccountMatch& s) {
        return known && s.namespace_ == id.namespace_ && s.service_account == id.service_account;
    };
    return field_matches(m.namespaces, m.not_namespaces, ns_ok) &&
           field_matches(m.principals, m.not_principals, principal_ok) &&
           field_matches(m.service_accounts, m.not_service_accounts, sa_ok);
}

SourceIdentity identity_of(const Workload& w) {
    return SourceIdentity{w.trust_domain.empty() ? std::string("cluster.local") : w.trust_domain.str(),
                          w.namespace_.str(), w.service_account.str()};
}

std::vector<const AuthzPolicy*> applicable_policies(const Model& model, const Workload& w) {
    std::vector<const AuthzPolicy*> out;
    for (const auto& [key, p] : model.policies) {
        if (p.scope == AuthzScope::kGlobal ||
            (p.scope == AuthzScope::kNamespace && p.namespace_ == w.namespace_))
            out.push_back(&p);
    }
    for (const auto& name : w.authorization_policies) {
        auto it = model.policies.find(name);
        if (it == model.policies.end()) continue;
        out.push_back(&it->second);
    }
    std::sort(out.begin(), out.end(), [](auto* a, auto* b) { return a->key() < b->key(); });
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

}  // namespace kmesh::policy
