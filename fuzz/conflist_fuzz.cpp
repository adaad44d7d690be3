// libFuzzer target for the CNI installer's config transformations (agent/src/installer/chain.hpp):
// the bytes of a CNI config file someone else wrote (the primary CNI, an operator) through
// validate/chain/unchain/is_chain_of. Input layout: line 1 is the file name (e.g. "10-x.conflist"),
// the rest the file's bytes.
// Oracles, properties that hold for any input the runtime could load:
//   - chain() is idempotent: chaining its own output again changes nothing;
//   - the chained file is loadable, names the chained name, and has exactly one kmesh-cni entry,
//     the last plugin;
//   - is_chain_of(original, chain(original)) holds (what uninstall relies on to restore bytes);
//   - unchain(chain(x)) has no kmesh-cni entry left and as many plugins as the list had before
//     (without its own kmesh-cni entries).
#include <rapidjson/document.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "agent/src/installer/chain.hpp"

namespace {

using kmesh::installer::ChainEntry;

// Plugins of a chained list and how many of them are kmesh-cni; aborts on a non-list.
struct PluginCount {
    size_t total = 0;
    size_t kmesh = 0;
    bool kmesh_last = false;
};

PluginCount count_plugins(const std::string& bytes) {
    rapidjson::Document d;
    d.Parse(bytes.data(), bytes.size());
    if (d.HasParseError() || !d.IsObject() || !d.HasMember("plugins") || !d["plugins"].IsArray())
        std::abort();
    PluginCount c;
    for (const auto& p : d["plugins"].GetArray()) {
        ++c.total;
        const bool ours = p.IsObject() && p.HasMember("type") && p["type"].IsString() &&
                          std::string_view(p["type"].GetString()) == kmesh::installer::kPluginType;
        if (ours) ++c.kmesh;
        c.kmesh_last = ours;
    }
    return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view in(reinterpret_cast<const char*>(data), size);
    const size_t nl = in.find('\n');
    if (nl == std::string_view::npos) return 0;
    const std::string name(in.substr(0, nl));
    const std::string_view bytes = in.substr(nl + 1);
    if (!kmesh::installer::is_config_name(name)) return 0;

    ChainEntry entry;
    entry.kube_config = "/etc/cni/net.d/kmesh-cni-kubeconfig";
    auto chained = kmesh::installer::chain(name, bytes, entry);
    if (!chained) return 0;  // refused: the runtime could not load it either (or it is ourselves)

    const std::string out_name = chained->name;
    if (out_name != kmesh::installer::chained_name(name)) std::abort();
    if (!kmesh::installer::validate_config(out_name, chained->bytes).is_ok()) std::abort();
    const PluginCount after = count_plugins(chained->bytes);
    if (after.kmesh != 1 || !after.kmesh_last) std::abort();

    auto again = kmesh::installer::chain(out_name, chained->bytes, entry);
    if (!again || again->changed || again->bytes != chained->bytes) std::abort();

    if (chained->changed && !chained->had_entry &&
        !kmesh::installer::is_chain_of(name, bytes, chained->bytes))
        std::abort();

    auto unchained = kmesh::installer::unchain(chained->bytes);
    if (unchained) {
        const PluginCount left = count_plugins(unchained->bytes);
        if (left.kmesh != 0 || left.total != after.total - 1) std::abort();
    } else if (after.total != 1) {
        std::abort();  // only a list of kmesh-cni alone may be refused
    }
    return 0;
}
