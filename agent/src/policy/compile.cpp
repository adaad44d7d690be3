#include "agent/src/policy/compile.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <tuple>

#include "agent/src/policy/match.hpp"

namespace kmesh::policy {

CidrEntry cidr_entry(uint32_t row, uint32_t kind, const Cidr& c) {
    CidrEntry e{row, kind, c.addr, 0};
    unsigned len =
        c.addr.is_v4() ? 96u + std::min<unsigned>(c.prefix_len, 32) : std::min<unsigned>(c.prefix_len, 128);
    e.prefix_len = static_cast<uint8_t>(len);
    // The trie compares only prefix bits; zeroed host bits make equal CIDRs equal entries.
    for (unsigned bit = len; bit < 128; bit++)
        e.addr.bytes[bit / 8] &= static_cast<uint8_t>(~(0x80u >> (bit % 8)));
    return e;
}

namespace {

// The identity half of a match group: groups with equal identity fields share one identity set.
using IdentityFields =
    std::tuple<std::vector<StringMatch>, std::vector<StringMatch>, std::vector<StringMatch>,
               std::vector<StringMatch>, std::vector<ServiceAccountMatch>, std::vector<ServiceAccountMatch>>;

IdentityFields identity_fields(const AuthzMatch& m) {
    return {m.namespaces,     m.not_namespaces,   m.principals,
            m.not_principals, m.service_accounts, m.not_service_accounts};
}

bool has_identity_fields(const AuthzMatch& m) {
    return !m.namespaces.empty() || !m.not_namespaces.empty() || !m.principals.empty() ||
           !m.not_principals.empty() || !m.service_accounts.empty() || !m.not_service_accounts.empty();
}

// What a match group's identity fields accept, over every identity id (0 = no identity).
struct IdentityVerdict {
    enum Kind { kAll, kNone, kSet } kind = kAll;
    uint32_t idset = 0;
    bool invert = false;
};

class Compiler {
  public:
    explicit Compiler(CompiledAuthz& out) : out_(out) {
        // id -> identity, with the no-identity source at 0.
        universe_.emplace_back(SourceIdentity{}, 0);
        for (const auto& [ident, id] : out_.identities) universe_.emplace_back(ident, id);
    }

    // Emits the policy's rows; returns its index in tables.policies.
    uint32_t add_policy(const AuthzPolicy& p) {
        auto [it, fresh] = policy_index_.try_emplace(p.key(), 0);
        if (!fresh) return it->second;
        auto& t = out_.tables;
        CompiledPolicy cp;
        cp.key = p.key();
        cp.first_row = static_cast<uint32_t>(t.rows.size());
        if (p.action == AuthzAction::kDeny) cp.flags |= KMESH_AUTHZ_POLICY_DENY;
        if (p.dry_run) cp.flags |= KMESH_AUTHZ_POLICY_DRY_RUN;
        for (const auto& rule : p.rules) {
            if (emit_rule(rule)) break;  // a rule that always matches makes the rest moot
        }
        cp.rows = static_cast<uint32_t>(t.rows.size()) - cp.first_row;
        it->second = static_cast<uint32_t>(t.policies.size());
        t.policies.push_back(std::move(cp));
        return it->second;
    }

  private:
    struct Group {
        const AuthzMatch* m;
        IdentityVerdict ident;
    };

    // Returns true when the rule always matches (it emitted one ALWAYS row).
    bool emit_rule(const AuthzRule& rule) {
        std::vector<std::vector<Group>> clauses;
        for (const auto& clause : rule.clauses) {
            if (clause.matches.empty()) continue;  // a clause with no groups holds
            std::vector<Group> groups;
            for (const auto& m : clause.matches) {
                if (m.empty()) continue;  // ztunnel skips an empty group: it matches nothing
                IdentityVerdict v = identity_verdict(m);
                if (v.kind == IdentityVerdict::kNone) continue;  // no source can satisfy it
                groups.push_back({&m, v});
            }
            if (groups.empty()) return false;  // this clause can never hold: nor can the rule
            clauses.push_back(std::move(groups));
        }
        auto& rows = out_.tables.rows;
        if (clauses.empty()) {
            rows.push_back(
                {0, KMESH_AUTHZ_ROW_ALWAYS | KMESH_AUTHZ_ROW_END_CLAUSE | KMESH_AUTHZ_ROW_END_RULE});
            return true;
        }
        for (size_t c = 0; c < clauses.size(); c++) {
            for (size_t g = 0; g < clauses[c].size(); g++) {
                uint32_t flags = emit_group(clauses[c][g]);
                if (g + 1 == clauses[c].size()) flags |= KMESH_AUTHZ_ROW_END_CLAUSE;
                if (g + 1 == clauses[c].size() && c + 1 == clauses.size()) flags |= KMESH_AUTHZ_ROW_END_RULE;
                rows.back().flags |= flags;
            }
        }
        return false;
    }

