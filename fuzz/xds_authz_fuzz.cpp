// libFuzzer target: raw bytes -> istio.security.Authorization -> conversion into the model (what
// decides the NACK) and the resource name. A policy that is accepted must only hold what the
// enforcement can take: known scope and action, addresses of 4 or 16 bytes with a prefix that fits,
// ports <= 65535, string matches of a kind; and the model's policy must hold every rule, clause,
// group and entry of the message, in order (nothing dropped, as ztunnel would drop it).
//
// Build (with kmesh_agent_lib and its dependencies):
//   clang++ -fsanitize=fuzzer,address,undefined fuzz/xds_authz_fuzz.cpp -> link kmesh_agent_lib
// Run: ./xds_authz_fuzz fuzz/corpus/xds_authz
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "agent/src/sources/xds/convert.hpp"
#include "istio/security/authorization.pb.h"

// Invalid UTF-8 in string fields is a parse failure protobuf also logs; fuzzing makes it constant.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
    google::protobuf::SetLogHandler(nullptr);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    istio::security::Authorization p;
    if (!p.ParseFromArray(data, static_cast<int>(size))) return 0;
    kmesh::AuthzPolicy out;
    std::string err = kmesh::xds::convert_authorization(p, &out);
    if (err != kmesh::xds::validate_authorization(p)) std::abort();
    std::string name = kmesh::xds::resource_name(p);
    if (name != p.namespace_() + "/" + p.name()) std::abort();
    if (!err.empty()) return 0;
    // Accepted: check it independently of the validator.
    if (p.name().empty()) std::abort();
    if (!istio::security::Scope_IsValid(p.scope()) || !istio::security::Action_IsValid(p.action()))
        std::abort();
    for (const auto& rule : p.rules())
        for (const auto& clause : rule.clauses())
            for (const auto& m : clause.matches()) {
                for (const auto* list :
                     {&m.source_ips(), &m.not_source_ips(), &m.destination_ips(), &m.not_destination_ips()})
                    for (const auto& a : *list) {
                        if (a.address().size() != 4 && a.address().size() != 16) std::abort();
                        if (a.length() > a.address().size() * 8) std::abort();
                    }
                for (const auto* list : {&m.destination_ports(), &m.not_destination_ports()})
                    for (uint32_t port : *list)
                        if (port > 65535) std::abort();
                for (const auto* list :
                     {&m.namespaces(), &m.not_namespaces(), &m.principals(), &m.not_principals()})
                    for (const auto& sm : *list)
                        if (sm.match_type_case() == istio::security::StringMatch::MATCH_TYPE_NOT_SET)
                            std::abort();
            }
    // Nothing dropped: the model's policy has the message's shape.
    if (out.key() != name || out.dry_run != p.dry_run() || static_cast<int>(out.action) != p.action() ||
        static_cast<int>(out.scope) != p.scope() || out.rules.size() != static_cast<size_t>(p.rules_size()))
        std::abort();
    for (int r = 0; r < p.rules_size(); r++) {
        const auto& rule = p.rules(r);
        if (out.rules[r].clauses.size() != static_cast<size_t>(rule.clauses_size())) std::abort();
        for (int c = 0; c < rule.clauses_size(); c++) {
            const auto& clause = rule.clauses(c);
            const auto& groups = out.rules[r].clauses[c].matches;
            if (groups.size() != static_cast<size_t>(clause.matches_size())) std::abort();
            for (int g = 0; g < clause.matches_size(); g++) {
                const auto& m = clause.matches(g);
                const kmesh::AuthzMatch& x = groups[g];
                if (x.namespaces.size() != static_cast<size_t>(m.namespaces_size()) ||
                    x.not_namespaces.size() != static_cast<size_t>(m.not_namespaces_size()) ||
                    x.principals.size() != static_cast<size_t>(m.principals_size()) ||
                    x.not_principals.size() != static_cast<size_t>(m.not_principals_size()) ||
                    x.service_accounts.size() != static_cast<size_t>(m.service_accounts_size()) ||
                    x.not_service_accounts.size() != static_cast<size_t>(m.not_service_accounts_size()) ||
                    x.source_ips.size() != static_cast<size_t>(m.source_ips_size()) ||
                    x.not_source_ips.size() != static_cast<size_t>(m.not_source_ips_size()) ||
                    x.destination_ips.size() != static_cast<size_t>(m.destination_ips_size()) ||
                    x.not_destination_ips.size() != static_cast<size_t>(m.not_destination_ips_size()) ||
                    x.destination_ports.size() != static_cast<size_t>(m.destination_ports_size()) ||
                    x.not_destination_ports.size() != static_cast<size_t>(m.not_destination_ports_size()))
                    std::abort();
                for (int i = 0; i < m.destination_ports_size(); i++)
                    if (x.destination_ports[i] != m.destination_ports(i)) std::abort();
                for (int i = 0; i < m.service_accounts_size(); i++)
                    if (x.service_accounts[i].namespace_ != m.service_accounts(i).namespace_() ||
                        x.service_accounts[i].service_account != m.service_accounts(i).service_account())
                        std::abort();
            }
        }
    }
    return 0;
}
