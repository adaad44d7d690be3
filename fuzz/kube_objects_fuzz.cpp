// libFuzzer target for the decoding of what the API server sends kmesh-cni and the agent: a pod or
// a namespace as JSON (GET bodies and watch events' objects). The first byte picks the decoder.
// Oracles: no crash or sanitizer report; when the input has no escapes, every label key and value
// of the decoded object appears in it verbatim; decide_enrolment gives a reason for any decoded
// pod, with and without its namespace.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/enrolment.hpp"
#include "common/kube/api.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    const std::string_view json(reinterpret_cast<const char*>(data) + 1, size - 1);
    // Without escapes in the input every decoded string must appear in it verbatim.
    const bool escapes = json.find('\\') != std::string_view::npos;
    auto appears = [&](const std::string& s) {
        return escapes || s.empty() || json.find(s) != std::string_view::npos;
    };
    if (data[0] & 1) {
        auto ns = kmesh::kube::parse_namespace(json);
        if (!ns) return 0;
        for (const auto& [k, v] : ns->meta.labels)
            if (!appears(k) || !appears(v)) std::abort();
        return 0;
    }
    auto pod = kmesh::kube::parse_pod(json);
    if (!pod) return 0;
    for (const auto& [k, v] : pod->meta.labels)
        if (!appears(k) || !appears(v)) std::abort();
    kmesh::kube::Namespace meshed;
    meshed.meta.labels[kmesh::kDataplaneModeLabel] = "Kmesh";
    if (kmesh::decide_enrolment(*pod, &meshed).reason.empty()) std::abort();
    if (kmesh::decide_enrolment(*pod, nullptr).reason.empty()) std::abort();
    (void)kmesh::namespace_decides(*pod);
    return 0;
}