    // Appends the row of one group (its END_* flags are added by the caller).
    uint32_t emit_group(const Group& g) {
        auto& t = out_.tables;
        const AuthzMatch& m = *g.m;
        uint32_t row = static_cast<uint32_t>(t.rows.size());
        CompiledRow r;
        if (g.ident.kind == IdentityVerdict::kSet) {
            r.idset = g.ident.idset;
            r.flags |= KMESH_AUTHZ_ROW_IDENT | (g.ident.invert ? KMESH_AUTHZ_ROW_IDENT_INVERT : 0);
        }
        auto cidrs = [&](const std::vector<Cidr>& list, uint32_t kind, uint32_t flag) {
            if (list.empty()) return;
            r.flags |= flag;
            for (const auto& c : list) t.cidrs.insert(cidr_entry(row, kind, c));
        };
        cidrs(m.source_ips, KMESH_AUTHZ_KIND_SRC, KMESH_AUTHZ_ROW_SRC);
        cidrs(m.not_source_ips, KMESH_AUTHZ_KIND_NOT_SRC, KMESH_AUTHZ_ROW_NOT_SRC);
        cidrs(m.destination_ips, KMESH_AUTHZ_KIND_DST, KMESH_AUTHZ_ROW_DST);
        cidrs(m.not_destination_ips, KMESH_AUTHZ_KIND_NOT_DST, KMESH_AUTHZ_ROW_NOT_DST);
        auto ports = [&](const std::vector<uint16_t>& list, uint32_t kind, uint32_t flag) {
            if (list.empty()) return;
            r.flags |= flag;
            for (auto p : list) t.ports.insert({row, kind, p});
        };
        ports(m.destination_ports, KMESH_AUTHZ_KIND_PORT, KMESH_AUTHZ_ROW_PORT);
        ports(m.not_destination_ports, KMESH_AUTHZ_KIND_NOT_PORT, KMESH_AUTHZ_ROW_NOT_PORT);
        t.rows.push_back(r);
        return 0;
    }

    IdentityVerdict identity_verdict(const AuthzMatch& m) {
        if (!has_identity_fields(m)) return {};
        IdentityFields key = identity_fields(m);
        if (auto it = verdicts_.find(key); it != verdicts_.end()) return it->second;
        std::vector<uint32_t> accept, reject;
        for (const auto& [ident, id] : universe_)
            (identity_fields_match(m, ident) ? accept : reject).push_back(id);
        IdentityVerdict v;
        if (reject.empty()) {
            v.kind = IdentityVerdict::kAll;
        } else if (accept.empty()) {
            v.kind = IdentityVerdict::kNone;
        } else {
            // The smaller of the two sets is stored; INVERT says it lists the rejected ids.
            v.kind = IdentityVerdict::kSet;
            v.idset = next_idset_++;
            v.invert = reject.size() < accept.size();
            for (uint32_t id : v.invert ? reject : accept) out_.tables.idset.emplace(v.idset, id);
        }
        verdicts_.emplace(std::move(key), v);
        return v;
    }

