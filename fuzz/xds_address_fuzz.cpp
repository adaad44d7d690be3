// libFuzzer target: raw bytes -> istio.workload.Address -> conversion (the rules that decide a
// NACK) -> applied to a MeshState, as the xDS source does, then removed again. Checks that the
// incremental state always equals a from-scratch build of the same model, and that every name
// the model holds has a hash of its own.
//
// Build (with kmesh_agent_lib and its dependencies):
//   clang++ -fsanitize=fuzzer,address,undefined fuzz/xds_address_fuzz.cpp -> link kmesh_agent_lib
// Run: ./xds_address_fuzz fuzz/corpus/xds_address
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "agent/src/dataplane/dataplane_state.hpp"
#include "agent/src/sources/xds/convert.hpp"
#include "istio/workload/workload.pb.h"

// Invalid UTF-8 in string fields is a parse failure protobuf also logs; fuzzing makes it constant.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
    google::protobuf::SetLogHandler(nullptr);
    return 0;
}

namespace {

bool same(const kmesh::DesiredState& a, const kmesh::DesiredState& b) {
    return a.services == b.services && a.backends == b.backends && a.frontends == b.frontends &&
           a.ports == b.ports;
}

// The input may hold several Address messages: each byte run up to a 0xff 0xfe marker is one.
// A few resources in a row exercise replacing and removing, not only inserting.
std::vector<std::string> split(const uint8_t* data, size_t size) {
    std::vector<std::string> out;
    size_t start = 0;
    for (size_t i = 0; i + 1 < size && out.size() < 8; i++)
        if (data[i] == 0xff && data[i + 1] == 0xfe) {
            out.emplace_back(reinterpret_cast<const char*>(data + start), i - start);
            start = i + 2;
            i++;
        }
    out.emplace_back(reinterpret_cast<const char*>(data + start), size - start);
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    kmesh::NodeInfo node{"node-1", "Kubernetes", "", {"eu", "eu-1a", ""}};
    kmesh::MeshState mesh(node, true);
    std::vector<std::string> applied;
    for (const auto& bytes : split(data, size)) {
        istio::workload::Address a;
        if (!a.ParseFromString(bytes)) continue;
        std::string name = kmesh::xds::resource_name(a);
        std::string err;
        if (a.has_workload()) {
            kmesh::Workload w;
            err = kmesh::xds::convert_workload(a.workload(), &w);
            if (err.empty() && mesh.check_name(name).empty()) {
                if (mesh.model().services.count(name)) mesh.remove_service(name);
                mesh.upsert_workload(w);
                applied.push_back(name);
            }
        } else if (a.has_service()) {
            kmesh::Service s;
            err = kmesh::xds::convert_service(a.service(), &s);
            if (err.empty() && mesh.check_name(name).empty()) {
                if (mesh.model().workloads.count(name)) mesh.remove_workload(name);
                mesh.upsert_service(s);
                applied.push_back(name);
            }
        }
        // A refusal must say why: an empty reason would be an ACK.
        if (!err.empty() && err.find_first_not_of(' ') == std::string::npos) std::abort();
        if (!same(mesh.desired(), kmesh::build_desired(mesh.model(), mesh.node()))) std::abort();
        if (!kmesh::hash_collisions(mesh.model()).empty()) std::abort();
    }
    // Removing everything leaves nothing behind.
    for (const auto& name : applied) {
        mesh.remove_workload(name);
        mesh.remove_service(name);
    }
    const auto& d = mesh.desired();
    if (!d.services.empty() || !d.backends.empty() || !d.frontends.empty() || !d.ports.empty()) std::abort();
    return 0;
}
