// libFuzzer target: raw bytes -> istio.security.Authorization -> validation (what decides the
// NACK) and the resource name. A policy that is accepted must only hold what the enforcement can
// take: known scope and action, addresses of 4 or 16 bytes with a prefix that fits, ports <= 65535.
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
    std::string err = kmesh::xds::validate_authorization(p);
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
            }
    return 0;
}