    CompiledAuthz& out_;
    std::vector<std::pair<SourceIdentity, uint32_t>> universe_;
    std::map<IdentityFields, IdentityVerdict> verdicts_;
    std::map<std::string, uint32_t> policy_index_;
    uint32_t next_idset_ = 0;
};

Status exhausted(const char* what, size_t n, uint32_t limit, const char* flag) {
    return {Errc::kResourceExhausted,
            fmt::format("authorization needs {} {} but {} is {}", n, what, flag, limit)};
}

}  // namespace

Result<CompiledAuthz> compile_authz(const Model& model, const std::string& node, const IdentityIds& previous,
                                    const AuthzSizes& sizes) {
    CompiledAuthz out;
    for (const auto& [key, p] : model.policies) out.policy_keys.push_back(key);

    // Identities: every known workload's. Ids are kept from the previous compile (or, after a
    // restart, from the addresses the kernel holds); new identities get ids never handed out
    // before (0 is "no identity").
    std::map<IpAddr, std::set<SourceIdentity>> claims;
    std::set<SourceIdentity> present;
    std::map<SourceIdentity, std::set<uint32_t>> kernel_ids;  // ids the kernel gives its addresses
    for (const auto& [uid, w] : model.workloads) {
        SourceIdentity id = identity_of(w);
        if (!id.known()) id = SourceIdentity{};
        if (id.known()) present.insert(id);
        // A host-network workload's address is the node's: kubelet probes, host processes and
        // traffic SNATed to the node come from it too, so it proves no identity (Istio would see
        // none). The claim still counts, so no other workload's identity can take the address.
        if (w.network_mode == NetworkMode::kHostNetwork) id = SourceIdentity{};
        for (const auto& a : w.addresses) {
            claims[a].insert(id);
            if (!id.known()) continue;
            if (auto k = previous.addr_ids.find(a); k != previous.addr_ids.end() && k->second != 0)
                kernel_ids[id].insert(k->second);
        }
    }
    std::set<uint32_t> used;
    uint32_t next = std::max<uint32_t>(previous.next, 1);
    for (const auto& [id, n] : previous.ids) next = std::max(next, n + 1);
    for (const auto& [a, n] : previous.addr_ids) next = std::max(next, n + 1);
    for (const auto& id : present)
        if (auto it = previous.ids.find(id); it != previous.ids.end()) {
            out.identities[id] = it->second;
            used.insert(it->second);
        }
    // Recovered ids (after a restart): an identity takes the id the kernel gives its addresses when
    // that id means nothing else in the kernel: all its addresses carry that one id, and every
    // address carrying it belongs to this identity alone now. Otherwise (an id the kernel shares
    // with an address that changed hands while the agent was down) it gets a fresh id.
    std::map<uint32_t, std::set<SourceIdentity>> holders;  // kernel id -> identities of its addresses
    for (const auto& [a, n] : previous.addr_ids) {
        auto c = claims.find(a);
        if (c == claims.end() || c->second.size() != 1)
            holders[n].insert(SourceIdentity{});  // address gone or shared: not this identity's
        else
            holders[n].insert(*c->second.begin());
    }
    for (const auto& [id, ns] : kernel_ids) {
        if (out.identities.count(id) || ns.size() != 1) continue;
        uint32_t n = *ns.begin();
        if (used.count(n) || holders[n] != std::set<SourceIdentity>{id}) continue;
        out.identities[id] = n;
        used.insert(n);
    }
    for (const auto& id : present) {
        if (out.identities.count(id)) continue;
        while (used.count(next)) next++;
        out.identities[id] = next;
        used.insert(next++);
    }
    out.next_identity = next;
    for (const auto& [addr, ids] : claims) {
        if (ids.size() != 1 || !ids.begin()->known()) continue;  // shared by identities, or none
        out.addr_identity[addr] = out.identities.at(*ids.begin());
    }
    claims.clear();
    std::vector<const Workload*> local;
    for (const auto& [uid, w] : model.workloads)
        if (is_local(w, node)) local.push_back(&w);
    compile_tables(model, local, out);
    if (Status st = check_limits(out, out.addr_identity.size(), sizes); !st) return st;
    return out;
}

void compile_tables(const Model& model, const std::vector<const Workload*>& local, CompiledAuthz& out) {
    out.tables = {};
    // Destination sets: one per distinct applicable-policy list among this node's workloads.
    Compiler compiler(out);
    std::map<std::vector<uint32_t>, uint32_t> set_index;
    auto& t = out.tables;
    for (const Workload* wp : local) {
        const Workload& w = *wp;
        std::vector<uint32_t> dry, deny, allow;
        bool has_allow = false;
        for (const AuthzPolicy* p : applicable_policies(model, w)) {
            uint32_t idx = compiler.add_policy(*p);
            if (!p->dry_run && p->action == AuthzAction::kAllow) has_allow = true;
            if (t.policies[idx].rows == 0) continue;  // never matches: only its presence counts
            (p->dry_run ? dry : p->action == AuthzAction::kDeny ? deny : allow).push_back(idx);
        }
        std::vector<uint32_t> list = dry;
        list.insert(list.end(), deny.begin(), deny.end());
        list.insert(list.end(), allow.begin(), allow.end());
        // The flag is part of the set's identity: two workloads with equal lists can differ in
        // whether a rule-less ALLOW applies.
        list.push_back(has_allow ? 1 : 0);
        auto [it, fresh] = set_index.try_emplace(list, static_cast<uint32_t>(t.sets.size()));
        if (fresh) {
            CompiledSet s{static_cast<uint32_t>(t.setpol.size()), static_cast<uint32_t>(list.size() - 1),
                          has_allow ? KMESH_AUTHZ_SET_HAS_ALLOW : 0u};
            t.setpol.insert(t.setpol.end(), list.begin(), list.end() - 1);
            t.sets.push_back(s);
        }
        for (const auto& a : w.addresses) t.dsts.try_emplace(a, it->second);  // first uid wins
    }
}

Status check_limits(const CompiledAuthz& out, size_t idents, const AuthzSizes& sizes) {
    if (idents > sizes.idents)
        return exhausted("source addresses with an identity", idents, sizes.idents, "--max-authz-identities");
    const auto& t = out.tables;
    struct Limit {
        const char* what;
        size_t n;
        uint32_t limit;
        const char* flag;
    };
    const Limit limits[] = {
        {"policies", t.policies.size(), sizes.policies, "--max-authz-policies"},
        {"policies (counter slots)", out.policy_keys.size(), sizes.policies, "--max-authz-policies"},
        {"match groups", t.rows.size(), std::min(sizes.rows, KMESH_AUTHZ_MAX_ROWS_LIMIT), "--max-authz-rows"},
        {"distinct policy sets", t.sets.size(), sizes.sets, "--max-authz-sets"},
        {"policy set entries", t.setpol.size(), sizes.setpol, "--max-authz-set-entries"},
        {"local workload addresses", t.dsts.size(), sizes.dsts, "--max-authz-destinations"},
        {"identity set entries", t.idset.size(), sizes.entries, "--max-authz-entries"},
        {"CIDR entries", t.cidrs.size(), sizes.entries, "--max-authz-entries"},
        {"port entries", t.ports.size(), sizes.entries, "--max-authz-entries"},
    };
    for (const auto& l : limits)
        if (l.n > l.limit) return exhausted(l.what, l.n, l.limit, l.flag);
    return {};
}

}  // namespace kmesh::policy
