// libFuzzer target: the standalone YAML config source, end to end up to the desired map state.
// Any input must give a Model or a ConfigError, never a crash, a hang or a sanitizer report; an
// accepted Model must convert into map state (MeshState) without tripping either.
#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>

#include "agent/src/dataplane/dataplane_state.hpp"
#include "agent/src/sources/file/config_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string text(reinterpret_cast<const char*>(data), size);
    auto parsed = kmesh::parse_config_yaml(text);
    if (auto* model = std::get_if<kmesh::Model>(&parsed)) {
        if (!kmesh::hash_collisions(*model).empty()) return 0;
        kmesh::MeshState mesh(kmesh::NodeInfo{}, true);
        mesh.replace(*model);
        // Applying the same model twice is a no-op; replacing with empty removes everything.
        mesh.take_dirty();
        mesh.replace(*model);
        mesh.replace(kmesh::Model{});
        if (!mesh.desired().services.empty() || !mesh.desired().backends.empty()) __builtin_trap();
    } else {
        // A rejection always says why.
        if (std::get<kmesh::ConfigError>(parsed).problems.empty()) __builtin_trap();
    }
    return 0;
}
